"""A running agent's live view of its session's control signals (cancel, steer).

While a run is active the SDK subscribes (core NATS) to ``tether.live.{session}.c.*``,
the stream's republish of stored control signals, so a cancel reaches the agent within
milliseconds of being stored instead of on its next inbox poll. Signals naming another
run are ignored; signals without a run apply to whichever run is active.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from shared import subjects, wire

log = structlog.get_logger(__name__)

CancelHook = Callable[["Signal"], Awaitable[None] | None]


@dataclass(frozen=True, slots=True)
class Signal:
    """One control signal as an agent sees it."""

    kind: str  # wire.CONTROL_CANCEL or wire.CONTROL_STEER
    control: str
    run: str | None
    participant: str | None
    text: str | None
    seq: int


def signal_of(event: wire.Event, seq: int) -> Signal | None:
    """The signal an event carries; None when it is not a control event."""
    kind = event.get("type")
    if kind not in wire.CONTROL_TYPES:
        return None
    run, text, who = event.get("run"), event.get("text"), event.get("participant")
    return Signal(
        kind=str(kind),
        control=str(event.get("control", "")),
        run=run if isinstance(run, str) else None,
        participant=who if isinstance(who, str) else None,
        text=text if isinstance(text, str) else None,
        seq=seq,
    )


class RunControl:
    """Cancel and steer state of one run, fed by the live control subject."""

    def __init__(self, run_id: str, on_cancel: CancelHook | None = None) -> None:
        self.run_id = run_id
        self.cancelled = asyncio.Event()
        self.cancel_signal: Signal | None = None
        self.steers: asyncio.Queue[Signal] = asyncio.Queue()
        self.on_cancel = on_cancel
        self._sub: Subscription | None = None
        self._seen: set[str] = set()

    async def follow(self, nc: NATS, session: str) -> None:
        """Subscribe to the session's live control signals (idempotent)."""
        if self._sub is None:
            self._sub = await nc.subscribe(subjects.live_control(session), cb=self._on_msg)

    async def stop(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            try:
                await sub.unsubscribe()
            except Exception as exc:  # noqa: BLE001 - the connection may be closing
                log.debug("control_unsubscribe_failed", error=repr(exc))

    async def _on_msg(self, msg: Msg) -> None:
        event = wire.decode_event(msg.data)
        seq = int((msg.headers or {}).get(subjects.SEQUENCE, "0"))
        signal = signal_of(event, seq) if event is not None else None
        if signal is not None:
            await self.deliver(signal)

    async def deliver(self, signal: Signal) -> None:
        """Apply one signal (live or from the inbox); each control id counts once."""
        if signal.run not in (None, self.run_id) or signal.control in self._seen:
            return
        self._seen.add(signal.control)
        if signal.kind == wire.CONTROL_STEER:
            self.steers.put_nowait(signal)
            return
        if self.cancelled.is_set():
            return
        self.cancel_signal = signal
        self.cancelled.set()
        log.info("run_cancel_received", run=self.run_id, control=signal.control)
        if self.on_cancel is not None:
            try:
                result = self.on_cancel(signal)
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:  # noqa: BLE001 - a failing hook must not stop delivery
                log.warning("on_cancel_failed", run=self.run_id, error=repr(exc))

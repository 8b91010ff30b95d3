"""One agent run inside a session: lifecycle events, approvals and streamed messages.

Created by ``Session.run(...)`` (``shared.agent``), or directly as ``Run(session, run_id)``
by integrations that manage the lifecycle themselves (``shared.temporal``).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import structlog

from shared import approvals, subjects, wire
from shared.approvals import Decision
from shared.errors import PublishError
from shared.ids import check_id
from shared.runcontrol import CancelHook, RunControl, Signal
from shared.streaming import Message

if TYPE_CHECKING:
    from shared.agent import Session

log = structlog.get_logger(__name__)

APPROVAL_POLL_SECONDS = 5.0  # re-read the log this often while waiting (live is at most once)


class Run:
    """One agent run inside a session: its lifecycle events and the messages it streams."""

    def __init__(
        self,
        session: Session,
        run_id: str,
        *,
        user: str | None = None,
        on_cancel: CancelHook | None = None,
    ) -> None:
        self.session = session
        self.id = run_id
        self.user = user
        self.ended = False
        self._messages = 0
        self._progress = 0
        self._approvals = 0
        self.control = RunControl(run_id, on_cancel)

    @property
    def cancelled(self) -> asyncio.Event:
        """Set as soon as a device cancels this run (or the session's active run)."""
        return self.control.cancelled

    @property
    def steers(self) -> asyncio.Queue[Signal]:
        """Steer signals for this run, in arrival order (``signal.text`` is the instruction)."""
        return self.control.steers

    async def wait_cancelled(self) -> Signal | None:
        """Return when the run is cancelled, with the cancel signal."""
        await self.control.cancelled.wait()
        return self.control.cancel_signal

    def cancel_reason(self) -> str:
        signal = self.control.cancel_signal
        if signal is None:
            return ""
        return f"cancelled by {signal.participant}" if signal.participant else "cancelled"

    async def _lifecycle(self, kind: str, part: str, **fields: Any) -> int:
        s = self.session
        event = s._event(kind, run=self.id, user=self.user, **fields)
        return await s._publish(
            subjects.run_events(s.id, self.id),
            event,
            wire.msg_id(s.id, subjects.RUN, self.id, part),
        )

    async def start(self, **data: Any) -> int:
        await self.session.set_state("thinking")
        return await self._lifecycle(wire.RUN_STARTED, "started", data=data or None)

    async def progress(
        self, *, step: str | None = None, tool: str | None = None, **data: Any
    ) -> int:
        """Report a step or a tool call (``run.progress``)."""
        self._progress += 1
        return await self._lifecycle(
            wire.RUN_PROGRESS, f"p{self._progress}", step=step, tool=tool, data=data or None
        )

    async def complete(self, **data: Any) -> int:
        self.ended = True
        seq = await self._lifecycle(wire.RUN_COMPLETED, "end", data=data or None)
        await self.session.set_state("idle")
        return seq

    async def fail(self, error: str) -> int:
        self.ended = True
        seq = await self._lifecycle(wire.RUN_FAILED, "end", error=error)
        await self.session.set_state("idle")
        return seq

    async def cancel(self, reason: str = "") -> int:
        self.ended = True
        seq = await self._lifecycle(wire.RUN_CANCELLED, "end", reason=reason or None)
        await self.session.set_state("idle")
        return seq

    async def request_approval(
        self,
        prompt: str,
        options: list[str],
        *,
        timeout: float | None = None,
        approval_id: str | None = None,
    ) -> Decision:
        """Ask the session's users to choose one of ``options``; wait for the first answer.

        Stores ``approval.requested`` (id ``{run}-a{n}`` unless given, so a retried agent
        reuses it) and returns the stored ``approval.decided`` as a Decision. After
        ``timeout`` seconds (None: no expiry) it stores ``approval.expired`` and returns
        ``Decision(expired=True, option=None)``, unless an answer was stored first, which
        it then returns; a cancel of the run while waiting expires it at once. A retried
        agent whose approval is already resolved gets that resolution at once.
        """
        items = approvals.check_options(options)
        if not isinstance(prompt, str):
            raise ValueError("prompt must be a string")
        if timeout is not None and timeout <= 0:
            raise ValueError("timeout must be positive (or None: no expiry)")
        self._approvals += 1
        aid = (
            check_id(approval_id, "approval id") if approval_id else f"{self.id}-a{self._approvals}"
        )
        s = self.session
        nc, stream = s.client.nc, s.client.log_settings.stream_for(s.id)
        loop = asyncio.get_running_loop()
        resolved: asyncio.Future[Decision] = loop.create_future()

        async def on_msg(msg: Any) -> None:
            event = wire.decode_event(msg.data)
            if (
                event is not None
                and event["type"] in wire.APPROVAL_OUTCOME_TYPES
                and event.get("approval") == aid
                and not resolved.done()
            ):
                seq = int((msg.headers or {}).get(subjects.SEQUENCE, "0"))
                resolved.set_result(approvals.decision_of(event, seq))

        sub = await nc.subscribe(subjects.live_run(s.id, self.id), cb=on_msg)
        try:
            expires_at = wire.now_ms() + int(timeout * 1000) if timeout is not None else None
            await self._lifecycle(
                wire.APPROVAL_REQUESTED,
                approvals.request_part(aid),
                approval=aid,
                prompt=prompt,
                options=items,
                expires_at=expires_at,
            )
            state = await approvals.read(nc, stream, s.id, self.id, aid)
            stored = state.decision()
            if stored is not None:  # a retried agent: already answered or expired
                return stored
            if state.expires_at is not None:  # a retried request keeps its first expiry
                expires_at = state.expires_at
            log.info("approval_requested", run=self.id, approval=aid, options=items)
            cancelled = asyncio.ensure_future(self.control.cancelled.wait())
            waiters: set[asyncio.Future[Any]] = {resolved, cancelled}
            try:
                while not cancelled.done():  # a cancelled run closes the approval at once
                    left = None if expires_at is None else (expires_at - wire.now_ms()) / 1000
                    if left is not None and left <= 0:
                        break
                    wait = (
                        APPROVAL_POLL_SECONDS if left is None else min(left, APPROVAL_POLL_SECONDS)
                    )
                    await asyncio.wait(waiters, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
                    if resolved.done():
                        return resolved.result()
                    stored = (await approvals.read(nc, stream, s.id, self.id, aid)).decision()
                    if stored is not None:
                        return stored
            finally:
                cancelled.cancel()
            await self._lifecycle(wire.APPROVAL_EXPIRED, approvals.decision_part(aid), approval=aid)
            # Whichever of decided / expired was stored first is the answer.
            stored = (await approvals.read(nc, stream, s.id, self.id, aid)).decision()
            if stored is None:
                raise PublishError(f"approval {aid}: the stored resolution could not be read")
            return stored
        finally:
            await sub.unsubscribe()

    def message(
        self,
        message_id: str | None = None,
        *,
        coalesce_ms: float | None = None,
        resume: str | None = None,
    ) -> Message:
        """A streamed agent message; its id defaults to ``{run}-m{n}`` (deterministic).

        ``resume`` is for a retried agent whose message may already have stored events:
        ``"continue"`` picks up after the last stored chunk (``message.stored_text``;
        ``message.extend_to(full_text)`` appends only what is not stored yet), ``"reset"``
        publishes a ``message.reset`` so devices replace the partial text. Either is read
        from the log by ``start()``.
        """
        self._messages += 1
        mid = check_id(message_id, "message id") if message_id else f"{self.id}-m{self._messages}"
        window = self.session.client.coalesce_ms if coalesce_ms is None else coalesce_ms
        return Message(
            self.session,
            self.id,
            mid,
            window,
            checkpoint_every=self.session.client.checkpoint_chunks,
            resume=resume,
        )

"""Recording how far each participant has read: the notifier's "has the user seen it".

One :class:`CursorWriter` per WebSocket connection. The device calls ``note(seq)`` whenever
it hands an event to the socket; the writer stores the highest one in ``TETHER_CURSORS`` at
most every ``interval`` seconds, and once more when the connection closes.
"""

from __future__ import annotations

import asyncio

import structlog
from nats.js.kv import KeyValue

from shared import cursors

log = structlog.get_logger(__name__)

INTERVAL = 1.0  # the notifier's grace is seconds; finer costs gateway CPU


class CursorWriter:
    """Throttled, monotonic writes of one connection's delivered sequence."""

    def __init__(
        self, kv: KeyValue, session: str, participant: str, interval: float = INTERVAL
    ) -> None:
        self.kv = kv
        self.session = session
        self.participant = participant
        self.interval = interval
        self.seen = 0
        self.written = 0
        self.revision: int | None = None
        self._last_write = 0.0
        self._pending: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None

    def note(self, seq: int) -> None:
        """A sequence was delivered; schedule a write unless one is already due."""
        if seq <= self.seen:
            return
        self.seen = seq
        if self._pending is not None or (self._task is not None and not self._task.done()):
            return
        loop = asyncio.get_running_loop()
        wait = max(0.0, self._last_write + self.interval - loop.time())
        self._pending = loop.call_later(wait, self._start_write)

    def _start_write(self) -> None:
        self._pending = None
        self._task = asyncio.create_task(self._write())

    async def _write(self) -> None:
        seq = self.seen
        self._last_write = asyncio.get_running_loop().time()
        if seq <= self.written:
            return
        try:
            _, self.revision = await cursors.advance(
                self.kv, self.session, self.participant, seq, revision=self.revision
            )
        except Exception as exc:  # noqa: BLE001 - a lost write only means an extra webhook
            # No retry loop: the next delivered event (or the close) writes again.
            log.warning("cursor_write_failed", session=self.session, error=repr(exc))
            return
        self.written = seq
        if self.seen > self.written:  # more arrived while writing
            self.note_again()

    def note_again(self) -> None:
        loop = asyncio.get_running_loop()
        if self._pending is None:
            self._pending = loop.call_later(self.interval, self._start_write)

    async def close(self) -> None:
        """Write the final position now (the connection is closing)."""
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        if self._task is not None and not self._task.done():
            await asyncio.gather(self._task, return_exceptions=True)
        if self.seen > self.written:
            await self._write()

"""A device: one client connection's view of one session.

The hub offers it every live frame; the device drops what it has already delivered
(by sequence), buffers while its replay runs, and writes through a bounded queue so a
device that stops reading never delays the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from shared.errors import SlowClient

log = structlog.get_logger(__name__)

Send = Callable[[bytes], Awaitable[None]]
OnOverflow = Callable[["Device"], None]
OnDelivered = Callable[[int], None]


class Device:
    """Ordering, dedupe by sequence and a bounded send queue for one connection."""

    def __init__(
        self,
        session: str,
        since: int,
        send: Send,
        *,
        queue_frames: int,
        on_overflow: OnOverflow,
        on_delivered: OnDelivered | None = None,
    ) -> None:
        self.session = session
        self._on_delivered = on_delivered  # the read-position bookkeeping (cursors.py)
        self.delivered = since
        self.replaying = True
        self._send = send
        self._on_overflow = on_overflow
        self._limit = queue_frames
        self._buffer: list[tuple[int, bytes, int]] = []
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.overflowed = False
        self.greeted = False
        self.writer: asyncio.Task[None] | None = None
        self._room = asyncio.Event()  # set while the queue is at most half full
        self._room.set()

    def start(self) -> None:
        self.writer = asyncio.create_task(self._write_loop())

    def offer(self, seq: int, frame: bytes, covers: int = 0) -> None:
        """A live (or resynced) event frame; delivered once, in sequence order.

        ``covers`` > 0 marks a checkpoint that repeats what a device with everything up to
        that sequence already has; such a device skips it.
        """
        if self.replaying:
            self._buffer.append((seq, frame, covers))
            if len(self._buffer) > self._limit:
                self._overflow()
            return
        if seq <= self.delivered or (covers and self.delivered >= covers):
            return
        self.delivered = seq
        self.push(frame)
        if self._on_delivered is not None:
            self._on_delivered(seq)

    def push(self, frame: bytes) -> None:
        """Queue any frame for sending (no sequence check)."""
        if self.overflowed:
            return
        if self._queue.qsize() >= self._limit:
            self._overflow()
            return
        self._queue.put_nowait(frame)

    def greet(self, hello: bytes) -> None:
        """Send the hello frame; presence frames flow only after it (it holds a snapshot)."""
        self.greeted = True
        self.push(hello)

    def notify(self, frame: bytes) -> None:
        """A presence frame (no sequence); dropped before the hello, which covers it."""
        if self.greeted:
            self.push(frame)

    async def replayed(self, seq: int, frame: bytes) -> None:
        """A frame of this device's own replay (already compacted and ordered).

        Waits while the queue is more than half full, so a long replay is paced by the
        socket instead of overflowing the queue; live frames keep the other half.
        """
        if seq <= self.delivered:
            return
        if self._queue.qsize() >= self._limit // 2:
            self._room.clear()
            await self._room.wait()
        self.delivered = seq
        self.push(frame)
        if self._on_delivered is not None:
            self._on_delivered(seq)

    def go_live(self, caught_up_to: int) -> None:
        """End the replay: deliver buffered live frames newer than the replay."""
        self.delivered = max(self.delivered, caught_up_to)
        self.replaying = False
        buffered, self._buffer = self._buffer, []
        for seq, frame, covers in buffered:
            self.offer(seq, frame, covers)

    def _overflow(self) -> None:
        if not self.overflowed:
            self.overflowed = True
            log.warning("device_slow", session=self.session, delivered=self.delivered)
            self._on_overflow(self)

    async def _write_loop(self) -> None:
        while True:
            frame = await self._queue.get()
            if frame is None:
                return
            await self._send(frame)
            if not self._room.is_set() and self._queue.qsize() <= self._limit // 4:
                self._room.set()

    async def close(self) -> None:
        """Stop the writer after what is queued has been sent."""
        if self.writer is None:
            return
        self._queue.put_nowait(None)
        try:
            await asyncio.wait_for(self.writer, 5.0)
        except (TimeoutError, ConnectionError, RuntimeError):
            self.writer.cancel()
        except Exception:  # noqa: BLE001 - a dead socket must not break the close path
            self.writer.cancel()

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.cancel()


def slow_client_error() -> SlowClient:
    return SlowClient("send queue overflowed; reconnect with since set to your last sequence")

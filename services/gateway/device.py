"""A device: one client connection's view of one session.

The hub offers it every live frame; the device drops what it has already delivered
(by sequence), buffers while its replay runs, and writes through a queue bounded both in
frames and in bytes, so a device that stops reading never delays the others and never
holds more than ``queue_bytes`` of frames (plus the socket's own small write buffer: the
writer waits for the transport to drain). Over either bound the device overflows and its
connection is closed with 4008 (``slow_client``); the client resumes with ``since``.

While nothing is queued and the socket takes data (``write_now``: not over its high-water
mark), a frame is written at once, in the caller's turn of the event loop; otherwise it is
queued and a writer task (started when needed, ended when the queue is empty) drains the
queue through ``send``, waiting for the socket as it goes.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

import structlog

from shared.errors import SlowClient

log = structlog.get_logger(__name__)

Send = Callable[[bytes], Awaitable[None]]
WriteNow = Callable[[bytes], bool]  # True: written to the socket now; False: queue it
OnOverflow = Callable[["Device"], None]
OnDelivered = Callable[[int], None]

DEFAULT_QUEUE_BYTES = 8 * 1024 * 1024
STALL_SECONDS = 30.0  # a replay waiting this long for the socket to take frames gives up


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
        queue_bytes: int = DEFAULT_QUEUE_BYTES,
        write_now: WriteNow | None = None,
    ) -> None:
        self.session = session
        self._on_delivered = on_delivered  # the read-position bookkeeping (cursors.py)
        self.delivered = since
        self.replaying = True
        self._send = send
        self._write_now = write_now
        self._on_overflow = on_overflow
        self._limit = queue_frames
        self._byte_limit = queue_bytes
        self._buffer: list[tuple[int, bytes, int]] = []
        self._buffer_bytes = 0  # held during the replay
        self.queued_bytes = 0  # in the send queue, not yet handed to the socket
        # Created when the first frame is queued, dropped when the writer empties it: an
        # idle connection holds no deque (~0.8 KB each).
        self._queue: deque[bytes] | None = None
        self.overflowed = False
        self._gone = False  # the socket failed under the writer
        self.greeted = False
        self._started = False  # frames queue until start()
        self._halted = False  # close() or abort(): nothing more is written
        self.writer: asyncio.Task[None] | None = None  # while the queue is being drained
        # While a paced replay waits for the queue to empty to a quarter (None: not waiting;
        # created then, not per connection).
        self._room: asyncio.Event | None = None

    @property
    def stopped(self) -> bool:
        """Overflowed, or its socket failed: nothing more will be sent."""
        return self.overflowed or self._gone

    def start(self) -> None:
        self._started = True
        self._drain()

    def offer(self, seq: int, frame: bytes, covers: int = 0) -> None:
        """A live (or resynced) event frame; delivered once, in sequence order.

        ``covers`` > 0 marks a checkpoint that repeats what a device with everything up to
        that sequence already has; such a device skips it.
        """
        if self.replaying:
            if self.overflowed:
                return
            self._buffer.append((seq, frame, covers))
            self._buffer_bytes += len(frame)
            over_bytes = self._buffer_bytes > self._byte_limit and len(self._buffer) > 1
            if len(self._buffer) > self._limit or over_bytes:
                self._overflow()
                self._buffer, self._buffer_bytes = [], 0
            return
        if self.overflowed or seq <= self.delivered or (covers and self.delivered >= covers):
            return
        self.push(frame)
        if self.overflowed:
            return  # not queued: neither delivered nor counted as read
        self.delivered = seq
        if self._on_delivered is not None:
            self._on_delivered(seq)

    def push(self, frame: bytes) -> None:
        """Queue any frame for sending (no sequence check)."""
        if self.overflowed or self._halted:
            return
        if (
            not self._queue
            and self._write_now is not None
            and self._started
            and not self._gone
            and self.writer is None
        ):
            try:
                if self._write_now(frame):
                    return
            except (ConnectionError, RuntimeError):
                self._failed()
                return
        # One frame is always let through, however large, so a frame over the byte bound
        # cannot make a device overflow on every reconnect.
        if self.queued_frames >= self._limit or (
            self.queued_bytes and self.queued_bytes + len(frame) > self._byte_limit
        ):
            self._overflow()
            return
        self.queued_bytes += len(frame)
        if self._queue is None:
            self._queue = deque()
        self._queue.append(frame)
        if self.writer is None:
            self._drain()

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
        if self.queued_frames >= self._limit // 2 or self.queued_bytes >= self._byte_limit // 2:
            room = self._room = asyncio.Event()
            try:
                await asyncio.wait_for(room.wait(), STALL_SECONDS)
            except TimeoutError:
                self._overflow()  # not a frame taken for that long: a slow client
            finally:
                if self._room is room:
                    self._room = None
        if self.stopped:
            return  # the connection is being closed; push() would drop it anyway
        self.push(frame)
        if self.overflowed:
            return
        self.delivered = seq
        if self._on_delivered is not None:
            self._on_delivered(seq)

    def go_live(self, caught_up_to: int) -> None:
        """End the replay: deliver buffered live frames newer than the replay."""
        self.delivered = max(self.delivered, caught_up_to)
        self.replaying = False
        buffered, self._buffer = self._buffer, []
        self._buffer_bytes = 0
        for seq, frame, covers in buffered:
            self.offer(seq, frame, covers)

    def _overflow(self) -> None:
        if not self.overflowed:
            self.overflowed = True
            self._wake()  # a paced replay must not wait for a writer that is going away
            log.warning(
                "device_slow",
                session=self.session,
                delivered=self.delivered,
                queued_frames=self.queued_frames,
                queued_bytes=self.queued_bytes,
            )
            self._on_overflow(self)

    def _failed(self) -> None:
        self._gone = True  # the socket is closing or gone; the connection cleans up
        self._wake()  # a paced replay must not wait for this writer

    def _wake(self) -> None:
        if self._room is not None:
            self._room.set()

    @property
    def queued_frames(self) -> int:
        """Frames in the send queue, not yet handed to the socket."""
        return len(self._queue) if self._queue is not None else 0

    def _drain(self) -> None:
        """Start the writer if frames are queued and it may write."""
        if self._queue and self._started and not self._gone and not self._halted:
            self.writer = asyncio.create_task(self._write_loop())

    async def _write_loop(self) -> None:
        try:
            queue = self._queue
            while queue:
                frame = queue.popleft()
                try:
                    await self._send(frame)
                except (ConnectionError, RuntimeError):
                    self._failed()
                    return
                finally:
                    self.queued_bytes -= len(frame)
                if (
                    self._room is not None
                    and len(queue) <= self._limit // 4
                    and self.queued_bytes <= self._byte_limit // 4
                ):
                    self._room.set()
        finally:
            if self.writer is asyncio.current_task():
                self.writer = None
                if self._queue is not None and not self._queue:
                    self._queue = None  # emptied: an idle device holds no deque

    async def close(self) -> None:
        """Stop writing after what is queued has been sent."""
        self._halted = True
        writer = self.writer
        if writer is None:
            return
        try:
            await asyncio.wait_for(writer, 5.0)
        except (TimeoutError, ConnectionError, RuntimeError):
            writer.cancel()
        except Exception:  # noqa: BLE001 - a dead socket must not break the close path
            writer.cancel()

    def abort(self) -> None:
        self._halted = True
        self._wake()
        if self.writer is not None:
            self.writer.cancel()


def slow_client_error() -> SlowClient:
    return SlowClient("send queue overflowed; reconnect with since set to your last sequence")

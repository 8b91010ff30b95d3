"""Socket-level helpers of the WebSocket endpoint: a frame written straight into the socket
without a task switch, and dropping a socket whose peer stopped reading.

aiohttp's ``send_frame`` is a coroutine only because it may wait for the transport to
drain (and, with permessage-deflate, for large frames to be compressed in an executor).
While the transport is under its high-water mark and the connection is not compressed,
the frame can be written synchronously: that is what ``DirectWrite`` does, and it answers
False (the device then queues the frame for its writer task, which awaits ``send_frame``)
whenever it cannot.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import WSMsgType, web

TEXT = int(WSMsgType.TEXT)


class DirectWrite:
    """``Device``'s ``write_now`` for an aiohttp ``WebSocketResponse``."""

    __slots__ = ("_on_written", "_ws")

    def __init__(self, ws: web.WebSocketResponse, on_written: Callable[[bytes], None]) -> None:
        self._ws = ws
        self._on_written = on_written

    def __call__(self, frame: bytes) -> bool:
        try:
            writer = self._ws._writer  # aiohttp has no public synchronous write
            if writer is None or writer.compress or writer._closing or writer.protocol._paused:
                return False
            write = writer._write_websocket_frame
        except AttributeError:  # an aiohttp without these internals: the queued path works
            return False
        # Raises ClientConnectionResetError (a ConnectionError) if the transport is closing.
        write(frame, TEXT, 0)
        self._on_written(frame)
        return True


def abort_if_stuck(transport: asyncio.Transport) -> None:
    """Drop a socket whose peer stopped reading (what it still buffers is discarded)."""
    try:
        if transport.get_write_buffer_size() > 0:
            transport.abort()
    except (OSError, RuntimeError):  # already gone
        pass

"""Live reads: long-poll (protocol §5.6) and Server-Sent Events (§5.7).

A live reader subscribes to the headers-only republish of its stream's subject
(``tether.dslive.{gen}``) *before* reading, so no append can slip between the read and the
wait; a republished message only wakes it, and the bytes are then read from the stream
like any catch-up read. Any gateway serves any live reader: appends through another gateway
wake it the same way.
"""

from __future__ import annotations

import asyncio
import base64
import re
import time

import orjson
from aiohttp import web
from nats.aio.msg import Msg

from services.gateway.durable_streams import body, offsets
from services.gateway.durable_streams.service import Page, Streams
from shared import subjects
from shared.errors import ClientError

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
IDLE_CHECK = 2.0  # how often an idle SSE response checks that its client is still there


class Wakeup:
    """A subscription to one stream incarnation's appends, as an event."""

    def __init__(self, streams: Streams, gen: str) -> None:
        self.streams = streams
        self.gen = gen
        self.event = asyncio.Event()
        self._sub: object | None = None

    async def __aenter__(self) -> Wakeup:
        async def on_message(_: Msg) -> None:
            self.event.set()

        self._sub = await self.streams.nc.subscribe(subjects.ds_live(self.gen), cb=on_message)
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()  # type: ignore[attr-defined]

    async def wait(self, timeout: float) -> bool:
        """Whether something was appended within ``timeout`` seconds."""
        if timeout <= 0:
            return self.event.is_set()
        try:
            await asyncio.wait_for(self.event.wait(), timeout)
        except TimeoutError:
            return False
        self.event.clear()
        return True


async def long_poll(
    streams: Streams,
    name: str,
    after: int | None,
    timeout: float,
    max_bytes: int,
) -> tuple[Page, bool]:
    """Wait up to ``timeout`` for data after ``after`` (None: the tail). Returns the page
    and whether the stream is closed at its end."""
    record = await streams.load(name, touch=True)
    deadline = time.monotonic() + timeout
    async with Wakeup(streams, record.meta.gen) as wakeup:
        if after is None:
            record = await streams.load(name)
            after = record.meta.tail
        while True:
            page = await streams.read(record.meta, after, max_bytes)
            if any(page.payloads):
                return page, page.closed and page.up_to_date
            after = page.next_seq
            if page.closed:
                return page, True
            if not await wakeup.wait(deadline - time.monotonic()):
                return page, False
            record = await streams.load(name)


def _data_lines(text: str) -> list[str]:
    return [f"data:{line}" for line in _LINE_BREAK.split(text)]


def data_event(content_type: str, payloads: list[bytes]) -> bytes:
    """One SSE ``data`` event carrying a batch of payloads (JSON array, text, or base64)."""
    if offsets.is_json(content_type):
        lines = [f"data:{body.json_array(payloads).decode('utf-8', errors='replace')}"]
    elif offsets.is_text(content_type):
        lines = _data_lines(b"".join(payloads).decode("utf-8", errors="replace"))
    else:
        lines = [f"data:{base64.b64encode(b''.join(payloads)).decode()}"]
    return ("event: data\n" + "\n".join(lines) + "\n\n").encode()


def control_event(next_seq: int, cursor: str, up_to_date: bool, closed: bool) -> bytes:
    control: dict[str, object] = {"streamNextOffset": offsets.encode(next_seq)}
    if closed:
        control["streamClosed"] = True
    else:
        control["streamCursor"] = cursor
    if up_to_date:
        control["upToDate"] = True
    return b"event: control\ndata:" + orjson.dumps(control) + b"\n\n"


async def sse(
    streams: Streams,
    request: web.Request,
    name: str,
    after: int | None,
    headers: dict[str, str],
    lifetime: float,
    max_bytes: int,
) -> web.StreamResponse:
    """Stream data and control events until the stream closes or ``lifetime`` passes."""
    record = await streams.load(name, touch=True)
    content_type = record.meta.content_type
    response_headers = {
        **headers,
        "Content-Type": "text/event-stream",
        "Cache-Control": "no-cache",
    }
    if not offsets.is_text(content_type):
        response_headers["Stream-SSE-Data-Encoding"] = "base64"
    cursor = offsets.cursor(request.query.get("cursor"))
    deadline = time.monotonic() + lifetime
    response = web.StreamResponse(status=200, headers=response_headers)
    async with Wakeup(streams, record.meta.gen) as wakeup:
        if after is None:
            after = record.meta.tail
        await response.prepare(request)
        first = True
        while True:
            page = await streams.read(record.meta, after, max_bytes)
            data = [p for p in page.payloads if p]
            closed = page.closed and page.up_to_date
            after = page.next_seq
            if data or first or closed:
                # One write: a data event and its control event reach the client together.
                event = data_event(content_type, data) if data else b""
                event += control_event(after, cursor, page.up_to_date, closed)
                if not await _write(request, response, event):
                    return response
                first = False
            if closed:
                break
            if not page.up_to_date:
                continue
            if not await _idle(request, wakeup, deadline):
                break
            try:
                record = await streams.load(name)
            except ClientError:
                break  # deleted or expired while we waited
    await _write(request, response, b"", eof=True)
    return response


async def _write(
    request: web.Request, response: web.StreamResponse, data: bytes, *, eof: bool = False
) -> bool:
    """Write to the client; False when it has gone."""
    try:
        if eof:
            await response.write_eof(data)
        else:
            await response.write(data)
    except ConnectionResetError:
        return False
    return True


async def _idle(request: web.Request, wakeup: Wakeup, deadline: float) -> bool:
    """Wait for an append until ``deadline``; False on timeout or when the client left."""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        if await wakeup.wait(min(remaining, IDLE_CHECK)):
            return True
        transport = request.transport
        if transport is None or transport.is_closing():
            return False

"""Vercel AI SDK endpoints: ``POST /api/chat`` and ``GET /api/chat/{id}/stream``.

A front-end points ``useChat({ resume: true })`` / ``DefaultChatTransport`` at the gateway.
The chat id is the Tether session id. ``POST`` stores the last user message exactly as
``POST /v1/sessions/{id}/messages`` does (its UIMessage id is the message id, so a retried
POST is stored once) and streams the answer (aisdk_answer.py) as the UI message stream
protocol over SSE. ``GET .../stream`` resumes the answer in progress: compacted history
from the last user message on (one text delta with the text so far), then live deltas;
204 when nothing is in progress. Both follow the session like a WebSocket device does:
a ``Device`` joins the session's hub (live subscription first), the compacted history is
replayed into it, then it goes live; it drops what it already has by sequence. A stream
whose agent is gone (no agent present for a grace period, aisdk_watch.py) ends with an error.
"""

from __future__ import annotations

import asyncio
import time
from functools import partial
from typing import TYPE_CHECKING, Any

import orjson
import structlog
from aiohttp import web

from services.gateway import replay
from services.gateway.aisdk_answer import Answer, Chunk
from services.gateway.aisdk_watch import GONE, AgentWatch, agent_output
from services.gateway.device import Device
from services.gateway.http import error_response
from services.gateway.hub import SessionHub
from services.gateway.messages import publish_user_message
from services.gateway.ws import MAX_TEXT, REPLAY_PAGE
from shared import directget, subjects, wire
from shared.errors import BadFrame, ClientError, FrameTooLarge
from shared.ids import check_id
from shared.tokens import READ, WRITE

if TYPE_CHECKING:
    from services.gateway.app import Gateway

log = structlog.get_logger(__name__)

# The AI SDK sends the whole conversation with every POST; only the last message is stored.
MAX_CHAT_BODY = 1024 * 1024
KEEPALIVE_SECONDS = 15.0
SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "Connection": "keep-alive",
    "x-vercel-ai-ui-message-stream": "v1",
    "X-Accel-Buffering": "no",
}
_KEEPALIVE = b'{"type":"keepalive"}'
_DONE = b"data: [DONE]\n\n"


class UnsupportedMediaType(BadFrame):
    """A chat request whose body is not ``application/json``."""

    http_status = 415


def add_routes(app: web.Application, gateway: Gateway) -> None:
    app.router.add_post("/api/chat", partial(post_chat, gateway))
    app.router.add_get("/api/chat/{id}/stream", partial(resume_stream, gateway))


def sse(chunk: Chunk) -> bytes:
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


async def read_body(request: web.Request, limit: int = MAX_CHAT_BODY) -> bytes:
    """The request body, at most ``limit`` bytes (the gateway's frame limit is too small
    for the AI SDK, which resends the whole conversation each time)."""
    if request.content_type != "application/json":
        raise UnsupportedMediaType(
            f"content type must be application/json, not {request.content_type[:60]!r}"
        )
    if request.content_length is not None and request.content_length > limit:
        raise FrameTooLarge(f"request body is larger than {limit} bytes")
    body = bytearray()
    async for piece in request.content.iter_chunked(64 * 1024):
        body += piece
        if len(body) > limit:
            raise FrameTooLarge(f"request body is larger than {limit} bytes")
    return bytes(body)


def parse_chat(body: bytes) -> tuple[str, str, str]:
    """``(session, message id, text)`` of the last user message of an AI SDK chat request."""
    frame = wire.parse_json_object(body, "request body")
    session = check_id(frame.get("id"), "chat id")
    trigger = frame.get("trigger", "submit-message")
    if trigger == "regenerate-message":
        raise BadFrame(
            "trigger 'regenerate-message' is not supported: a Tether session is an append-only "
            "log; send a new user message instead"
        )
    if trigger != "submit-message":
        raise BadFrame(f"trigger must be 'submit-message', not {str(trigger)[:40]!r}")
    messages = frame.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadFrame("field 'messages' must be a non-empty array of UI messages")
    last = messages[-1]
    if not isinstance(last, dict):
        raise BadFrame("the last element of 'messages' must be a UI message object")
    if last.get("role") != "user":
        raise BadFrame(
            f"the last message must have role 'user', not {str(last.get('role'))[:40]!r}"
        )
    message_id = check_id(last.get("id"), "message id")
    parts = last.get("parts")
    if not isinstance(parts, list):
        raise BadFrame("the last message has no 'parts' array")
    texts = [
        part["text"]
        for part in parts
        if isinstance(part, dict)
        and part.get("type") == "text"
        and isinstance(part.get("text"), str)
    ]
    text = "\n".join(texts)
    if not text.strip():
        raise BadFrame("the last user message has no text part with text in it")
    if len(text) > MAX_TEXT:
        raise BadFrame(f"the message text is longer than {MAX_TEXT} characters")
    return session, message_id, text


class ChatStream:
    """One SSE response following one answer through a hub device."""

    def __init__(self, gateway: Gateway, session: str, answer: Answer, kind: str) -> None:
        self.gateway = gateway
        self.session = session
        self.answer = answer
        self.response = web.StreamResponse(headers=SSE_HEADERS)
        self.done = asyncio.Event()
        self.device = Device(
            session,
            0,
            self._send,
            queue_frames=gateway.settings.send_queue_frames,
            on_overflow=self._overflowed,
        )
        self.hub: SessionHub | None = None
        self.watch = AgentWatch(gateway.settings.aisdk_agent_grace_seconds, time.monotonic())
        self.log = log.bind(session=session, kind=kind)

    async def join(self) -> None:
        """Subscribe to the session's live feed (before its history is read)."""
        self.hub = await self.gateway.hubs.join(self.session, self.device)

    async def leave(self) -> None:
        self.device.abort()
        if self.hub is not None:
            self.hub = None
            await self.gateway.hubs.leave(self.session, self.device)

    def _overflowed(self, device: Device) -> None:
        self.log.warning("aisdk_stream_slow_client", delivered=device.delivered)
        self.done.set()  # the client reconnects with GET .../stream

    async def _write(self, data: bytes) -> None:
        try:
            await self.response.write(data)
        except (ConnectionError, RuntimeError):
            self.done.set()  # the client went away

    async def _send(self, frame: bytes) -> None:
        """The device's writer: every hub or replay frame, in sequence order, once."""
        if self.done.is_set():
            return
        item: dict[str, Any] = orjson.loads(frame)
        kind = item.get("type")
        if kind == "keepalive":
            await self._write(b": keep-alive\n\n")
            return
        if kind == "event":
            if agent_output(item["event"]):
                self.watch.output(time.monotonic())
            chunks = self.answer.feed(item["event"])
        elif kind == "failure":
            chunks = self.answer.fail(str(item.get("message")))
        else:
            return
        if chunks:
            await self._write(b"".join(sse(chunk) for chunk in chunks))
        if self.answer.done and not self.done.is_set():
            await self._write(_DONE)
            self.done.set()

    async def stream(
        self, request: web.Request, since: int, history: list[tuple[int, wire.Event]] | None
    ) -> web.StreamResponse:
        """Send the answer: the history after ``since`` (read now unless given), then live."""
        self.device.delivered = since
        await self.response.prepare(request)
        self.device.start()
        self.gateway.counters["aisdk_streams"] += 1
        try:
            try:
                last = await self._replay(since, history)
                self.device.go_live(last)
                if self.hub is not None:
                    self.hub.caught_up(last)
            except ClientError as error:
                self.log.warning("aisdk_stream_history_failed", error=error.message)
                self.device.push(orjson.dumps({"type": "failure", "message": error.message}))
            await self._wait(request)
            await self.device.close()
            if not self.done.is_set() or request.transport is None:
                return self.response
            try:
                await self.response.write_eof()
            except (ConnectionError, RuntimeError):
                pass
        finally:
            await self.leave()
            self.log.info(
                "aisdk_stream_closed",
                message=self.answer.message,
                run=self.answer.run,
                done=self.answer.done,
            )
        return self.response

    async def _replay(self, since: int, history: list[tuple[int, wire.Event]] | None) -> int:
        """Offer the compacted history after ``since`` (read page by page unless given)."""
        if history is not None:
            for seq, event in history:
                await self.device.replayed(seq, wire.event_frame(seq, event))
            return max([since, *(seq for seq, _ in history)])
        last = since
        async for chunk in replay.pages(
            self.gateway.nc,
            self.gateway.settings.log.stream_for(self.session),
            self.session,
            since,
            page_size=REPLAY_PAGE,
        ):
            for seq, event in chunk.events:
                await self.device.replayed(seq, wire.event_frame(seq, event))
            last = max(last, chunk.last_seq)
            if self.done.is_set():
                break  # the answer is over; what follows it is not needed
        return last

    async def _wait(self, request: web.Request) -> None:
        """Until the answer is over, the client leaves or falls behind; keep-alives meanwhile."""
        idle = 0.0
        while not self.done.is_set():
            transport = request.transport
            if transport is None or transport.is_closing():
                return
            try:
                await asyncio.wait_for(self.done.wait(), 1.0)
            except TimeoutError:
                self._check_agent()
                idle += 1.0
                if idle >= KEEPALIVE_SECONDS:
                    idle = 0.0
                    self.device.push(_KEEPALIVE)

    def _check_agent(self) -> None:
        """End the answer with an error when its agent is gone (aisdk_watch.py)."""
        roster = self.hub.roster if self.hub is not None else None
        if self.watch.gone(roster, self.answer, time.monotonic()):
            self.gateway.counters["aisdk_agent_gone"] += 1
            self.log.warning("aisdk_agent_gone", message=self.answer.message, run=self.answer.run)
            self.device.push(orjson.dumps({"type": "failure", "message": GONE}))


async def post_chat(gateway: Gateway, request: web.Request) -> web.StreamResponse:
    """``POST /api/chat``: store the last user message, stream its answer."""
    try:
        claims = gateway.authenticate(request)
        session, message_id, text = parse_chat(await read_body(request))
        claims.require(session, WRITE)
    except ClientError as error:
        gateway.counters["aisdk_rejected"] += 1
        return error_response(error)
    stream = ChatStream(gateway, session, Answer(message_id), "post")
    try:
        await stream.join()
        stored = await publish_user_message(gateway.nc, session, message_id, text, claims.subject)
    except ClientError as error:
        await stream.leave()
        return error_response(error)
    except BaseException:
        await stream.leave()
        raise
    gateway.counters["messages_in"] += 1
    stream.log.info(
        "aisdk_chat_message", message=message_id, seq=stored.seq, duplicate=stored.duplicate
    )
    return await stream.stream(request, stored.seq, None)


async def resume_stream(gateway: Gateway, request: web.Request) -> web.StreamResponse:
    """``GET /api/chat/{id}/stream``: the answer in progress, or 204."""
    try:
        session = check_id(request.match_info["id"], "chat id")
        claims = gateway.authenticate(request)
        claims.require(session, READ)
    except ClientError as error:
        gateway.counters["aisdk_rejected"] += 1
        return error_response(error)
    stream = ChatStream(gateway, session, Answer(None), "resume")
    try:
        await stream.join()
        since, user_message, tail = await last_exchange(gateway, session)
    except ClientError as error:
        await stream.leave()
        return error_response(error)
    except BaseException:
        await stream.leave()
        raise
    probe = Answer(user_message)
    for _, event in tail:
        probe.feed(event)
    if not probe.in_progress:
        await stream.leave()
        return web.Response(status=204)
    stream.answer = Answer(user_message)
    stream.log.info("aisdk_stream_resumed", message=probe.message, run=probe.run, since=since)
    return await stream.stream(request, since, tail)


async def last_exchange(
    gateway: Gateway, session: str
) -> tuple[int, str | None, list[tuple[int, wire.Event]]]:
    """The session's last user message (its sequence and id; 0 and None when there is
    none) and the compacted events after it. Reads the session's user messages, then only
    the stretch of the log after the last one."""
    stream = gateway.settings.log.stream_for(session)
    since, user_message = 0, None

    def latest(seq: int, headers: dict[str, str], data: bytes) -> bool:
        nonlocal since, user_message
        event = wire.decode_event(data)
        if (
            event is not None
            and event.get("type") == wire.MESSAGE_CREATED
            and isinstance(event.get("message"), str)
        ):
            since, user_message = seq, event["message"]
        return True

    users = subjects.kind_filter(session, subjects.USER)
    await directget.scan(gateway.nc, stream, users, 0, latest)
    tail: list[tuple[int, wire.Event]] = []
    async for chunk in replay.pages(gateway.nc, stream, session, since, page_size=REPLAY_PAGE):
        tail.extend(chunk.events)
    return since, user_message, tail

"""The gateway's HTTP endpoints: history, send, health."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from services.gateway import approvals, control, replay
from services.gateway.messages import publish_user_message
from services.gateway.ws import MAX_TEXT, parse_since
from shared import presence, subjects, wire
from shared.errors import BadFrame, ClientError, FrameTooLarge
from shared.ids import check_id, new_id
from shared.tokens import CONTROL, READ, WRITE, Claims

if TYPE_CHECKING:
    from services.gateway.app import Gateway


def json_response(body: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def error_response(error: ClientError) -> web.Response:
    return json_response({"error": error.as_dict()}, status=error.http_status)


def parse_limit(raw: str | None, maximum: int) -> int:
    if raw is None or raw == "":
        return min(100, maximum)
    try:
        value = int(raw)
    except ValueError:
        raise BadFrame(f"limit has value {raw[:40]!r}, not an integer") from None
    if not 1 <= value <= maximum:
        raise BadFrame(f"limit must be between 1 and {maximum}")
    return value


def authorized(gateway: Gateway, request: web.Request, scope: str = WRITE) -> tuple[str, Claims]:
    """The path's session id, checked, and the token's claims: they must grant the session
    and the action ``scope`` (read, write or control; the default fails closed)."""
    session = check_id(request.match_info["session"])
    claims = gateway.authenticate(request)
    claims.require(session, scope)
    return session, claims


async def json_body(gateway: Gateway, request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object, within the configured size limit."""
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        limit = gateway.settings.max_frame_bytes
        raise FrameTooLarge(f"request body is larger than {limit} bytes") from None
    return wire.parse_json_object(body, "request body")


async def events(gateway: Gateway, request: web.Request) -> web.Response:
    """``GET /v1/sessions/{id}/events?since=&limit=``: compacted, paginated history."""
    try:
        session, claims = authorized(gateway, request, READ)
        since = parse_since(request.query.get("since"))
        limit = parse_limit(request.query.get("limit"), gateway.settings.history_limit)
        position = await replay.locate(
            gateway.nc, gateway.settings.log.stream_for(session), since, request.query.get("epoch")
        )
        chunk = await anext(
            replay.pages(
                gateway.nc,
                gateway.settings.log.stream_for(session),
                session,
                position.since,
                page_size=limit,
                limit=limit,
            )
        )
    except ClientError as error:
        return error_response(error)
    return json_response(
        {
            "session": session,
            "epoch": position.epoch,
            "head": position.head,
            "since": position.since,
            "recovered": position.recovered,
            "events": [{"seq": seq, "event": event} for seq, event in chunk.events],
            "next": chunk.last_seq,
            "more": chunk.more,
        }
    )


async def post_message(gateway: Gateway, request: web.Request) -> web.Response:
    """``POST /v1/sessions/{id}/messages`` with ``{"id": ..., "text": ...}``."""
    try:
        session, claims = authorized(gateway, request, WRITE)
        frame = await json_body(gateway, request)
        message_id = frame.get("id")
        message_id = check_id(message_id, "message id") if message_id is not None else new_id("u-")
        text = wire.require_str(frame, "text", max_len=MAX_TEXT)
        stored = await publish_user_message(gateway.nc, session, message_id, text, claims.subject)
    except ClientError as error:
        return error_response(error)
    gateway.counters["messages_in"] += 1
    return json_response(
        {"id": stored.message, "seq": stored.seq, "duplicate": stored.duplicate},
        status=200 if stored.duplicate else 201,
    )


async def post_control(gateway: Gateway, request: web.Request) -> web.Response:
    """``POST /v1/sessions/{id}/control`` with ``{"action": "cancel"|"steer"|"approve", ...}``."""
    try:
        session, claims = authorized(gateway, request, CONTROL)
        frame = await json_body(gateway, request)
        if frame.get("action") == "approve":
            answered = await approvals.answer(
                gateway.nc, gateway.settings.log.stream_for(session), session, frame, claims.subject
            )
            gateway.counters["approvals_in"] += 1
            return json_response(
                {"approval": answered.approval, "option": answered.option, "seq": answered.seq},
                status=201,
            )
        stored = await control.publish_control(
            gateway.nc, gateway.settings.log.stream_for(session), session, frame, claims.subject
        )
    except ClientError as error:
        return error_response(error)
    gateway.counters["controls_in"] += 1
    return json_response(
        {"id": stored.control, "seq": stored.seq, "duplicate": stored.duplicate},
        status=200 if stored.duplicate else 201,
    )


async def get_presence(gateway: Gateway, request: web.Request) -> web.Response:
    """``GET /v1/sessions/{id}/presence``: who is in the session now."""
    try:
        session, claims = authorized(gateway, request, READ)
        current = await presence.snapshot(gateway.nc, subjects.presence_filter(session))
    except ClientError as error:
        return error_response(error)
    members = [c.entry.public() for c in current.values() if c.entry is not None]
    return json_response({"session": session, "members": members})


async def healthz(gateway: Gateway, request: web.Request) -> web.Response:
    """Liveness: 200 while the process answers (``status`` says whether NATS is reachable;
    whether to route traffic here is ``/readyz``'s answer, shared/ops.py)."""
    connected = gateway.nc.is_connected
    return json_response(
        {
            "status": "ok" if connected else "degraded",
            "nats": connected,
            "draining": gateway.draining,
            "connections": len(gateway.connections),
            **gateway.hubs.stats(),
            "counters": gateway.counters,
        }
    )

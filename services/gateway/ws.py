"""The WebSocket endpoint ``/v1/sessions/{id}/ws``.

Order of a connection: check the session id and token (errors close with a documented
code after an ``error`` frame), join the session's hub (live subscription first), send
``hello``, replay compacted history after ``since``, send ``caught_up``, then live
events. Client frames: ``send``, ``cancel``, ``steer``, ``approve`` and ``ping``; anything
else gets an ``error`` frame.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import orjson
import structlog
from aiohttp import WSMsgType, web

from services.gateway import approvals, control, replay
from services.gateway.cursors import CursorWriter
from services.gateway.device import Device, slow_client_error
from services.gateway.hub import SessionHub
from services.gateway.messages import publish_user_message
from shared import wire
from shared.errors import BadFrame, ClientError, FrameTooLarge
from shared.ids import check_id, new_id
from shared.tokens import Claims

if TYPE_CHECKING:
    from services.gateway.app import Gateway

log = structlog.get_logger(__name__)

REPLAY_PAGE = 5000
MAX_TEXT = 256 * 1024


async def reject(ws: web.WebSocketResponse, error: ClientError) -> web.WebSocketResponse:
    """Tell the client why (an ``error`` frame), then close with the error's code."""
    await ws.send_frame(wire.error_frame(error.code, error.message), WSMsgType.TEXT)
    await ws.close(code=error.ws_close_code, message=close_reason(error.message))
    return ws


def close_reason(message: str) -> bytes:
    """A close reason within the 123 bytes a close frame allows, cut on a UTF-8 boundary."""
    return message.encode()[:120].decode("utf-8", "ignore").encode()


def parse_since(raw: str | None) -> int:
    if raw is None or raw == "":
        return 0
    try:
        value = int(raw)
    except ValueError:
        raise BadFrame(f"since has value {raw[:40]!r}, not a sequence number") from None
    if value < 0:
        raise BadFrame("since must be zero or a positive sequence number")
    return value


async def handle(gateway: Gateway, request: web.Request) -> web.WebSocketResponse:
    settings = gateway.settings
    ws = web.WebSocketResponse(
        max_msg_size=settings.max_frame_bytes, heartbeat=settings.heartbeat_seconds
    )
    await ws.prepare(request)
    try:
        session = check_id(request.match_info["session"])
        claims = gateway.authenticate(request)
        claims.require(session)
        since = parse_since(request.query.get("since"))
    except ClientError as error:
        gateway.counters["ws_rejected"] += 1
        return await reject(ws, error)
    device_name = request.query.get("device") or request.headers.get("User-Agent") or ""
    await Connection(
        gateway, ws, session, claims, since, request.query.get("epoch"), device_name[:128]
    ).run()
    return ws


class Connection:
    """One device's WebSocket to one session."""

    def __init__(
        self,
        gateway: Gateway,
        ws: web.WebSocketResponse,
        session: str,
        claims: Claims,
        since: int,
        epoch: str | None,
        device_name: str = "",
    ) -> None:
        self.device_name = device_name
        self.gateway = gateway
        self.ws = ws
        self.session = session
        self.claims = claims
        self.id = new_id("conn-")
        self.since = since
        self.epoch = epoch
        self.cursor = (
            CursorWriter(gateway.cursors, session, claims.subject)
            if claims.role == "user"
            else None
        )
        self.device = Device(
            session,
            since,
            self._send,
            queue_frames=gateway.settings.send_queue_frames,
            on_overflow=self._overflowed,
            on_delivered=self.cursor.note if self.cursor is not None else None,
        )
        self.log = log.bind(session=session, connection=self.id)

    async def _send(self, frame: bytes) -> None:
        await self.ws.send_frame(frame, WSMsgType.TEXT)

    def _overflowed(self, device: Device) -> None:
        asyncio.create_task(self._close_slow())

    async def _close_slow(self) -> None:
        error = slow_client_error()
        self.device.abort()
        await self.ws.close(code=error.ws_close_code, message=error.code.encode())

    async def run(self) -> None:
        gateway = self.gateway
        gateway.connections.add(self)
        self.device.start()
        self.log.info("ws_connected", since=self.since)
        role = "agent" if self.claims.role == "agent" else "user"
        entry = gateway.presence.entry(
            self.session, role, self.claims.subject, self.id, "online", device=self.device_name
        )
        try:
            await gateway.presence.set(entry)
            hub = await gateway.hubs.join(self.session, self.device)
            await self._replay(hub)
            await self._read_loop()
        except ClientError as error:
            if not self.ws.closed:
                await reject(self.ws, error)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            gateway.connections.discard(self)
            await gateway.presence.remove(entry.key, "closed")
            await gateway.hubs.leave(self.session, self.device)
            self.device.abort()
            if self.cursor is not None:
                await self.cursor.close()
            if not self.ws.closed:
                await self.ws.close()
            self.log.info("ws_closed", code=self.ws.close_code, delivered=self.device.delivered)

    async def _replay(self, hub: SessionHub) -> None:
        gateway = self.gateway
        position = await replay.locate(
            gateway.nc, gateway.settings.log.stream, self.since, self.epoch
        )
        if not position.recovered:
            self.device.delivered = 0
        self.device.greet(
            orjson.dumps(
                {
                    "type": "hello",
                    "presence": hub.roster.snapshot(),
                    "protocol": wire.PROTOCOL_VERSION,
                    "session": self.session,
                    "connection": self.id,
                    "epoch": position.epoch,
                    "head": position.head,
                    "since": position.since,
                    "recovered": position.recovered,
                }
            )
        )
        last = position.since
        async for chunk in replay.pages(
            gateway.nc,
            gateway.settings.log.stream,
            self.session,
            position.since,
            page_size=REPLAY_PAGE,
        ):
            for seq, event in chunk.events:
                await self.device.replayed(seq, wire.event_frame(seq, event))
            last = chunk.last_seq
            gateway.counters["replayed_events"] += len(chunk.events)
        caught_up = max(last, self.device.delivered)
        self.device.push(orjson.dumps({"type": "caught_up", "seq": caught_up}))
        self.device.go_live(caught_up)
        hub.caught_up(caught_up)

    async def _read_loop(self) -> None:
        async for msg in self.ws:
            if msg.type == WSMsgType.TEXT:
                await self._on_frame(msg.data)
            elif msg.type == WSMsgType.BINARY:
                self._error(BadFrame("binary frames are not accepted; send JSON text frames"))
            elif msg.type == WSMsgType.ERROR:
                exc = self.ws.exception()
                if exc is not None and "size" in str(exc).lower():
                    self.gateway.counters["frames_too_large"] += 1
                    self.log.info("ws_frame_too_large", error=FrameTooLarge("frame too large").code)
                break

    def _error(self, error: ClientError, **extra: object) -> None:
        self.gateway.counters["bad_frames"] += 1
        self.device.push(wire.error_frame(error.code, error.message, **extra))

    async def _on_frame(self, data: str) -> None:
        try:
            frame = wire.parse_client_frame(data)
        except ClientError as error:
            self._error(error)
            return
        ref = frame.get("id") if isinstance(frame.get("id"), str) else None
        try:
            kind = frame["type"]
            if kind == "ping":
                self.device.push(orjson.dumps({"type": "pong", "id": ref}))
            elif kind == "send":
                await self._on_send(frame)
            elif kind in ("cancel", "steer"):
                await self._on_control(frame)
            elif kind == "approve":
                await self._on_approve(frame, ref)
            else:
                raise BadFrame(
                    f"unknown frame type {str(kind)[:40]!r}; "
                    "expected send, cancel, steer, approve or ping"
                )
        except ClientError as error:
            self._error(error, id=ref)

    async def _on_send(self, frame: dict[str, object]) -> None:
        message_id = frame.get("id")
        message_id = check_id(message_id, "message id") if message_id is not None else new_id("u-")
        text = wire.require_str(frame, "text", max_len=MAX_TEXT)
        stored = await publish_user_message(
            self.gateway.nc, self.session, message_id, text, self.claims.subject
        )
        self.gateway.counters["messages_in"] += 1
        self.device.push(
            orjson.dumps(
                {"type": "ack", "id": message_id, "seq": stored.seq, "duplicate": stored.duplicate}
            )
        )

    async def _on_control(self, frame: dict[str, object]) -> None:
        stored = await control.publish_control(
            self.gateway.nc,
            self.gateway.settings.log.stream,
            self.session,
            frame,
            self.claims.subject,
        )
        self.gateway.counters["controls_in"] += 1
        self.device.push(
            orjson.dumps(
                {
                    "type": "ack",
                    "id": stored.control,
                    "seq": stored.seq,
                    "duplicate": stored.duplicate,
                }
            )
        )

    async def _on_approve(self, frame: dict[str, object], ref: str | None) -> None:
        answered = await approvals.answer(
            self.gateway.nc,
            self.gateway.settings.log.stream,
            self.session,
            frame,
            self.claims.subject,
        )
        self.gateway.counters["approvals_in"] += 1
        self.device.push(
            orjson.dumps(
                {
                    "type": "ack",
                    "id": ref if ref is not None else answered.approval,
                    "approval": answered.approval,
                    "option": answered.option,
                    "seq": answered.seq,
                    "duplicate": False,
                }
            )
        )

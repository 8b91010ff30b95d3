"""The WebSocket endpoint ``/v1/sessions/{id}/ws``.

Order of a connection: check the session id and token (errors close with a documented
code after an ``error`` frame), join the session's hub (live subscription first), send
``hello``, replay compacted history after ``since``, send ``caught_up``, then live
events. Client frames: ``send``, ``cancel``, ``steer``, ``approve`` and ``ping``; anything
else gets an ``error`` frame.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

import orjson
import structlog
from aiohttp import WSCloseCode, WSMsgType, web

from services.gateway import approvals, control, replay
from services.gateway.cursors import CursorWriter
from services.gateway.deadlines import Deadline
from services.gateway.device import Device, slow_client_error
from services.gateway.hub import SessionHub
from services.gateway.messages import publish_user_message
from services.gateway.wswrite import DirectWrite, abort_if_stuck
from shared import wire
from shared.errors import BadFrame, ClientError, FrameTooLarge, TooManyConnections, Unauthorized
from shared.ids import check_id, new_id
from shared.tokens import CONTROL, READ, WRITE, Claims

if TYPE_CHECKING:
    from services.gateway.app import Gateway

log = structlog.get_logger(__name__)

REPLAY_PAGE = 5000
CLOSE_TIMEOUT = 5.0  # a close that cannot be written by then (peer not reading) aborts
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
        claims.require(session, READ)
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
            queue_bytes=gateway.settings.send_queue_bytes,
            write_now=DirectWrite(ws, gateway.metrics.frame_out),
        )
        self.gate = gateway.limits.frame_gate(claims, session)
        request = ws._req  # aiohttp keeps no public handle on the transport
        self._transport = request.transport if request is not None else None

    @property
    def log(self) -> Any:
        """This connection's logger (bound when used: a few lines per connection, so no
        bound logger is held per connection)."""
        return log.bind(session=self.session, connection=self.id)

    async def _send(self, frame: bytes) -> None:
        await self.ws.send_frame(frame, WSMsgType.TEXT)
        self.gateway.metrics.frame_out(frame)

    def _overflowed(self, device: Device) -> None:
        self._slow_close = asyncio.create_task(self._close_slow())  # referenced: not GC'd

    async def _close_slow(self) -> None:
        error = slow_client_error()
        self.gateway.counters["slow_clients"] += 1
        # The writer is stopped after the close, not before: it may be waiting for the socket
        # to drain, and cancelling it would cancel aiohttp's shared drain waiter, which the
        # close frame then waits on too. (The writer ends by itself: aiohttp refuses frames
        # after the close frame.)
        await self._close_within(
            self.ws.close(code=error.ws_close_code, message=error.code.encode())
        )
        self.device.abort()

    async def _close_within(self, closing: Awaitable[object]) -> None:
        """Run a close; a peer that does not read cannot take even the close frame, so a
        socket still holding unsent data ``CLOSE_TIMEOUT`` after the close is aborted."""
        request = self.ws._req  # aiohttp keeps no public handle on the transport
        transport = request.transport if request is not None else None
        try:
            await asyncio.wait_for(closing, CLOSE_TIMEOUT)
        except (TimeoutError, ConnectionError, RuntimeError):
            if transport is not None:
                abort_if_stuck(transport)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            # Not us: aiohttp's shared drain waiter was cancelled (a writer stopped while the
            # peer was not reading), so the close frame could not be written.
            if transport is not None:
                abort_if_stuck(transport)
        else:
            if transport is not None:  # closed gracefully, maybe still flushing: check later
                asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, abort_if_stuck, transport)

    async def close_for_restart(self) -> None:
        """The gateway is draining (its queue was flushed first): close 1012, service
        restart; the client reconnects with ``since``, possibly to another gateway."""
        self.device.abort()
        await self._close_within(
            self.ws.close(code=WSCloseCode.SERVICE_RESTART, message=b"service restart")
        )

    async def _refuse(self, error: ClientError) -> None:
        self.gateway.counters["ws_refused_" + error.code] += 1
        self.log.info("ws_refused", code=error.code, subject=self.claims.subject)
        await self._close_within(reject(self.ws, error))

    async def run(self) -> None:
        gateway = self.gateway
        if not gateway.limits.connections.acquire(self.claims.subject):
            limit = gateway.limits.connections.maximum
            await self._refuse(
                TooManyConnections(f"this token's subject already has {limit} connections here")
            )
            return
        gateway.connections.add(self)
        self.device.start()
        expiry = self._close_at_expiry()
        self.log.info("ws_connected", since=self.since)
        role = "agent" if self.claims.role == "agent" else "user"
        entry = gateway.presence.entry(
            self.session, role, self.claims.subject, self.id, "online", device=self.device_name
        )
        try:
            stored = await gateway.presence.set(entry)
            hub = await gateway.hubs.join(self.session, self.device)
            if stored is not None:
                # The hub's snapshot may come from a replica that has not applied this put
                # yet (direct gets in a cluster), and its live copy may have gone out before
                # the hub subscribed: the hello must list this device, the others learn of it.
                hub.presence_changed(stored)
            await self._replay(hub)
            await self._read_loop()
        except ClientError as error:
            if not self.ws.closed:
                await reject(self.ws, error)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            expiry.cancel()
            gateway.limits.connections.release(self.claims.subject)
            gateway.connections.discard(self)
            await gateway.presence.remove(entry.key, "closed")
            await gateway.hubs.leave(self.session, self.device)
            self.device.abort()
            if self.cursor is not None:
                await self.cursor.close()
            if not self.ws.closed:
                await self._close_within(self.ws.close())
            elif self._transport is not None:  # closed by aiohttp (heartbeat): may be stuck
                loop = asyncio.get_running_loop()
                loop.call_later(CLOSE_TIMEOUT, abort_if_stuck, self._transport)
            self.log.info("ws_closed", code=self.ws.close_code, delivered=self.device.delivered)

    def _close_at_expiry(self) -> Deadline:
        """Close with 4401 when the token expires (plus the leeway): no socket outlives it.
        (On the gateway's shared deadline timer, not a timer per connection.)"""
        delay = self.claims.expires_at + self.gateway.settings.jwt_leeway_seconds - time.time()
        return self.gateway.deadlines.call_later(delay, self._token_expired)

    def _token_expired(self) -> None:
        self.gateway.counters["ws_token_expired"] += 1
        self.log.info("ws_token_expired", subject=self.claims.subject)
        error = Unauthorized("token expired; reconnect with a new token and since")
        self._expired = asyncio.create_task(self._close_within(reject(self.ws, error)))

    async def _replay(self, hub: SessionHub) -> None:
        gateway = self.gateway
        position = await replay.locate(
            gateway.nc, gateway.settings.log.stream_for(self.session), self.since, self.epoch
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
        replayed_events = replayed_bytes = 0
        async for chunk in replay.pages(
            gateway.nc,
            gateway.settings.log.stream_for(self.session),
            self.session,
            position.since,
            page_size=REPLAY_PAGE,
        ):
            for seq, event in chunk.events:
                frame = wire.event_frame(seq, event)
                replayed_events += 1
                replayed_bytes += len(frame)
                await self.device.replayed(seq, frame)
            if self.device.stopped:
                raise ConnectionResetError("slow or gone client: closed during its replay")
            last = chunk.last_seq
            gateway.counters["replayed_events"] += len(chunk.events)
        gateway.metrics.replayed(replayed_events, replayed_bytes)
        caught_up = max(last, self.device.delivered)
        self.device.push(orjson.dumps({"type": "caught_up", "seq": caught_up}))
        self.device.go_live(caught_up)
        hub.caught_up(caught_up)

    async def _read_loop(self) -> None:
        async for msg in self.ws:
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY) and not self.gate.allow():
                self.gateway.counters["frames_rate_limited"] += 1
                if self.gate.refused > self.gateway.settings.frame_burst:
                    await self._refuse(self.gate.error())  # kept on flooding: close 4429
                    break
                self._error(self.gate.error())  # this frame is dropped, not processed
                continue
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
            self.gateway.metrics.frame_in(None)
            self._error(error)
            return
        self.gateway.metrics.frame_in(frame.get("type"))
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
        self.claims.require_scope(WRITE)
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
        self.claims.require_scope(CONTROL)
        stored = await control.publish_control(
            self.gateway.nc,
            self.gateway.settings.log.stream_for(self.session),
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
        self.claims.require_scope(CONTROL)
        answered = await approvals.answer(
            self.gateway.nc,
            self.gateway.settings.log.stream_for(self.session),
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

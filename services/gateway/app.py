"""The gateway process: aiohttp app, NATS connection, start-up and shutdown order.

Start-up: connect to NATS, ensure the session stream, serve. Shutdown (SIGTERM or
SIGINT): stop accepting, close every WebSocket with 1012 (service restart: reconnect,
possibly elsewhere, with ``since``), drain NATS.
"""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from functools import partial
from typing import TYPE_CHECKING

import orjson
import structlog
from aiohttp import WSCloseCode, web
from nats.aio.client import Client as NATS
from nats.js.kv import KeyValue

from services.gateway import admin, http, ws
from services.gateway.hub import Hubs
from services.gateway.settings import GatewaySettings
from shared import natsconn, presence, subjects, webhooks
from shared.streams import ensure_stream
from shared.tokens import Claims, verify

if TYPE_CHECKING:
    from services.gateway.ws import Connection

log = structlog.get_logger(__name__)


class Gateway:
    """The state one gateway process shares between its handlers."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self._nc: NATS | None = None
        self._hubs: Hubs | None = None
        self._presence: presence.Writer | None = None
        self._buckets: dict[str, KeyValue] = {}
        self.connections: set[Connection] = set()
        self.counters: Counter[str] = Counter()
        self.runner: web.AppRunner | None = None
        self.port = settings.port

    @property
    def nc(self) -> NATS:
        if self._nc is None:
            raise RuntimeError("gateway is not started")
        return self._nc

    @property
    def hubs(self) -> Hubs:
        if self._hubs is None:
            raise RuntimeError("gateway is not started")
        return self._hubs

    @property
    def presence(self) -> presence.Writer:
        if self._presence is None:
            raise RuntimeError("gateway is not started")
        return self._presence

    def bucket(self, name: str) -> KeyValue:
        """One of the KV buckets opened at start-up (cursors, webhooks, dead letters)."""
        kv = self._buckets.get(name)
        if kv is None:
            raise RuntimeError(f"gateway is not started (bucket {name})")
        return kv

    @property
    def cursors(self) -> KeyValue:
        return self.bucket(subjects.CURSORS_BUCKET)

    def authenticate(self, request: web.Request) -> Claims:
        """Verify the token from ``Authorization: Bearer`` or ``?token=``."""
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else None
        token = token or request.query.get("token")
        return verify(
            token,
            self.settings.jwt_secret,
            audience=self.settings.jwt_audience,
            issuer=self.settings.jwt_issuer,
        )

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.max_frame_bytes)
        app.router.add_get("/v1/sessions/{session}/ws", partial(ws.handle, self))
        app.router.add_get("/v1/sessions/{session}/events", partial(http.events, self))
        app.router.add_post("/v1/sessions/{session}/messages", partial(http.post_message, self))
        app.router.add_post("/v1/sessions/{session}/control", partial(http.post_control, self))
        app.router.add_get("/v1/sessions/{session}/presence", partial(http.get_presence, self))
        app.router.add_get("/healthz", partial(http.healthz, self))
        admin.add_routes(app, self)
        return app

    async def start(self) -> None:
        self._nc = await natsconn.connect(self.settings.nats, on_reconnect=self._on_reconnect)
        await ensure_stream(self._nc, self.settings.log)
        await presence.ensure_bucket(self._nc, self.settings.log.replicas)
        replicas = self.settings.log.replicas
        for name in (
            subjects.CURSORS_BUCKET,
            subjects.WEBHOOKS_BUCKET,
            subjects.DEAD_LETTERS_BUCKET,
        ):
            self._buckets[name] = await webhooks.bucket(self._nc, name, replicas)
        await webhooks.ensure_deliveries(self._nc, replicas)
        self._hubs = Hubs(self._nc, self.settings.log.stream)
        self._presence = presence.Writer(self._nc)
        self._presence.start()
        # access_log=None: the access log would print ?token= query strings.
        self.runner = web.AppRunner(
            self.app(), access_log=None, handle_signals=False, shutdown_timeout=5.0
        )
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.settings.host, self.settings.port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = sockets[0].getsockname()[1]
        log.info("gateway_listening", host=self.settings.host, port=self.port)

    async def _on_reconnect(self) -> None:
        if self._presence is not None:
            await self._presence.reown()  # before the presence service's grace period ends
        if self._hubs is not None:
            await self._hubs.resync_all()

    async def stop(self) -> None:
        log.info("gateway_stopping", connections=len(self.connections))
        for connection in list(self.connections):
            await connection.ws.close(code=WSCloseCode.SERVICE_RESTART, message=b"restarting")
        if self.runner is not None:
            await self.runner.cleanup()
        if self._nc is not None:
            await natsconn.close(self._nc)
        log.info("gateway_stopped")


async def serve(settings: GatewaySettings) -> None:
    """Run a gateway until SIGTERM or SIGINT."""
    gateway = Gateway(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await gateway.start()
    print(
        orjson.dumps({"event": "ready", "service": "gateway", "port": gateway.port}).decode(),
        flush=True,
    )
    await stop.wait()
    await gateway.stop()

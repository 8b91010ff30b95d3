"""The gateway process: aiohttp app, NATS connection, start-up and shutdown order.

Start-up: connect to NATS, ensure the session stream, serve. Shutdown (SIGTERM or
SIGINT), in this order (``Gateway.stop``):

1. ``/readyz`` answers 503 ``draining``, so a proxy or orchestrator stops routing here;
   the gateway keeps serving for ``TETHER_DRAIN_DELAY_SECONDS`` while they notice.
2. Stop accepting: the listening sockets close (new connections go to other gateways).
3. Every WebSocket gets what is already queued for it, then a close 1012 (service restart:
   reconnect, possibly elsewhere, with ``since``); each connection removes its presence.
4. The HTTP server shuts down (requests in flight get ``shutdown_timeout``).
5. NATS is drained (pending publishes flushed), then closed.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from functools import partial
from typing import TYPE_CHECKING

import structlog
from aiohttp import web
from nats.aio.client import Client as NATS
from nats.js.kv import KeyValue

from services.gateway import admin, aisdk, durable_streams, gcpolicy, http, static, ws
from services.gateway.auth import origin_middleware
from services.gateway.deadlines import Deadlines
from services.gateway.hub import Hubs
from services.gateway.limits import Limits, middleware
from services.gateway.metrics import GatewayMetrics
from services.gateway.settings import GatewaySettings
from shared import leaders, natsconn, ops, presence, subjects, webhooks
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
        self._balancer: asyncio.Task[None] | None = None
        self._buckets: dict[str, KeyValue] = {}
        self.connections: set[Connection] = set()
        self.deadlines = Deadlines()  # the WebSockets' token expiries, on one timer
        self.counters: Counter[str] = Counter()
        self.limits = Limits(settings)
        self.runner: web.AppRunner | None = None
        self.port = settings.port
        self.metrics = GatewayMetrics(lambda: len(self.connections))
        self.ops = ops.Ops("gateway", self.metrics, self._readiness)

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
            self.settings.keyring,
            audience=self.settings.jwt_audience,
            issuer=self.settings.jwt_issuer,
            leeway=self.settings.jwt_leeway_seconds,
        )

    def app(self) -> web.Application:
        app = web.Application(
            client_max_size=self.settings.max_frame_bytes,
            middlewares=[origin_middleware(self.settings.allowed_origins), middleware(self)],
        )
        app.router.add_get("/v1/sessions/{session}/ws", partial(ws.handle, self))
        app.router.add_get("/v1/sessions/{session}/events", partial(http.events, self))
        app.router.add_post("/v1/sessions/{session}/messages", partial(http.post_message, self))
        app.router.add_post("/v1/sessions/{session}/control", partial(http.post_control, self))
        app.router.add_get("/v1/sessions/{session}/presence", partial(http.get_presence, self))
        app.router.add_get("/healthz", partial(http.healthz, self))
        self.ops.add_routes(app, healthz=False)  # /readyz and /metrics
        admin.add_routes(app, self)
        durable_streams.add_routes(app, self)
        aisdk.add_routes(app, self)
        static.add_routes(app)
        return app

    async def start(self) -> None:
        self._nc = await natsconn.connect(self.settings.nats, on_reconnect=self._on_reconnect)
        self.metrics.watch(self._nc)
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
        await durable_streams.ensure(self)
        self._hubs = Hubs(self._nc, self.settings.log)
        self._presence = presence.Writer(self._nc)
        log_settings = self.settings.log
        period = self.settings.leader_balance_seconds
        if log_settings.partitions > 1 and log_settings.replicas > 1 and period > 0:
            balancer = leaders.Balancer(self._nc, log_settings.streams, period)
            self._balancer = asyncio.create_task(balancer.run())
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

    @property
    def draining(self) -> bool:
        return self.ops.draining

    async def _readiness(self) -> str | None:
        """Connected to NATS, and the session stream and every bucket exist."""
        streams = [
            *self.settings.log.streams,
            subjects.PRESENCE_STREAM,
            *(f"KV_{name}" for name in self._buckets),
            subjects.DELIVERIES_STREAM,
        ]
        return await ops.nats_readiness(self._nc, streams)

    async def _on_reconnect(self) -> None:
        if self._presence is not None:
            await self._presence.reown()  # before the presence service's grace period ends
        if self._hubs is not None:
            await self._hubs.resync_all()

    async def stop(self) -> None:
        """Drain and stop, in the order of the module docstring."""
        settings = self.settings
        self.ops.start_draining()  # 1. /readyz: 503 draining
        log.info(
            "gateway_draining",
            connections=len(self.connections),
            delay=settings.drain_delay_seconds,
        )
        if settings.drain_delay_seconds > 0 and self.runner is not None:
            await asyncio.sleep(settings.drain_delay_seconds)
        if self.runner is not None:  # 2. stop accepting (open connections stay)
            for site in list(self.runner.sites):
                await site.stop()
        closed = await self._close_websockets(settings.drain_seconds)  # 3.
        if self.runner is not None:  # 4.
            await self.runner.cleanup()
        if self._presence is not None:  # entries of connections that did not finish
            await self._presence.close()
        if self._balancer is not None:
            self._balancer.cancel()
            await asyncio.gather(self._balancer, return_exceptions=True)
        if self._nc is not None:  # 5.
            await natsconn.close(self._nc)
        log.info("gateway_stopped", websockets_closed=closed)

    async def _close_websockets(self, timeout: float) -> int:
        """Flush each WebSocket's queue, then close it with 1012; wait (at most ``timeout``)
        until every connection has ended and every close is done. A connection that was
        being accepted when the listener closed is caught by the next round; their
        handlers finish their cleanup (presence, hub) before the HTTP server's shutdown
        completes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        closing: dict[Connection, asyncio.Task[None]] = {}
        while self.connections and loop.time() < deadline:
            for connection in list(self.connections):
                if connection not in closing:
                    closing[connection] = asyncio.create_task(self._restart(connection))
            await asyncio.sleep(0.05)
        if closing:
            await asyncio.wait(closing.values(), timeout=max(0.0, deadline - loop.time()))
        for task in closing.values():
            task.cancel()  # past the deadline: the HTTP server's shutdown cuts the rest
        await asyncio.gather(*closing.values(), return_exceptions=True)
        if self.connections:
            log.warning("gateway_drain_timeout", connections=len(self.connections))
        return len(closing)

    async def _restart(self, connection: Connection) -> None:
        """What is queued, then close 1012 (the client reconnects elsewhere with ``since``)."""
        await connection.device.close()  # the writer sends what is queued, then stops
        await connection.close_for_restart()


async def serve(settings: GatewaySettings) -> None:
    """Run a gateway until SIGTERM or SIGINT."""
    gateway = Gateway(settings)
    stop = ops.stop_on_signals()
    await gateway.start()
    gcpolicy.apply(settings.gc_thresholds, settings.gc_freeze)
    ops.announce_ready("gateway", gateway.port)
    await stop.wait()
    await gateway.stop()

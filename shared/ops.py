"""Operations endpoints shared by every Tether process: liveness, readiness and metrics.

* ``GET /healthz``: the process is alive (its event loop answers): always 200.
* ``GET /readyz``: ready to serve: connected to NATS and every stream and KV bucket the
  process needs exists; 200 ``{"status":"ready"}``, else 503 ``{"status":"not_ready",
  "reason":…}`` (``"status":"draining"`` once a graceful stop began).
* ``GET /metrics``: Prometheus text exposition of the process's own registry.

The gateway serves these on its own port; the presence service, the notifier and the demo
agent have no other HTTP server, so :class:`OpsServer` runs a small one for them
(``TETHER_<SERVICE>_HTTP_HOST`` / ``TETHER_<SERVICE>_HTTP_PORT``, port 0 = a random free
port, reported as ``port`` in the process's ``ready`` line).

Metrics live in a :class:`prometheus_client.CollectorRegistry` created per service
instance (never the global one), so several services in one process, as in tests, never
collide, and importing this module does no work.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass

import orjson
import structlog
from aiohttp import web
from nats.aio.client import Client as NATS
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from shared import streams
from shared.errors import ConfigError, Unavailable
from shared.settings import Env

log = structlog.get_logger(__name__)

READY_TIMEOUT = 2.0  # a readiness probe never hangs longer than this

# None when ready, else why not (a short sentence for the 503 body).
ReadyCheck = Callable[[], Awaitable[str | None]]


@dataclass(frozen=True)
class OpsSettings:
    """Where a service without an HTTP API of its own serves its ops endpoints."""

    host: str = "127.0.0.1"
    port: int = 0  # 0: a random free port (printed in the ready line)

    @classmethod
    def from_env(cls, service: str, env: Env | None = None) -> OpsSettings:
        """``TETHER_{SERVICE}_HTTP_HOST`` and ``TETHER_{SERVICE}_HTTP_PORT``."""
        env = env or Env()
        prefix = f"TETHER_{service.upper().replace('-', '_')}_HTTP"
        port = env.integer(f"{prefix}_PORT", cls.port, minimum=0)
        if port > 65535:
            raise ConfigError(f"{prefix}_PORT has value {port}, above the maximum 65535")
        return cls(host=env.string(f"{prefix}_HOST", cls.host), port=port)


class NatsCollector(Collector):
    """NATS reconnects and connection state, read from the watched clients at each scrape
    (nats-py counts reconnects itself, so nothing can be missed between callbacks)."""

    def __init__(self) -> None:
        self.connections: list[NATS] = []

    def collect(self) -> Iterator[Metric]:
        reconnects = CounterMetricFamily(
            "tether_nats_reconnects",
            "Times this process's NATS connections were re-established after a loss.",
        )
        total = sum(int(nc.stats.get("reconnects", 0)) for nc in self.connections)
        reconnects.add_metric([], float(total))
        yield reconnects
        connected = GaugeMetricFamily(
            "tether_nats_connected", "1 while every NATS connection of this process is up."
        )
        up = bool(self.connections) and all(nc.is_connected for nc in self.connections)
        connected.add_metric([], 1.0 if up else 0.0)
        yield connected


class Metrics:
    """A service instance's metrics registry, with what every service reports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._nats = NatsCollector()
        self.registry.register(self._nats)
        self.draining = Gauge(
            "tether_draining",
            "1 once a graceful stop (SIGTERM) began, else 0.",
            registry=self.registry,
        )

    def watch(self, nc: NATS) -> None:
        """Report ``nc``'s reconnects and connection state at every scrape."""
        self._nats.connections.append(nc)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def stop_on_signals() -> asyncio.Event:
    """An event set when the process gets SIGTERM or SIGINT (every service's stop cue)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def announce_ready(service: str, port: int) -> None:
    """Print the ``ready`` line (JSON, one line on stdout) supervisors and tests wait for."""
    print(orjson.dumps({"event": "ready", "service": service, "port": port}).decode(), flush=True)


async def missing_streams(nc: NATS, names: Iterable[str], timeout: float = READY_TIMEOUT) -> str:
    """The first of ``names`` (JetStream streams; a KV bucket ``B`` is the stream ``KV_B``)
    that the server does not have, or cannot describe in time; "" when all exist."""

    async def check(name: str) -> str:
        try:
            info = await streams.api(nc, f"$JS.API.STREAM.INFO.{name}", timeout=timeout)
        except Unavailable as exc:
            return str(exc)
        except orjson.JSONDecodeError:
            return f"JetStream answered garbage for stream {name}"
        error = info.get("error") if isinstance(info, dict) else None
        if error:
            return f"stream {name}: {error.get('description', 'error')}"
        return ""

    for reason in await asyncio.gather(*(check(name) for name in names)):
        if reason:
            return reason
    return ""


async def nats_readiness(nc: NATS | None, streams: Iterable[str]) -> str | None:
    """The usual readiness rule: connected to NATS, and every stream present."""
    if nc is None:
        return "not started"
    if not nc.is_connected:
        return "not connected to NATS"
    reason = await missing_streams(nc, streams)
    return reason or None


class Ops:
    """Liveness, readiness and metrics handlers of one service instance."""

    def __init__(self, service: str, metrics: Metrics, ready: ReadyCheck) -> None:
        self.service = service
        self.metrics = metrics
        self._ready = ready
        self.draining = False

    def start_draining(self) -> None:
        """From now on /readyz answers 503 ``draining`` (a proxy stops routing here)."""
        self.draining = True
        self.metrics.draining.set(1)

    def add_routes(self, app: web.Application, *, healthz: bool = True) -> None:
        if healthz:
            app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics_handler)

    async def healthz(self, request: web.Request) -> web.Response:
        return _json({"status": "ok", "service": self.service})

    async def readiness(self) -> str | None:
        """None when ready, else the reason (draining first: it is final)."""
        if self.draining:
            return "draining"
        try:
            return await asyncio.wait_for(self._ready(), READY_TIMEOUT + 1.0)
        except TimeoutError:
            return "readiness check timed out"
        except Exception as exc:  # noqa: BLE001 - a probe reports, it never raises
            return f"readiness check failed: {type(exc).__name__}"

    async def readyz(self, request: web.Request) -> web.Response:
        reason = await self.readiness()
        if reason is None:
            return _json({"status": "ready", "service": self.service})
        status = "draining" if reason == "draining" else "not_ready"
        return _json({"status": status, "service": self.service, "reason": reason}, 503)

    async def metrics_handler(self, request: web.Request) -> web.Response:
        body = self.metrics.exposition()  # in the loop: collectors read live state
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _json(body: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


class OpsServer:
    """A small aiohttp server with only the ops endpoints (services without an HTTP API)."""

    def __init__(self, ops: Ops, settings: OpsSettings) -> None:
        self.ops = ops
        self.settings = settings
        self.port = settings.port
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        """Listen; returns the bound port."""
        app = web.Application()
        self.ops.add_routes(app)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        log.info("ops_listening", host=self.settings.host, port=self.port)
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

"""Per-connection and per-token limits of one gateway process (docs/protocol.md §10.5).

* Rate: a token bucket per WebSocket connection (client frames) and one per token key
  (the token's role, subject and the session, shared by every connection and HTTP request
  of that key on this gateway). A frame or request over either is refused with
  ``rate_limited``.
* Connections: at most ``max_connections_per_subject`` WebSockets per token subject on this
  gateway; one more is refused with ``too_many_connections``.
* Bodies: a request whose ``Content-Length`` is over ``max_frame_bytes`` is answered 413
  before any handler runs (bodies without a length are capped by aiohttp's
  ``client_max_size`` when a handler reads them).

Keys are built from verified claims, never from the raw token, and never logged.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from shared.errors import ClientError, FrameTooLarge, RateLimited
from shared.tokens import Claims

if TYPE_CHECKING:
    from services.gateway.app import Gateway
    from services.gateway.settings import GatewaySettings

Clock = Callable[[], float]

CORE_PREFIXES = ("/v1/sessions/", "/v1/webhooks", "/healthz")  # the routes limited here
MAX_TOKEN_KEYS = 100_000  # idle buckets beyond this are forgotten (oldest first)


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; each frame or request takes one."""

    __slots__ = ("rate", "burst", "tokens", "updated", "clock")

    def __init__(self, rate: float, burst: int, clock: Clock = time.monotonic) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.clock = clock
        self.updated = clock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def take(self) -> bool:
        """Take one token if there is one."""
        self._refill()
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def retry_after(self) -> float:
        """Seconds until the next token (0 when one is available)."""
        self._refill()
        return 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) / self.rate

    @property
    def full(self) -> bool:
        self._refill()
        return self.tokens >= self.burst


class KeyedBuckets:
    """One token bucket per key; the least recently used are dropped past ``max_keys``.

    A dropped bucket was idle the longest, so it is (nearly) full anyway.
    """

    def __init__(
        self, rate: float, burst: int, max_keys: int = MAX_TOKEN_KEYS, clock: Clock = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def bucket(self, key: str) -> TokenBucket:
        found = self._buckets.get(key)
        if found is None:
            found = TokenBucket(self.rate, self.burst, self.clock)
            self._buckets[key] = found
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return found

    def __len__(self) -> int:
        return len(self._buckets)


class ConnectionCounter:
    """Open WebSockets per token subject on this gateway."""

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self._open: dict[str, int] = {}

    def acquire(self, subject: str) -> bool:
        count = self._open.get(subject, 0)
        if count >= self.maximum:
            return False
        self._open[subject] = count + 1
        return True

    def release(self, subject: str) -> None:
        count = self._open.get(subject, 0) - 1
        if count > 0:
            self._open[subject] = count
        else:
            self._open.pop(subject, None)

    def count(self, subject: str) -> int:
        return self._open.get(subject, 0)


def token_key(claims: Claims, session: str) -> str:
    """The per-token rate key: role, subject and session (no secret material)."""
    return f"{claims.role}\x00{claims.subject}\x00{session}"


class FrameGate:
    """The rate check of one WebSocket connection: its own bucket and its token's."""

    def __init__(self, own: TokenBucket, buckets: KeyedBuckets, key: str) -> None:
        self.own = own
        self.buckets = buckets
        self.key = key
        self.refused = 0  # frames refused since the last accepted one

    @property
    def shared(self) -> TokenBucket:
        # Looked up each time: keeps the key recently used, and survives an eviction.
        return self.buckets.bucket(self.key)

    def allow(self) -> bool:
        # Both must have a token; take from the shared bucket only if the own one allowed.
        if self.own.take() and self.shared.take():
            self.refused = 0
            return True
        self.refused += 1
        return False

    def error(self) -> RateLimited:
        wait = max(self.own.retry_after(), self.shared.retry_after())
        return RateLimited(f"too many frames; slow down (retry in {wait:.2f} s)")


class Limits:
    """Every limit of one gateway process."""

    def __init__(self, settings: GatewaySettings, clock: Clock = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self.tokens = KeyedBuckets(
            settings.token_requests_per_second, settings.token_burst, clock=clock
        )
        self.connections = ConnectionCounter(settings.max_connections_per_subject)

    def frame_gate(self, claims: Claims, session: str) -> FrameGate:
        own = TokenBucket(self.settings.frames_per_second, self.settings.frame_burst, self.clock)
        return FrameGate(own, self.tokens, token_key(claims, session))

    def request_bucket(self, claims: Claims, session: str) -> TokenBucket:
        """The bucket an HTTP request of this token (for this session) takes from."""
        return self.tokens.bucket(token_key(claims, session))


def _error_response(error: ClientError, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps({"error": error.as_dict()}),
        status=error.http_status,
        content_type="application/json",
        headers=headers,
    )


def middleware(gateway: Gateway) -> Middleware:
    """Body size and per-token request rate of the core HTTP API (``CORE_PREFIXES``).

    WebSocket upgrades pass: their frames are limited by the connection (ws.py).
    """

    @web.middleware
    async def limit(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith(CORE_PREFIXES):
            return await handler(request)  # other APIs (AI SDK, durable streams) set their own
        maximum = gateway.settings.max_frame_bytes
        length = request.content_length
        if length is not None and length > maximum:
            gateway.counters["bodies_too_large"] += 1
            return _error_response(FrameTooLarge(f"request body is larger than {maximum} bytes"))
        if request.headers.get("Upgrade", "").lower() == "websocket" or request.path == "/healthz":
            return await handler(request)
        try:
            claims = gateway.authenticate(request)
        except ClientError:
            return await handler(request)  # the handler reports it (after the id check)
        bucket = gateway.limits.request_bucket(claims, request.match_info.get("session", ""))
        if not bucket.take():
            gateway.counters["requests_rate_limited"] += 1
            wait = bucket.retry_after()
            error = RateLimited(f"too many requests; slow down (retry in {wait:.2f} s)")
            return _error_response(error, {"Retry-After": str(max(1, math.ceil(wait)))})
        return await handler(request)

    return limit

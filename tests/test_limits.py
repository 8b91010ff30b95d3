"""Gateway limits (docs/protocol.md §13): frame rate per connection and per token, connections
per token subject, request rate per token, and body size on every HTTP endpoint.

Real nats-server, real in-process gateways with small limits, real aiohttp clients.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
import pytest

from services.gateway.app import Gateway
from services.gateway.limits import KeyedBuckets, TokenBucket
from services.gateway.settings import GatewaySettings
from shared.errors import ConfigError
from shared.ids import new_id
from shared.server import EmbeddedNats
from shared.settings import Env
from tests.conftest import gateway_settings, token
from tests.test_bad_input import assert_healthy, bearer, read_frame

TIMEOUT = 10.0


@pytest.fixture
async def start_gateway(nats_server: EmbeddedNats) -> AsyncIterator[Callable[..., Any]]:
    """Factory of in-process gateways with setting overrides; all stopped after the test."""
    started: list[Gateway] = []

    async def start(**overrides: object) -> Gateway:
        gw = Gateway(gateway_settings(nats_server, **overrides))
        await gw.start()
        started.append(gw)
        return gw

    yield start
    for gw in started:
        await gw.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def url(gateway: Gateway, path: str) -> str:
    return f"http://127.0.0.1:{gateway.port}{path}"


async def open_ws(
    http: aiohttp.ClientSession, gateway: Gateway, sid: str, tok: str
) -> aiohttp.ClientWebSocketResponse:
    ws = await http.ws_connect(url(gateway, f"/v1/sessions/{sid}/ws"), params={"token": tok})
    await read_frame(ws, "caught_up")
    return ws


async def drain(ws: aiohttp.ClientWebSocketResponse) -> list[dict[str, Any]]:
    """Every frame until the socket closes."""
    frames = []
    while True:
        msg = await asyncio.wait_for(ws.receive(), TIMEOUT)
        if msg.type != aiohttp.WSMsgType.TEXT:
            return frames
        frames.append(orjson.loads(msg.data))


# ---- the limiter itself --------------------------------------------------------------


def test_token_bucket_refills_at_its_rate() -> None:
    """A bucket allows its burst at once, then one frame per 1/rate seconds."""
    now = [100.0]
    bucket = TokenBucket(rate=2.0, burst=3, clock=lambda: now[0])
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    assert bucket.retry_after() == pytest.approx(0.5)
    now[0] += 0.5
    assert bucket.take() and not bucket.take()
    now[0] += 100
    assert bucket.full


def test_keyed_buckets_forget_the_least_recently_used() -> None:
    """Past max_keys the idle-longest bucket is dropped, so memory stays bounded."""
    buckets = KeyedBuckets(rate=1.0, burst=1, max_keys=2, clock=lambda: 0.0)
    buckets.bucket("a").take()
    buckets.bucket("b")
    buckets.bucket("a")
    buckets.bucket("c")  # evicts b, the least recently used
    assert len(buckets) == 2
    assert not buckets.bucket("a").take()  # a kept its (empty) state


def test_limit_settings_errors_name_the_variable() -> None:
    """Each limit variable is parsed; a bad value names the variable and the minimum."""
    base = {"TETHER_JWT_SECRET": "s"}
    parsed = GatewaySettings.from_env(
        Env(
            {
                **base,
                "TETHER_SEND_QUEUE_BYTES": "1048576",
                "TETHER_WS_FRAMES_PER_SECOND": "2.5",
                "TETHER_WS_FRAME_BURST": "7",
                "TETHER_TOKEN_REQUESTS_PER_SECOND": "9",
                "TETHER_TOKEN_BURST": "11",
                "TETHER_MAX_CONNECTIONS_PER_SUBJECT": "3",
            }
        )
    )
    assert (
        parsed.send_queue_bytes,
        parsed.frames_per_second,
        parsed.frame_burst,
        parsed.token_requests_per_second,
        parsed.token_burst,
        parsed.max_connections_per_subject,
    ) == (1048576, 2.5, 7, 9.0, 11, 3)
    cases = {
        "TETHER_SEND_QUEUE_BYTES": ("1000", "TETHER_SEND_QUEUE_BYTES has value 1000, below"),
        "TETHER_WS_FRAMES_PER_SECOND": ("x", "TETHER_WS_FRAMES_PER_SECOND has value 'x', not"),
        "TETHER_WS_FRAME_BURST": ("0", "TETHER_WS_FRAME_BURST has value 0, below the minimum 1"),
        "TETHER_TOKEN_REQUESTS_PER_SECOND": ("0", "TETHER_TOKEN_REQUESTS_PER_SECOND has value 0"),
        "TETHER_TOKEN_BURST": ("many", "TETHER_TOKEN_BURST has value 'many', not a valid int"),
        "TETHER_MAX_CONNECTIONS_PER_SUBJECT": (
            "0",
            "TETHER_MAX_CONNECTIONS_PER_SUBJECT has value 0, below the minimum 1",
        ),
    }
    for name, (raw, message) in cases.items():
        with pytest.raises(ConfigError) as info:
            GatewaySettings.from_env(Env({**base, name: raw}))
        assert str(info.value).startswith(message), (name, str(info.value))


# ---- WebSocket frame rate ------------------------------------------------------------


async def test_ws_frame_flood_gets_rate_limited_then_4429(
    start_gateway: Callable[..., Any], http: aiohttp.ClientSession
) -> None:
    """Frames over the connection's rate get rate_limited errors; a flood is closed with 4429."""
    gateway = await start_gateway(frames_per_second=0.1, frame_burst=5)
    sid = new_id("s-")
    ws = await open_ws(http, gateway, sid, token([sid]))
    for i in range(20):
        await ws.send_str(orjson.dumps({"type": "ping", "id": f"p{i}"}).decode())
    frames = await drain(ws)
    pongs = [f for f in frames if f["type"] == "pong"]
    errors = [f for f in frames if f["type"] == "error"]
    assert len(pongs) == 5  # the burst
    assert errors and {e["code"] for e in errors} == {"rate_limited"}
    assert ws.close_code == 4429
    assert gateway.counters["frames_rate_limited"] >= 6
    await assert_healthy(http, gateway)


async def test_ws_frame_rate_is_shared_by_a_tokens_connections(
    start_gateway: Callable[..., Any], http: aiohttp.ClientSession
) -> None:
    """Two connections of one token and session share the per-token budget."""
    gateway = await start_gateway(token_requests_per_second=0.1, token_burst=6, frame_burst=50)
    sid = new_id("s-")
    tok = token([sid], subject="alice")
    first, second = await open_ws(http, gateway, sid, tok), await open_ws(http, gateway, sid, tok)
    for ws in (first, second):
        for i in range(4):
            await ws.send_str(orjson.dumps({"type": "ping", "id": f"p{i}"}).decode())
    kinds: list[str] = []
    for ws in (first, second):
        for _ in range(4):
            frame = await read_frame_any(ws)
            kinds.append(frame["type"] if frame["type"] != "error" else frame["code"])
    assert kinds.count("pong") == 6 and kinds.count("rate_limited") == 2
    # Another subject has its own budget.
    other = await open_ws(http, gateway, sid, token([sid], subject="bob"))
    await other.send_str('{"type": "ping", "id": "b"}')
    assert (await read_frame(other, "pong"))["id"] == "b"
    for ws in (first, second, other):
        await ws.close()


async def read_frame_any(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    """The next pong or error frame (presence frames skipped)."""
    while True:
        msg = await asyncio.wait_for(ws.receive(), TIMEOUT)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        frame: dict[str, Any] = orjson.loads(msg.data)
        if frame["type"] in ("pong", "error"):
            return frame


# ---- connections per subject ---------------------------------------------------------


async def test_connections_per_subject_over_the_limit_get_4429(
    start_gateway: Callable[..., Any], http: aiohttp.ClientSession
) -> None:
    """A subject's third WebSocket (limit 2) gets too_many_connections and 4429; others work."""
    gateway = await start_gateway(max_connections_per_subject=2)
    sid = new_id("s-")
    tok = token([sid], subject="carol")
    held = [await open_ws(http, gateway, sid, tok) for _ in range(2)]
    ws = await http.ws_connect(url(gateway, f"/v1/sessions/{sid}/ws"), params={"token": tok})
    frames = await drain(ws)
    assert [(f["type"], f["code"]) for f in frames] == [("error", "too_many_connections")]
    assert ws.close_code == 4429
    assert gateway.counters["ws_refused_too_many_connections"] == 1
    other = await open_ws(http, gateway, sid, token([sid], subject="dave"))  # own count
    await held[0].close()
    for _ in range(100):  # the gateway releases the slot when it sees the close
        if gateway.limits.connections.count("carol") < 2:
            break
        await asyncio.sleep(0.02)
    again = await open_ws(http, gateway, sid, tok)
    for sock in (held[1], other, again):
        await sock.close()
    await assert_healthy(http, gateway)


# ---- HTTP request rate ---------------------------------------------------------------


async def test_http_requests_over_the_token_rate_get_429(
    start_gateway: Callable[..., Any], http: aiohttp.ClientSession
) -> None:
    """Requests over the token's rate answer 429 rate_limited with Retry-After."""
    gateway = await start_gateway(token_requests_per_second=0.1, token_burst=3)
    sid, other = new_id("s-"), new_id("s-")
    headers = bearer(token([sid, other], subject="erin"))
    statuses = []
    for _ in range(3):
        async with http.get(url(gateway, f"/v1/sessions/{sid}/events"), headers=headers) as resp:
            statuses.append(resp.status)
    async with http.post(
        url(gateway, f"/v1/sessions/{sid}/messages"), headers=headers, json={"text": "x"}
    ) as resp:
        assert resp.status == 429
        assert int(resp.headers["Retry-After"]) >= 1
        assert (await resp.json())["error"]["code"] == "rate_limited"
    assert statuses == [200, 200, 200]
    # The key is the token's subject and the session: another session has its own budget.
    async with http.get(url(gateway, f"/v1/sessions/{other}/events"), headers=headers) as resp:
        assert resp.status == 200
    assert gateway.counters["requests_rate_limited"] == 1


# ---- body size on every endpoint -----------------------------------------------------

ROUTES = [
    ("POST", "/v1/sessions/{sid}/messages"),
    ("POST", "/v1/sessions/{sid}/control"),
    ("GET", "/v1/sessions/{sid}/events"),
    ("GET", "/v1/sessions/{sid}/presence"),
    ("GET", "/healthz"),
    ("POST", "/v1/webhooks"),
    ("GET", "/v1/webhooks"),
    ("GET", "/v1/webhooks/dead"),
    ("GET", "/v1/webhooks/wh-1"),
    ("DELETE", "/v1/webhooks/wh-1"),
    ("POST", "/v1/webhooks/dead/wh-1/replay"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_body_over_the_limit_is_413_on_every_endpoint(
    gateway: Gateway, http: aiohttp.ClientSession, method: str, path: str
) -> None:
    """A body over TETHER_MAX_FRAME_BYTES answers 413 frame_too_large on every route."""
    sid = new_id("s-")
    role = "admin" if "webhooks" in path else "user"
    body = b"{" + b" " * gateway.settings.max_frame_bytes + b"}"
    async with http.request(
        method,
        url(gateway, path.format(sid=sid)),
        data=body,
        headers={**bearer(token([sid], role=role)), "Content-Type": "application/json"},
    ) as resp:
        assert resp.status == 413
        assert (await resp.json())["error"]["code"] == "frame_too_large"


@pytest.mark.parametrize(
    "path", ["/v1/sessions/{sid}/messages", "/v1/sessions/{sid}/control", "/v1/webhooks"]
)
async def test_chunked_body_over_the_limit_is_413(
    gateway: Gateway, http: aiohttp.ClientSession, path: str
) -> None:
    """A body without Content-Length (chunked) is cut at the limit too: 413, nothing stored."""
    sid = new_id("s-")
    role = "admin" if "webhooks" in path else "user"
    size = gateway.settings.max_frame_bytes * 2

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"text": "'
        for _ in range(size // 4096):
            yield b"x" * 4096
        yield b'"}'

    async with http.post(
        url(gateway, path.format(sid=sid)),
        data=chunks(),
        headers={**bearer(token([sid], role=role)), "Content-Type": "application/json"},
    ) as resp:
        assert resp.status == 413
        assert (await resp.json())["error"]["code"] == "frame_too_large"
    async with http.get(
        url(gateway, f"/v1/sessions/{sid}/events"), headers=bearer(token([sid]))
    ) as resp:
        assert (await resp.json())["events"] == []

"""Hypothesis fuzzing of the gateway's WebSocket frames and HTTP bodies, on a real gateway.

Each example sends a batch of random inputs (JSON of random shapes, frames shaped like
client frames with random fields, random text and bytes, oversized frames; HTTP bodies
with random content types to every core POST endpoint) while a well-behaved device on
another session receives an agent's stream. Checked: no 5xx, answers are documented
frames / error codes, nothing leaks a stack trace or a file path, the gateway stays up,
and the well-behaved device receives its whole stream. Rate limits are raised here (the
limits have their own tests, tests/test_limits.py) so every input reaches the parsers.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from services.gateway.app import Gateway
from shared import agent
from shared.ids import new_id
from shared.server import EmbeddedNats
from tests.conftest import gateway_settings, token, wait_for
from tests.device import Device

MAX_FRAME = 4096
TIMEOUT = 10.0
LEAK = re.compile(r"Traceback|File \"|\.py\b|site-packages|/work/|/usr/lib")
ERROR_CODES = {
    "bad_frame",
    "invalid_id",
    "frame_too_large",
    "unknown_run",
    "run_ended",
    "unknown_approval",
    "invalid_option",
    "approval_closed",
    "unavailable",
    "forbidden",
    "rate_limited",
}
SERVER_FRAMES = {"hello", "caught_up", "event", "presence", "ack", "pong", "error"}
FUZZ = settings(
    max_examples=60,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # no shrinking: bounded time
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

json_value = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=15,
)
id_like = st.one_of(st.text(max_size=20), st.from_regex(r"[a-z0-9-]{1,20}", fullmatch=True))
shaped_frame = st.fixed_dictionaries(
    {"type": st.sampled_from(["send", "ping", "cancel", "steer", "approve", "subscribe", ""])},
    optional={
        "id": id_like | json_value,
        "text": st.text(max_size=200) | json_value,
        "run": id_like | json_value,
        "approval": id_like | json_value,
        "option": st.text(max_size=10) | json_value,
    },
)
ws_input = st.one_of(
    shaped_frame.map(lambda f: ("text", orjson.dumps(f).decode())),
    json_value.map(lambda v: ("text", orjson.dumps(v).decode())),
    st.text(max_size=300).map(lambda t: ("text", t)),
    st.binary(max_size=300).map(lambda b: ("binary", b)),
    st.integers(MAX_FRAME + 1, MAX_FRAME * 4).map(lambda n: ("text", "x" * n)),
)
CONTENT_TYPES = [
    "application/json",
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=xyz",
    "application/octet-stream",
    "application/json; charset=latin-1",
    "",
]
http_body = st.one_of(
    json_value.map(orjson.dumps),
    st.dictionaries(
        st.sampled_from(["id", "text", "action", "run", "approval", "option", "url", "events"]),
        json_value,
    ).map(orjson.dumps),
    st.binary(max_size=500),
    st.integers(MAX_FRAME + 1, MAX_FRAME * 3).map(lambda n: b"y" * n),
)
POST_PATHS = [
    "/v1/sessions/{sid}/messages",
    "/v1/sessions/{sid}/control",
    "/v1/sessions/%2E%2E/messages",
    "/v1/webhooks",
    "/v1/webhooks/dead/{sid}/replay",
]
http_input = st.tuples(
    st.sampled_from(POST_PATHS), st.sampled_from(CONTENT_TYPES), http_body, st.booleans()
)


@pytest.fixture
async def fuzz_gateway(nats_server: EmbeddedNats) -> AsyncIterator[Gateway]:
    """An in-process gateway with a small frame limit and rate limits out of the way."""
    gw = Gateway(
        gateway_settings(
            nats_server,
            max_frame_bytes=MAX_FRAME,
            frames_per_second=1e6,
            frame_burst=1_000_000,
            token_requests_per_second=1e6,
            token_burst=1_000_000,
        )
    )
    await gw.start()
    yield gw
    await gw.stop()


class Watched:
    """A well-behaved device on its own session while an agent streams into it."""

    def __init__(self, gateway: Gateway, client: agent.Client) -> None:
        self.base = f"http://127.0.0.1:{gateway.port}"
        self.sid = new_id("w-")
        self.device = Device(self.sid, token([self.sid], subject="watcher"))
        self.run = agent.Run(client.session(self.sid), "run-w")
        self.sent = ""
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Watched:
        await self.device.connect(self.base)
        await self.run.start()
        message = self.run.message("m", coalesce_ms=0)
        await message.start()

        async def stream() -> None:
            i = 0
            while not self.stop.is_set():
                word = f"w{i} "
                await message.append(word)
                self.sent += word
                i += 1
                await asyncio.sleep(0.02)
            await message.complete()
            await self.run.complete()

        self.task = asyncio.create_task(stream())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        if self.task is not None:
            await self.task
        try:
            if exc[0] is None:
                await wait_for(
                    lambda: ("run.completed", "run-w") in self.device.view.others,
                    TIMEOUT,
                    "the well-behaved device's stream",
                )
                assert self.device.view.texts == {"m": self.sent}
                assert self.device.connected and self.device.view.errors == []
        finally:
            await self.device.close()


def check_text(text: str) -> None:
    assert not LEAK.search(text), f"response leaks internals: {text[:300]!r}"


async def exchange(ws: aiohttp.ClientWebSocketResponse, kind: str, data: Any, n: int) -> bool:
    """Send one input then a ping; read to the pong. False when the server closed."""
    if kind == "binary":
        await ws.send_bytes(data)
    else:
        await ws.send_str(data)
    await ws.send_str(orjson.dumps({"type": "ping", "id": f"probe-{n}"}).decode())
    while True:
        msg = await asyncio.wait_for(ws.receive(), TIMEOUT)
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
            oversized = len(data) > MAX_FRAME
            assert oversized, f"closed for an input of {len(data)} bytes"
            # The server closes with 1009; when our probe ping reaches the socket after the
            # server closed it, the peer's reset can discard the unread close frame, and
            # the client reports 1006 instead (tests/test_flood.py checks 1009 exactly).
            assert ws.close_code in (1009, 1006), f"unexpected close {ws.close_code}"
            return False
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        check_text(msg.data)
        frame = orjson.loads(msg.data)
        assert frame["type"] in SERVER_FRAMES, frame
        if frame["type"] == "error":
            assert frame["code"] in ERROR_CODES, frame
        if frame["type"] == "pong" and frame["id"] == f"probe-{n}":
            return True


@FUZZ
@given(inputs=st.lists(ws_input, min_size=1, max_size=12))
async def test_fuzzed_ws_frames_get_documented_answers(
    inputs: list[tuple[str, Any]], fuzz_gateway: Gateway, client: agent.Client
) -> None:
    """Random WebSocket frames: documented errors or 1009, no leak, the stream goes on."""
    sid = new_id("f-")
    url = f"ws://127.0.0.1:{fuzz_gateway.port}/v1/sessions/{sid}/ws"
    async with Watched(fuzz_gateway, client), aiohttp.ClientSession() as http:
        ws = await http.ws_connect(url, params={"token": token([sid], subject="fuzzer")})
        for n, (kind, data) in enumerate(inputs):
            if not await exchange(ws, kind, data, n):
                ws = await http.ws_connect(url, params={"token": token([sid], subject="fuzzer")})
        await ws.close()
        async with http.get(f"http://127.0.0.1:{fuzz_gateway.port}/healthz") as resp:
            assert resp.status == 200


@FUZZ
@given(inputs=st.lists(http_input, min_size=1, max_size=12))
async def test_fuzzed_http_bodies_never_5xx(
    inputs: list[tuple[str, str, bytes, bool]], fuzz_gateway: Gateway, client: agent.Client
) -> None:
    """Random bodies and content types on every core POST endpoint: no 5xx, no leak."""
    sid = new_id("h-")
    base = f"http://127.0.0.1:{fuzz_gateway.port}"
    async with Watched(fuzz_gateway, client), aiohttp.ClientSession() as http:
        for path, content_type, body, admin in inputs:
            tok = token([sid], subject="fuzzer", role="admin" if admin else "user")
            headers = {"Authorization": f"Bearer {tok}"}
            if content_type:
                headers["Content-Type"] = content_type
            async with http.post(
                base + path.format(sid=sid),
                data=body,
                headers=headers,
                skip_auto_headers=["Content-Type"],
            ) as resp:
                text = await resp.text()
                assert resp.status < 500, (resp.status, text[:300])
                check_text(text)
                if resp.status >= 400 and resp.status != 404:
                    assert resp.content_type == "application/json", (resp.status, text[:200])
                    assert orjson.loads(text)["error"]["code"]
                if len(body) > MAX_FRAME and resp.status != 404:  # 404: no such route
                    assert resp.status == 413
        async with http.get(f"{base}/healthz") as resp:
            assert resp.status == 200

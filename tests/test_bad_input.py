"""Bad input gets a clear, documented error and the server stays up.

Everything here runs against the real in-process gateway on a real nats-server, with real
aiohttp WebSocket and HTTP clients. Codes asserted are the ones shared/errors.py documents:
``invalid_id``/``bad_frame`` (4400/400), ``unauthorized`` (4401/401), ``forbidden``
(4403/403), ``frame_too_large`` (1009/413).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from typing import Any

import aiohttp
import jwt
import orjson
import pytest
import yarl

from services.gateway.app import Gateway
from shared.ids import new_id
from shared.settings import Secret
from shared.tokens import DEFAULT_AUDIENCE, mint
from tests.conftest import SECRET, token, wait_for
from tests.device import Device

TIMEOUT = 10.0

# ---- helpers -------------------------------------------------------------------------


def base(gateway: Gateway) -> str:
    return f"http://127.0.0.1:{gateway.port}"


def raw_url(gateway: Gateway, segment: str, tail: str, *, scheme: str = "http") -> yarl.URL:
    """A URL whose session segment is sent exactly as given (already percent-encoded)."""
    return yarl.URL(
        f"{scheme}://127.0.0.1:{gateway.port}/v1/sessions/{segment}/{tail}", encoded=True
    )


def ws_url(gateway: Gateway, segment: str, tok: str | None = None, **query: str) -> yarl.URL:
    params = dict(query)
    if tok is not None:
        params["token"] = tok
    url = raw_url(gateway, segment, "ws", scheme="ws")
    return url.with_query(params) if params else url


def bearer(tok: str | None) -> dict[str, str]:
    return {} if tok is None else {"Authorization": f"Bearer {tok}"}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(sessions: list[str], **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    payload: dict[str, Any] = {
        "sub": "tester",
        "role": "user",
        "sessions": sessions,
        "aud": DEFAULT_AUDIENCE,
        "iat": now,
        "exp": now + 3600,
    }
    payload.update(overrides)
    return payload


def hand_signed(payload: dict[str, Any], alg: str, key: bytes) -> str:
    """A JWT built by hand (no library checks), signed with HMAC ``alg`` or unsigned."""
    header = b64(orjson.dumps({"alg": alg, "typ": "JWT"}))
    body = b64(orjson.dumps(payload))
    signing_input = f"{header}.{body}".encode()
    if alg == "none":
        return f"{header}.{body}."
    digest = {"HS256": hashlib.sha256, "HS512": hashlib.sha512}[alg]
    return f"{header}.{body}.{b64(hmac.new(key, signing_input, digest).digest())}"


async def read_frame(ws: aiohttp.ClientWebSocketResponse, kind: str) -> dict[str, Any]:
    """Read frames until one of type ``kind``; fail if the socket closes first."""
    while True:
        msg = await asyncio.wait_for(ws.receive(), TIMEOUT)
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise AssertionError(f"expected a {kind!r} frame, got {msg.type!r} {msg.data!r}")
        frame = orjson.loads(msg.data)
        if frame["type"] == kind:
            return frame


async def ws_rejected(
    http: aiohttp.ClientSession, url: yarl.URL, headers: dict[str, str] | None = None
) -> tuple[dict[str, Any], int | None]:
    """Connect, expect the upgrade, an ``error`` frame, then a close; return both."""
    async with http.ws_connect(url, headers=headers) as ws:
        first = await asyncio.wait_for(ws.receive(), TIMEOUT)
        assert first.type == aiohttp.WSMsgType.TEXT, f"expected an error frame, got {first!r}"
        frame = orjson.loads(first.data)
        closing = await asyncio.wait_for(ws.receive(), TIMEOUT)
        assert closing.type == aiohttp.WSMsgType.CLOSE, f"expected a close, got {closing!r}"
        return frame, ws.close_code


async def open_live(
    http: aiohttp.ClientSession, gateway: Gateway, sid: str, tok: str | None = None
) -> aiohttp.ClientWebSocketResponse:
    """A WebSocket to ``sid`` that has received ``hello`` and ``caught_up``."""
    ws = await http.ws_connect(ws_url(gateway, sid, tok or token([sid])))
    await read_frame(ws, "hello")
    await read_frame(ws, "caught_up")
    return ws


async def assert_still_works(
    http: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse
) -> None:
    """The same connection answers a ping and acknowledges a valid send."""
    ping_id = new_id("p-")
    await ws.send_str(orjson.dumps({"type": "ping", "id": ping_id}).decode())
    assert (await read_frame(ws, "pong"))["id"] == ping_id
    message_id = new_id("m-")
    await ws.send_str(orjson.dumps({"type": "send", "id": message_id, "text": "ok"}).decode())
    ack = await read_frame(ws, "ack")
    assert ack["id"] == message_id and ack["duplicate"] is False and ack["seq"] > 0
    assert not ws.closed


async def assert_healthy(http: aiohttp.ClientSession, gateway: Gateway) -> None:
    """/healthz answers 200 and a fresh device can send and receive."""
    async with http.get(f"{base(gateway)}/healthz") as resp:
        assert resp.status == 200
        assert (await resp.json())["status"] == "ok"
    sid = new_id("s-")
    sender = Device(sid, token([sid], subject="alice"))
    receiver = Device(sid, token([sid], subject="bob"))
    await sender.connect(base(gateway))
    await receiver.connect(base(gateway))
    await wait_for(lambda: sender.view.live and receiver.view.live, what="both caught up")
    await sender.send({"type": "send", "id": "after-bad-input", "text": "still here"})
    await wait_for(lambda: len(sender.view.acks) == 1, what="ack")
    await wait_for(
        lambda: receiver.view.texts.get("after-bad-input") == "still here", what="delivery"
    )
    assert sender.view.errors == [] and receiver.view.errors == []
    await sender.close()
    await receiver.close()


@pytest.fixture
async def http() -> Any:
    async with aiohttp.ClientSession() as session:
        yield session


# ---- session ids ---------------------------------------------------------------------

# (percent-encoded path segment as sent, description). Each decodes to an invalid id.
BAD_SESSION_SEGMENTS = [
    pytest.param("a.b", id="dot"),
    pytest.param("a*b", id="star"),
    pytest.param("*", id="lone-star"),
    pytest.param("a%3Eb", id="greater-than"),
    pytest.param(">", id="raw-greater-than"),
    pytest.param("a%20b", id="space"),
    pytest.param("%20", id="only-space"),
    pytest.param("a%2Fb", id="encoded-slash"),
    pytest.param("%C3%BC" * 60, id="non-ascii-long"),
    pytest.param("x" * 1000, id="1000-chars"),
    pytest.param("x" * 129, id="129-chars"),
]


@pytest.mark.parametrize("segment", BAD_SESSION_SEGMENTS)
async def test_ws_invalid_session_id_closes_4400(
    gateway: Gateway, http: aiohttp.ClientSession, segment: str
) -> None:
    """A WebSocket to an invalid session id gets an invalid_id error frame and close 4400."""
    frame, code = await ws_rejected(http, ws_url(gateway, segment, token(["*"])))
    assert frame["type"] == "error"
    assert frame["code"] == "invalid_id"
    assert "session id" in frame["message"]
    assert code == 4400
    assert gateway.counters["ws_rejected"] == 1
    await assert_healthy(http, gateway)


@pytest.mark.parametrize("segment", BAD_SESSION_SEGMENTS)
async def test_http_invalid_session_id_is_400(
    gateway: Gateway, http: aiohttp.ClientSession, segment: str
) -> None:
    """GET events and POST messages for an invalid session id answer 400 invalid_id."""
    headers = bearer(token(["*"]))
    async with http.get(raw_url(gateway, segment, "events"), headers=headers) as resp:
        assert resp.status == 400
        assert resp.content_type == "application/json"
        body = await resp.json()
    assert body["error"]["code"] == "invalid_id"
    assert "session id" in body["error"]["message"]
    async with http.post(
        raw_url(gateway, segment, "messages"), headers=headers, json={"text": "hi"}
    ) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "invalid_id"
    await assert_healthy(http, gateway)


async def test_invalid_session_id_message_names_the_bad_character(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    """The invalid_id message names the offending character and the allowed ones."""
    frame, _ = await ws_rejected(http, ws_url(gateway, "ok%3Ebad", token(["*"])))
    assert "'>'" in frame["message"] and "A-Z, a-z, 0-9" in frame["message"]
    async with http.get(raw_url(gateway, "x" * 1000, "events"), headers=bearer(token())) as resp:
        message = (await resp.json())["error"]["message"]
    assert message == "session id is 1000 characters long; the maximum is 128"


async def test_empty_session_id_is_not_routed(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    """An empty session segment (``/v1/sessions//...``) matches no route: a plain 404."""
    # The route's {session} placeholder needs at least one character, so an empty id never
    # reaches the handlers: the WebSocket handshake fails with 404 and HTTP answers 404.
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await http.ws_connect(ws_url(gateway, "", token(["*"])))
    assert info.value.status == 404
    async with http.get(raw_url(gateway, "", "events"), headers=bearer(token())) as resp:
        assert resp.status == 404
    async with http.post(
        raw_url(gateway, "", "messages"), headers=bearer(token()), json={"text": "x"}
    ) as resp:
        assert resp.status == 404
    await assert_healthy(http, gateway)


async def test_invalid_id_is_reported_before_auth(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    """An invalid session id is reported as invalid_id even without a token."""
    frame, code = await ws_rejected(http, ws_url(gateway, "a.b"))
    assert (frame["code"], code) == ("invalid_id", 4400)
    async with http.get(raw_url(gateway, "a.b", "events")) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "invalid_id"


@pytest.mark.parametrize("since", ["abc", "-1", "1.5", "9" * 5000])
async def test_ws_bad_since_closes_4400(
    gateway: Gateway, http: aiohttp.ClientSession, since: str
) -> None:
    """A WebSocket with a since that is not a sequence number gets bad_frame and 4400."""
    sid = new_id("s-")
    frame, code = await ws_rejected(http, ws_url(gateway, sid, token([sid]), since=since))
    assert (frame["code"], code) == ("bad_frame", 4400)
    assert "since" in frame["message"]


@pytest.mark.parametrize(
    "query", [{"since": "x"}, {"since": "-5"}, {"limit": "0"}, {"limit": "abc"}, {"limit": "1001"}]
)
async def test_http_bad_query_is_400(
    gateway: Gateway, http: aiohttp.ClientSession, query: dict[str, str]
) -> None:
    """GET events with a bad since or limit answers 400 bad_frame naming the parameter."""
    sid = new_id("s-")
    async with http.get(
        f"{base(gateway)}/v1/sessions/{sid}/events", params=query, headers=bearer(token([sid]))
    ) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert error["code"] == "bad_frame"
    assert next(iter(query)) in error["message"]


# ---- bad frames on a live WebSocket ----------------------------------------------------

BAD_FRAMES = [
    pytest.param('{"type": "send", ', "bad_frame", "not valid JSON", id="malformed-json"),
    pytest.param("", "bad_frame", "not valid JSON", id="empty-text"),
    pytest.param("[1, 2]", "bad_frame", "must be a JSON object, not list", id="json-array"),
    pytest.param('"ping"', "bad_frame", "must be a JSON object, not str", id="json-string"),
    pytest.param("null", "bad_frame", "must be a JSON object", id="json-null"),
    pytest.param('{"id": "x"}', "bad_frame", "no string 'type'", id="no-type"),
    pytest.param('{"type": 7}', "bad_frame", "no string 'type'", id="non-string-type"),
    pytest.param('{"type": "subscribe"}', "bad_frame", "unknown frame type", id="unknown-type"),
    pytest.param('{"type": "send", "id": "m1"}', "bad_frame", "'text'", id="send-no-text"),
    pytest.param('{"type": "send", "text": 5}', "bad_frame", "'text'", id="send-text-not-str"),
    pytest.param(
        '{"type": "send", "id": "bad.id", "text": "x"}', "invalid_id", "'.'", id="send-id-dot"
    ),
    pytest.param('{"type": "send", "id": "a>", "text": "x"}', "invalid_id", "'>'", id="send-id-gt"),
    pytest.param('{"type": "send", "id": 42, "text": "x"}', "invalid_id", "string", id="id-int"),
    pytest.param(
        '{"type": "send", "id": "", "text": "x"}', "invalid_id", "empty", id="send-id-empty"
    ),
    pytest.param(
        orjson.dumps({"type": "send", "id": "m" * 200, "text": "x"}).decode(),
        "invalid_id",
        "maximum is 128",
        id="send-id-too-long",
    ),
]


@pytest.mark.parametrize(("data", "code", "fragment"), BAD_FRAMES)
async def test_bad_frame_gets_error_and_connection_keeps_working(
    gateway: Gateway, http: aiohttp.ClientSession, data: str, code: str, fragment: str
) -> None:
    """A bad client frame gets one error frame with a precise code; the socket stays usable."""
    sid = new_id("s-")
    ws = await open_live(http, gateway, sid)
    await ws.send_str(data)
    error = await read_frame(ws, "error")
    assert error["code"] == code
    assert fragment in error["message"]
    assert gateway.counters["bad_frames"] == 1
    await assert_still_works(http, ws)
    await ws.close()
    await assert_healthy(http, gateway)


async def test_error_for_send_echoes_the_frame_id(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    """An error caused by a send carries that send's id so the client can match it."""
    sid = new_id("s-")
    ws = await open_live(http, gateway, sid)
    await ws.send_str('{"type": "send", "id": "bad.id", "text": "x"}')
    assert (await read_frame(ws, "error"))["id"] == "bad.id"
    await ws.send_str('{"type": "send", "id": "fine-id"}')
    error = await read_frame(ws, "error")
    assert (error["code"], error["id"]) == ("bad_frame", "fine-id")
    await ws.close()


async def test_binary_frame_gets_error_and_connection_keeps_working(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    """A binary frame (even valid JSON) is refused with bad_frame; the socket stays usable."""
    sid = new_id("s-")
    ws = await open_live(http, gateway, sid)
    await ws.send_bytes(orjson.dumps({"type": "ping", "id": "bin"}))
    error = await read_frame(ws, "error")
    assert error["code"] == "bad_frame"
    assert "binary" in error["message"]
    await assert_still_works(http, ws)
    await ws.close()


async def test_many_bad_frames_then_good_send_is_delivered(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    """After a burst of bad frames on one socket, its valid send reaches another device."""
    sid = new_id("s-")
    watcher = Device(sid, token([sid]))
    await watcher.connect(base(gateway))
    ws = await open_live(http, gateway, sid)
    for param in BAD_FRAMES:
        await ws.send_str(param.values[0])
    await ws.send_bytes(b"\x00\xff")
    codes = [(await read_frame(ws, "error"))["code"] for _ in range(len(BAD_FRAMES) + 1)]
    assert codes == [param.values[1] for param in BAD_FRAMES] + ["bad_frame"]
    await ws.send_str(orjson.dumps({"type": "send", "id": "good", "text": "hello"}).decode())
    assert (await read_frame(ws, "ack"))["id"] == "good"
    await wait_for(lambda: watcher.view.texts.get("good") == "hello", what="delivery")
    assert watcher.view.texts == {"good": "hello"}  # no bad frame was stored
    await ws.close()
    await watcher.close()


# ---- oversized frames and bodies -----------------------------------------------------


async def test_oversized_ws_frame_closes_1009(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    """A frame over max_frame_bytes closes the socket with 1009; the gateway cleans up."""
    sid = new_id("s-")
    ws = await open_live(http, gateway, sid)
    big = "x" * (gateway.settings.max_frame_bytes + 1)
    await ws.send_str(orjson.dumps({"type": "send", "id": "big", "text": big}).decode())
    msg = await asyncio.wait_for(ws.receive(), TIMEOUT)
    assert msg.type == aiohttp.WSMsgType.CLOSE
    assert ws.close_code == 1009
    await wait_for(lambda: not gateway.connections, what="connection released")
    assert gateway.counters["frames_too_large"] == 1
    # Nothing of the oversized frame was stored.
    async with http.get(
        f"{base(gateway)}/v1/sessions/{sid}/events", headers=bearer(token([sid]))
    ) as resp:
        assert (await resp.json())["events"] == []
    await assert_healthy(http, gateway)


async def test_oversized_binary_frame_closes_1009(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    """An oversized binary frame is also closed with 1009."""
    ws = await open_live(http, gateway, new_id("s-"))
    await ws.send_bytes(b"\x00" * (gateway.settings.max_frame_bytes * 2))
    msg = await asyncio.wait_for(ws.receive(), TIMEOUT)
    assert msg.type == aiohttp.WSMsgType.CLOSE
    assert ws.close_code == 1009


async def test_frame_just_under_limit_is_accepted(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    """A send frame a little under max_frame_bytes is stored and acknowledged."""
    sid = new_id("s-")
    ws = await open_live(http, gateway, sid)
    text = "y" * (gateway.settings.max_frame_bytes - 200)
    await ws.send_str(orjson.dumps({"type": "send", "id": "near-limit", "text": text}).decode())
    assert (await read_frame(ws, "ack"))["id"] == "near-limit"
    await ws.close()


async def test_oversized_http_body_is_413(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    """POST messages with a body over max_frame_bytes answers 413 frame_too_large."""
    sid = new_id("s-")
    body = orjson.dumps({"id": "big", "text": "x" * (gateway.settings.max_frame_bytes + 1)})
    async with http.post(
        f"{base(gateway)}/v1/sessions/{sid}/messages",
        data=body,
        headers={**bearer(token([sid])), "Content-Type": "application/json"},
    ) as resp:
        assert resp.status == 413
        error = (await resp.json())["error"]
    assert error["code"] == "frame_too_large"
    async with http.get(
        f"{base(gateway)}/v1/sessions/{sid}/events", headers=bearer(token([sid]))
    ) as resp:
        assert (await resp.json())["events"] == []
    await assert_healthy(http, gateway)


BAD_BODIES = [
    pytest.param(b"{nope", "bad_frame", "request body is not valid JSON", id="malformed"),
    pytest.param(b"", "bad_frame", "not valid JSON", id="empty"),
    pytest.param(b'["text"]', "bad_frame", "must be a JSON object, not list", id="array"),
    pytest.param(b'{"id": "m"}', "bad_frame", "'text'", id="no-text"),
    pytest.param(b'{"text": ["a"]}', "bad_frame", "'text'", id="text-not-str"),
    pytest.param(b'{"id": "a b", "text": "x"}', "invalid_id", "' '", id="id-space"),
    pytest.param(b'{"id": 3, "text": "x"}', "invalid_id", "string", id="id-int"),
]


@pytest.mark.parametrize(("body", "code", "fragment"), BAD_BODIES)
async def test_http_bad_body_is_400(
    gateway: Gateway, http: aiohttp.ClientSession, body: bytes, code: str, fragment: str
) -> None:
    """POST messages with a malformed body answers 400 with a precise code and message."""
    sid = new_id("s-")
    async with http.post(
        f"{base(gateway)}/v1/sessions/{sid}/messages", data=body, headers=bearer(token([sid]))
    ) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert error["code"] == code
    assert fragment in error["message"]


# ---- tokens --------------------------------------------------------------------------

OTHER_SECRET = Secret("a-different-secret-0123456789abcdef")
KEY = SECRET.reveal().encode()


def bad_token(kind: str, sid: str) -> str | None:
    """A token that must be refused with 401 for session ``sid``."""
    if kind == "missing":
        return None
    if kind == "expired":
        return mint(SECRET, subject="tester", sessions=[sid], ttl_seconds=-60)
    if kind == "wrong-secret":
        return mint(OTHER_SECRET, subject="tester", sessions=[sid])
    if kind == "alg-none":
        return hand_signed(claims([sid]), "none", b"")
    if kind == "alg-none-with-signature":
        return hand_signed(claims([sid]), "HS256", KEY).replace(
            b64(b'{"alg":"HS256","typ":"JWT"}'), b64(b'{"alg":"none","typ":"JWT"}')
        )
    if kind == "hs512-right-secret":
        return hand_signed(claims([sid]), "HS512", KEY)
    if kind == "wrong-audience":
        return mint(SECRET, subject="tester", sessions=[sid], audience="someone-else")
    if kind == "no-audience":
        payload = claims([sid])
        del payload["aud"]
        return jwt.encode(payload, KEY, algorithm="HS256")
    if kind == "no-exp":
        payload = claims([sid])
        del payload["exp"]
        return jwt.encode(payload, KEY, algorithm="HS256")
    if kind == "bad-role":
        return jwt.encode(claims([sid], role="root"), KEY, algorithm="HS256")
    if kind == "sessions-not-list":
        return jwt.encode({**claims([sid]), "sessions": sid}, KEY, algorithm="HS256")
    if kind == "bad-subject":
        return jwt.encode(claims([sid], sub="a.b"), KEY, algorithm="HS256")
    if kind == "tampered-payload":
        good = mint(SECRET, subject="tester", sessions=["other"])
        header, _, signature = good.split(".")
        return f"{header}.{b64(orjson.dumps(claims([sid])))}.{signature}"
    if kind == "garbage":
        return "this-is-not-a-jwt"
    if kind == "three-garbage-parts":
        return "aaa.bbb.ccc"
    raise AssertionError(kind)


UNAUTHORIZED_KINDS = [
    "missing",
    "expired",
    "wrong-secret",
    "alg-none",
    "alg-none-with-signature",
    "hs512-right-secret",
    "wrong-audience",
    "no-audience",
    "no-exp",
    "bad-role",
    "sessions-not-list",
    "bad-subject",
    "tampered-payload",
    "garbage",
    "three-garbage-parts",
]


@pytest.mark.parametrize("kind", UNAUTHORIZED_KINDS)
async def test_ws_bad_token_closes_4401(
    gateway: Gateway, http: aiohttp.ClientSession, kind: str
) -> None:
    """A WebSocket with a missing, expired, forged or malformed token gets 4401 unauthorized."""
    sid = new_id("s-")
    frame, code = await ws_rejected(http, ws_url(gateway, sid, bad_token(kind, sid)))
    assert frame["type"] == "error"
    assert frame["code"] == "unauthorized"
    assert code == 4401
    assert not gateway.connections
    await assert_healthy(http, gateway)


@pytest.mark.parametrize("kind", UNAUTHORIZED_KINDS)
async def test_http_bad_token_is_401(
    gateway: Gateway, http: aiohttp.ClientSession, kind: str
) -> None:
    """GET events and POST messages with a bad token answer 401 unauthorized; nothing stored."""
    sid = new_id("s-")
    headers = bearer(bad_token(kind, sid))
    async with http.get(f"{base(gateway)}/v1/sessions/{sid}/events", headers=headers) as resp:
        assert resp.status == 401
        assert (await resp.json())["error"]["code"] == "unauthorized"
    async with http.post(
        f"{base(gateway)}/v1/sessions/{sid}/messages", headers=headers, json={"text": "x"}
    ) as resp:
        assert resp.status == 401
        assert (await resp.json())["error"]["code"] == "unauthorized"
    async with http.get(
        f"{base(gateway)}/v1/sessions/{sid}/events", headers=bearer(token([sid]))
    ) as resp:
        assert (await resp.json())["events"] == []
    await assert_healthy(http, gateway)


async def test_token_error_messages_say_why(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    """Unauthorized messages say what is wrong: missing, expired, signature, algorithm."""
    sid = new_id("s-")
    expected = {
        "missing": "missing token",
        "expired": "token expired",
        "wrong-secret": "signature is invalid",
        "hs512-right-secret": "algorithm is not accepted (only HS256)",
        "alg-none": "algorithm is not accepted (only HS256)",
        "wrong-audience": "audience is not accepted",
    }
    for kind, fragment in expected.items():
        frame, _ = await ws_rejected(http, ws_url(gateway, sid, bad_token(kind, sid)))
        assert fragment in frame["message"], (kind, frame["message"])


async def test_bearer_header_and_empty_query_token(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    """An empty Bearer header or ?token= is a missing token; a good Bearer header works on WS."""
    sid = new_id("s-")
    frame, code = await ws_rejected(http, ws_url(gateway, sid, ""), headers={"Authorization": ""})
    assert (frame["code"], code) == ("unauthorized", 4401)
    async with http.get(
        f"{base(gateway)}/v1/sessions/{sid}/events", headers={"Authorization": "Bearer   "}
    ) as resp:
        assert resp.status == 401
    ws = await http.ws_connect(ws_url(gateway, sid), headers=bearer(token([sid])))
    assert (await read_frame(ws, "hello"))["session"] == sid
    await ws.close()


async def test_token_for_another_session_is_forbidden(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    """A valid token that grants only another session gets 4403/403 forbidden."""
    sid = new_id("s-")
    other = token(["other"])
    frame, code = await ws_rejected(http, ws_url(gateway, sid, other))
    assert (frame["code"], code) == ("forbidden", 4403)
    assert sid in frame["message"]
    async with http.get(f"{base(gateway)}/v1/sessions/{sid}/events", headers=bearer(other)) as resp:
        assert resp.status == 403
        assert (await resp.json())["error"]["code"] == "forbidden"
    async with http.post(
        f"{base(gateway)}/v1/sessions/{sid}/messages", headers=bearer(other), json={"text": "x"}
    ) as resp:
        assert resp.status == 403
        assert (await resp.json())["error"]["code"] == "forbidden"
    await assert_healthy(http, gateway)


async def test_prefix_pattern_grants_only_matching_sessions(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    """A ``team-*`` token opens ``team-1`` but ``teams`` gets forbidden (WS and HTTP)."""
    team = new_id("team")  # a fresh prefix per run: team<random>-1 and team<random>s
    tok = token([f"{team}-*"])
    granted, denied = f"{team}-1", f"{team}s"
    ws = await open_live(http, gateway, granted, tok)
    await assert_still_works(http, ws)
    await ws.close()
    frame, code = await ws_rejected(http, ws_url(gateway, denied, tok))
    assert (frame["code"], code) == ("forbidden", 4403)
    frame, code = await ws_rejected(http, ws_url(gateway, team, tok))
    assert (frame["code"], code) == ("forbidden", 4403)
    async with http.post(
        f"{base(gateway)}/v1/sessions/{granted}/messages", headers=bearer(tok), json={"text": "a"}
    ) as resp:
        assert resp.status == 201
    async with http.post(
        f"{base(gateway)}/v1/sessions/{denied}/messages", headers=bearer(tok), json={"text": "a"}
    ) as resp:
        assert resp.status == 403
        assert (await resp.json())["error"]["code"] == "forbidden"
    async with http.get(
        f"{base(gateway)}/v1/sessions/{denied}/events", headers=bearer(tok)
    ) as resp:
        assert resp.status == 403


# ---- everything at once --------------------------------------------------------------


async def test_server_survives_all_bad_input(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    """After every kind of bad input on one gateway, /healthz is 200 and devices still work."""
    sid = new_id("s-")
    for param in BAD_SESSION_SEGMENTS:
        segment = param.values[0]
        frame, code = await ws_rejected(http, ws_url(gateway, segment, token()))
        assert (frame["code"], code) == ("invalid_id", 4400)
        async with http.get(raw_url(gateway, segment, "events"), headers=bearer(token())) as resp:
            assert resp.status == 400
    for kind in UNAUTHORIZED_KINDS:
        frame, code = await ws_rejected(http, ws_url(gateway, sid, bad_token(kind, sid)))
        assert (frame["code"], code) == ("unauthorized", 4401)
    frame, code = await ws_rejected(http, ws_url(gateway, sid, token(["other"])))
    assert (frame["code"], code) == ("forbidden", 4403)
    ws = await open_live(http, gateway, sid)
    for param in BAD_FRAMES:
        await ws.send_str(param.values[0])
        assert (await read_frame(ws, "error"))["code"] == param.values[1]
    await ws.send_bytes(b"binary")
    assert (await read_frame(ws, "error"))["code"] == "bad_frame"
    await assert_still_works(http, ws)
    await ws.send_str("z" * (gateway.settings.max_frame_bytes + 10))
    assert (await asyncio.wait_for(ws.receive(), TIMEOUT)).type == aiohttp.WSMsgType.CLOSE
    assert ws.close_code == 1009
    async with http.post(
        f"{base(gateway)}/v1/sessions/{sid}/messages",
        data=b"x" * (gateway.settings.max_frame_bytes * 2),
        headers=bearer(token([sid])),
    ) as resp:
        assert resp.status == 413
    await wait_for(lambda: not gateway.connections, what="all bad connections released")
    expected_rejections = len(BAD_SESSION_SEGMENTS) + len(UNAUTHORIZED_KINDS) + 1
    assert gateway.counters["ws_rejected"] == expected_rejections
    await assert_healthy(http, gateway)

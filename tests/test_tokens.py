"""Gateway token hardening: pinned algorithms, kid rotation, public keys, scopes, origins.

Everything here runs against real in-process gateways on a real nats-server, with real
aiohttp WebSocket and HTTP clients. Refusals are checked for their documented status or
close code (docs/protocol.md §12-13, docs/security.md) and for not echoing the token.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import orjson
import pytest
import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from services.gateway.app import Gateway
from services.gateway.auth import origin_allowed, origins_from_env
from services.gateway.settings import GatewaySettings
from shared import cli
from shared.errors import ConfigError
from shared.ids import new_id
from shared.server import EmbeddedNats
from shared.settings import Env, Secret
from shared.tokens import (
    DEFAULT_AUDIENCE,
    KeyRing,
    SigningKey,
    VerifyingKey,
    keys_from_json,
    mint,
    verify,
)
from tests.conftest import SECRET, gateway_settings, token

TIMEOUT = 10.0

# ---- keys -------------------------------------------------------------------------------

ROTATING = Secret("rotating-hmac-secret-0123456789abcdef")
RETIRED = Secret("retired-hmac-secret-0123456789abcdefgh")
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ED_KEY = ed25519.Ed25519PrivateKey.generate()


def private_pem(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def public_pem(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


RSA_SIGNER = SigningKey.from_private_pem(private_pem(RSA_KEY), kid="app-rsa")
ED_SIGNER = SigningKey.from_private_pem(private_pem(ED_KEY), kid="app-ed")
KEYS = (
    VerifyingKey.hmac("hs-2026", "HS256", ROTATING),
    VerifyingKey.hmac("hs-2025", "HS256", RETIRED),
    VerifyingKey.from_public_pem("app-rsa", "RS256", public_pem(RSA_KEY)),
    VerifyingKey.from_public_pem("app-ed", "EdDSA", public_pem(ED_KEY)),
)

# ---- helpers ----------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def payload(sessions: list[str], **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": "tester",
        "role": "user",
        "sessions": sessions,
        "aud": DEFAULT_AUDIENCE,
        "iat": now,
        "exp": now + 3600,
    }
    claims.update(overrides)
    return claims


def hand_signed(claims: dict[str, Any], alg: str, key: bytes, kid: str | None = None) -> str:
    """A JWT built by hand (no library key checks): HMAC ``alg`` or unsigned ``none``."""
    head: dict[str, Any] = {"alg": alg, "typ": "JWT"}
    if kid is not None:
        head["kid"] = kid
    signing_input = f"{b64(orjson.dumps(head))}.{b64(orjson.dumps(claims))}"
    if alg == "none":
        return f"{signing_input}."
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384}[alg]
    return f"{signing_input}.{b64(hmac.new(key, signing_input.encode(), digest).digest())}"


def kid_token(key: Secret | SigningKey, sid: str, kid: str = "", **kwargs: Any) -> str:
    signer = key if isinstance(key, SigningKey) else SigningKey("HS256", key, kid=kid)
    return mint(signer, subject=str(kwargs.pop("subject", "tester")), sessions=[sid], **kwargs)


@asynccontextmanager
async def running(server: EmbeddedNats, **overrides: Any) -> AsyncIterator[Gateway]:
    """A gateway with these settings on a real socket, stopped afterwards."""
    gw = Gateway(gateway_settings(server, **overrides))
    await gw.start()
    try:
        yield gw
    finally:
        await gw.stop()


def base(gateway: Gateway) -> str:
    return f"http://127.0.0.1:{gateway.port}"


def ws_url(gateway: Gateway, sid: str) -> str:
    return f"ws://127.0.0.1:{gateway.port}/v1/sessions/{sid}/ws"


def bearer(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


async def read_frame(ws: aiohttp.ClientWebSocketResponse, kind: str) -> dict[str, Any]:
    """Read frames until one of type ``kind``; fail if the socket closes first."""
    while True:
        msg = await asyncio.wait_for(ws.receive(), TIMEOUT)
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise AssertionError(f"expected a {kind!r} frame, got {msg.type!r} {msg.data!r}")
        frame = orjson.loads(msg.data)
        if frame["type"] == kind:
            return frame


async def ws_refused(
    http: aiohttp.ClientSession, gateway: Gateway, sid: str, tok: str
) -> tuple[dict[str, Any], int | None, str]:
    """Connect with ``tok``: the error frame, the close code and the close reason."""
    async with http.ws_connect(ws_url(gateway, sid), params={"token": tok}) as ws:
        first = await asyncio.wait_for(ws.receive(), TIMEOUT)
        assert first.type == aiohttp.WSMsgType.TEXT, f"expected an error frame, got {first!r}"
        closing = await asyncio.wait_for(ws.receive(), TIMEOUT)
        assert closing.type == aiohttp.WSMsgType.CLOSE, f"expected a close, got {closing!r}"
        return orjson.loads(first.data), ws.close_code, str(closing.extra or "")


async def ws_accepted(http: aiohttp.ClientSession, gateway: Gateway, sid: str, tok: str) -> None:
    """The token opens a WebSocket (hello) and can send a message (ack)."""
    async with http.ws_connect(ws_url(gateway, sid), params={"token": tok}) as ws:
        await read_frame(ws, "caught_up")
        await ws.send_str(orjson.dumps({"type": "send", "id": new_id("m-"), "text": "hi"}).decode())
        ack = await read_frame(ws, "ack")
        assert ack["seq"] > 0


async def assert_unauthorized(
    http: aiohttp.ClientSession, gateway: Gateway, sid: str, tok: str, reason: str
) -> None:
    """WebSocket 4401 and HTTP 401 ``unauthorized``, the reason named, the token not echoed."""
    frame, code, close_reason = await ws_refused(http, gateway, sid, tok)
    assert (frame["type"], frame["code"], code) == ("error", "unauthorized", 4401)
    assert reason in frame["message"], frame["message"]
    async with http.get(f"{base(gateway)}/v1/sessions/{sid}/events", headers=bearer(tok)) as resp:
        body = await resp.json()
        assert (resp.status, body["error"]["code"]) == (401, "unauthorized")
        assert reason in body["error"]["message"]
    for text in (frame["message"], close_reason, orjson.dumps(body).decode()):
        assert_not_echoed(tok, text)


def assert_not_echoed(tok: str, text: str) -> None:
    """No part of the token (header, payload or signature) shows in ``text``."""
    for part in tok.split("."):
        if len(part) >= 8:
            assert part not in text, f"token part echoed in {text!r}"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def keyed(nats_server: EmbeddedNats) -> AsyncIterator[Gateway]:
    """A gateway with the legacy secret (kid default) and four more keys by kid."""
    async with running(nats_server, jwt_keys=KEYS) as gw:
        yield gw


# ---- refusals ---------------------------------------------------------------------------


async def test_device_token_for_another_session_is_forbidden(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    """A device token for one session gets 4403/403 forbidden on every endpoint of another."""
    sid, other = new_id("s-"), new_id("s-")
    tok = token([other], subject="device-1")
    frame, code, _ = await ws_refused(http, gateway, sid, tok)
    assert (frame["code"], code) == ("forbidden", 4403)
    assert sid in frame["message"]
    url = f"{base(gateway)}/v1/sessions/{sid}"
    for method, tail, body in (
        ("GET", "events", None),
        ("GET", "presence", None),
        ("POST", "messages", {"text": "x"}),
        ("POST", "control", {"action": "cancel"}),
    ):
        async with http.request(method, f"{url}/{tail}", json=body, headers=bearer(tok)) as resp:
            assert resp.status == 403, tail
            assert (await resp.json())["error"]["code"] == "forbidden"
    await ws_accepted(http, gateway, other, tok)


async def test_expired_token_is_refused(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    """A token past its exp (beyond the leeway) gets 4401/401 'token expired'."""
    sid = new_id("s-")
    await assert_unauthorized(http, gateway, sid, token([sid], ttl_seconds=-60), "token expired")


async def test_not_yet_valid_token_is_refused(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    """A token whose nbf is in the future gets 4401/401; one within the leeway is accepted."""
    sid = new_id("s-")
    later = token([sid], not_before=int(time.time()) + 600)
    await assert_unauthorized(http, gateway, sid, later, "not yet valid (nbf")
    await ws_accepted(http, gateway, sid, token([sid], not_before=int(time.time()) + 2))


async def test_hs384_against_an_hs256_key_is_refused(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    """A token signed with the right secret but HS384 is refused: the key pins HS256."""
    sid = new_id("s-")
    tok = hand_signed(payload([sid]), "HS384", SECRET.reveal().encode())
    await assert_unauthorized(http, gateway, sid, tok, "algorithm is not accepted (only HS256)")


async def test_alg_none_is_refused(keyed: Gateway, http: aiohttp.ClientSession) -> None:
    """An unsigned alg none token is refused, with or without a kid."""
    sid = new_id("s-")
    for kid in (None, "hs-2026", "app-rsa"):
        tok = hand_signed(payload([sid]), "none", b"", kid=kid)
        await assert_unauthorized(http, keyed, sid, tok, "algorithm is not accepted (only")


async def test_hs256_signed_with_the_rsa_public_key_is_refused(
    keyed: Gateway, http: aiohttp.ClientSession
) -> None:
    """Key confusion: HS256 with the RS256 public key PEM as HMAC secret is refused."""
    sid = new_id("s-")
    pem = public_pem(RSA_KEY).encode()
    confused = hand_signed(payload([sid]), "HS256", pem, kid="app-rsa")
    await assert_unauthorized(http, keyed, sid, confused, "algorithm is not accepted (only RS256)")
    no_kid = hand_signed(payload([sid]), "HS256", pem)  # verified with the default secret
    await assert_unauthorized(http, keyed, sid, no_kid, "signature is invalid")


async def test_wrong_audience_is_refused(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    """A token for another audience gets 4401/401 naming the audience."""
    sid = new_id("s-")
    tok = token([sid], audience="another-service")
    await assert_unauthorized(http, gateway, sid, tok, "audience is not accepted")


async def test_wrong_issuer_is_refused(
    nats_server: EmbeddedNats, http: aiohttp.ClientSession
) -> None:
    """With an issuer configured, a wrong or missing iss is refused and the right one opens."""
    sid = new_id("s-")
    async with running(nats_server, jwt_issuer="https://app.example") as gw:
        wrong = token([sid], issuer="https://evil.example")
        await assert_unauthorized(http, gw, sid, wrong, "issuer is not accepted")
        await assert_unauthorized(http, gw, sid, token([sid]), "claim 'iss' is missing")
        await ws_accepted(http, gw, sid, token([sid], issuer="https://app.example"))


async def test_unknown_kid_is_refused(keyed: Gateway, http: aiohttp.ClientSession) -> None:
    """A token naming a kid the gateway does not have gets 4401/401 naming the kid."""
    sid = new_id("s-")
    tok = kid_token(ROTATING, sid, kid="never-configured")
    await assert_unauthorized(http, keyed, sid, tok, "key id 'never-configured' is not known")


async def test_retired_key_is_refused(
    nats_server: EmbeddedNats, http: aiohttp.ClientSession
) -> None:
    """After rotation drops a kid from the config, its tokens are refused; the new kid works."""
    sid = new_id("s-")
    old = kid_token(RETIRED, sid, kid="hs-2025")
    new = kid_token(ROTATING, sid, kid="hs-2026")
    async with running(nats_server, jwt_keys=KEYS) as before:
        await ws_accepted(http, before, sid, old)
        await ws_accepted(http, before, sid, new)
    remaining = tuple(key for key in KEYS if key.kid != "hs-2025")
    async with running(nats_server, jwt_keys=remaining) as after:
        await assert_unauthorized(http, after, sid, old, "key id 'hs-2025' is not known")
        await ws_accepted(http, after, sid, new)
        forged = kid_token(RETIRED, sid, kid="hs-2026")  # the old secret under the new kid
        await assert_unauthorized(http, after, sid, forged, "signature is invalid")


async def test_rs256_and_eddsa_tokens_are_accepted(
    keyed: Gateway, http: aiohttp.ClientSession
) -> None:
    """RS256 and EdDSA tokens verify with public keys only; a kid of the other kind refuses."""
    sid = new_id("s-")
    await ws_accepted(http, keyed, sid, kid_token(RSA_SIGNER, sid))
    await ws_accepted(http, keyed, sid, kid_token(ED_SIGNER, sid))
    swapped = kid_token(SigningKey(ED_SIGNER.alg, ED_SIGNER.material, kid="app-rsa"), sid)
    await assert_unauthorized(http, keyed, sid, swapped, "algorithm is not accepted (only RS256)")
    async with http.get(
        f"{base(keyed)}/v1/sessions/{sid}/events", headers=bearer(kid_token(ED_SIGNER, sid))
    ) as resp:
        assert resp.status == 200
        assert [e["event"]["text"] for e in (await resp.json())["events"]] == ["hi", "hi"]


async def test_websocket_is_closed_when_its_token_expires(
    nats_server: EmbeddedNats, http: aiohttp.ClientSession
) -> None:
    """An open WebSocket gets an unauthorized error frame and 4401 once its token expires."""
    sid = new_id("s-")
    async with running(nats_server, jwt_leeway_seconds=0.0) as gw:
        tok = token([sid], ttl_seconds=2)
        async with http.ws_connect(ws_url(gw, sid), params={"token": tok}) as ws:
            await read_frame(ws, "caught_up")
            error = await read_frame(ws, "error")
            assert (error["code"], error["message"][:13]) == ("unauthorized", "token expired")
            closing = await asyncio.wait_for(ws.receive(), TIMEOUT)
            assert (closing.type, closing.data) == (aiohttp.WSMsgType.CLOSE, 4401)
        assert gw.counters["ws_token_expired"] == 1


async def test_read_only_token_cannot_send_or_control(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    """A read-only token reads, but send/cancel/steer/approve get forbidden; the socket stays."""
    sid = new_id("s-")
    tok = token([sid], scopes=["read"])
    async with http.ws_connect(ws_url(gateway, sid), params={"token": tok}) as ws:
        await read_frame(ws, "caught_up")
        frames: list[dict[str, Any]] = [
            {"type": "send", "id": "m-1", "text": "no"},
            {"type": "cancel", "id": "c-1"},
            {"type": "steer", "id": "c-2", "text": "no"},
            {"type": "approve", "id": "a-1", "approval": "x", "run": "r", "option": "yes"},
        ]
        for sent in frames:
            await ws.send_str(orjson.dumps(sent).decode())
            error = await read_frame(ws, "error")
            assert (error["code"], error["id"]) == ("forbidden", sent["id"])
            wanted = "'write'" if sent["type"] == "send" else "'control'"
            assert f"does not grant scope {wanted} (it grants: read)" in error["message"]
        await ws.send_str(orjson.dumps({"type": "ping", "id": "p-1"}).decode())
        assert (await read_frame(ws, "pong"))["id"] == "p-1"
        assert not ws.closed
    url = f"{base(gateway)}/v1/sessions/{sid}"
    async with http.post(f"{url}/messages", json={"text": "x"}, headers=bearer(tok)) as resp:
        assert (resp.status, (await resp.json())["error"]["code"]) == (403, "forbidden")
    async with http.post(f"{url}/control", json={"action": "cancel"}, headers=bearer(tok)) as resp:
        assert (resp.status, (await resp.json())["error"]["code"]) == (403, "forbidden")
    for tail in ("events", "presence"):
        async with http.get(f"{url}/{tail}", headers=bearer(tok)) as resp:
            assert resp.status == 200, tail
    async with http.get(f"{url}/events", headers=bearer(tok)) as resp:
        assert (await resp.json())["events"] == []  # nothing was stored


async def test_write_scope_without_control_cannot_cancel(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    """A read+write token sends messages but its cancel gets forbidden (frame and HTTP)."""
    sid = new_id("s-")
    tok = token([sid], scopes=["read", "write"])
    await ws_accepted(http, gateway, sid, tok)
    async with http.ws_connect(ws_url(gateway, sid), params={"token": tok}) as ws:
        await read_frame(ws, "caught_up")
        await ws.send_str(orjson.dumps({"type": "cancel", "id": "c-9"}).decode())
        assert (await read_frame(ws, "error"))["code"] == "forbidden"
    async with http.post(
        f"{base(gateway)}/v1/sessions/{sid}/control",
        json={"action": "cancel"},
        headers=bearer(tok),
    ) as resp:
        assert resp.status == 403


async def test_write_only_token_cannot_connect_or_read(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    """Without the read scope a token cannot open the WebSocket or read history (4403/403)."""
    sid = new_id("s-")
    tok = token([sid], scopes=["write"])
    frame, code, _ = await ws_refused(http, gateway, sid, tok)
    assert (frame["code"], code) == ("forbidden", 4403)
    async with http.get(f"{base(gateway)}/v1/sessions/{sid}/events", headers=bearer(tok)) as resp:
        assert resp.status == 403
    async with http.post(
        f"{base(gateway)}/v1/sessions/{sid}/messages", json={"text": "x"}, headers=bearer(tok)
    ) as resp:
        assert resp.status == 201


async def test_bad_scope_claims_are_refused(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    """A scope the role may not hold, an unknown scope or a malformed claim gets 401."""
    sid = new_id("s-")
    key = SECRET.reveal()
    beyond = jwt.encode(payload([sid], scope=["read", "admin"]), key, algorithm="HS256")
    await assert_unauthorized(http, gateway, sid, beyond, "'admin' is not allowed for role 'user'")
    unknown = jwt.encode(payload([sid], scope="read sudo"), key, algorithm="HS256")
    await assert_unauthorized(http, gateway, sid, unknown, "scope 'sudo' is not one of")
    malformed = jwt.encode(payload([sid], scope={"read": True}), key, algorithm="HS256")
    await assert_unauthorized(http, gateway, sid, malformed, "claim 'scope' must be")
    spaced = jwt.encode(payload([sid], scope="read write"), key, algorithm="HS256")
    await ws_accepted(http, gateway, sid, spaced)


async def test_non_admin_cannot_use_the_admin_api(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    """User and agent tokens, and an admin token without the admin scope, get 403."""
    url = f"{base(gateway)}/v1/webhooks"
    for tok in (
        token(["*"]),
        token(["*"], role="agent"),
        token(["*"], role="admin", scopes=["read", "write", "control"]),
    ):
        async with http.get(url, headers=bearer(tok)) as resp:
            body = await resp.json()
            assert (resp.status, body["error"]["code"]) == (403, "forbidden")
            assert_not_echoed(tok, orjson.dumps(body).decode())
        async with http.post(url, json={"url": "https://x.example"}, headers=bearer(tok)) as resp:
            assert resp.status == 403
    async with http.get(url, headers=bearer(token(["*"], role="admin"))) as resp:
        assert resp.status == 200
    async with http.get(url, headers=bearer(token([], role="admin", scopes=["admin"]))) as resp:
        assert resp.status == 200


# ---- origins ----------------------------------------------------------------------------


async def test_disallowed_origin_is_refused_and_allowed_one_accepted(
    nats_server: EmbeddedNats, http: aiohttp.ClientSession
) -> None:
    """A browser Origin outside the allow-list gets 403 origin_not_allowed before the upgrade."""
    sid = new_id("s-")
    tok = token([sid])
    allowed = ("https://app.example", "https://*.tether.example")
    async with running(nats_server, allowed_origins=allowed) as gw:
        for origin in ("https://evil.example", "null", "http://app.example"):
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await http.ws_connect(
                    ws_url(gw, sid), params={"token": tok}, headers={"Origin": origin}
                )
            assert info.value.status == 403
            async with http.get(
                f"{base(gw)}/v1/sessions/{sid}/events",
                headers={**bearer(tok), "Origin": origin},
            ) as resp:
                body = await resp.json()
                assert (resp.status, body["error"]["code"]) == (403, "origin_not_allowed")
                assert_not_echoed(tok, orjson.dumps(body).decode())
        assert not gw.connections
        for origin in (
            "https://app.example",
            "https://APP.example:443",
            "https://a.tether.example",
        ):
            async with http.ws_connect(
                ws_url(gw, sid), params={"token": tok}, headers={"Origin": origin}
            ) as ws:
                await read_frame(ws, "hello")
        await ws_accepted(http, gw, sid, tok)  # no Origin: a non-browser client


def test_origin_settings_and_matching() -> None:
    """TETHER_ALLOWED_ORIGINS is normalised, '*' allows any, and bad values are named."""
    env = Env({"TETHER_ALLOWED_ORIGINS": " https://App.example:443/ , http://localhost:5173"})
    allowed = origins_from_env(env)
    assert allowed == ("https://app.example", "http://localhost:5173")
    assert origin_allowed("http://localhost:5173", allowed)
    assert not origin_allowed("http://localhost:5174", allowed)
    assert not origin_allowed("https://app.example.evil.example", allowed)
    assert origin_allowed("https://anything.example", origins_from_env(Env({})))
    assert origin_allowed("null", origins_from_env(Env({"TETHER_ALLOWED_ORIGINS": "*"})))
    subdomains = origins_from_env(Env({"TETHER_ALLOWED_ORIGINS": "https://*.example.com"}))
    assert origin_allowed("https://a.b.example.com", subdomains)
    assert not origin_allowed("https://example.com", subdomains)
    assert not origin_allowed("https://evilexample.com", subdomains)
    for bad in ("app.example", "ftp://x.example", "https://x.example/path", "https://a*.x.com"):
        with pytest.raises(ConfigError, match=r"^TETHER_ALLOWED_ORIGINS has value "):
            origins_from_env(Env({"TETHER_ALLOWED_ORIGINS": bad}))


# ---- logs and settings ------------------------------------------------------------------


async def test_tokens_are_never_logged(keyed: Gateway, http: aiohttp.ClientSession) -> None:
    """No log event of an accepted or refused connection or request contains the token."""
    sid = new_id("s-")
    good = kid_token(ED_SIGNER, sid)
    bad = kid_token(ROTATING, sid, kid="unknown-kid")
    with structlog.testing.capture_logs() as logs:
        await ws_accepted(http, keyed, sid, good)
        await ws_refused(http, keyed, sid, bad)
        async with http.get(f"{base(keyed)}/v1/sessions/{sid}/events", params={"token": good}):
            pass
        await asyncio.sleep(0.1)
    assert logs, "expected some log events"
    text = repr(logs)
    assert_not_echoed(good, text)
    assert_not_echoed(bad, text)


def test_keys_settings_from_env(tmp_path: Path) -> None:
    """TETHER_JWT_KEYS(_FILE) loads kids; secrets stay out of repr; keys alone suffice."""
    pub = tmp_path / "ed.pub.pem"
    pub.write_text(public_pem(ED_KEY), encoding="utf-8")
    config = {
        "hs-2026": {"alg": "HS256", "secret": ROTATING.reveal()},
        "app-rsa": {"alg": "RS256", "public_key": public_pem(RSA_KEY)},
        "app-ed": {"alg": "EdDSA", "public_key_file": str(pub)},
    }
    env = Env({"TETHER_JWT_SECRET": "legacy", "TETHER_JWT_KEYS": orjson.dumps(config).decode()})
    settings = GatewaySettings.from_env(env)
    assert settings.keyring.kids == ("default", "hs-2026", "app-rsa", "app-ed")
    assert ROTATING.reveal() not in repr(settings) and "legacy" not in repr(settings)
    path = tmp_path / "keys.json"
    path.write_bytes(orjson.dumps(config))
    only_keys = GatewaySettings.from_env(Env({"TETHER_JWT_KEYS_FILE": str(path)}))
    assert only_keys.keyring.kids == ("hs-2026", "app-rsa", "app-ed")
    sid = "s-1"
    claims = verify(kid_token(ED_SIGNER, sid), only_keys.keyring)
    assert (claims.key_id, claims.sessions) == ("app-ed", (sid,))
    with pytest.raises(Exception, match="no 'kid' header and this gateway has no default key"):
        verify(token([sid]), only_keys.keyring)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("{not json", r"^TETHER_JWT_KEYS is not valid JSON \(line 1"),
        ("[]", r"^TETHER_JWT_KEYS holds a JSON list, not an object of kids"),
        ('{"a b": {"alg": "HS256"}}', r"^TETHER_JWT_KEYS has kid 'a b', not 1 to 128 of"),
        ('{"k": {"alg": "none", "secret": "x"}}', r"^TETHER_JWT_KEYS key 'k' has alg 'none', not"),
        ('{"k": {"alg": "HS256"}}', r"needs exactly one of 'secret', 'secret_file'"),
        ('{"k": {"alg": "HS256", "secret": "short"}}', r"secret of 5 bytes, below the minimum 32"),
        (
            '{"k": {"alg": "RS256", "secret": "x"}}',
            r"has field 'secret', which alg 'RS256' does not take",
        ),
        ('{"k": {"alg": "RS256", "public": "x"}}', r"has field 'public', not one of"),
        ('{"k": {"alg": "RS256", "public_key": "x"}}', r"its public_key is not a PEM public key"),
        ('{"default": {"alg": "HS256", "secret": "' + "s" * 40 + '"}}', r"already defines"),
    ],
)
def test_keys_config_errors_are_precise(config: str, message: str) -> None:
    """Each bad TETHER_JWT_KEYS is a ConfigError naming the variable, kid and field."""
    env = Env({"TETHER_JWT_SECRET": "legacy", "TETHER_JWT_KEYS": config})
    with pytest.raises(ConfigError, match=message) as info:
        GatewaySettings.from_env(env)
    assert "s" * 40 not in str(info.value)


def test_key_kinds_are_checked() -> None:
    """A private key, or a public key of the wrong kind for its alg, is refused at load."""
    source = "TETHER_JWT_KEYS"
    private = orjson.dumps({"k": {"alg": "EdDSA", "public_key": private_pem(ED_KEY)}}).decode()
    with pytest.raises(ConfigError, match="holds a private key; give the gateway only the public"):
        keys_from_json(private, source)
    wrong = orjson.dumps({"k": {"alg": "RS256", "public_key": public_pem(ED_KEY)}}).decode()
    with pytest.raises(ConfigError, match=r"key 'k': its public_key is not an RSA key"):
        keys_from_json(wrong, source)
    with pytest.raises(ConfigError, match="TETHER_JWT_LEEWAY_SECONDS has value 900.0, above"):
        GatewaySettings.from_env(
            Env({"TETHER_JWT_SECRET": "s", "TETHER_JWT_LEEWAY_SECONDS": "900"})
        )
    assert "ROTATING" not in repr(KeyRing(KEYS)) and ROTATING.reveal() not in repr(KEYS)


def test_cli_token_with_kid_scope_and_key_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`tether token --key-file --kid --scope` mints a token the gateway's key ring accepts."""
    pem = tmp_path / "app-ed.pem"
    pem.write_text(private_pem(ED_KEY), encoding="utf-8")
    args = cli.build_parser().parse_args(
        ["token", "--sessions", "s-1", "--key-file", str(pem), "--kid", "app-ed"]
        + ["--scope", "read", "--subject", "alice"]
    )
    assert cli.run(args) == 0
    tok = capsys.readouterr().out.strip()
    assert jwt.get_unverified_header(tok) == {"alg": "EdDSA", "kid": "app-ed", "typ": "JWT"}
    claims = verify(tok, KeyRing(KEYS))
    assert (claims.subject, claims.scopes, claims.sessions) == ("alice", {"read"}, ("s-1",))
    missing = cli.build_parser().parse_args(["token", "--key-file", str(tmp_path / "nope.pem")])
    with pytest.raises(ConfigError, match=r"^--key-file names .*nope.pem"):
        cli.run(missing)

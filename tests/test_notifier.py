"""The notifier: signed webhooks to offline users, retries, dead letters, crash safety, and
the admin API, with a real nats-server, real gateways and a real aiohttp receiver."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook

from services.gateway.app import Gateway
from services.notifier import signing
from services.notifier.delivery import backoff
from services.notifier.service import NotifierService
from services.notifier.settings import NotifierSettings
from shared import agent, cursors, kvread, presence, subjects, webhooks, wire
from shared.errors import ConfigError
from shared.ids import new_id
from shared.sealing import SealedSecretError, Sealer
from shared.server import EmbeddedNats
from shared.settings import Env, LogSettings, Secret
from shared.urlsafety import AddressPolicy, kind_of
from tests.conftest import ROOT, ServiceProcess, gateway_settings, token, wait_for
from tests.device import Device

LOOPBACK = AddressPolicy(frozenset({"loopback"}))


@dataclass
class Received:
    """One request the receiver got."""

    at: float
    headers: dict[str, str]
    body: bytes

    @property
    def payload(self) -> dict[str, Any]:
        value: dict[str, Any] = orjson.loads(self.body)
        return value


@dataclass
class Receiver:
    """A webhook endpoint on a real socket; ``statuses`` are answered in order, then 200."""

    statuses: list[int] = field(default_factory=list)
    delay: float = 0.0
    delay_once: bool = True
    requests: list[Received] = field(default_factory=list)
    runner: web.AppRunner | None = None
    port: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(
            Received(time.monotonic(), dict(request.headers), await request.read())
        )
        if self.delay:
            pause = self.delay
            if self.delay_once:
                self.delay = 0.0
            await asyncio.sleep(pause)
        status = self.statuses.pop(0) if self.statuses else 200
        return web.Response(status=status, text="ok")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A real aiohttp webhook receiver on 127.0.0.1."""
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


@pytest.fixture
async def admin_gateway(own_nats: EmbeddedNats) -> AsyncIterator[Gateway]:
    """An in-process gateway on its own nats-server that allows loopback webhook URLs."""
    gw = Gateway(gateway_settings(own_nats, webhook_policy=LOOPBACK))
    await gw.start()
    yield gw
    await gw.stop()


@pytest.fixture
async def bot(own_nats: EmbeddedNats) -> AsyncIterator[agent.Client]:
    """An agent on the test's own nats-server."""
    c = await agent.connect(own_nats.settings("test-agent"), log_settings=LogSettings())
    yield c
    await c.close()


Start = Callable[..., Awaitable[NotifierService]]


@pytest.fixture
async def notifier(own_nats: EmbeddedNats) -> AsyncIterator[Start]:
    """Factory of in-process notifiers (short grace and backoff by default)."""
    started: list[NotifierService] = []

    async def start(**overrides: Any) -> NotifierService:
        base = NotifierSettings(
            nats=own_nats.settings("test-notifier"),
            grace_seconds=0.0,
            backoff_seconds=0.1,
            timeout_seconds=2.0,
            ack_wait_seconds=5.0,
            policy=LOOPBACK,
        )
        fields = {**base.__dict__, **overrides}
        service = NotifierService(NotifierSettings(**fields))
        await service.start()
        started.append(service)
        return service

    yield start
    for service in started:
        await service.stop()


def admin(gateway: Gateway) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(role='admin', subject='ops')}"}


async def api(
    gateway: Gateway,
    method: str,
    path: str,
    body: object = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> tuple[int, dict[str, Any]]:
    url = f"http://127.0.0.1:{gateway.port}{path}"
    async with (
        aiohttp.ClientSession() as http,
        http.request(
            method,
            url,
            json=body if raw is None else None,
            data=raw,
            headers=admin(gateway) if headers is None else headers,
        ) as resp,
    ):
        return resp.status, orjson.loads(await resp.read())


async def subscribe(gateway: Gateway, url: str, **body: Any) -> dict[str, Any]:
    body = {"url": url, "events": ["run.completed", "run.failed"], **body}
    status, reply = await api(gateway, "POST", "/v1/webhooks", body)
    assert status == 201, reply
    return reply


async def finish_run(bot: agent.Client, sid: str, user: str | None = "alice") -> int:
    """A run that answers and completes; returns the run.completed sequence."""
    session = bot.session(sid)
    async with session.run(user=user) as run:
        message = run.message()
        await message.start()
        await message.append("Your report is ready: 42 pages, ")
        await message.complete()
    return await last_run_seq(bot, sid)


async def last_run_seq(bot: agent.Client, sid: str) -> int:
    info = await bot.nc.jetstream().stream_info("TETHER_SESSIONS")
    return int(info.state.last_seq)


async def test_offline_user_gets_one_signed_delivery(
    admin_gateway: Gateway, bot: agent.Client, receiver: Receiver, notifier: Start
) -> None:
    """User offline when the run completes: exactly one delivery; the signature verifies."""
    sid = new_id("s-")
    hook = await subscribe(admin_gateway, receiver.url, filter={"session": sid})
    await notifier()
    await finish_run(bot, sid)
    await wait_for(lambda: len(receiver.requests) == 1, what="one delivery")
    await asyncio.sleep(0.5)
    assert len(receiver.requests) == 1
    got = receiver.requests[0]
    Webhook(hook["secret"]).verify(got.body, got.headers)
    payload = got.payload
    assert payload["type"] == "run.completed"
    assert payload["session"] == sid and payload["user"] == "alice"
    assert payload["summary"].startswith("Your report is ready")
    assert payload["resume_from"] == payload["seq"] - 1
    assert got.headers["webhook-id"].startswith("msg_")


async def test_user_from_latest_message_and_failed_run(
    admin_gateway: Gateway, bot: agent.Client, receiver: Receiver, notifier: Start
) -> None:
    """A run without ``user`` notifies the author of the latest user message (run.failed)."""
    sid = new_id("s-")
    await subscribe(admin_gateway, receiver.url, filter={"user": "bob"})
    await notifier()
    status, _ = await api(
        admin_gateway,
        "POST",
        f"/v1/sessions/{sid}/messages",
        {"text": "summarise my inbox"},
        headers={"Authorization": f"Bearer {token([sid], subject='bob')}"},
    )
    assert status == 201
    with pytest.raises(RuntimeError):
        async with bot.session(sid).run():
            raise RuntimeError("model did not answer")
    await wait_for(lambda: len(receiver.requests) == 1, what="failed-run delivery")
    payload = receiver.requests[0].payload
    assert payload["type"] == "run.failed" and payload["user"] == "bob"
    assert "model did not answer" in payload["error"]


async def test_online_user_gets_no_delivery(
    admin_gateway: Gateway, bot: agent.Client, receiver: Receiver, notifier: Start
) -> None:
    """A user watching the session sees the event: no webhook after the grace period."""
    sid = new_id("s-")
    await subscribe(admin_gateway, receiver.url, filter={"session": sid})
    await notifier(grace_seconds=1.0)
    device = Device(sid, token([sid], subject="alice"))
    await device.connect(f"http://127.0.0.1:{admin_gateway.port}")
    await wait_for(lambda: device.view.live, what="device live")
    seq = await finish_run(bot, sid)
    await wait_for(lambda: device.view.position >= seq, what="device saw the run end")
    await asyncio.sleep(2.0)
    assert receiver.requests == []
    assert await cursors.read(admin_gateway.cursors, sid, "alice") >= seq
    await device.close()


async def test_user_leaving_unseen_gets_delivery(
    admin_gateway: Gateway, bot: agent.Client, receiver: Receiver, notifier: Start
) -> None:
    """Present but never shown the event, the user leaves within the grace: delivery."""
    sid = new_id("s-")
    await subscribe(admin_gateway, receiver.url, filter={"session": sid})
    await notifier(grace_seconds=1.0)
    entry = presence.Entry(sid, "user", "alice", "conn-phone", "online", device="phone")
    await presence.put(bot.nc, entry)
    ended = time.monotonic()
    await finish_run(bot, sid)
    await asyncio.sleep(0.3)
    assert receiver.requests == []
    await presence.remove(bot.nc, entry.key, "closed")
    await wait_for(lambda: len(receiver.requests) == 1, what="delivery after the grace")
    assert receiver.requests[0].at - ended >= 0.9


async def test_retries_with_backoff_keep_the_webhook_id(
    admin_gateway: Gateway, bot: agent.Client, receiver: Receiver, notifier: Start
) -> None:
    """500 three times then 200: delivered, one webhook-id, growing gaps between attempts."""
    sid = new_id("s-")
    receiver.statuses = [500, 500, 500]
    hook = await subscribe(admin_gateway, receiver.url, filter={"session": sid})
    await notifier(backoff_seconds=0.2)
    await finish_run(bot, sid)
    await wait_for(lambda: len(receiver.requests) == 4, timeout=15, what="four attempts")
    await asyncio.sleep(0.5)
    assert len(receiver.requests) == 4
    assert len({r.headers["webhook-id"] for r in receiver.requests}) == 1
    gaps = [b.at - a.at for a, b in zip(receiver.requests, receiver.requests[1:], strict=False)]
    assert gaps[0] >= 0.18
    assert gaps[0] < gaps[1] < gaps[2]
    for request in receiver.requests:
        Webhook(hook["secret"]).verify(request.body, request.headers)


async def dead_letters(gateway: Gateway, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The dead letters, once there is at least one (polled through the admin API)."""
    dead: list[dict[str, Any]] = []

    async def poll() -> None:
        while not dead:
            _, reply = await api(gateway, "GET", "/v1/webhooks/dead")
            dead.extend(reply["dead"])
            await asyncio.sleep(0.05)

    await asyncio.wait_for(poll(), timeout)
    return dead


async def test_dead_letter_then_replay(
    admin_gateway: Gateway, bot: agent.Client, receiver: Receiver, notifier: Start
) -> None:
    """Never 2xx: a dead letter after the configured attempts; replay delivers it later."""
    sid = new_id("s-")
    receiver.statuses = [503] * 3
    await subscribe(admin_gateway, receiver.url, filter={"session": sid})
    await notifier(max_attempts=3, backoff_seconds=0.05)
    await finish_run(bot, sid)
    dead = await dead_letters(admin_gateway)
    assert len(receiver.requests) == 3
    record = dead[0]
    assert record["attempts"] == 3 and record["error"] == "HTTP 503"
    wid = record["webhook_id"]
    assert wid == receiver.requests[0].headers["webhook-id"]
    status, _ = await api(admin_gateway, "POST", f"/v1/webhooks/dead/{wid}/replay")
    assert status == 200
    await wait_for(lambda: len(receiver.requests) == 4, what="replayed delivery")
    assert receiver.requests[-1].headers["webhook-id"] == wid
    _, reply = await api(admin_gateway, "GET", "/v1/webhooks/dead")
    assert reply["dead"] == []
    status, _ = await api(admin_gateway, "POST", f"/v1/webhooks/dead/{wid}/replay")
    assert status == 404


def start_notifier(server: EmbeddedNats, **env: str) -> ServiceProcess:
    base = {
        "TETHER_NOTIFY_GRACE_SECONDS": "0",
        "TETHER_WEBHOOK_ALLOW_PRIVATE": "loopback",
        "TETHER_WEBHOOK_BACKOFF_SECONDS": "0.1",
    }
    log = server.data_dir / "notifier-stderr.log"  # shown if it does not become ready
    return ServiceProcess(["notifier"], server, {**base, **env}, stderr_path=log, role="notifier")


async def test_sigkill_mid_delivery_still_delivers(
    admin_gateway: Gateway, bot: agent.Client, receiver: Receiver, own_nats: EmbeddedNats
) -> None:
    """The notifier process is SIGKILLed while the receiver is slow: after a restart the
    webhook arrives, with the same webhook-id."""
    sid = new_id("s-")
    receiver.delay = 30.0  # the first request hangs
    await subscribe(admin_gateway, receiver.url, filter={"session": sid})
    env = {"TETHER_WEBHOOK_TIMEOUT_SECONDS": "20", "TETHER_WEBHOOK_ACK_WAIT_SECONDS": "2"}
    first = await asyncio.to_thread(start_notifier, own_nats, **env)
    try:
        await finish_run(bot, sid)
        await wait_for(lambda: len(receiver.requests) == 1, what="first attempt")
        first.kill()
        killed = time.monotonic()
        second = await asyncio.to_thread(start_notifier, own_nats, **env)
        try:
            await wait_for(lambda: len(receiver.requests) == 2, timeout=15, what="redelivery")
        finally:
            second.stop()
    finally:
        first.stop()
    ids = {r.headers["webhook-id"] for r in receiver.requests}
    assert len(ids) == 1
    assert receiver.requests[1].at - killed < 10


async def test_notifier_subprocess_ready_and_sigterm(own_nats: EmbeddedNats) -> None:
    """`python -m shared.cli notifier` says ready and exits 0 on SIGTERM."""
    process = await asyncio.to_thread(start_notifier, own_nats)
    assert process.ready_info == {"event": "ready", "service": "notifier", "port": process.port}
    assert process.port > 0  # its ops server (/healthz, /readyz, /metrics), a random port
    process.process.terminate()
    assert await asyncio.to_thread(process.process.wait, 15) == 0


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://10.0.0.1/hook", "private"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://127.0.0.1:9/hook", "loopback"),
        ("http://[::1]/hook", "loopback"),
        ("http://0.0.0.0/hook", "unspecified"),
        ("http://localhost/hook", "loopback"),
    ],
)
async def test_private_urls_refused(gateway: Gateway, url: str, kind: str) -> None:
    """With no allow-list, URLs resolving to non-public addresses get a 400 naming the kind."""
    status, reply = await api(
        gateway, "POST", "/v1/webhooks", {"url": url, "events": ["run.failed"]}
    )
    assert status == 400
    assert kind in reply["error"]["message"]
    assert reply["error"]["code"] == "invalid_webhook_url"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"events": ["run.completed"]}, "missing field 'url'"),
        ({"url": "https://93.184.216.34/h"}, "missing field 'events'"),
        ({"url": "https://93.184.216.34/h", "events": []}, "non-empty list"),
        (
            {"url": "https://93.184.216.34/h", "events": ["run.done"]},
            "unknown event type 'run.done'",
        ),
        ({"url": "ftp://example.com/h", "events": ["run.failed"]}, "http or https"),
        ({"url": "not a url", "events": ["run.failed"]}, "http or https"),
        ({"url": "http:///nohost", "events": ["run.failed"]}, "has no host"),
        ({"url": 7, "events": ["run.failed"]}, "non-empty string"),
        (
            {"url": "https://93.184.216.34/h", "events": ["run.failed"], "filter": {"team": "x"}},
            "unknown field 'team'",
        ),
        (
            {
                "url": "https://93.184.216.34/h",
                "events": ["run.failed"],
                "filter": {"session": "a", "user": "b"},
            },
            "not both",
        ),
        (
            {"url": "https://93.184.216.34/h", "events": ["run.failed"], "filter": {"user": "a.b"}},
            "filter user id",
        ),
        (
            {"url": "https://93.184.216.34/h", "events": ["run.failed"], "secret": "hunter2"},
            "whsec_",
        ),
        (
            {"url": "https://93.184.216.34/h", "events": ["run.failed"], "colour": 1},
            "unknown field",
        ),
        ([1, 2], "must be a JSON object"),
    ],
)
async def test_malformed_subscriptions_get_400(
    admin_gateway: Gateway, body: object, message: str
) -> None:
    """Malformed subscription requests get a 400 with a precise message."""
    status, reply = await api(admin_gateway, "POST", "/v1/webhooks", body)
    assert status == 400, reply
    assert message in reply["error"]["message"]


async def test_not_json_gets_400(admin_gateway: Gateway) -> None:
    """A body that is not JSON gets a 400."""
    status, reply = await api(admin_gateway, "POST", "/v1/webhooks", raw=b"{nope")
    assert status == 400 and "not valid JSON" in reply["error"]["message"]


async def test_non_admin_tokens_forbidden(admin_gateway: Gateway) -> None:
    """A user or agent token gets 403 forbidden on every webhook route; no token gets 401."""
    for role in ("user", "agent"):
        headers = {"Authorization": f"Bearer {token(role=role)}"}
        for method, path in (
            ("GET", "/v1/webhooks"),
            ("POST", "/v1/webhooks"),
            ("GET", "/v1/webhooks/wh_x"),
            ("DELETE", "/v1/webhooks/wh_x"),
            ("GET", "/v1/webhooks/dead"),
            ("POST", "/v1/webhooks/dead/msg_x/replay"),
        ):
            status, reply = await api(admin_gateway, method, path, {}, headers=headers)
            assert status == 403 and reply["error"]["code"] == "forbidden", (method, path)
    status, _ = await api(admin_gateway, "GET", "/v1/webhooks", headers={})
    assert status == 401


async def test_subscription_crud_survives_gateway_restart(
    admin_gateway: Gateway, own_nats: EmbeddedNats
) -> None:
    """Create, get, list and delete; the secret is shown once; subscriptions are stored in
    JetStream, so another gateway sees them."""
    created = await subscribe(admin_gateway, "http://127.0.0.1:1/x", filter={"user": "alice"})
    assert created["secret"].startswith("whsec_")
    assert created["filter"] == {"user": "alice"}
    other = Gateway(gateway_settings(own_nats, webhook_policy=LOOPBACK))
    await other.start()
    try:
        status, got = await api(other, "GET", f"/v1/webhooks/{created['id']}")
        assert status == 200 and "secret" not in got and got["url"] == "http://127.0.0.1:1/x"
        _, listed = await api(other, "GET", "/v1/webhooks")
        assert [w["id"] for w in listed["webhooks"]] == [created["id"]]
        status, _ = await api(other, "DELETE", f"/v1/webhooks/{created['id']}")
        assert status == 200
        status, _ = await api(other, "GET", f"/v1/webhooks/{created['id']}")
        assert status == 404
        status, _ = await api(other, "DELETE", f"/v1/webhooks/{created['id']}")
        assert status == 404
    finally:
        await other.stop()


async def test_given_secret_is_used(admin_gateway: Gateway) -> None:
    """A caller-provided whsec_ secret is stored and echoed once."""
    secret = webhooks.new_secret()
    reply = await subscribe(admin_gateway, "http://127.0.0.1:1/x", secret=secret)
    assert reply["secret"] == secret and reply["filter"] == {}


async def test_cli_webhooks_commands(admin_gateway: Gateway) -> None:
    """`tether webhooks add|list|rm|dead` talk to the admin API."""
    base = [sys.executable, "-m", "shared.cli", "webhooks"]
    common = ["--gateway", f"http://127.0.0.1:{admin_gateway.port}"]
    common += ["--token", token(role="admin")]

    async def cli(*args: str) -> tuple[int, str]:
        process = await asyncio.create_subprocess_exec(
            *base, *args, *common, cwd=ROOT, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await process.communicate()
        return int(process.returncode or 0), out.decode()

    code, out = await cli("add", "http://127.0.0.1:1/x", "--events", "run.failed", "--user", "al")
    assert code == 0, out
    created = orjson.loads(out)
    assert created["events"] == ["run.failed"] and created["secret"].startswith("whsec_")
    code, out = await cli("list")
    assert code == 0 and created["id"] in out and "whsec_" not in out
    code, out = await cli("dead")
    assert code == 0 and orjson.loads(out) == {"dead": []}
    code, _ = await cli("rm", created["id"])
    assert code == 0
    code, _ = await cli("rm", created["id"])
    assert code == 1


def test_signature_matches_standard_webhooks() -> None:
    """Our signing agrees with the standardwebhooks reference implementation."""
    secret = webhooks.new_secret()
    key = webhooks.Subscription("wh_1", "https://x", Secret(secret), ()).key_bytes()
    body = b'{"type":"run.completed"}'
    now = int(time.time())
    headers = signing.headers(key, "msg_abc", now, body)
    Webhook(secret).verify(body, headers)
    assert Webhook(secret).sign("msg_abc", _dt(now), body.decode()) == headers["webhook-signature"]


def _dt(ts: int) -> Any:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, tz=UTC)


def test_backoff_grows_and_address_kinds() -> None:
    """Backoff delays always grow; address kinds are classified; the allow-list parses."""
    delays = [backoff(n, 1.0, 3600.0) for n in range(1, 9)]
    assert all(a < b for a, b in zip(delays, delays[1:], strict=False))
    assert 1.0 <= delays[0] <= 1.25
    import ipaddress

    assert kind_of(ipaddress.ip_address("8.8.8.8")) is None
    assert kind_of(ipaddress.ip_address("192.168.1.1")) == "private"
    assert kind_of(ipaddress.ip_address("::ffff:127.0.0.1")) == "loopback"
    assert kind_of(ipaddress.ip_address("224.0.0.1")) == "multicast"
    assert kind_of(ipaddress.ip_address("fe80::1")) == "link_local"
    assert AddressPolicy.from_env(Env({"TETHER_WEBHOOK_ALLOW_PRIVATE": "true"})).allowed == set(
        ("private", "loopback", "link_local", "multicast", "reserved", "unspecified")
    )
    with pytest.raises(ConfigError, match="unknown kind 'lan'"):
        AddressPolicy.from_env(Env({"TETHER_WEBHOOK_ALLOW_PRIVATE": "loopback,lan"}))


def test_secret_never_in_repr() -> None:
    """Subscriptions and settings never show the signing secret in a repr."""
    secret = webhooks.new_secret()
    sub = webhooks.Subscription("wh_1", "https://x", Secret(secret), ("run.failed",))
    assert secret not in repr(sub) and secret not in str(sub.public())
    assert subjects.cursor_key("s1", "alice") == "s1.alice"


async def test_read_position_is_throttled_and_monotonic(
    admin_gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cursor writes are throttled per connection, never move back, and flush on close."""
    from services.gateway.cursors import CursorWriter

    kv = admin_gateway.cursors
    writes: list[int] = []
    original = cursors.advance

    async def counting(
        kv_: Any, session: str, participant: str, seq: int, *, revision: int | None = None
    ) -> tuple[int, int | None]:
        writes.append(seq)
        return await original(kv_, session, participant, seq, revision=revision)

    writer = CursorWriter(kv, "s-throttle", "alice", interval=0.2)
    monkeypatch.setattr(cursors, "advance", counting)
    for seq in range(1, 501):
        writer.note(seq)
        await asyncio.sleep(0.001)
    await writer.close()
    monkeypatch.undo()
    assert writes[-1] == 500 and len(writes) <= 8
    assert await cursors.read(kv, "s-throttle", "alice") == 500
    assert (await cursors.advance(kv, "s-throttle", "alice", 120))[0] == 500
    # A stale revision hint is safe: the update fails, the read shows a higher value.
    assert (await cursors.advance(kv, "s-throttle", "alice", 130, revision=1))[0] == 500
    assert await cursors.read(kv, "s-throttle", "alice") == 500


async def test_connect_time_resolver_refuses_private_answers() -> None:
    """At connect time, a host whose DNS answer is private is refused (DNS rebinding)."""
    from shared.urlsafety import AddressPolicy, SafeResolver

    strict = SafeResolver(AddressPolicy(allowed=frozenset()))
    with pytest.raises(OSError, match="loopback"):
        await strict.resolve("localhost", 80)
    await strict.close()
    lenient = SafeResolver(AddressPolicy(allowed=frozenset({"loopback"})))
    assert (await lenient.resolve("localhost", 80))[0]["host"] in ("127.0.0.1", "::1")
    await lenient.close()


async def test_approval_request_reaches_an_offline_user(
    admin_gateway: Gateway, bot: agent.Client, receiver: Receiver, notifier: Start
) -> None:
    """An approval.requested event on a run's subject is pushed to an offline user."""
    sid = new_id("s-")
    await subscribe(
        admin_gateway, receiver.url, events=["approval.requested"], filter={"user": "alice"}
    )
    await notifier()
    event = {
        "v": 1,
        "type": "approval.requested",
        "session": sid,
        "run": "r1",
        "user": "alice",
        "approval": "a1",
        "prompt": "Send the refund?",
        "options": ["yes", "no"],
    }
    await bot.publish(
        subjects.run_events(sid, "r1"), event, wire.msg_id(sid, subjects.RUN, "r1", "approval-a1")
    )
    await wait_for(lambda: len(receiver.requests) == 1, what="approval webhook")
    payload = receiver.requests[0].payload
    assert (payload["type"], payload["user"], payload["run"]) == (
        "approval.requested",
        "alice",
        "r1",
    )


async def test_sdk_approval_is_pushed_and_answered(
    admin_gateway: Gateway, bot: agent.Client, receiver: Receiver, notifier: Start
) -> None:
    """run.request_approval reaches an offline user by webhook; their answer resumes the run."""
    sid = new_id("s-")
    await subscribe(
        admin_gateway, receiver.url, events=["approval.requested"], filter={"user": "alice"}
    )
    await notifier()

    async def ask() -> str | None:
        async with bot.session(sid).run("run-p", user="alice") as run:
            decision = await run.request_approval("Send the refund?", ["yes", "no"], timeout=60)
        return decision.option

    task = asyncio.create_task(ask())
    await wait_for(lambda: len(receiver.requests) == 1, what="approval webhook")
    payload = receiver.requests[0].payload
    assert payload == {
        **payload,
        "type": "approval.requested",
        "user": "alice",
        "run": "run-p",
        "approval": "run-p-a1",
        "prompt": "Send the refund?",
        "options": ["yes", "no"],
    }
    assert isinstance(payload["expires_at"], int)
    async with aiohttp.ClientSession() as http:
        response = await http.post(
            f"http://127.0.0.1:{admin_gateway.port}/v1/sessions/{sid}/control",
            json={
                "action": "approve",
                "approval": payload["approval"],
                "run": "run-p",
                "option": payload["options"][0],
            },
            headers={"Authorization": f"Bearer {token([sid], subject='alice')}"},
        )
        assert response.status == 201
    assert await asyncio.wait_for(task, 10) == "yes"


async def test_subscriptions_read_incrementally_yet_new_ones_apply_at_once(
    admin_gateway: Gateway, bot: agent.Client, receiver: Receiver, notifier: Start
) -> None:
    """The notifier reads only what changed in the subscriptions bucket for each run event
    (not every subscription), and a subscription stored just before a run completes gets
    that run's webhook."""
    for n in range(20):  # subscriptions of other sessions: read once, then never again
        await subscribe(admin_gateway, receiver.url, filter={"session": f"other-{n}"})
    requests: list[dict[str, Any]] = []

    async def record(msg: Any) -> None:
        requests.append(orjson.loads(msg.data))

    watch = await bot.nc.subscribe(f"$JS.API.DIRECT.GET.KV_{subjects.WEBHOOKS_BUCKET}", cb=record)
    await notifier()
    warm = new_id("s-")
    for _ in range(3):
        await finish_run(bot, warm)
    sid = new_id("s-")
    await subscribe(admin_gateway, receiver.url, filter={"session": sid})
    await finish_run(bot, sid)  # at once: the new subscription must already apply
    await wait_for(lambda: len(receiver.requests) == 1, what="the new subscription's webhook")
    await bot.nc.flush()
    await watch.unsubscribe()
    assert receiver.requests[0].payload["session"] == sid
    from_start = [r for r in requests if r.get("seq") == 1]
    assert len(requests) >= 4 and len(from_start) == 1, requests  # one full read, then changes


SEALER = Sealer.parse("bm90aWZpZXItc2VhbGluZy1rZXktMDEyMzQ1Njc4OWE=")
OTHER_SEALER = Sealer.parse("b3RoZXItc2VhbGluZy1rZXktMDEyMzQ1Njc4OWFiY2Q=")


async def test_signing_secrets_are_sealed_at_rest_and_still_sign(
    own_nats: EmbeddedNats, bot: agent.Client, receiver: Receiver, notifier: Start
) -> None:
    """With sealing keys the bucket holds no signing secret in the clear, and a notifier
    with the keys signs with the secret the gateway returned on create."""
    gw = Gateway(gateway_settings(own_nats, webhook_policy=LOOPBACK, webhook_sealer=SEALER))
    await gw.start()
    try:
        sid = new_id("s-")
        hook = await subscribe(gw, receiver.url, filter={"session": sid})
        raw = await kvread.read_all(bot.nc, subjects.WEBHOOKS_BUCKET)
        stored = raw[hook["id"]]
        assert hook["secret"].encode() not in stored and b"sealed:v1:" in stored
        await notifier(sealer=SEALER)
        await finish_run(bot, sid)
        await wait_for(lambda: len(receiver.requests) == 1, what="one delivery")
        got = receiver.requests[0]
        Webhook(hook["secret"]).verify(got.body, got.headers)
    finally:
        await gw.stop()


async def test_a_secret_the_notifier_cannot_open_is_dead_lettered_not_sent(
    own_nats: EmbeddedNats, bot: agent.Client, receiver: Receiver, notifier: Start
) -> None:
    """A notifier without the sealing key sends nothing unsigned: the job becomes a dead
    letter naming the variable at once (no retries), which a notifier with the key replays."""
    gw = Gateway(gateway_settings(own_nats, webhook_policy=LOOPBACK, webhook_sealer=SEALER))
    await gw.start()
    try:
        sid = new_id("s-")
        await subscribe(gw, receiver.url, filter={"session": sid})
        wrong = await notifier(sealer=OTHER_SEALER)
        await finish_run(bot, sid)
        dead = await dead_letters(gw)
        assert receiver.requests == []
        assert dead[0]["attempts"] == 1 and "TETHER_WEBHOOK_SEALING_KEYS" in dead[0]["error"]
        await wrong.stop()
        await notifier(sealer=SEALER)
        status, _ = await api(gw, "POST", f"/v1/webhooks/dead/{dead[0]['webhook_id']}/replay")
        assert status == 200
        await wait_for(lambda: len(receiver.requests) == 1, what="the replayed delivery")
    finally:
        await gw.stop()


def test_sealer_keys_rotation_and_errors() -> None:
    """Sealed secrets open with any configured key (rotation), not for another record nor
    with another key; malformed keys are refused naming their position; repr shows no key."""
    assert SEALER is not None and OTHER_SEALER is not None
    sealed = SEALER.seal("whsec_abc", "wh_1")
    assert sealed.startswith("sealed:v1:") and "whsec_abc" not in sealed
    assert SEALER.open(sealed, "wh_1") == "whsec_abc"
    with pytest.raises(SealedSecretError):
        SEALER.open(sealed, "wh_2")  # bound to its record
    with pytest.raises(SealedSecretError):
        OTHER_SEALER.open(sealed, "wh_1")
    rotated = Sealer.parse(
        "b3RoZXItc2VhbGluZy1rZXktMDEyMzQ1Njc4OWFiY2Q=, bm90aWZpZXItc2VhbGluZy1rZXktMDEyMzQ1Njc4OWE="
    )
    assert rotated is not None and rotated.open(sealed, "wh_1") == "whsec_abc"
    assert OTHER_SEALER.open(rotated.seal("s", "x"), "x") == "s"  # the first key seals
    assert Sealer.parse("") is None
    with pytest.raises(ConfigError, match="key 2 is not base64"):
        Sealer.parse("bm90aWZpZXItc2VhbGluZy1rZXktMDEyMzQ1Njc4OWE=,not base64!")
    with pytest.raises(ConfigError, match="key 1 decodes to 5 bytes"):
        Sealer.parse("aGVsbG8=")
    assert "bm90" not in repr(SEALER) and "Sealer(keys=" in repr(SEALER)
    settings = NotifierSettings.from_env(
        Env({"TETHER_WEBHOOK_SEALING_KEYS": "bm90aWZpZXItc2VhbGluZy1rZXktMDEyMzQ1Njc4OWE="})
    )
    assert settings.sealer is not None and "bm90" not in repr(settings)

"""Operations endpoints of every service: /healthz (alive), /readyz (NATS, streams and
buckets), /metrics (Prometheus, one registry per instance); their settings."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.gateway.app import Gateway
from services.gateway.metrics import frame_type_out
from services.notifier.service import NotifierService
from services.notifier.settings import NotifierSettings
from shared import agent
from shared.errors import ConfigError
from shared.ids import new_id
from shared.ops import OpsSettings
from shared.server import EmbeddedNats
from shared.settings import Env, LogSettings
from tests.conftest import ServiceProcess, gateway_settings, token, wait_for
from tests.device import Device
from tests.test_notifier import LOOPBACK, Receiver, finish_run, subscribe

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(base: str) -> Samples:
    """Every sample of ``base``/metrics, by (name, sorted labels)."""
    async with aiohttp.ClientSession() as http, http.get(f"{base}/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def get(base: str, path: str) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as http, http.get(f"{base}{path}") as resp:
        return resp.status, await resp.json()


def base(port: int) -> str:
    return f"http://127.0.0.1:{port}"


async def test_gateway_health_readiness_and_metrics(gateway: Gateway) -> None:
    """The gateway's /healthz keeps its JSON, /readyz is 200, /metrics counts connections,
    frames by type and replay sizes."""
    url = base(gateway.port)
    status, health = await get(url, "/healthz")
    assert status == 200 and health["status"] == "ok" and health["nats"] is True
    assert {"connections", "sessions", "devices", "counters", "draining"} <= set(health)
    assert await get(url, "/readyz") == (200, {"status": "ready", "service": "gateway"})
    sid = new_id("s-")
    device = Device(sid, token([sid]))
    await device.connect(url)
    await wait_for(lambda: device.view.live, what="live")
    await device.send({"type": "ping", "id": "p1"})
    await device.send({"type": "send", "id": "m1", "text": "hello"})
    await wait_for(lambda: len(device.view.acks) == 1 and "m1" in device.view.texts, what="ack")
    samples = await scrape(url)
    assert samples[("tether_gateway_connections", ())] == 1
    assert samples[("tether_gateway_frames_in_total", (("type", "ping"),))] == 1
    assert samples[("tether_gateway_frames_in_total", (("type", "send"),))] == 1
    assert samples[("tether_gateway_frames_out_total", (("type", "hello"),))] == 1
    assert samples[("tether_gateway_frames_out_total", (("type", "pong"),))] == 1
    assert samples[("tether_gateway_frames_out_total", (("type", "event"),))] >= 1
    assert samples[("tether_gateway_replay_events_count", ())] == 1
    assert ("tether_gateway_replay_bytes_sum", ()) in samples
    assert samples[("tether_nats_reconnects_total", ())] == 0
    assert samples[("tether_nats_connected", ())] == 1
    assert samples[("tether_draining", ())] == 0
    await device.close()
    await wait_for(lambda: not gateway.connections, what="connection gone")
    assert (await scrape(url))[("tether_gateway_connections", ())] == 0


async def test_readiness_follows_nats(own_nats: EmbeddedNats) -> None:
    """NATS down: /readyz 503 with a reason, /healthz still 200 (alive, degraded); back up:
    ready again and the reconnect is counted."""
    gw = Gateway(gateway_settings(own_nats))
    await gw.start()
    url = base(gw.port)
    try:
        own_nats.stop()
        await wait_for(lambda: not gw.nc.is_connected, what="disconnect")
        status, body = await get(url, "/readyz")
        assert status == 503
        assert body == {
            "status": "not_ready",
            "service": "gateway",
            "reason": "not connected to NATS",
        }
        status, health = await get(url, "/healthz")
        assert (status, health["status"], health["nats"]) == (200, "degraded", False)
        assert (await scrape(url))[("tether_nats_connected", ())] == 0
        own_nats.start()
        await wait_for(lambda: gw.nc.is_connected, 20, what="reconnect")
        for _ in range(100):
            if (await get(url, "/readyz"))[0] == 200:
                break
            await asyncio.sleep(0.1)
        assert (await get(url, "/readyz"))[0] == 200
        assert (await scrape(url))[("tether_nats_reconnects_total", ())] >= 1
    finally:
        await gw.stop()


async def test_presence_service_ops_and_event_metrics(
    presence_process: Callable[..., Awaitable[ServiceProcess]], gateway: Gateway
) -> None:
    """The presence service serves the ops endpoints on its own port (from its ready line)
    and counts joins and leaves."""
    service = await presence_process()
    assert service.port > 0
    url = service.url
    assert (await get(url, "/healthz"))[0] == 200
    assert await get(url, "/readyz") == (200, {"status": "ready", "service": "presence"})
    before = await scrape(url)
    sid = new_id("s-")
    device = Device(sid, token([sid]))
    await device.connect(base(gateway.port))
    await wait_for(lambda: device.view.live, what="live")
    await device.close()
    closed = ("tether_presence_leaves_total", (("reason", "closed"),))
    joins = ("tether_presence_joins_total", ())

    async def counted() -> bool:
        after = await scrape(url)
        return after[joins] > before[joins] and after.get(closed, 0) > before.get(closed, 0)

    for _ in range(100):
        if await counted():
            break
        await asyncio.sleep(0.05)
    assert await counted()
    samples = await scrape(url)
    assert ("tether_presence_crash_removals_total", ()) in samples
    assert samples[("tether_nats_connected", ())] == 1


@pytest.fixture
async def notifier_service(own_nats: EmbeddedNats) -> AsyncIterator[NotifierService]:
    """An in-process notifier with its ops server on a random port."""
    settings = NotifierSettings(
        nats=own_nats.settings("test-notifier"),
        grace_seconds=0.0,
        backoff_seconds=0.05,
        max_attempts=2,
        timeout_seconds=2.0,
        ack_wait_seconds=5.0,
        policy=LOOPBACK,
    )
    service = NotifierService(settings)
    await service.start()
    yield service
    await service.stop()


async def test_notifier_webhook_metrics(own_nats: EmbeddedNats) -> None:
    """The notifier counts attempts, failures and dead letters and times deliveries."""
    receiver = Receiver(statuses=[500, 500])  # the first job fails twice: a dead letter
    await receiver.start()
    gw = Gateway(gateway_settings(own_nats, webhook_policy=LOOPBACK))
    await gw.start()
    bot = await agent.connect(own_nats.settings("test-agent"), log_settings=LogSettings())
    settings = NotifierSettings(
        nats=own_nats.settings("test-notifier"),
        grace_seconds=0.0,
        backoff_seconds=0.05,
        max_attempts=2,
        timeout_seconds=2.0,
        ack_wait_seconds=5.0,
        policy=LOOPBACK,
    )
    service = NotifierService(settings)
    await service.start()
    try:
        url = base(service.ops_server.port)
        assert await get(url, "/readyz") == (200, {"status": "ready", "service": "notifier"})
        sid = new_id("s-")
        await subscribe(gw, receiver.url, filter={"session": sid})
        await finish_run(bot, sid)
        await wait_for(lambda: len(receiver.requests) == 2, what="two failed attempts")
        await finish_run(bot, sid)
        await wait_for(lambda: len(receiver.requests) == 3, what="a delivery")

        attempts, dead = (
            ("tether_webhook_attempts_total", ()),
            ("tether_webhook_dead_letters_total", ()),
        )
        for _ in range(100):
            got = await scrape(url)
            if got[attempts] == 3 and got[dead] == 1:
                break
            await asyncio.sleep(0.05)
        assert (got[attempts], got[dead]) == (3, 1)
        assert got[("tether_webhook_failures_total", ())] == 2
        assert got[("tether_webhook_delivery_latency_seconds_count", ())] == 1
        assert got[("tether_webhook_request_seconds_count", ())] == 3
    finally:
        await service.stop()
        await bot.close()
        await gw.stop()
        await receiver.stop()


async def test_notifier_readiness_during_drain(notifier_service: NotifierService) -> None:
    """Once a stop begins, /readyz answers 503 draining (a proxy stops routing)."""
    url = base(notifier_service.ops_server.port)
    assert (await get(url, "/readyz"))[0] == 200
    notifier_service.ops.start_draining()
    assert await get(url, "/readyz") == (
        503,
        {"status": "draining", "service": "notifier", "reason": "draining"},
    )


def test_ops_settings_from_env() -> None:
    """TETHER_<SERVICE>_HTTP_HOST / _PORT: defaults, values and precise errors."""
    assert OpsSettings.from_env("presence", Env({})) == OpsSettings("127.0.0.1", 0)
    env = Env({"TETHER_DEMO_AGENT_HTTP_HOST": "0.0.0.0", "TETHER_DEMO_AGENT_HTTP_PORT": "8083"})
    assert OpsSettings.from_env("demo-agent", env) == OpsSettings("0.0.0.0", 8083)
    with pytest.raises(ConfigError, match="TETHER_NOTIFIER_HTTP_PORT has value 'x'"):
        OpsSettings.from_env("notifier", Env({"TETHER_NOTIFIER_HTTP_PORT": "x"}))
    with pytest.raises(ConfigError, match="TETHER_PRESENCE_HTTP_PORT has value 70000"):
        OpsSettings.from_env("presence", Env({"TETHER_PRESENCE_HTTP_PORT": "70000"}))


def test_frame_type_of_outgoing_frames() -> None:
    """Outgoing frames are labelled by their leading type key; anything else is other."""
    assert frame_type_out(b'{"type":"event","seq":1,"event":{}}') == "event"
    assert frame_type_out(b'{"type":"caught_up","seq":3}') == "caught_up"
    assert frame_type_out(b'{"type":"surprise"}') == "other"
    assert frame_type_out(b"[]") == "other"

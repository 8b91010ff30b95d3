"""Graceful drain on SIGTERM: /readyz turns 503 first, WebSockets close 1012 after their
queues are flushed, and devices resume on another gateway with nothing lost or repeated."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

import aiohttp
import orjson

from services.gateway.app import Gateway
from shared import agent
from shared.ids import new_id
from shared.server import EmbeddedNats
from shared.streaming import Message
from tests.conftest import GatewayProcess, ServiceProcess, gateway_settings, token, wait_for
from tests.device import Device

WORDS = [f"tok{i} " for i in range(300)]
SERVICE_RESTART = 1012


async def stream_words(message: Message, words: list[str], delay: float = 0.005) -> None:
    for word in words:
        await message.append(word)
        await asyncio.sleep(delay)


async def readyz(http: aiohttp.ClientSession, base: str) -> tuple[int, dict[str, object]]:
    async with http.get(f"{base}/readyz") as resp:
        return resp.status, await resp.json()


async def history(base: str, session: str) -> Device:
    """A fresh device's full replay: what the log stores for the session, compacted."""
    fresh = Device(session, token([session]))
    await fresh.connect(base, since=0)
    await wait_for(lambda: fresh.view.live, what="fresh device live")
    await fresh.close()
    return fresh


async def test_sigterm_moves_devices_to_another_gateway_without_loss(
    gateway_process: Callable[..., GatewayProcess], client: agent.Client
) -> None:
    """SIGTERM gateway A mid-answer: /readyz 503 while its devices are still served, then
    close 1012; the devices resume on B with since: same text as the stored history."""
    a = gateway_process(TETHER_DRAIN_DELAY_SECONDS="1")
    b = gateway_process()
    sid = new_id("s-")
    devices = [Device(sid, token([sid])) for _ in range(3)]
    for device in devices:
        await device.connect(a.url)
    await wait_for(lambda: all(d.view.live for d in devices), what="devices live on A")
    async with aiohttp.ClientSession() as http:
        assert (await readyz(http, a.url))[0] == 200
        async with client.session(sid).run("r") as run:
            message = run.message("m")
            streaming = asyncio.create_task(stream_words(message, WORDS))
            await wait_for(
                lambda: all(len(d.view.texts.get("m", "")) > 100 for d in devices),
                what="text on A",
            )
            a.process.send_signal(signal.SIGTERM)
            # Readiness turns first, while the devices are still connected and served.
            status, body = 0, dict[str, object]()
            for _ in range(50):
                status, body = await readyz(http, a.url)
                if status == 503:
                    break
                await asyncio.sleep(0.01)
            assert (status, body.get("status")) == (503, "draining")
            assert all(d.connected for d in devices)
            assert (await readyz(http, b.url))[0] == 200
            for device in devices:
                assert await device.wait_closed(15) == SERVICE_RESTART
                await device.disconnect()
                await device.connect(b.url)  # since = the last sequence it received
            await streaming
            await message.complete()
        assert await asyncio.to_thread(a.process.wait, 15) == 0
    stored = await history(b.url, sid)
    assert stored.view.texts == {"m": "".join(WORDS)}
    assert stored.view.others == [("run.started", "r"), ("run.completed", "r")]
    for device in devices:
        await wait_for(
            lambda d=device: ("run.completed", "r") in d.view.others,  # type: ignore[misc]
            what="run end on B",
        )
        assert device.view.hellos[-1]["recovered"] is True
        assert device.view.texts == stored.view.texts
        assert device.view.others == stored.view.others
        await device.close()


async def test_drain_refuses_new_connections_after_the_delay(
    gateway_process: Callable[..., GatewayProcess],
) -> None:
    """After SIGTERM and the drain delay the listener is closed: new connections are refused
    (a proxy retries them on another gateway), and the process exits 0."""
    a = gateway_process(TETHER_DRAIN_DELAY_SECONDS="0.3")
    a.process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(a.process.wait, 15) == 0
    async with aiohttp.ClientSession() as http:
        try:
            async with http.get(f"{a.url}/healthz") as resp:
                refused = False
                assert resp.status != 200
        except aiohttp.ClientConnectionError:
            refused = True
    assert refused


async def test_presence_service_drains_on_sigterm(
    presence_process: Callable[..., Awaitable[ServiceProcess]],
) -> None:
    """The presence service answers /readyz 200, then stops cleanly (exit 0) on SIGTERM."""
    service = await presence_process()
    async with aiohttp.ClientSession() as http:
        assert (await readyz(http, service.url))[0] == 200
    service.process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(service.process.wait, 15) == 0


async def test_drain_sends_what_is_queued_before_closing(nats_server: EmbeddedNats) -> None:
    """Frames already queued for a WebSocket when the drain starts all reach the client,
    then the close 1012 (nothing queued is dropped by the restart)."""
    gw = Gateway(gateway_settings(nats_server))
    await gw.start()
    sid = new_id("s-")
    device = Device(sid, token([sid]))
    try:
        await device.connect(f"http://127.0.0.1:{gw.port}")
        await wait_for(lambda: device.view.live, what="live")
        before = device.view.frames
        (connection,) = gw.connections
        # 240 frames of 30 KB: far more than the socket takes at once, within the send
        # queue's bound (8 MiB); without the flush the close cuts them short.
        pad = "x" * 30_000
        for i in range(240):
            connection.device.push(orjson.dumps({"type": "pong", "id": f"p{i}", "pad": pad}))
    finally:
        await gw.stop()
    assert await device.wait_closed() == SERVICE_RESTART
    assert device.view.frames - before == 240
    await device.close()

"""A device that stops reading, among 100 that stream (gateway as a subprocess).

Layout: 100 sessions, one streaming device each (its own token subject); an agent
(``shared.agent``) streams timestamp tokens into every session. The slow device joins
session 0 and stops reading; the agent also posts large messages into session 0 so the
slow device's backlog grows fast. The gateway closes it with 4008 once its send queue
holds ``TETHER_SEND_QUEUE_BYTES``; it then reads what it had, reconnects with ``since``
and ends with the complete history. Bounds asserted are loose (shared CI machines).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson

from benchmarks._common import rss_kib
from shared import agent
from shared.ids import new_id
from shared.settings import LogSettings
from tests.conftest import GatewayProcess, token, wait_for
from tests.device import Device, View

STREAMERS = 100
RATE = 4.0  # tokens/s per session
BULK = 2000  # messages of BULK_BYTES into the slow device's session (~128 MB)
BULK_BYTES = 64 * 1024
QUEUE_BYTES = 4 * 1024 * 1024
RSS_CEILING_KIB = 64 * 1024  # loose: half of what the slow device is sent


class TimedDevice(Device):
    """A device that also records the latency of each timestamp token it receives."""

    def __init__(self, session: str, tok: str) -> None:
        super().__init__(session, tok)
        self.latencies_ms: list[float] = []

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            now = time.time_ns()
            frame = orjson.loads(msg.data)
            self.view.apply(frame)
            event = frame.get("event") or {}
            if event.get("type") == "message.delta" and self.view.live:
                self.latencies_ms.append((now - int(event["text"].strip())) / 1e6)
        self.close_code = ws.close_code


async def healthz(http: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    async with http.get(f"{base}/healthz") as resp:
        body: dict[str, Any] = await resp.json()
    return body


async def test_stalled_device_is_closed_4008_and_recovers_with_since(
    gateway_process: Callable[..., GatewayProcess], client: agent.Client
) -> None:
    """One device stops reading: others stay fast, gateway memory stays bounded, it recovers."""
    gateway = gateway_process(TETHER_SEND_QUEUE_BYTES=str(QUEUE_BYTES))
    base = gateway.url
    tag = new_id("slow")
    sids = [f"{tag}-{i}" for i in range(STREAMERS)]
    streamers = [TimedDevice(sid, token([sid], subject=f"reader{i}")) for i, sid in enumerate(sids)]
    runs = [agent.Run(client.session(sid), "run-1") for sid in sids]
    messages = []
    for run in runs:
        await run.start()
        message = run.message("tokens", coalesce_ms=0)
        await message.start()
        messages.append(message)
    for device in streamers:
        await device.connect(base)
    await wait_for(lambda: all(d.view.live for d in streamers), 60, "streamers caught up")

    slow_token = token([sids[0]], subject="slowpoke")
    http = aiohttp.ClientSession()
    slow_view = View()
    ws = await http.ws_connect(
        f"{base.replace('http', 'ws', 1)}/v1/sessions/{sids[0]}/ws",
        params={"token": slow_token, "since": "0"},
        max_msg_size=0,
        autoclose=False,  # report the server's close frame as it came (no reply race)
    )
    while not slow_view.live:  # read up to caught_up, then stop reading
        slow_view.apply(orjson.loads((await asyncio.wait_for(ws.receive(), 10)).data))
    await asyncio.sleep(0.5)
    baseline = rss_kib(gateway.process.pid)
    peak = baseline
    stop = asyncio.Event()

    async def stream(message: agent.Message, phase: float) -> None:
        await asyncio.sleep(phase)
        while not stop.is_set():
            await message.append(f"{time.time_ns()} ")
            await asyncio.sleep(1 / RATE)

    tasks = [asyncio.create_task(stream(m, i / (RATE * STREAMERS))) for i, m in enumerate(messages)]
    bulk = client.session(sids[0])
    slow_closed = asyncio.Event()

    async def post_bulk() -> None:
        for i in range(BULK):
            if slow_closed.is_set():
                return
            await bulk.post("b" * BULK_BYTES, message_id=f"bulk-{i}")

    async def watch() -> None:
        nonlocal peak
        while not slow_closed.is_set():
            peak = max(peak, rss_kib(gateway.process.pid))
            if (await healthz(http, base))["counters"].get("slow_clients", 0) >= 1:
                slow_closed.set()
            await asyncio.sleep(0.05)

    poster, watcher = asyncio.create_task(post_bulk()), asyncio.create_task(watch())
    try:
        await asyncio.wait_for(slow_closed.wait(), 60)
        # It reads again at once (within the gateway's 5 s close timeout): what was queued,
        # then the 4008 close.
        while True:
            msg = await asyncio.wait_for(ws.receive(), 30)
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            slow_view.apply(orjson.loads(msg.data))
            peak = max(peak, rss_kib(gateway.process.pid))
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 4008)
        await asyncio.sleep(1.0)  # the streamers keep going meanwhile
    finally:
        stop.set()
        slow_closed.set()
        await asyncio.gather(*tasks, poster, watcher)
        await ws.close()
        await http.close()
    assert peak - baseline < RSS_CEILING_KIB, f"gateway RSS grew {(peak - baseline) // 1024} MiB"
    for message in messages:
        await message.complete()
    for run in runs:
        await run.complete()

    # Recover: reconnect with since = the position reached, finish with the full history.
    recovered = Device(sids[0], slow_token)
    recovered.view = slow_view
    await recovered.connect(base, since=slow_view.position)
    fresh = Device(sids[0], token([sids[0]], subject="auditor"))
    await fresh.connect(base)
    for device in (recovered, fresh, *streamers):
        await wait_for(
            lambda d=device: ("run.completed", "run-1") in d.view.others,  # type: ignore[misc]
            30,
            "run end",
        )
    assert recovered.view.hellos[-1]["recovered"] is True
    assert recovered.view.texts == fresh.view.texts
    assert len([m for m in fresh.view.texts if m.startswith("bulk-")]) >= 1
    latencies = sorted(ms for d in streamers for ms in d.latencies_ms)
    assert latencies, "the streamers received live tokens"
    assert latencies[len(latencies) // 2] < 1000, "median latency of the others stays bounded"
    assert latencies[-1] < 10_000, "no streamer stalled behind the slow device"
    assert all(d.close_code is None and d.connected for d in streamers)
    for device in (recovered, fresh, *streamers):
        await device.close()


# ---- the bounds themselves (no network) ------------------------------------------------


def stalled_device(queue_frames: int = 1000, queue_bytes: int = 64 * 1024) -> tuple[Any, list[int]]:
    """A device whose socket never takes a frame; returns it and its overflow calls."""
    from services.gateway.device import Device as GatewayDevice

    overflows: list[int] = []

    async def never(frame: bytes) -> None:
        await asyncio.Event().wait()

    device = GatewayDevice(
        "s",
        0,
        never,
        queue_frames=queue_frames,
        on_overflow=lambda d: overflows.append(d.delivered),
        queue_bytes=queue_bytes,
    )
    device.start()
    return device, overflows


async def test_send_queue_is_bounded_in_bytes() -> None:
    """Frames far below the frame bound overflow the byte bound: one overflow, then drops."""
    device, overflows = stalled_device()
    device.go_live(0)
    for seq in range(1, 40):
        device.offer(seq, b"x" * 4096)
    await asyncio.sleep(0)
    assert len(overflows) == 1 and device.overflowed
    assert device.queued_bytes <= 64 * 1024
    device.abort()


async def test_one_frame_over_the_byte_bound_still_passes() -> None:
    """A single frame larger than the byte bound is sent when nothing else is queued."""
    device, overflows = stalled_device(queue_bytes=64 * 1024)
    device.go_live(0)
    device.offer(1, b"y" * (200 * 1024))
    assert overflows == [] and device.queued_bytes == 200 * 1024
    device.offer(2, b"z")
    assert overflows == [1]
    device.abort()


async def test_replay_buffer_is_bounded_in_bytes() -> None:
    """Live frames held during a replay overflow by bytes, and the buffer is released."""
    device, overflows = stalled_device(queue_bytes=64 * 1024)
    for seq in range(1, 100):
        device.offer(seq, b"l" * 1024)
    assert len(overflows) == 1 and device.overflowed
    assert device._buffer == [] and device._buffer_bytes == 0
    device.abort()


async def test_paced_replay_gives_up_on_a_stalled_socket(monkeypatch: Any) -> None:
    """A replay waiting for a socket that takes nothing overflows after STALL_SECONDS."""
    from services.gateway import device as device_module

    monkeypatch.setattr(device_module, "STALL_SECONDS", 0.2)
    device, overflows = stalled_device(queue_frames=16, queue_bytes=1024 * 1024)
    for seq in range(1, 40):
        await asyncio.wait_for(device.replayed(seq, b"r"), 5)
        if device.stopped:
            break
    assert overflows and device.stopped
    device.abort()


async def test_resyncing_hub_holds_a_bounded_amount(monkeypatch: Any) -> None:
    """Live frames held during a resync past the byte bound are dropped for a re-read."""
    from services.gateway.hub import Hubs, SessionHub

    hubs = Hubs(None, LogSettings())  # type: ignore[arg-type]
    hubs.held_bytes_limit = 10_000
    hub = SessionHub(hubs, "s")
    hub._resyncing = True
    for seq in range(1, 30):
        hub.deliver(seq, b"h" * 1000)
    assert hub._held_overrun
    assert hub._held_bytes <= 10_000

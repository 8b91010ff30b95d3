"""A bounded flood on loopback against a gateway subprocess: it stays up, refuses what is
over its limits with the documented codes, and keeps serving a well-behaved device.

Fixed amounts: 500 WebSocket connection attempts by one token subject in 10 bursts of 50
(limit 50 per subject: the first 50 are held open, the other 450 refused), 200 oversized
frames (each on its own connection) and 100 oversized HTTP bodies, all while an agent
streams into the well-behaved device's session.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

import aiohttp
import orjson

from shared import agent
from shared.ids import new_id
from tests.conftest import GatewayProcess, token, wait_for
from tests.device import Device

ATTEMPTS, BURST, HELD = 500, 50, 50
OVERSIZED_FRAMES, OVERSIZED_BODIES = 200, 100
MAX_FRAME = 4096
TIMEOUT = 20.0


async def attempt(
    http: aiohttp.ClientSession, url: str, tok: str, held: list[aiohttp.ClientWebSocketResponse]
) -> str:
    """One connection attempt: 'accepted' (held open) or the refusal's code and close code."""
    ws = await http.ws_connect(url, params={"token": tok})
    msg = await asyncio.wait_for(ws.receive(), TIMEOUT)
    frame = orjson.loads(msg.data)
    if frame["type"] == "hello":
        held.append(ws)
        return "accepted"
    closing = await asyncio.wait_for(ws.receive(), TIMEOUT)
    await ws.close()
    return f"{frame['code']}/{closing.data}"


async def oversized(http: aiohttp.ClientSession, url: str, tok: str) -> str:
    # autoclose off: the close frame is reported as sent (the gateway may drop the socket
    # right after it, and aiohttp would then report 1006 for its own failed reply).
    ws = await http.ws_connect(url, params={"token": tok}, autoclose=False)
    await ws.send_str("z" * (MAX_FRAME + 1))
    while True:
        msg = await asyncio.wait_for(ws.receive(), TIMEOUT)
        if msg.type != aiohttp.WSMsgType.TEXT:
            await ws.close()
            return f"close/{msg.data}" if msg.type == aiohttp.WSMsgType.CLOSE else str(msg.type)


async def test_flood_is_refused_with_documented_codes_and_the_gateway_serves_on(
    gateway_process: Callable[..., GatewayProcess], client: agent.Client
) -> None:
    """500 connection attempts, 200 oversized frames, 100 oversized bodies: refused, served."""
    gateway = gateway_process(
        TETHER_MAX_CONNECTIONS_PER_SUBJECT=str(HELD), TETHER_MAX_FRAME_BYTES=str(MAX_FRAME)
    )
    base = gateway.url
    wsbase = base.replace("http", "ws", 1)
    good_sid, flood_sid = new_id("good-"), new_id("flood-")
    device = Device(good_sid, token([good_sid], subject="good"))
    await device.connect(base)
    run = agent.Run(client.session(good_sid), "run-g")
    await run.start()
    message = run.message("m", coalesce_ms=0)
    await message.start()
    sent: list[str] = []
    stop = asyncio.Event()

    async def stream() -> None:
        i = 0
        while not stop.is_set():
            sent.append(f"t{i} ")
            await message.append(sent[-1])
            i += 1
            await asyncio.sleep(0.02)

    streamer = asyncio.create_task(stream())
    held: list[aiohttp.ClientWebSocketResponse] = []
    outcomes: Counter[str] = Counter()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        flood_url = f"{wsbase}/v1/sessions/{flood_sid}/ws"
        flood_token = token([flood_sid], subject="flooder")
        for _ in range(ATTEMPTS // BURST):
            results = await asyncio.gather(
                *(attempt(http, flood_url, flood_token, held) for _ in range(BURST))
            )
            outcomes.update(results)
            await asyncio.sleep(0.05)
        for start in range(0, OVERSIZED_FRAMES, BURST):
            results = await asyncio.gather(
                *(
                    oversized(http, flood_url, token([flood_sid], subject=f"big{start + i}"))
                    for i in range(BURST)
                )
            )
            outcomes.update(results)
        body = b'{"text": "' + b"y" * MAX_FRAME + b'"}'
        headers = {"Authorization": f"Bearer {token([flood_sid], subject='poster')}"}
        for _ in range(OVERSIZED_BODIES):
            async with http.post(
                f"{base}/v1/sessions/{flood_sid}/messages", data=body, headers=headers
            ) as resp:
                outcomes[f"http/{resp.status}"] += 1
        assert gateway.alive
        async with http.get(f"{base}/healthz") as resp:
            assert resp.status == 200
            health = await resp.json()
        for ws in held:
            await ws.close()
        # The subject's slots come back: a new connection is accepted again.
        again: list[aiohttp.ClientWebSocketResponse] = []
        for _ in range(50):
            if await attempt(http, flood_url, flood_token, again) == "accepted":
                break
            await asyncio.sleep(0.1)
        assert again, "the flooder's slots were released"
        await again[0].close()
    stop.set()
    await streamer
    await message.complete()
    await run.complete()
    assert outcomes == {
        "accepted": HELD,
        "too_many_connections/4429": ATTEMPTS - HELD,
        "close/1009": OVERSIZED_FRAMES,
        "http/413": OVERSIZED_BODIES,
    }, outcomes
    assert health["counters"]["ws_refused_too_many_connections"] == ATTEMPTS - HELD
    await wait_for(lambda: ("run.completed", "run-g") in device.view.others, 15, "stream end")
    assert device.view.texts == {"m": "".join(sent)}
    assert device.connected and device.view.errors == []
    assert gateway.alive
    await device.close()

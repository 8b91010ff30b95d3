"""JetStream not answering is reported as ``unavailable`` (503 / 1011), never as a normal close."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest

from services.gateway.app import Gateway
from shared.server import EmbeddedNats
from tests.conftest import gateway_settings, token


@pytest.fixture
async def stream_gone(own_nats: EmbeddedNats) -> AsyncIterator[Gateway]:
    """A gateway on its own nats-server whose session stream was deleted after start-up."""
    gw = Gateway(gateway_settings(own_nats))
    await gw.start()
    reply = await gw.nc.request(f"$JS.API.STREAM.DELETE.{gw.settings.log.stream}", b"", timeout=5)
    assert orjson.loads(reply.data)["success"] is True
    yield gw
    await gw.stop()


async def test_websocket_connect_without_stream_closes_1011(stream_gone: Gateway) -> None:
    """A device connecting while the stream is missing gets an unavailable error and 1011."""
    url = f"ws://127.0.0.1:{stream_gone.port}/v1/sessions/s1/ws"
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(url, params={"token": token(["s1"])}) as ws:
            frame = orjson.loads((await ws.receive()).data)
            closing = await ws.receive()
    assert frame["type"] == "error" and frame["code"] == "unavailable"
    assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == 1011


async def test_http_without_stream_answers_503(stream_gone: Gateway) -> None:
    """History and send answer 503 unavailable (JSON), not a 500, while the stream is missing."""
    base = f"http://127.0.0.1:{stream_gone.port}/v1/sessions/s1"
    headers = {"Authorization": f"Bearer {token(['s1'])}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/events", headers=headers) as resp:
            events = (resp.status, orjson.loads(await resp.read()))
        async with http.post(
            f"{base}/messages", json={"id": "m1", "text": "hi"}, headers=headers
        ) as resp:
            sent = (resp.status, orjson.loads(await resp.read()))
    for status, body in (events, sent):
        assert status == 503 and body["error"]["code"] == "unavailable"

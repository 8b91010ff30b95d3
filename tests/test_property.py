"""Property: whatever the interleaving of publishes, disconnects and reconnects, every
device's final view equals the log."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.gateway.app import Gateway
from shared import agent
from shared.ids import new_id
from shared.server import EmbeddedNats
from tests.conftest import gateway_settings, token, wait_for
from tests.device import Device

DEVICES = 3

operation = st.one_of(
    st.tuples(st.just("append"), st.integers(1, 8)),
    st.tuples(st.just("complete"), st.just(0)),
    st.tuples(st.just("post"), st.just(0)),
    st.tuples(st.just("disconnect"), st.integers(0, DEVICES - 1)),
    st.tuples(st.just("reconnect"), st.integers(0, DEVICES * 2 - 1)),  # device x gateway
)


@pytest.fixture
async def two_gateways(nats_server: EmbeddedNats) -> AsyncIterator[list[Gateway]]:
    """Two in-process gateways on one NATS."""
    gateways = [Gateway(gateway_settings(nats_server)) for _ in range(2)]
    for gw in gateways:
        await gw.start()
    yield gateways
    for gw in gateways:
        await gw.stop()


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=st.lists(operation, min_size=1, max_size=30))
async def test_every_device_view_equals_the_log(
    ops: list[tuple[str, int]], two_gateways: list[Gateway], client: agent.Client
) -> None:
    """Random publishes, disconnects and reconnects: each device ends with the log's state."""
    urls = [f"http://127.0.0.1:{gw.port}" for gw in two_gateways]
    sid = new_id("p-")
    devices = [Device(sid, token([sid])) for _ in range(DEVICES)]
    session = client.session(sid)
    truth: dict[str, str] = {}
    run = agent.Run(session, "run")
    await run.start()
    counter = 0

    def new_message() -> agent.Message:
        nonlocal counter
        counter += 1
        truth[f"m{counter}"] = ""
        return run.message(f"m{counter}")

    message = new_message()
    for kind, arg in ops:
        if kind == "append":
            for i in range(arg):
                word = f"{message.id}w{i} "
                await message.append(word)
                truth[message.id] += word
        elif kind == "complete":
            await message.start() if not message.started else None
            await message.complete()
            message = new_message()
        elif kind == "post":
            counter += 1
            await session.post(f"note {counter}", message_id=f"n{counter}", role="user")
            truth[f"n{counter}"] = f"note {counter}"
        elif kind == "disconnect":
            await devices[arg].disconnect()
        elif kind == "reconnect":
            device = devices[arg % DEVICES]
            await device.disconnect()
            await device.connect(urls[arg // DEVICES])
    if not message.started:
        await message.start()
    await message.complete()
    await run.complete()
    for index, device in enumerate(devices):
        if not device.connected:
            await device.connect(urls[index % 2])
    for device in devices:
        await wait_for(
            lambda d=device: ("run.completed", "run") in d.view.others,  # type: ignore[misc]
            what="run end",
        )
        assert device.view.texts == truth
        assert device.view.others == [("run.started", "run"), ("run.completed", "run")]
        await device.close()

"""Presence with real processes on a real nats-server: who is there, agent state, and
crashes as events."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import orjson
import pytest

from services.gateway.app import Gateway
from shared import agent, subjects
from shared.ids import new_id
from shared.server import EmbeddedNats
from tests.conftest import GatewayProcess, ServiceProcess, token, wait_for
from tests.device import Device


def url(gateway: Gateway) -> str:
    return f"http://127.0.0.1:{gateway.port}"


def leaves(device: Device, participant: str) -> list[dict[str, object]]:
    return [
        f
        for f in device.view.presence
        if f["action"] == "leave" and f["member"]["participant"] == participant
    ]


def states(device: Device, participant: str) -> list[str]:
    return [
        f["member"]["state"]
        for f in device.view.presence
        if f["action"] in ("join", "update") and f["member"]["participant"] == participant
    ]


def present(device: Device, participant: str) -> list[dict[str, object]]:
    return [m for m in device.view.members.values() if m["participant"] == participant]


@pytest.fixture
def agent_process(nats_server: EmbeddedNats) -> Iterator[Callable[..., Awaitable[ServiceProcess]]]:
    """Factory of real agent processes that stream into a session until killed."""
    started: list[ServiceProcess] = []

    async def start(
        session: str, agent_id: str, server: EmbeddedNats | None = None, **env: str
    ) -> ServiceProcess:
        # In a thread: waiting for readiness must not stall this test's event loop.
        process = await asyncio.to_thread(
            ServiceProcess,
            [session, agent_id],
            server or nats_server,
            env,
            module="tests.agents.streaming_agent",
        )
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
async def presence_gateway(
    nats_server: EmbeddedNats, presence_process: Callable[..., Awaitable[ServiceProcess]]
) -> AsyncIterator[Gateway]:
    """A presence service subprocess and an in-process gateway."""
    await presence_process()
    from tests.conftest import gateway_settings

    gw = Gateway(gateway_settings(nats_server))
    await gw.start()
    yield gw
    await gw.stop()


async def test_killed_agent_shows_offline_crashed(
    presence_gateway: Gateway, agent_process: Callable[..., Awaitable[ServiceProcess]]
) -> None:
    """SIGKILL of an agent mid-answer: the device gets the agent's leave, reason crashed."""
    sid = new_id("s-")
    device = Device(sid, token([sid]))
    await device.connect(url(presence_gateway))
    bot = await agent_process(sid, "bot")
    await wait_for(
        lambda: any(m["state"] == "streaming" for m in present(device, "bot")),
        what="agent streaming",
    )
    killed = time.monotonic()
    bot.kill()
    await wait_for(lambda: bool(leaves(device, "bot")), timeout=5, what="agent offline")
    elapsed = time.monotonic() - killed
    assert leaves(device, "bot")[0]["reason"] == "crashed"
    assert elapsed < 5
    assert present(device, "bot") == []
    await device.close()


async def test_killed_gateway_users_leave_on_other_gateways(
    presence_gateway: Gateway, gateway_process: Callable[..., GatewayProcess]
) -> None:
    """SIGKILL of a gateway: devices on another gateway see its users leave (crashed)."""
    sid = new_id("s-")
    doomed = await asyncio.to_thread(gateway_process)
    alice = Device(sid, token([sid], subject="alice"))
    bob = Device(sid, token([sid], subject="bob"))
    await bob.connect(url(presence_gateway))
    await alice.connect(doomed.url)
    await wait_for(lambda: bool(present(bob, "alice")), what="bob sees alice")
    doomed.kill()
    await wait_for(lambda: bool(leaves(bob, "alice")), timeout=5, what="alice leaves")
    assert leaves(bob, "alice")[0]["reason"] == "crashed"
    assert [m["participant"] for m in bob.view.members.values()] == ["bob"]
    await alice.close()
    await bob.close()


async def test_graceful_close_and_two_devices_of_one_user(presence_gateway: Gateway) -> None:
    """One of alice's two devices closes: leave with reason closed, alice still present."""
    sid = new_id("s-")
    phone = Device(sid, token([sid], subject="alice"))
    laptop = Device(sid, token([sid], subject="alice"))
    bob = Device(sid, token([sid], subject="bob"))
    await bob.connect(url(presence_gateway))
    await phone.connect(url(presence_gateway))
    await laptop.connect(url(presence_gateway))
    await wait_for(lambda: len(present(bob, "alice")) == 2, what="two alice devices")
    await phone.close()
    await wait_for(lambda: bool(leaves(bob, "alice")), what="phone leaves")
    assert leaves(bob, "alice")[0]["reason"] == "closed"
    assert len(present(bob, "alice")) == 1
    await asyncio.sleep(0.2)
    assert len(leaves(bob, "alice")) == 1
    await laptop.close()
    await bob.close()


async def test_agent_state_follows_the_run(presence_gateway: Gateway, client: agent.Client) -> None:
    """A run drives the agent's state: thinking, streaming, thinking, idle; close: left."""
    sid = new_id("s-")
    device = Device(sid, token([sid]))
    await device.connect(url(presence_gateway))
    await wait_for(lambda: device.view.live, what="device live")
    session = client.session(sid)
    async with session.run() as run:
        message = run.message()
        await message.append("hello")
        await message.complete()
    await wait_for(lambda: states(device, client.agent_id)[-1:] == ["idle"], what="idle")
    assert states(device, client.agent_id) == ["thinking", "streaming", "thinking", "idle"]
    await client.presence.close()
    await wait_for(lambda: bool(leaves(device, client.agent_id)), what="agent left")
    assert leaves(device, client.agent_id)[0]["reason"] == "closed"
    await device.close()


async def test_presence_restart_emits_nothing_and_catches_up(
    nats_server: EmbeddedNats,
    presence_process: Callable[..., Awaitable[ServiceProcess]],
    presence_gateway: Gateway,
    agent_process: Callable[..., Awaitable[ServiceProcess]],
) -> None:
    """A presence service restart emits no events; a crash while it was down is caught up."""
    sid = new_id("s-")
    device = Device(sid, token([sid]))
    await device.connect(url(presence_gateway))
    survivor = await agent_process(sid, "survivor")
    doomed = await agent_process(sid, "doomed")
    await wait_for(
        lambda: bool(present(device, "survivor")) and bool(present(device, "doomed")),
        what="both agents present",
    )
    service = await presence_process()  # a second instance, so the first can be stopped
    frames = len(device.view.presence)
    for process in presence_process.started:  # type: ignore[attr-defined]
        if process is not service:
            process.stop()
    await asyncio.sleep(0.5)
    assert len(device.view.presence) == frames  # nothing spurious from stopping
    service.stop()
    doomed.kill()  # nobody watches the server's events now
    await asyncio.sleep(0.5)
    assert present(device, "doomed")  # not detected while the service is down
    await presence_process()  # comes back: reconciles with the server's connection list
    await wait_for(lambda: bool(leaves(device, "doomed")), timeout=10, what="caught up")
    assert leaves(device, "doomed")[0]["reason"] == "crashed"
    assert present(device, "survivor") and not leaves(device, "survivor"), device.view.presence
    await device.close()
    assert survivor.alive


async def test_two_presence_services_give_one_event(
    presence_gateway: Gateway,
    presence_process: Callable[..., Awaitable[ServiceProcess]],
    agent_process: Callable[..., Awaitable[ServiceProcess]],
) -> None:
    """With two presence services running, a crash gives exactly one leave."""
    await presence_process()
    sid = new_id("s-")
    device = Device(sid, token([sid]))
    await device.connect(url(presence_gateway))
    bot = await agent_process(sid, "bot")
    await wait_for(lambda: bool(present(device, "bot")), what="agent present")
    bot.kill()
    await wait_for(lambda: bool(leaves(device, "bot")), timeout=5, what="agent offline")
    await asyncio.sleep(0.5)
    assert len(leaves(device, "bot")) == 1
    await device.close()


class CuttableProxy:
    """A TCP proxy to NATS whose connections can be cut (a network-level disconnect)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        for writer in self.writers:
            writer.transport.abort()
        self.writers.clear()

    async def stop(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()


async def test_agent_reconnect_within_window_does_not_flap(
    nats_server: EmbeddedNats,
    presence_gateway: Gateway,
    agent_process: Callable[..., Awaitable[ServiceProcess]],
) -> None:
    """A network-level cut of an agent's NATS connection, reconnected at once: no leave."""
    proxy = CuttableProxy(nats_server.port)
    await proxy.start()
    sid = new_id("s-")
    device = Device(sid, token([sid]))
    await device.connect(url(presence_gateway))
    bot = await agent_process(sid, "bot", TETHER_NATS_URL=f"nats://127.0.0.1:{proxy.port}")
    await wait_for(lambda: bool(present(device, "bot")), what="agent present")
    # nats-py waits reconnect_time_wait (0.25 s here) before reconnecting a connection made
    # less than that ago; an older one reconnects in a few ms, well inside the presence
    # service's 100 ms grace.
    await asyncio.sleep(0.5)
    before = len(device.view.presence)
    proxy.cut()
    await asyncio.sleep(1.5)
    assert not leaves(device, "bot"), device.view.presence[before:]
    assert present(device, "bot")
    assert bot.alive
    await device.close()
    await proxy.stop()


async def test_malformed_presence_values_are_ignored(
    presence_gateway: Gateway,
    presence_process: Callable[..., Awaitable[ServiceProcess]],
    client: agent.Client,
) -> None:
    """Garbage written straight to the bucket is skipped with a log line; nothing crashes."""
    service = await presence_process()
    sid = new_id("s-")
    device = Device(sid, token([sid]))
    await device.connect(url(presence_gateway))
    js = client.nc.jetstream()
    root = subjects.PRESENCE_KEY_ROOT
    for subject, value in [
        (f"{root}.{sid}.agent.bot.c1", b"not json"),
        (f"{root}.{sid}.agent.bot.c2", b"[1, 2]"),
        (f"{root}.{sid}.agent.bot.c3", orjson.dumps({"state": 7})),
        (f"{root}.{sid}.robot.bot.c4", orjson.dumps({"state": "idle"})),
        (f"{root}.{sid}.agent.c5", orjson.dumps({"state": "idle"})),
        (f"{root}.{sid}.agent.bot.c6", orjson.dumps({"state": "idle", "since": "x"})),
    ]:
        await js.publish(subject, value)
    await client.session(sid).set_state("idle")
    await wait_for(lambda: bool(present(device, client.agent_id)), what="a good entry")
    assert [
        m["connection"] for m in device.view.members.values() if m["participant"] == "bot"
    ] == []
    assert service.alive
    assert (await client.session(sid).listeners()) != []  # the device itself, a user
    await device.close()


async def test_listeners_wait_and_last_device_callbacks(
    presence_gateway: Gateway, client: agent.Client
) -> None:
    """An agent waits for a listener, and hears when the last one leaves and one returns."""
    sid = new_id("s-")
    session = client.session(sid)
    assert await session.listeners() == []
    events: list[str] = []
    async with session.watch_listeners(
        on_empty=lambda: events.append("empty"), on_return=lambda: events.append("back")
    ) as watch:
        waiter = asyncio.create_task(session.wait_for_listener(timeout=10))
        await asyncio.sleep(0.2)
        assert not waiter.done()
        phone = Device(sid, token([sid], subject="alice"))
        await phone.connect(url(presence_gateway))
        await waiter
        await wait_for(lambda: watch.count == 1, what="one listener")
        assert [m["participant"] for m in await session.listeners()] == ["alice"]
        await phone.disconnect()
        await wait_for(lambda: events == ["back", "empty"], what="empty callback")
        await phone.connect(url(presence_gateway))
        await wait_for(lambda: events == ["back", "empty", "back"], what="return callback")
        await phone.close()


async def test_http_presence_lists_members(presence_gateway: Gateway) -> None:
    """GET /v1/sessions/{id}/presence lists who is connected."""
    import aiohttp

    sid = new_id("s-")
    device = Device(sid, token([sid], subject="carol"))
    await device.connect(url(presence_gateway) + "", since=0)
    await wait_for(lambda: device.view.live, what="live")
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{url(presence_gateway)}/v1/sessions/{sid}/presence",
            headers={"Authorization": f"Bearer {token([sid])}"},
        ) as resp,
    ):
        body = await resp.json()
    assert resp.status == 200
    assert [(m["participant"], m["state"]) for m in body["members"]] == [("carol", "online")]
    await device.close()


async def test_hello_lists_the_device_even_when_the_presence_read_lags(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a cluster the hub's first presence read may come from a replica that has not
    applied the device's own put yet (direct gets): the hello still lists the device, and
    a device joining later sees both."""
    from services.gateway import hub as hub_module

    real_snapshot = hub_module.presence.snapshot
    lagging = [True]

    async def snapshot(nc: object, subject: str) -> dict[str, object]:
        if lagging[0]:  # the first read: a replica behind the leader
            lagging[0] = False
            return {}
        return await real_snapshot(nc, subject)  # type: ignore[arg-type]

    monkeypatch.setattr(hub_module.presence, "snapshot", snapshot)
    sid = new_id("s-")
    first = Device(sid, token([sid], subject="alice"))
    await first.connect(url(gateway))
    await wait_for(lambda: first.view.live, what="first device live")
    assert [m["participant"] for m in first.view.hellos[0]["presence"]] == ["alice"]
    second = Device(sid, token([sid], subject="bob"))
    await second.connect(url(gateway))
    await wait_for(lambda: second.view.live, what="second device live")
    assert sorted(m["participant"] for m in second.view.hellos[0]["presence"]) == ["alice", "bob"]
    await second.close()
    await first.close()

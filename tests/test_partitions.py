"""The session log partitioned over several streams (TETHER_STREAM_PARTITIONS): a real
nats-server whose account maps each session to its partition, real gateways, agents,
devices, notifier and webhook receiver."""

from __future__ import annotations

import asyncio
import random
import string
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import orjson
import pytest
from nats.aio.client import Client as NATS
from nats.errors import TimeoutError as NatsTimeoutError

from services.gateway.app import Gateway
from services.notifier.service import NotifierService
from services.notifier.settings import NotifierSettings
from shared import agent, history, leaders, partitions, subjects, wire
from shared.errors import ConfigError
from shared.ids import new_id
from shared.inbox import UserMessage
from shared.server import EmbeddedNats
from shared.settings import LogSettings
from shared.streams import EXPECTED_STREAM, PROBE_STREAM, ensure_stream
from tests.conftest import PARTITIONS, gateway_settings, token, wait_for
from tests.device import Device
from tests.test_notifier import LOOPBACK, Receiver, subscribe

LOG = LogSettings(partitions=PARTITIONS)


def url(gateway: Gateway) -> str:
    return f"http://127.0.0.1:{gateway.port}"


def spread(count: int, prefix: str = "p-") -> list[str]:
    """``count`` new session ids that cover every partition."""
    while True:
        sids = [new_id(prefix) for _ in range(count)]
        if {partitions.partition(s, PARTITIONS) for s in sids} == set(range(PARTITIONS)):
            return sids


async def connect(server: EmbeddedNats, role: str) -> NATS:
    settings = server.settings(f"test-{role}", role=role)
    return await nats.connect(
        list(settings.servers), user=settings.user, password=settings.password.reveal()
    )


async def subjects_in(nc: NATS, stream: str, sid: str) -> int:
    """How many subjects of session ``sid`` the stream holds."""
    request = {"subjects_filter": subjects.session_filter(sid)}
    reply = await nc.request(f"$JS.API.STREAM.INFO.{stream}", orjson.dumps(request), timeout=5)
    return len(orjson.loads(reply.data)["state"].get("subjects") or {})


@pytest.fixture
async def gateway_p(partitioned_nats: EmbeddedNats) -> AsyncIterator[Gateway]:
    """A gateway (as the gateway user) on the partitioned server."""
    gw = Gateway(gateway_settings(partitioned_nats, log=LOG, webhook_policy=LOOPBACK))
    await gw.start()
    yield gw
    await gw.stop()


@pytest.fixture
async def bot(partitioned_nats: EmbeddedNats) -> AsyncIterator[agent.Client]:
    """An agent SDK client as the agent user (the permissions agents deploy with)."""
    c = await agent.connect(partitioned_nats.settings("bot", role="agent"), log_settings=LOG)
    yield c
    await c.close()


@pytest.fixture
def fresh_partitioned(tmp_path: Path) -> Iterator[EmbeddedNats]:
    """A partitioned nats-server of this test's own (empty streams, equal sequences)."""
    server = EmbeddedNats(tmp_path / "nats", port=-1, partitions=PARTITIONS)
    server.start()
    yield server
    server.stop()


async def test_partition_hash_equals_the_servers(partitioned_nats: EmbeddedNats) -> None:
    """For 300 random session ids the stream readers compute is the one the server's
    mapping stored them in (the probe is refused, so nothing is stored)."""
    nc = await connect(partitioned_nats, "admin")
    await ensure_stream(nc, LOG)
    alphabet = string.ascii_letters + string.digits + "-_"
    rng = random.Random(7)
    for n in range(300):
        sid = "".join(rng.choice(alphabet) for _ in range(1 + n % 40))
        reply = await nc.request(
            subjects.run_events(sid, "probe"), b"", headers={EXPECTED_STREAM: PROBE_STREAM}
        )
        assert orjson.loads(reply.data)["stream"] == LOG.stream_for(sid), sid
    await nc.close()


async def test_sessions_in_every_partition_flow_end_to_end(
    gateway_p: Gateway, bot: agent.Client, partitioned_nats: EmbeddedNats
) -> None:
    """Devices in sessions of every partition send; one agent inbox gets them all; the
    streamed answers reach live devices, a late device replays them, and each session is
    stored only in its own stream."""
    sids = spread(6)
    durable = new_id("inbox-")
    inbox = bot.inbox(durable)
    await inbox.open()

    async def answer() -> None:
        async for item in inbox:
            if isinstance(item, UserMessage):
                async with bot.session(item.session).run(f"run-{item.message}") as run:
                    message = run.message(f"reply-{item.message}")
                    for word in ("echo: ", item.text):
                        await message.append(word)
                    await message.complete()
            await item.ack()

    worker = asyncio.create_task(answer())
    devices = [Device(sid, token([sid], subject="alice")) for sid in sids]
    for device in devices:
        await device.connect(url(gateway_p))
    await wait_for(lambda: all(d.view.live for d in devices), what="devices live")
    for device in devices:
        await device.send({"type": "send", "id": "q-1", "text": f"hi {device.session}"})
    for device in devices:
        await wait_for(
            lambda d=device: d.view.texts.get("reply-q-1") == f"echo: hi {d.session}",  # type: ignore[misc]
            timeout=20,
            what=f"answer in {device.session}",
        )
    for device in devices:
        late = Device(device.session, token([device.session], subject="bob"))
        await late.connect(url(gateway_p))
        await wait_for(lambda d=late: d.view.live, what="late device caught up")  # type: ignore[misc]
        assert late.view.texts == device.view.texts
        assert late.view.seqs == sorted(late.view.seqs)
        await late.close()
        await device.close()
    admin = await connect(partitioned_nats, "admin")
    for sid in sids:
        home = LOG.stream_for(sid)
        counts = {stream: await subjects_in(admin, stream, sid) for stream in LOG.streams}
        assert counts[home] >= 3 and sum(counts.values()) == counts[home], (sid, counts)
        page = await history.read(admin, home, sid, 0)
        kinds = [e.event["type"] for e in page.events]
        assert kinds.count(wire.MESSAGE_CREATED) == 1 and "run.completed" in kinds
    await admin.close()
    await inbox.close()
    worker.cancel()
    await asyncio.gather(worker, return_exceptions=True)


async def test_runs_in_different_partitions_each_get_their_webhook(
    fresh_partitioned: EmbeddedNats, tmp_path: Path
) -> None:
    """Runs completing at the same sequence in different partition streams are distinct
    events: the notifier consumes every partition and sends one webhook each."""
    receiver = Receiver()
    await receiver.start()
    settings = gateway_settings(fresh_partitioned, log=LOG, webhook_policy=LOOPBACK)
    gw = Gateway(settings)
    await gw.start()
    notifier = NotifierService(
        NotifierSettings(
            nats=fresh_partitioned.settings("notifier", role="notifier"),
            log=LOG,
            grace_seconds=0.0,
            policy=LOOPBACK,
        )
    )
    await notifier.start()
    bot = await agent.connect(fresh_partitioned.settings("bot", role="agent"), log_settings=LOG)
    pool = spread(PARTITIONS)
    sids = [next(s for s in pool if partitions.partition(s, PARTITIONS) == k) for k in range(3)]
    await subscribe(gw, receiver.url)
    for sid in sids:  # the same events in each fresh stream: the same sequences
        async with bot.session(sid).run(user="alice") as run:
            message = run.message()
            await message.append(f"done in {sid}")
            await message.complete()
    await wait_for(lambda: len(receiver.requests) == 3, timeout=20, what="three webhooks")
    await asyncio.sleep(0.5)
    payloads = [r.payload for r in receiver.requests]
    assert sorted(p["session"] for p in payloads) == sorted(sids)
    assert len({p["seq"] for p in payloads}) == 1  # equal sequences, yet three deliveries
    assert len({r.headers["webhook-id"] for r in receiver.requests}) == 3
    assert all(p["summary"] == f"done in {p['session']}" for p in payloads)
    await bot.close()
    await notifier.stop()
    await gw.stop()
    await receiver.stop()


async def test_partition_count_that_disagrees_with_the_server_is_refused(
    fresh_partitioned: EmbeddedNats, own_nats: EmbeddedNats
) -> None:
    """Services whose TETHER_STREAM_PARTITIONS differs from the server's mapping stop at
    start-up with a ConfigError naming the variable (nothing would be read otherwise)."""
    unpartitioned = Gateway(gateway_settings(own_nats))  # the layout the server has
    await unpartitioned.start()
    await unpartitioned.stop()
    for server, log in ((fresh_partitioned, LogSettings(partitions=2)), (own_nats, LOG)):
        gw = Gateway(gateway_settings(server, log=log))
        with pytest.raises(ConfigError, match="TETHER_STREAM_PARTITIONS"):
            await gw.start()
        await gw.stop()
        with pytest.raises(ConfigError, match="TETHER_STREAM_PARTITIONS"):
            await agent.connect(server.settings("bot", role="agent"), log_settings=log)


async def test_permissions_hold_on_mapped_subjects(
    gateway_p: Gateway, bot: agent.Client, partitioned_nats: EmbeddedNats
) -> None:
    """NATS checks publish permissions after the mapping: an agent still cannot store user
    messages, the gateway cannot store agent messages, and an agent's publish straight to
    another partition is stored where no reader looks and never served to devices."""
    sid = spread(3)[0]
    event = wire.dumps({"v": 1, "type": "message.created", "session": sid, "text": "forged"})
    agent_nc = await connect(partitioned_nats, "agent")
    gateway_nc = await connect(partitioned_nats, "gateway")
    for nc, subject in (
        (agent_nc, subjects.user_message(sid, "m1")),
        (agent_nc, subjects.control(sid, "c1")),
        (gateway_nc, subjects.agent_message(sid, "m1")),
    ):
        with pytest.raises((NatsTimeoutError, TimeoutError)):
            await nc.request(subject, event, timeout=0.5)
    device = Device(sid, token([sid], subject="alice"))
    await device.connect(url(gateway_p))
    await wait_for(lambda: device.view.live, what="device live")
    home = partitions.partition(sid, PARTITIONS)
    other = (home + 1) % PARTITIONS
    stray = wire.dumps(
        {"v": 1, "type": "message.complete", "session": sid, "message": "stray", "text": "x"}
    )
    reply = await agent_nc.request(
        f"{subjects.PARTITION_ROOT}.{other}.s.{sid}.{subjects.AGENT}.stray", stray, timeout=5
    )
    assert orjson.loads(reply.data)["stream"] == LOG.streams[other]  # stored, misplaced
    async with bot.session(sid).run("run-1") as run:
        message = run.message("real")
        await message.append("served")
        await message.complete()
    await wait_for(lambda: device.view.texts.get("real") == "served", what="real answer")
    await asyncio.sleep(0.3)
    assert "stray" not in device.view.texts
    late = Device(sid, token([sid], subject="bob"))
    await late.connect(url(gateway_p))
    await wait_for(lambda: late.view.live, what="late device live")
    assert "stray" not in late.view.texts and late.view.texts.get("real") == "served"
    for conn in (device, late):
        await conn.close()
    await agent_nc.close()
    await gateway_nc.close()


def test_leader_plan_evens_out_leaders() -> None:
    """The leader plan moves streams from the busiest server to current replicas of the
    idlest until no server leads two more than another, and never to a lagging replica."""
    nodes = ("n1", "n2", "n3")

    def placed(*leaders_of: str, current: tuple[str, ...] = nodes) -> list[leaders.Placement]:
        return [leaders.Placement(f"S{k}", who, current) for k, who in enumerate(leaders_of)]

    assert leaders.plan(placed("n1", "n2", "n3")) == []
    assert leaders.plan(placed("n1", "n1", "n2")) == [("S0", "n3")]
    moves = dict(leaders.plan(placed("n1", "n1", "n1")))
    assert sorted(moves.values()) == ["n2", "n3"] and len(moves) == 2
    assert len(leaders.plan(placed("n1", "n1", "n1", "n1", "n1", "n1"))) == 4
    assert leaders.plan(placed("n1", "n1", current=("n1",))) == []  # no current replica
    assert leaders.plan(placed(None, "n1")) == []  # type: ignore[arg-type]

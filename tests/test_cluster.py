"""Chaos on a 3-node NATS cluster (R3) and kill -9 of a single node: no acknowledged event lost.

``test_chaos_no_loss_no_duplicates``: an agent streams into 50 sessions, two devices per
session (one on each of two gateway processes); mid-stream the stream leader's nats-server
(partitioned: the leader of the first partition's stream) and one gateway are SIGKILLed and
restarted. A Jepsen-style check compares what JetStream acknowledged to the agent with what
every device received: exactly once, in order. It runs on one session stream and on three
partitions (whose leaders are spread again after the restart).
``test_gateway_spreads_partition_leaders_again_after_a_node_returns``: a gateway's leader
balancer restores one leader per node after a node's kill and restart, with no command.
Figures go to test-artifacts/cluster.json (one stream) and cluster-partitions-3.json.
Select with ``-m cluster``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import os
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from shared import agent, leaders, natsconn
from shared.cluster import LocalCluster, wait_stream
from shared.errors import PublishError
from shared.server import EmbeddedNats
from shared.settings import LogSettings
from shared.streams import ensure_stream
from tests.conftest import PARTITIONS, ROOT, ServiceProcess, token, wait_for
from tests.device import Device, View

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

SESSIONS = 50
RATE = 4.0  # tokens per second per session (50 sessions: ~200 publishes/s)
ARTIFACT = ROOT / "test-artifacts" / "cluster.json"
STREAM = LogSettings().stream
PUBLISH_TIMEOUT = 0.05  # the SDK default is 2 s


@dataclass
class Ack:
    """One publish JetStream acknowledged to the agent."""

    seq: int
    event: dict[str, Any]
    started: float
    acked: float


@dataclass
class History:
    """What the agent was told: acks by dedupe id, and publishes that stayed unacked."""

    acks: dict[str, Ack] = field(default_factory=dict)
    unacked: collections.Counter[str] = field(default_factory=collections.Counter)
    attempts: int = 0
    raw: collections.Counter[str] = field(default_factory=collections.Counter)

    def record(self, client: agent.Client) -> None:
        """Wrap ``client.publish`` so every acknowledged publish is recorded."""
        publish = client.publish

        async def recording(
            subject: str, event: dict[str, Any], dedupe_id: str, **options: Any
        ) -> int:
            started = time.monotonic()
            self.attempts += 1
            try:
                seq = await publish(subject, event, dedupe_id, **options)
            except PublishError:
                self.unacked[dedupe_id] += 1
                raise
            previous = self.acks.get(dedupe_id)
            if previous is not None and previous.seq != seq:
                raise AssertionError(f"{dedupe_id} acked as {previous.seq} and {seq}")
            if previous is None:
                self.acks[dedupe_id] = Ack(seq, event, started, time.monotonic())
            return seq

        client.publish = recording  # type: ignore[method-assign]
        js_publish = client.js.publish

        async def counting(*args: Any, **kwargs: Any) -> Any:
            self.raw["attempts"] += 1
            try:
                ack = await js_publish(*args, **kwargs)
            except Exception as exc:
                self.raw[f"error {type(exc).__name__}"] += 1
                raise
            if ack.duplicate:
                self.raw["duplicate_acks"] += 1
            return ack

        client.js.publish = counting  # type: ignore[method-assign]

    def of(self, session: str) -> list[tuple[str, Ack]]:
        """The acknowledged events of one session, in sequence order."""
        mine = [(key, ack) for key, ack in self.acks.items() if key.startswith(f"{session}:")]
        return sorted(mine, key=lambda item: item[1].seq)


@dataclass
class RecordingView(View):
    """A device view that also keeps every event frame as received (never raises)."""

    received: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    def apply(self, frame: dict[str, Any]) -> None:
        if frame["type"] == "event":
            self.received.append((frame["seq"], frame["event"]))
        try:
            super().apply(frame)
        except AssertionError as exc:
            self.violations.append(str(exc))


class ChaosDevice(Device):
    """A device with a home gateway; it reconnects (with ``since``) to whichever is up."""

    def __init__(self, session: str, token: str, home: int) -> None:
        super().__init__(session, token)
        self.view = RecordingView()
        self.home = home
        self.where = -1  # the gateway index it is connected to
        self.reconnects = 0


def atoms(session: str, event: dict[str, Any]) -> list[str]:
    """The dedupe ids a received (possibly compacted, docs/protocol.md §7) event stands for."""
    kind, mid, run = event.get("type"), event.get("message"), event.get("run")
    if kind == "run.started":
        return [f"{session}:r:{run}:started"]
    if kind in ("run.completed", "run.failed", "run.cancelled"):
        return [f"{session}:r:{run}:end"]
    if kind == "message.start":
        return [f"{session}:a:{mid}:start"]
    if kind == "message.complete":
        return [f"{session}:a:{mid}:complete"]
    if kind in ("message.delta", "message.snapshot"):
        last = int(event.get("i", -1))
        first = int(event.get("from_i", last))
        head = [f"{session}:a:{mid}:start"] if kind == "message.snapshot" else []
        return head + [f"{session}:a:{mid}:{i}" for i in range(0 if head else first, last + 1)]
    return [f"{session}:?:{kind}"]


@dataclass
class Verdict:
    """The history check of one device."""

    expected: int = 0
    received: int = 0
    lost: int = 0
    duplicated: int = 0
    unexpected: int = 0
    out_of_order: int = 0
    wrong_text: int = 0


def check(device: ChaosDevice, history: History) -> Verdict:
    """Compare a device's received events with what JetStream acknowledged for its session."""
    sid = device.session
    expected = history.of(sid)
    acked = dict(expected)
    received: list[str] = []
    verdict = Verdict(expected=len(expected))
    last_seq = 0
    for seq, event in device.view.received:
        keys = atoms(sid, event)
        if seq <= last_seq:
            verdict.out_of_order += 1
        last_seq = max(last_seq, seq)
        known = [acked[k] for k in keys if k in acked]
        if known and seq != known[-1].seq:  # a compacted item carries its last part's seq
            verdict.out_of_order += 1
        if event.get("type") == "message.delta":
            text = "".join(str(acked[k].event.get("text", "")) for k in keys if k in acked)
            if text != event.get("text"):
                verdict.wrong_text += 1
        received.extend(keys)
    counts = collections.Counter(received)
    verdict.received = len(received)
    verdict.duplicated = sum(n - 1 for n in counts.values() if n > 1)
    verdict.lost = sum(1 for key in acked if key not in counts)
    verdict.unexpected = sum(1 for key in counts if key not in acked and key not in history.unacked)
    if [k for k in dict.fromkeys(received) if k in acked] != [k for k, _ in expected]:
        verdict.out_of_order += 1
    return verdict


def test_history_check_counts_loss_duplicates_and_disorder() -> None:
    """The history check itself: a lost, a repeated and a reordered event are all caught."""
    history = History()
    sid = "s"
    events = [
        ("s:r:r:started", {"type": "run.started", "run": "r"}),
        ("s:a:m:start", {"type": "message.start", "message": "m"}),
        *[
            (f"s:a:m:{i}", {"type": "message.delta", "message": "m", "i": i, "text": f"t{i}"})
            for i in range(4)
        ],
        ("s:r:r:end", {"type": "run.completed", "run": "r"}),
    ]
    for seq, (key, event) in enumerate(events, start=1):
        history.acks[key] = Ack(seq, event, 0.0, 0.0)

    def device(frames: list[tuple[int, dict[str, Any]]]) -> Verdict:
        d = ChaosDevice(sid, "token", 0)
        d.view.received = frames
        return check(d, history)

    exact = [(seq, event) for seq, (_, event) in enumerate(events, start=1)]
    assert device(exact) == Verdict(expected=7, received=7)
    merged = {"type": "message.delta", "message": "m", "from_i": 1, "i": 3, "text": "t1t2t3"}
    compacted = [*exact[:3], (6, merged), exact[6]]  # a resume after seq 3 (§7 merge)
    assert device(compacted) == Verdict(expected=7, received=7)
    lost = device([*exact[:3], *exact[4:]])
    assert (lost.lost, lost.duplicated) == (1, 0)
    repeated = device([*exact[:4], exact[3], *exact[4:]])
    assert (repeated.lost, repeated.duplicated, repeated.out_of_order) == (0, 1, 1)
    swapped = device([*exact[:3], exact[4], exact[3], *exact[5:]])
    assert swapped.out_of_order > 0 and swapped.lost == 0
    bad_text = device([*exact[:3], (6, {**merged, "text": "t1t3"}), exact[6]])
    assert bad_text.wrong_text == 1


@pytest.fixture(params=[1, PARTITIONS], ids=["one-stream", "partitioned"])
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    """A 3-node JetStream cluster on loopback (its account spreads sessions over
    ``request.param`` session streams)."""
    nodes = LocalCluster(tmp_path / "cluster", partitions=request.param)
    nodes.start()
    yield nodes
    nodes.stop()


class Gateways:
    """Gateway subprocesses connected with every node URL; kill -9 and restart by index."""

    def __init__(self, cluster: LocalCluster, logs: Path) -> None:
        self.cluster = cluster
        self.logs = logs
        self.procs: list[ServiceProcess | None] = []

    async def start(self, index: int | None = None) -> int:
        log = self.logs / f"gateway-{len(self.procs) if index is None else index}.log"
        process = await asyncio.to_thread(
            ServiceProcess,
            ["gateway"],
            self.cluster,  # type: ignore[arg-type]  # duck-typed: client_env(role)
            {"TETHER_WS_HEARTBEAT_SECONDS": "5"},
            stderr_path=log,
            role="gateway",
        )
        if index is None:
            self.procs.append(process)
            return len(self.procs) - 1
        self.procs[index] = process
        return index

    def url(self, index: int) -> str | None:
        process = self.procs[index]
        return process.url if process is not None and process.alive else None

    def kill(self, index: int) -> None:
        process = self.procs[index]
        if process is not None:
            process.kill()
        self.procs[index] = None

    def stop(self) -> None:
        for process in self.procs:
            if process is not None:
                process.stop()


@contextlib.asynccontextmanager
async def keep_connected(
    devices: list[ChaosDevice], gateways: Gateways
) -> AsyncIterator[asyncio.Event]:
    """Reconnect every closed device (``since`` = its position) to its home gateway, else
    to any gateway that is up."""
    stop = asyncio.Event()

    async def follow(device: ChaosDevice) -> None:
        while not stop.is_set():
            if not device.connected:
                candidates = [device.home] + [
                    i for i in range(len(gateways.procs)) if i != device.home
                ]
                urls = [(i, gateways.url(i)) for i in candidates]
                target = next(((i, u) for i, u in urls if u is not None), None)
                if target is not None:
                    with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                        await device.disconnect()
                        await device.connect(target[1])
                        device.where = target[0]
                        device.reconnects += 1
                        continue
            await asyncio.sleep(0.05 + random.random() * 0.05)

    tasks = [asyncio.create_task(follow(d)) for d in devices]
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)


async def retrying(history: History, action: Callable[[], Awaitable[Any]]) -> None:
    """Run an SDK call until JetStream acknowledges it (each PublishError is counted by the
    recorder as an unacked publish; the retry reuses the same dedupe id)."""
    for _ in range(10):
        try:
            await action()
            return
        except PublishError:
            await asyncio.sleep(0.5)
    raise AssertionError("a publish stayed unacknowledged through 10 rounds of retries")


async def produce(
    client: agent.Client, history: History, sid: str, streaming: asyncio.Event
) -> None:
    """One session: a run with one message streamed at RATE until ``streaming`` clears."""
    session = client.session(sid)
    run = agent.Run(session, f"run-{sid}")
    await retrying(history, run.start)
    message = run.message("m")
    await retrying(history, message.start)
    index = 0
    await asyncio.sleep(random.random() / RATE)
    while streaming.is_set():
        text = f"{sid}-t{index} "
        await retrying(history, lambda: message.append(text))  # noqa: B023 - awaited here
        index += 1
        await asyncio.sleep(1 / RATE)
    await retrying(history, message.complete)
    await retrying(history, run.complete)


async def tether_streams(cluster: LocalCluster, *options: str) -> dict[str, str | None]:
    """``tether streams --json [options]`` as an operator runs it: stream -> its leader."""
    env = {**os.environ, **cluster.client_env("admin")}
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "shared.cli", "streams", "--json", *options],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr.decode()
    return {p["stream"]: p["leader"] for p in orjson.loads(done.stdout)}


def rss_kib(pid: int) -> int:
    """A process's resident memory (Linux), 0 when unknown."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def rss_figures(cluster: LocalCluster, gateways: Gateways) -> dict[str, int]:
    """Resident memory of every nats-server and gateway process now."""
    figures = {n.name: rss_kib(n.process.pid) for n in cluster.nodes if n.process is not None}
    for index, process in enumerate(gateways.procs):
        if process is not None:
            figures[f"gateway-{index}"] = rss_kib(process.process.pid)
    return figures


def full_text(sid: str, history: History) -> str:
    """The text of a session's message: its acknowledged deltas, joined in order."""
    deltas = [ack for key, ack in history.of(sid) if key.split(":")[-1].isdigit()]
    return "".join(str(ack.event["text"]) for ack in deltas)


def first_acks_after(history: History, moment: float) -> tuple[float | None, float | None]:
    """Seconds from ``moment`` to the first ack of a publish begun after it, and until every
    session had one."""
    per_session: dict[str, float] = {}
    for key, ack in history.acks.items():
        if ack.started >= moment:
            sid = key.split(":", 1)[0]
            per_session[sid] = min(per_session.get(sid, ack.acked), ack.acked)
    if not per_session:
        return None, None
    return min(per_session.values()) - moment, max(per_session.values()) - moment


async def test_chaos_no_loss_no_duplicates(cluster: LocalCluster, tmp_path: Path) -> None:
    """Kill -9 of the stream leader and of a gateway mid-stream loses and duplicates nothing."""
    began = time.monotonic()
    gateways = Gateways(cluster, tmp_path)
    log = LogSettings(replicas=3, partitions=cluster.partitions)
    figures: dict[str, Any] = {"sessions": SESSIONS, "devices": 2 * SESSIONS, "rate": RATE}
    figures["partitions"] = log.partitions
    devices: list[ChaosDevice] = []
    producers: list[asyncio.Task[None]] = []
    closers: list[Callable[[], Awaitable[None]]] = []
    try:
        await gateways.start()
        await gateways.start()
        client = await agent.connect(
            cluster.settings("chaos-agent", role="agent"),
            log_settings=log,
            checkpoint_chunks=0,
        )
        # A short publish timeout makes the SDK's retries race their originals (a retry of a
        # publish the stream did store must come back as a duplicate, not a second event).
        closers.append(client.close)
        client.js = client.nc.jetstream(timeout=PUBLISH_TIMEOUT)
        history = History()
        history.record(client)
        admin = await natsconn.connect(cluster.settings("chaos-admin"))
        closers.append(lambda: natsconn.close(admin))
        figures["leaders_at_start"] = {s: await wait_stream(admin, s, 3) for s in log.streams}
        if log.partitions > 1:  # the agent created them: their leaders were spread
            assert len(set(figures["leaders_at_start"].values())) == len(cluster.nodes), figures
        leader = figures["leaders_at_start"][log.streams[0]]
        sids = [f"chaos-{i:02d}" for i in range(SESSIONS)]
        devices += [
            ChaosDevice(sid, token([sid], subject=f"user-{sid}"), home)
            for sid in sids
            for home in (0, 1)
        ]
        async with keep_connected(devices, gateways):
            await wait_for(lambda: all(d.view.live for d in devices), 30, "devices live")
            streaming = asyncio.Event()
            streaming.set()
            producers += [
                asyncio.create_task(produce(client, history, sid, streaming)) for sid in sids
            ]
            await asyncio.sleep(6)

            # 1. kill -9 the nats-server that leads the session stream.
            victim = cluster.node_named(leader)
            agent_url = client.nc.connected_url
            figures["node_kill"] = {
                "node": leader,
                "agent_was_connected_to_it": bool(
                    agent_url and agent_url.port == cluster.nodes[victim].port
                ),
            }
            _, connz = await asyncio.to_thread(cluster.nodes[victim].monitor, "/connz?limit=1000")
            clients = connz.get("connections") or []
            figures["node_kill"]["clients_on_node"] = sorted(c.get("name", "") for c in clients)
            killed_at = time.monotonic()
            await asyncio.to_thread(cluster.kill, victim)
            await asyncio.sleep(8)
            figures["node_kill"]["new_leaders"] = {
                s: await wait_stream(admin, s, 2) for s in log.streams
            }
            rejoin = await asyncio.to_thread(cluster.restart, victim, 60.0)
            figures["node_kill"]["restart_to_healthy_s"] = round(rejoin, 3)
            for stream in log.streams:
                await wait_stream(admin, stream, 3, timeout=60)
            if log.partitions > 1:  # the killed node leads nothing now: move leaders back
                moved_at = time.monotonic()
                placed = await tether_streams(cluster, "--spread")
                figures["node_kill"]["leaders_after_spread"] = placed
                figures["node_kill"]["spread_s"] = round(time.monotonic() - moved_at, 3)
                assert len(set(placed.values())) == len(cluster.nodes), figures
            first, every = first_acks_after(history, killed_at)
            stalled = [a.acked - a.started for a in history.acks.values()]
            figures["node_kill"] |= {
                "first_ack_after_kill_s": first and round(first, 3),
                "all_sessions_acked_again_s": every and round(every, 3),
                "max_publish_latency_s": round(max(stalled), 3),
            }
            await asyncio.sleep(3)

            figures["rss_kib_mid_stream"] = rss_figures(cluster, gateways)

            # 2. kill -9 gateway 0: its devices resume on gateway 1 with ``since``.
            moved = [d for d in devices if d.where == 0]
            before = {id(d): d.reconnects for d in moved}
            gw_killed_at = time.monotonic()
            await asyncio.to_thread(gateways.kill, 0)

            def caught_up() -> bool:
                return all(
                    d.reconnects > before[id(d)] and d.where == 1 and d.view.live for d in moved
                )

            await wait_for(caught_up, 30, "devices of the killed gateway caught up elsewhere")
            figures["gateway_kill"] = {
                "devices_moved": len(moved),
                "all_caught_up_on_other_gateway_s": round(time.monotonic() - gw_killed_at, 3),
            }
            await asyncio.sleep(3)
            restarted_at = time.monotonic()
            await gateways.start(0)
            figures["gateway_kill"]["restart_ready_s"] = round(time.monotonic() - restarted_at, 3)
            # Send the moved devices home to the restarted gateway (a second handover).
            for device in moved:
                await device.disconnect()
            await wait_for(
                lambda: all(d.where == 0 and d.view.live for d in moved), 30, "devices home"
            )
            await asyncio.sleep(4)

            streaming.clear()
            await asyncio.wait_for(asyncio.gather(*producers), 90)
            ends = {f"{sid}:r:run-{sid}:end" for sid in sids}
            if not ends <= history.acks.keys():
                raise AssertionError("not every run ended")
            await wait_for(
                lambda: all(
                    d.view.received and d.view.received[-1][1].get("type") == "run.completed"
                    for d in devices
                ),
                30,
                "every device saw its run complete",
            )
        found = await leaders.placements(admin, log.streams)
        stored = sum(p.bytes for p in found)
        figures["stream_after_rollups"] = {
            "messages": sum(p.messages for p in found),
            "bytes": stored,
            "bytes_per_session": round(stored / SESSIONS),
            "per_stream": {p.stream: p.messages for p in found},
        }
        verdicts = [check(d, history) for d in devices]
        total = {
            name: sum(getattr(v, name) for v in verdicts)
            for name in (
                "expected",
                "received",
                "lost",
                "duplicated",
                "unexpected",
                "out_of_order",
                "wrong_text",
            )
        }
        texts_ok = all(d.view.texts.get("m") == full_text(d.session, history) for d in devices)
        figures |= {
            "acked_events": len(history.acks),
            "publish_calls": history.attempts,
            "sdk_attempts": dict(history.raw),
            "unacked_after_retries": sum(history.unacked.values()),
            "events_checked": total,
            "view_violations": sum(len(d.view.violations) for d in devices),
            "final_texts_match": texts_ok,
            "reconnects": sum(d.reconnects for d in devices) - len(devices),
            "duration_s": round(time.monotonic() - began, 1),
        }
        print(orjson.dumps(figures, option=orjson.OPT_INDENT_2).decode())
        artifact = (
            ARTIFACT
            if log.partitions == 1
            else ARTIFACT.with_name(f"cluster-partitions-{log.partitions}.json")
        )
        artifact.parent.mkdir(exist_ok=True)
        artifact.write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2))
        assert total["lost"] == 0 and total["duplicated"] == 0, figures
        assert total["unexpected"] == 0 and total["out_of_order"] == 0, figures
        assert total["wrong_text"] == 0 and figures["view_violations"] == 0, figures
        assert texts_ok, figures
    finally:
        for task in producers:
            task.cancel()
        await asyncio.gather(*producers, return_exceptions=True)
        await asyncio.gather(*(d.close() for d in devices), return_exceptions=True)
        for close in closers:
            with contextlib.suppress(Exception):
                await close()
        await asyncio.to_thread(gateways.stop)


@pytest.mark.parametrize("sync", ["always", "default"])
async def test_single_node_kill9_keeps_acknowledged_events(tmp_path: Path, sync: str) -> None:
    """Every event acked before a kill -9 of a single nats-server is there after its restart."""
    server = EmbeddedNats(tmp_path / "nats", port=-1, sync=sync)
    await asyncio.to_thread(server.start)
    try:
        nc = await natsconn.connect(server.settings("durability"))
        await ensure_stream(nc, LogSettings())
        js = nc.jetstream(timeout=5)
        acked: dict[int, bytes] = {}

        async def publisher(worker: int) -> None:
            for n in itertools.count():
                body = orjson.dumps({"v": 1, "type": "run.progress", "n": n, "w": worker})
                ack = await js.publish(
                    f"tether.s.durable.r.w{worker}", body, headers={"Nats-Msg-Id": f"{worker}:{n}"}
                )
                acked[ack.seq] = body

        tasks = [asyncio.create_task(publisher(w)) for w in range(8)]
        await asyncio.sleep(1.0)  # kill mid-stream: some publishes are in flight
        server.kill()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(OSError):
            await nc.close()
        await asyncio.to_thread(server.start)  # same store and port
        nc = await natsconn.connect(server.settings("durability-check"))
        missing = 0
        for seq, body in acked.items():
            reply = await nc.request(
                f"$JS.API.DIRECT.GET.{STREAM}", orjson.dumps({"seq": seq}), timeout=5
            )
            if reply.data != body:
                missing += 1
        print(f"sync {sync}: acked before kill -9: {len(acked)}, missing after restart: {missing}")
        assert acked, "nothing was acknowledged before the kill"
        assert missing == 0
        await nc.close()
    finally:
        await asyncio.to_thread(server.stop)


async def test_gateway_spreads_partition_leaders_again_after_a_node_returns(
    tmp_path: Path,
) -> None:
    """A node's kill hands its partition leaders to the survivors; once it is back, a
    gateway's leader balancer spreads them over all three nodes again by itself."""
    nodes = LocalCluster(tmp_path / "cluster", partitions=PARTITIONS)
    await asyncio.to_thread(nodes.start)
    gateway: ServiceProcess | None = None
    admin = None
    try:
        gateway = await asyncio.to_thread(
            ServiceProcess,
            ["gateway"],
            nodes,  # type: ignore[arg-type]  # duck-typed: client_env(role)
            {"TETHER_LEADER_BALANCE_SECONDS": "1"},
            role="gateway",
        )
        admin = await natsconn.connect(nodes.settings("balance-admin"))
        streams = LogSettings(partitions=PARTITIONS).streams
        start = {s: await wait_stream(admin, s, 3) for s in streams}
        assert len(set(start.values())) == 3, start  # spread when the gateway created them
        victim = nodes.node_named(start[streams[0]])
        await asyncio.to_thread(nodes.kill, victim)
        moved = {s: await wait_stream(admin, s, 2) for s in streams}
        assert len(set(moved.values())) == 2, moved  # the survivors lead everything
        await asyncio.to_thread(nodes.restart, victim, 60.0)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while True:
            found = await leaders.placements(admin, streams)
            if len({p.leader for p in found}) == 3:
                break
            assert loop.time() < deadline, f"leaders not spread again: {found}"
            await asyncio.sleep(0.2)
        assert nodes.nodes[victim].name in {p.leader for p in found}
    finally:
        if admin is not None:
            await natsconn.close(admin)
        if gateway is not None:
            await asyncio.to_thread(gateway.stop)
        await asyncio.to_thread(nodes.stop)

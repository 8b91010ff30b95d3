"""End-to-end latency: agent publish -> device WebSocket receive, against raw NATS.

    python -m benchmarks.latency                    # 100 sessions x 50 tokens/s, 10 s
    python -m benchmarks.latency --sessions 1000 --seconds 20

Processes (all on loopback): the bundled nats-server, ONE gateway subprocess, an agents
process (one ``shared.agent`` session per session id; each token is a
``Message.append`` with coalescing 0 whose text is ``str(time.time_ns())``) and a
devices process (one WebSocket per session, ``since=0``). The devices process computes
``receive time_ns - text`` for every live ``message.delta``.

Baseline, in the same run and at the same session count and aggregate rate: a publisher
process doing core NATS publishes (nats-py, a JSON payload shaped like a delta event,
one subject per session) and a subscriber process with one subscription per session.

Every publisher sends on a fixed schedule (rate per session, phases spread evenly) and
stops when the window closes. The first ``--warmup`` seconds of each round are not
measured. A token counts when the publisher stamped it inside the measurement window;
the receiver reports the latency of those. Publisher "lag" is how late a token left
against its schedule (high lag = publisher saturated; the latency then excludes that
wait). Raw and tether alternate ``--rounds`` times so drifting machine load hits both.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import sys
import tempfile
import time
from array import array
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

from benchmarks._common import (
    RESULTS,
    SECRET,
    Child,
    Children,
    cpu_seconds,
    emit,
    event_loop,
    install_signal_exit,
    latency_summary,
    machine_cpu_seconds,
    machine_info,
    quiet_logs,
    ratio,
    say,
    start_gateway,
    start_nats,
    table,
    watch_parent,
    write_json,
)
from shared import loop, natsconn, subjects
from shared.server import EmbeddedNats
from shared.settings import LogSettings
from shared.streams import ensure_stream

MODULE = "benchmarks.latency"
RAW_PREFIX = "bench.raw"
_KEEP: list[object] = []  # strong references to the stdin reader and its task


def session_ids(count: int, tag: str) -> list[str]:
    return [f"lat{i:05d}-{tag}" for i in range(count)]


# ---- helpers for the child roles -------------------------------------------------------------


async def stdin_commands() -> asyncio.Queue[dict[str, Any]]:
    """Commands from the benchmark process, one JSON object per stdin line."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def pump() -> None:
        while True:
            line = await reader.readline()
            if not line:
                await queue.put({"cmd": "eof"})
                return
            await queue.put(orjson.loads(line))

    _KEEP.extend([reader, asyncio.get_running_loop().create_task(pump())])
    return queue


async def next_command(queue: asyncio.Queue[dict[str, Any]], *cmds: str) -> dict[str, Any]:
    while True:
        record = await queue.get()
        if record.get("cmd") in cmds:
            return record
        if record.get("cmd") == "eof":
            raise SystemExit(4)


class Recorder:
    """A receiver's latencies: tokens stamped inside a measurement window count.

    Windows accumulate (one per round); ``recent`` is the rolling one-second view.
    """

    def __init__(self) -> None:
        self.measure_ns = 1 << 62
        self.end_ns = 1 << 62
        self.latencies = array("q")
        self.recent = array("q")
        self.total = 0
        self.bad = 0

    def record(self, sent_ns: int, now_ns: int) -> None:
        self.total += 1
        latency = now_ns - sent_ns
        self.recent.append(latency)
        if self.measure_ns <= sent_ns < self.end_ns:
            self.latencies.append(latency)

    async def report_every_second(self) -> None:
        last_t, last_total = time.monotonic(), self.total
        while True:
            await asyncio.sleep(1.0)
            recent, self.recent = self.recent, array("q")
            summary = latency_summary(recent)
            now = time.monotonic()
            emit(
                {
                    "event": "progress",
                    "rate": (self.total - last_total) / (now - last_t),
                    "recent_p50_ms": summary["p50_ms"],
                    "recent_p99_ms": summary["p99_ms"],
                }
            )
            last_t, last_total = now, self.total

    async def serve(self, commands: asyncio.Queue[dict[str, Any]], drain_seconds: float) -> None:
        """Per round: ``window``, then ``finish`` with the cumulative expected count."""
        while True:
            command = await next_command(commands, "window", "stop")
            if command["cmd"] == "stop":
                return
            self.measure_ns, self.end_ns = int(command["measure_ns"]), int(command["end_ns"])
            first = len(self.latencies)
            progress = asyncio.create_task(self.report_every_second())
            command = await next_command(commands, "finish")
            expected = int(command["expected"])
            loop = asyncio.get_running_loop()
            deadline = loop.time() + drain_seconds
            while len(self.latencies) < expected and loop.time() < deadline:
                await asyncio.sleep(0.05)
            progress.cancel()
            emit(
                {
                    "event": "result",
                    "expected": expected,
                    "received": len(self.latencies),
                    "bad": self.bad,
                    "latency": latency_summary(self.latencies),
                    "round_latency": latency_summary(self.latencies[first:]),
                }
            )


class Schedule:
    """The token schedule of one publisher process for one round."""

    def __init__(self, command: dict[str, Any], sessions: int, rate: float) -> None:
        self.start_ns = int(command["start_ns"])
        self.measure_ns = int(command["measure_ns"])
        self.end_ns = int(command["end_ns"])
        self.interval_ns = int(1e9 / rate)
        self.sessions = sessions

    def first(self, index: int) -> int:
        return self.start_ns + (index * self.interval_ns) // self.sessions

    async def wait(self, due_ns: int) -> None:
        delay = due_ns - time.time_ns()
        if delay > 0:
            await asyncio.sleep(delay / 1e9)

    def measured(self, sent_ns: int) -> bool:
        return self.measure_ns <= sent_ns < self.end_ns


class Sent:
    """What a publisher process sent, over every round."""

    def __init__(self) -> None:
        self.total = 0
        self.measured = 0
        self.lag = array("q")  # how late a token left against its schedule
        self.ack = array("q")  # JetStream publish -> ack (agents only)
        self.not_sent = 0

    def one(self, schedule: Schedule, due_ns: int, sent_ns: int, ack_ns: int = 0) -> None:
        self.total += 1
        if schedule.measured(sent_ns):
            self.measured += 1
            self.lag.append(sent_ns - due_ns)
            if ack_ns:
                self.ack.append(ack_ns - sent_ns)

    def missed(self, schedule: Schedule, due_ns: int) -> None:
        """Tokens of the window still unsent when it closed (the publisher fell behind)."""
        while due_ns < schedule.end_ns:
            if due_ns >= schedule.measure_ns:
                self.not_sent += 1
            due_ns += schedule.interval_ns

    async def report_every_second(self) -> None:
        last_t, last_total = time.monotonic(), self.total
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            emit({"event": "progress", "rate": (self.total - last_total) / (now - last_t)})
            last_t, last_total = now, self.total

    def done(self) -> dict[str, Any]:
        lag = latency_summary(self.lag)
        return {
            "event": "done",
            "sent": self.total,
            "measured_sent": self.measured,
            "not_sent": self.not_sent,
            "lag": lag,
            "ack": latency_summary(self.ack) if self.ack else None,
        }

    async def serve(
        self,
        commands: asyncio.Queue[dict[str, Any]],
        sessions: int,
        rate: float,
        stream: Callable[[Schedule, int], Awaitable[None]],
    ) -> None:
        """Per round: ``go`` with the window, run every session's stream, report ``done``."""
        while True:
            command = await next_command(commands, "go", "stop")
            if command["cmd"] == "stop":
                return
            schedule = Schedule(command, sessions, rate)
            progress = asyncio.create_task(self.report_every_second())
            await asyncio.gather(*(stream(schedule, i) for i in range(sessions)))
            progress.cancel()
            emit(self.done())


def delta_payload(session: str, index: int, sent_ns: int) -> bytes:
    """The raw baseline's payload: shaped like a stored ``message.delta`` event."""
    return orjson.dumps(
        {
            "v": 1,
            "type": "message.delta",
            "session": session,
            "ts": sent_ns // 1_000_000,
            "message": "run-0123456789abcdefghijklmn-m1",
            "i": index,
            "text": str(sent_ns),
        }
    )


async def nats_connect(name: str) -> Any:
    import nats

    return await nats.connect(
        servers=[os.environ["TETHER_NATS_URL"]],
        user=os.environ["TETHER_NATS_USER"],
        password=os.environ["TETHER_NATS_PASSWORD"],
        name=name,
        pending_size=64 * 1024 * 1024,
    )


# ---- child roles -------------------------------------------------------------------------------


async def role_raw_sub(args: argparse.Namespace) -> None:
    commands = await stdin_commands()
    recorder = Recorder()
    nc = await nats_connect("bench-raw-sub")

    async def on_message(msg: Any) -> None:
        now = time.time_ns()
        try:
            sent = int(orjson.loads(msg.data)["text"])
        except (ValueError, KeyError, TypeError):
            recorder.bad += 1
            return
        recorder.record(sent, now)

    for sid in session_ids(args.sessions, args.tag):
        await nc.subscribe(
            f"{RAW_PREFIX}.{sid}",
            cb=on_message,
            pending_msgs_limit=1_000_000,
            pending_bytes_limit=512 * 1024 * 1024,
        )
    await nc.flush()
    emit({"event": "ready"})
    await recorder.serve(commands, args.drain)
    await nc.close()


async def role_tap(args: argparse.Namespace) -> None:
    """Optional: agent publish -> republished ``tether.live`` message, before the gateway."""
    commands = await stdin_commands()
    recorder = Recorder()
    nc = await nats_connect("bench-tap")

    async def on_message(msg: Any) -> None:
        now = time.time_ns()
        event = orjson.loads(msg.data)
        if event.get("type") == "message.delta":
            try:
                recorder.record(int(event["text"]), now)
            except (ValueError, KeyError, TypeError):
                recorder.bad += 1

    await nc.subscribe(
        f"{subjects.LIVE_ROOT}.>",
        cb=on_message,
        pending_msgs_limit=1_000_000,
        pending_bytes_limit=512 * 1024 * 1024,
    )
    await nc.flush()
    emit({"event": "ready"})
    await recorder.serve(commands, args.drain)
    await nc.close()


async def role_raw_pub(args: argparse.Namespace) -> None:
    commands = await stdin_commands()
    nc = await nats_connect("bench-raw-pub")
    sids = session_ids(args.sessions, args.tag)
    counters = [0] * len(sids)
    sent = Sent()
    emit({"event": "ready"})

    async def stream(schedule: Schedule, index: int) -> None:
        sid = sids[index]
        subject = f"{RAW_PREFIX}.{sid}"
        due = schedule.first(index)
        while due < schedule.end_ns and time.time_ns() < schedule.end_ns:
            await schedule.wait(due)
            now = time.time_ns()
            await nc.publish(subject, delta_payload(sid, counters[index], now))
            counters[index] += 1
            sent.one(schedule, due, now)
            due += schedule.interval_ns
        sent.missed(schedule, due)

    await sent.serve(commands, len(sids), args.rate, stream)
    await nc.close()


async def role_agents(args: argparse.Namespace) -> None:
    from shared import agent
    from shared.settings import LogSettings, NatsSettings

    commands = await stdin_commands()
    client = await agent.connect(
        NatsSettings.from_env(name="bench-agents"),
        log_settings=LogSettings(),
        coalesce_ms=0,
        checkpoint_chunks=None if args.checkpoint_chunks < 0 else args.checkpoint_chunks,
    )
    sids = session_ids(args.sessions, args.tag)
    limit = asyncio.Semaphore(100)

    async def open_message(sid: str) -> agent.Message:
        async with limit:
            run = agent.Run(client.session(sid), f"run-{sid}")
            await run.start()
            message = run.message(coalesce_ms=0)
            await message.start()
            return message

    messages = await asyncio.gather(*(open_message(sid) for sid in sids))
    sent = Sent()
    emit({"event": "ready"})

    async def stream(schedule: Schedule, index: int) -> None:
        message = messages[index]
        due = schedule.first(index)
        while due < schedule.end_ns and time.time_ns() < schedule.end_ns:
            await schedule.wait(due)
            now = time.time_ns()
            await message.append(str(now))  # coalescing 0: one acked publish per token
            sent.one(schedule, due, now, time.time_ns())
            due += schedule.interval_ns
        sent.missed(schedule, due)

    await sent.serve(commands, len(sids), args.rate, stream)
    await client.close()


async def role_devices(args: argparse.Namespace) -> None:
    import aiohttp

    from shared.tokens import mint

    commands = await stdin_commands()
    recorder = Recorder()
    token = mint(SECRET, subject="bench-device", sessions=["*"], ttl_seconds=3600)
    url = f"ws://127.0.0.1:{args.gateway_port}/v1/sessions/{{}}/ws"
    live: set[str] = set()
    all_live = asyncio.Event()
    sids = session_ids(args.sessions, args.tag)

    async def device(http: aiohttp.ClientSession, sid: str, limit: asyncio.Semaphore) -> None:
        async with limit:
            ws = await http.ws_connect(
                url.format(sid), params={"token": token, "since": "0"}, max_msg_size=0
            )
        async for msg in ws:
            now = time.time_ns()
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            frame = orjson.loads(msg.data)
            kind = frame.get("type")
            if kind == "event":
                event = frame["event"]
                if event.get("type") == "message.delta":
                    try:
                        recorder.record(int(event["text"]), now)
                    except (ValueError, KeyError, TypeError):
                        recorder.bad += 1
            elif kind == "caught_up":
                live.add(sid)
                if len(live) == len(sids):
                    all_live.set()
            elif kind == "error":
                emit({"event": "error", "error": f"{sid}: {frame}"})
        emit({"event": "error", "error": f"{sid}: WebSocket closed with {ws.close_code}"})

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        limit = asyncio.Semaphore(50)
        tasks = [asyncio.create_task(device(http, sid, limit)) for sid in sids]
        await asyncio.wait_for(all_live.wait(), 120)
        emit({"event": "ready"})
        await recorder.serve(commands, args.drain)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


ROLES = {
    "tap": role_tap,
    "raw-sub": role_raw_sub,
    "raw-pub": role_raw_pub,
    "agents": role_agents,
    "devices": role_devices,
}


async def run_role(args: argparse.Namespace) -> None:
    quiet_logs(f"bench-{args.role}")
    watchdog = asyncio.create_task(watch_parent())
    try:
        await asyncio.wait_for(ROLES[args.role](args), args.hard_timeout)
    except Exception as exc:
        emit({"event": "error", "error": repr(exc)})
        raise
    finally:
        watchdog.cancel()


# ---- the benchmark process --------------------------------------------------------------------


class System:
    """One system under test (raw or tether): a publisher and a receiver process.

    Each ``run_round`` measures ``seconds / rounds`` after a warm-up, prints progress
    once a second and accumulates the CPU time of ``pids`` over the measured windows.
    """

    def __init__(
        self,
        name: str,
        args: argparse.Namespace,
        publisher: Child,
        receiver: Child,
        pids: dict[str, int],
        tap: Child | None = None,
    ) -> None:
        self.name = name
        self.tap = tap
        self.tap_result: dict[str, Any] = {}
        self.args = args
        self.publisher = publisher
        self.receiver = receiver
        self.pids = pids
        self.sent_rate = 0.0
        self.recv_rate = 0.0
        self.recent_p50 = float("nan")
        self.recent_p99 = float("nan")
        self.cpu = dict.fromkeys(pids, 0.0)
        self.measured_seconds = 0.0
        self.rounds: list[dict[str, Any]] = []
        self.done: dict[str, Any] = {}
        self.result: dict[str, Any] = {}

    def on_publisher(self, record: dict[str, Any]) -> None:
        if record.get("event") == "progress":
            self.sent_rate = float(record["rate"])

    def on_receiver(self, record: dict[str, Any]) -> None:
        if record.get("event") == "progress":
            self.recv_rate = float(record["rate"])
            self.recent_p50 = float(record["recent_p50_ms"])
            self.recent_p99 = float(record["recent_p99_ms"])

    def cpu_now(self) -> dict[str, float]:
        used = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        busy, steal = machine_cpu_seconds()
        return {**used, "machine": busy, "steal": steal}

    async def run_round(self, index: int) -> None:
        args = self.args
        seconds = args.seconds / args.rounds
        start_ns = time.time_ns() + 300_000_000
        measure_ns = start_ns + int(args.warmup * 1e9)
        end_ns = measure_ns + int(seconds * 1e9)
        window = {"measure_ns": measure_ns, "end_ns": end_ns}
        self.receiver.send({"cmd": "window", **window})
        if self.tap is not None:
            self.tap.send({"cmd": "window", **window})
        self.publisher.send({"cmd": "go", "start_ns": start_ns, **window})
        limit = seconds + args.warmup + 60
        done_task = asyncio.create_task(self.publisher.expect("done", limit, self.on_publisher))
        cpu_task = asyncio.create_task(self.cpu_between(measure_ns, end_ns))
        last_cpu, last_t = self.cpu_now(), time.monotonic()
        try:
            while not done_task.done():
                await asyncio.wait({done_task}, timeout=1.0)
                self.drain_receiver()
                now_ns = time.time_ns()
                t, cpu = time.monotonic(), self.cpu_now()
                usage = " ".join(
                    f"{n} {100 * (cpu[n] - last_cpu[n]) / (t - last_t):3.0f}%"
                    for n in (*self.pids, "steal")
                )
                last_cpu, last_t = cpu, t
                stage = "warmup " if now_ns < measure_ns else "measure"
                say(
                    f"  [{self.name:6} {index + 1}/{args.rounds}] {stage}"
                    f" {(now_ns - start_ns) / 1e9:5.1f}s"
                    f"  sent {self.sent_rate:6,.0f}/s  recv {self.recv_rate:6,.0f}/s"
                    f"  last-1s p50 {self.recent_p50:7.2f} p99 {self.recent_p99:7.2f} ms"
                    f"  cpu: {usage}"
                )
            self.done = done_task.result()
            for name, used in (await cpu_task).items():
                self.cpu[name] = self.cpu.get(name, 0.0) + used
        finally:
            done_task.cancel()
            cpu_task.cancel()
        self.measured_seconds += seconds
        self.receiver.send({"cmd": "finish", "expected": self.done["measured_sent"]})
        self.result = await self.receiver.expect("result", args.drain + 30, self.on_receiver)
        if self.tap is not None:
            self.tap.send({"cmd": "finish", "expected": self.done["measured_sent"]})
            self.tap_result = await self.tap.expect("result", args.drain + 30)
        round_latency = self.result["round_latency"]
        self.rounds.append(round_latency)
        say(
            f"  [{self.name:6} {index + 1}/{args.rounds}] round: {round_latency['count']:,}"
            f" tokens, p50 {round_latency['p50_ms']:.2f} ms, p99 {round_latency['p99_ms']:.2f} ms"
        )

    async def cpu_between(self, start_ns: int, end_ns: int) -> dict[str, float]:
        """CPU seconds each process used between two wall-clock instants."""
        await asyncio.sleep(max(0, start_ns - time.time_ns()) / 1e9)
        before = self.cpu_now()
        await asyncio.sleep(max(0, end_ns - time.time_ns()) / 1e9)
        after = self.cpu_now()
        return {name: after[name] - before[name] for name in after}

    def drain_receiver(self) -> None:
        while not self.receiver.records.empty():
            record = self.receiver.records.get_nowait()
            if record.get("event") in ("error", "exit"):
                raise RuntimeError(f"{self.receiver.name}: {record}{self.receiver.tail()}")
            self.on_receiver(record)

    def summary(self) -> dict[str, Any]:
        done, result, span = self.done, self.result, self.measured_seconds
        return {
            "sent": done["measured_sent"],
            "received": result["received"],
            "lost_or_late": done["measured_sent"] - result["received"],
            "achieved_rate_per_s": round(done["measured_sent"] / span, 1),
            "scheduled_but_not_sent": done["not_sent"],
            "target_rate_per_s": self.args.sessions * self.args.rate,
            "latency": result["latency"],
            "rounds": self.rounds,
            "publisher_lag": done["lag"],
            "publish_to_ack": done["ack"],
            "cpu_percent": {n: round(100 * v / span, 1) for n, v in self.cpu.items()},
            "cpu_percent_others": round(
                100
                * (self.cpu.get("machine", 0.0) - sum(self.cpu.get(n, 0.0) for n in self.pids))
                / span,
                1,
            ),
            "publish_to_live_subject": self.tap_result.get("latency"),
        }


def child_args(args: argparse.Namespace, role: str, **extra: Any) -> list[str]:
    out = ["-m", MODULE, "--role", role, "--sessions", str(args.sessions)]
    out += ["--rate", str(args.rate), "--tag", args.tag, "--drain", str(args.drain)]
    out += ["--hard-timeout", str(hard_limit(args))]
    out += ["--checkpoint-chunks", str(args.checkpoint_chunks)]
    for key, value in extra.items():
        out += [f"--{key.replace('_', '-')}", str(value)]
    return out


def hard_limit(args: argparse.Namespace) -> float:
    """Wall-clock bound of the whole benchmark; children get the same bound."""
    per_round = 2 * (args.seconds / args.rounds + args.warmup + args.drain + 5)
    return args.rounds * per_round + 300


async def start_systems(
    args: argparse.Namespace, children: Children, server: EmbeddedNats
) -> dict[str, System]:
    env = server.client_env()
    assert server.process is not None
    nats_pid = server.process.pid
    say("starting raw NATS baseline: publisher and subscriber processes (core NATS)")
    sub = await children.start("raw-sub", child_args(args, "raw-sub"), env)
    await sub.expect("ready", 60)
    pub = await children.start("raw-pub", child_args(args, "raw-pub"), env)
    await pub.expect("ready", 60)
    raw = System("raw", args, pub, sub, {"nats": nats_pid, "pub": pub.pid, "sub": sub.pid})

    say("starting tether: gateway, devices (WebSocket) and agents (shared.agent) processes")
    gateway, port = await start_gateway(children, server)
    devices = await children.start("devices", child_args(args, "devices", gateway_port=port), env)
    await devices.expect("ready", 150)
    say(f"  {args.sessions} devices live on the gateway (port {port})")
    tap = None
    if args.tap:
        tap = await children.start("tap", child_args(args, "tap"), env)
        await tap.expect("ready", 60)
    agents = await children.start("agents", child_args(args, "agents"), env)
    await agents.expect("ready", 150)
    pids = {"nats": nats_pid, "gw": gateway.pid, "agents": agents.pid, "devices": devices.pid}
    if tap is not None:
        pids["tap"] = tap.pid
    tether = System("tether", args, agents, devices, pids, tap)
    return {"raw": raw, "tether": tether}


def checkpoint_chunks(args: argparse.Namespace) -> int:
    """The agents' effective checkpoint interval (as ``shared.agent.connect`` resolves it)."""
    if args.checkpoint_chunks >= 0:
        return int(args.checkpoint_chunks)
    from shared import agent

    raw = os.environ.get("TETHER_CHECKPOINT_CHUNKS")
    return int(raw) if raw else agent.DEFAULT_CHECKPOINT_CHUNKS


def print_report(args: argparse.Namespace, raw: dict[str, Any], tether: dict[str, Any]) -> None:
    rows: list[list[Any]] = []
    for name, res in (("raw NATS", raw), ("tether", tether)):
        lat = res["latency"]
        rows.append(
            [
                name,
                res["sent"],
                res["received"],
                res["achieved_rate_per_s"],
                lat["p50_ms"],
                lat["p99_ms"],
                lat["p999_ms"],
                lat["max_ms"],
                res["publisher_lag"]["p99_ms"],
            ]
        )
    rows.append(
        ["ratio tether/raw", "", "", ""]
        + [
            ratio(tether["latency"][key], raw["latency"][key])
            for key in ("p50_ms", "p99_ms", "p999_ms", "max_ms")
        ]
        + [""]
    )
    say()
    say(
        f"end-to-end latency (ms): {args.sessions} sessions x {args.rate:g} tokens/s,"
        f" {args.seconds:g} s measured per system in {args.rounds} round(s),"
        f" agent checkpoints every {checkpoint_chunks(args) or 'never'} chunks"
    )
    headers = ["", "sent", "received", "rate/s", "p50", "p99", "p99.9", "max", "pub lag p99"]
    say(table(headers, rows))
    for name, res in (("raw", raw), ("tether", tether)):
        if res["achieved_rate_per_s"] < 0.95 * res["target_rate_per_s"]:
            say(
                f"  ! {name}: the publisher reached {res['achieved_rate_per_s']:,.0f} of"
                f" {res['target_rate_per_s']:,.0f} tokens/s (saturated;"
                f" {res['scheduled_but_not_sent']:,} tokens due in the window never left):"
                " latencies are not comparable"
            )
    ack = tether["publish_to_ack"]
    if ack:
        say(
            f"  tether publish->ack (agent side): p50 {ack['p50_ms']:.2f} ms,"
            f" p99 {ack['p99_ms']:.2f} ms"
        )
    live = tether["publish_to_live_subject"]
    if live:
        say(
            f"  tether publish->tether.live subscriber (--tap, no gateway): p50"
            f" {live['p50_ms']:.2f} ms, p99 {live['p99_ms']:.2f} ms"
        )
    say(
        "  cpu% (of one core; 'machine' = all processes on all cores, 'steal' = taken by the"
        " hypervisor):"
    )
    say(f"    raw:    {raw['cpu_percent']}, other processes {raw['cpu_percent_others']}")
    say(f"    tether: {tether['cpu_percent']}, other processes {tether['cpu_percent_others']}")


async def orchestrate(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="tether-bench-latency-"))
    children = Children(work)
    server: EmbeddedNats | None = None
    try:
        say(f"starting nats-server (data in {work})")
        server = await asyncio.to_thread(start_nats, work / "nats")
        # The stream exists before the gateway and agents start, as in a deployment.
        nc = await natsconn.connect(server.settings("bench-setup"))
        await ensure_stream(nc, LogSettings())
        await nc.close()
        machine = machine_info()
        systems = await start_systems(args, children, server)
        for index in range(args.rounds):
            for name in ("raw", "tether"):
                await systems[name].run_round(index)
        raw, tether = systems["raw"].summary(), systems["tether"].summary()
        print_report(args, raw, tether)
        return {
            "benchmark": "latency",
            "config": {
                "sessions": args.sessions,
                "rate_per_session": args.rate,
                "seconds_per_system": args.seconds,
                "rounds": args.rounds,
                "warmup_seconds_per_round": args.warmup,
                "checkpoint_chunks": checkpoint_chunks(args),
            },
            "machine": {**machine, "event_loop": event_loop()},
            "raw": raw,
            "tether": tether,
            "ratio_tether_over_raw": {
                key: ratio(tether["latency"][f"{key}_ms"], raw["latency"][f"{key}_ms"])
                for key in ("p50", "p99", "p999", "max")
            },
        }
    finally:
        await children.stop_all()
        if server is not None:
            await asyncio.to_thread(server.stop)
        shutil.rmtree(work, ignore_errors=True)


def save(path: Path, result: dict[str, Any]) -> None:
    """Keep one entry per session count in the JSON file."""
    existing: Any = {}
    if path.exists():
        try:
            existing = orjson.loads(path.read_bytes())
        except orjson.JSONDecodeError:
            existing = {}
    runs = existing.get("runs", {}) if isinstance(existing, dict) else {}
    runs[str(result["config"]["sessions"])] = result
    write_json(path, {"benchmark": "latency", "runs": runs})
    say(f"\nwrote {path}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.latency",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--rate", type=float, default=50.0, help="tokens per second per session")
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="measured seconds per system (all rounds)"
    )
    parser.add_argument(
        "--rounds", type=int, default=2, help="alternate raw and tether this many times"
    )
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before each round")
    parser.add_argument("--drain", type=float, default=15.0, help="max wait for stragglers")
    parser.add_argument(
        "--tap",
        action="store_true",
        help="also time agent -> tether.live subscriber (one more process; perturbs the run)",
    )
    parser.add_argument(
        "--checkpoint-chunks",
        type=int,
        default=-1,
        help="agents' checkpoint interval in chunks (0 = off; default: the SDK's default)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "latency.json")
    parser.add_argument("--role", choices=sorted(ROLES), help=argparse.SUPPRESS)
    parser.add_argument("--tag", default="", help=argparse.SUPPRESS)
    parser.add_argument("--gateway-port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--hard-timeout", type=float, default=600.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.sessions < 1 or args.rate <= 0 or args.seconds <= 0 or args.rounds < 1:
        parser.error("--sessions, --rate, --seconds and --rounds must be positive")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.role:
        loop.run(run_role(args))  # the project's event loop (uvloop unless configured)
        return
    install_signal_exit()
    quiet_logs("bench", "error")
    args.tag = secrets.token_hex(3)
    try:
        result = asyncio.run(asyncio.wait_for(orchestrate(args), hard_limit(args)))
    except KeyboardInterrupt:
        say("interrupted; every child process was stopped")
        sys.exit(130)
    save(args.out, result)


if __name__ == "__main__":
    main()

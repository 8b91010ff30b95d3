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

Every publisher sends on a fixed schedule (rate per session, phases spread evenly). The
first ``--warmup`` seconds are not measured. A token counts when the publisher stamped
it inside the measurement window; the receiver reports the latency of those. Publisher
"lag" is how late a token left against its schedule (high lag = publisher saturated).
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
    install_signal_exit,
    latency_summary,
    machine_info,
    ratio,
    say,
    start_gateway,
    start_nats,
    table,
    watch_parent,
    write_json,
)

MODULE = "benchmarks.latency"
RAW_PREFIX = "bench.raw"


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

    asyncio.get_running_loop().create_task(pump())
    return queue


async def next_command(queue: asyncio.Queue[dict[str, Any]], cmd: str) -> dict[str, Any]:
    while True:
        record = await queue.get()
        if record.get("cmd") == cmd:
            return record
        if record.get("cmd") == "eof":
            raise SystemExit(4)


class Recorder:
    """Latencies of tokens stamped inside the window, plus a rolling one-second view."""

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

    def progress(self) -> dict[str, Any]:
        recent, self.recent = self.recent, array("q")
        summary = latency_summary(recent)
        return {
            "event": "progress",
            "measured": len(self.latencies),
            "total": self.total,
            "recent_p50_ms": summary["p50_ms"],
            "recent_p99_ms": summary["p99_ms"],
        }

    async def report_every_second(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            emit(self.progress())

    async def finish(self, queue: asyncio.Queue[dict[str, Any]], drain_seconds: float) -> None:
        """Wait for ``finish`` (with the expected count), drain, then emit the result."""
        command = await next_command(queue, "finish")
        expected = int(command["expected"])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_seconds
        while len(self.latencies) < expected and loop.time() < deadline:
            await asyncio.sleep(0.05)
        emit(
            {
                "event": "result",
                "expected": expected,
                "received": len(self.latencies),
                "bad": self.bad,
                "latency": latency_summary(self.latencies),
            }
        )


class Schedule:
    """The token schedule of one publisher process."""

    def __init__(self, command: dict[str, Any], sessions: int, rate: float) -> None:
        self.start_ns = int(command["start_ns"])
        self.measure_ns = int(command["measure_ns"])
        self.end_ns = int(command["end_ns"])
        self.interval_ns = int(1e9 / rate)
        self.sessions = sessions
        self.sent = 0
        self.measured = 0
        self.lag = array("q")

    def first(self, index: int) -> int:
        return self.start_ns + (index * self.interval_ns) // self.sessions

    async def wait(self, due_ns: int) -> None:
        delay = due_ns - time.time_ns()
        if delay > 0:
            await asyncio.sleep(delay / 1e9)

    def sent_one(self, due_ns: int, sent_ns: int) -> None:
        self.sent += 1
        if self.measure_ns <= sent_ns < self.end_ns:
            self.measured += 1
            self.lag.append(sent_ns - due_ns)

    async def report_every_second(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            emit({"event": "progress", "sent": self.sent, "measured_sent": self.measured})

    def done(self) -> dict[str, Any]:
        lag = latency_summary(self.lag)
        return {
            "event": "done",
            "sent": self.sent,
            "measured_sent": self.measured,
            "lag_p50_ms": lag["p50_ms"],
            "lag_p99_ms": lag["p99_ms"],
            "lag_max_ms": lag["max_ms"],
        }


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
    window = await next_command(commands, "window")
    recorder.measure_ns, recorder.end_ns = int(window["measure_ns"]), int(window["end_ns"])
    progress = asyncio.create_task(recorder.report_every_second())
    await recorder.finish(commands, args.drain)
    progress.cancel()
    await nc.close()


async def role_raw_pub(args: argparse.Namespace) -> None:
    commands = await stdin_commands()
    nc = await nats_connect("bench-raw-pub")
    sids = session_ids(args.sessions, args.tag)
    emit({"event": "ready"})
    schedule = Schedule(await next_command(commands, "go"), args.sessions, args.rate)

    async def stream(index: int, sid: str) -> None:
        subject = f"{RAW_PREFIX}.{sid}"
        due = schedule.first(index)
        i = 0
        while due < schedule.end_ns:
            await schedule.wait(due)
            sent = time.time_ns()
            await nc.publish(subject, delta_payload(sid, i, sent))
            schedule.sent_one(due, sent)
            due += schedule.interval_ns
            i += 1

    progress = asyncio.create_task(schedule.report_every_second())
    await asyncio.gather(*(stream(i, sid) for i, sid in enumerate(sids)))
    await nc.flush()
    progress.cancel()
    emit(schedule.done())
    await nc.close()


async def role_agents(args: argparse.Namespace) -> None:
    from shared import agent
    from shared.settings import LogSettings, NatsSettings

    commands = await stdin_commands()
    client = await agent.connect(
        NatsSettings.from_env(name="bench-agents"), log_settings=LogSettings(), coalesce_ms=0
    )
    sids = session_ids(args.sessions, args.tag)
    limit = asyncio.Semaphore(100)

    async def open_message(sid: str) -> agent.Message:
        async with limit:
            session = client.session(sid)
            run = agent.Run(session, f"run-{sid}")
            await run.start()
            message = run.message(coalesce_ms=0)
            await message.start()
            return message

    messages = await asyncio.gather(*(open_message(sid) for sid in sids))
    emit({"event": "ready"})
    schedule = Schedule(await next_command(commands, "go"), args.sessions, args.rate)

    async def stream(index: int, message: agent.Message) -> None:
        due = schedule.first(index)
        while due < schedule.end_ns:
            await schedule.wait(due)
            sent = time.time_ns()
            await message.append(str(sent))
            schedule.sent_one(due, sent)
            due += schedule.interval_ns

    progress = asyncio.create_task(schedule.report_every_second())
    await asyncio.gather(*(stream(i, m) for i, m in enumerate(messages)))
    progress.cancel()
    emit(schedule.done())
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
        emit({"event": "closed", "session": sid, "code": ws.close_code})

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        limit = asyncio.Semaphore(50)
        tasks = [asyncio.create_task(device(http, sid, limit)) for sid in sids]
        await asyncio.wait_for(all_live.wait(), 60)
        emit({"event": "ready"})
        window = await next_command(commands, "window")
        recorder.measure_ns, recorder.end_ns = int(window["measure_ns"]), int(window["end_ns"])
        progress = asyncio.create_task(recorder.report_every_second())
        await recorder.finish(commands, args.drain)
        progress.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


ROLES = {
    "raw-sub": role_raw_sub,
    "raw-pub": role_raw_pub,
    "agents": role_agents,
    "devices": role_devices,
}


async def run_role(args: argparse.Namespace) -> None:
    watchdog = asyncio.create_task(watch_parent())
    try:
        await asyncio.wait_for(ROLES[args.role](args), args.hard_timeout)
    except Exception as exc:
        emit({"event": "error", "error": repr(exc)})
        raise
    finally:
        watchdog.cancel()


# ---- the benchmark process --------------------------------------------------------------------


class Phase:
    """One measured phase: a publisher, a receiver, progress on the terminal."""

    def __init__(
        self, name: str, args: argparse.Namespace, pids: dict[str, int], receiver: Child
    ) -> None:
        self.name = name
        self.args = args
        self.pids = pids
        self.receiver = receiver
        self.sent = 0
        self.received = 0
        self.recent_p50 = float("nan")
        self.recent_p99 = float("nan")

    def on_publisher(self, record: dict[str, Any]) -> None:
        if record.get("event") == "progress":
            self.sent = int(record["sent"])

    def on_receiver(self, record: dict[str, Any]) -> None:
        if record.get("event") == "progress":
            self.received = int(record["total"])
            self.recent_p50 = float(record["recent_p50_ms"])
            self.recent_p99 = float(record["recent_p99_ms"])

    async def run(self, publisher: Child) -> dict[str, Any]:
        args = self.args
        start_ns = time.time_ns() + 300_000_000
        measure_ns = start_ns + int(args.warmup * 1e9)
        end_ns = measure_ns + int(args.seconds * 1e9)
        window = {"measure_ns": measure_ns, "end_ns": end_ns}
        self.receiver.send({"cmd": "window", **window})
        publisher.send({"cmd": "go", "start_ns": start_ns, **window})
        result_task = asyncio.create_task(
            self.receiver.expect(
                "result", args.seconds + args.warmup + args.drain + 60, self.on_receiver
            )
        )
        done_task = asyncio.create_task(
            publisher.expect("done", args.seconds + args.warmup + 60, self.on_publisher)
        )
        cpu_start: dict[str, float] = {}
        cpu_end: dict[str, float] = {}
        last_cpu = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        last_t = time.monotonic()
        prev_sent, prev_recv = 0, 0
        try:
            while not done_task.done():
                await asyncio.wait({done_task}, timeout=1.0)
                now_ns = time.time_ns()
                if not cpu_start and now_ns >= measure_ns:
                    cpu_start = {n: cpu_seconds(p) for n, p in self.pids.items()}
                if not cpu_end and now_ns >= end_ns:
                    cpu_end = {n: cpu_seconds(p) for n, p in self.pids.items()}
                t = time.monotonic()
                cpu_now = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
                usage = " ".join(
                    f"{n} {100 * (cpu_now[n] - last_cpu[n]) / (t - last_t):3.0f}%"
                    for n in self.pids
                )
                last_cpu, last_t = cpu_now, t
                elapsed = (now_ns - start_ns) / 1e9
                stage = "warmup " if now_ns < measure_ns else "measure"
                say(
                    f"  [{self.name:6}] {stage} {elapsed:5.1f}s  sent {self.sent - prev_sent:6,}/s"
                    f"  recv {self.received - prev_recv:6,}/s  last-1s p50 {self.recent_p50:7.2f}"
                    f" p99 {self.recent_p99:7.2f} ms  cpu: {usage}"
                )
                prev_sent, prev_recv = self.sent, self.received
            done = done_task.result()
            if not cpu_end:
                cpu_end = {n: cpu_seconds(p) for n, p in self.pids.items()}
            self.receiver.send({"cmd": "finish", "expected": done["measured_sent"]})
            result = await result_task
        finally:
            for task in (result_task, done_task):
                task.cancel()
        span = args.seconds
        cpu = {
            n: round(100 * (cpu_end.get(n, 0) - cpu_start.get(n, 0)) / span, 1) for n in self.pids
        }
        lat = result["latency"]
        return {
            "sent": done["measured_sent"],
            "received": result["received"],
            "lost_or_late": done["measured_sent"] - result["received"],
            "achieved_rate_per_s": round(done["measured_sent"] / span, 1),
            "target_rate_per_s": args.sessions * args.rate,
            "latency": lat,
            "publisher_lag_p50_ms": done["lag_p50_ms"],
            "publisher_lag_p99_ms": done["lag_p99_ms"],
            "publisher_lag_max_ms": done["lag_max_ms"],
            "cpu_percent": cpu,
        }


def child_args(args: argparse.Namespace, role: str, **extra: Any) -> list[str]:
    out = [
        "-m",
        MODULE,
        "--role",
        role,
        "--sessions",
        str(args.sessions),
        "--rate",
        str(args.rate),
        "--tag",
        args.tag,
        "--drain",
        str(args.drain),
        "--hard-timeout",
        str(args.seconds + args.warmup + args.drain + 180),
    ]
    for key, value in extra.items():
        out += [f"--{key.replace('_', '-')}", str(value)]
    return out


async def run_raw(
    args: argparse.Namespace, children: Children, env: dict[str, str], nats_pid: int
) -> dict[str, Any]:
    say("raw NATS baseline: core publish -> subscribe, two processes")
    sub = await children.start("raw-sub", child_args(args, "raw-sub"), env)
    await sub.expect("ready", 60)
    pub = await children.start("raw-pub", child_args(args, "raw-pub"), env)
    await pub.expect("ready", 60)
    phase = Phase("raw", args, {"nats": nats_pid, "pub": pub.pid, "sub": sub.pid}, sub)
    try:
        return await phase.run(pub)
    finally:
        await children.stop(pub)
        await children.stop(sub)


async def run_tether(args: argparse.Namespace, children: Children, server: Any) -> dict[str, Any]:
    say("tether: agents (shared.agent) -> nats-server -> gateway -> WebSocket devices")
    env = server.client_env()
    gateway, port = await start_gateway(children, server)
    devices = await children.start("devices", child_args(args, "devices", gateway_port=port), env)
    await devices.expect("ready", 120)
    say(f"  {args.sessions} devices live on the gateway (port {port})")
    agents = await children.start("agents", child_args(args, "agents"), env)
    await agents.expect("ready", 120)
    pids = {
        "nats": server.process.pid,
        "gw": gateway.pid,
        "agents": agents.pid,
        "devices": devices.pid,
    }
    phase = Phase("tether", args, pids, devices)
    try:
        return await phase.run(agents)
    finally:
        await children.stop(agents)
        await children.stop(devices)
        await children.stop(gateway)


def print_report(args: argparse.Namespace, raw: dict[str, Any], tether: dict[str, Any]) -> None:
    rows = []
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
                res["publisher_lag_p99_ms"],
            ]
        )
    rows.append(
        [
            "ratio tether/raw",
            "",
            "",
            "",
            ratio(tether["latency"]["p50_ms"], raw["latency"]["p50_ms"]),
            ratio(tether["latency"]["p99_ms"], raw["latency"]["p99_ms"]),
            ratio(tether["latency"]["p999_ms"], raw["latency"]["p999_ms"]),
            ratio(tether["latency"]["max_ms"], raw["latency"]["max_ms"]),
            "",
        ]
    )
    say()
    say(
        f"latency, {args.sessions} sessions x {args.rate:g} tokens/s, {args.seconds:g} s measured"
        " (ms)"
    )
    say(
        table(
            ["", "sent", "received", "rate/s", "p50", "p99", "p99.9", "max", "pub lag p99"],
            rows,
        )
    )
    say(f"  cpu% raw:    {raw['cpu_percent']}")
    say(f"  cpu% tether: {tether['cpu_percent']}")


async def orchestrate(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="tether-bench-latency-"))
    children = Children(work)
    server = None
    try:
        say(f"starting nats-server (data in {work})")
        server = await asyncio.to_thread(start_nats, work / "nats")
        assert server.process is not None
        nats_pid = server.process.pid
        env = server.client_env()
        # The stream exists before the gateway and agents start (as in a deployment).
        from shared import natsconn
        from shared.settings import LogSettings
        from shared.streams import ensure_stream

        nc = await natsconn.connect(server.settings("bench-setup"))
        await ensure_stream(nc, LogSettings())
        await nc.close()

        raw = await run_raw(args, children, env, nats_pid)
        tether = await run_tether(args, children, server)
        result = {
            "benchmark": "latency",
            "config": {
                "sessions": args.sessions,
                "rate_per_session": args.rate,
                "seconds": args.seconds,
                "warmup_seconds": args.warmup,
            },
            "machine": machine_info(),
            "raw": raw,
            "tether": tether,
            "ratio_tether_over_raw": {
                key: ratio(tether["latency"][f"{key}_ms"], raw["latency"][f"{key}_ms"])
                for key in ("p50", "p99", "p999", "max")
            },
        }
        print_report(args, raw, tether)
        return result
    finally:
        await children.stop_all()
        if server is not None:
            await asyncio.to_thread(server.stop)
        shutil.rmtree(work, ignore_errors=True)


def save(path: Path, result: dict[str, Any]) -> None:
    """Keep one entry per session count in the JSON file."""
    existing: dict[str, Any] = {}
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
    parser = argparse.ArgumentParser(prog="python -m benchmarks.latency", description=__doc__)
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--rate", type=float, default=50.0, help="tokens per second per session")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--drain", type=float, default=15.0, help="max wait for stragglers")
    parser.add_argument("--out", type=Path, default=RESULTS / "latency.json")
    parser.add_argument("--role", choices=sorted(ROLES), help=argparse.SUPPRESS)
    parser.add_argument("--tag", default="", help=argparse.SUPPRESS)
    parser.add_argument("--gateway-port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--hard-timeout", type=float, default=600.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.sessions < 1 or args.rate <= 0 or args.seconds <= 0:
        parser.error("--sessions, --rate and --seconds must be positive")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.role:
        asyncio.run(run_role(args))
        return
    install_signal_exit()
    args.tag = secrets.token_hex(3)
    budget = args.seconds + args.warmup + args.drain
    hard_limit = 2 * budget + 300
    try:
        result = asyncio.run(asyncio.wait_for(orchestrate(args), hard_limit))
    except KeyboardInterrupt:
        say("interrupted; children stopped")
        sys.exit(130)
    save(args.out, result)


if __name__ == "__main__":
    main()

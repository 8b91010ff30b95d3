"""Frames per second one gateway process delivers, fan-out 1 and 10 devices per session.

    python -m benchmarks.throughput                    # 200,000 frames per case
    python -m benchmarks.throughput --frames 20000     # smaller

Processes (loopback): the bundled nats-server, ONE gateway subprocess, ``--publishers``
publisher processes and ``--clients`` WebSocket client processes (2 each; sessions are
split between them). The publishers feed the gateway's
live path directly: core NATS publishes of a delta event on ``tether.live.{session}.r.*``
with the six headers the stream's republish adds (``Nats-Sequence`` ...), as fast as
nats-py sends them (so the gateway, not JetStream or an agent, is what is measured). Each
case sends ``--frames`` frames in all: ``frames / (sessions x fan-out)`` events per session,
sessions interleaved. The clients count every event frame; throughput = frames received /
(last receive - first receive) over all clients.

Baseline, in the same run with the same client processes and connections: a raw aiohttp
WebSocket server process whose per-session task sends the same number of frames of the
same size to that session's connections (``send_frame`` in a loop, one frame built per
event). That is the floor of aiohttp's send path in one Python process on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import shutil
import tempfile
import time
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
    machine_cpu_seconds,
    machine_info,
    orchestrate_main,
    quiet_logs,
    ratio,
    say,
    start_gateway,
    start_nats,
    table,
    watch_parent,
)
from benchmarks.latency import next_command, stdin_commands
from shared import loop, natsconn, subjects
from shared.server import EmbeddedNats
from shared.settings import LogSettings
from shared.streams import ensure_stream

MODULE = "benchmarks.throughput"
TARGET_FRAMES_PER_S = 50_000
RUN = "run-throughput"


def event_bytes(session: str, index: int) -> bytes:
    """A stored ``message.delta`` event of typical size (about 170 bytes)."""
    return orjson.dumps(
        {
            "v": 1,
            "type": "message.delta",
            "session": session,
            "ts": 1_763_780_000_000,
            "message": f"{RUN}-m1",
            "i": index,
            "text": f"tok{index:07d} ",
        }
    )


# ---- child roles -----------------------------------------------------------------------------


async def role_publisher(args: argparse.Namespace) -> None:
    """Core NATS publishes on the live subjects, as the stream's republish does."""
    from shared.settings import NatsSettings

    commands = await stdin_commands()
    nc = await natsconn.connect(NatsSettings.from_env(name="bench-throughput-pub"))
    emit({"event": "ready"})
    while True:
        command = await next_command(commands, "go", "stop")
        if command["cmd"] == "stop":
            break
        sids: list[str] = command["sessions"]
        events = int(command["events"])
        subjects_ = [subjects.live_run(sid, RUN) for sid in sids]
        stored = {
            sid: live.replace(".live.", ".s.", 1) for sid, live in zip(sids, subjects_, strict=True)
        }
        seq = int(command["first_seq"])
        started = time.monotonic()
        for index in range(events):
            for sid, subject in zip(sids, subjects_, strict=True):
                # The six headers the stream's republish carries (what nats-py parses).
                headers = {
                    subjects.STREAM: LogSettings().stream,  # the gateway checks it
                    "Nats-Subject": stored[sid],
                    subjects.SEQUENCE: str(seq),
                    "Nats-Time-Stamp": "2026-11-22T05:00:00.123456789Z",
                    subjects.LAST_SEQUENCE: str(seq - len(sids)),
                    "Nats-Msg-Id": f"{sid}:r:{RUN}:m1.{index}",
                }
                await nc.publish(subject, event_bytes(sid, index), headers=headers)
                seq += 1
            if index % 50 == 0:
                await nc.flush()
        await nc.flush()
        emit(
            {
                "event": "done",
                "published": events * len(sids),
                "seconds": time.monotonic() - started,
            }
        )
    await nc.close()


async def role_clients(args: argparse.Namespace) -> None:
    """WebSocket connections that count event frames."""
    import aiohttp

    commands = await stdin_commands()
    command = await next_command(commands, "connect")
    # URLs are built here from the session ids (one stdin line stays well under 64 KiB).
    template, fanout = str(command["template"]), int(command["fanout"])
    urls = [template.format(sid) for sid in command["sessions"] for _ in range(fanout)]
    state = {"count": 0, "first": 0, "last": 0, "live": 0}
    ready = asyncio.Event()
    if not urls:
        ready.set()

    async def client(http: aiohttp.ClientSession, url: str, limit: asyncio.Semaphore) -> None:
        async with limit:
            ws = await http.ws_connect(url, max_msg_size=0, autoping=True)
        live = False
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            data = msg.data
            if data.startswith('{"type":"event"'):
                now = time.monotonic_ns()
                if not state["first"]:
                    state["first"] = now
                state["last"] = now
                state["count"] += 1
            elif not live and (data.startswith('{"type":"caught_up"') or data == "ready"):
                live = True
                state["live"] += 1
                if state["live"] == len(urls):
                    ready.set()
            elif data.startswith('{"type":"error"'):
                emit({"event": "error", "error": data[:300]})
        if ws.close_code not in (1000, 1001, None):
            emit({"event": "error", "error": f"closed with {ws.close_code}"})

    async def progress() -> None:
        last = state["count"]
        while True:
            await asyncio.sleep(1.0)
            emit({"event": "progress", "count": state["count"], "rate": state["count"] - last})
            last = state["count"]

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        limit = asyncio.Semaphore(50)
        tasks = [asyncio.create_task(client(http, url, limit)) for url in urls]
        await asyncio.wait_for(ready.wait(), 120)
        emit({"event": "ready"})
        reporter = asyncio.create_task(progress())
        while True:
            command = await next_command(commands, "report", "stop")
            if command["cmd"] == "stop":
                break
            expected = int(command["expected"])
            deadline = time.monotonic() + float(command["timeout"])
            while state["count"] < expected and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            emit({"event": "result", **state})
            state.update(count=0, first=0, last=0)
        reporter.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def role_raw_server(args: argparse.Namespace) -> None:
    """The baseline: an aiohttp WebSocket server that sends frames in a loop."""
    from aiohttp import WSMsgType, web

    commands = await stdin_commands()
    conns: dict[str, list[web.WebSocketResponse]] = {}

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        conns.setdefault(request.match_info["sid"], []).append(ws)
        await ws.send_frame(b"ready", WSMsgType.TEXT)
        async for _ in ws:
            pass
        return ws

    app = web.Application()
    app.router.add_get("/raw/{sid}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    emit({"event": "ready", "port": port})

    async def session_loop(sid: str, events: int, seq: int, stride: int) -> None:
        targets = conns.get(sid, [])
        for index in range(events):
            frame = b'{"type":"event","seq":%d,"event":%s}' % (seq, event_bytes(sid, index))
            seq += stride
            for ws in targets:
                await ws.send_frame(frame, WSMsgType.TEXT)

    while True:
        command = await next_command(commands, "go", "stop")
        if command["cmd"] == "stop":
            break
        sids: list[str] = command["sessions"]
        events = int(command["events"])
        started = time.monotonic()
        await asyncio.gather(
            *(session_loop(sid, events, i + 1, len(sids)) for i, sid in enumerate(sids))
        )
        emit(
            {
                "event": "done",
                "published": events * len(sids),
                "seconds": time.monotonic() - started,
            }
        )
    await runner.cleanup()


ROLES = {"publisher": role_publisher, "clients": role_clients, "raw-server": role_raw_server}


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


# ---- the benchmark process -------------------------------------------------------------------


def role_args(args: argparse.Namespace, role: str) -> list[str]:
    return ["-m", MODULE, "--role", role, "--hard-timeout", str(hard_limit(args))]


def hard_limit(args: argparse.Namespace) -> float:
    return float(600.0 + 4 * args.timeout)


async def measure(
    name: str,
    args: argparse.Namespace,
    senders: list[Child],
    clients: list[Child],
    go: dict[str, Any],
    frames: int,
    pids: dict[str, int],
) -> dict[str, Any]:
    """One case: send, show progress, collect what the clients received."""
    before = {n: cpu_seconds(p) for n, p in pids.items()}
    machine_before, steal_before = machine_cpu_seconds()
    started = time.monotonic()
    sids: list[str] = go["sessions"]
    for i, sender in enumerate(senders):
        sender.send({"cmd": "go", **go, "sessions": sids[i :: len(senders)]})
    per_client = [0] * len(clients)
    done_task = asyncio.gather(*(sender.expect("done", args.timeout) for sender in senders))
    last_cpu, last_t = dict(before), started
    while True:
        for i, child in enumerate(clients):
            while not child.records.empty():
                record = child.records.get_nowait()
                if record.get("event") == "progress":
                    per_client[i] = int(record["count"])
                elif record.get("event") in ("error", "exit"):
                    raise RuntimeError(f"{child.name}: {record}{child.tail()}")
        received = sum(per_client)
        now = time.monotonic()
        cpu = {n: cpu_seconds(p) for n, p in pids.items()}
        usage = " ".join(
            f"{n} {100 * (cpu[n] - last_cpu[n]) / max(now - last_t, 1e-3):3.0f}%" for n in pids
        )
        last_cpu, last_t = cpu, now
        say(
            f"  [{name}] {now - started:5.1f}s  received {received:9,}/{frames:,} frames"
            f"  cpu: {usage}"
        )
        if received >= frames or now - started > args.timeout:
            break
        await asyncio.sleep(1.0 if frames > 20_000 else 0.2)
    sent = await done_task
    results = []
    for child in clients:
        child.send({"cmd": "report", "expected": 0, "timeout": 0})
    for child in clients:
        results.append(await child.expect("result", 30))
    # Wait for the tail of every client (up to the timeout).
    received = sum(int(r["count"]) for r in results)
    first = min(int(r["first"]) for r in results if r["first"])
    last = max(int(r["last"]) for r in results if r["last"])
    span = max((last - first) / 1e9, 1e-9)
    after = {n: cpu_seconds(p) for n, p in pids.items()}
    machine_after, steal_after = machine_cpu_seconds()
    wall = time.monotonic() - started
    server_cpu = after[next(iter(pids))] - before[next(iter(pids))]  # gw or raw: listed first
    return {
        # What one core of the server process would deliver at this CPU cost per frame.
        "frames_per_server_cpu_second": round(received / server_cpu, 1) if server_cpu else None,
        "server_cpu_us_per_frame": round(1e6 * server_cpu / received, 2) if received else None,
        "frames_expected": frames,
        "frames_received": received,
        "lost": frames - received,
        "seconds": round(span, 4),
        "frames_per_s": round(received / span, 1),
        "sender_seconds": round(max(float(d["seconds"]) for d in sent), 4),
        "cpu_percent": {n: round(100 * (after[n] - before[n]) / wall, 1) for n in pids},
        "machine_busy_percent": round(100 * (machine_after - machine_before) / wall, 1),
        "steal_percent": round(100 * (steal_after - steal_before) / wall, 1),
    }


async def orchestrate(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="tether-bench-throughput-"))
    children = Children(work)
    server: EmbeddedNats | None = None
    from shared.tokens import mint

    try:
        say(f"starting nats-server (data in {work})")
        server = await asyncio.to_thread(start_nats, work / "nats")
        nc = await natsconn.connect(server.settings("bench-setup"))
        await ensure_stream(nc, LogSettings())
        await nc.close()
        machine = machine_info()
        assert server.process is not None
        env = server.client_env()
        big_queues = {
            "TETHER_SEND_QUEUE_FRAMES": "10000000",
            "TETHER_SEND_QUEUE_BYTES": str(2 * 1024**3),
        }
        gateway, gw_port = await start_gateway(children, server, extra_env=big_queues)
        publishers = [
            await children.start(f"publisher-{i}", role_args(args, "publisher"), env)
            for i in range(args.publishers)
        ]
        for publisher in publishers:
            await publisher.expect("ready", 60)
        raw = await children.start("raw-server", role_args(args, "raw-server"), env)
        raw_port = int((await raw.expect("ready", 60))["port"])
        token = mint(SECRET, subject="bench-throughput", sessions=["*"], ttl_seconds=3600)
        cases: dict[str, Any] = {}
        for fanout in args.fanout:
            sessions = max(1, args.sessions)
            events = max(1, args.frames // (sessions * fanout))
            frames = events * sessions * fanout
            tag = secrets.token_hex(3)
            sids = [f"thr{i:04d}-f{fanout}-{tag}" for i in range(sessions)]
            case: dict[str, Any] = {
                "sessions": sessions,
                "fanout": fanout,
                "connections": sessions * fanout,
                "events_per_session": events,
            }
            for system in ("raw", "tether"):
                if system == "tether":
                    template = f"ws://127.0.0.1:{gw_port}/v1/sessions/{{}}/ws?since=0&token={token}"
                else:
                    template = f"ws://127.0.0.1:{raw_port}/raw/{{}}"
                clients = []
                for c in range(args.clients):
                    child = await children.start(
                        f"clients-{system}-f{fanout}-{c}", role_args(args, "clients"), env
                    )
                    mine = sids[c :: args.clients]  # a session's devices share a process
                    child.send(
                        {"cmd": "connect", "template": template, "sessions": mine, "fanout": fanout}
                    )
                    clients.append(child)
                for child in clients:
                    await child.expect("ready", 120)
                pids = {
                    "gw" if system == "tether" else "raw": (
                        gateway if system == "tether" else raw
                    ).pid
                }
                if system == "tether":
                    pids["nats"] = server.process.pid
                    for i, publisher in enumerate(publishers):
                        pids[f"pub{i}"] = publisher.pid
                for i, child in enumerate(clients):
                    pids[f"cl{i}"] = child.pid
                say(
                    f"{system}: fan-out {fanout}, {sessions} sessions x {fanout} devices,"
                    f" {events:,} events per session = {frames:,} frames"
                )
                go = {"sessions": sids, "events": events, "first_seq": 1}
                senders = publishers if system == "tether" else [raw]
                result = await measure(
                    f"{system} f{fanout}", args, senders, clients, go, frames, pids
                )
                say(
                    f"  -> {result['frames_per_s']:,.0f} frames/s"
                    f" ({result['frames_received']:,} in {result['seconds']:.2f} s,"
                    f" lost {result['lost']:,})"
                )
                case[system] = result
                for child in clients:
                    child.send({"cmd": "stop"})
                    await children.stop(child)
            case["ratio_tether_over_raw"] = ratio(
                case["tether"]["frames_per_s"], case["raw"]["frames_per_s"]
            )
            # "on one core": judged on frames per CPU-second of the gateway process (the
            # wall-clock rate also depends on the publisher and clients sharing the cores).
            per_core = case["tether"]["frames_per_server_cpu_second"] or 0.0
            case["meets_target"] = per_core >= TARGET_FRAMES_PER_S
            cases[f"fanout_{fanout}"] = case
        rows = [
            [
                f"fan-out {c['fanout']}",
                c["connections"],
                c["raw"]["frames_per_s"],
                c["tether"]["frames_per_s"],
                c["ratio_tether_over_raw"],
                c["tether"]["lost"],
                c["tether"]["cpu_percent"].get("gw", 0.0),
                c["raw"]["frames_per_server_cpu_second"],
                c["tether"]["frames_per_server_cpu_second"],
            ]
            for c in cases.values()
        ]
        say()
        say(f"frames per second delivered by one process (target >= {TARGET_FRAMES_PER_S:,})")
        headers = ["case", "conns", "raw aiohttp", "tether gw", "ratio", "lost", "gw cpu%"]
        headers += ["raw /cpu-s", "tether /cpu-s"]
        say(table(headers, rows))
        say("  /cpu-s = frames per CPU-second of the serving process (what one core would give)")
        return {
            "benchmark": "throughput",
            "config": {
                "frames": args.frames,
                "sessions": args.sessions,
                "fanout": args.fanout,
                "clients": args.clients,
                "publishers": args.publishers,
            },
            "machine": {**machine, "event_loop": event_loop()},
            "target_frames_per_s": TARGET_FRAMES_PER_S,
            "cases": cases,
        }
    finally:
        await children.stop_all()
        if server is not None:
            await asyncio.to_thread(server.stop)
        shutil.rmtree(work, ignore_errors=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.throughput",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--frames", type=int, default=200_000, help="frames per case")
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--fanout", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--publishers", type=int, default=2, help="publisher processes")
    parser.add_argument("--timeout", type=float, default=120.0, help="max seconds per case")
    parser.add_argument("--quick", action="store_true", help="2,000 frames per case, 1 publisher")
    parser.add_argument("--out", type=Path, default=RESULTS / "throughput.json")
    parser.add_argument("--role", choices=sorted(ROLES), help=argparse.SUPPRESS)
    parser.add_argument("--hard-timeout", type=float, default=900.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.frames, args.publishers = min(args.frames, 2_000), 1
        args.timeout = min(args.timeout, 30.0)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.role:
        loop.run(run_role(args))
        return
    orchestrate_main(lambda: orchestrate(args), hard_limit(args), args.out)


if __name__ == "__main__":
    main()

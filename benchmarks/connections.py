"""Concurrent WebSockets on one gateway process: memory per connection and latency.

    python -m benchmarks.connections                       # 10,000 connections
    python -m benchmarks.connections --connections 2000

Processes (loopback): the bundled nats-server, ONE gateway subprocess, ``--clients``
client processes (default 2) that each hold their share of the idle connections (one
session per connection, ``since=0``, so every connection has its own hub and live
subscription on the gateway), and a streaming process: one ``shared.agent`` session that
appends one token every 20 ms (50 tokens/s, ``str(time.time_ns())``) and one WebSocket
device on it that records the latency of every delta.

Baseline in the same run: the streaming session's latency with no other connection on
the gateway. Then the idle connections are opened, and the same stream is measured again
among them. Memory per connection = (gateway VmRSS with every connection open and
settled - VmRSS before the first idle connection) / connections. The children inherit the
raised open-file limit (``RLIMIT_NOFILE`` to its hard limit).
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import shutil
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
    event_loop,
    latency_summary,
    machine_cpu_seconds,
    machine_info,
    orchestrate_main,
    quiet_logs,
    raise_fd_limit,
    ratio,
    rss_kib,
    say,
    start_gateway,
    start_nats,
    table,
    watch_parent,
)
from benchmarks.latency import next_command, stdin_commands
from shared import loop, natsconn
from shared.server import EmbeddedNats
from shared.settings import LogSettings
from shared.streams import ensure_stream

MODULE = "benchmarks.connections"
TARGET_CONNECTIONS = 10_000
TARGET_KB_PER_CONNECTION = 30.0
TARGET_P99_MS = 50.0


def session_ids(tag: str, count: int) -> list[str]:
    return [f"conn{i:06d}-{tag}" for i in range(count)]


# ---- child roles -----------------------------------------------------------------------------


async def role_idle(args: argparse.Namespace) -> None:
    """Hold idle WebSockets (each on its own session) until told to stop."""
    import aiohttp

    from shared.tokens import mint

    raise_fd_limit()
    commands = await stdin_commands()
    token = mint(SECRET, subject="bench-conns", sessions=["*"], ttl_seconds=3600)
    command = await next_command(commands, "connect")
    # The ids are derived here: a list of 10,000 would not fit one stdin line (64 KiB).
    sids = session_ids(str(command["tag"]), int(command["count"]))
    sids = sids[int(command["first"]) :: int(command["step"])]
    url = f"ws://127.0.0.1:{args.gateway_port}/v1/sessions/{{}}/ws"
    state = {"live": 0, "failed": 0, "closed": 0}
    done = asyncio.Event()

    async def hold(http: aiohttp.ClientSession, sid: str, limit: asyncio.Semaphore) -> None:
        try:
            async with limit:
                ws = await http.ws_connect(
                    url.format(sid), params={"token": token, "since": "0"}, max_msg_size=0
                )
                async for msg in ws:
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        break
                    if msg.data.startswith('{"type":"caught_up"'):
                        break
                    if msg.data.startswith('{"type":"error"'):
                        raise RuntimeError(msg.data[:200])
            state["live"] += 1
        except Exception as exc:  # noqa: BLE001 - counted and reported
            state["failed"] += 1
            if state["failed"] <= 3:
                emit({"event": "warning", "error": f"{sid}: {exc!r}"})
            return
        finally:
            if state["live"] + state["failed"] == len(sids):
                done.set()
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
        state["closed"] += 1

    async def progress() -> None:
        while True:
            await asyncio.sleep(1.0)
            emit({"event": "progress", **state})

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        limit = asyncio.Semaphore(args.concurrency)
        reporter = asyncio.create_task(progress())
        tasks = [asyncio.create_task(hold(http, sid, limit)) for sid in sids]
        await done.wait()
        emit({"event": "ready", **state})
        await next_command(commands, "stop")
        reporter.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def role_stream(args: argparse.Namespace) -> None:
    """One agent session at 50 tokens/s and one device on it; latency per delta."""
    import aiohttp

    from shared import agent
    from shared.settings import LogSettings as Logs
    from shared.settings import NatsSettings
    from shared.tokens import mint

    commands = await stdin_commands()
    client = await agent.connect(
        NatsSettings.from_env(name="bench-conns-agent"), log_settings=Logs(), coalesce_ms=0
    )
    token = mint(SECRET, subject="bench-conns-stream", sessions=["*"], ttl_seconds=3600)
    emit({"event": "ready"})
    async with aiohttp.ClientSession() as http:
        while True:
            command = await next_command(commands, "measure", "stop")
            if command["cmd"] == "stop":
                break
            sid = str(command["session"])
            seconds = float(command["seconds"])
            url = f"ws://127.0.0.1:{args.gateway_port}/v1/sessions/{sid}/ws"
            latencies = array("q")
            ws = await http.ws_connect(url, params={"token": token, "since": "0"})
            live = asyncio.Event()

            async def read(
                ws: aiohttp.ClientWebSocketResponse = ws,
                live: asyncio.Event = live,
                latencies: array[int] = latencies,
            ) -> None:
                async for msg in ws:
                    now = time.time_ns()
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        break
                    frame = orjson.loads(msg.data)
                    if frame.get("type") == "caught_up":
                        live.set()
                    elif frame.get("type") == "event":
                        event = frame["event"]
                        if event.get("type") == "message.delta":
                            latencies.append(now - int(event["text"]))

            reader = asyncio.create_task(read())
            await asyncio.wait_for(live.wait(), 30)
            run = agent.Run(client.session(sid), f"run-{sid}")
            await run.start()
            message = run.message(coalesce_ms=0)
            await message.start()
            sent = 0
            start = time.monotonic()
            next_t = start
            while time.monotonic() - start < seconds:
                next_t += 0.02
                await asyncio.sleep(max(0.0, next_t - time.monotonic()))
                await message.append(str(time.time_ns()))
                sent += 1
            deadline = time.monotonic() + 10
            while len(latencies) < sent and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            reader.cancel()
            await ws.close()
            emit(
                {
                    "event": "result",
                    "sent": sent,
                    "received": len(latencies),
                    "latency": latency_summary(latencies),
                }
            )
    await client.close()


ROLES = {"idle": role_idle, "stream": role_stream}


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


def hard_limit(args: argparse.Namespace) -> float:
    return float(900.0 + args.connections / 20 + 4 * args.seconds)


def role_args(args: argparse.Namespace, role: str, port: int) -> list[str]:
    return [
        "-m",
        MODULE,
        "--role",
        role,
        "--gateway-port",
        str(port),
        "--concurrency",
        str(args.concurrency),
        "--hard-timeout",
        str(hard_limit(args)),
    ]


async def stream_once(stream: Child, session: str, seconds: float, label: str) -> dict[str, Any]:
    say(f"  measuring one streaming session for {seconds:g} s ({label})")
    stream.send({"cmd": "measure", "session": session, "seconds": seconds})
    result = await stream.expect("result", seconds + 60)
    lat = result["latency"]
    say(
        f"    {result['received']:,}/{result['sent']:,} deltas, p50 {lat['p50_ms']:.2f} ms,"
        f" p99 {lat['p99_ms']:.2f} ms, max {lat['max_ms']:.2f} ms"
    )
    return dict(result)


async def orchestrate(args: argparse.Namespace) -> dict[str, Any]:
    fd_limit = raise_fd_limit()
    work = Path(tempfile.mkdtemp(prefix="tether-bench-connections-"))
    children = Children(work)
    server: EmbeddedNats | None = None
    tag = secrets.token_hex(3)
    try:
        say(f"starting nats-server (data in {work}); open-file limit {fd_limit:,}")
        server = await asyncio.to_thread(start_nats, work / "nats")
        nc = await natsconn.connect(server.settings("bench-setup"))
        await ensure_stream(nc, LogSettings())
        await nc.close()
        machine = machine_info()
        env = server.client_env()
        gateway, port = await start_gateway(children, server)
        stream = await children.start("stream", role_args(args, "stream", port), env)
        await stream.expect("ready", 60)
        baseline = await stream_once(stream, f"conn-base-{tag}", args.seconds, "alone")
        await asyncio.sleep(1.0)
        rss_before = rss_kib(gateway.pid)
        cpu_before = cpu_seconds(gateway.pid)
        say(f"  gateway VmRSS before: {rss_before / 1024:.1f} MiB")
        idle: list[Child] = []
        for c in range(args.clients):
            child = await children.start(f"idle-{c}", role_args(args, "idle", port), env)
            connect = {"tag": tag, "count": args.connections, "first": c, "step": args.clients}
            child.send({"cmd": "connect", **connect})
            idle.append(child)
        started = time.monotonic()
        states: list[dict[str, Any]] = [{"live": 0, "failed": 0}] * len(idle)
        ready = [False] * len(idle)
        busy_before, _ = machine_cpu_seconds()
        while not all(ready):
            await asyncio.sleep(1.0 if args.connections > 1000 else 0.25)
            for i, child in enumerate(idle):
                while not child.records.empty():
                    record = child.records.get_nowait()
                    kind = record.get("event")
                    if kind in ("progress", "ready"):
                        states[i] = record
                        ready[i] = ready[i] or kind == "ready"
                    elif kind == "warning":
                        say(f"    {child.name}: {record['error']}")
                    elif kind in ("error", "exit"):
                        raise RuntimeError(f"{child.name}: {record}{child.tail()}")
            live = sum(int(s["live"]) for s in states)
            failed = sum(int(s["failed"]) for s in states)
            elapsed = time.monotonic() - started
            say(
                f"  [connect] {elapsed:5.1f}s  {live:,}/{args.connections:,} open,"
                f" {failed:,} failed, gateway VmRSS {rss_kib(gateway.pid) / 1024:.1f} MiB"
            )
            if elapsed > args.connect_timeout:
                raise TimeoutError(f"connections not open after {args.connect_timeout:g} s")
        connect_seconds = time.monotonic() - started
        live = sum(int(s["live"]) for s in states)
        failed = sum(int(s["failed"]) for s in states)
        await asyncio.sleep(args.settle)
        rss_after = rss_kib(gateway.pid)
        idle_cpu_start = cpu_seconds(gateway.pid)
        t0 = time.monotonic()
        loaded = await stream_once(
            stream, f"conn-load-{tag}", args.seconds, f"among {live:,} connections"
        )
        gw_cpu_during = 100 * (cpu_seconds(gateway.pid) - idle_cpu_start) / (time.monotonic() - t0)
        per_conn_kib = (rss_after - rss_before) / max(live, 1)
        per_conn_kb = per_conn_kib * 1.024
        busy_after, _ = machine_cpu_seconds()
        p99 = float(loaded["latency"]["p99_ms"])
        result = {
            "benchmark": "connections",
            "config": {
                "connections": args.connections,
                "clients": args.clients,
                "seconds": args.seconds,
                "concurrency": args.concurrency,
            },
            "machine": {**machine, "event_loop": event_loop(), "fd_limit": fd_limit},
            "connections_open": live,
            "connections_failed": failed,
            "connect_seconds": round(connect_seconds, 2),
            "connects_per_s": round(live / connect_seconds, 1) if connect_seconds else None,
            "gateway_cpu_seconds_connecting": round(cpu_seconds(gateway.pid) - cpu_before, 2),
            "gateway_cpu_percent_while_streaming_loaded": round(gw_cpu_during, 1),
            "machine_busy_cpu_seconds": round(busy_after - busy_before, 1),
            "gateway_rss_kib": {"before": rss_before, "after": rss_after},
            "rss_per_connection_kib": round(per_conn_kib, 2),
            "rss_per_connection_kb": round(per_conn_kb, 2),
            "baseline_alone": baseline,
            "loaded": loaded,
            "ratio_loaded_over_alone": {
                k: ratio(loaded["latency"][f"{k}_ms"], baseline["latency"][f"{k}_ms"])
                for k in ("p50", "p99")
            },
            "targets": {
                "connections": TARGET_CONNECTIONS,
                "kb_per_connection": TARGET_KB_PER_CONNECTION,
                "p99_ms": TARGET_P99_MS,
            },
            "meets_target": live >= TARGET_CONNECTIONS
            and per_conn_kb <= TARGET_KB_PER_CONNECTION
            and p99 <= TARGET_P99_MS,
        }
        rows = [
            ["alone", 1, "", baseline["latency"]["p50_ms"], baseline["latency"]["p99_ms"]],
            [
                f"among {live:,}",
                live + 1,
                per_conn_kb,
                loaded["latency"]["p50_ms"],
                loaded["latency"]["p99_ms"],
            ],
        ]
        say()
        say(
            f"concurrent WebSockets on one gateway (target {TARGET_CONNECTIONS:,} at"
            f" <= {TARGET_KB_PER_CONNECTION:g} KB each, p99 <= {TARGET_P99_MS:g} ms)"
        )
        say(table(["stream measured", "conns", "KB/conn", "p50 ms", "p99 ms"], rows))
        say(
            f"  gateway VmRSS {rss_before / 1024:.1f} -> {rss_after / 1024:.1f} MiB;"
            f" {live:,} opened in {connect_seconds:.1f} s; target"
            f" {'met' if result['meets_target'] else 'NOT met'}"
        )
        for child in idle:
            child.send({"cmd": "stop"})
        stream.send({"cmd": "stop"})
        return result
    finally:
        await children.stop_all()
        if server is not None:
            await asyncio.to_thread(server.stop)
        shutil.rmtree(work, ignore_errors=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.connections",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--connections", type=int, default=TARGET_CONNECTIONS)
    parser.add_argument("--clients", type=int, default=2, help="client processes (2+)")
    parser.add_argument("--seconds", type=float, default=10.0, help="stream measured per case")
    parser.add_argument("--concurrency", type=int, default=100, help="connects in flight")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds before the RSS")
    parser.add_argument("--connect-timeout", type=float, default=600.0)
    parser.add_argument("--quick", action="store_true", help="200 connections, 1 s streams")
    parser.add_argument("--out", type=Path, default=RESULTS / "connections.json")
    parser.add_argument("--role", choices=sorted(ROLES), help=argparse.SUPPRESS)
    parser.add_argument("--gateway-port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--hard-timeout", type=float, default=1800.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.connections = min(args.connections, 200)
        args.seconds = min(args.seconds, 1.0)
        args.settle = min(args.settle, 0.5)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.role:
        loop.run(run_role(args))
        return
    orchestrate_main(lambda: orchestrate(args), hard_limit(args), args.out)


if __name__ == "__main__":
    main()

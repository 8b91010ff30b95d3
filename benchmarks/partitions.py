"""Session log partitions: one stream versus three, on a local 3-node cluster (R3).

    python -m benchmarks.partitions                  # 5 s per phase, ~40 s in all
    python -m benchmarks.partitions --seconds 10
    python -m benchmarks.partitions --quick          # 1 s phases (~15 s): the smoke test

For each ``sync_interval`` (the server default, and ``always``: every leader fsyncs each
write) the benchmark starts a fresh ``LocalCluster`` twice, with the session log as ONE
stream (``TETHER_SESSIONS``) and as THREE partitions (``TETHER_SESSIONS_0..2``, leaders
spread over the nodes by ``ensure_stream``; shared/leaders.py). Publishers publish
agent-sized deltas (~120 bytes, ``Nats-Msg-Id`` like the SDK) to
``tether.s.bench-{i}.a.run-1-m1`` for 150 sessions (so every partition gets traffic; the
server's account mapping routes them), 64 publishes in flight in all. Reported per setup:

* acknowledged publishes per second, and p50/p99 publish latency (publish -> PubAck);
* CPU seconds of each nats-server node during the phase (``/proc/{pid}/stat``): the
  busiest node's share of all nats CPU (one stream: its leader does most of the work;
  three spread leaders: near 1/3 each), and nats CPU microseconds per acknowledged publish;
* each stream's leader and the messages it stored; the publishers' CPU and the machine's.

Publishers: one Python process limits the rate (nats-py's publish path, one event loop;
measured here ~7.9k acks/s with one publisher, 11.7-13.3k with two, one stream, default
sync), which would hide server-side differences, so the load comes from ``--publishers``
(2) child processes, 32 in flight each, started before the measured window and warmed up.
Processes rather than more asyncio tasks: tasks share one interpreter and one core.

Limitation, stated in the output as well: the machine has 2 cores shared by 3 nats-servers,
the publishers and this process. When publishers and servers together use both cores (the
``machine busy`` column), throughput is CPU-bound and partitions cannot add capacity they
would add on separate machines; what still shows is where leader work runs (CPU shares)
and, under ``always``, whether fsyncs on different leaders overlap. ``not ours`` is the
machine's busy time minus the nats-servers', publishers' and this process's (other users
of the machine, and kernel work not charged to a process). Results go to
benchmarks/results/partitions.json (``--quick``: results/quick/).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from benchmarks._common import (
    RESULTS,
    Child,
    Children,
    cpu_seconds,
    emit,
    install_signal_exit,
    latency_summary,
    machine_cpu_seconds,
    machine_info,
    quiet_logs,
    ratio,
    say,
    table,
    watch_parent,
    write_json,
)
from benchmarks.durability import payload  # the same ~120-byte delta
from shared import leaders, loop, natsconn
from shared.cluster import LocalCluster, wait_stream
from shared.settings import LogSettings, NatsSettings
from shared.streams import ensure_stream

SESSIONS = 150
IN_FLIGHT = 64
PARTITIONS = (1, 3)
SYNCS = ("default", "always")


# ---- publisher child ---------------------------------------------------------------------------


async def publisher(ident: int) -> None:
    """A child: connect, then for each ``go`` command publish for its seconds and report
    every latency (ns); ``quit`` ends it."""
    quiet_logs("bench-publisher")
    watcher = asyncio.create_task(watch_parent())
    nc = await natsconn.connect(NatsSettings.from_env(name=f"bench-partitions-{ident}"))
    js = nc.jetstream(timeout=10)
    emit({"event": "ready"})
    counter = itertools.count()
    try:
        while True:
            line = await asyncio.to_thread(sys.stdin.readline)
            if not line:
                return
            command = orjson.loads(line)
            if command.get("cmd") != "go":
                return
            emit(await publish(js, ident, counter, command))
    finally:
        watcher.cancel()
        await natsconn.close(nc)


async def publish(
    js: JetStreamContext, ident: int, counter: Iterator[int], command: dict[str, Any]
) -> dict[str, Any]:
    """One phase: ``in_flight`` workers publish until ``seconds`` have passed."""
    deadline = time.monotonic() + float(command["seconds"])
    latencies: list[int] = []
    errors = 0

    async def worker() -> None:
        nonlocal errors
        while time.monotonic() < deadline:
            n = next(counter)
            session = n % SESSIONS
            began = time.perf_counter_ns()
            try:
                await js.publish(
                    f"tether.s.bench-{session}.a.run-1-m1",
                    payload(session, n),
                    headers={"Nats-Msg-Id": f"p{ident}:{n}"},
                )
            except Exception:  # noqa: BLE001 - counted; a timeout must not end the phase
                errors += 1
                continue
            latencies.append(time.perf_counter_ns() - began)

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(int(command["in_flight"]))))
    took = time.monotonic() - started
    return {"event": "done", "seconds": took, "errors": errors, "latencies": latencies}


# ---- orchestration -----------------------------------------------------------------------------


async def go(children: list[Child], seconds: float, in_flight: int) -> list[dict[str, Any]]:
    """Run one phase on every publisher at once; their ``done`` records."""
    share, extra = divmod(in_flight, len(children))
    for i, child in enumerate(children):
        child.send({"cmd": "go", "seconds": seconds, "in_flight": share + (i < extra)})
    return list(await asyncio.gather(*(c.expect("done", seconds + 60) for c in children)))


async def setup(
    cluster: LocalCluster, log: LogSettings, children: Children, args: argparse.Namespace
) -> dict[str, Any]:
    """Create the streams, start the publishers, warm up, then the measured phase."""
    nc = await natsconn.connect(cluster.settings("bench-partitions"))
    try:
        await ensure_stream(nc, log)
        for stream in log.streams:
            await wait_stream(nc, stream, log.replicas)
        env = cluster.client_env()
        pubs = [
            await children.start(
                f"publisher-{i}", ["-m", "benchmarks.partitions", "--publisher", str(i)], env
            )
            for i in range(args.publishers)
        ]
        for child in pubs:
            await child.expect("ready", 30)
        await go(pubs, args.warmup, IN_FLIGHT)
        before = await placements(nc, log)
        nodes = {node.name: node.process.pid for node in cluster.nodes if node.process}
        node_cpu = {name: cpu_seconds(pid) for name, pid in nodes.items()}
        pub_cpu = [cpu_seconds(c.pid) for c in pubs]
        own = cpu_seconds(os.getpid())
        busy, steal = machine_cpu_seconds()
        wall = time.monotonic()
        done = await go(pubs, args.seconds, IN_FLIGHT)
        wall = time.monotonic() - wall
        busy_after, steal_after = machine_cpu_seconds()
        node_cpu = {name: cpu_seconds(pid) - node_cpu[name] for name, pid in nodes.items()}
        pub_cpu = [cpu_seconds(c.pid) - cpu for c, cpu in zip(pubs, pub_cpu, strict=True)]
        own = cpu_seconds(os.getpid()) - own
        after = await placements(nc, log)
        for child in pubs:
            child.send({"cmd": "quit"})
            await children.stop(child)
    finally:
        await natsconn.close(nc)
    latencies = [ns for d in done for ns in d["latencies"]]
    acked = len(latencies)
    took = max(d["seconds"] for d in done)
    nats_cpu = sum(node_cpu.values())
    return {
        "acked": acked,
        "errors": sum(d["errors"] for d in done),
        "per_second": round(acked / took, 1),
        "latency": latency_summary(latencies),
        "node_cpu_seconds": {k: round(v, 3) for k, v in node_cpu.items()},
        "nats_cpu_seconds": round(nats_cpu, 3),
        "max_node_share": round(max(node_cpu.values()) / nats_cpu, 3) if nats_cpu else None,
        "nats_cpu_us_per_ack": round(nats_cpu / acked * 1e6, 1) if acked else None,
        "publisher_cpu_seconds": [round(c, 3) for c in pub_cpu],
        "publisher_cores": round(sum(pub_cpu) / wall, 2),
        "machine_busy_cores": round((busy_after - busy) / wall, 2),
        "other_cores": round((busy_after - busy - nats_cpu - sum(pub_cpu) - own) / wall, 2),
        "machine_steal_cores": round((steal_after - steal) / wall, 2),
        "streams": {
            name: {"leader": leader, "messages": after[name][1] - before[name][1]}
            for name, (leader, _) in after.items()
        },
        "leaders_per_node": {
            node: sum(1 for leader, _ in after.values() if leader == node) for node in nodes
        },
    }


async def placements(nc: NATS, log: LogSettings) -> dict[str, tuple[str | None, int]]:
    """Each stream's leader and message count."""
    return {p.stream: (p.leader, p.messages) for p in await leaders.placements(nc, log.streams)}


async def run_setup(sync: str, n: int, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    root = work / f"{sync}-p{n}"
    cluster = LocalCluster(root, sync=sync, tie_to_parent=True, partitions=n)
    children = Children(root)
    await asyncio.to_thread(cluster.start)
    try:
        return await setup(cluster, LogSettings(replicas=3, partitions=n), children, args)
    finally:
        await children.stop_all()
        await asyncio.to_thread(cluster.stop)


def compare(results: dict[str, Any]) -> dict[str, Any]:
    """Three partitions over one stream, per sync mode."""
    out: dict[str, Any] = {}
    for sync in SYNCS:
        one, three = results.get(f"{sync}-p1"), results.get(f"{sync}-p3")
        if not one or not three:
            continue
        out[sync] = {
            "throughput_p3_over_p1": round(ratio(three["per_second"], one["per_second"]), 3),
            "p50_p3_over_p1": round(ratio(three["latency"]["p50_ms"], one["latency"]["p50_ms"]), 3),
            "p99_p3_over_p1": round(ratio(three["latency"]["p99_ms"], one["latency"]["p99_ms"]), 3),
            "nats_cpu_per_ack_p3_over_p1": round(
                ratio(three["nats_cpu_us_per_ack"] or 0, one["nats_cpu_us_per_ack"] or 0), 3
            ),
            "max_node_share_p1": one["max_node_share"],
            "max_node_share_p3": three["max_node_share"],
        }
    return out


def report(results: dict[str, Any], ratios: dict[str, Any], publishers: int) -> None:
    rows = []
    for name, r in results.items():
        cpu = r["node_cpu_seconds"]
        rows.append(
            [
                name,
                r["per_second"],
                r["latency"]["p50_ms"],
                r["latency"]["p99_ms"],
                " ".join(f"{k}={v:.2f}" for k, v in cpu.items()),
                r["max_node_share"],
                r["nats_cpu_us_per_ack"],
                r["publisher_cores"],
                r["machine_busy_cores"],
                r["other_cores"],
                r["errors"],
            ]
        )
    say(
        table(
            [
                "setup",
                "acked pub/s",
                "p50 ms",
                "p99 ms",
                "nats CPU s per node",
                "max node share",
                "nats CPU us/ack",
                "pub cores",
                "machine busy",
                "not ours",
                "errors",
            ],
            rows,
        )
    )
    say("\nstream leaders (messages stored in the measured phase):")
    for name, r in results.items():
        parts = [f"{s}@{v['leader']} ({v['messages']:,})" for s, v in r["streams"].items()]
        say(f"  {name}: " + ", ".join(parts))
    say("\nthree partitions over one stream:")
    say(
        table(
            ["sync", "pub/s", "p50", "p99", "nats CPU/ack", "max share 1 -> 3"],
            [
                [
                    sync,
                    r["throughput_p3_over_p1"],
                    r["p50_p3_over_p1"],
                    r["p99_p3_over_p1"],
                    r["nats_cpu_per_ack_p3_over_p1"],
                    f"{r['max_node_share_p1']} -> {r['max_node_share_p3']}",
                ]
                for sync, r in ratios.items()
            ],
        )
    )
    say(
        f"\nlimitation: {publishers} publisher processes, 3 nats-servers and this process share"
        f" this machine's {os.cpu_count()} cores ('machine busy', in cores; 'not ours': other"
        " processes on the machine); near the core count the run is CPU-bound, and"
        " partitions cannot add the capacity separate machines would give."
    )


async def main(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="tether-bench-partitions-"))
    info = machine_info()
    results: dict[str, Any] = {}
    try:
        for sync in SYNCS:
            for n in PARTITIONS:
                say(f"3-node cluster R3, {n} stream(s), sync_interval {sync} ...")
                results[f"{sync}-p{n}"] = await run_setup(sync, n, work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ratios = compare(results)
    report(results, ratios, args.publishers)
    write_json(
        args.out,
        {
            "benchmark": "partitions",
            "config": {
                "seconds_per_phase": args.seconds,
                "warmup_seconds": args.warmup,
                "in_flight": IN_FLIGHT,
                "sessions": SESSIONS,
                "publishers": args.publishers,
                "replicas": 3,
                "nodes": 3,
            },
            "machine": info,
            "results": results,
            "ratios": ratios,
        },
    )
    say(f"\nwrote {args.out}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per phase")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before each phase")
    parser.add_argument("--publishers", type=int, default=2, help="publisher processes")
    parser.add_argument("--quick", action="store_true", help="1 s phases (smoke test)")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="default: results/partitions.json (quick/ with --quick)",
    )
    parser.add_argument("--publisher", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.warmup = 1.0, 0.3
    if args.out is None:  # a smoke run never overwrites measured figures
        args.out = RESULTS / ("quick" if args.quick else "") / "partitions.json"
    return args


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.publisher is not None:
        loop.run(publisher(arguments.publisher))
    else:
        install_signal_exit()
        quiet_logs("bench", "error")
        asyncio.run(main(arguments))

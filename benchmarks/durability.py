"""What ``sync_interval: always`` costs: JetStream publish latency and throughput, fsync on
every write versus the server's default (fsync every 2 minutes), on one node (R1) and on a
local 3-node cluster (R3).

    python -m benchmarks.durability                  # 4 s per phase, ~1 minute
    python -m benchmarks.durability --seconds 10

For each setup (single/cluster x default/always) the benchmark creates the session stream
(shared/streams.py, R1 or R3) and publishes agent-sized deltas (~120 bytes, with a
``Nats-Msg-Id`` like the SDK) on 50 session subjects:

* **sequential**: one publish in flight (an agent waiting for each ack): latency p50/p99;
* **concurrent**: 64 publishes in flight (many agents): acknowledged publishes per second.

It also reports the stored bytes per message (stream ``state.bytes / state.messages``).
Results go to benchmarks/results/durability.json. The servers' stores are in a temporary
directory on the same disk as /tmp: fsync cost depends entirely on that disk.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from nats.aio.client import Client as NATS

from benchmarks._common import (
    RESULTS,
    install_signal_exit,
    latency_summary,
    machine_info,
    say,
    table,
    write_json,
)
from shared import natsconn
from shared.cluster import LocalCluster, wait_stream
from shared.server import EmbeddedNats
from shared.settings import LogSettings, NatsSettings
from shared.streams import ensure_stream

SESSIONS = 50
IN_FLIGHT = 64


def payload(session: int, n: int) -> bytes:
    return orjson.dumps(
        {
            "v": 1,
            "type": "message.delta",
            "session": f"bench-{session}",
            "ts": int(time.time() * 1000),
            "message": "run-1-m1",
            "i": n,
            "text": f"token {n} of a streamed answer ",
        }
    )


async def phase(nc: NATS, seconds: float, in_flight: int, tag: str) -> dict[str, Any]:
    """Publish for ``seconds`` with ``in_flight`` concurrent publishers."""
    js = nc.jetstream(timeout=10)
    latencies: list[int] = []
    counter = itertools.count()
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        while time.monotonic() < deadline:
            n = next(counter)
            session = n % SESSIONS
            began = time.perf_counter_ns()
            await js.publish(
                f"tether.s.bench-{session}.a.run-1-m1",
                payload(session, n),
                headers={"Nats-Msg-Id": f"{tag}:{n}"},
            )
            latencies.append(time.perf_counter_ns() - began)

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    took = time.monotonic() - started
    return {
        "publishes": len(latencies),
        "per_second": round(len(latencies) / took, 1),
        "latency": latency_summary(latencies),
    }


async def measure(settings: NatsSettings, replicas: int, seconds: float) -> dict[str, Any]:
    nc = await natsconn.connect(settings)
    try:
        log = LogSettings(replicas=replicas)
        await ensure_stream(nc, log)
        if replicas > 1:
            await wait_stream(nc, log.stream, replicas)
        sequential = await phase(nc, seconds, 1, "seq")
        concurrent = await phase(nc, seconds, IN_FLIGHT, "par")
        reply = await nc.request(f"$JS.API.STREAM.INFO.{log.stream}", b"", timeout=5)
        state = orjson.loads(reply.data)["state"]
        per_msg = state["bytes"] / max(state["messages"], 1)
        return {
            "sequential": sequential,
            "concurrent": concurrent,
            "stored_bytes_per_msg": round(per_msg, 1),
        }
    finally:
        await natsconn.close(nc)


async def run_setup(kind: str, sync: str, work: Path, seconds: float) -> dict[str, Any]:
    root = work / f"{kind}-{sync}"
    if kind == "single":
        server = EmbeddedNats(root, port=-1, sync=sync)
        await asyncio.to_thread(server.start)
        try:
            return await measure(server.settings("bench-durability"), 1, seconds)
        finally:
            await asyncio.to_thread(server.stop)
    cluster = LocalCluster(root, sync=sync, tie_to_parent=True)
    await asyncio.to_thread(cluster.start)
    try:
        return await measure(cluster.settings("bench-durability"), 3, seconds)
    finally:
        await asyncio.to_thread(cluster.stop)


async def main(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="tether-bench-durability-"))
    info = machine_info()
    results: dict[str, Any] = {}
    try:
        for kind in ("single", "cluster"):
            for sync in ("default", "always"):
                say(f"{kind} R{1 if kind == 'single' else 3}, sync_interval {sync} ...")
                results[f"{kind}-{sync}"] = await run_setup(kind, sync, work, args.seconds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = [
        [
            name,
            r["sequential"]["latency"]["p50_ms"],
            r["sequential"]["latency"]["p99_ms"],
            r["sequential"]["per_second"],
            r["concurrent"]["per_second"],
            r["concurrent"]["latency"]["p99_ms"],
            r["stored_bytes_per_msg"],
        ]
        for name, r in results.items()
    ]
    say(
        table(
            [
                "setup",
                "1-in-flight p50 ms",
                "p99 ms",
                "pub/s",
                f"{IN_FLIGHT}-in-flight pub/s",
                "p99 ms",
                "bytes/msg",
            ],
            rows,
        )
    )
    write_json(
        RESULTS / "durability.json",
        {
            "benchmark": "durability",
            "config": {"seconds_per_phase": args.seconds, "in_flight": IN_FLIGHT},
            "machine": info,
            "results": results,
        },
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds per phase")
    return parser.parse_args()


if __name__ == "__main__":
    install_signal_exit()
    asyncio.run(main(parse_args()))

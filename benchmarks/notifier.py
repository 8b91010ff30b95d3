"""Notifier: run completed with the user offline -> signed webhook received.

    python -m benchmarks.notifier                     # 200 latency runs, 1000 for throughput
    python -m benchmarks.notifier --runs 200 --burst 2000

Processes (loopback): the bundled nats-server and ONE notifier subprocess
(``python -m shared.cli notifier``, ``TETHER_NOTIFY_GRACE_SECONDS=0``). In this process: an
agent (``shared.agent``) and an aiohttp receiver that answers 200 at once. One subscription
(all sessions, ``run.completed``), stored straight in the KV bucket.

* Latency: one run at a time, each in a new session with nobody connected; latency = the
  receiver's arrival time minus ``time.time_ns()`` just before ``run.complete()`` publishes.
  ``--runs`` samples (default 200), p50/p90/p99/max.
* Throughput: ``--burst`` runs completed as fast as the agent can publish them (50 in
  flight); deliveries per second = burst / (last arrival - first completion), for each
  ``--concurrency`` (per-origin bound, default 4 and 16).

Results go to benchmarks/results/notifier.json.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from benchmarks._common import (
    RESULTS,
    Children,
    event_loop,
    install_signal_exit,
    latency_summary,
    machine_info,
    say,
    start_nats,
    table,
    write_json,
)
from services.notifier import signing
from shared import agent, subjects, webhooks
from shared.server import EmbeddedNats
from shared.settings import LogSettings, Secret


class Receiver:
    """Records the arrival time of each run's webhook."""

    def __init__(self) -> None:
        self.arrivals: dict[str, int] = {}
        self.waiters: dict[str, asyncio.Future[int]] = {}
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def handle(self, request: web.Request) -> web.Response:
        now = time.time_ns()
        payload = orjson.loads(await request.read())
        run = str(payload["run"])
        self.arrivals.setdefault(run, now)
        waiter = self.waiters.pop(run, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(now)
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        server = site._server
        self.port = server.sockets[0].getsockname()[1] if server else 0  # type: ignore[attr-defined]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def complete_run(bot: agent.Client, sid: str, run_id: str) -> int:
    session = bot.session(sid)
    run = agent.Run(session, run_id, user="alice")
    await run.start()
    stamp = time.time_ns()
    await run.complete()
    return stamp


async def burst(bot: agent.Client, receiver: Receiver, prefix: str, count: int) -> dict[str, Any]:
    """``count`` runs completed 50 at a time; deliveries per second until the last arrival."""
    gate = asyncio.Semaphore(50)
    stamps: list[int] = []

    async def one(n: int) -> None:
        async with gate:
            stamps.append(await complete_run(bot, f"{prefix}s{n}", f"{prefix}{n}"))

    await asyncio.gather(*(one(n) for n in range(count)))

    def arrivals() -> list[int]:
        return [t for run, t in receiver.arrivals.items() if run.startswith(prefix)]

    deadline = time.monotonic() + 120
    while len(arrivals()) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    got = arrivals()
    elapsed = (max(got) - min(stamps)) / 1e9
    return {
        "runs": count,
        "delivered": len(got),
        "seconds": elapsed,
        "deliveries_per_second": len(got) / elapsed,
    }


async def direct_posts(receiver: Receiver, runs: int, burst_size: int) -> dict[str, Any]:
    """The baseline: the same signed POST sent straight from this process (the HTTP floor),
    one at a time for latency, then ``burst_size`` with 16 in flight for throughput."""
    key = base64.b64decode(webhooks.new_secret().removeprefix(webhooks.SECRET_PREFIX))
    url = f"http://127.0.0.1:{receiver.port}/hook"
    loop = asyncio.get_running_loop()
    samples = []
    async with aiohttp.ClientSession() as http:

        async def post(run_id: str) -> None:
            body = orjson.dumps({"type": "run.completed", "run": run_id})
            headers = signing.headers(key, f"msg_{run_id}", int(time.time()), body)
            async with http.post(url, data=body, headers=headers) as resp:
                await resp.read()

        for n in range(runs):
            run_id = f"direct-{n}"
            waiter: asyncio.Future[int] = loop.create_future()
            receiver.waiters[run_id] = waiter
            stamp = time.time_ns()
            await post(run_id)
            samples.append(await asyncio.wait_for(waiter, 30) - stamp)
        gate = asyncio.Semaphore(16)
        started = time.monotonic()

        async def one(n: int) -> None:
            async with gate:
                await post(f"direct-burst-{n}")

        await asyncio.gather(*(one(n) for n in range(burst_size)))
        per_second = burst_size / (time.monotonic() - started)
    return {"latency": latency_summary(samples), "deliveries_per_second": per_second}


async def measure(args: argparse.Namespace, server: EmbeddedNats, work: Path) -> dict[str, Any]:
    receiver = Receiver()
    await receiver.start()
    bot = await agent.connect(server.settings("bench-agent"), log_settings=LogSettings())
    kv = await webhooks.bucket(bot.nc, subjects.WEBHOOKS_BUCKET)
    sub = webhooks.Subscription(
        "wh_bench",
        f"http://127.0.0.1:{receiver.port}/hook",
        Secret(webhooks.new_secret()),
        ("run.completed",),
    )
    await kv.put(sub.id, sub.stored())
    children = Children(work)
    results: dict[str, Any] = {}
    try:
        for concurrency in args.concurrency:
            env = {
                **server.client_env(),
                "TETHER_NOTIFY_GRACE_SECONDS": "0",
                "TETHER_WEBHOOK_ALLOW_PRIVATE": "loopback",
                "TETHER_WEBHOOK_CONCURRENCY": str(concurrency),
                "TETHER_LOG_FORMAT": "json",
                "TETHER_LOG_LEVEL": "warning",
            }
            notifier = await children.start(
                f"notifier-c{concurrency}", ["-m", "shared.cli", "notifier"], env
            )
            await notifier.expect("ready", 30)
            if not results:  # latency once, with the first concurrency setting
                samples = []
                loop = asyncio.get_running_loop()
                for n in range(args.runs):
                    run_id = f"lat-{n}"
                    waiter: asyncio.Future[int] = loop.create_future()
                    receiver.waiters[run_id] = waiter
                    stamp = await complete_run(bot, f"lat-s{n}", run_id)
                    arrived = await asyncio.wait_for(waiter, 30)
                    samples.append(arrived - stamp)
                results["latency"] = latency_summary(samples)
                results["latency_samples_ms"] = [s / 1e6 for s in samples]
            prefix = f"burst-c{concurrency}-"
            results[f"throughput_c{concurrency}"] = await burst(bot, receiver, prefix, args.burst)
            await children.stop(notifier)
        results["baseline_direct_post"] = await direct_posts(receiver, args.runs, args.burst)
    finally:
        await children.stop_all()
        await bot.close()
        await receiver.stop()
    return results


async def main(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="tether-bench-notifier-"))
    server = start_nats(work / "nats")
    try:
        info = machine_info()
        results = await measure(args, server, work)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    lat = results["latency"]
    base = results["baseline_direct_post"]["latency"]
    say(f"\nrun completed (user offline, grace 0) -> webhook received, {lat['count']} runs")
    keys = ("p50_ms", "p90_ms", "p99_ms", "max_ms", "mean_ms")
    say(
        table(
            ["", "p50 ms", "p90 ms", "p99 ms", "max ms", "mean ms"],
            [
                ["tether notifier", *(lat[k] for k in keys)],
                ["direct POST (floor)", *(base[k] for k in keys)],
                ["ratio", *(lat[k] / base[k] if base[k] else 0 for k in keys)],
            ],
        )
    )
    rows = []
    for concurrency in args.concurrency:
        t = results[f"throughput_c{concurrency}"]
        rows.append(
            [concurrency, t["runs"], t["delivered"], t["seconds"], t["deliveries_per_second"]]
        )
    rows.append(
        [
            "direct POST, 16 in flight (floor)",
            args.burst,
            args.burst,
            "",
            results["baseline_direct_post"]["deliveries_per_second"],
        ]
    )
    say("\nburst to a fast receiver (one origin)")
    say(table(["per-origin concurrency", "runs", "delivered", "seconds", "per second"], rows))
    write_json(
        args.out,
        {"machine": info, "event_loop": event_loop(), "args": vars(args) | {"out": str(args.out)}}
        | results,
    )
    say(f"\nwritten to {args.out}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--out", type=Path, default=RESULTS / "notifier.json")
    return parser.parse_args()


if __name__ == "__main__":
    install_signal_exit()
    asyncio.run(main(parse_args()))

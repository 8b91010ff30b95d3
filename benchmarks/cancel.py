"""Cancel latency: a device sends ``cancel`` over its WebSocket -> the agent knows.

    python -m benchmarks.cancel                 # 200 cancels
    python -m benchmarks.cancel --cancels 500

Processes (loopback): the bundled nats-server and ONE gateway subprocess
(``python -m shared.cli gateway``). In this process: one WebSocket device (aiohttp) and an
agent (``shared.agent``). For each sample the agent opens a run (``session.run``, which
follows the session's live control subject) and waits; the device sends
``{"type":"cancel","run":…}``. Measured, with ``time.perf_counter_ns`` in this process:

* cancel -> agent: from just before the frame is written to the moment the run's
  ``on_cancel`` hook runs (gateway check of the run's state, JetStream store, stream
  republish, core NATS delivery);
* cancel -> device sees ``run.cancelled``: the agent's terminal event back on the device.

Results go to benchmarks/results/cancel.json.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from benchmarks._common import (
    RESULTS,
    SECRET,
    Children,
    event_loop,
    install_signal_exit,
    latency_summary,
    machine_info,
    say,
    start_gateway,
    start_nats,
    table,
    write_json,
)
from shared import agent
from shared.runcontrol import Signal
from shared.server import EmbeddedNats
from shared.settings import LogSettings
from shared.tokens import mint

SESSION = "bench-cancel"


async def measure(cancels: int, server: EmbeddedNats, work: Path) -> dict[str, Any]:
    children = Children(work)
    bot = await agent.connect(server.settings("bench-agent"), log_settings=LogSettings())
    session = bot.session(SESSION)
    to_agent: list[int] = []
    to_device: list[int] = []
    cancelled: dict[str, asyncio.Future[None]] = {}
    loop = asyncio.get_running_loop()
    try:
        _, port = await start_gateway(children, server)
        jwt = mint(SECRET, subject="bench", sessions=[SESSION])
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(
                f"ws://127.0.0.1:{port}/v1/sessions/{SESSION}/ws", params={"token": jwt}
            )

            async def read() -> None:
                async for msg in ws:
                    frame = orjson.loads(msg.data)
                    event = frame.get("event") or {}
                    if event.get("type") == "run.cancelled":
                        waiter = cancelled.get(str(event.get("run")))
                        if waiter is not None and not waiter.done():
                            waiter.set_result(None)

            reader = asyncio.create_task(read())
            for n in range(cancels):
                run_id = f"run-{n}"
                hooked: asyncio.Future[int] = loop.create_future()
                seen: asyncio.Future[None] = loop.create_future()
                cancelled[run_id] = seen

                def on_cancel(signal: Signal, hooked: asyncio.Future[int] = hooked) -> None:
                    if not hooked.done():
                        hooked.set_result(time.perf_counter_ns())

                async with session.run(run_id, on_cancel=on_cancel) as run:
                    frame = {"type": "cancel", "id": f"c-{n}", "run": run_id}
                    sent = time.perf_counter_ns()
                    await ws.send_str(orjson.dumps(frame).decode())
                    await asyncio.wait_for(run.wait_cancelled(), 10)
                    to_agent.append(await hooked - sent)
                await asyncio.wait_for(seen, 10)
                to_device.append(time.perf_counter_ns() - sent)
            reader.cancel()
            await ws.close()
    finally:
        await children.stop_all()
        await bot.close()
    return {
        "cancel_to_agent": latency_summary(to_agent),
        "cancel_to_device_run_cancelled": latency_summary(to_device),
        "cancel_to_agent_samples_ms": [s / 1e6 for s in to_agent],
    }


async def main(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="tether-bench-cancel-"))
    server = start_nats(work / "nats")
    try:
        info = machine_info()
        results = await measure(args.cancels, server, work)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    keys = ("p50_ms", "p90_ms", "p99_ms", "max_ms", "mean_ms")
    rows = [
        [name, *(f"{results[key][k]:.2f}" for k in keys)]
        for name, key in (
            ("cancel -> agent", "cancel_to_agent"),
            ("cancel -> device sees run.cancelled", "cancel_to_device_run_cancelled"),
        )
    ]
    say(f"\n{args.cancels} cancels, one device, one gateway subprocess, loop {event_loop()}")
    say(table(["", "p50 ms", "p90 ms", "p99 ms", "max ms", "mean ms"], rows))
    p99 = results["cancel_to_agent"]["p99_ms"]
    say(f"target p99 <= 20 ms: {'met' if p99 <= 20 else 'NOT met'} ({p99:.2f} ms)")
    write_json(args.out, {"machine": info, "cancels": args.cancels, **results})


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cancels", type=int, default=200, help="samples (default 200)")
    parser.add_argument("--out", type=Path, default=RESULTS / "cancel.json")
    return parser.parse_args()


if __name__ == "__main__":
    install_signal_exit()
    asyncio.run(main(parse_args()))

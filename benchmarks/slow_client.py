"""Gateway memory with one stalled WebSocket client among 100 streaming ones.

    python -m benchmarks.slow_client                 # "before" then "after"
    python -m benchmarks.slow_client --mode after --bulk 3000

Processes (loopback): the bundled nats-server and ONE gateway subprocess
(``python -m shared.cli gateway``); this process runs the agent (``shared.agent``), the
streaming devices (aiohttp) and the stalled client. Sessions ``s0..s99`` each get one
streaming device and a token stream (``--rate`` tokens/s, the text is ``time_ns`` so the
device computes its latency). The stalled client is a raw socket with a tiny receive
buffer that does the WebSocket upgrade on ``s0`` and then never reads; the agent posts
``--bulk`` messages of ``--bulk-bytes`` each into ``s0``.

Configurations (gateway environment):

* ``before``: the send queue bounded only by frames (``TETHER_SEND_QUEUE_FRAMES``, 4096),
  as before the byte bound existed (``TETHER_SEND_QUEUE_BYTES`` set to 1 TiB);
* ``after``: the defaults (``TETHER_SEND_QUEUE_BYTES`` = 8 MiB).

Printed per configuration: gateway RSS before the bulk (baseline), its peak while the
stalled client holds frames, its growth, the RSS at the end, how many clients the
gateway closed as slow, and the streaming devices' latency.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
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
    install_signal_exit,
    latency_summary,
    machine_info,
    rss_kib,
    say,
    start_nats,
    table,
    write_json,
)
from shared import agent
from shared.server import EmbeddedNats
from shared.settings import LogSettings
from shared.tokens import mint

MODES: dict[str, dict[str, str]] = {
    "before": {"TETHER_SEND_QUEUE_BYTES": str(1 << 40)},
    "after": {},
}


class StalledClient:
    """A raw TCP client: WebSocket upgrade, then it never reads (tiny receive buffer)."""

    def __init__(self, port: int, session: str, token: str) -> None:
        self.port = port
        self.session = session
        self.token = token
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        self.sock.setblocking(False)
        await loop.sock_connect(self.sock, ("127.0.0.1", self.port))
        request = (
            f"GET /v1/sessions/{self.session}/ws?token={self.token}&since=0 HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{self.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        await loop.sock_sendall(self.sock, request.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = await asyncio.wait_for(loop.sock_recv(self.sock, 1024), 10)
            if not chunk:
                raise ConnectionError("gateway closed the stalled client during the upgrade")
            head += chunk
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(f"upgrade refused: {head[:60]!r}")

    def close(self) -> None:
        self.sock.close()


class Streamers:
    """One WebSocket device per session; latency of each live ``message.delta``."""

    def __init__(self, port: int, sessions: list[str]) -> None:
        self.url = f"ws://127.0.0.1:{port}/v1/sessions/{{}}/ws"
        self.sessions = sessions
        self.latencies: list[int] = []
        self.measuring = False
        self.live = 0
        self.frames = 0
        self.closed: list[int | None] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self.http = aiohttp.ClientSession()
        self.tasks = [
            asyncio.create_task(self._device(sid, i)) for i, sid in enumerate(self.sessions)
        ]
        deadline = time.monotonic() + 60
        while self.live < len(self.sessions):
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {self.live} of {len(self.sessions)} devices caught up")
            await asyncio.sleep(0.05)

    async def _device(self, sid: str, index: int) -> None:
        if self.http is None:
            return
        token = mint(SECRET, subject=f"reader{index}", sessions=[sid], ttl_seconds=3600)
        ws = await self.http.ws_connect(
            self.url.format(sid), params={"token": token, "since": "0"}, max_msg_size=0
        )
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            now = time.time_ns()
            self.frames += 1
            frame = orjson.loads(msg.data)
            if frame["type"] == "caught_up":
                self.live += 1
            elif frame["type"] == "event" and self.measuring:
                event = frame["event"]
                if event.get("type") == "message.delta":
                    try:
                        self.latencies.append(now - int(event["text"]))
                    except (KeyError, ValueError):
                        pass
        self.closed.append(ws.close_code)

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.http is not None:
            await self.http.close()


async def gateway_counters(port: int) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/healthz") as resp,
    ):
        body: dict[str, Any] = await resp.json()
    return body


async def run_mode(
    mode: str, server: EmbeddedNats, children: Children, args: argparse.Namespace
) -> dict[str, Any]:
    env = {
        **server.client_env(),
        "TETHER_JWT_SECRET": SECRET.reveal(),
        "TETHER_GATEWAY_HOST": "127.0.0.1",
        "TETHER_GATEWAY_PORT": "0",
        "TETHER_LOG_FORMAT": "json",
        **MODES[mode],
    }
    gateway = await children.start(f"gateway-{mode}", ["-m", "shared.cli", "gateway"], env)
    port = int((await gateway.expect("ready", 30))["port"])
    tag = f"{mode}{int(time.time())}"
    sessions = [f"slow{i:03d}-{tag}" for i in range(args.streamers)]
    token = mint(SECRET, subject="bench-device", sessions=["*"], ttl_seconds=3600)
    client = await agent.connect(
        server.settings("bench-agent"), log_settings=LogSettings(), coalesce_ms=0
    )
    streamers = Streamers(port, sessions)
    stalled = StalledClient(port, sessions[0], token)
    samples: list[int] = []
    try:
        messages = []
        for sid in sessions:
            run = agent.Run(client.session(sid), f"run-{sid}")
            await run.start()
            message = run.message(coalesce_ms=0)
            await message.start()
            messages.append(message)
        await streamers.start()
        await stalled.connect()
        await asyncio.sleep(1.0)
        baseline = rss_kib(gateway.pid)
        streamers.measuring = True
        stop = asyncio.Event()

        async def stream(message: agent.Message, phase: float) -> None:
            await asyncio.sleep(phase)
            while not stop.is_set():
                await message.append(str(time.time_ns()))
                await asyncio.sleep(1.0 / args.rate)

        async def sample() -> None:
            while True:
                samples.append(rss_kib(gateway.pid))
                await asyncio.sleep(0.1)

        sampler = asyncio.create_task(sample())
        streams = [
            asyncio.create_task(stream(m, i / (args.rate * len(messages))))
            for i, m in enumerate(messages)
        ]
        bulk_session = client.session(sessions[0])
        text = "x" * args.bulk_bytes
        started = time.monotonic()
        for i in range(args.bulk):
            await bulk_session.post(text, message_id=f"bulk-{i}")
        bulk_seconds = time.monotonic() - started
        await asyncio.sleep(args.settle)
        stop.set()
        await asyncio.gather(*streams)
        sampler.cancel()
        final = rss_kib(gateway.pid)
        health = await gateway_counters(port)
    finally:
        stalled.close()
        await streamers.stop()
        await client.close()
        await children.stop(gateway)
    peak = max(samples) if samples else 0
    return {
        "mode": mode,
        "env": MODES[mode],
        "baseline_kib": baseline,
        "peak_kib": peak,
        "growth_kib": peak - baseline,
        "final_kib": final,
        "bulk_messages": args.bulk,
        "bulk_bytes_each": args.bulk_bytes,
        "bulk_seconds": bulk_seconds,
        "slow_clients_closed": health["counters"].get("slow_clients", 0),
        "connections_at_end": health["connections"],
        "latency": latency_summary(streamers.latencies),
    }


async def main(args: argparse.Namespace) -> None:
    install_signal_exit()
    work = Path(tempfile.mkdtemp(prefix="tether-slow-"))
    children = Children(work)
    server = start_nats(work / "nats")
    results: list[dict[str, Any]] = []
    try:
        for mode in args.mode or ["before", "after"]:
            say(
                f"-- {mode}: {args.streamers} streaming devices + 1 stalled, "
                f"{args.bulk} x {args.bulk_bytes} B into the stalled device's session"
            )
            results.append(await run_mode(mode, server, children, args))
    finally:
        await children.stop_all()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    rows = [
        (
            r["mode"],
            r["baseline_kib"] / 1024,
            r["peak_kib"] / 1024,
            r["growth_kib"] / 1024,
            r["final_kib"] / 1024,
            r["slow_clients_closed"],
            r["latency"]["p50_ms"],
            r["latency"]["p99_ms"],
            r["latency"]["max_ms"],
            r["latency"]["count"],
        )
        for r in results
    ]
    say(
        table(
            [
                "config",
                "rss MiB",
                "peak MiB",
                "growth MiB",
                "end MiB",
                "slow closed",
                "p50 ms",
                "p99 ms",
                "max ms",
                "tokens",
            ],
            rows,
        )
    )
    if args.json:
        write_json(RESULTS / "slow_client.json", {"machine": machine_info(), "runs": results})


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", action="append", choices=sorted(MODES))
    parser.add_argument("--streamers", type=int, default=100)
    parser.add_argument("--rate", type=float, default=5.0, help="tokens/s per session")
    parser.add_argument("--bulk", type=int, default=1500, help="messages into the slow session")
    parser.add_argument("--bulk-bytes", type=int, default=64 * 1024)
    parser.add_argument("--settle", type=float, default=8.0, help="seconds after the bulk")
    parser.add_argument("--json", action="store_true", help="also write results/slow_client.json")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))

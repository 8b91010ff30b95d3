"""The hand-built stack: Redis pub/sub plus an aiohttp SSE relay, against Tether.

    python -m benchmarks.redis_sse                  # 10 sessions x 50 tokens/s, 10 s each
    python -m benchmarks.redis_sse --sessions 100

Needs ``redis-server`` on the PATH (Debian: ``apt-get install -y redis-server``) and the
``redis`` package (the ``bench`` extra).

Processes (loopback), hand-built stack: ``redis-server`` (no persistence), a **relay**
process (aiohttp; ``GET /sse/{session}`` subscribes a redis-py pub/sub to the session's
channel and writes every message as an SSE ``data:`` line), a **publisher** process
(redis-py ``PUBLISH`` of a JSON payload shaped like a delta event, one channel per session)
and an **SSE clients** process (one streaming GET per session). Tether: the bundled
nats-server, one gateway, and the latency benchmark's agents and devices processes. Same
schedule as ``benchmarks.latency`` (rate per session, phases spread evenly, warm-up,
``--rounds`` alternating rounds); latency = receive ``time_ns`` - the stamp in the token.

Then the disconnect test, one answer of ``--answer-tokens`` tokens at 50 tokens/s per
system: the client disconnects ``--gap-at`` seconds into the answer and reconnects 2 s
later (SSE with ``Last-Event-ID``, which a pub/sub relay cannot honour; Tether with
``since`` = the last sequence it saw). Lost = tokens of the answer that never reached the
client (rebuilt from deltas and snapshots, not from the final ``message.complete``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from benchmarks import latency
from benchmarks._common import (
    RESULTS,
    SECRET,
    Children,
    _die_with_parent,
    emit,
    event_loop,
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
from shared import loop, natsconn
from shared.server import EmbeddedNats
from shared.settings import LogSettings
from shared.streams import ensure_stream

MODULE = "benchmarks.redis_sse"
CHANNEL = "bench.tok"


def redis_server_binary() -> str | None:
    return shutil.which("redis-server")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis(work: Path) -> tuple[subprocess.Popen[bytes], int]:
    binary = redis_server_binary()
    if binary is None:
        raise RuntimeError("redis-server is not installed (apt-get install -y redis-server)")
    port = free_port()
    log = open(work / "redis.log", "wb")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=work,
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=_die_with_parent,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process, port
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("redis-server did not start")


# ---- child roles -----------------------------------------------------------------------------


async def role_relay(args: argparse.Namespace) -> None:
    """The SSE relay: one redis pub/sub subscription per client, ``data:`` per message."""
    import redis.asyncio as aioredis
    from aiohttp import web

    client = aioredis.Redis(host="127.0.0.1", port=args.redis_port)

    async def sse(request: web.Request) -> web.StreamResponse:
        channel = f"{CHANNEL}.{request.match_info['sid']}"
        pubsub = client.pubsub()
        await pubsub.subscribe(channel)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        await response.write(b": subscribed\n\n")
        try:
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                if message is None:
                    continue
                await response.write(b"data: " + message["data"] + b"\n\n")
        except ConnectionError:
            pass  # the client went away
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
        return response

    app = web.Application()
    app.router.add_get("/sse/{sid}", sse)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    emit({"event": "ready", "port": port})
    await asyncio.Event().wait()


async def role_redis_pub(args: argparse.Namespace) -> None:
    import redis.asyncio as aioredis

    commands = await latency.stdin_commands()
    client = aioredis.Redis(host="127.0.0.1", port=args.redis_port)
    await client.ping()
    sids = latency.session_ids(args.sessions, args.tag)
    counters = [0] * len(sids)
    sent = latency.Sent()
    emit({"event": "ready"})

    async def stream(schedule: latency.Schedule, index: int) -> None:
        sid = sids[index]
        channel = f"{CHANNEL}.{sid}"
        due = schedule.first(index)
        while due < schedule.end_ns and time.time_ns() < schedule.end_ns:
            await schedule.wait(due)
            now = time.time_ns()
            await client.publish(channel, latency.delta_payload(sid, counters[index], now))
            counters[index] += 1
            sent.one(schedule, due, now)
            due += schedule.interval_ns
        sent.missed(schedule, due)

    await sent.serve(commands, len(sids), args.rate, stream)
    await client.aclose()


async def role_sse_clients(args: argparse.Namespace) -> None:
    import aiohttp

    commands = await latency.stdin_commands()
    recorder = latency.Recorder()
    sids = latency.session_ids(args.sessions, args.tag)
    subscribed: set[str] = set()
    all_live = asyncio.Event()

    async def client(http: aiohttp.ClientSession, sid: str) -> None:
        url = f"http://127.0.0.1:{args.relay_port}/sse/{sid}"
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=None)) as resp:
            async for line in resp.content:
                now = time.time_ns()
                if line.startswith(b"data: "):
                    try:
                        recorder.record(int(orjson.loads(line[6:])["text"]), now)
                    except (ValueError, KeyError, TypeError):
                        recorder.bad += 1
                elif line.startswith(b": subscribed"):
                    subscribed.add(sid)
                    if len(subscribed) == len(sids):
                        all_live.set()
        emit({"event": "error", "error": f"{sid}: SSE stream ended"})

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        tasks = [asyncio.create_task(client(http, sid)) for sid in sids]
        await asyncio.wait_for(all_live.wait(), 60)
        emit({"event": "ready"})
        await recorder.serve(commands, args.drain)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


ROLES = {"relay": role_relay, "redis-pub": role_redis_pub, "sse-clients": role_sse_clients}


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


# ---- disconnect test -------------------------------------------------------------------------


def tokens(count: int) -> list[str]:
    return [f"t{i:05d} " for i in range(count)]


def lost_and_duplicated(expected: list[str], text: str) -> tuple[int, int]:
    parts = [p + " " for p in text.split(" ") if p]
    seen: dict[str, int] = {}
    for part in parts:
        seen[part] = seen.get(part, 0) + 1
    lost = sum(1 for t in expected if t not in seen)
    duplicated = sum(n - 1 for n in seen.values() if n > 1)
    return lost, duplicated


async def gap_redis(args: argparse.Namespace, redis_port: int, relay_port: int) -> dict[str, Any]:
    import aiohttp
    import redis.asyncio as aioredis

    sid = f"gap-{secrets.token_hex(3)}"
    words = tokens(args.answer_tokens)
    received: list[str] = []
    client = aioredis.Redis(host="127.0.0.1", port=redis_port)
    url = f"http://127.0.0.1:{relay_port}/sse/{sid}"
    subscribed = asyncio.Event()
    finished = asyncio.Event()

    async def read(
        http: aiohttp.ClientSession, stop_after: float | None, headers: dict[str, str]
    ) -> None:
        async with http.get(url, headers=headers) as resp:
            start = time.monotonic()
            async for line in resp.content:
                if line.startswith(b": subscribed"):
                    subscribed.set()
                elif line.startswith(b"data: "):
                    data = orjson.loads(line[6:])
                    if data.get("end"):
                        finished.set()
                        return
                    received.append(str(data["text"]))
                if stop_after is not None and time.monotonic() - start >= stop_after:
                    return

    async def publish() -> None:
        for i, word in enumerate(words):
            await client.publish(f"{CHANNEL}.{sid}", orjson.dumps({"i": i, "text": word}))
            await asyncio.sleep(1 / 50)
        await client.publish(f"{CHANNEL}.{sid}", orjson.dumps({"end": True}))

    async with aiohttp.ClientSession() as http:
        first = asyncio.create_task(read(http, args.gap_at, {}))
        await asyncio.wait_for(subscribed.wait(), 10)
        publisher = asyncio.create_task(publish())
        await first
        gap_started = time.monotonic()
        await asyncio.sleep(args.gap)
        subscribed.clear()
        second = asyncio.create_task(read(http, None, {"Last-Event-ID": str(len(received))}))
        await asyncio.wait_for(subscribed.wait(), 10)
        reconnect_s = time.monotonic() - gap_started
        await publisher
        await asyncio.wait_for(finished.wait(), 10)
        await second
    await client.aclose()
    lost, duplicated = lost_and_duplicated(words, "".join(received))
    return {
        "tokens": len(words),
        "received": len(received),
        "lost": lost,
        "duplicated": duplicated,
        "offline_seconds": round(reconnect_s, 3),
    }


async def gap_tether(args: argparse.Namespace, server: EmbeddedNats, port: int) -> dict[str, Any]:
    import aiohttp

    from shared import agent
    from shared.tokens import mint

    sid = f"gap-{secrets.token_hex(3)}"
    words = tokens(args.answer_tokens)
    token = mint(SECRET, subject="bench-gap", sessions=["*"], ttl_seconds=3600)
    url = f"ws://127.0.0.1:{port}/v1/sessions/{sid}/ws"
    bot = await agent.connect(server.settings("bench-gap-agent"), log_settings=LogSettings())
    texts: dict[str, str] = {}
    state = {"seq": 0, "frames": 0}
    live = asyncio.Event()
    finished = asyncio.Event()

    async def read(http: aiohttp.ClientSession, stop_after: float | None) -> None:
        params = {"token": token, "since": str(state["seq"])}
        async with http.ws_connect(url, params=params, max_msg_size=0) as ws:
            start = time.monotonic()
            while True:
                timeout = None if stop_after is None else stop_after - (time.monotonic() - start)
                if timeout is not None and timeout <= 0:
                    return
                try:
                    msg = await asyncio.wait_for(ws.receive(), timeout)
                except TimeoutError:
                    return
                if msg.type != aiohttp.WSMsgType.TEXT:
                    return
                frame = orjson.loads(msg.data)
                state["frames"] += 1
                kind = frame.get("type")
                if kind == "caught_up":
                    live.set()
                elif kind == "event":
                    state["seq"] = int(frame["seq"])
                    event = frame["event"]
                    etype, mid = event.get("type"), str(event.get("message", ""))
                    if etype == "message.delta":
                        texts[mid] = texts.get(mid, "") + str(event.get("text", ""))
                    elif etype in ("message.snapshot", "message.reset"):
                        texts[mid] = str(event.get("text", ""))
                    elif etype == "message.complete":
                        finished.set()
                        return

    async def stream() -> None:
        run = agent.Run(bot.session(sid), f"run-{sid}")
        await run.start()
        message = run.message()
        await message.start()
        for word in words:
            await message.append(word)
            await asyncio.sleep(1 / 50)
        await message.complete()
        await run.complete()

    try:
        async with aiohttp.ClientSession() as http:
            first = asyncio.create_task(read(http, args.gap_at))
            await asyncio.wait_for(live.wait(), 10)
            streamer = asyncio.create_task(stream())
            await first
            gap_started = time.monotonic()
            await asyncio.sleep(args.gap)
            live.clear()
            second = asyncio.create_task(read(http, None))
            await asyncio.wait_for(live.wait(), 10)
            reconnect_s = time.monotonic() - gap_started
            await streamer
            await asyncio.wait_for(finished.wait(), 10)
            await second
    finally:
        await bot.close()
    text = "".join(texts.values())
    lost, duplicated = lost_and_duplicated(words, text)
    return {
        "tokens": len(words),
        "received_text_tokens": len([p for p in text.split(" ") if p]),
        "lost": lost,
        "duplicated": duplicated,
        "offline_seconds": round(reconnect_s, 3),
        "frames": state["frames"],
    }


# ---- the benchmark process -------------------------------------------------------------------


def role_args(args: argparse.Namespace, role: str, **extra: Any) -> list[str]:
    out = ["-m", MODULE, "--role", role, "--sessions", str(args.sessions)]
    out += ["--rate", str(args.rate), "--tag", args.tag, "--drain", str(args.drain)]
    out += ["--hard-timeout", str(latency.hard_limit(args))]
    for key, value in extra.items():
        out += [f"--{key.replace('_', '-')}", str(value)]
    return out


async def orchestrate(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="tether-bench-redis-sse-"))
    children = Children(work)
    server: EmbeddedNats | None = None
    redis_process: subprocess.Popen[bytes] | None = None
    try:
        say(f"starting redis-server and nats-server (data in {work})")
        redis_process, redis_port = await asyncio.to_thread(start_redis, work)
        server = await asyncio.to_thread(start_nats, work / "nats")
        nc = await natsconn.connect(server.settings("bench-setup"))
        await ensure_stream(nc, LogSettings())
        await nc.close()
        machine = machine_info()
        env = server.client_env()
        assert server.process is not None

        say("starting the hand-built stack: SSE relay, redis publisher, SSE clients")
        relay = await children.start("relay", role_args(args, "relay", redis_port=redis_port))
        relay_port = int((await relay.expect("ready", 30))["port"])
        sse = await children.start(
            "sse-clients", role_args(args, "sse-clients", relay_port=relay_port)
        )
        await sse.expect("ready", 60)
        pub = await children.start("redis-pub", role_args(args, "redis-pub", redis_port=redis_port))
        await pub.expect("ready", 30)
        assert redis_process is not None
        hand = latency.System(
            "redis",
            args,
            pub,
            sse,
            {"redis": redis_process.pid, "relay": relay.pid, "pub": pub.pid, "sse": sse.pid},
        )

        say("starting tether: gateway, devices and agents (benchmarks.latency roles)")
        gateway, port = await start_gateway(children, server)
        devices = await children.start(
            "devices", latency.child_args(args, "devices", gateway_port=port), env
        )
        await devices.expect("ready", 120)
        agents = await children.start("agents", latency.child_args(args, "agents"), env)
        await agents.expect("ready", 120)
        tether = latency.System(
            "tether",
            args,
            agents,
            devices,
            {"nats": server.process.pid, "gw": gateway.pid, "agents": agents.pid},
        )
        for index in range(args.rounds):
            await hand.run_round(index)
            await tether.run_round(index)
        redis_summary, tether_summary = hand.summary(), tether.summary()

        say(f"disconnect test: {args.answer_tokens} tokens at 50/s, offline {args.gap:g} s")
        gap = {
            "redis_sse": await gap_redis(args, redis_port, relay_port),
            "tether": await gap_tether(args, server, port),
        }
        rows = []
        for name, res in (("redis + SSE", redis_summary), ("tether", tether_summary)):
            lat = res["latency"]
            rows.append(
                [name, res["received"], lat["p50_ms"], lat["p99_ms"], lat["p999_ms"], lat["max_ms"]]
            )
        rows.append(
            ["ratio tether/redis", ""]
            + [
                ratio(tether_summary["latency"][k], redis_summary["latency"][k])
                for k in ("p50_ms", "p99_ms", "p999_ms", "max_ms")
            ]
        )
        say()
        say(
            f"latency (ms), {args.sessions} sessions x {args.rate:g} tokens/s, {args.seconds:g} s"
            f" measured per system"
        )
        say(table(["", "received", "p50", "p99", "p99.9", "max"], rows))
        say(
            table(
                ["disconnect 2 s mid-answer", "tokens", "lost", "duplicated", "offline s"],
                [
                    [name, g["tokens"], g["lost"], g["duplicated"], g["offline_seconds"]]
                    for name, g in (("redis + SSE", gap["redis_sse"]), ("tether", gap["tether"]))
                ],
            )
        )
        return {
            "benchmark": "redis_sse",
            "config": {
                "sessions": args.sessions,
                "rate_per_session": args.rate,
                "seconds_per_system": args.seconds,
                "rounds": args.rounds,
                "answer_tokens": args.answer_tokens,
                "gap_seconds": args.gap,
                "gap_at_seconds": args.gap_at,
            },
            "machine": {**machine, "event_loop": event_loop()},
            "redis_sse": redis_summary,
            "tether": tether_summary,
            "ratio_tether_over_redis": {
                k: ratio(tether_summary["latency"][f"{k}_ms"], redis_summary["latency"][f"{k}_ms"])
                for k in ("p50", "p99", "p999")
            },
            "disconnect": gap,
            "tether_lost_none": gap["tether"]["lost"] == 0,
        }
    finally:
        await children.stop_all()
        if server is not None:
            await asyncio.to_thread(server.stop)
        if redis_process is not None:
            redis_process.terminate()
            try:
                redis_process.wait(5)
            except subprocess.TimeoutExpired:
                redis_process.kill()
        shutil.rmtree(work, ignore_errors=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.redis_sse",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--rate", type=float, default=50.0, help="tokens per second per session")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured s per system")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--drain", type=float, default=10.0)
    parser.add_argument("--answer-tokens", type=int, default=250, help="disconnect test")
    parser.add_argument("--gap", type=float, default=2.0, help="seconds offline")
    parser.add_argument("--gap-at", type=float, default=1.5, help="disconnect after (s)")
    parser.add_argument("--quick", action="store_true", help="2 sessions, 2 s, 1 round")
    parser.add_argument("--out", type=Path, default=RESULTS / "redis_sse.json")
    parser.add_argument("--role", choices=sorted(ROLES), help=argparse.SUPPRESS)
    parser.add_argument("--tag", default="", help=argparse.SUPPRESS)
    parser.add_argument("--redis-port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--relay-port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--hard-timeout", type=float, default=600.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.checkpoint_chunks = -1  # the latency roles' option: the SDK's default
    if args.quick:
        args.sessions, args.seconds, args.rounds = min(args.sessions, 2), 1.0, 1
        args.warmup, args.drain, args.answer_tokens = 0.3, 3.0, min(args.answer_tokens, 175)
        args.gap_at = min(args.gap_at, 1.0)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.role:
        loop.run(run_role(args))
        return
    if redis_server_binary() is None:
        say("redis-server is not installed (apt-get install -y redis-server): skipped")
        sys.exit(2)
    args.tag = secrets.token_hex(3)
    os.environ.setdefault("TETHER_EVENT_LOOP", "uvloop")
    orchestrate_main(lambda: orchestrate(args), latency.hard_limit(args) + 120, args.out)


if __name__ == "__main__":
    main()

"""Choosing the replay mechanism by measurement: batched direct get vs consumers.

    python -m benchmarks.replay                     # about 2-4 minutes on 2 cores
    python -m benchmarks.replay --quick             # fewer repetitions, N=1,000 only

Set-up: the bundled nats-server and the session stream, holding a target session with a
streaming (not completed) agent message of 10,000 deltas (checkpoints off, so all of them
stay stored), the same tokens in a second target streamed with the SDK's default
checkpoints, and 50 other sessions of 1,000 events each, all interleaved. Then:

(a) read the target's history after since=0 with ``shared.history.read`` (batched direct
    get; batch 256 / 512 / 1024), and with a benchmark-local loop that takes each reply
    with nats-py's ``next_msg()`` (how ``history.read`` worked before; prices that);
(b) read the same range through an ephemeral ordered push consumer
    (``js.subscribe(..., ordered_consumer=True)``, ``BY_START_SEQUENCE``) and an
    ephemeral pull consumer (``fetch(batch=1024)``); every reader decodes the events;
(d) reconnect through a real gateway subprocess: a WebSocket device with since=0, with
    since = halfway through the answer, and with since=0 to the checkpointed target:
    time to ``caught_up`` and bytes on the wire, against the final text and the naive
    sum of the event frames of all the deltas it covers;
(c) server-side cost of per-connection consumers: creating N ephemeral push consumers
    (ordered-consumer settings, one filter per session) vs N batched direct gets on the
    same filters; nats-server RSS (VmRSS) and idle CPU before and after.

(c) runs last because the consumers it creates stay until the server stops.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from benchmarks._common import (
    RESULTS,
    SECRET,
    Children,
    cpu_seconds,
    event_loop,
    install_signal_exit,
    machine_cpu_seconds,
    machine_info,
    ratio,
    rss_kib,
    say,
    start_gateway,
    start_nats,
    table,
    timing_summary,
    write_json,
)
from shared import agent, history, logs, loop, natsconn, subjects, wire
from shared.compaction import compact
from shared.errors import Unavailable
from shared.server import EmbeddedNats
from shared.settings import Env, LogSettings
from shared.streams import stream_config, stream_state
from shared.tokens import mint
from shared.wire import StoredEvent

STREAM = LogSettings().stream
DELTAS = 10_000
OTHER_SESSIONS = 50
OTHER_EVENTS = 1_000


# ---- set-up --------------------------------------------------------------------------------


async def populate(
    plain: agent.Client, checkpointed: agent.Client, target: str, target_ckpt: str, tag: str
) -> str:
    """The targets' 10,000-delta streaming messages among the other sessions' traffic.

    ``target`` comes from a client with checkpoints off, so all 10,000 deltas stay
    stored; ``target_ckpt`` gets the same tokens from a client with the SDK's default
    checkpointing (a rolled-up ``message.snapshot`` every N chunks). Per step each
    target appends 10 deltas (one acked publish each, as the SDK does with coalescing
    0) while each other session publishes one event, so the targets' events are spread
    evenly through the stream. Returns the final text.
    """
    messages = []
    for client, session in ((plain, target), (checkpointed, target_ckpt)):
        run = agent.Run(client.session(session), f"run-{session}")
        await run.start()
        message = run.message(coalesce_ms=0)
        await message.start()
        messages.append(message)
    others = []
    for n in range(OTHER_SESSIONS):
        other = agent.Run(plain.session(f"other{n:03d}-{tag}"), f"run-o{n:03d}-{tag}")
        await other.start()
        part = other.message(coalesce_ms=0)
        await part.start()
        others.append(part)
    per_step = DELTAS // (OTHER_EVENTS - 2)  # run.started and message.start already sent
    steps = -(-DELTAS // per_step)
    words = ["lorem ", "ipsum ", "dolor ", "sit ", "amet, ", "consectetur ", "adipiscing "]
    sent = 0
    started = time.perf_counter()

    async def target_chunk(message: agent.Message, first: int, count: int) -> None:
        for k in range(first, first + count):
            await message.append(f"{words[k % len(words)]}{k} ")

    for step in range(steps):
        count = min(per_step, DELTAS - sent)
        jobs: list[Awaitable[None]] = [target_chunk(m, sent, count) for m in messages]
        if step < OTHER_EVENTS - 2:
            jobs += [part.append(f"other token {step} ") for part in others]
        await asyncio.gather(*jobs)
        sent += count
        if step % 100 == 99:
            say(
                f"  populated {sent:,}/{DELTAS:,} deltas per target"
                f" ({time.perf_counter() - started:.1f} s)"
            )
    # Other sessions that have events left (when DELTAS / per_step < OTHER_EVENTS - 2).
    for step in range(steps, OTHER_EVENTS - 2):
        await asyncio.gather(*(part.append(f"other token {step} ") for part in others))
    if messages[0].text != messages[1].text:
        raise RuntimeError("the two targets streamed different text")
    return messages[0].text


# ---- readers --------------------------------------------------------------------------------


def decode(subject: str, seq: int, data: bytes) -> StoredEvent | None:
    parsed = subjects.parse(subject)
    event = wire.decode_event(data)
    if parsed is None or event is None:
        return None
    return StoredEvent(seq, parsed.kind, parsed.key, event)


async def read_history(nc: NATS, session: str, batch: int) -> list[StoredEvent]:
    page = await history.read(nc, STREAM, session, 0, batch=batch)
    return page.events


async def read_direct_next_msg(nc: NATS, session: str, batch: int) -> list[StoredEvent]:
    """Batched direct get taking each reply with ``next_msg()`` (``history.read`` before
    it moved to a callback): nats-py's ``next_msg`` makes a task and a ``wait_for`` per
    message, which this row prices."""
    filter_subject = subjects.session_filter(session)
    events: list[StoredEvent] = []
    cursor = 0
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    try:
        while True:
            request = {"seq": cursor + 1, "next_by_subj": filter_subject, "batch": batch}
            await nc.publish(f"$JS.API.DIRECT.GET.{STREAM}", orjson.dumps(request), reply=inbox)
            got = pending = 0
            while True:
                msg = await sub.next_msg(timeout=5.0)
                headers = msg.headers or {}
                status = headers.get("Status")
                if status is not None:
                    if status == "404":
                        return events
                    if status != "204":
                        raise Unavailable(f"direct get failed with status {status}")
                    pending = int(headers.get("Nats-Num-Pending", "0"))
                    break
                cursor = int(headers[subjects.SEQUENCE])
                got += 1
                stored = decode(headers.get(subjects.STREAM_SUBJECT, ""), cursor, msg.data)
                if stored is not None:
                    events.append(stored)
            if pending == 0 or got == 0:
                return events
    finally:
        await sub.unsubscribe()


async def read_ordered_push(nc: NATS, session: str) -> list[StoredEvent]:
    """An ephemeral ordered push consumer from the first sequence; ends at num_pending 0."""
    js = nc.jetstream()
    events: list[StoredEvent] = []
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def on_message(msg: Msg) -> None:
        meta = msg.metadata
        stored = decode(msg.subject, meta.sequence.stream, msg.data)
        if stored is not None:
            events.append(stored)
        if meta.num_pending == 0 and not done.done():
            done.set_result(None)

    config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=1)
    sub = await js.subscribe(
        subjects.session_filter(session),
        stream=STREAM,
        cb=on_message,
        ordered_consumer=True,
        config=config,
        pending_msgs_limit=1_000_000,
    )
    try:
        await asyncio.wait_for(done, 30)
    finally:
        await sub.unsubscribe()
    return events


async def read_pull(nc: NATS, session: str, batch: int = 1024) -> list[StoredEvent]:
    """An ephemeral pull consumer (ack none) fetched ``batch`` at a time."""
    js = nc.jetstream()
    config = ConsumerConfig(
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=1,
        ack_policy=AckPolicy.NONE,
        mem_storage=True,
        num_replicas=1,
        inactive_threshold=30.0,
    )
    psub = await js.pull_subscribe(subjects.session_filter(session), stream=STREAM, config=config)
    events: list[StoredEvent] = []
    try:
        while True:
            msgs = await psub.fetch(batch=batch, timeout=5)
            for msg in msgs:
                meta = msg.metadata
                stored = decode(msg.subject, meta.sequence.stream, msg.data)
                if stored is not None:
                    events.append(stored)
            if not msgs or msgs[-1].metadata.num_pending == 0:
                return events
    finally:
        await psub.unsubscribe()


async def delete_all_consumers(nc: NATS) -> int:
    deleted = 0
    while True:
        reply = await nc.request(f"$JS.API.CONSUMER.NAMES.{STREAM}", b"{}", timeout=10)
        names = orjson.loads(reply.data).get("consumers") or []
        if not names:
            return deleted
        for name in names:
            await nc.request(f"$JS.API.CONSUMER.DELETE.{STREAM}.{name}", b"", timeout=10)
            deleted += 1


# ---- (a) and (b) ---------------------------------------------------------------------------


async def compare_readers(
    nc: NATS, server_pid: int, target: str, expected: int, repeats: int
) -> tuple[dict[str, Any], list[StoredEvent]]:
    readers: dict[str, Callable[[], Awaitable[list[StoredEvent]]]] = {
        "direct get, history.read, batch 256": lambda: read_history(nc, target, 256),
        "direct get, history.read, batch 512": lambda: read_history(nc, target, 512),
        "direct get, history.read, batch 1024": lambda: read_history(nc, target, 1024),
        "direct get, next_msg loop (old history.read), batch 512": lambda: read_direct_next_msg(
            nc, target, 512
        ),
        "ordered push consumer": lambda: read_ordered_push(nc, target),
        "pull consumer, fetch 1024": lambda: read_pull(nc, target, 1024),
    }
    timings: dict[str, list[float]] = {name: [] for name in readers}
    server_cpu = dict.fromkeys(readers, 0.0)
    client_cpu = dict.fromkeys(readers, 0.0)
    events: list[StoredEvent] = []
    for name, reader in readers.items():  # warm-up, and check every reader agrees
        got = await reader()
        if len(got) != expected:
            raise RuntimeError(f"{name} read {len(got)} events, expected {expected}")
        if not events:
            events = got
        elif [e.seq for e in got] != [e.seq for e in events]:
            raise RuntimeError(f"{name} read other sequences than history.read")
    await delete_all_consumers(nc)
    for rep in range(repeats):
        for name, reader in readers.items():  # interleaved: drift hits every reader alike
            cpu_before, own_before = cpu_seconds(server_pid), time.process_time()
            started = time.perf_counter()
            got = await reader()
            timings[name].append(time.perf_counter() - started)
            server_cpu[name] += cpu_seconds(server_pid) - cpu_before
            client_cpu[name] += time.process_time() - own_before
            if len(got) != expected:
                raise RuntimeError(f"{name} read {len(got)} events, expected {expected}")
        await delete_all_consumers(nc)
        if rep % 5 == 4:
            say(f"  read repetition {rep + 1}/{repeats}")
    results = {name: timing_summary(values) for name, values in timings.items()}
    base = results["direct get, history.read, batch 512"]["median_ms"]
    for name, summary in results.items():
        summary["vs_history_read_512"] = ratio(summary["median_ms"], base)
        summary["server_cpu_ms_per_read"] = server_cpu[name] / repeats * 1e3
        summary["client_cpu_ms_per_read"] = client_cpu[name] / repeats * 1e3
        summary["events_per_s"] = expected / (summary["median_ms"] / 1e3)
    started = time.perf_counter()
    for _ in range(repeats):
        compacted = compact(events)
    compact_ms = (time.perf_counter() - started) / repeats * 1e3
    return {
        "events": expected,
        "repeats": repeats,
        "readers": results,
        "compact_ms": compact_ms,
        "compacted_items": len(compacted),
    }, events


# ---- (d) reconnect through a gateway ----------------------------------------------------------


def ws_frame_bytes(payload: int) -> int:
    """A server-to-client WebSocket frame: unmasked header plus payload."""
    header = 2 if payload < 126 else 4 if payload < 65536 else 10
    return header + payload


async def reconnect(port: int, session: str, since: int) -> dict[str, Any]:
    """One device connection: time to ``caught_up``, bytes received, the text it rebuilt."""
    token = mint(SECRET, subject="bench-replay", sessions=[session], ttl_seconds=600)
    url = f"ws://127.0.0.1:{port}/v1/sessions/{session}/ws"
    texts: dict[str, str] = {}
    payload = wire_bytes = frames = events = 0
    async with aiohttp.ClientSession() as http:
        started = time.perf_counter()
        async with http.ws_connect(
            url, params={"token": token, "since": str(since)}, max_msg_size=0
        ) as ws:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    raise RuntimeError(f"unexpected WebSocket message {msg.type}")
                size = len(msg.data.encode())
                payload += size
                wire_bytes += ws_frame_bytes(size)
                frames += 1
                frame = orjson.loads(msg.data)
                if frame["type"] == "caught_up":
                    elapsed = time.perf_counter() - started
                    break
                if frame["type"] == "event":
                    events += 1
                    event = frame["event"]
                    mid = event.get("message")
                    if event["type"] in ("message.snapshot", "message.reset"):
                        texts[mid] = event["text"]
                    elif event["type"] == "message.delta":
                        texts[mid] = texts.get(mid, "") + event["text"]
    return {
        "seconds": elapsed,
        "frames": frames,
        "event_frames": events,
        "payload_bytes": payload,
        "wire_bytes": wire_bytes,
        "texts": texts,
    }


async def gateway_replay(
    children: Children,
    server: EmbeddedNats,
    nc: NATS,
    targets: tuple[str, str],
    events: list[StoredEvent],
    final_text: str,
    repeats: int,
) -> dict[str, Any]:
    """Reconnects through a gateway subprocess to the targets (without / with checkpoints)."""
    target, target_ckpt = targets
    deltas = [e for e in events if e.event.get("type") == wire.MESSAGE_DELTA]
    naive = [len(wire.event_frame(e.seq, e.event)) for e in deltas]
    half = len(deltas) // 2
    ckpt_events = (await history.read(nc, STREAM, target_ckpt, 0)).events
    cases = {
        "since=0": (target, 0, final_text, len(deltas), sum(naive)),
        "since=halfway": (
            target,
            deltas[half - 1].seq,
            "".join(str(e.event["text"]) for e in deltas[half:]),
            len(deltas) - half,
            sum(naive[half:]),
        ),
        "since=0, SDK checkpoints": (target_ckpt, 0, final_text, len(deltas), sum(naive)),
    }
    gateway, port = await start_gateway(children, server)
    out: dict[str, Any] = {
        "text_bytes": len(final_text.encode()),
        "naive_delta_frames_payload_bytes": sum(naive),
        "naive_delta_frames_wire_bytes": sum(ws_frame_bytes(n) for n in naive),
        "stored_events": {"without_checkpoints": len(events), "with_checkpoints": len(ckpt_events)},
        "checkpoint_chunks": agent.DEFAULT_CHECKPOINT_CHUNKS,
        "cases": {},
    }
    try:
        for name, (session, since, expected_text, covered, naive_bytes) in cases.items():
            timings: list[float] = []
            last: dict[str, Any] = {}
            for _ in range(repeats + 1):  # the first connection warms the gateway up
                last = await reconnect(port, session, since)
                timings.append(last["seconds"])
                if list(last["texts"].values()) != [expected_text]:
                    raise RuntimeError(f"{name}: the replayed text differs from what was sent")
            text_bytes = len(expected_text.encode())
            out["cases"][name] = {
                "session": session,
                "since": since,
                "deltas_covered": covered,
                "time_to_caught_up": timing_summary(timings[1:]),
                "frames": last["frames"],
                "event_frames": last["event_frames"],
                "payload_bytes": last["payload_bytes"],
                "wire_bytes": last["wire_bytes"],
                "text_bytes": text_bytes,
                "naive_delta_frames_payload_bytes": naive_bytes,
                "wire_over_text": ratio(last["wire_bytes"], text_bytes),
                "naive_over_wire": ratio(naive_bytes, last["payload_bytes"]),
            }
    finally:
        await children.stop(gateway)
    return out


# ---- (c) consumers vs direct gets -------------------------------------------------------------


def consumer_request(session: str, index: int, tag: str) -> tuple[str, bytes]:
    """The API request of one per-connection consumer (ordered push consumer settings)."""
    filter_subject = subjects.session_filter(session)
    config = {
        "deliver_subject": f"bench.deliver.{tag}.{index}",
        "deliver_policy": "all",
        "ack_policy": "none",
        "max_deliver": 1,
        "filter_subject": filter_subject,
        "flow_control": True,
        "idle_heartbeat": 5_000_000_000,
        "mem_storage": True,
        "num_replicas": 1,
        "inactive_threshold": 600_000_000_000,
    }
    body = orjson.dumps({"stream_name": STREAM, "config": config})
    return f"$JS.API.CONSUMER.CREATE.{STREAM}", body


async def idle_cpu(pid: int, seconds: float) -> float:
    """The CPU percentage a process uses over ``seconds`` of wall time."""
    before = cpu_seconds(pid)
    await asyncio.sleep(seconds)
    return 100 * (cpu_seconds(pid) - before) / seconds


async def consumer_costs(
    nc: NATS, server_pid: int, counts: list[int], budget_seconds: float, idle_seconds: float
) -> dict[str, Any]:
    tag = secrets.token_hex(3)
    sessions = [f"conn{n:05d}-{tag}" for n in range(max(counts))]
    heartbeats = 0

    async def on_heartbeat(msg: Msg) -> None:
        nonlocal heartbeats
        heartbeats += 1

    await nc.subscribe(f"bench.deliver.{tag}.>", cb=on_heartbeat, pending_msgs_limit=1_000_000)
    await nc.flush()
    await delete_all_consumers(nc)
    await asyncio.sleep(1.0)

    # N batched direct gets on the same filters (what a fresh connection's replay sends).
    direct: dict[str, Any] = {}
    rss_before_direct = rss_kib(server_pid)
    cpu_before = cpu_seconds(server_pid)
    started = time.perf_counter()
    for session in sessions[: max(counts)]:
        await history.read(nc, STREAM, session, 0)
    elapsed = time.perf_counter() - started
    direct = {
        "n": max(counts),
        "seconds": elapsed,
        "per_op_ms": elapsed / max(counts) * 1e3,
        "server_cpu_seconds": cpu_seconds(server_pid) - cpu_before,
        "rss_before_kib": rss_before_direct,
        "rss_after_kib": rss_kib(server_pid),
    }
    say(f"  {max(counts):,} direct gets: {elapsed:.2f} s ({direct['per_op_ms']:.3f} ms each)")

    baseline_rss = rss_kib(server_pid)
    baseline_idle = await idle_cpu(server_pid, idle_seconds)
    checkpoints: list[dict[str, Any]] = []
    created = 0
    limit_hit: dict[str, Any] | None = None
    create_seconds = 0.0  # creating only: not the idle measurements between checkpoints
    create_cpu = 0.0
    for count in sorted(counts):
        if checkpoints and create_seconds > budget_seconds:
            say(f"  skipping N={count:,}: over the {budget_seconds:.0f} s budget")
            break
        segment_start = time.perf_counter()
        cpu_before = cpu_seconds(server_pid)
        while created < count:
            subject, body = consumer_request(sessions[created], created, tag)
            reply = await nc.request(subject, body, timeout=30)
            answer = orjson.loads(reply.data)
            error = answer.get("error")
            if error and error.get("err_code") == 10026 and limit_hit is None:
                # The stream's consumer limit: record where it bit, then raise it for the
                # benchmark's stream only (Tether's own stream config does not set it).
                limit_hit = {"at_consumer_count": created, "error": error}
                say(f"  consumer {created + 1:,} refused: {error.get('description')}")
                config = stream_config(LogSettings())
                config["max_consumers"] = max(counts) + 100
                raised = orjson.loads(
                    (
                        await nc.request(
                            f"$JS.API.STREAM.UPDATE.{STREAM}", orjson.dumps(config), timeout=10
                        )
                    ).data
                )
                if "error" in raised:
                    raise RuntimeError(f"could not raise max_consumers: {raised['error']}")
                say(f"  raised the stream's max_consumers to {config['max_consumers']:,}")
                # The limit handling is not creation time.
                segment_start, cpu_before = time.perf_counter(), cpu_seconds(server_pid)
                continue
            if error:
                raise RuntimeError(f"consumer create failed: {error}")
            created += 1
        segment = time.perf_counter() - segment_start
        create_seconds += segment
        create_cpu += cpu_seconds(server_pid) - cpu_before
        total = create_seconds
        segment_n = count - (checkpoints[-1]["n"] if checkpoints else 0)
        rss = rss_kib(server_pid)
        point = {
            "n": count,
            "create_seconds_total": total,
            "create_per_op_ms_segment": segment / segment_n * 1e3,
            "server_cpu_seconds_creating": create_cpu,
            "rss_kib": rss,
            "rss_growth_kib": rss - baseline_rss,
            "rss_per_consumer_kib": (rss - baseline_rss) / count,
            "idle_cpu_percent": await idle_cpu(server_pid, idle_seconds),
        }
        checkpoints.append(point)
        say(
            f"  {count:,} consumers: created in {total:.2f} s"
            f" ({point['create_per_op_ms_segment']:.3f} ms each in the last segment),"
            f" RSS {rss / 1024:.1f} MiB (+{point['rss_growth_kib'] / 1024:.1f}),"
            f" idle CPU {point['idle_cpu_percent']:.1f}%"
        )
    started = time.perf_counter()
    deleted = await delete_all_consumers(nc)
    delete_seconds = time.perf_counter() - started
    return {
        "direct_gets": direct,
        "baseline_rss_kib": baseline_rss,
        "baseline_idle_cpu_percent": baseline_idle,
        "idle_seconds": idle_seconds,
        "consumers": checkpoints,
        "consumer_limit": limit_hit,
        "heartbeats_received": heartbeats,
        "delete_seconds": delete_seconds,
        "deleted": deleted,
    }


# ---- report ------------------------------------------------------------------------------------


def print_report(result: dict[str, Any]) -> None:
    reads = result["reads"]
    say(f"\n(a)/(b) reading one session's {reads['events']:,} events after since=0 (ms)")
    rows = [
        [
            name,
            s["median_ms"],
            s["p95_ms"],
            s["events_per_s"],
            s["client_cpu_ms_per_read"],
            s["server_cpu_ms_per_read"],
            s["vs_history_read_512"],
        ]
        for name, s in reads["readers"].items()
    ]
    headers = ["reader", "median", "p95", "events/s", "client CPU", "server CPU"]
    say(table([*headers, "x history.read 512"], rows))
    say(
        f"  compaction of the {reads['events']:,} events: {reads['compact_ms']:.2f} ms"
        f" -> {reads['compacted_items']} items; other processes on the machine used"
        f" {reads['other_processes_cpu_percent']:.0f}% CPU meanwhile (of 100% per core)"
    )

    gw = result["gateway_replay"]
    say("\n(d) reconnect through a gateway subprocess (time to caught_up, bytes received)")
    rows = []
    for name, case in gw["cases"].items():
        timing = case["time_to_caught_up"]
        rows.append(
            [
                name,
                case["deltas_covered"],
                timing["median_ms"],
                timing["p95_ms"],
                case["frames"],
                case["wire_bytes"],
                case["text_bytes"],
                case["naive_delta_frames_payload_bytes"],
                case["wire_over_text"],
                case["naive_over_wire"],
            ]
        )
    headers = ["case", "deltas", "median ms", "p95 ms", "frames", "wire B", "text B"]
    say(table([*headers, "naive B", "wire/text", "naive/wire"], rows))

    costs = result["consumer_costs"]
    direct = costs["direct_gets"]
    say("\n(c) server-side cost: per-connection consumers vs batched direct gets")
    rows = [
        [
            f"{direct['n']:,} direct gets",
            direct["seconds"],
            direct["per_op_ms"],
            direct["rss_after_kib"] / 1024,
            (direct["rss_after_kib"] - direct["rss_before_kib"]) / 1024,
            float("nan"),
        ],
        [
            "no consumers (baseline)",
            float("nan"),
            float("nan"),
            costs["baseline_rss_kib"] / 1024,
            0.0,
            costs["baseline_idle_cpu_percent"],
        ],
    ]
    for point in costs["consumers"]:
        rows.append(
            [
                f"{point['n']:,} consumers",
                point["create_seconds_total"],
                point["create_per_op_ms_segment"],
                point["rss_kib"] / 1024,
                point["rss_growth_kib"] / 1024,
                point["idle_cpu_percent"],
            ]
        )
    say(table(["", "seconds", "ms/op", "RSS MiB", "RSS +MiB", "idle CPU %"], rows))
    if costs["consumer_limit"]:
        say(
            f"  the server refused consumer {costs['consumer_limit']['at_consumer_count'] + 1:,}"
            " with the stream's default max_consumers (the stream config says -1);"
            " the benchmark raised the limit to go on"
        )
    say(
        f"  deleting {costs['deleted']:,} consumers took {costs['delete_seconds']:.2f} s;"
        f" nats-server RSS: {result['server_rss_kib']['empty'] / 1024:.1f} MiB empty,"
        f" {result['server_rss_kib']['populated'] / 1024:.1f} MiB with the data"
    )


# ---- main --------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="tether-bench-replay-"))
    children = Children(work)
    server: EmbeddedNats | None = None
    nc: NATS | None = None
    client: agent.Client | None = None
    try:
        say(f"starting nats-server (data in {work})")
        server = await asyncio.to_thread(start_nats, work / "nats")
        assert server.process is not None
        pid = server.process.pid
        machine = machine_info()
        rss_empty = rss_kib(pid)
        client = await agent.connect(
            server.settings("bench-populate"),
            log_settings=LogSettings(),
            coalesce_ms=0,
            checkpoint_chunks=0,
        )
        checkpointed = await agent.connect(
            server.settings("bench-populate-ckpt"),
            log_settings=LogSettings(),
            coalesce_ms=0,
            checkpoint_chunks=agent.DEFAULT_CHECKPOINT_CHUNKS,
        )
        tag = secrets.token_hex(3)
        target, target_ckpt = f"target-{tag}", f"target-ckpt-{tag}"
        say(
            f"populating: {DELTAS:,} deltas of one streaming message (twice: checkpoints off"
            f" and every {agent.DEFAULT_CHECKPOINT_CHUNKS} chunks) among"
            f" {OTHER_SESSIONS} sessions x {OTHER_EVENTS:,} events"
        )
        started = time.perf_counter()
        final_text = await populate(client, checkpointed, target, target_ckpt, tag)
        expected = 2 + DELTAS  # run.started, message.start and the deltas
        populate_seconds = time.perf_counter() - started
        await checkpointed.close()
        await client.close()
        client = None
        nc = await natsconn.connect(server.settings("bench-reader"))
        state = await stream_state(nc, STREAM)
        say(
            f"  stream holds {state.last_seq:,} messages ({populate_seconds:.1f} s to publish);"
            f" the target has {expected:,}"
            f" (with checkpoints: {len((await history.read(nc, STREAM, target_ckpt, 0)).events)})"
        )
        rss_populated = rss_kib(pid)

        say(f"\n(a)/(b) reading the target's history, {args.repeats} repetitions per reader")
        machine_before, server_before = machine_cpu_seconds()[0], cpu_seconds(pid)
        own_before, wall_before = time.process_time(), time.perf_counter()
        reads, events = await compare_readers(nc, pid, target, expected, args.repeats)
        wall = time.perf_counter() - wall_before
        reads["other_processes_cpu_percent"] = (
            100
            * (
                machine_cpu_seconds()[0]
                - machine_before
                - (cpu_seconds(pid) - server_before)
                - (time.process_time() - own_before)
            )
            / wall
        )

        say(f"\n(d) reconnecting through a gateway subprocess, {args.reconnects} times per case")
        gateway = await gateway_replay(
            children, server, nc, (target, target_ckpt), events, final_text, args.reconnects
        )

        counts = [50] if args.tiny else [1_000] if args.quick else [1_000, 5_000]
        say(f"\n(c) creating {' then '.join(f'{n:,}' for n in counts)} consumers")
        costs = await consumer_costs(nc, pid, counts, args.consumer_budget, args.idle_seconds)

        result = {
            "benchmark": "replay",
            "config": {
                "deltas": DELTAS,
                "other_sessions": OTHER_SESSIONS,
                "other_events_per_session": OTHER_EVENTS,
                "stream_messages": state.last_seq,
                "read_repeats": args.repeats,
                "reconnects": args.reconnects,
            },
            "machine": {**machine, "event_loop": event_loop()},
            "populate_seconds": populate_seconds,
            "server_rss_kib": {"empty": rss_empty, "populated": rss_populated},
            "reads": reads,
            "gateway_replay": gateway,
            "consumer_costs": costs,
        }
        print_report(result)
        return result
    finally:
        if client is not None:
            await client.close()
        if nc is not None and not nc.is_closed:
            await nc.close()
        await children.stop_all()
        if server is not None:
            await asyncio.to_thread(server.stop)
        shutil.rmtree(work, ignore_errors=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.replay",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--repeats", type=int, default=20, help="timed reads per reader")
    parser.add_argument("--reconnects", type=int, default=10, help="device reconnects per case")
    parser.add_argument(
        "--consumer-budget",
        type=float,
        default=120.0,
        help="skip the larger consumer count when the smaller took longer than this (s)",
    )
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    parser.add_argument("--quick", action="store_true", help="5 repetitions, N=1,000 only")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="smoke-test scale: 500 deltas, 5 other sessions x 100 events, N=50 consumers",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "replay.json")
    args = parser.parse_args(argv)
    if args.tiny:
        global DELTAS, OTHER_SESSIONS, OTHER_EVENTS
        DELTAS, OTHER_SESSIONS, OTHER_EVENTS = 500, 5, 100
        args.quick, args.repeats, args.reconnects = True, 2, 2
        args.idle_seconds = min(args.idle_seconds, 0.5)
    if args.quick:
        args.repeats, args.reconnects = min(args.repeats, 5), min(args.reconnects, 3)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    install_signal_exit()
    logs.configure("bench", Env({"TETHER_LOG_LEVEL": "error", "TETHER_LOG_FORMAT": "console"}))
    try:
        result = loop.run(asyncio.wait_for(run(args), 1800))
    except KeyboardInterrupt:
        say("interrupted; every child process was stopped")
        sys.exit(130)
    write_json(args.out, result)
    say(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()

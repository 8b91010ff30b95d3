"""The JetStream side of Durable Streams: the data stream, appends, reads, purges.

Every append is one JetStream message on ``tether.ds.{gen}``, published with
``Nats-Expected-Last-Subject-Sequence`` set to the incarnation's tail as the metadata record
knows it: two gateways appending to one stream cannot interleave unseen, and a record that
lags the log (a gateway died between publish and record update) is detected and repaired
from the messages' own headers (``reconcile``). Reads are batched direct gets.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from services.gateway.durable_streams.meta import StreamMeta
from shared import streams, subjects
from shared.errors import Unavailable

log = structlog.get_logger(__name__)

API_TIMEOUT = 5.0
BATCH = 256
WRONG_LAST_SEQUENCE = 10071

# Headers of stored messages (what reconcile replays into the metadata record).
H_PRODUCER = "DS-Producer"
H_EPOCH = "DS-Epoch"
H_PSEQ = "DS-Producer-Seq"
H_STREAM_SEQ = "DS-Stream-Seq"
H_CLOSED = "DS-Closed"


def stream_config(replicas: int) -> dict[str, Any]:
    """The data stream: file storage, no limits, headers-only republish for live readers."""
    return {
        "name": subjects.DS_STREAM,
        "description": "Tether Durable Streams: one subject per stream incarnation",
        "subjects": [f"{subjects.DS_ROOT}.>"],
        "retention": "limits",
        "storage": "file",
        "num_replicas": replicas,
        "discard": "old",
        "max_msgs": -1,
        "max_bytes": -1,
        "max_age": 0,
        "max_msgs_per_subject": -1,
        "duplicate_window": 120 * 1_000_000_000,
        "allow_direct": True,
        "deny_delete": False,
        "deny_purge": False,
        "republish": {
            "src": f"{subjects.DS_ROOT}.>",
            "dest": f"{subjects.DS_LIVE_ROOT}.>",
            "headers_only": True,
        },
    }


async def ensure_stream(nc: NATS, replicas: int) -> None:
    """Create the data stream, or update it to the current configuration."""
    await streams.ensure(nc, stream_config(replicas))
    log.info("durable_streams_ready", stream=subjects.DS_STREAM, replicas=replicas)


class WrongLastSequence(Exception):
    """The incarnation's tail moved since the metadata record was read."""


async def publish(nc: NATS, gen: str, payload: bytes, headers: dict[str, str], tail: int) -> int:
    """Store one message if the subject's last sequence is still ``tail``; its sequence."""
    headers = {**headers, "Nats-Expected-Last-Subject-Sequence": str(tail)}
    try:
        reply = await nc.request(
            subjects.ds_subject(gen), payload, timeout=API_TIMEOUT, headers=headers
        )
    except (TimeoutError, NatsTimeoutError, NoRespondersError):
        raise Unavailable("JetStream did not acknowledge the append") from None
    ack: dict[str, Any] = orjson.loads(reply.data)
    error = ack.get("error")
    if error is not None:
        if error.get("err_code") == WRONG_LAST_SEQUENCE:
            raise WrongLastSequence(error.get("description", ""))
        raise Unavailable(f"append failed: {error.get('description')}")
    return int(ack["seq"])


async def purge(nc: NATS, gen: str) -> None:
    """Drop every message of one incarnation."""
    reply = await streams.api(
        nc,
        f"$JS.API.STREAM.PURGE.{subjects.DS_STREAM}",
        {"filter": subjects.ds_subject(gen)},
    )
    if "error" in reply:
        log.warning("durable_stream_purge_failed", gen=gen, error=reply["error"])


@dataclass(slots=True)
class Stored:
    """One stored message."""

    seq: int
    headers: dict[str, str]
    data: bytes


async def scan(
    nc: NATS, gen: str, after: int, bound: int | None, max_bytes: int
) -> tuple[list[Stored], bool]:
    """Messages of one incarnation with ``after < seq <= bound``, up to about ``max_bytes``
    (at least one). Returns (messages, whether more are left within the bound)."""
    out: list[Stored] = []
    size = 0
    cursor = after
    inbox = nc.new_inbox()
    loop = asyncio.get_running_loop()
    batch: list[Stored] = []
    done: asyncio.Future[int] = loop.create_future()

    async def on_message(msg: Msg) -> None:
        headers = msg.headers or {}
        status = headers.get("Status")
        if status is not None:
            if not done.done():
                if status == "404":
                    done.set_result(0)
                elif status == "204":
                    done.set_result(int(headers.get("Nats-Num-Pending", "0")))
                else:
                    done.set_exception(Unavailable(f"direct get: status {status}"))
            return
        batch.append(Stored(int(headers[subjects.SEQUENCE]), dict(headers), msg.data))

    sub = await nc.subscribe(inbox, cb=on_message)
    try:
        while True:
            request = {
                "seq": cursor + 1,
                "next_by_subj": subjects.ds_subject(gen),
                "batch": BATCH,
                "max_bytes": max(max_bytes - size, 1),
            }
            await nc.publish(
                f"$JS.API.DIRECT.GET.{subjects.DS_STREAM}", orjson.dumps(request), reply=inbox
            )
            try:
                pending = await asyncio.wait_for(done, API_TIMEOUT)
            except TimeoutError:
                raise Unavailable("JetStream did not answer a read in time") from None
            done = loop.create_future()
            messages, batch[:] = list(batch), []
            for stored in messages:
                if bound is not None and stored.seq > bound:
                    return out, False
                if out and size + len(stored.data) > max_bytes:
                    return out, True
                out.append(stored)
                size += len(stored.data)
                cursor = stored.seq
            if pending == 0 or not messages:
                return out, False
            if size >= max_bytes:
                return out, True
    finally:
        await sub.unsubscribe()


def reconcile(meta: StreamMeta, messages: list[Stored]) -> None:
    """Replay messages the record has not seen (after ``own_tail``) into the record."""
    for stored in messages:
        if stored.seq <= meta.own_tail:
            continue
        meta.own_tail = stored.seq
        producer = stored.headers.get(H_PRODUCER)
        if producer is not None:
            meta.producers[producer] = [
                int(stored.headers.get(H_EPOCH, "0")),
                int(stored.headers.get(H_PSEQ, "0")),
            ]
        stream_seq = stored.headers.get(H_STREAM_SEQ)
        if stream_seq is not None:
            meta.stream_seq = stream_seq
        if stored.headers.get(H_CLOSED) == "true":
            meta.closed = True

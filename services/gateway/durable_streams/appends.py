"""Appends and closes (protocol §5.2, §5.2.1 and stream closure).

One append: read the record, validate (closed, content type, producer, Stream-Seq), publish
with the expected last subject sequence, then write the record back. A lost race on the
publish means the record lagged the log: replay the log into it (store.reconcile) and
validate again, so a retried producer append is still recognised as a duplicate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from services.gateway.durable_streams import body, offsets, producers, store
from services.gateway.durable_streams.errors import (
    BadStreamRequest,
    StaleEpoch,
    StreamClosed,
    StreamConflict,
)
from services.gateway.durable_streams.meta import Conflict, Record
from services.gateway.durable_streams.producers import Producer
from services.gateway.durable_streams.service import CAS_ATTEMPTS, Streams
from shared.errors import Unavailable

CLOSED = "Stream-Closed"
NEXT_OFFSET = "Stream-Next-Offset"


@dataclass(slots=True)
class Append:
    """What a POST (or a PUT's initial body) asks to store."""

    data: bytes
    content_type: str | None
    close: bool = False
    producer: Producer | None = None
    stream_seq: str | None = None
    initial: bool = False  # a PUT's body: an empty JSON array is allowed


@dataclass(slots=True)
class Outcome:
    """The response to an append: status and protocol headers."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)


def _producer_headers(epoch: int, seq: int) -> dict[str, str]:
    return {producers.EPOCH: str(epoch), producers.SEQ: str(seq)}


async def append(streams: Streams, name: str, request: Append) -> Outcome:
    """Store one append (or close); serialised per stream in this process, and by
    compare-and-set between processes."""
    async with streams.lock(name):
        for _ in range(CAS_ATTEMPTS):
            record = await streams.load(name)
            outcome, payload = _validate(record, request)
            if outcome is not None:
                await streams.touch(name, record)
                return outcome
            if not payload and not request.close:  # a PUT's empty JSON array: nothing to store
                return Outcome(201, {NEXT_OFFSET: offsets.encode(record.meta.tail)})
            headers = _message_headers(request)
            try:
                seq = await store.publish(
                    streams.nc, record.meta.gen, payload, headers, record.meta.own_tail
                )
            except store.WrongLastSequence:
                await repair(streams, name)
                continue
            await _commit(streams, name, record, store.Stored(seq, headers, payload))
            return _accepted(request, seq)
    raise Unavailable(f"stream {name!r} is changing too fast; retry")


def _validate(record: Record, request: Append) -> tuple[Outcome | None, bytes]:
    """An early answer (duplicate), an error raised, or (None, payload) to publish."""
    meta = record.meta
    tail = {NEXT_OFFSET: offsets.encode(meta.tail)}
    close_only = request.close and not request.data
    decision = None
    if request.producer is not None:
        state = meta.producers.get(request.producer.id)
        decision = producers.decide(request.producer, (state[0], state[1]) if state else None)
    if meta.closed:
        closed = {**tail, CLOSED: "true"}
        if decision is not None and decision.outcome == producers.DUPLICATE:
            return Outcome(204, {**closed, **_producer_headers(decision.epoch, decision.seq)}), b""
        if decision is not None and decision.outcome == producers.STALE_EPOCH:
            raise StaleEpoch("stale producer epoch", {producers.EPOCH: str(decision.epoch)})
        if close_only and request.producer is None:
            return Outcome(204, closed), b""
        raise StreamClosed("the stream is closed", closed)
    payload = b""
    if not close_only:
        if request.content_type is None:
            raise BadStreamRequest("Content-Type is required to append")
        if offsets.media_type(request.content_type) != offsets.media_type(meta.content_type):
            raise StreamConflict(
                f"Content-Type {request.content_type!r} does not match the stream's "
                f"{meta.content_type!r}"
            )
        if offsets.is_json(meta.content_type):
            payload = body.json_payload(request.data, allow_empty=request.initial)
        else:
            payload = request.data
    if decision is not None:
        if decision.outcome == producers.DUPLICATE:
            return Outcome(204, {**tail, **_producer_headers(decision.epoch, decision.seq)}), b""
        if decision.outcome == producers.STALE_EPOCH:
            raise StaleEpoch("stale producer epoch", {producers.EPOCH: str(decision.epoch)})
        if decision.outcome == producers.BAD_EPOCH_START:
            raise BadStreamRequest("a new producer epoch must start at Producer-Seq 0")
        if decision.outcome == producers.GAP:
            raise StreamConflict(
                "Producer-Seq gap",
                {
                    producers.EXPECTED_SEQ: str(decision.expected),
                    producers.RECEIVED_SEQ: str(decision.seq),
                },
            )
    if request.stream_seq is not None and meta.stream_seq is not None:
        if request.stream_seq <= meta.stream_seq:
            raise StreamConflict(
                f"Stream-Seq {request.stream_seq!r} is not above {meta.stream_seq!r}"
            )
    return None, payload


def _message_headers(request: Append) -> dict[str, str]:
    headers: dict[str, str] = {}
    if request.producer is not None:
        headers[store.H_PRODUCER] = request.producer.id
        headers[store.H_EPOCH] = str(request.producer.epoch)
        headers[store.H_PSEQ] = str(request.producer.seq)
    if request.stream_seq is not None:
        headers[store.H_STREAM_SEQ] = request.stream_seq
    if request.close:
        headers[store.H_CLOSED] = "true"
    return headers


def _accepted(request: Append, seq: int) -> Outcome:
    headers = {NEXT_OFFSET: offsets.encode(seq)}
    if request.close:
        headers[CLOSED] = "true"
    if request.producer is None:
        return Outcome(204, headers)
    headers.update(_producer_headers(request.producer.epoch, request.producer.seq))
    return Outcome(204 if request.close and not request.data else 200, headers)


async def _commit(streams: Streams, name: str, record: Record, stored: store.Stored) -> None:
    """Write the append into the record; on a lost race, replay the log instead."""
    store.reconcile(record.meta, [stored])
    record.meta.touched = time.time()
    try:
        await streams.metadata.update(name, record)
    except Conflict:
        await repair(streams, name)


async def repair(streams: Streams, name: str) -> None:
    """Bring the record up to the log: replay messages after its ``own_tail``."""
    for _ in range(CAS_ATTEMPTS):
        record = await streams.metadata.get(name)
        if record is None:
            return
        meta = record.meta
        found, _ = await store.scan(streams.nc, meta.gen, meta.own_tail, None, 64 * 1024 * 1024)
        if not found:
            return
        store.reconcile(meta, found)
        meta.touched = time.time()
        try:
            await streams.metadata.update(name, record)
            return
        except Conflict:
            continue

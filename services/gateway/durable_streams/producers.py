"""Idempotent producers (protocol §5.2.1): parse the headers, decide on one append.

The state of each producer of a stream (epoch, highest accepted seq) is part of the stream's
metadata record (meta.py); every stored message also carries the producer tuple in its
headers, so a gateway that crashed between storing a message and updating the record is
repaired from the log (store.reconcile) and a retry is still recognised as a duplicate.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from services.gateway.durable_streams.offsets import BadRequest, parse_uint

ID = "Producer-Id"
EPOCH = "Producer-Epoch"
SEQ = "Producer-Seq"
EXPECTED_SEQ = "Producer-Expected-Seq"
RECEIVED_SEQ = "Producer-Received-Seq"

ACCEPT = "accept"
DUPLICATE = "duplicate"
STALE_EPOCH = "stale_epoch"
GAP = "gap"
BAD_EPOCH_START = "bad_epoch_start"


@dataclass(frozen=True, slots=True)
class Producer:
    """The producer tuple of one request."""

    id: str
    epoch: int
    seq: int


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with a producer's append, and the values to report."""

    outcome: str
    epoch: int  # the current (or newly established) epoch
    seq: int  # the highest accepted seq (for duplicates), or the request's (for accepts)
    expected: int = 0


def from_request(request: web.Request) -> Producer | None:
    """The producer headers, all three or none (400 for a partial or malformed set)."""
    values = [request.headers.get(name) for name in (ID, EPOCH, SEQ)]
    if all(value is None for value in values):
        return None
    if any(value is None for value in values):
        raise BadRequest("Producer-Id, Producer-Epoch and Producer-Seq go together")
    producer_id, epoch, seq = (value or "" for value in values)
    if not producer_id.strip():
        raise BadRequest("Producer-Id must not be empty")
    return Producer(producer_id, parse_uint(EPOCH, epoch), parse_uint(SEQ, seq))


def decide(producer: Producer, state: tuple[int, int] | None) -> Decision:
    """Validate against the stored ``(epoch, last_seq)``; None for a producer never seen."""
    if state is None:
        if producer.seq != 0:
            return Decision(GAP, producer.epoch, producer.seq, expected=0)
        return Decision(ACCEPT, producer.epoch, 0)
    epoch, last = state
    if producer.epoch < epoch:
        return Decision(STALE_EPOCH, epoch, last)
    if producer.epoch > epoch:
        if producer.seq != 0:
            return Decision(BAD_EPOCH_START, producer.epoch, producer.seq)
        return Decision(ACCEPT, producer.epoch, 0)
    if producer.seq <= last:
        return Decision(DUPLICATE, epoch, last)
    if producer.seq == last + 1:
        return Decision(ACCEPT, epoch, producer.seq)
    return Decision(GAP, epoch, producer.seq, expected=last + 1)

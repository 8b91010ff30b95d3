"""Stream metadata: one KV record per stream path, updated with compare-and-set.

The record is the only shared state: any gateway serves any stream, because every decision
(exists? closed? content type? producer epoch/seq? Stream-Seq?) is read from here, and every
change is a compare-and-set on the record's revision.
"""

from __future__ import annotations

import base64
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from shared.errors import Unavailable


def key_of(name: str) -> str:
    """The KV key of a stream path: base64url of its UTF-8, unpadded (a valid key token)."""
    return base64.urlsafe_b64encode(name.encode()).decode().rstrip("=") or "_"


def new_gen() -> str:
    """A fresh incarnation id (one subject per incarnation)."""
    return secrets.token_hex(12)


@dataclass(slots=True)
class StreamMeta:
    """Everything known about one stream besides its bytes."""

    gen: str
    content_type: str
    created: float
    touched: float
    ttl: int | None = None
    expires_at: float | None = None
    closed: bool = False
    own_tail: int = 0  # the sequence of the last message on this incarnation's subject
    stream_seq: str | None = None  # the last Stream-Seq accepted
    producers: dict[str, list[int]] = field(default_factory=dict)  # id -> [epoch, last seq]
    # Fork lineage: the (gen, highest sequence) of each ancestor, oldest first.
    segments: list[list[Any]] = field(default_factory=list)
    fork_from: str | None = None
    fork_offset: str | None = None
    fork_sub_offset: int = 0
    forks: int = 0  # live forks that read this stream's data
    deleted: bool = False  # soft-deleted: kept only for its forks

    @property
    def base(self) -> int:
        """The sequence a fork starts from (0 for a stream that is not a fork)."""
        return int(self.segments[-1][1]) if self.segments else 0

    @property
    def tail(self) -> int:
        """The sequence of the stream's last position (its next offset)."""
        return max(self.own_tail, self.base)

    def expired(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        if self.expires_at is not None and now >= self.expires_at:
            return True
        return self.ttl is not None and now >= self.touched + self.ttl

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "gen": self.gen,
                "content_type": self.content_type,
                "created": self.created,
                "touched": self.touched,
                "ttl": self.ttl,
                "expires_at": self.expires_at,
                "closed": self.closed,
                "own_tail": self.own_tail,
                "stream_seq": self.stream_seq,
                "producers": self.producers,
                "segments": self.segments,
                "fork_from": self.fork_from,
                "fork_offset": self.fork_offset,
                "fork_sub_offset": self.fork_sub_offset,
                "forks": self.forks,
                "deleted": self.deleted,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> StreamMeta:
        raw: dict[str, Any] = orjson.loads(data)
        return cls(**raw)


@dataclass(slots=True)
class Record:
    """A metadata record with the revision to compare-and-set against."""

    meta: StreamMeta
    revision: int


class Conflict(Exception):
    """A compare-and-set lost a race (the caller re-reads and retries)."""


class Metadata:
    """The metadata bucket."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    async def get(self, name: str) -> Record | None:
        try:
            entry = await self.kv.get(key_of(name))
        except KeyNotFoundError:  # also KeyDeletedError
            return None
        except TimeoutError:
            raise Unavailable("the stream metadata bucket did not answer") from None
        if entry.value is None or entry.revision is None:
            return None
        return Record(StreamMeta.from_bytes(entry.value), entry.revision)

    async def create(self, name: str, meta: StreamMeta) -> Record:
        """Create the record; Conflict if it exists."""
        try:
            revision = await self.kv.create(key_of(name), meta.to_bytes())
        except KeyWrongLastSequenceError:
            raise Conflict(name) from None
        return Record(meta, revision)

    async def update(self, name: str, record: Record) -> Record:
        """Write ``record.meta`` if the revision is unchanged; Conflict otherwise."""
        try:
            revision = await self.kv.update(
                key_of(name), record.meta.to_bytes(), last=record.revision
            )
        except KeyWrongLastSequenceError:
            raise Conflict(name) from None
        return Record(record.meta, revision)

    async def remove(self, name: str, revision: int) -> None:
        """Delete the record if unchanged; Conflict otherwise."""
        try:
            await self.kv.delete(key_of(name), last=revision)
        except KeyWrongLastSequenceError:
            raise Conflict(name) from None

"""Stream lifecycle on top of the metadata bucket and the data stream: load (with lazy
expiry and sliding TTL), create (plain or fork), delete (soft while forks read the data),
and catch-up reads across a fork's lineage."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from weakref import WeakValueDictionary

import structlog
from nats.aio.client import Client as NATS

from services.gateway.durable_streams import body, offsets, store
from services.gateway.durable_streams.errors import StreamConflict, StreamGone, StreamNotFound
from services.gateway.durable_streams.meta import Conflict, Metadata, Record, StreamMeta, new_gen
from services.gateway.durable_streams.offsets import BadRequest

log = structlog.get_logger(__name__)

CAS_ATTEMPTS = 16


@dataclass(slots=True)
class Spec:
    """What a PUT asks for."""

    content_type: str | None
    ttl: int | None = None
    expires_at: float | None = None
    fork_from: str | None = None
    fork_offset: str | None = None
    fork_sub_offset: int = 0


@dataclass(slots=True)
class Page:
    """One catch-up read."""

    payloads: list[bytes] = field(default_factory=list)
    next_seq: int = 0
    up_to_date: bool = True
    closed: bool = False  # a close marker was read (the record may not say so yet)


class Streams:
    """The Durable Streams of one gateway process (no state another gateway would need:
    the locks only spare compare-and-set retries between this process's own requests)."""

    def __init__(self, nc: NATS, metadata: Metadata) -> None:
        self.nc = nc
        self.metadata = metadata
        self._locks: WeakValueDictionary[str, asyncio.Lock] = WeakValueDictionary()

    def lock(self, name: str) -> asyncio.Lock:
        lock = self._locks.get(name)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[name] = lock
        return lock

    # ---- load ------------------------------------------------------------------------

    async def load(self, name: str, *, touch: bool = False) -> Record:
        """The live record; 404 when absent or expired, 410 when soft-deleted."""
        record = await self.find(name)
        if record is None:
            raise StreamNotFound(f"no stream at {name!r}")
        if record.meta.deleted:
            raise StreamGone(f"stream {name!r} was deleted")
        if touch:
            await self.touch(name, record)
        return record

    async def find(self, name: str) -> Record | None:
        """The record (soft-deleted included), expiring it first when its time is up."""
        record = await self.metadata.get(name)
        if record is not None and not record.meta.deleted and record.meta.expired():
            log.info("durable_stream_expired", stream=name)
            await self.delete(name, expired=True)
            record = await self.metadata.get(name)
            if record is not None and record.meta.deleted:
                return None  # expired but kept for its forks: gone for everyone else
        return record

    async def touch(self, name: str, record: Record) -> None:
        """Slide a TTL stream's expiry (reads and writes do; HEAD does not)."""
        meta = record.meta
        now = time.time()
        if meta.ttl is None or now - meta.touched < min(0.1, meta.ttl / 20):
            return
        meta.touched = now
        try:
            updated = await self.metadata.update(name, record)
            record.revision = updated.revision
        except Conflict:
            pass  # someone else wrote it just now (an append touches too)

    # ---- create ----------------------------------------------------------------------

    async def create(self, name: str, spec: Spec) -> tuple[Record, bool]:
        """Create the stream, or confirm an identical one: (record, created)."""
        for _ in range(CAS_ATTEMPTS):
            existing = await self.find(name)
            if existing is not None:
                self._check_same(name, existing.meta, spec)
                return existing, False
            meta, prefix = await self._new_meta(spec)
            try:
                record = await self.metadata.create(name, meta)
            except Conflict:
                if spec.fork_from is not None:
                    await self._release(spec.fork_from, meta.segments[-1][0])
                continue
            log.info("durable_stream_created", stream=name, gen=meta.gen, fork=spec.fork_from)
            if prefix:
                record = await self._materialize(name, record, prefix)
            return record, True
        raise StreamConflict(f"stream {name!r} is being created concurrently")

    def _check_same(self, name: str, meta: StreamMeta, spec: Spec) -> None:
        if meta.deleted:
            raise StreamConflict(f"stream {name!r} was deleted and is kept for its forks")
        same = spec.content_type is None or offsets.media_type(
            spec.content_type
        ) == offsets.media_type(meta.content_type)
        if spec.fork_from is None:
            same = same and spec.ttl == meta.ttl
            same = same and _same_time(spec.expires_at, meta.expires_at)
        else:
            same = same and spec.fork_from == meta.fork_from
            if spec.fork_offset is not None:
                same = same and spec.fork_offset == meta.fork_offset
            same = same and spec.fork_sub_offset == meta.fork_sub_offset
            if spec.ttl is not None:
                same = same and spec.ttl == meta.ttl
        if not same:
            raise StreamConflict(f"stream {name!r} exists with another configuration")

    async def _new_meta(self, spec: Spec) -> tuple[StreamMeta, bytes]:
        """A new record, and the sub-offset prefix a fork starts its own data with."""
        now = time.time()
        meta = StreamMeta(
            gen=new_gen(),
            content_type=spec.content_type or "application/octet-stream",
            created=now,
            touched=now,
            ttl=spec.ttl,
            expires_at=spec.expires_at,
        )
        prefix = b""
        if spec.fork_from is not None:
            prefix = await self._fork(meta, spec)
        return meta, prefix

    async def _materialize(self, name: str, record: Record, prefix: bytes) -> Record:
        """Store a sub-offset fork's inherited part of one append as its first message."""
        seq = await store.publish(self.nc, record.meta.gen, prefix, {}, 0)
        for _ in range(CAS_ATTEMPTS):
            record.meta.own_tail = max(record.meta.own_tail, seq)
            try:
                return await self.metadata.update(name, record)
            except Conflict:
                fresh = await self.metadata.get(name)
                if fresh is None:
                    break
                record = fresh
        return record

    async def _prefix(self, src: StreamMeta, at: int, sub_offset: int) -> bytes:
        """The first ``sub_offset`` bytes (JSON: messages) of the source's append after ``at``."""
        page = await self.read(src, at, 1)
        data = next((p for p in page.payloads if p), b"")
        if offsets.is_json(src.content_type):
            items = body.json_messages(b"[" + data + b"]", allow_empty=True) if data else []
            if sub_offset > len(items):
                raise BadRequest("Stream-Fork-Sub-Offset is beyond the append's messages")
            return b",".join(items[:sub_offset])
        if sub_offset > len(data):
            raise BadRequest("Stream-Fork-Sub-Offset is beyond the append's bytes")
        return data[:sub_offset]

    async def _fork(self, meta: StreamMeta, spec: Spec) -> bytes:
        """Point ``meta`` at its source's data up to the fork offset; count the reference.
        Returns the sub-offset prefix to store as the fork's first message."""
        source_name = spec.fork_from or ""
        for _ in range(CAS_ATTEMPTS):
            source = await self.find(source_name)
            if source is None:
                raise StreamNotFound(f"no stream at {source_name!r} to fork")
            if source.meta.deleted:
                raise StreamConflict(f"stream {source_name!r} was deleted")
            src = source.meta
            if spec.content_type is None:
                meta.content_type = src.content_type
            elif offsets.media_type(spec.content_type) != offsets.media_type(src.content_type):
                raise StreamConflict("a fork keeps its source's content type")
            at = src.tail if spec.fork_offset is None else offsets.parse_seq(spec.fork_offset)
            if at > src.tail:
                raise BadRequest("Stream-Fork-Offset is beyond the source stream's tail")
            prefix = b""
            if spec.fork_sub_offset:
                prefix = await self._prefix(src, at, spec.fork_sub_offset)
            meta.segments = [[g, min(int(b), at)] for g, b in src.segments if int(b) > 0]
            meta.segments.append([src.gen, at])
            meta.fork_from = source_name
            meta.fork_offset = offsets.encode(at)
            meta.fork_sub_offset = spec.fork_sub_offset
            if spec.ttl is None and spec.expires_at is None:
                meta.ttl, meta.expires_at = src.ttl, src.expires_at
            src.forks += 1
            try:
                await self.metadata.update(source_name, source)
                return prefix
            except Conflict:
                continue
        raise StreamConflict(f"stream {source_name!r} is changing too fast to fork")

    # ---- delete ----------------------------------------------------------------------

    async def delete(self, name: str, *, expired: bool = False) -> None:
        """Delete a stream: soft while forks read its data, else for good (and release its
        source, which may then go too)."""
        for _ in range(CAS_ATTEMPTS):
            record = await self.metadata.get(name)
            if record is None:
                raise StreamNotFound(f"no stream at {name!r}")
            meta = record.meta
            if meta.deleted:
                raise StreamGone(f"stream {name!r} was deleted")
            try:
                if meta.forks > 0:
                    meta.deleted = True
                    await self.metadata.update(name, record)
                    log.info("durable_stream_soft_deleted", stream=name, forks=meta.forks)
                    return
                await self.metadata.remove(name, record.revision)
            except Conflict:
                continue
            await store.purge(self.nc, meta.gen)
            log.info("durable_stream_deleted", stream=name, gen=meta.gen, expired=expired)
            if meta.fork_from is not None and meta.segments:
                await self._release(meta.fork_from, meta.segments[-1][0])
            return
        raise StreamConflict(f"stream {name!r} is changing too fast to delete")

    async def _release(self, name: str, gen: str) -> None:
        """Drop one fork reference to ``name`` (incarnation ``gen``); collect it if it was
        soft-deleted and this was the last."""
        for _ in range(CAS_ATTEMPTS):
            record = await self.metadata.get(name)
            if record is None or record.meta.gen != gen:
                return
            meta = record.meta
            meta.forks = max(0, meta.forks - 1)
            try:
                if meta.deleted and meta.forks == 0:
                    await self.metadata.remove(name, record.revision)
                else:
                    await self.metadata.update(name, record)
                    return
            except Conflict:
                continue
            await store.purge(self.nc, meta.gen)
            log.info("durable_stream_collected", stream=name, gen=meta.gen)
            if meta.fork_from is not None and meta.segments:
                await self._release(meta.fork_from, meta.segments[-1][0])
            return

    # ---- read ------------------------------------------------------------------------

    async def read(self, meta: StreamMeta, after: int, max_bytes: int) -> Page:
        """Payloads after ``after`` across the lineage, up to about ``max_bytes``."""
        page = Page(next_seq=after)
        budget = max_bytes
        for gen, bound in [*meta.segments, [meta.gen, None]]:
            if bound is not None and page.next_seq >= int(bound):
                continue
            found, more = await store.scan(
                self.nc, gen, page.next_seq, None if bound is None else int(bound), budget
            )
            for stored in found:
                if bound is None and stored.headers.get(store.H_CLOSED) == "true":
                    page.closed = True
                page.payloads.append(stored.data)
                budget -= len(stored.data)
                page.next_seq = stored.seq
            if more or budget <= 0:
                page.up_to_date = False
                return page
        page.next_seq = max(page.next_seq, meta.tail)
        page.closed = page.closed or meta.closed
        return page


def _same_time(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return abs(a - b) < 0.001

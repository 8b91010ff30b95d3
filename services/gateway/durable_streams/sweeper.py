"""Expiry sweeps: delete streams whose TTL or expiry passed while nobody asked for them.

Expiry is enforced on access (service.Streams.find); the sweep only reclaims the storage of
streams nobody touches again. Every gateway sweeps on its own timer (with jitter); deletes
are compare-and-set, so two gateways sweeping at once delete a stream once.

A gateway keeps the deadline of every stream that has one (key -> when it expires) and each
sweep reads only the metadata records written since the last (shared/kvread.py: one
request when nothing changed), not the whole bucket; everything is read again every
``FULL_READ_SECONDS`` (a recreated bucket starts its sequences again).
"""

from __future__ import annotations

import asyncio
import base64
import random
import time

import structlog

from services.gateway.durable_streams.meta import StreamMeta
from services.gateway.durable_streams.service import Streams
from shared import kvread, subjects
from shared.errors import TetherError

log = structlog.get_logger(__name__)

FULL_READ_SECONDS = 3600.0


def name_of(key: str) -> str:
    """The stream path of a metadata key (the inverse of meta.key_of)."""
    padded = key + "=" * (-len(key) % 4)
    return base64.urlsafe_b64decode(padded.encode()).decode()


def deadline(meta: StreamMeta) -> float | None:
    """When the stream expires (the earlier of its expiry and TTL), None for never."""
    if meta.deleted:
        return None
    times = [meta.expires_at] if meta.expires_at is not None else []
    if meta.ttl is not None:
        times.append(meta.touched + meta.ttl)
    return min(times) if times else None


class Sweeper:
    """One gateway's deadlines of the streams that have one, read incrementally."""

    def __init__(self, streams: Streams, full_read_seconds: float = FULL_READ_SECONDS) -> None:
        self.streams = streams
        self.deadlines: dict[str, float] = {}
        self._bucket = kvread.Follower(
            streams.nc,
            subjects.DS_META_BUCKET,
            self._apply,
            self.deadlines.clear,
            full_read_seconds,
        )

    def _apply(self, key: str, value: bytes | None) -> None:
        try:
            when = deadline(StreamMeta.from_bytes(value)) if value else None
        except (ValueError, TypeError):  # not a record we wrote: never swept by us
            log.warning("durable_stream_meta_malformed", key=key)
            when = None
        if when is None:
            self.deadlines.pop(key, None)
        else:
            self.deadlines[key] = when

    async def sweep(self) -> int:
        """Delete every expired stream; returns how many were found expired."""
        await self._bucket.refresh()
        wall = time.time()
        expired = [key for key, when in self.deadlines.items() if when <= wall]
        for key in expired:
            try:
                await self.streams.find(name_of(key))  # re-checks, then deletes (soft if forks)
            except TetherError as error:
                log.warning("durable_stream_sweep_failed", stream=name_of(key), error=str(error))
        if expired:
            log.info("durable_streams_swept", expired=len(expired))
        return len(expired)


async def sweep(streams: Streams) -> int:
    """One full sweep (a new :class:`Sweeper`); returns how many were found expired."""
    return await Sweeper(streams).sweep()


async def run(streams: Streams, interval: float) -> None:
    """Sweep every ``interval`` seconds (±20 %) until cancelled."""
    sweeper = Sweeper(streams)
    while True:
        await asyncio.sleep(interval * random.uniform(0.8, 1.2))  # noqa: S311
        try:
            await sweeper.sweep()
        except Exception as error:  # a background loop: log and sweep again next time
            log.warning("durable_streams_sweep_failed", error=repr(error))

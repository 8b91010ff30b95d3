"""Expiry sweeps: delete streams whose TTL or expiry passed while nobody asked for them.

Expiry is enforced on access (service.Streams.find); the sweep only reclaims the storage of
streams nobody touches again. Every gateway sweeps on its own timer (with jitter); deletes
are compare-and-set, so two gateways sweeping at once delete a stream once.
"""

from __future__ import annotations

import asyncio
import base64
import random
import time

import structlog
from nats.js.errors import NoKeysError

from services.gateway.durable_streams.meta import StreamMeta
from services.gateway.durable_streams.service import Streams
from shared.errors import TetherError

log = structlog.get_logger(__name__)

WATCH_TIMEOUT = 5.0


def name_of(key: str) -> str:
    """The stream path of a metadata key (the inverse of meta.key_of)."""
    padded = key + "=" * (-len(key) % 4)
    return base64.urlsafe_b64decode(padded.encode()).decode()


async def sweep(streams: Streams) -> int:
    """Delete every expired stream; returns how many were found expired."""
    now = time.time()
    expired: list[str] = []
    try:
        watcher = await streams.metadata.kv.watchall(ignore_deletes=True)
    except NoKeysError:
        return 0
    try:
        while True:
            entry = await watcher.updates(timeout=WATCH_TIMEOUT)  # type: ignore[no-untyped-call]
            if entry is None:
                break
            if not entry.value:
                continue
            meta = StreamMeta.from_bytes(entry.value)
            if not meta.deleted and meta.expired(now):
                expired.append(name_of(entry.key))
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]
    for name in expired:
        try:
            await streams.find(name)  # re-checks, then deletes (soft if forks read it)
        except TetherError as error:
            log.warning("durable_stream_sweep_failed", stream=name, error=str(error))
    if expired:
        log.info("durable_streams_swept", expired=len(expired))
    return len(expired)


async def run(streams: Streams, interval: float) -> None:
    """Sweep every ``interval`` seconds (±20 %) until cancelled."""
    while True:
        await asyncio.sleep(interval * random.uniform(0.8, 1.2))  # noqa: S311
        try:
            await sweep(streams)
        except Exception as error:  # a background loop: log and sweep again next time
            log.warning("durable_streams_sweep_failed", error=repr(error))

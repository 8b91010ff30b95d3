"""Where a reconnecting device stands, and its compacted replay.

``recovered`` is false when the device's position cannot be honoured: another epoch
(the stream was recreated), a sequence beyond the head, or a sequence older than what
the stream still holds (history trimmed). Then the device gets a snapshot of everything
retained, from the start, and must replace its view.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from nats.aio.client import Client as NATS

from shared import history
from shared.compaction import compact
from shared.streams import stream_state
from shared.wire import Event


@dataclass(frozen=True, slots=True)
class Position:
    epoch: str
    head: int
    since: int
    recovered: bool


async def locate(nc: NATS, stream: str, since: int, epoch: str | None) -> Position:
    """Check a device's ``(since, epoch)`` against the stream."""
    state = await stream_state(nc, stream)
    recovered = True
    if since > 0:
        if epoch and epoch != state.epoch:
            recovered = False
        elif since > state.last_seq:
            recovered = False
        elif since < state.first_seq - 1:
            recovered = False
    return Position(
        epoch=state.epoch, head=state.last_seq, since=since if recovered else 0, recovered=recovered
    )


@dataclass(slots=True)
class Chunk:
    """One compacted page of a replay."""

    events: list[tuple[int, Event]]
    last_seq: int
    more: bool


async def pages(
    nc: NATS, stream: str, session: str, since: int, *, page_size: int, limit: int | None = None
) -> AsyncIterator[Chunk]:
    """Compacted pages after ``since`` until the end of the log (or ``limit`` raw events)."""
    cursor = since
    read = 0
    while True:
        want = page_size if limit is None else min(page_size, limit - read)
        page = await history.read(nc, stream, session, cursor, limit=want)
        read += len(page.events)
        cursor = max(cursor, page.last_seq)
        yield Chunk(compact(page.events), cursor, page.more)
        if not page.more or (limit is not None and read >= limit):
            return

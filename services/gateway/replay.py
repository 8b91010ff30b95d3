"""Where a reconnecting device stands, and its compacted replay.

``recovered`` is false when the device's position cannot be honoured: another epoch
(the stream was recreated), a sequence beyond the head, or a sequence older than what
the stream still holds (history trimmed). Then the device gets a snapshot of everything
retained, from the start, and must replace its view.

Reading the stream's state is one JetStream request; when many devices connect at once (a
drained gateway's devices arriving here), concurrent reads of one stream share the request
in flight instead of sending one each. A shared answer is at most one round trip old; a
device whose position is past its head asks again before it is told it cannot recover.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial

from nats.aio.client import Client as NATS

from shared import history
from shared.compaction import compact
from shared.streams import StreamState, stream_state
from shared.wire import Event


@dataclass(frozen=True, slots=True)
class Position:
    epoch: str
    head: int
    since: int
    recovered: bool


_inflight: dict[tuple[int, str], asyncio.Task[StreamState]] = {}


async def shared_state(nc: NATS, stream: str) -> StreamState:
    """The stream's state, from the request already in flight for it if there is one (a
    task of its own: one waiter's cancellation does not cancel it for the others)."""
    key = (id(nc), stream)
    task = _inflight.get(key)
    if task is None:
        task = asyncio.create_task(stream_state(nc, stream))
        _inflight[key] = task
        task.add_done_callback(partial(_finished, key))
    return await asyncio.shield(task)


def _finished(key: tuple[int, str], task: asyncio.Task[StreamState]) -> None:
    _inflight.pop(key, None)
    if not task.cancelled():
        task.exception()  # retrieved, even when every waiter has gone


async def locate(nc: NATS, stream: str, since: int, epoch: str | None) -> Position:
    """Check a device's ``(since, epoch)`` against the stream."""
    state = await shared_state(nc, stream)
    if since > state.last_seq:  # maybe stored after the shared read: ask for ourselves
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

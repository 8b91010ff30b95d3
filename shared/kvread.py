"""Reading a KV bucket without a consumer: batched direct gets by subject, from a sequence.

A reader that keeps what it read and the last sequence can ask again for only what changed
since (one request, answered by a 404, when nothing did; :class:`Follower`): the
notifier's view of the webhook subscriptions and the Durable Streams sweeper read their
buckets that way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from shared import subjects
from shared.errors import Unavailable

BATCH = 1000


async def read_changes(
    nc: NATS,
    bucket: str,
    since: int,
    on_change: Callable[[str, bytes | None], None],
    timeout: float = 5.0,
) -> int:
    """Call ``on_change(key, value)`` for every write (``value`` None: a delete or purge)
    stored in ``bucket`` after sequence ``since``, in order; returns the last sequence
    read (``since`` when nothing changed)."""
    root = f"$KV.{bucket}."
    loop = asyncio.get_running_loop()
    done: asyncio.Future[int] = loop.create_future()
    cursor = since

    async def on_message(msg: Msg) -> None:
        nonlocal cursor
        headers = msg.headers or {}
        status = headers.get("Status")
        if status is not None:
            if not done.done():
                done.set_result(0 if status == "404" else int(headers.get("Nats-Num-Pending", 0)))
            return
        cursor = max(cursor, int(headers.get(subjects.SEQUENCE, "0")))
        key = headers.get(subjects.STREAM_SUBJECT, "").removeprefix(root)
        deleted = headers.get("KV-Operation") in ("DEL", "PURGE") or not msg.data
        on_change(key, None if deleted else msg.data)

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=on_message)
    try:
        while True:
            request = {"seq": cursor + 1, "next_by_subj": f"{root}>", "batch": BATCH}
            await nc.publish(f"$JS.API.DIRECT.GET.KV_{bucket}", orjson.dumps(request), reply=inbox)
            try:
                pending = await asyncio.wait_for(done, timeout)
            except TimeoutError:
                raise Unavailable(f"the bucket {bucket} did not answer in time") from None
            if pending == 0:
                return cursor
            done = loop.create_future()
    finally:
        await sub.unsubscribe()


class Follower:
    """A bucket followed by reading only what changed since the last :meth:`refresh` (one
    request, a 404, when nothing did). Every ``full_read_seconds`` it starts over
    (``on_reset``, then everything again): a recreated bucket restarts its sequences."""

    def __init__(
        self,
        nc: NATS,
        bucket: str,
        on_change: Callable[[str, bytes | None], None],
        on_reset: Callable[[], None],
        full_read_seconds: float,
    ) -> None:
        self.nc = nc
        self.bucket = bucket
        self.on_change = on_change
        self.on_reset = on_reset
        self.full_read_seconds = full_read_seconds
        self._cursor = 0
        self._read_all_at = 0.0

    async def refresh(self) -> bool:
        """Apply the changes since the last call; True when there were any (or it started
        over)."""
        now = time.monotonic()
        over = not self._read_all_at or now - self._read_all_at >= self.full_read_seconds
        if over:
            self.on_reset()
            self._cursor, self._read_all_at = 0, now
        before = self._cursor
        self._cursor = await read_changes(self.nc, self.bucket, self._cursor, self.on_change)
        return over or self._cursor != before


async def read_into(
    nc: NATS, bucket: str, values: dict[str, bytes], since: int, timeout: float = 5.0
) -> int:
    """Apply the changes after ``since`` to ``values`` (key -> value); the last sequence."""

    def apply(key: str, value: bytes | None) -> None:
        if value is None:
            values.pop(key, None)
        else:
            values[key] = value

    return await read_changes(nc, bucket, since, apply, timeout)


async def read_all(nc: NATS, bucket: str, timeout: float = 5.0) -> dict[str, bytes]:
    """Every live key and value of ``bucket``."""
    values: dict[str, bytes] = {}
    await read_into(nc, bucket, values, 0, timeout)
    return values

"""Batched direct gets: read a stream's messages under a filter, in order, without a consumer.

Direct gets need no server-side state (per-connection consumers do not scale to tens of
thousands) and any replica serves them. One request returns up to ``batch`` messages after
a sequence, then an end-of-batch status carrying how many more match. The figures behind
the choice are in benchmarks/README.md (replay).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from shared import subjects
from shared.errors import Unavailable

BATCH = 512
TIMEOUT = 5.0

# Called with (sequence, headers, data) for each message; returns whether it counts
# towards the caller's limit.
Handler = Callable[[int, dict[str, str], bytes], bool]


async def scan(
    nc: NATS,
    stream: str,
    filter_subject: str,
    after: int,
    handle: Handler,
    *,
    limit: int | None = None,
    batch: int = BATCH,
    timeout: float = TIMEOUT,
) -> tuple[int, bool]:
    """Hand every message with sequence > ``after`` under the filter to ``handle``, in order,
    until the end (or ``limit`` counted messages). Returns (last sequence seen, more left)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[int] = loop.create_future()
    last = after
    counted = 0

    # A callback, not next_msg(): it costs half the client CPU per message (benchmarks/replay).
    async def on_message(msg: Msg) -> None:
        nonlocal last, counted
        headers = msg.headers or {}
        status = headers.get("Status")
        if status is not None:
            if not done.done():
                if status == "404":  # nothing after the cursor
                    done.set_result(0)
                elif status == "204":  # end of batch
                    done.set_result(int(headers.get("Nats-Num-Pending", "0")))
                else:
                    done.set_exception(Unavailable(f"direct get on {stream}: status {status}"))
            return
        last = int(headers[subjects.SEQUENCE])
        if handle(last, headers, msg.data):
            counted += 1

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=on_message)
    try:
        while True:
            want = batch if limit is None else min(batch, limit - counted)
            if want <= 0:
                return last, True
            request = {"seq": last + 1, "next_by_subj": filter_subject, "batch": want}
            await nc.publish(f"$JS.API.DIRECT.GET.{stream}", orjson.dumps(request), reply=inbox)
            try:
                pending = await asyncio.wait_for(done, timeout)
            except TimeoutError:
                raise Unavailable(f"{stream} did not answer a read in time") from None
            done = loop.create_future()
            if pending == 0:
                return last, False
    finally:
        await sub.unsubscribe()

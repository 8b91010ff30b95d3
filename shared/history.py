"""Reading a session's history with batched direct gets.

Why direct gets: they need no consumer on the server (per-connection consumers do not
scale to tens of thousands) and are served by any replica. One request returns up to
``batch`` messages of the session after a sequence, then an end-of-batch status. The
figures behind the choice are in benchmarks/replay.py and the issue note.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import orjson
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from shared import subjects, wire
from shared.errors import Unavailable
from shared.wire import StoredEvent

log = structlog.get_logger(__name__)

BATCH = 512
TIMEOUT = 5.0


@dataclass(slots=True)
class Page:
    """Events read after a sequence; ``last_seq`` is the highest sequence looked at."""

    events: list[StoredEvent]
    last_seq: int
    more: bool
    malformed: int = 0


async def read(
    nc: NATS,
    stream: str,
    session: str,
    since: int,
    *,
    limit: int | None = None,
    batch: int = BATCH,
) -> Page:
    """Read the session's stored events with sequence > ``since`` (at most ``limit``)."""
    filter_subject = subjects.session_filter(session)
    page = Page([], since, False)
    loop = asyncio.get_running_loop()
    done: asyncio.Future[int] = loop.create_future()

    # A callback, not next_msg(): it costs half the client CPU per message (benchmarks/replay).
    async def on_message(msg: Msg) -> None:
        nonlocal done
        headers = msg.headers or {}
        status = headers.get("Status")
        if status is not None:
            if done.done():
                return
            if status == "404":  # nothing after the cursor
                done.set_result(0)
            elif status == "204":  # end of batch
                done.set_result(int(headers.get("Nats-Num-Pending", "0")))
            else:
                done.set_exception(Unavailable(f"history read failed with status {status}"))
            return
        seq = int(headers[subjects.SEQUENCE])
        page.last_seq = seq
        parsed = subjects.parse(headers.get(subjects.STREAM_SUBJECT, ""))
        event = wire.decode_event(msg.data)
        if parsed is None or event is None:
            page.malformed += 1
            log.warning("event_malformed", session=session, seq=seq)
            return
        page.events.append(StoredEvent(seq, parsed.kind, parsed.key, event))

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=on_message)
    try:
        while True:
            want = batch if limit is None else min(batch, limit - len(page.events))
            if want <= 0:
                page.more = True
                return page
            request = {"seq": page.last_seq + 1, "next_by_subj": filter_subject, "batch": want}
            await nc.publish(f"$JS.API.DIRECT.GET.{stream}", orjson.dumps(request), reply=inbox)
            try:
                pending = await asyncio.wait_for(done, TIMEOUT)
            except TimeoutError:
                raise Unavailable("JetStream did not answer a history read in time") from None
            done = loop.create_future()
            if pending == 0:
                return page
    finally:
        await sub.unsubscribe()

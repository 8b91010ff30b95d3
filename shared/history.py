"""Reading a session's history with batched direct gets.

Why direct gets: they need no consumer on the server (per-connection consumers do not
scale to tens of thousands) and are served by any replica. One request returns up to
``batch`` messages of the session after a sequence, then an end-of-batch status. The
figures behind the choice are in benchmarks/replay.py and the issue note.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson
import structlog
from nats.aio.client import Client as NATS

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
    events: list[StoredEvent] = []
    cursor = since
    malformed = 0
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    try:
        while True:
            want = batch if limit is None else min(batch, limit - len(events))
            if want <= 0:
                return Page(events, cursor, True, malformed)
            request = {"seq": cursor + 1, "next_by_subj": filter_subject, "batch": want}
            await nc.publish(f"$JS.API.DIRECT.GET.{stream}", orjson.dumps(request), reply=inbox)
            got = 0
            pending = 0
            while True:
                try:
                    msg = await sub.next_msg(timeout=TIMEOUT)
                except TimeoutError:
                    raise Unavailable("JetStream did not answer a history read in time") from None
                headers = msg.headers or {}
                status = headers.get("Status")
                if status is not None:
                    if status == "404":  # nothing after cursor
                        return Page(events, cursor, False, malformed)
                    if status != "204":
                        raise Unavailable(f"history read failed with status {status}")
                    pending = int(headers.get("Nats-Num-Pending", "0"))
                    break
                seq = int(headers[subjects.SEQUENCE])
                cursor = seq
                got += 1
                parsed = subjects.parse(headers.get(subjects.STREAM_SUBJECT, ""))
                event = wire.decode_event(msg.data)
                if parsed is None or event is None:
                    malformed += 1
                    log.warning("event_malformed", session=session, seq=seq)
                    continue
                events.append(StoredEvent(seq, parsed.kind, parsed.key, event))
            if pending == 0 or got == 0:
                more = pending > 0
                return Page(events, cursor, more, malformed)
    finally:
        await sub.unsubscribe()

"""Reading a session's history (batched direct gets, see shared/directget.py)."""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from nats.aio.client import Client as NATS

from shared import directget, subjects, wire
from shared.wire import StoredEvent

log = structlog.get_logger(__name__)


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
    batch: int = directget.BATCH,
) -> Page:
    """Read the session's stored events with sequence > ``since`` (at most ``limit``)."""
    page = Page([], since, False)

    def handle(seq: int, headers: dict[str, str], data: bytes) -> bool:
        parsed = subjects.parse(headers.get(subjects.STREAM_SUBJECT, ""))
        event = wire.decode_event(data)
        if parsed is None or event is None:
            page.malformed += 1
            log.warning("event_malformed", session=session, seq=seq)
            return False
        page.events.append(StoredEvent(seq, parsed.kind, parsed.key, event))
        return True

    page.last_seq, page.more = await directget.scan(
        nc, stream, subjects.session_filter(session), since, handle, limit=limit, batch=batch
    )
    return page

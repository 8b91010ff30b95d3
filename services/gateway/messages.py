"""Storing what devices send (user messages, control signals, approval answers), each
with a dedupe id derived from the client's id so a resend is stored once."""

from __future__ import annotations

from dataclasses import dataclass

from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import NoStreamResponseError, ServiceUnavailableError

from shared import subjects, wire
from shared.errors import Unavailable
from shared.ids import check_id

PUBLISH_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class Stored:
    message: str
    seq: int
    duplicate: bool


async def store(
    nc: NATS, subject: str, event: dict[str, object], dedupe: str, what: str
) -> tuple[int, bool]:
    """Publish one event to JetStream; returns (sequence, duplicate). NATS trouble is
    ``Unavailable`` (the client resends with the same id, so nothing is stored twice)."""
    js = nc.jetstream(timeout=PUBLISH_TIMEOUT)
    try:
        ack = await js.publish(subject, wire.dumps(event), headers={subjects.MSG_ID: dedupe})
    except (NatsTimeoutError, NoRespondersError, NoStreamResponseError, ServiceUnavailableError):
        raise Unavailable(f"JetStream did not acknowledge the {what}; resend it") from None
    return int(ack.seq), bool(ack.duplicate)


async def publish_user_message(
    nc: NATS, session: str, message_id: str, text: str, participant: str
) -> Stored:
    """Store a user message once; a resend with the same id answers ``duplicate``."""
    check_id(message_id, "message id")
    event = {
        "v": wire.ENVELOPE_VERSION,
        "type": wire.MESSAGE_CREATED,
        "session": session,
        "message": message_id,
        "role": "user",
        "participant": participant,
        "text": text,
        "ts": wire.now_ms(),
    }
    dedupe = wire.msg_id(session, subjects.USER, message_id, "created")
    seq, duplicate = await store(
        nc, subjects.user_message(session, message_id), event, dedupe, "message"
    )
    return Stored(message=message_id, seq=seq, duplicate=duplicate)

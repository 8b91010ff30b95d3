"""Storing what devices send: user messages, with the client's id as the dedupe id."""

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
    headers = {subjects.MSG_ID: wire.msg_id(session, subjects.USER, message_id, "created")}
    js = nc.jetstream(timeout=PUBLISH_TIMEOUT)
    try:
        ack = await js.publish(
            subjects.user_message(session, message_id), wire.dumps(event), headers=headers
        )
    except (NatsTimeoutError, NoRespondersError, NoStreamResponseError, ServiceUnavailableError):
        raise Unavailable("JetStream did not acknowledge the message; resend it") from None
    return Stored(message=message_id, seq=int(ack.seq), duplicate=bool(ack.duplicate))

"""Which run events become webhooks: the durable consumer on the session stream.

For ``run.completed`` / ``run.failed`` (and ``approval.requested``) it finds the session's
user (the event's ``user``, else the participant of the latest user ``message.created``),
the subscriptions that match, and whether the user still needs telling: at once when the
user has no connected device, else after the grace period unless the user's read position
(``TETHER_CURSORS``) reached the event. Jobs go to the delivery queue with a deterministic
Nats-Msg-Id, so a redelivered trigger stores each job once; the trigger is acked after.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.kv import KeyValue

from services.notifier.settings import NotifierSettings
from shared import cursors, directget, presence, subjects, webhooks, wire
from shared.webhooks import Subscription

log = structlog.get_logger(__name__)

SUMMARY_CHARS = 200


@dataclass(frozen=True, slots=True)
class RunContext:
    """What the history says about a run: its user and a short summary."""

    user: str | None
    summary: str


async def run_context(nc: NATS, stream: str, session: str, event: dict[str, Any]) -> RunContext:
    """The run's user and the first characters of its last agent message.

    Reads only what it needs, not the session's whole history: the session's user messages
    (when the event names no user: the author of the latest one) and the agent messages
    stored since the run started (each is one stored message once complete).
    """
    user = event.get("user") if isinstance(event.get("user"), str) else None
    run = event.get("run")
    if user is None:

        def author(seq: int, headers: dict[str, str], data: bytes) -> bool:
            nonlocal user
            item = wire.decode_event(data)
            if item is not None and item.get("type") in wire.FINAL_MESSAGE_TYPES:
                participant = item.get("participant")
                user = participant if isinstance(participant, str) else user
            return True

        await directget.scan(nc, stream, subjects.kind_filter(session, subjects.USER), 0, author)
    summary = ""
    if not isinstance(run, str):
        return RunContext(user, summary)
    started = 0

    def first(seq: int, headers: dict[str, str], data: bytes) -> bool:
        nonlocal started
        started = started or seq
        return True

    await directget.scan(nc, stream, subjects.run_events(session, run), 0, first, limit=1)

    def agent_text(seq: int, headers: dict[str, str], data: bytes) -> bool:
        nonlocal summary
        item = wire.decode_event(data)
        if (
            item is not None
            and item.get("type") in wire.FINAL_MESSAGE_TYPES
            and item.get("run") == run
            and isinstance(item.get("text"), str)
        ):
            summary = item["text"][:SUMMARY_CHARS]
        return True

    agents = subjects.kind_filter(session, subjects.AGENT)
    await directget.scan(nc, stream, agents, max(started - 1, 0), agent_text)
    return RunContext(user, summary)


class Trigger:
    """Turns stored run events into delivery jobs."""

    def __init__(
        self,
        nc: NATS,
        settings: NotifierSettings,
        read_positions: KeyValue,
    ) -> None:
        self.nc = nc
        self.settings = settings
        self.read_positions = read_positions
        self.subscriptions = webhooks.SubscriptionsView(nc)

    async def handle(self, msg: Msg) -> None:
        """Decide about one stored run event; ack when decided and jobs are stored."""
        seq = msg.metadata.sequence.stream
        event = wire.decode_event(msg.data)
        parsed = subjects.parse(msg.subject)
        if event is None or parsed is None or event.get("type") not in webhooks.EVENT_TYPES:
            await msg.ack()
            return
        kind = str(event["type"])
        candidates = [
            s
            for s in await self.subscriptions.current()
            if kind in s.events and s.session in (None, parsed.session)
        ]
        if not candidates:
            await msg.ack()
            return
        stream = self.settings.log.stream_for(parsed.session)
        context = await run_context(self.nc, stream, parsed.session, event)
        matching = [s for s in candidates if s.matches(kind, parsed.session, context.user)]
        if matching and await self.due(parsed.session, context.user, seq):
            for subscription in matching:
                await self.enqueue(subscription, seq, event, parsed.session, context)
        else:
            log.info("notify_skipped", session=parsed.session, seq=seq, matching=len(matching))
        await msg.ack()

    async def online(self, session: str, user: str | None) -> bool:
        """Whether the user (any user, when unknown) has a device connected to the session."""
        current = await presence.snapshot(self.nc, subjects.presence_filter(session))
        return any(
            c.entry is not None
            and c.entry.role == "user"
            and (user is None or c.entry.participant == user)
            for c in current.values()
        )

    async def due(self, session: str, user: str | None, seq: int) -> bool:
        """True when the user has not seen event ``seq`` (now, or by the end of the grace)."""
        if not await self.online(session, user):
            return True
        await asyncio.sleep(self.settings.grace_seconds)
        if user is None:  # no read position to check: due if nobody is watching any more
            return not await self.online(session, None)
        return await cursors.read(self.read_positions, session, user) < seq

    async def enqueue(
        self,
        subscription: Subscription,
        seq: int,
        event: dict[str, Any],
        session: str,
        context: RunContext,
    ) -> None:
        wid = webhooks.webhook_id(subscription.id, session, seq)
        payload = {
            "type": event["type"],
            "session": session,
            "run": event.get("run"),
            "user": context.user,
            "summary": context.summary,
            "seq": seq,
            "resume_from": seq - 1,
            "timestamp": event.get("ts", wire.now_ms()),
        }
        if event.get("error"):
            payload["error"] = str(event["error"])[:SUMMARY_CHARS]
        if event["type"] == webhooks.APPROVAL_REQUESTED:  # what the user is asked (§17)
            for name in ("approval", "prompt", "options", "expires_at"):
                if event.get(name) is not None:
                    payload[name] = event[name]
        job = {"webhook_id": wid, "subscription": subscription.id, "payload": payload}
        await webhooks.publish_job(self.nc, job, wid)
        log.info("notify_enqueued", webhook=subscription.id, webhook_id=wid, session=session)

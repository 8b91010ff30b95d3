"""An agent's durable inbox: the user messages and control signals of every session.

    async for item in client.inbox():
        if isinstance(item, UserMessage):
            ...answer item.text in item.session...
        await item.ack()

One durable JetStream pull consumer (default name ``tether-inbox-{agent_id}``) on the
session stream (on each, when the log is partitioned: shared/partitions.py; their batches
are interleaved), filtered to ``tether.s.*.u.*`` and ``tether.s.*.c.*``, explicit acks. It
lives on the server, so what users send while every worker is down is delivered when one
comes back. Workers of a pool open the same durable: each stored message goes to one
worker at a time; an item not acked within ``ack_wait`` (a crashed worker) is redelivered
to any worker, up to ``max_deliver`` times. Items come in stream order (so in order per
session) to one worker; with several workers, or when a worker handles items
concurrently, two items of one session can be in progress at once (docs/protocol.md §18).

Cancel and steer items are handed to the process's active runs of their session before they
are yielded (``Run.cancelled`` / ``Run.steers``), so a run learns of a signal that reached it
only through the inbox (it was stored while the live subscription was down) without code.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from shared import subjects, wire
from shared.ids import check_id
from shared.runcontrol import Signal, signal_of

if TYPE_CHECKING:
    from nats.js.client import JetStreamContext

    from shared.agent import Client

log = structlog.get_logger(__name__)

DELIVER = {"new": DeliverPolicy.NEW, "all": DeliverPolicy.ALL}
# What a stream's fetcher hands the iterator: a batch and the event to set when it is
# handled, the error that ended the fetcher, or None (closed).
Batch = tuple[list[Msg], asyncio.Event] | BaseException | None


@dataclass(slots=True)
class InboxItem:
    """One stored event for the agent: its session, stream sequence and event."""

    session: str
    seq: int
    event: wire.Event
    msg: Msg
    deliveries: int

    async def ack(self) -> None:
        """Done with it: it is not delivered again."""
        await self.msg.ack()

    async def nak(self, delay: float | None = None) -> None:
        """Not handled: deliver it again (to any worker), after ``delay`` seconds."""
        await self.msg.nak(delay=delay)

    async def in_progress(self) -> None:
        """Still working on it: restart the ack timer."""
        await self.msg.in_progress()


@dataclass(slots=True)
class UserMessage(InboxItem):
    """A user's message (``message.created`` on ``tether.s.{session}.u.{message}``)."""

    message: str = ""
    text: str = ""
    participant: str | None = None


@dataclass(slots=True)
class Cancel(InboxItem):
    """A device cancelled a run of the session (``signal.run`` None: the active run).

    ``routed``: how many of this process's active runs (``session.run(...)``) it was
    handed to before it was yielded; 0 means no run here was active for it."""

    signal: Signal | None = None
    routed: int = 0


@dataclass(slots=True)
class Steer(InboxItem):
    """A device sent an extra instruction (``signal.text``) for a run of the session;
    handed to this process's active runs like ``Cancel`` (``routed``)."""

    signal: Signal | None = None
    routed: int = 0


class Inbox:
    """The durable consumer of one agent (or pool); iterate it with ``async for``."""

    def __init__(
        self,
        client: Client,
        durable: str | None = None,
        *,
        deliver: str = "new",
        ack_wait: float = 120.0,
        max_deliver: int = 5,
        batch: int = 16,
        max_ack_pending: int | None = None,
    ) -> None:
        if deliver not in DELIVER:
            raise ValueError(f"deliver must be one of {sorted(DELIVER)}, not {deliver!r}")
        self.client = client
        self.durable = check_id(durable or f"tether-inbox-{client.agent_id}", "durable name")
        self.deliver = deliver
        self.ack_wait = ack_wait
        self.max_deliver = max_deliver
        self.batch = batch
        self.max_ack_pending = max_ack_pending
        self._subs: list[JetStreamContext.PullSubscription] = []
        self._batches: asyncio.Queue[Batch] | None = None
        self._closed = False

    async def open(self) -> None:
        """Create the durable on each session stream (first start) or bind to it (restart,
        other workers)."""
        if self._subs:
            return
        js = self.client.nc.jetstream()
        streams = self.client.log_settings.streams
        for stream in streams:
            try:
                await js.consumer_info(stream, self.durable)
            except NotFoundError:  # the first start: create it (a racing worker's is equal)
                await js.add_consumer(
                    stream,
                    ConsumerConfig(
                        durable_name=self.durable,
                        filter_subjects=list(subjects.INBOX_FILTERS),
                        deliver_policy=DELIVER[self.deliver],
                        ack_policy=AckPolicy.EXPLICIT,
                        ack_wait=self.ack_wait,
                        max_deliver=self.max_deliver,
                        max_ack_pending=self.max_ack_pending,
                    ),
                )
            self._subs.append(await js.pull_subscribe_bind(self.durable, stream))
        log.info("inbox_open", durable=self.durable, streams=list(streams))

    async def close(self) -> None:
        """Stop iterating (after the current item) and drop the subscriptions."""
        self._closed = True
        if self._batches is not None:
            self._batches.put_nowait(None)  # wake the iterator
        subs, self._subs = self._subs, []
        for sub in subs:
            await sub.unsubscribe()

    async def __aiter__(self) -> AsyncIterator[InboxItem]:
        await self.open()
        batches: asyncio.Queue[Batch] = asyncio.Queue()
        self._batches = batches
        fetchers = [asyncio.create_task(self._fetch(sub, batches)) for sub in self._subs]
        try:
            while not self._closed:
                got = await batches.get()
                if got is None:
                    break
                if isinstance(got, BaseException):
                    raise got
                msgs, done = got
                try:
                    for msg in msgs:
                        item = self._item(msg)
                        if item is None:
                            await msg.ack()  # edits, deletes, malformed events: no answer
                            continue
                        if isinstance(item, (Cancel, Steer)) and item.signal is not None:
                            # A run of this process that is active now gets it at once (it
                            # may have come live already: each control id counts once).
                            item.routed = await self.client.route(item.session, item.signal)
                        yield item
                finally:
                    done.set()
        finally:
            for task in fetchers:
                task.cancel()
            await asyncio.gather(*fetchers, return_exceptions=True)

    async def _fetch(
        self, sub: JetStreamContext.PullSubscription, batches: asyncio.Queue[Batch]
    ) -> None:
        """Fetch one stream's batches; the next only once the iterator is done with this
        one (a worker of a pool holds at most one batch per stream, as without partitions)."""
        while not self._closed:
            try:
                msgs = await sub.fetch(self.batch, timeout=1.0)
            except (TimeoutError, NatsTimeoutError):
                continue
            except Exception as exc:  # noqa: BLE001 - raised by the iterator, as before
                await batches.put(exc)
                return
            done = asyncio.Event()
            await batches.put((msgs, done))
            await done.wait()

    def _item(self, msg: Msg) -> InboxItem | None:
        parsed = subjects.parse(msg.subject)
        event = wire.decode_event(msg.data)
        if parsed is None or event is None:
            log.warning("inbox_malformed", subject=msg.subject)
            return None
        meta = msg.metadata
        common: dict[str, Any] = {
            "session": parsed.session,
            "seq": int(meta.sequence.stream),
            "event": event,
            "msg": msg,
            "deliveries": int(meta.num_delivered),
        }
        if parsed.kind == subjects.USER:
            text = event.get("text")
            if event.get("type") != wire.MESSAGE_CREATED or not isinstance(text, str):
                return None
            who = event.get("participant")
            return UserMessage(
                **common,
                message=parsed.key,
                text=text,
                participant=who if isinstance(who, str) else None,
            )
        signal = signal_of(event, common["seq"])
        if signal is None:
            return None
        if signal.kind == wire.CONTROL_CANCEL:
            return Cancel(**common, signal=signal)
        return Steer(**common, signal=signal)

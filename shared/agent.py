"""The Python agent SDK: publish an agent's output into a named session, straight to NATS.

    client = await connect()                       # TETHER_NATS_URL or nats://127.0.0.1:4222
    session = client.session("support-42")
    async with session.run() as run:               # run.started ... run.completed / run.failed
        message = run.message()
        await message.start()
        for token in tokens:
            await message.append(token)            # coalesced per ``coalesce_ms``
        await message.complete()                   # full text stored; deltas rolled up

Every publish carries a deterministic ``Nats-Msg-Id`` (session, message or run, part), so
a retried publish is stored once. Ids derive from the run id: pass a stable ``run_id``
(for example from a Temporal workflow) and a retried agent republishes the same ids.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import structlog
from nats.aio.client import Client as NATS
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import APIError, NoStreamResponseError

from shared import natsconn, presence, subjects, wire
from shared.errors import PublishError
from shared.ids import check_id, new_id
from shared.inbox import Inbox
from shared.listeners import Listeners
from shared.runcontrol import CancelHook, RunControl, Signal
from shared.runs import Run
from shared.settings import Env, LogSettings, NatsSettings
from shared.streaming import DEFAULT_CHECKPOINT_CHUNKS, Message
from shared.streams import ensure_stream

# The SDK's public names: ``agent.Run``, ``agent.Message``, ``agent.Signal`` and the rest.
__all__ = ["Client", "Message", "Run", "Session", "Signal", "connect"]

log = structlog.get_logger(__name__)

PUBLISH_ATTEMPTS = 5  # at least this many tries ...
PUBLISH_RETRY_SECONDS = 20.0  # ... and for this long: a stream leader election takes seconds
PUBLISH_TIMEOUT = 2.0


class Client:
    """A connection to NATS for one agent process; open sessions from it."""

    def __init__(
        self,
        nc: NATS,
        log_settings: LogSettings,
        *,
        coalesce_ms: float = 0.0,
        checkpoint_chunks: int = DEFAULT_CHECKPOINT_CHUNKS,
    ) -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=PUBLISH_TIMEOUT)
        self.log_settings = log_settings
        self.coalesce_ms = coalesce_ms
        self.checkpoint_chunks = checkpoint_chunks
        self.agent_id = "agent"
        self.instance = new_id("agent-")
        self.presence = presence.Writer(nc)
        self.presence.start()
        self._active: dict[str, set[RunControl]] = {}  # session -> controls of active runs

    async def route(self, session_id: str, signal: Signal) -> int:
        """Hand a control signal (from the inbox) to this process's active runs of the
        session; each run applies a control id once, so a signal that also arrived live
        counts once. Returns how many runs took it."""
        taken = 0
        for control in list(self._active.get(session_id, ())):
            if signal.run in (None, control.run_id):
                await control.deliver(signal)
                taken += 1
        return taken

    def inbox(self, durable: str | None = None, **options: Any) -> Inbox:
        """This agent's durable inbox (``async for item in client.inbox()``); options:
        ``deliver`` ("new" or "all", at the durable's creation), ``ack_wait``,
        ``max_deliver``, ``batch``, ``max_ack_pending``. Workers of a pool pass the same
        ``durable``."""
        return Inbox(self, durable, **options)

    def session(self, session_id: str, *, ttl_seconds: int | None = None) -> Session:
        """Open a session by name (nothing is sent until the first event)."""
        return Session(self, check_id(session_id), ttl_seconds=ttl_seconds)

    async def publish(
        self,
        subject: str,
        event: dict[str, Any],
        dedupe_id: str,
        *,
        rollup: bool = False,
        ttl_seconds: int | None = None,
    ) -> int:
        """Store one event; retry with the same dedupe id on timeouts and while the stream has
        no leader (no responders, 503), for ``PUBLISH_ATTEMPTS`` tries and at least
        ``PUBLISH_RETRY_SECONDS``. Returns its sequence (the first copy's for a repeat)."""
        headers = {subjects.MSG_ID: dedupe_id}
        if rollup:
            headers[subjects.ROLLUP] = "sub"
        if ttl_seconds is not None:
            headers[subjects.TTL] = f"{ttl_seconds}s"
        payload = wire.dumps(event)
        delay = 0.1
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PUBLISH_RETRY_SECONDS
        attempt = 0
        while True:
            attempt += 1
            try:
                ack = await self.js.publish(subject, payload, headers=headers)
                return int(ack.seq)
            except (TimeoutError, NatsTimeoutError, NoStreamResponseError, APIError) as exc:
                if isinstance(exc, APIError) and exc.code not in (None, 503):
                    raise PublishError(f"JetStream refused {subject}: {exc.description}") from exc
                if attempt >= PUBLISH_ATTEMPTS and loop.time() + delay > deadline:
                    break
                log.warning("publish_retry", subject=subject, attempt=attempt, error=repr(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
        raise PublishError(f"JetStream did not acknowledge {subject} after {attempt} tries")

    async def close(self) -> None:
        """Leave every session (presence ``closed``), flush what is pending and close."""
        await self.presence.close()
        await natsconn.close(self.nc)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def connect(
    settings: NatsSettings | None = None,
    *,
    log_settings: LogSettings | None = None,
    coalesce_ms: float | None = None,
    checkpoint_chunks: int | None = None,
    agent_id: str | None = None,
    ensure: bool = True,
) -> Client:
    """Connect an agent to NATS (settings from the environment when not given).

    ``coalesce_ms`` (env ``TETHER_COALESCE_MS``, default 0) is the delta coalescing window:
    0 publishes every ``append``; 40 rolls appends up in 40 ms windows.
    ``checkpoint_chunks`` (env ``TETHER_CHECKPOINT_CHUNKS``, default 256; 0 = never) is how
    often a streaming message stores a checkpoint of its text. ``agent_id`` (env
    ``TETHER_AGENT_ID``, default ``agent``) is the participant id devices see.
    """
    env = Env()
    settings = settings or NatsSettings.from_env(env, name="tether-agent")
    log_settings = log_settings or LogSettings.from_env(env)
    window = (
        env.number("TETHER_COALESCE_MS", 0.0, minimum=0) if coalesce_ms is None else coalesce_ms
    )
    every = (
        env.integer("TETHER_CHECKPOINT_CHUNKS", DEFAULT_CHECKPOINT_CHUNKS, minimum=0)
        if checkpoint_chunks is None
        else checkpoint_chunks
    )
    holder: list[Client] = []

    async def on_reconnect() -> None:
        if holder:  # re-own presence under the new client id before the grace period ends
            await holder[0].presence.reown()

    nc = await natsconn.connect(settings, on_reconnect=on_reconnect)
    if ensure:
        await ensure_stream(nc, log_settings)
        await presence.ensure_bucket(nc, log_settings.replicas)
    client = Client(nc, log_settings, coalesce_ms=window, checkpoint_chunks=every)
    client.agent_id = check_id(
        env.string("TETHER_AGENT_ID", "agent") if agent_id is None else agent_id, "agent id"
    )
    holder.append(client)
    return client


class Session:
    """A named session; every device and agent instance addresses it by this id."""

    def __init__(self, client: Client, session_id: str, *, ttl_seconds: int | None) -> None:
        self.client = client
        self.id = session_id
        self.ttl_seconds = ttl_seconds

    async def set_state(self, state: str) -> None:
        """Publish this agent's presence state in the session (``thinking``, ``streaming``,
        ``idle``, ``offline``); runs set it automatically."""
        if state not in presence.AGENT_STATES:
            raise ValueError(f"state must be one of {presence.AGENT_STATES}, not {state!r}")
        client = self.client
        await client.presence.set(
            client.presence.entry(self.id, "agent", client.agent_id, client.instance, state)
        )

    async def listeners(self) -> list[dict[str, Any]]:
        """The users' devices connected to this session now."""
        current = await presence.ask(self.client.nc, self.id)
        return [
            c.entry.public()
            for c in current.values()
            if c.entry is not None and c.entry.role == "user"
        ]

    async def wait_for_listener(self, timeout: float | None = None) -> None:
        """Return as soon as at least one user device is connected (at once if one is)."""
        async with Listeners(self) as watch:
            await asyncio.wait_for(watch.wait_for_listener(), timeout)

    def watch_listeners(
        self,
        on_empty: Callable[[], Awaitable[None] | None] | None = None,
        on_return: Callable[[], Awaitable[None] | None] | None = None,
    ) -> Listeners:
        """Follow the session's user devices: ``on_empty`` runs when the last one leaves,
        ``on_return`` when one comes back (use ``async with``)."""
        return Listeners(self, on_empty=on_empty, on_return=on_return)

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"v": wire.ENVELOPE_VERSION, "type": kind, "session": self.id, "ts": wire.now_ms()}
        event.update({k: v for k, v in fields.items() if v is not None})
        return event

    async def _publish(
        self, subject: str, event: dict[str, Any], dedupe: str, *, rollup: bool = False
    ) -> int:
        return await self.client.publish(
            subject, event, dedupe, rollup=rollup, ttl_seconds=self.ttl_seconds
        )

    @asynccontextmanager
    async def run(
        self,
        run_id: str | None = None,
        *,
        user: str | None = None,
        on_cancel: CancelHook | None = None,
        **data: Any,
    ) -> AsyncIterator[Run]:
        """A run: ``run.started`` on entry, ``run.completed`` or ``run.failed`` on exit.

        ``user`` names the participant the run works for; it is put on the lifecycle
        events, and the notifier tells that user when the run ends while they are away.
        While the run is active, cancel and steer signals of the session arrive live
        (``run.cancelled``, ``run.steers``, ``on_cancel``); a cancelled run ends
        ``run.cancelled`` instead of ``run.completed``.
        """
        run = Run(
            self,
            check_id(run_id, "run id") if run_id else new_id("run-"),
            user=check_id(user, "user id") if user is not None else None,
            on_cancel=on_cancel,
        )
        await run.control.follow(self.client.nc, self.id)
        active = self.client._active.setdefault(self.id, set())
        active.add(run.control)
        try:
            await run.start(**data)
            try:
                yield run
            except asyncio.CancelledError:
                await asyncio.shield(run.cancel(run.cancel_reason() or "task cancelled"))
                raise
            except BaseException as exc:
                if not run.ended:
                    await run.fail(f"{type(exc).__name__}: {exc}")
                raise
            if not run.ended:
                if run.cancelled.is_set():
                    await run.cancel(run.cancel_reason())
                else:
                    await run.complete()
        finally:
            active.discard(run.control)
            if not active:
                self.client._active.pop(self.id, None)
            await run.control.stop()

    async def _message_event(
        self, kind: str, message_id: str, role: str, part: str, **fields: Any
    ) -> int:
        """Publish an event that replaces a whole message (rolls its subject up)."""
        event = self._event(kind, message=message_id, role=role, **fields)
        dedupe = wire.msg_id(self.id, subjects.message_kind(role), message_id, part)
        return await self._publish(
            subjects.message(self.id, message_id, role), event, dedupe, rollup=True
        )

    async def post(
        self,
        text: str,
        *,
        message_id: str | None = None,
        role: str = "agent",
        run: str | None = None,
    ) -> int:
        """Publish a whole message in one event (``message.created``)."""
        mid = check_id(message_id, "message id") if message_id else new_id("msg-")
        return await self._message_event(
            wire.MESSAGE_CREATED, mid, role, "created", text=text, run=run
        )

    async def edit(
        self, message_id: str, text: str, *, role: str = "agent", version: int | None = None
    ) -> int:
        """Replace a message's text; replay shows only the edited message.

        ``version`` makes the edit's dedupe id deterministic (a retried edit is stored once);
        without it the edit time in ms is used.
        """
        part = f"edit-{version if version is not None else wire.now_ms()}"
        return await self._message_event(wire.MESSAGE_EDIT, message_id, role, part, text=text)

    async def delete(self, message_id: str, *, role: str = "agent") -> int:
        """Delete a message; replay keeps only a tombstone."""
        return await self._message_event(wire.MESSAGE_DELETE, message_id, role, "delete")

"""One live subscription per (gateway, active session), shared by that session's devices.

The stream republishes every stored event to ``tether.live.{session}...`` with its
``Nats-Sequence``. A hub parses and serialises each event once, then offers the frame to
every device. After a NATS reconnect a hub may have missed live messages, so it resyncs:
it buffers live frames, reads the log after the last sequence it saw, offers that, then
releases the buffer; it also reloads the session's presence. Devices drop what they
already have, so nothing is delivered twice or out of order. (Both subscriptions are
direct, ``shared.natsfast.subscribe_direct``: each message is handled as nats-py reads it,
so none waits in a client-side queue and none is dropped as a slow consumer.)
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from services.gateway.device import Device
from services.gateway.roster import Roster
from shared import history, natsfast, presence, subjects, wire
from shared.settings import LogSettings

log = structlog.get_logger(__name__)

HELD_BYTES = 16 * 1024 * 1024  # live frames a resyncing hub holds before it reads the log again


class SessionHub:
    """The live feed of one session on this gateway."""

    def __init__(self, hubs: Hubs, session: str) -> None:
        self.hubs = hubs
        self.session = session
        self.stream = hubs.log.stream_for(session)
        self.devices: set[Device] = set()
        self.last_seq = 0
        self.subscription: Subscription | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._resyncing = False
        self._held: list[tuple[int, bytes, int]] = []
        self._held_bytes = 0
        self._held_overrun = False  # live frames were dropped while resyncing: read again
        self.roster = Roster()
        self.presence_subscription: Subscription | None = None

    async def open(self) -> None:
        try:
            # Direct subscriptions: the callbacks never block, so they run in nats-py's read
            # loop, in arrival order, without a queue and a task per subscription (~4 KB each).
            self.subscription = await natsfast.subscribe_direct(
                self.hubs.nc,
                subjects.live_filter(self.session),
                self._on_message,
                pending_bytes_limit=512 * 1024 * 1024,
            )
            self.presence_subscription = await natsfast.subscribe_direct(
                self.hubs.nc, subjects.presence_live(self.session), self._on_presence
            )
            await self.hubs.nc.flush()  # the server has our interest before anyone reads history
            self.roster.load(
                await presence.snapshot(self.hubs.nc, subjects.presence_filter(self.session))
            )
            self.ready.set_result(None)
        except BaseException as exc:
            self.ready.set_exception(exc)
            raise

    def _on_message(self, msg: Msg) -> None:
        headers = msg.headers or {}
        try:
            seq = int(headers[subjects.SEQUENCE])
        except (KeyError, ValueError):
            self.hubs.malformed += 1
            log.warning("live_message_without_sequence", session=self.session)
            return
        if headers.get(subjects.STREAM, self.stream) != self.stream:
            # Stored in another partition's stream (a publish straight to tether.p.*, not
            # through the account mapping): its sequence is not this session's; never serve it.
            self.hubs.malformed += 1
            log.warning("live_message_other_stream", session=self.session, seq=seq)
            return
        event = wire.decode_event(msg.data)
        if event is None:
            self.hubs.malformed += 1
            log.warning("event_malformed", session=self.session, seq=seq)
            self.last_seq = max(self.last_seq, seq)
            return
        covers = 0
        if event.get("type") == wire.MESSAGE_SNAPSHOT:
            # A checkpoint repeats text a device already has if it has everything up to the
            # previous event on the same message subject.
            try:
                covers = int(headers.get(subjects.LAST_SEQUENCE) or 0)
            except ValueError:
                covers = 0  # deliver it: a repeat is harmless, a loss is not
        self.deliver(seq, wire.event_frame_raw(seq, msg.data), covers)

    def _on_presence(self, msg: Msg) -> None:
        change = presence.parse_change(msg.subject, msg.headers, msg.data)
        if change is None:
            self.hubs.malformed += 1
            return
        self.presence_changed(change)

    def presence_changed(self, change: presence.Change) -> None:
        """Apply a presence change to the roster and tell the greeted devices (a change
        already applied, by sequence, is ignored)."""
        frame = self.roster.apply(change)
        if frame is not None:
            for device in tuple(self.devices):
                device.notify(frame)

    def deliver(self, seq: int, frame: bytes, covers: int = 0) -> None:
        if self._resyncing:
            if self._held_bytes + len(frame) > self.hubs.held_bytes_limit:
                # Bounded: drop what is held; the resync reads the log again for it.
                self._held_overrun = True
                self._held, self._held_bytes = [], 0
                return
            self._held.append((seq, frame, covers))
            self._held_bytes += len(frame)
            return
        self.last_seq = max(self.last_seq, seq)
        for device in tuple(self.devices):
            device.offer(seq, frame, covers)

    def caught_up(self, seq: int) -> None:
        """A device finished its replay at ``seq``: nothing before it needs resyncing."""
        self.last_seq = max(self.last_seq, seq)

    async def resync(self) -> None:
        """Offer every stored event after ``last_seq`` (after a possible loss of live messages)."""
        if self._resyncing:
            return
        self._resyncing = True
        try:
            snapshot = await presence.snapshot(self.hubs.nc, subjects.presence_filter(self.session))
            for frame in self.roster.reload(snapshot):
                for device in tuple(self.devices):
                    device.notify(frame)
            more = True
            while more:
                page = await history.read(self.hubs.nc, self.stream, self.session, self.last_seq)
                for stored in page.events:
                    frame = wire.event_frame(stored.seq, stored.event)
                    for device in tuple(self.devices):
                        device.offer(stored.seq, frame)
                self.last_seq = max(self.last_seq, page.last_seq)
                more = page.more
                if not more and self._held_overrun:
                    self._held_overrun = False
                    self._held, self._held_bytes = [], 0
                    more = True  # what was dropped is stored: read on from last_seq
            log.info("hub_resynced", session=self.session, last_seq=self.last_seq)
        except Exception as exc:  # noqa: BLE001 - keep serving; the next reconnect retries
            log.warning("hub_resync_failed", session=self.session, error=repr(exc))
        finally:
            self._resyncing = False
            self._held_overrun = False
            held, self._held = self._held, []
            self._held_bytes = 0
            for seq, frame, covers in held:
                self.deliver(seq, frame, covers)

    async def close(self) -> None:
        for subscription in (self.subscription, self.presence_subscription):
            if subscription is not None:
                try:
                    await subscription.unsubscribe()
                except Exception:  # noqa: BLE001 - connection already closed
                    pass


class Hubs:
    """Every active session hub of this gateway."""

    def __init__(self, nc: NATS, log_settings: LogSettings) -> None:
        self.nc = nc
        self.log = log_settings
        self.hubs: dict[str, SessionHub] = {}
        self.malformed = 0
        self.held_bytes_limit = HELD_BYTES

    async def join(self, session: str, device: Device) -> SessionHub:
        """Add a device; subscribes to the session's live feed if it is the first."""
        hub = self.hubs.get(session)
        if hub is None:
            hub = SessionHub(self, session)
            self.hubs[session] = hub
            hub.devices.add(device)
            try:
                await hub.open()
            except BaseException:
                self.hubs.pop(session, None)
                raise
        else:
            hub.devices.add(device)
            await asyncio.shield(hub.ready)
        return hub

    async def leave(self, session: str, device: Device) -> None:
        hub = self.hubs.get(session)
        if hub is None:
            return
        hub.devices.discard(device)
        if not hub.devices and hub.ready.done():
            del self.hubs[session]
            await hub.close()

    async def resync_all(self) -> None:
        """Called after NATS reconnects: live messages may have been lost meanwhile."""
        await asyncio.gather(*(hub.resync() for hub in list(self.hubs.values())))

    def stats(self) -> dict[str, Any]:
        return {
            "sessions": len(self.hubs),
            "devices": sum(len(h.devices) for h in self.hubs.values()),
            "malformed_events": self.malformed,
        }

"""The presence service: turns a dead NATS connection into ``left`` events, at once.

It keeps an index of the presence bucket (who owns which key), follows the server's
``$SYS.ACCOUNT.*.DISCONNECT`` events, and when a connection that owns keys goes away it
removes them with reason ``crashed`` after a short grace (so a client that reconnects at
once, re-owning its keys, does not flap). Graceful leaves are removed by their owners
(reason ``closed``); the per-key TTL is the backstop. It never publishes events itself:
devices see the bucket's own changes, so a restart emits nothing, and removals use an
expected sequence so several instances never remove a key twice.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from functools import partial
from typing import Any

import orjson
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from prometheus_client import Counter as MetricCounter

from services.presence.settings import PresenceSettings
from shared import natsconn, ops, presence, subjects
from shared.errors import InvalidId, TetherError
from shared.presence import Change

log = structlog.get_logger(__name__)

Owner = tuple[str, int]
LEAVE_REASONS = ("closed", "crashed", "expired")  # metric labels (others: "other")
STOP_GRACE = 5.0  # removals in flight at SIGTERM get this long (after the grace) to finish


class PresenceMetrics(ops.Metrics):
    """Presence events this instance saw on the bucket's live feed, and its own removals."""

    def __init__(self) -> None:
        super().__init__()
        self.joins = MetricCounter(
            "tether_presence_joins",
            "Presence keys that appeared (a connection joined a session).",
            registry=self.registry,
        )
        self.leaves = MetricCounter(
            "tether_presence_leaves",
            "Presence keys removed, by reason (closed, crashed, expired, other).",
            ["reason"],
            registry=self.registry,
        )
        for reason in (*LEAVE_REASONS, "other"):  # every reason shows from the first scrape
            self.leaves.labels(reason)
        self.crash_removals = MetricCounter(
            "tether_presence_crash_removals",
            "Keys this instance removed because their connection died (reason crashed).",
            registry=self.registry,
        )


class PresenceService:
    """Index of the bucket plus crash detection from the server's connection events."""

    def __init__(self, settings: PresenceSettings) -> None:
        self.settings = settings
        self.index: dict[str, Change] = {}
        self.owners: defaultdict[Owner, set[str]] = defaultdict(set)
        self.counters: Counter[str] = Counter()
        self.nc: NATS | None = None
        self.sys: NATS | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._reconciler: asyncio.Task[None] | None = None
        self.metrics = PresenceMetrics()
        self.ops = ops.Ops("presence", self.metrics, self._readiness)
        self.ops_server = ops.OpsServer(self.ops, settings.http)

    async def _readiness(self) -> str | None:
        if self.sys is None or not self.sys.is_connected:
            return "not connected to NATS as the system account user"
        return await ops.nats_readiness(self.nc, [subjects.PRESENCE_STREAM])

    async def start(self) -> None:
        await self.ops_server.start()  # /healthz at once; /readyz says when NATS is there
        self.nc = await natsconn.connect(self.settings.nats, on_reconnect=self.reload)
        self.metrics.watch(self.nc)
        self.sys = await natsconn.connect(self.settings.sys_nats)
        self.metrics.watch(self.sys)
        await presence.ensure_bucket(self.nc, self.settings.replicas)
        await self.nc.subscribe(f"{subjects.PRESENCE_LIVE_ROOT}.>", cb=self._on_change)
        await self.nc.subscribe(
            f"{subjects.ASK_PRESENCE_ROOT}.*", queue=subjects.ASK_PRESENCE_QUEUE, cb=self._on_ask
        )
        await self.nc.flush()
        await self.reload()
        await self.sys.subscribe(subjects.SYS_DISCONNECT, cb=self._on_disconnect)
        await self.sys.flush()
        self._reconciler = asyncio.create_task(self._reconcile_loop())
        log.info("presence_ready", keys=len(self.index), owners=len(self.owners))

    async def reload(self) -> None:
        """Rebuild the index from the bucket (at start, and after a reconnect, when live
        changes may have been missed)."""
        if self.nc is None:
            return
        current = await presence.snapshot(self.nc, f"{subjects.PRESENCE_KEY_ROOT}.>")
        for key in [k for k in self.index if k not in current]:
            self.apply(Change(key, self.index[key].seq + 1, None))
        for change in current.values():
            self.apply(change)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def apply(self, change: Change) -> None:
        """Apply one bucket change to the index (older changes than the indexed one lose)."""
        current = self.index.get(change.key)
        if current is not None and current.seq >= change.seq:
            return
        if current is not None and current.entry is not None:
            owner = (current.entry.server_id, current.entry.client_id)
            self.owners[owner].discard(change.key)
            if not self.owners[owner]:
                del self.owners[owner]
        if change.entry is None:
            self.index.pop(change.key, None)
            return
        self.index[change.key] = change
        self.owners[(change.entry.server_id, change.entry.client_id)].add(change.key)

    async def _on_change(self, msg: Msg) -> None:
        change = presence.parse_change(msg.subject, msg.headers, msg.data)
        if change is None:
            self.counters["malformed"] += 1
            return
        known = self.index.get(change.key)
        if known is None or known.seq < change.seq:
            if change.entry is None:
                reason = change.reason or "closed"
                self.metrics.leaves.labels(reason if reason in LEAVE_REASONS else "other").inc()
            elif known is None:
                self.metrics.joins.inc()
        self.apply(change)

    async def _on_ask(self, msg: Msg) -> None:
        """Who is in a session (for agents that may not read the bucket): read from the
        bucket, not the index, so an entry put a moment ago is in the answer."""
        session = msg.subject.rsplit(".", 1)[-1]
        if self.nc is None or not msg.reply:
            return
        try:
            current = await presence.snapshot(self.nc, subjects.presence_filter(session))
        except (InvalidId, TetherError, TimeoutError) as exc:
            self.counters["ask_failed"] += 1
            log.warning("presence_ask_failed", error=str(exc)[:200])
            await msg.respond(orjson.dumps({"error": "presence unavailable"}))
            return
        self.counters["asks"] += 1
        await msg.respond(presence.answer(current))

    async def _on_disconnect(self, msg: Msg) -> None:
        try:
            event = orjson.loads(msg.data)
            owner = (str(event["server"]["id"]), int(event["client"]["id"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            self.counters["malformed_sys_events"] += 1
            return
        # Checked after the grace, not now: the index may not have seen the owner's keys yet.
        self._spawn(self.expire(owner, reason=str(event.get("reason", ""))))

    async def expire(self, owner: Owner, reason: str = "") -> None:
        """After the grace period, remove every key this dead connection still owns."""
        await asyncio.sleep(self.settings.grace_ms / 1000)
        keys = list(self.owners.get(owner, ()))
        if not keys:
            return
        log.info(
            "presence_owner_gone",
            server_id=owner[0][:8],
            client_id=owner[1],
            keys=len(keys),
            disconnect_reason=reason,
        )
        await asyncio.gather(*(self._remove_crashed(key) for key in keys))

    async def _remove_crashed(self, key: str) -> None:
        change = self.index.get(key)
        if change is None or self.nc is None:
            return
        try:
            removed = await presence.remove(self.nc, key, "crashed", expected_seq=change.seq)
        except Exception as exc:  # noqa: BLE001 - retried by the next reconcile
            log.warning("presence_remove_failed", key=key, error=repr(exc))
            return
        self.counters["crashed" if removed else "raced"] += 1
        if removed:
            self.metrics.crash_removals.inc()

    async def connected_owners(self) -> set[Owner] | None:
        """Every client connection the servers report (CONNZ), or None if one failed."""
        if self.sys is None:
            return None
        inbox = self.sys.new_inbox()
        replies: list[dict[str, Any]] = []
        sub = await self.sys.subscribe(inbox, cb=partial(_collect, replies))
        try:
            await self.sys.publish(
                subjects.SYS_CONNZ, orjson.dumps({"limit": 1_000_000}), reply=inbox
            )
            await asyncio.sleep(0.5)
        finally:
            await sub.unsubscribe()
        owners: set[Owner] = set()
        for reply in replies:
            data = reply.get("data") or {}
            if "error" in reply or data.get("total", 0) > len(data.get("connections") or []):
                return None  # incomplete: better to remove nothing than something wrong
            server_id = str(reply.get("server", {}).get("id", ""))
            owners.update((server_id, int(c["cid"])) for c in data.get("connections") or [])
        return owners if replies else None

    async def reconcile(self) -> None:
        """Remove keys whose owner is not connected (a crash while this service was down)."""
        # Only owners known before asking: one that connects while the servers answer is
        # missing from their lists but very much alive.
        known = set(self.owners)
        connected = await self.connected_owners()
        if connected is None:
            return
        gone = [owner for owner in known if owner not in connected and owner in self.owners]
        for owner in gone:
            await self.expire(owner, reason="not connected at reconcile")

    async def _reconcile_loop(self) -> None:
        while True:
            try:
                await self.reconcile()
            except Exception as exc:  # noqa: BLE001 - try again next round
                log.warning("presence_reconcile_failed", error=repr(exc))
            await asyncio.sleep(self.settings.reconcile_seconds)

    async def stop(self) -> None:
        """Drain: /readyz 503; stop following disconnect events (drain the system
        connection); let removals already scheduled finish; drain the application
        connection (answers in flight are sent); stop the ops server."""
        self.ops.start_draining()
        if self._reconciler is not None:
            self._reconciler.cancel()
            await asyncio.gather(self._reconciler, return_exceptions=True)
        if self.sys is not None:
            await natsconn.close(self.sys)
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=self.settings.grace_ms / 1000 + STOP_GRACE)
        for task in list(self._tasks):
            task.cancel()  # the next instance's reconcile removes what is left
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.nc is not None:
            await natsconn.close(self.nc)
        await self.ops_server.stop()
        log.info("presence_stopped")


async def _collect(replies: list[dict[str, Any]], msg: Msg) -> None:
    try:
        replies.append(orjson.loads(msg.data))
    except orjson.JSONDecodeError:
        pass


async def serve(settings: PresenceSettings) -> None:
    """Run the presence service until SIGTERM or SIGINT."""
    service = PresenceService(settings)
    stop = ops.stop_on_signals()
    await service.start()
    ops.announce_ready("presence", service.ops_server.port)
    await stop.wait()
    await service.stop()

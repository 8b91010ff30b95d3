"""The notifier process: the trigger consumer and the delivery worker, until SIGTERM.

Both are durable JetStream pull consumers, so several notifier instances share the work
and a crashed one loses nothing: what it had not acked is redelivered (same job, same
webhook-id). Stopping: stop fetching, give in-flight work a few seconds, close.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

from services.notifier.delivery import Deliverer
from services.notifier.metrics import NotifierMetrics
from services.notifier.settings import NotifierSettings
from services.notifier.trigger import Trigger
from shared import natsconn, ops, presence, subjects, webhooks
from shared.streams import ensure_stream

log = structlog.get_logger(__name__)

FETCH_BATCH = 64
IN_FLIGHT = 1024
STOP_GRACE = 5.0
Handler = Callable[[Msg], Awaitable[None]]


class NotifierService:
    """Owns the NATS connection, the two consumers and their in-flight tasks."""

    def __init__(self, settings: NotifierSettings) -> None:
        self.settings = settings
        self.nc: NATS | None = None
        self.deliverer: Deliverer | None = None
        self.stopping = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._subs: list[JetStreamContext.PullSubscription] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.metrics = NotifierMetrics()
        self.ops = ops.Ops("notifier", self.metrics, self._readiness)
        self.ops_server = ops.OpsServer(self.ops, settings.http)

    async def _readiness(self) -> str | None:
        """Connected, and the session log, the delivery queue and every bucket exist."""
        streams = [
            *self.settings.log.streams,
            subjects.DELIVERIES_STREAM,
            *(
                f"KV_{name}"
                for name in (
                    subjects.WEBHOOKS_BUCKET,
                    subjects.CURSORS_BUCKET,
                    subjects.DEAD_LETTERS_BUCKET,
                )
            ),
        ]
        return await ops.nats_readiness(self.nc, streams)

    async def start(self) -> None:
        settings = self.settings
        await self.ops_server.start()  # /healthz at once; /readyz says when NATS is there
        self.nc = nc = await natsconn.connect(settings.nats)
        self.metrics.watch(nc)
        replicas = settings.log.replicas
        # The notifier may not publish to the log, so the gateway checks the partition routing.
        await ensure_stream(nc, settings.log, verify=False)
        await presence.ensure_bucket(nc, replicas)
        await webhooks.ensure_deliveries(nc, replicas)
        subs = await webhooks.bucket(nc, subjects.WEBHOOKS_BUCKET, replicas)
        positions = await webhooks.bucket(nc, subjects.CURSORS_BUCKET, replicas)
        dead = await webhooks.bucket(nc, subjects.DEAD_LETTERS_BUCKET, replicas)
        trigger = Trigger(nc, settings, positions)
        self.deliverer = Deliverer(settings, subs, dead, self.metrics)
        await self.deliverer.start()
        js = nc.jetstream(timeout=5)
        triggers = [  # one trigger consumer per session stream (partition)
            await js.pull_subscribe(
                subjects.RUN_EVENTS_FILTER,
                durable=subjects.NOTIFIER_TRIGGER_DURABLE,
                stream=stream,
                config=ConsumerConfig(
                    deliver_policy=DeliverPolicy.NEW,  # first start: no webhooks for old runs
                    ack_policy=AckPolicy.EXPLICIT,
                    ack_wait=settings.grace_seconds + 30,
                    max_ack_pending=IN_FLIGHT * 4,
                ),
            )
            for stream in settings.log.streams
        ]
        jobs = await js.pull_subscribe(
            f"{subjects.DELIVER_ROOT}.>",
            durable=subjects.NOTIFIER_DELIVERY_DURABLE,
            stream=subjects.DELIVERIES_STREAM,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=settings.ack_wait_seconds,
                max_deliver=-1,  # attempts are counted here, not by the server
                max_ack_pending=IN_FLIGHT * 4,
            ),
        )
        self._subs = [*triggers, jobs]
        self._loops = [
            *(asyncio.create_task(self._consume("trigger", t, trigger.handle)) for t in triggers),
            asyncio.create_task(self._consume("delivery", jobs, self.deliverer.handle)),
        ]
        log.info(
            "notifier_ready",
            grace_seconds=settings.grace_seconds,
            max_attempts=settings.max_attempts,
            concurrency=settings.concurrency,
        )

    async def _consume(
        self, name: str, psub: JetStreamContext.PullSubscription, handler: Handler
    ) -> None:
        slots = asyncio.Semaphore(IN_FLIGHT)
        fetch = psub.fetch
        while not self.stopping.is_set():
            try:
                msgs: list[Msg] = await fetch(FETCH_BATCH, timeout=1.0)
            except TimeoutError:  # nothing to fetch (nats-py's TimeoutError included)
                continue
            except Exception as exc:  # noqa: BLE001 - NATS reconnecting; try again
                log.warning("notifier_fetch_failed", consumer=name, error=repr(exc))
                await asyncio.sleep(0.5)
                continue
            for msg in msgs:
                await slots.acquire()
                task = asyncio.create_task(self._run(name, handler, msg))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                task.add_done_callback(lambda _: slots.release())

    async def _run(self, name: str, handler: Handler, msg: Msg) -> None:
        try:
            await handler(msg)
        except Exception as exc:  # noqa: BLE001 - unacked: JetStream redelivers it
            log.warning("notifier_handle_failed", consumer=name, error=repr(exc))

    async def stop(self) -> None:
        """Drain: /readyz 503; stop fetching; in-flight deliveries get ``STOP_GRACE`` to
        finish and ack (the rest stay unacked: redelivered elsewhere); unsubscribe; close
        the HTTP client; drain NATS (pending acks flushed); stop the ops server."""
        self.ops.start_draining()
        self.stopping.set()
        await asyncio.gather(*self._loops, return_exceptions=True)
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=STOP_GRACE)
        for task in list(self._tasks):
            task.cancel()  # not acked: redelivered to the next instance
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for psub in self._subs:  # a pending pull would hold up the drain
            try:
                await psub.unsubscribe()
            except Exception as exc:  # noqa: BLE001 - closing anyway
                log.info("notifier_unsubscribe_failed", error=repr(exc))
        if self.deliverer is not None:
            await self.deliverer.close()
        if self.nc is not None:
            await natsconn.close(self.nc)
        await self.ops_server.stop()
        log.info("notifier_stopped")


async def serve(settings: NotifierSettings) -> None:
    """Run the notifier until SIGTERM or SIGINT."""
    service = NotifierService(settings)
    stop = ops.stop_on_signals()
    await service.start()
    ops.announce_ready("notifier", service.ops_server.port)
    await stop.wait()
    await service.stop()

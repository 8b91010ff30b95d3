"""Delivering jobs: signed POSTs, retried by JetStream redelivery, then dead letters.

One durable pull consumer on ``TETHER_WEBHOOK_DELIVERIES``. For each job: look up the
subscription (deleted: drop the job), check the URL's addresses again, POST the signed
payload with a timeout under a per-origin semaphore. 2xx: ack. Otherwise nak with an
exponential backoff delay (with jitter) so JetStream redelivers it later; after
``max_attempts`` store a dead letter and ack. The webhook-id is in the job, so it is the
same on every attempt, after a crash and after a replay.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
import structlog
from nats.aio.msg import Msg
from nats.js.kv import KeyValue

from services.notifier import signing
from services.notifier.metrics import NotifierMetrics
from services.notifier.settings import NotifierSettings
from shared import webhooks
from shared.errors import ClientError, InvalidId
from shared.ids import check_id
from shared.sealing import VARIABLE
from shared.urlsafety import SafeResolver, check_url
from shared.webhooks import Subscription

log = structlog.get_logger(__name__)

UNSEALABLE = (
    f"the subscription's signing secret is sealed with a key this notifier does not have "
    f"({VARIABLE}); fix the keys, then replay this dead letter"
)

ERROR_CHARS = 300


def backoff(attempt: int, base: float, maximum: float) -> float:
    """The delay before attempt ``attempt + 1``: base * 2^(attempt-1), plus up to 25% jitter.

    The jitter is added (never subtracted), so successive delays always grow.
    """
    delay = min(base * 2.0 ** (attempt - 1), maximum)
    return float(delay * (1 + random.uniform(0, 0.25)))


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class Deliverer:
    """POSTs delivery jobs; one instance per notifier process."""

    def __init__(
        self,
        settings: NotifierSettings,
        subscriptions: KeyValue,
        dead: KeyValue,
        metrics: NotifierMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or NotifierMetrics()
        self.subscriptions = subscriptions
        self.dead = dead
        self.http: aiohttp.ClientSession | None = None
        self.limits: defaultdict[str, asyncio.Semaphore] = defaultdict(
            lambda: asyncio.Semaphore(settings.concurrency)
        )

    async def start(self) -> None:
        self.http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.settings.timeout_seconds),
            connector=aiohttp.TCPConnector(resolver=SafeResolver(self.settings.policy)),
        )

    async def close(self) -> None:
        if self.http is not None:
            await self.http.close()

    async def handle(self, msg: Msg) -> None:
        """Deliver one job; ack, nak with a delay, or dead-letter it."""
        keepalive = asyncio.create_task(self._keep_alive(msg))
        try:
            await self._handle(msg)
        finally:
            keepalive.cancel()

    async def _keep_alive(self, msg: Msg) -> None:
        """Tell JetStream we are still working while we wait for the endpoint's slot."""
        while True:
            await asyncio.sleep(self.settings.ack_wait_seconds / 2)
            await msg.in_progress()

    async def _handle(self, msg: Msg) -> None:
        try:
            job: dict[str, Any] = orjson.loads(msg.data)
            wid, sid = str(job["webhook_id"]), str(job["subscription"])
            check_id(sid, "subscription id")  # a KV key: a bad one would fail on every retry
        except (orjson.JSONDecodeError, KeyError, TypeError, InvalidId):
            log.warning("webhook_job_malformed", seq=msg.metadata.sequence.stream)
            await msg.term()
            return
        attempt = msg.metadata.num_delivered
        subscription = await webhooks.get(self.subscriptions, sid, self.settings.sealer)
        if subscription is None:
            log.info("webhook_dropped", webhook=sid, webhook_id=wid, why="subscription deleted")
            await msg.ack()
            return
        if not subscription.signable:  # retrying cannot help; a replay after the fix can
            log.error("webhook_secret_sealed", webhook=sid, webhook_id=wid, variable=VARIABLE)
            await self.dead_letter(subscription, job, attempt, UNSEALABLE)
            await msg.ack()
            return
        started = time.monotonic()
        error = await self.post(subscription, wid, job["payload"])
        self.metrics.attempts.inc()
        self.metrics.request_seconds.observe(time.monotonic() - started)
        if error is not None:
            self.metrics.failures.inc()
        if error is None:
            await msg.ack()
            enqueued = msg.metadata.timestamp
            if enqueued.tzinfo is None:
                enqueued = enqueued.replace(tzinfo=UTC)
            latency = (datetime.now(UTC) - enqueued).total_seconds()
            self.metrics.delivery_seconds.observe(max(0.0, latency))
            log.info("webhook_delivered", webhook=sid, webhook_id=wid, attempt=attempt)
        elif attempt >= self.settings.max_attempts:
            await self.dead_letter(subscription, job, attempt, error)
            await msg.ack()
        else:
            delay = backoff(
                attempt, self.settings.backoff_seconds, self.settings.max_backoff_seconds
            )
            log.info(
                "webhook_retry",
                webhook=sid,
                webhook_id=wid,
                attempt=attempt,
                delay=round(delay, 3),
                error=error,
            )
            await msg.nak(delay=delay)

    async def post(self, subscription: Subscription, wid: str, payload: Any) -> str | None:
        """One signed POST; None on a 2xx, else why it failed."""
        if self.http is None:
            raise RuntimeError("deliverer is not started")
        async with self.limits[origin(subscription.url)]:
            try:
                await check_url(subscription.url, self.settings.policy)
            except ClientError as exc:
                return exc.message
            body = orjson.dumps(payload)
            headers = signing.headers(subscription.key_bytes(), wid, int(time.time()), body)
            try:
                async with self.http.post(
                    subscription.url, data=body, headers=headers, allow_redirects=False
                ) as response:
                    await response.read()
                    if 200 <= response.status < 300:
                        return None
                    return f"HTTP {response.status}"
            except TimeoutError:
                return f"timed out after {self.settings.timeout_seconds} s"
            except aiohttp.ClientError as exc:
                return f"{type(exc).__name__}: {exc}"[:ERROR_CHARS]

    async def dead_letter(
        self, subscription: Subscription, job: dict[str, Any], attempts: int, error: str
    ) -> None:
        wid = str(job["webhook_id"])
        record = {
            "webhook_id": wid,
            "subscription": subscription.id,
            "url": subscription.url,
            "attempts": attempts,
            "error": error,
            "failed_at": int(time.time() * 1000),
            "job": job,
        }
        await self.dead.put(wid, orjson.dumps(record))
        self.metrics.dead_letters.inc()
        log.warning("webhook_dead_lettered", webhook=subscription.id, webhook_id=wid, error=error)

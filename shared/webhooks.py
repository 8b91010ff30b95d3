"""Webhook subscriptions, delivery jobs and dead letters, all stored in JetStream.

* Subscriptions: KV bucket ``TETHER_WEBHOOKS``, key = subscription id (``wh_...``), value
  the subscription JSON, its signing secret sealed when the gateway has sealing keys
  (shared/sealing.py); a secret that cannot be opened reads as empty (``signable`` false).
* Jobs: the work-queue stream ``TETHER_WEBHOOK_DELIVERIES`` on
  ``tether.webhooks.deliver.{subscription}``; each carries the webhook-id and the payload.
* Dead letters: KV bucket ``TETHER_WEBHOOK_DEAD``, key = webhook-id.

docs/protocol.md section 15 describes the HTTP API and the payload.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import secrets
from dataclasses import dataclass, field
from typing import Any

import orjson
from nats.aio.client import Client as NATS
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyDeletedError, KeyNotFoundError
from nats.js.kv import KeyValue

from shared import kvread, sealing, streams, subjects
from shared.errors import BadFrame
from shared.ids import check_id, new_id
from shared.sealing import Sealer
from shared.settings import Secret
from shared.wire import now_ms

APPROVAL_REQUESTED = "approval.requested"  # stored by Run.request_approval
EVENT_TYPES = ("run.completed", "run.failed", APPROVAL_REQUESTED)
SECRET_PREFIX = "whsec_"
NANOS = 1_000_000_000
JOB_MAX_AGE_SECONDS = 7 * 24 * 3600
DUPLICATE_WINDOW_SECONDS = 600


@dataclass(frozen=True, slots=True)
class Subscription:
    """Where to POST which events, signed with ``secret``; ``session`` / ``user`` filter."""

    id: str
    url: str
    secret: Secret
    events: tuple[str, ...]
    session: str | None = None
    user: str | None = None
    created: int = field(default_factory=now_ms)

    def matches(self, event_type: str, session: str, user: str | None) -> bool:
        if event_type not in self.events:
            return False
        if self.session is not None and self.session != session:
            return False
        return self.user is None or self.user == user

    def public(self, *, with_secret: bool = False) -> dict[str, Any]:
        """What the admin API returns (the secret only once, on create)."""
        body: dict[str, Any] = {
            "id": self.id,
            "url": self.url,
            "events": list(self.events),
            "filter": self.filter(),
            "created": self.created,
        }
        if with_secret:
            body["secret"] = self.secret.reveal()
        return body

    def filter(self) -> dict[str, str]:
        if self.session is not None:
            return {"session": self.session}
        if self.user is not None:
            return {"user": self.user}
        return {}

    @property
    def signable(self) -> bool:
        """False when the stored secret is sealed with a key this process does not have."""
        return bool(self.secret)

    def stored(self, sealer: Sealer | None = None) -> bytes:
        """The bucket's record: the secret sealed when there is a ``sealer``."""
        body = self.public(with_secret=True)
        if sealer is not None:
            body["secret"] = sealer.seal(self.secret.reveal(), self.id)
        return orjson.dumps(body)

    def key_bytes(self) -> bytes:
        """The HMAC key: the base64 part after ``whsec_``."""
        return base64.b64decode(self.secret.reveal().removeprefix(SECRET_PREFIX))


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def check_secret(value: object) -> str:
    if not isinstance(value, str) or not value.startswith(SECRET_PREFIX):
        raise BadFrame(f"field 'secret' must be a string starting with {SECRET_PREFIX!r}")
    try:
        key = base64.b64decode(value[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise BadFrame("field 'secret' must be 'whsec_' followed by base64") from None
    if not 24 <= len(key) <= 64:
        raise BadFrame(f"field 'secret' decodes to {len(key)} bytes; use 24 to 64")
    return value


def check_events(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise BadFrame(f"field 'events' must be a non-empty list of: {', '.join(EVENT_TYPES)}")
    for item in value:
        if item not in EVENT_TYPES:
            shown = str(item)[:40] if isinstance(item, str) else type(item).__name__
            raise BadFrame(f"unknown event type {shown!r}; use {', '.join(EVENT_TYPES)}")
    return tuple(dict.fromkeys(value))


def check_filter(value: object) -> tuple[str | None, str | None]:
    """``{}`` / absent (all), ``{"session": id}`` or ``{"user": id}``."""
    if value is None:
        return None, None
    if not isinstance(value, dict):
        raise BadFrame("field 'filter' must be an object: {}, {'session': id} or {'user': id}")
    unknown = sorted(set(value) - {"session", "user"})
    if unknown:
        raise BadFrame(f"filter has unknown field {unknown[0][:40]!r}; use 'session' or 'user'")
    if len(value) > 1:
        raise BadFrame("filter takes either 'session' or 'user', not both")
    if "session" in value:
        return check_id(value["session"], "filter session id"), None
    if "user" in value:
        return None, check_id(value["user"], "filter user id")
    return None, None


def parse_request(body: dict[str, Any], url: str) -> Subscription:
    """A new subscription from a validated request body (``url`` already checked)."""
    unknown = sorted(set(body) - {"url", "events", "filter", "secret"})
    if unknown:
        raise BadFrame(f"unknown field {unknown[0][:40]!r}; use url, events, filter, secret")
    if "events" not in body:
        raise BadFrame("missing field 'events'")
    events = check_events(body["events"])
    session, user = check_filter(body.get("filter"))
    secret = check_secret(body["secret"]) if body.get("secret") is not None else new_secret()
    return Subscription(new_id("wh_"), url, Secret(secret), events, session, user)


def decode(data: bytes, sealer: Sealer | None = None) -> Subscription | None:
    """A stored subscription; its secret opened with ``sealer`` when sealed (empty when it
    cannot be: no sealer, or none of its keys), None when the record is malformed."""
    try:
        raw = orjson.loads(data)
        session, user = raw["filter"].get("session"), raw["filter"].get("user")
        secret = str(raw["secret"])
        if sealing.is_sealed(secret):
            try:
                secret = sealer.open(secret, raw["id"]) if sealer is not None else ""
            except sealing.SealedSecretError:
                secret = ""
        return Subscription(
            id=raw["id"],
            url=raw["url"],
            secret=Secret(secret),
            events=tuple(raw["events"]),
            session=session,
            user=user,
            created=int(raw.get("created", 0)),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError):
        return None


# ---- storage -------------------------------------------------------------------------


async def bucket(nc: NATS, name: str, replicas: int = 1) -> KeyValue:
    """Open a KV bucket, creating it the first time."""
    js = nc.jetstream(timeout=5)
    try:
        return await js.key_value(name)
    except BucketNotFoundError:
        config = KeyValueConfig(
            bucket=name, history=1, storage=StorageType.FILE, replicas=replicas, direct=True
        )
        return await js.create_key_value(config)


async def ensure_deliveries(nc: NATS, replicas: int = 1) -> None:
    """Create the delivery work queue (or leave it as it is)."""
    config = {
        "name": subjects.DELIVERIES_STREAM,
        "description": "Tether webhook delivery jobs",
        "subjects": [f"{subjects.DELIVER_ROOT}.>"],
        "retention": "workqueue",
        "storage": "file",
        "num_replicas": replicas,
        "max_age": JOB_MAX_AGE_SECONDS * NANOS,
        "duplicate_window": DUPLICATE_WINDOW_SECONDS * NANOS,
    }
    await streams.ensure(nc, config, update=False)


class SubscriptionsView:
    """The stored subscriptions, kept current by reading only what changed in the bucket
    since the last call: each call costs one direct-get request (a 404) when nothing did,
    instead of a read of every subscription. Everything is read again every
    ``full_read_seconds`` (a recreated bucket starts its sequences again). Reads happen at
    call time, so a subscription stored before the call is always seen."""

    def __init__(self, nc: NATS, full_read_seconds: float = 300.0) -> None:
        self._raw: dict[str, bytes] = {}
        self._bucket = kvread.Follower(
            nc, subjects.WEBHOOKS_BUCKET, self._apply, self._raw.clear, full_read_seconds
        )
        self._sorted: list[Subscription] = []
        self._lock = asyncio.Lock()

    def _apply(self, key: str, value: bytes | None) -> None:
        if value is None:
            self._raw.pop(key, None)
        else:
            self._raw[key] = value

    async def current(self) -> list[Subscription]:
        """Every stored subscription, oldest first."""
        async with self._lock:
            if await self._bucket.refresh():
                found = (decode(v) for v in self._raw.values())
                self._sorted = sorted(
                    (s for s in found if s is not None), key=lambda s: (s.created, s.id)
                )
            return self._sorted


async def list_all(nc: NATS) -> list[Subscription]:
    """Every stored subscription, oldest first (one batched read)."""
    found = [decode(v) for v in (await kvread.read_all(nc, subjects.WEBHOOKS_BUCKET)).values()]
    return sorted((s for s in found if s is not None), key=lambda s: (s.created, s.id))


async def get(kv: KeyValue, key: str, sealer: Sealer | None = None) -> Subscription | None:
    try:
        entry = await kv.get(key)
    except (KeyNotFoundError, KeyDeletedError):
        return None
    return decode(entry.value, sealer) if entry.value else None


# ---- jobs and dead letters -----------------------------------------------------------


def webhook_id(subscription: str, session: str, seq: int) -> str:
    """The deterministic webhook-id of one event (``seq`` of ``session``'s stream: with
    partitioned streams a sequence alone names no event) for one subscription."""
    digest = hashlib.sha256(f"{subscription}:{session}:{seq}".encode()).hexdigest()[:32]
    return f"msg_{digest}"


async def publish_job(nc: NATS, job: dict[str, Any], dedupe: str) -> None:
    """Store one delivery job (``dedupe`` is its Nats-Msg-Id)."""
    await nc.jetstream(timeout=5).publish(
        subjects.delivery_subject(str(job["subscription"])),
        orjson.dumps(job),
        headers={subjects.MSG_ID: dedupe},
    )


async def dead_letters(nc: NATS) -> list[dict[str, Any]]:
    """Every dead letter record, oldest first."""
    values = await kvread.read_all(nc, subjects.DEAD_LETTERS_BUCKET)
    records = [orjson.loads(v) for v in values.values()]
    return sorted(records, key=lambda r: int(r.get("failed_at", 0)))


async def replay(nc: NATS, kv: KeyValue, wid: str) -> dict[str, Any] | None:
    """Put a dead letter's job back on the queue (same webhook-id) and remove the record."""
    try:
        entry = await kv.get(check_id(wid, "webhook id"))
    except (KeyNotFoundError, KeyDeletedError):
        return None
    if not entry.value:
        return None
    record: dict[str, Any] = orjson.loads(entry.value)
    job = record["job"]
    # A new Nats-Msg-Id: the original one may still be in the stream's duplicate window.
    await publish_job(nc, job, f"{wid}:replay:{now_ms()}")
    await kv.delete(wid)
    return record

"""Presence: who is in a session, in a JetStream KV bucket.

One key per connection: ``{session}.{role}.{participant}.{connection}``. A value is a JSON
object: ``state`` (users ``online``; agents ``thinking``, ``streaming``, ``idle``,
``offline``), ``device``, ``since`` (ms), and the NATS connection that owns it
(``server_id``, ``client_id``). Owners refresh their keys; a per-key TTL is the backstop.
A delete carries ``Tether-Reason`` (``closed`` or ``crashed``); a TTL expiry arrives as the
server's delete marker (reason ``expired``). The bucket republishes every change to
``tether.presence.{key}``: that is the live feed gateways and agents follow.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass, replace
from typing import Any

import orjson
import structlog
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.js.errors import APIError

from shared import directget, streams, subjects
from shared.errors import InvalidId, TetherError
from shared.ids import check_id
from shared.wire import now_ms

log = structlog.get_logger(__name__)

NANOS = 1_000_000_000
DEFAULT_TTL_SECONDS = 60
MARKER_TTL_SECONDS = 60
REFRESH_BATCH = 100  # puts in flight per refresh step: 10,000 at once stalled a gateway ~1 s
USER_STATES = ("online",)
AGENT_STATES = ("thinking", "streaming", "idle", "offline")
REASON = "Tether-Reason"
OPERATION = "KV-Operation"
MARKER = "Nats-Marker-Reason"
EXPECTED_LAST = "Nats-Expected-Last-Subject-Sequence"


def bucket_config(replicas: int = 1) -> dict[str, Any]:
    """The presence bucket (a KV stream) with per-key TTL, limit markers and republish."""
    return {
        "name": subjects.PRESENCE_STREAM,
        "description": "Tether presence: one key per connection",
        "subjects": [f"{subjects.PRESENCE_KEY_ROOT}.>"],
        "retention": "limits",
        "storage": "file",
        "num_replicas": replicas,
        "max_msgs_per_subject": 1,
        "discard": "new",
        "allow_rollup_hdrs": True,
        "deny_delete": True,
        "allow_direct": True,
        "allow_msg_ttl": True,
        "subject_delete_marker_ttl": MARKER_TTL_SECONDS * NANOS,
        "republish": {
            "src": f"{subjects.PRESENCE_KEY_ROOT}.>",
            "dest": f"{subjects.PRESENCE_LIVE_ROOT}.>",
        },
    }


async def ensure_bucket(nc: NATS, replicas: int = 1) -> None:
    """Create the presence bucket, or update it to the current configuration (nothing but
    an info request when it is current, so a user without stream rights can call it)."""
    await streams.ensure(nc, bucket_config(replicas))


def owner_of(nc: NATS) -> tuple[str, int]:
    """The (server id, client id) of a connection: what the server's events name."""
    info = getattr(nc, "_server_info", None) or {}  # nats-py keeps INFO here
    return str(info.get("server_id", "")), int(nc.client_id or 0)


@dataclass(frozen=True, slots=True)
class Entry:
    """One connection present in a session."""

    session: str
    role: str
    participant: str
    connection: str
    state: str
    device: str = ""
    since: int = 0
    server_id: str = ""
    client_id: int = 0

    @property
    def key(self) -> str:
        return subjects.presence_key(self.session, self.role, self.participant, self.connection)

    def public(self) -> dict[str, Any]:
        """What devices see (no NATS connection details)."""
        return {
            "role": self.role,
            "participant": self.participant,
            "connection": self.connection,
            "state": self.state,
            "device": self.device,
            "since": self.since,
        }


def parse_entry(key: str, data: bytes) -> Entry | None:
    """An entry from its key and stored value; None (and a log line) when malformed."""
    parts = key.split(".")
    try:
        if len(parts) != 4 or parts[1] not in subjects.ROLES:
            raise ValueError("key is not session.role.participant.connection")
        for part in (parts[0], parts[2], parts[3]):
            check_id(part)
        value = orjson.loads(data)
        if not isinstance(value, dict) or not isinstance(value.get("state"), str):
            raise ValueError("value is not an object with a string state")
        return Entry(
            session=parts[0],
            role=parts[1],
            participant=parts[2],
            connection=parts[3],
            state=value["state"][:32],
            device=str(value.get("device", ""))[:128],
            since=int(value.get("since", 0)),
            server_id=str(value.get("server_id", "")),
            client_id=int(value.get("client_id", 0)),
        )
    except (ValueError, TypeError, InvalidId, orjson.JSONDecodeError) as exc:
        log.warning("presence_value_malformed", key=key[:200], error=str(exc)[:200])
        return None


@dataclass(frozen=True, slots=True)
class Change:
    """One change of the bucket, as read from the live feed or a snapshot."""

    key: str
    seq: int
    entry: Entry | None  # None: the key was removed
    reason: str = ""


def parse_change(subject: str, headers: dict[str, str] | None, data: bytes) -> Change | None:
    """A change from a republished (``tether.presence.*``) or stored (``$KV.*``) message."""
    headers = headers or {}
    stored = headers.get(subjects.STREAM_SUBJECT, subject)
    prefix = f"{subjects.PRESENCE_KEY_ROOT}."
    if not stored.startswith(prefix):
        return None
    key = stored[len(prefix) :]
    try:
        seq = int(headers.get(subjects.SEQUENCE, "0"))
    except ValueError:
        return None
    if headers.get(MARKER):
        return Change(key, seq, None, "expired")
    if headers.get(OPERATION) in ("DEL", "PURGE"):
        return Change(key, seq, None, headers.get(REASON, "closed"))
    entry = parse_entry(key, data)
    return Change(key, seq, entry) if entry is not None else None


def stored_value(entry: Entry) -> dict[str, Any]:
    """The bucket value of an entry (its key holds the rest)."""
    return {
        k: v
        for k, v in asdict(entry).items()
        if k in ("state", "device", "since", "server_id", "client_id")
    }


async def put(nc: NATS, entry: Entry, ttl_seconds: int = DEFAULT_TTL_SECONDS) -> int:
    """Store (or refresh) an entry; returns its sequence."""
    js = nc.jetstream(timeout=5)
    ack = await js.publish(
        subjects.presence_subject(entry.key),
        orjson.dumps(stored_value(entry)),
        headers={subjects.TTL: f"{ttl_seconds}s"},
    )
    return int(ack.seq)


async def remove(nc: NATS, key: str, reason: str, *, expected_seq: int | None = None) -> bool:
    """Delete a key with a reason; with ``expected_seq`` only if it is still that version.

    Returns False when another writer changed or removed the key first (so two presence
    service instances never both remove it, and never double an event).
    """
    headers = {OPERATION: "DEL", REASON: reason}
    if expected_seq is not None:
        headers[EXPECTED_LAST] = str(expected_seq)
    try:
        await nc.jetstream(timeout=5).publish(subjects.presence_subject(key), b"", headers=headers)
    except APIError as exc:
        if exc.err_code == 10071:  # wrong last sequence
            return False
        raise
    return True


async def snapshot(nc: NATS, filter_subject: str) -> dict[str, Change]:
    """The current entries under a filter, keyed by bucket key.

    The bucket keeps one message per key, so reading every message under the filter (batched
    direct gets, no consumer) gives exactly the current values and removal markers.
    """
    result: dict[str, Change] = {}

    def handle(seq: int, headers: dict[str, str], data: bytes) -> bool:
        change = parse_change(headers.get(subjects.STREAM_SUBJECT, ""), headers, data)
        if change is not None and change.entry is not None:
            result[change.key] = change
        return True

    await directget.scan(nc, subjects.PRESENCE_STREAM, filter_subject, 0, handle, batch=1000)
    return result


async def ask(nc: NATS, session: str, timeout: float = 2.0) -> dict[str, Change]:
    """The current entries of one session, from the presence service (request/reply on
    ``tether.ask.presence.{session}``): for agents whose NATS user may not read the bucket.
    With no presence service running, read the bucket directly (``snapshot``)."""
    try:
        reply = await nc.request(subjects.ask_presence(session), b"", timeout=timeout)
    except NoRespondersError:
        return await snapshot(nc, subjects.presence_filter(session))
    result: dict[str, Change] = {}
    try:
        for item in orjson.loads(reply.data)["entries"]:
            entry = parse_entry(str(item["key"]), orjson.dumps(item["value"]))
            if entry is not None:
                result[entry.key] = Change(entry.key, int(item["seq"]), entry)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise TetherError(f"malformed presence answer: {exc}") from exc
    return result


def answer(current: dict[str, Change]) -> bytes:
    """The presence service's reply to ``ask``: every entry with its stored value."""
    entries = []
    for change in current.values():
        if change.entry is not None:
            value = stored_value(change.entry)
            entries.append({"key": change.key, "seq": change.seq, "value": value})
    return orjson.dumps({"entries": entries})


class Writer:
    """The entries one process owns: put, refreshed before their TTL, re-owned after a
    reconnect (new client id), removed on close."""

    def __init__(self, nc: NATS, ttl_seconds: int = DEFAULT_TTL_SECONDS) -> None:
        self.nc = nc
        self.ttl = ttl_seconds
        self.entries: dict[str, Entry] = {}
        self._refresher: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._refresher = asyncio.create_task(self._refresh_loop())

    def entry(
        self,
        session: str,
        role: str,
        participant: str,
        connection: str,
        state: str,
        device: str = "",
    ) -> Entry:
        server_id, client_id = owner_of(self.nc)
        return Entry(
            session,
            role,
            participant,
            connection,
            state,
            device[:128],
            now_ms(),
            server_id,
            client_id,
        )

    async def set(self, entry: Entry) -> Change | None:
        """Add or change an entry (a no-op when nothing visible changed); the change as
        stored (None: nothing stored)."""
        current = self.entries.get(entry.key)
        if current is not None:
            entry = replace(entry, since=current.since)
            if current == entry:
                return None
        self.entries[entry.key] = entry
        seq = await self._put(entry)
        return Change(entry.key, seq, entry) if seq else None

    async def remove(self, key: str, reason: str = "closed") -> None:
        if self.entries.pop(key, None) is not None:
            try:
                await remove(self.nc, key, reason)
            except Exception as exc:  # noqa: BLE001 - the TTL backstop removes it later
                log.warning("presence_remove_failed", key=key, error=repr(exc))

    async def _put(self, entry: Entry) -> int:
        """Store an entry; its sequence (0 when the put failed)."""
        try:
            return await put(self.nc, entry, self.ttl)
        except Exception as exc:  # noqa: BLE001 - refreshed later; presence is best effort
            log.warning("presence_put_failed", key=entry.key, error=repr(exc))
            return 0

    async def reown(self) -> None:
        """After a reconnect: the same entries under the new client id, before the presence
        service's grace period after the old connection's DISCONNECT ends."""
        server_id, client_id = owner_of(self.nc)
        for key, entry in list(self.entries.items()):
            self.entries[key] = replace(entry, server_id=server_id, client_id=client_id)
        await asyncio.gather(*(self._put(e) for e in list(self.entries.values())))

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            await self._refresh_all()

    async def _refresh_all(self) -> None:
        """Put every entry again, ``REFRESH_BATCH`` at a time (all at once, a gateway with
        10,000 connections stalled its event loop for a second every refresh), skipping an
        entry removed or replaced meanwhile (its key would come back until the TTL)."""
        entries = list(self.entries.values())
        for start in range(0, len(entries), REFRESH_BATCH):
            batch = [e for e in entries[start : start + REFRESH_BATCH] if self._current(e)]
            await asyncio.gather(*(self._put(e) for e in batch))

    def _current(self, entry: Entry) -> bool:
        return self.entries.get(entry.key) is entry

    async def close(self) -> None:
        """Remove every entry (reason ``closed``) and stop refreshing."""
        if self._refresher is not None:
            self._refresher.cancel()
        await asyncio.gather(*(self.remove(key) for key in list(self.entries)))

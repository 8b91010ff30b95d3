"""The session log streams: their configuration, created or updated idempotently at start-up,
and the start-up check that the server routes sessions to the partitions we read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError

from shared import partitions, subjects
from shared.errors import ConfigError, TetherError, Unavailable
from shared.settings import LogSettings

log = structlog.get_logger(__name__)

NANOS = 1_000_000_000
API_TIMEOUT = 5.0
STREAM_NOT_FOUND = 10059
STREAM_EXISTS = 10058
EXPECTED_STREAM = "Nats-Expected-Stream"
PROBE_STREAM = "tether.no-stream"  # not a valid stream name: the probe is always refused


def stream_config(settings: LogSettings, index: int = 0) -> dict[str, Any]:
    """The JetStream configuration of session stream ``index`` (the JSON the server's API
    takes). Partitioned, it stores ``tether.p.{index}.s.>`` under the original subject."""
    n = settings.partitions
    config: dict[str, Any] = {
        "name": partitions.stream_name(settings.stream, index, n),
        "description": "Tether session log: one subject per message and per run",
        "subjects": [partitions.stored_subjects(index, n)],
        "retention": "limits",
        "storage": "file",
        "num_replicas": settings.replicas,
        "discard": "old",
        "max_age": int(settings.max_age_seconds * NANOS),
        "max_bytes": settings.max_bytes,
        "max_msgs": -1,
        "max_msg_size": settings.max_msg_size,
        "max_msgs_per_subject": settings.max_msgs_per_subject,
        "duplicate_window": int(settings.duplicate_window_seconds * NANOS),
        "allow_direct": True,
        "allow_rollup_hdrs": True,
        "allow_msg_ttl": True,
        "deny_delete": False,
        "deny_purge": False,
        "republish": {"src": subjects.REPUBLISH_SOURCE, "dest": subjects.REPUBLISH_DEST},
        "metadata": {"tether_layout": "1", "tether_partitions": str(n)},
    }
    if n > 1:
        source = partitions.stored_subjects(index, n)
        config["subject_transform"] = {"src": source, "dest": subjects.STREAM_SUBJECTS}
    return config


@dataclass(frozen=True, slots=True)
class StreamState:
    """What a reader needs of the stream: its epoch and its sequence range."""

    epoch: str
    first_seq: int
    last_seq: int


async def api(
    nc: NATS,
    subject: str,
    payload: dict[str, Any] | None = None,
    *,
    timeout: float = API_TIMEOUT,
) -> dict[str, Any]:
    """One JetStream API request; its JSON reply (which may hold an ``error``)."""
    body = orjson.dumps(payload) if payload is not None else b""
    try:
        reply = await nc.request(subject, body, timeout=timeout)
    except (TimeoutError, NatsError) as exc:  # timeout, no responders, connection closed
        raise Unavailable(f"JetStream did not answer {subject} ({type(exc).__name__})") from None
    data: dict[str, Any] = orjson.loads(reply.data)
    return data


async def ensure(
    nc: NATS, config: dict[str, Any], *, update: bool = True
) -> tuple[str, dict[str, Any]]:
    """Create the stream ``config`` names, or update it when the server's config lacks one
    of our values (``update=False``: leave an existing stream as it is). Only an info
    request when it is current, so a user without stream rights can call it.

    Returns (action, stream info): ``stream_created``, ``stream_updated`` or
    ``stream_unchanged``.
    """
    name = config["name"]
    info = await api(nc, f"$JS.API.STREAM.INFO.{name}")
    if "error" in info:
        if info["error"].get("err_code") != STREAM_NOT_FOUND:
            raise TetherError(f"stream {name}: info failed: {info['error'].get('description')}")
        info = await api(nc, f"$JS.API.STREAM.CREATE.{name}", config)
        action = "stream_created"
        if info.get("error", {}).get("err_code") == STREAM_EXISTS:  # a racing process won
            info = await api(nc, f"$JS.API.STREAM.INFO.{name}")
            action = "stream_unchanged"
    elif not update or config_matches(info["config"], config):
        action = "stream_unchanged"
    else:
        info = await api(nc, f"$JS.API.STREAM.UPDATE.{name}", config)
        action = "stream_updated"
    if "error" in info:
        raise TetherError(
            f"could not create or update stream {name}: {info['error'].get('description')}"
        )
    return action, info


async def ensure_stream(nc: NATS, settings: LogSettings, *, verify: bool = True) -> None:
    """Create every session stream, or update it to the current configuration. With
    ``verify`` (a user that may publish run events), check the partition routing before
    (a mismatch with existing streams stops us before we touch them) and after. Newly
    created partition streams in a cluster get their leaders spread (shared/leaders.py)."""
    if verify:
        await verify_partitions(nc, settings, missing_ok=True)
    created = False
    for index, name in enumerate(settings.streams):
        action, _ = await ensure(nc, stream_config(settings, index))
        log.info(action, stream=name, replicas=settings.replicas)
        created |= action == "stream_created"
    if created and settings.partitions > 1 and settings.replicas > 1:
        from shared import leaders  # noqa: PLC0415 - leaders builds on this module

        placed = await leaders.spread_new(nc, settings.streams, settings.replicas)
        log.info("stream_leaders", leaders={p.stream: p.leader for p in placed})
    if verify:
        await verify_partitions(nc, settings)


async def verify_partitions(nc: NATS, settings: LogSettings, *, missing_ok: bool = False) -> None:
    """Check that a publish to each partition's sessions lands in the stream readers use;
    ConfigError when it does not (or, unless ``missing_ok``, when no stream takes it).

    The server's account mapping (``partition(N,1)``) and ``TETHER_STREAM_PARTITIONS`` are
    configured apart; if they disagree, sessions would be stored where nobody reads them.
    Each probe is a publish that JetStream refuses (``Nats-Expected-Stream`` names no
    stream), so nothing is stored, yet the refusal names the stream that received it.
    """
    n = settings.partitions
    mismatch = f"the NATS account's subject mapping does not match TETHER_STREAM_PARTITIONS={n}"
    for index, wanted in enumerate(settings.streams):
        session = partitions.probe_session(index, n)
        probe = subjects.run_events(session, "probe")
        try:
            reply = await nc.request(
                probe, b"", timeout=API_TIMEOUT, headers={EXPECTED_STREAM: PROBE_STREAM}
            )
        except NoRespondersError:
            if missing_ok:
                continue
            raise ConfigError(
                f"no session stream stores {probe}: {mismatch} (docs/deploy.md)"
            ) from None
        except (TimeoutError, NatsError) as exc:
            raise Unavailable(f"JetStream did not answer {probe} ({type(exc).__name__})") from None
        got = orjson.loads(reply.data).get("stream")
        if got != wanted:
            raise ConfigError(
                f"session {session} is stored in stream {got!r}, not {wanted!r}: {mismatch} "
                "(docs/deploy.md)"
            )


def config_matches(current: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """True when the server's config already has every value we set (it adds its own)."""
    for key, value in wanted.items():
        if key == "metadata":
            have = current.get("metadata") or {}
            if any(have.get(k) != v for k, v in value.items()):
                return False
        elif current.get(key) != value:
            return False
    return True


async def stream_state(nc: NATS, stream: str) -> StreamState:
    """The stream's epoch and range; Unavailable (503 / 1011) when JetStream cannot say."""
    info = await api(nc, f"$JS.API.STREAM.INFO.{stream}")
    if "error" in info:
        raise Unavailable(f"stream {stream}: {info['error'].get('description')}")
    return _state(info)


def _state(info: dict[str, Any]) -> StreamState:
    state = info["state"]
    return StreamState(
        epoch=str(info["created"]),
        first_seq=int(state["first_seq"]),
        last_seq=int(state["last_seq"]),
    )

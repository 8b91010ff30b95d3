"""The session log stream: its configuration, created or updated idempotently at start-up."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError

from shared import subjects
from shared.errors import TetherError, Unavailable
from shared.settings import LogSettings

log = structlog.get_logger(__name__)

NANOS = 1_000_000_000
API_TIMEOUT = 5.0
STREAM_NOT_FOUND = 10059
STREAM_EXISTS = 10058


def stream_config(settings: LogSettings) -> dict[str, Any]:
    """The JetStream configuration of the session log (the JSON the server's API takes)."""
    return {
        "name": settings.stream,
        "description": "Tether session log: one subject per message and per run",
        "subjects": [subjects.STREAM_SUBJECTS],
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
        "metadata": {"tether_layout": "1"},
    }


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


async def ensure_stream(nc: NATS, settings: LogSettings) -> StreamState:
    """Create the session stream, or update it to the current configuration."""
    action, info = await ensure(nc, stream_config(settings))
    log.info(action, stream=settings.stream, replicas=settings.replicas)
    return _state(info)


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

"""The wire format: the JSON envelope stored in the session log and the gateway's frames.

docs/protocol.md is the public description of everything here; keep the two in step.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

from shared.errors import BadFrame

PROTOCOL_VERSION: Final = 1
ENVELOPE_VERSION: Final = 1

# Event types stored in the session log.
MESSAGE_CREATED: Final = "message.created"  # a whole message in one event (user messages)
MESSAGE_START: Final = "message.start"
MESSAGE_DELTA: Final = "message.delta"
MESSAGE_COMPLETE: Final = "message.complete"  # carries the full text; rolls the subject up
MESSAGE_RESET: Final = "message.reset"  # replace the accumulated text with ``text``
MESSAGE_EDIT: Final = "message.edit"  # the full new message; rolls the subject up
MESSAGE_DELETE: Final = "message.delete"  # tombstone; rolls the subject up
RUN_STARTED: Final = "run.started"
RUN_PROGRESS: Final = "run.progress"
RUN_COMPLETED: Final = "run.completed"
RUN_FAILED: Final = "run.failed"
RUN_CANCELLED: Final = "run.cancelled"
# Control signals from devices, stored on ``tether.s.{session}.c.{control}``.
CONTROL_CANCEL: Final = "control.cancel"
CONTROL_STEER: Final = "control.steer"
CONTROL_TYPES: Final = frozenset({CONTROL_CANCEL, CONTROL_STEER})
RUN_TERMINAL_TYPES: Final = frozenset({"run.completed", "run.failed", "run.cancelled"})
# Human in the loop, stored on the run's subject ``tether.s.{session}.r.{run}`` (§17).
APPROVAL_REQUESTED: Final = "approval.requested"  # by the agent: prompt and options
APPROVAL_DECIDED: Final = "approval.decided"  # by the gateway: the first valid answer
APPROVAL_EXPIRED: Final = "approval.expired"  # by the agent when nobody answered in time
APPROVAL_OUTCOME_TYPES: Final = frozenset({APPROVAL_DECIDED, APPROVAL_EXPIRED})
# A streaming message's text so far: produced by the gateway's replay compaction, and
# stored by agents as a checkpoint (with Nats-Rollup: sub) every N chunks.
MESSAGE_SNAPSHOT: Final = "message.snapshot"

MESSAGE_TYPES: Final = frozenset(
    {
        MESSAGE_SNAPSHOT,
        MESSAGE_CREATED,
        MESSAGE_START,
        MESSAGE_DELTA,
        MESSAGE_COMPLETE,
        MESSAGE_RESET,
        MESSAGE_EDIT,
        MESSAGE_DELETE,
    }
)
RUN_TYPES: Final = frozenset({RUN_STARTED, RUN_PROGRESS, RUN_COMPLETED, RUN_FAILED, RUN_CANCELLED})
ROLLUP_TYPES: Final = frozenset({MESSAGE_COMPLETE, MESSAGE_EDIT, MESSAGE_DELETE})
FINAL_MESSAGE_TYPES: Final = frozenset({MESSAGE_CREATED, MESSAGE_COMPLETE, MESSAGE_EDIT})

Event = dict[str, Any]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)


def decode_event(data: bytes) -> Event | None:
    """Decode a stored event; None when it is not a JSON object with a string ``type``.

    Unknown types are returned as they are (forward compatibility): readers skip what they
    do not understand instead of failing.
    """
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        return None
    return value


def msg_id(session: str, kind: str, key: str, part: str) -> str:
    """The deterministic ``Nats-Msg-Id`` for one publish: ``{session}:{kind}:{key}:{part}``.

    ``kind`` is the subject kind (``u``, ``a``, ``r`` or ``c``), so a user message and an agent
    message that happen to share an id never dedupe against each other.
    """
    return f"{session}:{kind}:{key}:{part}"


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One event read from the session log, with its stream sequence and kind (u/a/r)."""

    seq: int
    kind: str
    key: str
    event: Event


# ---- gateway frames ------------------------------------------------------------------


def event_frame(seq: int, event: Mapping[str, Any]) -> bytes:
    return orjson.dumps({"type": "event", "seq": seq, "event": event})


def event_frame_raw(seq: int, data: bytes) -> bytes:
    """The same frame spliced around stored bytes that ``decode_event`` already accepted
    (saves re-serialising every live event; the bytes are a valid JSON object)."""
    return b'{"type":"event","seq":%d,"event":%s}' % (seq, data.strip())


def error_frame(code: str, message: str, **extra: Any) -> bytes:
    return orjson.dumps({"type": "error", "code": code, "message": message, **extra})


def parse_json_object(data: str | bytes, what: str = "frame") -> dict[str, Any]:
    """Parse a JSON object; raise BadFrame with a precise message when it is not one."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise BadFrame(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadFrame(f"{what} must be a JSON object, not {type(value).__name__}")
    return value


def parse_client_frame(data: str | bytes) -> dict[str, Any]:
    """Parse a client frame: a JSON object with a string ``type``."""
    value = parse_json_object(data)
    kind = value.get("type")
    if not isinstance(kind, str):
        raise BadFrame("frame has no string 'type' field")
    return value


def require_str(frame: Mapping[str, Any], name: str, *, max_len: int | None = None) -> str:
    value = frame.get(name)
    if not isinstance(value, str):
        raise BadFrame(f"field {name!r} must be a string")
    if max_len is not None and len(value) > max_len:
        raise BadFrame(f"field {name!r} is longer than {max_len} characters")
    return value

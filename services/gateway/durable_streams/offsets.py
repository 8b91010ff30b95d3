"""Offsets, cursors and the small header grammars of the Durable Streams protocol.

An offset is ``{seq:016d}_{0:016d}``: the JetStream sequence of the last message a reader has
(0 for "nothing yet"), fixed width so offsets sort lexicographically, then a reserved part
(always zero here; the suite's own literals use this shape). ``-1`` and ``now`` are the
protocol's sentinels and are never generated.
"""

from __future__ import annotations

import random
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from shared.errors import ClientError

BEGINNING = "-1"
NOW = "now"
_OFFSET_RE = re.compile(r"(\d{16})_(\d{16})")
_UINT_RE = re.compile(r"0|[1-9][0-9]*")
_DIGITS_RE = re.compile(r"[0-9]+")
MAX_SAFE_INT = 2**53 - 1

# Cursors: 20-second intervals counted from 2024-10-09T00:00:00Z (protocol §8.1).
CURSOR_EPOCH = 1728432000.0
CURSOR_INTERVAL = 20.0


class BadRequest(ClientError):
    """A malformed Durable Streams request (400)."""

    code = "bad_request"
    http_status = 400


def encode(seq: int) -> str:
    """The offset after the message with sequence ``seq`` (0: the beginning)."""
    return f"{seq:016d}_{0:016d}"


ZERO = encode(0)


@dataclass(frozen=True, slots=True)
class Position:
    """A parsed ``offset`` query value: a sequence, or the ``now`` sentinel."""

    seq: int
    now: bool = False


def parse(raw: str) -> Position:
    """Parse an offset (``-1``, ``now`` or one we generated); BadRequest otherwise."""
    if raw == BEGINNING:
        return Position(0)
    if raw == NOW:
        return Position(0, now=True)
    match = _OFFSET_RE.fullmatch(raw)
    if match is None:
        raise BadRequest(f"malformed offset {raw[:64]!r}")
    return Position(int(match.group(1)))


def parse_seq(raw: str) -> int:
    """A concrete offset (no sentinels except ``-1``) as a sequence."""
    position = parse(raw)
    if position.now:
        raise BadRequest("offset 'now' is not allowed here")
    return position.seq


def cursor(client_cursor: str | None, now: float | None = None) -> str:
    """The next ``Stream-Cursor``: the current interval, always beyond the client's own."""
    interval = int(((now if now is not None else time.time()) - CURSOR_EPOCH) // CURSOR_INTERVAL)
    if client_cursor is not None and _DIGITS_RE.fullmatch(client_cursor):
        echoed = int(client_cursor)
        if echoed >= interval:
            # Jitter of 1-3600 s, in whole intervals (at least one).
            return str(echoed + max(1, int(random.randint(1, 3600) // CURSOR_INTERVAL)))  # noqa: S311
    return str(interval)


def parse_ttl(raw: str, name: str = "Stream-TTL") -> int:
    """``Stream-TTL`` (or a sub-offset): a non-negative decimal integer without sign,
    leading zeros, decimal point or exponent."""
    if not _UINT_RE.fullmatch(raw):
        raise BadRequest(f"{name} must be a non-negative integer, not {raw[:32]!r}")
    return int(raw)


def parse_expires_at(raw: str) -> float:
    """``Stream-Expires-At``: an RFC 3339 timestamp with a time zone, as epoch seconds."""
    try:
        parsed = datetime.fromisoformat(raw.strip())
    except ValueError:
        raise BadRequest(f"Stream-Expires-At is not an RFC 3339 timestamp: {raw[:64]!r}") from None
    if parsed.tzinfo is None:
        raise BadRequest("Stream-Expires-At needs a time zone (Z or +hh:mm)")
    return parsed.timestamp()


def format_expires_at(epoch: float) -> str:
    stamp = datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def parse_uint(name: str, raw: str) -> int:
    """A producer epoch or sequence: a decimal integer in [0, 2^53 - 1]."""
    if not _DIGITS_RE.fullmatch(raw):
        raise BadRequest(f"{name} must be a non-negative integer, not {raw[:32]!r}")
    value = int(raw)
    if value > MAX_SAFE_INT:
        raise BadRequest(f"{name} is above 2^53 - 1")
    return value


def media_type(content_type: str) -> str:
    """The comparable part of a Content-Type: the type/subtype, lower case."""
    return content_type.split(";", 1)[0].strip().lower()


def is_json(content_type: str) -> bool:
    return media_type(content_type) == "application/json"


def is_text(content_type: str) -> bool:
    """Whether SSE can carry the stream as text (else it is base64-encoded)."""
    kind = media_type(content_type)
    return kind.startswith("text/") or kind == "application/json"

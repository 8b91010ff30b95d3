"""Rules for session, message, run and participant ids.

An id becomes one token of a NATS subject, so the rules keep NATS wildcards (``*``,
``>``), the token separator (``.``) and whitespace out for good. See docs/protocol.md.
"""

from __future__ import annotations

import re
import secrets

from shared.errors import InvalidId

MAX_ID_LENGTH = 128
_ID_RE = re.compile(r"[A-Za-z0-9_\-]{1,128}")
_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def check_id(value: object, what: str = "session id") -> str:
    """Return ``value`` if it is a valid id, else raise InvalidId saying why."""
    if not isinstance(value, str):
        raise InvalidId(f"{what} must be a string, not {type(value).__name__}")
    if not value:
        raise InvalidId(f"{what} is empty")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidId(f"{what} is {len(value)} characters long; the maximum is {MAX_ID_LENGTH}")
    if _ID_RE.fullmatch(value) is None:
        bad = next(ch for ch in value if _ID_RE.fullmatch(ch) is None)
        raise InvalidId(
            f"{what} {value[:40]!r} contains {bad!r}; allowed are A-Z, a-z, 0-9, '_' and '-'"
        )
    return value


def new_id(prefix: str = "") -> str:
    """A random id (128 bits of entropy) that satisfies the id rules."""
    body = "".join(secrets.choice(_ALPHABET) for _ in range(25))
    return f"{prefix}{body}"

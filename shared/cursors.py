"""Device read positions: per (session, participant) the highest sequence delivered to
any of that participant's devices, in the KV bucket ``TETHER_CURSORS``.

Writers (gateways) only ever raise a value, with compare-and-set, so two devices of one
participant at different positions never move it back.
"""

from __future__ import annotations

from nats.js.errors import KeyDeletedError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from shared import subjects

ATTEMPTS = 3


async def read(kv: KeyValue, session: str, participant: str) -> int:
    """The participant's read position in the session (0 when none recorded)."""
    try:
        entry = await kv.get(subjects.cursor_key(session, participant))
    except (KeyNotFoundError, KeyDeletedError):
        return 0
    try:
        return int(entry.value or b"0")
    except ValueError:
        return 0


async def advance(
    kv: KeyValue, session: str, participant: str, seq: int, *, revision: int | None = None
) -> tuple[int, int | None]:
    """Raise the position to ``seq`` unless it is already higher.

    ``revision`` is the key's revision as this writer last left it: the update is tried
    with it first, which saves a read in the common case (one writer per participant).
    Returns the stored value and its revision (None when not known).
    """
    key = subjects.cursor_key(session, participant)
    value = str(seq).encode()
    for _ in range(ATTEMPTS):
        if revision is not None:
            try:
                return seq, await kv.update(key, value, last=revision)
            except KeyWrongLastSequenceError:
                revision = None  # someone else wrote: read, then decide
        try:
            entry = await kv.get(key)
        except (KeyNotFoundError, KeyDeletedError):
            try:
                return seq, await kv.create(key, value)
            except KeyWrongLastSequenceError:
                continue
        current = int(entry.value or b"0")
        if current >= seq:
            return current, entry.revision
        revision = entry.revision
    return seq, None

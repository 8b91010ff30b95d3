"""Who is in one session, as one gateway's hub sees it: a snapshot of the presence bucket
plus the bucket's live changes, turned into ``presence`` frames for devices."""

from __future__ import annotations

from typing import Any

import orjson

from shared.presence import Change


class Roster:
    """The members of a session; every change is applied once, in bucket order."""

    def __init__(self) -> None:
        self.members: dict[str, Change] = {}
        self._seen: dict[str, int] = {}  # latest bucket sequence per key, removals included

    def load(self, snapshot: dict[str, Change]) -> None:
        for change in snapshot.values():
            self.apply(change)

    def apply(self, change: Change) -> bytes | None:
        """Apply a change; returns the ``presence`` frame to fan out, or None if nothing
        visible changed (an older change, or a refresh that only renewed the TTL)."""
        if self._seen.get(change.key, 0) >= change.seq:
            return None
        self._seen[change.key] = change.seq
        before = self.members.get(change.key)
        if change.entry is None:
            if before is None or before.entry is None:
                return None
            del self.members[change.key]
            return frame("leave", before.entry.public(), reason=change.reason)
        self.members[change.key] = change
        if before is None or before.entry is None:
            return frame("join", change.entry.public())
        if before.entry.public() == change.entry.public():
            return None
        return frame("update", change.entry.public())

    def reload(self, snapshot: dict[str, Change]) -> list[bytes]:
        """Bring the roster in line with a fresh snapshot (after live changes may have been
        missed); returns the frames for what changed, leaves included."""
        frames = []
        for key in [k for k in self.members if k not in snapshot]:
            frames.append(self.apply(Change(key, self.members[key].seq + 1, None, "unknown")))
        for change in snapshot.values():
            frames.append(self.apply(change))
        return [f for f in frames if f is not None]

    def snapshot(self) -> list[dict[str, Any]]:
        return [c.entry.public() for c in self.members.values() if c.entry is not None]


def frame(action: str, member: dict[str, Any], **extra: Any) -> bytes:
    return orjson.dumps({"type": "presence", "action": action, "member": member, **extra})

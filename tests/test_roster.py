"""The gateway's per-session roster: presence changes applied once, in bucket order."""

from __future__ import annotations

import orjson

from services.gateway.roster import Roster
from shared.presence import Change, Entry


def change(seq: int, connection: str, state: str | None = "online") -> Change:
    key = f"s.user.alice.{connection}"
    if state is None:
        return Change(key, seq, None, "closed")
    return Change(key, seq, Entry("s", "user", "alice", connection, state))


def test_join_update_leave_frames() -> None:
    """A new key joins, a visible change updates, a removal leaves; a refresh sends nothing."""
    roster = Roster()
    assert orjson.loads(roster.apply(change(1, "c1")) or b"")["action"] == "join"
    assert roster.apply(change(2, "c1")) is None  # same state: a TTL refresh
    assert orjson.loads(roster.apply(change(3, "c1", "away")) or b"")["action"] == "update"
    left = orjson.loads(roster.apply(change(4, "c1", None)) or b"")
    assert (left["action"], left["reason"]) == ("leave", "closed")
    assert roster.snapshot() == []


def test_older_changes_lose() -> None:
    """A change older than what the roster has seen for that key is ignored."""
    roster = Roster()
    roster.apply(change(5, "c1", None))
    assert roster.apply(change(4, "c1")) is None
    assert roster.snapshot() == []


def test_reload_emits_what_was_missed() -> None:
    """Reloading from a snapshot leaves keys that vanished and joins keys that appeared."""
    roster = Roster()
    roster.apply(change(1, "c1"))
    roster.apply(change(2, "c2"))
    fresh = {c.key: c for c in (change(2, "c2"), change(7, "c3"))}
    frames = [orjson.loads(f) for f in roster.reload(fresh)]
    assert [(f["action"], f["member"]["connection"]) for f in frames] == [
        ("leave", "c1"),
        ("join", "c3"),
    ]
    assert sorted(m["connection"] for m in roster.snapshot()) == ["c2", "c3"]

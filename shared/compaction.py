"""Compaction of a replayed stretch of the session log.

A device that (re)connects does not get every token delta again. Within the stretch it
asks for (everything after ``since``):

* an agent message whose ``message.start`` is in the stretch and that is still streaming
  becomes one ``message.snapshot`` carrying its accumulated text;
* an agent message that started before the stretch gets its deltas merged into one
  ``message.delta`` (``text`` concatenated; ``i`` is the last chunk index, ``from_i`` the
  first) or, when a ``message.reset`` is in the stretch, one ``message.reset`` with the
  text from that reset onwards;
* a stored checkpoint (``message.snapshot``, which rolled up the deltas before it) counts
  as the message's start with its text;
* a message whose final form (complete, edit, delete) is in the stretch keeps only that;
* every other event stays as it is.

Each compacted item takes the sequence of its last constituent, so sequences stay
strictly increasing and a device can resume from the last one it saw.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shared import wire
from shared.wire import Event, StoredEvent


@dataclass(slots=True)
class _Stream:
    """What the stretch holds of one agent message that is still streaming."""

    started: Event | None = None
    reset: bool = False
    parts: list[str] = field(default_factory=list)
    first_i: int | None = None
    last_i: int | None = None
    last_seq: int = 0


def compact(events: list[StoredEvent]) -> list[tuple[int, Event]]:
    """Compact one stretch of a session's log; input and output in sequence order."""
    out: list[tuple[int, Event]] = []
    streams: dict[str, _Stream] = {}
    for stored in events:
        event = stored.event
        kind = event.get("type")
        message = event.get("message")
        if stored.kind != "a" or not isinstance(message, str) or kind not in wire.MESSAGE_TYPES:
            out.append((stored.seq, event))
            continue
        if kind in (
            wire.MESSAGE_START,
            wire.MESSAGE_SNAPSHOT,
            wire.MESSAGE_DELTA,
            wire.MESSAGE_RESET,
        ):
            state = streams.setdefault(message, _Stream())
            text = event.get("text")
            chunk = event.get("i")
            if kind in (wire.MESSAGE_START, wire.MESSAGE_SNAPSHOT):
                state.started, state.parts, state.reset = event, [], False
            elif kind == wire.MESSAGE_RESET:
                state.reset, state.parts = True, []
            if isinstance(text, str) and text:
                state.parts.append(text)
            if isinstance(chunk, int):
                state.first_i = chunk if state.first_i is None else state.first_i
                state.last_i = chunk
            state.last_seq = stored.seq
            continue
        # A final form (created, complete, edit, delete) supersedes what streamed before.
        streams.pop(message, None)
        out.append((stored.seq, event))
    for message, state in streams.items():
        out.append((state.last_seq, _emit(message, state)))
    out.sort(key=lambda item: item[0])
    return out


def _emit(message: str, state: _Stream) -> Event:
    text = "".join(state.parts)
    if state.started is not None:
        snapshot = {k: v for k, v in state.started.items() if k not in ("type", "text", "i")}
        snapshot.update(type=wire.MESSAGE_SNAPSHOT, message=message, text=text, status="streaming")
        if state.last_i is not None:
            snapshot["i"] = state.last_i
        return snapshot
    merged: Event = {
        "v": wire.ENVELOPE_VERSION,
        "type": wire.MESSAGE_RESET if state.reset else wire.MESSAGE_DELTA,
        "message": message,
        "text": text,
    }
    if state.last_i is not None:
        merged["i"] = state.last_i
        merged["from_i"] = state.first_i
    return merged

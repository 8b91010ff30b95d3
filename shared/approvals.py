"""Human in the loop: the stored state of one approval (docs/protocol.md §17).

An approval lives on its run's subject ``tether.s.{session}.r.{run}``: the agent stores
``approval.requested`` (dedupe part ``approval-{id}``); the first answer accepted by a
gateway is stored as ``approval.decided`` and a timeout as ``approval.expired``, both with
the dedupe part ``decision-{id}``, so JetStream keeps whichever comes first and drops the
other as a duplicate. Gateways and the SDK read the state with a direct get of the subject.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client as NATS

from shared import directget, subjects, wire


def request_part(approval: str) -> str:
    """The dedupe part of an ``approval.requested``."""
    return f"approval-{approval}"


def decision_part(approval: str) -> str:
    """The dedupe part shared by ``approval.decided`` and ``approval.expired``."""
    return f"decision-{approval}"


@dataclass(frozen=True, slots=True)
class Decision:
    """How an approval was resolved: an option chosen by a participant, or expired."""

    approval: str
    option: str | None
    participant: str | None
    expired: bool
    decided_at: int | None
    seq: int


def decision_of(event: wire.Event, seq: int) -> Decision:
    """The decision an ``approval.decided`` / ``approval.expired`` event carries."""
    option, who, at = event.get("option"), event.get("participant"), event.get("decided_at")
    expired = event.get("type") == wire.APPROVAL_EXPIRED
    return Decision(
        approval=str(event.get("approval", "")),
        option=option if isinstance(option, str) and not expired else None,
        participant=who if isinstance(who, str) else None,
        expired=expired,
        decided_at=at if isinstance(at, int) else event.get("ts"),
        seq=seq,
    )


@dataclass(slots=True)
class State:
    """What a run's subject holds about one approval."""

    request: wire.Event | None = None
    outcome: wire.Event | None = None
    outcome_seq: int = 0
    run_end: str | None = None

    @property
    def options(self) -> list[str]:
        options = (self.request or {}).get("options")
        return [o for o in options if isinstance(o, str)] if isinstance(options, list) else []

    @property
    def expires_at(self) -> int | None:
        value = (self.request or {}).get("expires_at")
        return value if isinstance(value, int) else None

    def decision(self) -> Decision | None:
        if self.outcome is None:
            return None
        return decision_of(self.outcome, self.outcome_seq)


async def read(nc: NATS, stream: str, session: str, run: str, approval: str) -> State:
    """Read the approval's request, its first outcome and the run's terminal event."""
    state = State()

    def handle(seq: int, headers: dict[str, str], data: bytes) -> bool:
        event = wire.decode_event(data)
        if event is None:
            return True
        kind = event["type"]
        if kind in wire.RUN_TERMINAL_TYPES and state.run_end is None:
            state.run_end = str(kind)
        elif event.get("approval") != approval:
            return True
        elif kind == wire.APPROVAL_REQUESTED and state.request is None:
            state.request = event
        elif kind in wire.APPROVAL_OUTCOME_TYPES and state.outcome is None:
            state.outcome, state.outcome_seq = event, seq
        return True

    await directget.scan(nc, stream, subjects.run_events(session, run), 0, handle)
    return state


def check_options(options: Any) -> list[str]:
    """An approval's options: a non-empty list of distinct non-empty strings."""
    if isinstance(options, str) or not isinstance(options, list | tuple):
        raise ValueError("options must be a list of strings")
    items = list(options)
    if not items or not all(isinstance(o, str) and o for o in items):
        raise ValueError("options must be a non-empty list of non-empty strings")
    if len(set(items)) != len(items):
        raise ValueError("options must be distinct")
    return items

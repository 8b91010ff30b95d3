"""Answers to approvals from devices: the ``approve`` frame and action (docs/protocol.md §17).

The gateway reads the approval's run subject (a direct get): no ``approval.requested`` is
``unknown_approval``; a stored decision or expiry, a passed ``expires_at`` or an ended run
is ``approval_closed``; an option the request did not offer is ``invalid_option``. Then it
stores ``approval.decided`` with ``Nats-Msg-Id: {session}:r:{run}:decision-{approval}``.
JetStream keeps the first publish with that id, so of two answers racing through any
gateways (or an answer racing the agent's ``approval.expired``) exactly one is stored; the
other is acknowledged as a duplicate and its sender gets ``approval_closed``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client as NATS

from services.gateway.messages import store
from shared import approvals, subjects, wire
from shared.errors import ApprovalClosed, BadFrame, InvalidOption, UnknownApproval
from shared.ids import check_id

MAX_OPTION = 1024


@dataclass(frozen=True, slots=True)
class Answered:
    approval: str
    option: str
    seq: int


def parse(frame: Mapping[str, Any]) -> tuple[str, str, str]:
    """(approval id, run id, option) of an ``approve`` frame or body."""
    if frame.get("approval") is None:
        raise BadFrame("an approve needs field 'approval' (the approval id)")
    if frame.get("run") is None:
        raise BadFrame("an approve needs field 'run' (the run that asked)")
    approval = check_id(frame.get("approval"), "approval id")
    run = check_id(frame.get("run"), "run id")
    option = wire.require_str(frame, "option", max_len=MAX_OPTION)
    return approval, run, option


def closed_reason(state: approvals.State, approval: str) -> str | None:
    """Why the approval takes no more answers (None while it is open)."""
    decision = state.decision()
    if decision is not None and decision.expired:
        return f"approval {approval} expired"
    if decision is not None:
        chosen, who = decision.option, decision.participant
        return f"approval {approval} was already decided: {chosen!r} by {who}"
    if state.run_end is not None:
        return f"approval {approval} is closed: its run ended ({state.run_end})"
    if state.expires_at is not None and wire.now_ms() >= state.expires_at:
        return f"approval {approval} expired"
    return None


async def answer(
    nc: NATS, stream: str, session: str, frame: Mapping[str, Any], participant: str
) -> Answered:
    """Check one answer and store it as the decision if it is the first."""
    approval, run, option = parse(frame)
    state = await approvals.read(nc, stream, session, run, approval)
    if state.request is None:
        raise UnknownApproval(f"run {run} of session {session} has no approval {approval}")
    reason = closed_reason(state, approval)
    if reason is not None:
        raise ApprovalClosed(reason)
    if option not in state.options:
        offered = ", ".join(repr(o) for o in state.options)
        raise InvalidOption(f"option {option[:40]!r} is not one of {offered}")
    now = wire.now_ms()
    event: dict[str, Any] = {
        "v": wire.ENVELOPE_VERSION,
        "type": wire.APPROVAL_DECIDED,
        "session": session,
        "run": run,
        "approval": approval,
        "option": option,
        "participant": participant,
        "decided_at": now,
        "ts": now,
    }
    user = state.request.get("user") if state.request is not None else None
    if isinstance(user, str):
        event["user"] = user
    dedupe = wire.msg_id(session, subjects.RUN, run, approvals.decision_part(approval))
    seq, duplicate = await store(nc, subjects.run_events(session, run), event, dedupe, "answer")
    if duplicate:  # another answer (or the expiry) was stored first
        state = await approvals.read(nc, stream, session, run, approval)
        reason = closed_reason(state, approval) or f"approval {approval} is already closed"
        raise ApprovalClosed(reason)
    return Answered(approval=approval, option=option, seq=seq)

"""Storing control signals from devices: ``cancel`` and ``steer`` (docs/protocol.md §16).

A signal is a stored event on ``tether.s.{session}.c.{id}``: devices see it, replay shows
it, agents read it from their durable inbox, and the stream's republish on
``tether.live.{session}.c.{id}`` tells a running agent at once. A signal naming a run is
checked against that run's stored lifecycle first: no events is ``unknown_run``, a
terminal event is ``run_ended``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client as NATS

from services.gateway.messages import store
from shared import directget, subjects, wire
from shared.errors import BadFrame, RunEnded, UnknownRun
from shared.ids import check_id, new_id

MAX_STEER_TEXT = 16 * 1024
ACTIONS = {"cancel": wire.CONTROL_CANCEL, "steer": wire.CONTROL_STEER}


@dataclass(frozen=True, slots=True)
class Stored:
    control: str
    seq: int
    duplicate: bool


async def run_status(nc: NATS, stream: str, session: str, run: str) -> str | None:
    """The run's last lifecycle event type (None when the session has none of it)."""
    last: list[str] = []

    def handle(seq: int, headers: dict[str, str], data: bytes) -> bool:
        event = wire.decode_event(data)
        if event is not None:
            last.append(str(event["type"]))
        return True

    await directget.scan(nc, stream, subjects.run_events(session, run), 0, handle)
    terminal = [kind for kind in last if kind in wire.RUN_TERMINAL_TYPES]
    return terminal[0] if terminal else (last[-1] if last else None)


def parse(frame: Mapping[str, Any]) -> tuple[str, str | None, str | None]:
    """(event type, run, steer text) of a ``cancel``/``steer`` frame or body."""
    action = frame.get("type", frame.get("action"))
    if not isinstance(action, str) or action not in ACTIONS:
        raise BadFrame("control action must be 'cancel', 'steer' or 'approve'")
    run = frame.get("run")
    run = check_id(run, "run id") if run is not None else None
    text = None
    if action == "steer":
        text = wire.require_str(frame, "text", max_len=MAX_STEER_TEXT)
        if not text:
            raise BadFrame("field 'text' of a steer must not be empty")
    return ACTIONS[str(action)], run, text


async def publish_control(
    nc: NATS,
    stream: str,
    session: str,
    frame: Mapping[str, Any],
    participant: str,
) -> Stored:
    """Check and store one control signal; the frame's ``id`` (or a new one) dedupes it."""
    kind, run, text = parse(frame)
    raw_id = frame.get("id")
    control_id = check_id(raw_id, "control id") if raw_id is not None else new_id("c-")
    if run is not None:
        status = await run_status(nc, stream, session, run)
        if status is None:
            raise UnknownRun(f"session {session} has no run {run}")
        if status in wire.RUN_TERMINAL_TYPES:
            raise RunEnded(f"run {run} already ended ({status})")
    event: dict[str, Any] = {
        "v": wire.ENVELOPE_VERSION,
        "type": kind,
        "session": session,
        "control": control_id,
        "participant": participant,
        "ts": wire.now_ms(),
    }
    if run is not None:
        event["run"] = run
    if text is not None:
        event["text"] = text
    dedupe = wire.msg_id(session, subjects.CONTROL, control_id, "created")
    seq, duplicate = await store(nc, subjects.control(session, control_id), event, dedupe, "signal")
    return Stored(control=control_id, seq=seq, duplicate=duplicate)

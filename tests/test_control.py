"""Cancel, steer and crash-safe resume with a real nats-server, a real gateway, real
WebSocket devices and real agent processes (SIGKILLed and restarted)."""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import aiohttp

from services.gateway.app import Gateway
from shared import agent, subjects
from shared.ids import new_id
from shared.runcontrol import RunControl, Signal
from shared.streaming import Stored
from tests.agentprocs import StartAgent, records
from tests.conftest import token, wait_for
from tests.device import Device

AGENT = "tests.agents.inbox_agent"
RESUMER = "tests.agents.resume_agent"
SLOW = {"TEST_WORDS": "5000", "TEST_TOKEN_DELAY": "0.01"}


def url(gateway: Gateway) -> str:
    return f"http://127.0.0.1:{gateway.port}"


def saw(device: Device, kind: str, run: str) -> bool:
    return (kind, run) in device.view.others


async def drop_durable(client: agent.Client, durable: str) -> None:
    await client.nc.jetstream().delete_consumer(client.log_settings.stream, durable)


async def test_cancel_from_device_reaches_agent_fast(
    gateway: Gateway, client: agent.Client, agent_proc: StartAgent, tmp_path: Path
) -> None:
    """A device's cancel reaches the agent in < 1 s and every device sees run.cancelled."""
    sid, durable, log = new_id("s-"), new_id("inbox-"), tmp_path / "log.jsonl"
    await agent_proc(AGENT, "bot", durable, str(log), **SLOW)
    alice = Device(sid, token([sid], subject="alice"))
    phone = Device(sid, token([sid], subject="alice"))
    for device in (alice, phone):
        await device.connect(url(gateway))
    await alice.send({"type": "send", "id": "q-1", "text": "write a novel"})
    await wait_for(lambda: len(phone.view.texts.get("reply-q-1", "")) > 20, what="streaming")
    sent = time.time()
    await alice.send({"type": "cancel", "id": "c-1", "run": "run-q-1"})
    await wait_for(lambda: any("cancelled" in r for r in records(log)), what="agent cancelled")
    received = next(r for r in records(log) if "cancelled" in r)
    assert received["cancelled"] == "run-q-1" and received["control"] == "c-1"
    assert received["at"] - sent < 1.0
    for device in (alice, phone):
        await wait_for(partial(saw, device, "run.cancelled", "run-q-1"), what="cancelled")
        assert saw(device, "control.cancel", "run-q-1")
        assert not saw(device, "run.completed", "run-q-1")
    assert [a["id"] for a in alice.view.acks] == ["q-1", "c-1"]
    late = Device(sid, token([sid], subject="alice"))  # replay shows the signal too
    await late.connect(url(gateway))
    await wait_for(lambda: late.view.live, what="replayed")
    assert saw(late, "control.cancel", "run-q-1") and saw(late, "run.cancelled", "run-q-1")
    assert late.view.texts["reply-q-1"] == phone.view.texts["reply-q-1"]
    for device in (alice, phone, late):
        await device.close()
    await drop_durable(client, durable)


async def test_steer_reaches_running_agent(
    gateway: Gateway, client: agent.Client, agent_proc: StartAgent, tmp_path: Path
) -> None:
    """A steer sent over HTTP reaches the running agent's ``run.steers`` with its text."""
    sid, durable, log = new_id("s-"), new_id("inbox-"), tmp_path / "log.jsonl"
    await agent_proc(AGENT, "bot", durable, str(log), **SLOW)
    device = Device(sid, token([sid], subject="alice"))
    await device.connect(url(gateway))
    await device.send({"type": "send", "id": "q-1", "text": "explain"})
    await wait_for(lambda: saw(device, "run.started", "run-q-1"), what="run started")
    async with aiohttp.ClientSession() as http:
        response = await http.post(
            f"{url(gateway)}/v1/sessions/{sid}/control",
            json={"action": "steer", "id": "st-1", "run": "run-q-1", "text": "shorter please"},
            headers={"Authorization": f"Bearer {token([sid], subject='bob')}"},
        )
        assert response.status == 201
        assert (await response.json())["id"] == "st-1"
        again = await http.post(
            f"{url(gateway)}/v1/sessions/{sid}/control",
            json={"action": "steer", "id": "st-1", "run": "run-q-1", "text": "shorter please"},
            headers={"Authorization": f"Bearer {token([sid], subject='bob')}"},
        )
        assert again.status == 200 and (await again.json())["duplicate"] is True
    await wait_for(lambda: any("steer" in r for r in records(log)), what="steer received")
    steer = next(r for r in records(log) if "steer" in r)
    assert steer == {**steer, "steer": "shorter please", "run": "run-q-1"}
    await device.send({"type": "cancel", "id": "c-1"})
    await wait_for(lambda: saw(device, "run.cancelled", "run-q-1"), what="cancelled")
    assert sum(1 for r in records(log) if "steer" in r) == 1  # the resend was a duplicate
    await device.close()
    await drop_durable(client, durable)


async def test_control_errors_are_clear_and_harmless(
    gateway: Gateway, client: agent.Client
) -> None:
    """Cancel of an ended or unknown run and an oversized steer: clear errors, nothing else."""
    sid = new_id("s-")
    async with client.session(sid).run("run-done") as run:
        await run.message().complete()
    device = Device(sid, token([sid]))
    await device.connect(url(gateway))
    await wait_for(lambda: device.view.live, what="caught up")
    await device.send({"type": "cancel", "id": "c-1", "run": "run-done"})
    await device.send({"type": "cancel", "id": "c-2", "run": "run-nope"})
    await device.send({"type": "steer", "id": "c-3", "text": "x" * 20_000})
    await device.send({"type": "steer", "id": "c-4", "run": "bad.id", "text": "hi"})
    await device.send({"type": "send", "id": "q-1", "text": "still here"})
    await wait_for(lambda: len(device.view.errors) == 4 and bool(device.view.acks), what="answers")
    codes = {e["id"]: e["code"] for e in device.view.errors}
    assert codes == {
        "c-1": "run_ended",
        "c-2": "unknown_run",
        "c-3": "bad_frame",
        "c-4": "invalid_id",
    }
    assert "run.completed" in device.view.errors[0]["message"]
    assert [a["id"] for a in device.view.acks] == ["q-1"]
    assert device.view.texts["q-1"] == "still here" and device.connected
    assert not any(kind.startswith("control.") for kind, _ in device.view.others)
    headers = {"Authorization": f"Bearer {token([sid])}"}
    async with aiohttp.ClientSession() as http:
        base = f"{url(gateway)}/v1/sessions/{sid}/control"
        for body, status, code in (
            ({"action": "cancel", "run": "run-done"}, 409, "run_ended"),
            ({"action": "cancel", "run": "run-nope"}, 404, "unknown_run"),
            ({"action": "pause"}, 400, "bad_frame"),
        ):
            response = await http.post(base, json=body, headers=headers)
            assert response.status == status
            assert (await response.json())["error"]["code"] == code
        response = await http.post(base, data=b"{" + b" " * 70_000 + b"}", headers=headers)
        assert response.status == 413
    await device.close()


async def resumed_answer(
    gateway: Gateway, agent_proc: StartAgent, mode: str, first: str, final: str
) -> tuple[Device, str]:
    """Stream ``first``, SIGKILL the agent mid-message, restart it with ``resume=mode``
    streaming ``final``; returns the device and what the restarted agent found stored."""
    sid = new_id("s-")
    device = Device(sid, token([sid]))
    await device.connect(url(gateway))
    env = {"TEST_TOKEN_DELAY": "0.03"}
    doomed = await agent_proc(RESUMER, sid, mode, first, **env)
    await wait_for(
        lambda: len(device.view.texts.get("run-resume-m1", "").split(" ")) >= 8, what="partial"
    )
    doomed.kill()
    partial = device.view.texts["run-resume-m1"]
    assert 0 < len(partial) < len(first)
    second = await agent_proc(RESUMER, sid, mode, final, **env)
    await wait_for(lambda: saw(device, "run.completed", "run-resume"), what="run completed")
    return device, str(second.ready_info["stored"])


async def test_resume_continue_after_sigkill(gateway: Gateway, agent_proc: StartAgent) -> None:
    """SIGKILL mid-message, restart with resume=continue: the device text is the answer exactly."""
    answer = " ".join(f"word{n}" for n in range(40))
    device, stored = await resumed_answer(gateway, agent_proc, "continue", answer, answer)
    assert stored and answer.startswith(stored)
    assert device.view.texts["run-resume-m1"] == answer
    late = Device(device.session, device.token)  # a fresh device replaying the log agrees
    await late.connect(url(gateway))
    await wait_for(lambda: late.view.live, what="replayed")
    assert late.view.texts["run-resume-m1"] == answer
    for d in (device, late):
        await d.close()


async def test_resume_reset_after_sigkill(gateway: Gateway, agent_proc: StartAgent) -> None:
    """SIGKILL mid-message, restart with resume=reset: the partial text is replaced exactly."""
    first = " ".join(f"draft{n}" for n in range(40))
    final = " ".join(f"final{n}" for n in range(12))
    device, stored = await resumed_answer(gateway, agent_proc, "reset", first, final)
    assert stored and first.startswith(stored)
    assert device.view.texts["run-resume-m1"] == final
    await device.close()


def test_control_subjects_parse() -> None:
    """Control subjects are a log kind: stored and live forms parse, filters name them."""
    parsed = subjects.parse("tether.s.sess-1.c.c-1")
    assert parsed is not None and (parsed.session, parsed.kind, parsed.key) == (
        "sess-1",
        "c",
        "c-1",
    )
    assert subjects.parse("tether.live.sess-1.c.c-1") is not None
    assert subjects.control("sess-1", "c-1") == "tether.s.sess-1.c.c-1"
    assert subjects.live_control("sess-1") == "tether.live.sess-1.c.*"
    assert "tether.s.*.c.*" in subjects.INBOX_FILTERS


def test_stored_message_text_after_checkpoint_and_reset() -> None:
    """Resume reads a checkpoint, deltas and a reset into the text and last chunk index."""
    stored = Stored()
    for event in (
        {"type": "message.snapshot", "text": "ab", "i": 3},
        {"type": "message.delta", "text": "c", "i": 4},
        {"type": "message.reset", "text": "X", "i": 5},
        {"type": "message.delta", "text": "y", "i": 6},
    ):
        stored.apply(event)
    assert (stored.text, stored.last_i, stored.complete) == ("Xy", 6, False)
    stored.apply({"type": "message.complete", "text": "Xyz", "chunks": 8})
    assert (stored.text, stored.last_i, stored.complete) == ("Xyz", 7, True)


async def test_run_control_filters_and_dedupes() -> None:
    """A run takes signals for itself or for no run, each control id once; steers queue."""
    hooked: list[str] = []

    async def hook(signal: Signal) -> None:
        hooked.append(signal.control)

    control = RunControl("run-1", hook)

    def sig(kind: str, control_id: str, run: str | None, text: str | None = None) -> Signal:
        return Signal(kind, control_id, run, "alice", text, 1)

    await control.deliver(sig("control.cancel", "c-0", "run-other"))
    assert not control.cancelled.is_set()
    await control.deliver(sig("control.steer", "s-1", None, "shorter"))
    await control.deliver(sig("control.steer", "s-1", None, "shorter"))
    assert control.steers.qsize() == 1
    await control.deliver(sig("control.cancel", "c-1", "run-1"))
    await control.deliver(sig("control.cancel", "c-2", None))
    assert control.cancelled.is_set() and hooked == ["c-1"]
    assert control.cancel_signal is not None and control.cancel_signal.control == "c-1"

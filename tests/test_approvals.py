"""Human in the loop with a real nats-server, real gateways and real WebSocket devices:
``run.request_approval`` answered from any device, first answer wins, expiry, bad answers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from services.gateway.app import Gateway
from shared import agent, approvals
from shared.approvals import Decision
from shared.ids import new_id
from shared.server import EmbeddedNats
from tests.conftest import gateway_settings, token, wait_for
from tests.device import Device


def url(gateway: Gateway) -> str:
    return f"http://127.0.0.1:{gateway.port}"


def requested(device: Device, approval: str) -> bool:
    return any(
        e["type"] == "approval.requested" and e["approval"] == approval
        for e in device.view.approvals
    )


def kinds(device: Device, approval: str) -> list[str]:
    return [e["type"] for e in device.view.approvals if e["approval"] == approval]


def answers(device: Device) -> list[dict[str, Any]]:
    return device.view.acks + device.view.errors


async def devices(gateway: Gateway, sid: str, *subjects: str) -> list[Device]:
    out = []
    for subject in subjects:
        device = Device(sid, token([sid], subject=subject))
        await device.connect(url(gateway))
        await wait_for(lambda d=device: d.view.live, what="caught up")
        out.append(device)
    return out


def asking(
    client: agent.Client, sid: str, run_id: str, timeout: float | None = 30.0, count: int = 1
) -> Callable[[], Awaitable[list[Decision]]]:
    """An agent run that asks ``count`` approvals in turn, then posts what was chosen."""

    async def body() -> list[Decision]:
        decisions = []
        async with client.session(sid).run(run_id, user="alice") as run:
            for _ in range(count):
                decisions.append(
                    await run.request_approval("Send the refund?", ["yes", "no"], timeout=timeout)
                )
            chosen = ",".join(str(d.option) for d in decisions)
            await run.session.post(f"chose {chosen}", message_id=f"{run_id}-after", run=run_id)
        return decisions

    return body


async def test_approval_answered_from_second_device_resumes_agent(
    gateway: Gateway, client: agent.Client
) -> None:
    """A second device answers; the agent resumes at once with that option; all devices see it."""
    sid = new_id("s-")
    laptop, phone = await devices(gateway, sid, "alice", "alice")
    task = asyncio.create_task(asking(client, sid, "run-1")())
    await wait_for(lambda: requested(laptop, "run-1-a1"), what="request on the laptop")
    await wait_for(lambda: requested(phone, "run-1-a1"), what="request on the phone")
    request = next(e for e in phone.view.approvals if e["type"] == "approval.requested")
    assert request == {
        **request,
        "run": "run-1",
        "user": "alice",
        "prompt": "Send the refund?",
        "options": ["yes", "no"],
    }
    assert request["expires_at"] > request["ts"]
    sent = time.monotonic()
    await phone.send(
        {"type": "approve", "id": "ans-1", "approval": "run-1-a1", "run": "run-1", "option": "no"}
    )
    (decision,) = await asyncio.wait_for(task, 10)
    assert time.monotonic() - sent < 1.0  # from the live feed, not the log poll
    assert (decision.option, decision.participant, decision.expired) == ("no", "alice", False)
    assert phone.view.acks[-1] == {**phone.view.acks[-1], "id": "ans-1", "option": "no"}
    for device in (laptop, phone):
        await wait_for(lambda d=device: "run-1-after" in d.view.texts, what="agent resumed")
        assert kinds(device, "run-1-a1") == ["approval.requested", "approval.decided"]
        assert device.view.texts["run-1-after"] == "chose no"
    decided = laptop.view.approvals[-1]
    assert decided == {**decided, "option": "no", "participant": "alice", "run": "run-1"}
    late = Device(sid, token([sid], subject="bob"))  # replay keeps approvals as they are
    await late.connect(url(gateway))
    await wait_for(lambda: late.view.live, what="replayed")
    assert late.view.approvals == laptop.view.approvals
    async with client.session(sid).run("run-1") as retried:  # a retried agent: stored answer
        again = await retried.request_approval("Send the refund?", ["yes", "no"], timeout=30)
    assert (again.option, again.seq) == ("no", decision.seq)
    for device in (laptop, phone, late):
        await device.close()


async def test_concurrent_answers_through_two_gateways_one_wins(
    gateway: Gateway, nats_server: EmbeddedNats, client: agent.Client
) -> None:
    """Two devices on two gateways answer at once, 5 times: one wins, the other approval_closed."""
    other = Gateway(gateway_settings(nats_server))
    await other.start()
    sid, rounds = new_id("s-"), 5
    (alice,) = await devices(gateway, sid, "alice")
    (bob,) = await devices(other, sid, "bob")
    task = asyncio.create_task(asking(client, sid, "run-c", count=rounds)())
    for n in range(1, rounds + 1):
        approval = f"run-c-a{n}"
        await wait_for(lambda a=approval: requested(alice, a) and requested(bob, a), what=approval)
        frame = {"type": "approve", "id": f"x-{n}", "approval": approval, "run": "run-c"}
        await asyncio.gather(
            alice.send({**frame, "option": "yes"}), bob.send({**frame, "option": "no"})
        )
        await wait_for(lambda n=n: len(answers(alice)) + len(answers(bob)) == 2 * n, what="answers")
    decisions = await asyncio.wait_for(task, 10)
    for n, decision in enumerate(decisions, start=1):
        won = [a for a in alice.view.acks + bob.view.acks if a["id"] == f"x-{n}"]
        lost = [e for e in alice.view.errors + bob.view.errors if e["id"] == f"x-{n}"]
        assert len(won) == 1 and len(lost) == 1, (won, lost)
        assert lost[0]["code"] == "approval_closed"
        assert repr(decision.option) in lost[0]["message"]
        assert decision.option == won[0]["option"]
        assert decision.participant == ("alice" if decision.option == "yes" else "bob")
    for device in (alice, bob):
        await wait_for(lambda d=device: "run-c-after" in d.view.texts, what="resumed")
        decided = [e for e in device.view.approvals if e["type"] == "approval.decided"]
        assert [e["option"] for e in decided] == [d.option for d in decisions]
    for device in (alice, bob):
        await device.close()
    await other.stop()


async def test_expired_approval_and_late_answer(gateway: Gateway, client: agent.Client) -> None:
    """A short timeout resolves as expired; a later answer gets approval_closed (WS and HTTP)."""
    sid = new_id("s-")
    (phone,) = await devices(gateway, sid, "alice")
    (decision,) = await asking(client, sid, "run-x", timeout=0.3)()
    assert (decision.expired, decision.option, decision.approval) == (True, None, "run-x-a1")
    await wait_for(lambda: "run-x-after" in phone.view.texts, what="agent went on")
    assert kinds(phone, "run-x-a1") == ["approval.requested", "approval.expired"]
    assert phone.view.texts["run-x-after"] == "chose None"
    await phone.send(
        {"type": "approve", "id": "late", "approval": "run-x-a1", "run": "run-x", "option": "yes"}
    )
    await wait_for(lambda: bool(phone.view.errors), what="late answer refused")
    assert phone.view.errors[0]["code"] == "approval_closed"
    assert "expired" in phone.view.errors[0]["message"]
    async with aiohttp.ClientSession() as http:
        response = await http.post(
            f"{url(gateway)}/v1/sessions/{sid}/control",
            json={"action": "approve", "approval": "run-x-a1", "run": "run-x", "option": "no"},
            headers={"Authorization": f"Bearer {token([sid])}"},
        )
        assert response.status == 409
        assert (await response.json())["error"]["code"] == "approval_closed"
    assert kinds(phone, "run-x-a1") == ["approval.requested", "approval.expired"]
    await phone.close()


async def test_cancel_while_waiting_closes_the_approval(
    gateway: Gateway, client: agent.Client
) -> None:
    """A cancel of the waiting run expires its approval at once; the run ends cancelled."""
    sid = new_id("s-")
    (phone,) = await devices(gateway, sid, "alice")
    task = asyncio.create_task(asking(client, sid, "run-k", timeout=None)())
    await wait_for(lambda: requested(phone, "run-k-a1"), what="request")
    assert "expires_at" not in phone.view.approvals[0]
    sent = time.monotonic()
    await phone.send({"type": "cancel", "id": "c-1", "run": "run-k"})
    (decision,) = await asyncio.wait_for(task, 10)
    assert time.monotonic() - sent < 1.0 and (decision.expired, decision.option) == (True, None)
    await wait_for(lambda: ("run.cancelled", "run-k") in phone.view.others, what="cancelled")
    assert kinds(phone, "run-k-a1") == ["approval.requested", "approval.expired"]
    await phone.send(
        {"type": "approve", "id": "late", "approval": "run-k-a1", "run": "run-k", "option": "yes"}
    )
    await wait_for(lambda: bool(phone.view.errors), what="late answer refused")
    assert phone.view.errors[0]["code"] == "approval_closed"
    await phone.close()


async def test_bad_answers_are_clear_and_harmless(gateway: Gateway, client: agent.Client) -> None:
    """Unknown approval, invalid option, bad ids: clear errors; the approval stays open."""
    sid = new_id("s-")
    (phone,) = await devices(gateway, sid, "alice")
    task = asyncio.create_task(asking(client, sid, "run-b")())
    await wait_for(lambda: requested(phone, "run-b-a1"), what="request")
    base = {"type": "approve", "run": "run-b", "option": "yes"}
    await phone.send({**base, "id": "e-1", "approval": "run-b-a9"})
    await phone.send({**base, "id": "e-2", "approval": "run-b-a1", "option": "maybe"})
    await phone.send({**base, "id": "e-3", "approval": "run-b-a1", "run": "run-nope"})
    await phone.send({**base, "id": "e-4", "approval": "bad.id"})
    await phone.send({"type": "approve", "id": "e-5", "approval": "run-b-a1", "option": "yes"})
    await phone.send({**base, "id": "e-6", "approval": "run-b-a1", "option": 3})
    await phone.send({"type": "send", "id": "q-1", "text": "still here"})
    await wait_for(lambda: len(phone.view.errors) == 6 and bool(phone.view.acks), what="answers")
    codes = {e["id"]: e["code"] for e in phone.view.errors}
    assert codes == {
        "e-1": "unknown_approval",
        "e-2": "invalid_option",
        "e-3": "unknown_approval",
        "e-4": "invalid_id",
        "e-5": "bad_frame",
        "e-6": "bad_frame",
    }
    assert "'yes', 'no'" in phone.view.errors[1]["message"]
    assert [a["id"] for a in phone.view.acks] == ["q-1"] and not task.done()
    assert kinds(phone, "run-b-a1") == ["approval.requested"]
    headers = {"Authorization": f"Bearer {token([sid], subject='bob')}"}
    async with aiohttp.ClientSession() as http:
        endpoint = f"{url(gateway)}/v1/sessions/{sid}/control"
        body = {"action": "approve", "approval": "run-b-a1", "run": "run-b"}
        for extra, status, code in (
            ({"approval": "run-b-a9", "option": "yes"}, 404, "unknown_approval"),
            ({"option": "maybe"}, 400, "invalid_option"),
            ({}, 400, "bad_frame"),
        ):
            response = await http.post(endpoint, json={**body, **extra}, headers=headers)
            assert response.status == status
            assert (await response.json())["error"]["code"] == code
        response = await http.post(endpoint, json={**body, "option": "yes"}, headers=headers)
        assert response.status == 201
        assert await response.json() == {**await response.json(), "option": "yes"}
        again = await http.post(endpoint, json={**body, "option": "no"}, headers=headers)
        assert again.status == 409 and (await again.json())["error"]["code"] == "approval_closed"
    (decision,) = await asyncio.wait_for(task, 10)
    assert (decision.option, decision.participant) == ("yes", "bob")
    await wait_for(lambda: len(kinds(phone, "run-b-a1")) == 2, what="decision seen")
    assert phone.view.texts["q-1"] == "still here" and phone.connected
    await phone.close()


async def test_request_approval_checks_its_arguments(client: agent.Client) -> None:
    """Options must be distinct non-empty strings and the timeout positive."""
    async with client.session(new_id("s-")).run("run-v") as run:
        for options in ([], ["yes", "yes"], "yes", ["", "no"]):
            with pytest.raises(ValueError):
                await run.request_approval("ok?", options, timeout=1)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            await run.request_approval("ok?", ["yes"], timeout=0)
    assert approvals.decision_part("a1") == "decision-a1"

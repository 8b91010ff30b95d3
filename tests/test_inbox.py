"""The durable inbox: real nats-server, real gateway, real WebSocket devices and real agent
processes stopped and restarted."""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path

import aiohttp

from services.gateway.app import Gateway
from shared import agent, history
from shared.ids import new_id
from shared.inbox import Cancel, Steer, UserMessage
from shared.server import EmbeddedNats
from shared.settings import LogSettings
from tests.agentprocs import StartAgent, answer_text, records
from tests.conftest import token, wait_for
from tests.device import Device

AGENT = "tests.agents.inbox_agent"


def url(gateway: Gateway) -> str:
    return f"http://127.0.0.1:{gateway.port}"


async def drop_durable(client: agent.Client, durable: str) -> None:
    await client.nc.jetstream().delete_consumer(client.log_settings.stream, durable)


async def test_messages_sent_while_agent_stopped_answered_after_restart(
    gateway: Gateway, client: agent.Client, agent_proc: StartAgent, tmp_path: Path
) -> None:
    """Messages sent while the agent is stopped are answered once after it restarts."""
    sid, durable, log = new_id("s-"), new_id("inbox-"), tmp_path / "answers.jsonl"
    bot = await agent_proc(AGENT, "bot", durable, str(log))
    device = Device(sid, token([sid], subject="alice"))
    await device.connect(url(gateway))
    await device.send({"type": "send", "id": "q-0", "text": "first"})
    await wait_for(lambda: len(records(log)) >= 2, what="first answer")
    await asyncio.to_thread(bot.stop)
    for n in range(1, 6):
        await device.send({"type": "send", "id": f"q-{n}", "text": f"while down {n}"})
    await wait_for(lambda: len(device.view.acks) == 6, what="acks")
    await asyncio.sleep(0.3)
    assert not any(r.get("answered") == "q-1" for r in records(log))
    await agent_proc(AGENT, "bot", durable, str(log))
    await wait_for(
        lambda: sum(1 for r in records(log) if "answered" in r) == 6, what="all six answered"
    )
    await asyncio.sleep(0.5)  # a redelivery would show up now
    answered = collections.Counter(r["answered"] for r in records(log) if "answered" in r)
    assert answered == {f"q-{n}": 1 for n in range(6)}
    await wait_for(
        lambda: all(
            device.view.texts.get(f"reply-q-{n}")
            == answer_text("first" if n == 0 else f"while down {n}")
            for n in range(6)
        ),
        what="device sees every answer",
    )
    await device.close()
    await drop_durable(client, durable)


async def test_pool_answers_every_message_exactly_once(
    gateway: Gateway, nats_server: EmbeddedNats, client: agent.Client
) -> None:
    """Two workers sharing one durable, many sessions: every message answered exactly once."""
    durable = new_id("pool-")
    answered: list[tuple[str, str, str]] = []
    workers = [
        await agent.connect(nats_server.settings(f"worker-{n}"), log_settings=LogSettings())
        for n in range(2)
    ]

    async def work(name: str, worker: agent.Client) -> None:
        async for item in worker.inbox(durable, batch=2):
            if isinstance(item, UserMessage):
                async with worker.session(item.session).run(f"run-{item.message}") as run:
                    message = run.message(f"reply-{item.message}")
                    for word in ("one ", "two ", "three"):
                        await message.append(word)
                        await asyncio.sleep(0.005)
                    await message.complete()
                answered.append((name, item.session, item.message))
            await item.ack()

    await workers[0].inbox(durable).open()  # the durable exists before the first message
    tasks = [asyncio.create_task(work(f"w{n}", w)) for n, w in enumerate(workers)]
    sessions = [new_id("pool-s-") for _ in range(20)]
    async with aiohttp.ClientSession() as http:
        for n in range(3):
            for sid in sessions:
                response = await http.post(
                    f"{url(gateway)}/v1/sessions/{sid}/messages",
                    json={"id": f"q-{n}", "text": f"question {n}"},
                    headers={"Authorization": f"Bearer {token([sid])}"},
                )
                assert response.status == 201
    await wait_for(lambda: len(answered) >= 60, timeout=30, what="60 answers")
    await asyncio.sleep(0.5)
    counts = collections.Counter((s, m) for _, s, m in answered)
    assert len(counts) == 60 and set(counts.values()) == {1}
    assert {name for name, _, _ in answered} == {"w0", "w1"}
    for sid in sessions:
        page = await history.read(client.nc, client.log_settings.stream, sid, 0)
        done = {e.event["message"] for e in page.events if e.event["type"] == "message.complete"}
        assert done == {"reply-q-0", "reply-q-1", "reply-q-2"}
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for worker in workers:
        await worker.close()
    await drop_durable(client, durable)


async def test_inbox_yields_cancel_and_steer(gateway: Gateway, client: agent.Client) -> None:
    """Control signals sent by a device arrive in the inbox as typed Cancel and Steer items."""
    sid, durable = new_id("s-"), new_id("inbox-")
    inbox = client.inbox(durable)
    await inbox.open()
    device = Device(sid, token([sid], subject="alice"))
    await device.connect(url(gateway))
    await wait_for(lambda: device.view.live, what="caught up")
    await device.send({"type": "steer", "id": "st-1", "text": "be brief"})
    await device.send({"type": "cancel", "id": "c-1"})
    items: list[object] = []
    async for item in inbox:
        if item.session == sid:
            items.append(item)
        await item.ack()
        if len(items) == 2:
            break
    steer, cancel = items
    assert isinstance(steer, Steer) and steer.signal is not None
    assert steer.signal.text == "be brief" and steer.signal.participant == "alice"
    assert isinstance(cancel, Cancel) and cancel.signal is not None
    assert cancel.signal.control == "c-1" and cancel.signal.run is None
    await inbox.close()
    await device.close()
    await drop_durable(client, durable)


async def test_inbox_routes_signals_to_the_active_run(
    gateway: Gateway, client: agent.Client
) -> None:
    """A steer and a cancel that reach the agent only through its inbox (the run's live
    subscription is down) are handed to the session's active run before they are yielded."""
    sid, durable = new_id("s-"), new_id("inbox-")
    inbox = client.inbox(durable)
    await inbox.open()
    device = Device(sid, token([sid], subject="alice"))
    await device.connect(url(gateway))
    await wait_for(lambda: device.view.live, what="caught up")
    session = client.session(sid)
    async with session.run("run-1") as run:
        await run.control.stop()  # as if the live subscription were lost
        await device.send({"type": "steer", "id": "st-1", "run": "run-1", "text": "shorter"})
        await device.send({"type": "cancel", "id": "c-1", "run": "run-1"})
        await asyncio.sleep(0.2)
        assert run.steers.empty() and not run.cancelled.is_set()  # nothing came live
        routed: list[int] = []
        async for item in inbox:
            if item.session == sid and isinstance(item, (Cancel, Steer)):
                routed.append(item.routed)
            await item.ack()
            if len(routed) == 2:
                break
        assert routed == [1, 1]
        assert (await run.steers.get()).text == "shorter"
        assert run.cancelled.is_set() and run.cancel_reason() == "cancelled by alice"
    await wait_for(lambda: ("run.cancelled", "run-1") in device.view.others, what="run.cancelled")
    await inbox.close()
    await device.close()
    await drop_durable(client, durable)

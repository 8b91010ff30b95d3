"""Session log, SDK and gateway against a real nats-server and real WebSockets."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
import pytest

from services.gateway.app import Gateway
from shared import agent, history, subjects, wire
from shared.errors import PublishError
from shared.ids import new_id
from shared.server import EmbeddedNats
from tests.conftest import gateway_settings, token, wait_for
from tests.device import Device

WORDS = [f"w{i} " for i in range(60)]


def url(gateway: Gateway) -> str:
    return f"http://127.0.0.1:{gateway.port}"


async def test_reconnect_mid_answer_gets_every_event_once(
    gateway: Gateway, client: agent.Client
) -> None:
    """A device that drops mid-answer and reconnects with since ends with the full text, once."""
    sid = new_id("s-")
    device = Device(sid, token([sid]))
    await device.connect(url(gateway))
    session = client.session(sid)
    async with session.run("run-1") as run:
        message = run.message("m1")
        await message.start()
        for word in WORDS[:20]:
            await message.append(word)
        await wait_for(
            lambda: device.view.texts.get("m1") == "".join(WORDS[:20]), what="first 20 words live"
        )
        await device.disconnect()
        for word in WORDS[20:50]:
            await message.append(word)
        await device.connect(url(gateway))
        await wait_for(lambda: device.view.live, what="caught up")
        for word in WORDS[50:]:
            await message.append(word)
        await message.complete()
    await wait_for(lambda: ("run.completed", "run-1") in device.view.others, what="run end")
    assert device.view.texts == {"m1": "".join(WORDS)}
    assert device.view.others == [("run.started", "run-1"), ("run.completed", "run-1")]
    assert device.view.hellos[1]["recovered"] is True
    assert len(device.view.seqs) == len(set(device.view.seqs))
    await device.close()


async def test_reconnect_replay_is_compacted(gateway: Gateway, client: agent.Client) -> None:
    """Deltas missed while away arrive merged into one frame, not one frame per token."""
    sid = new_id("s-")
    device = Device(sid, token([sid]))
    await device.connect(url(gateway))
    async with client.session(sid).run("r") as run:
        message = run.message("m")
        await message.append("start ")
        await wait_for(lambda: device.view.texts.get("m") == "start ", what="first delta")
        await device.disconnect()
        frames_before = device.view.frames
        for word in WORDS:
            await message.append(word)
        await device.connect(url(gateway))
        await wait_for(lambda: device.view.live, what="caught up")
        # hello + one merged delta + caught_up
        assert device.view.frames - frames_before == 3
        assert device.view.texts["m"] == "start " + "".join(WORDS)
        await message.complete()
    await device.close()


async def test_late_device_gets_full_history_compacted(
    gateway: Gateway, client: agent.Client
) -> None:
    """A late device gets each finished message once and the live one as a snapshot."""
    sid = new_id("s-")
    session = client.session(sid)
    await session.post("question one", message_id="q1", role="user")
    async with session.run("r1") as run:
        done = run.message("a1")
        for word in WORDS:
            await done.append(word)
        await done.complete()
    run2 = session.run("r2")
    async with run2 as live_run:
        live = live_run.message("a2")
        for word in WORDS[:30]:
            await live.append(word)
        late = Device(sid, token([sid]))
        await late.connect(url(gateway), since=0)
        await wait_for(lambda: late.view.live, what="late device caught up")
        # q1, r1 started, a1 complete, r1 completed, r2 started, a2 snapshot
        assert len(late.view.seqs) == 6
        assert late.view.others == [
            ("run.started", "r1"),
            ("run.completed", "r1"),
            ("run.started", "r2"),
        ]
        assert late.view.texts == {
            "q1": "question one",
            "a1": "".join(WORDS),
            "a2": "".join(WORDS[:30]),
        }
        for word in WORDS[30:]:
            await live.append(word)
        await live.complete()
    await wait_for(lambda: ("run.completed", "r2") in late.view.others, what="r2 end")
    assert late.view.texts["a2"] == "".join(WORDS)
    await late.close()


async def test_retried_publish_is_stored_and_delivered_once(
    gateway: Gateway, client: agent.Client
) -> None:
    """The same chunk published twice (a retry) is stored once and reaches a device once."""
    sid = new_id("s-")
    device = Device(sid, token([sid]))
    await device.connect(url(gateway))
    await wait_for(lambda: device.view.live, what="caught up")
    subject = subjects.agent_message(sid, "m")
    start = {"v": 1, "type": wire.MESSAGE_START, "session": sid, "message": "m", "role": "agent"}
    delta = {
        "v": 1,
        "type": wire.MESSAGE_DELTA,
        "session": sid,
        "message": "m",
        "i": 0,
        "text": "once",
    }
    first = await client.publish(subject, start, wire.msg_id(sid, "a", "m", "start"))
    seq = await client.publish(subject, delta, wire.msg_id(sid, "a", "m", "0"))
    again = await client.publish(subject, delta, wire.msg_id(sid, "a", "m", "0"))
    assert again == seq and first < seq
    # A restarted agent replays the same run with the same ids: still stored once.
    restarted = agent.Message(client.session(sid), None, "m", 0)
    await restarted.start()
    await restarted.append("once")
    await wait_for(lambda: device.view.texts.get("m") == "once", what="delta")
    await asyncio.sleep(0.2)
    assert device.view.texts["m"] == "once"
    assert len(device.view.seqs) == 2
    await device.close()


async def test_send_from_device_is_deduplicated_and_acked(gateway: Gateway) -> None:
    """A user message resent with the same id is stored once; both sends are acknowledged."""
    sid = new_id("s-")
    a = Device(sid, token([sid], subject="alice"))
    b = Device(sid, token([sid], subject="alice"))
    await a.connect(url(gateway))
    await b.connect(url(gateway))
    await wait_for(lambda: a.view.caught_up >= 0 and len(a.view.hellos) == 1, what="hello")
    await a.send({"type": "send", "id": "hello-1", "text": "hi"})
    await a.send({"type": "send", "id": "hello-1", "text": "hi"})
    await wait_for(lambda: len(a.view.acks) == 2, what="two acks")
    assert [ack["duplicate"] for ack in a.view.acks] == [False, True]
    assert a.view.acks[0]["seq"] == a.view.acks[1]["seq"]
    await wait_for(lambda: b.view.texts.get("hello-1") == "hi", what="b sees message")
    await asyncio.sleep(0.1)
    assert len(b.view.seqs) == 1
    await a.close()
    await b.close()


async def test_http_history_is_compacted_and_paginated(
    gateway: Gateway, client: agent.Client
) -> None:
    """GET events pages through history with next/more, compacting deltas per page."""
    sid = new_id("s-")
    session = client.session(sid)
    for i in range(5):
        await session.post(f"note {i}", message_id=f"n{i}", role="user")
    async with session.run("r") as run:
        msg = run.message("m")
        for word in WORDS[:10]:
            await msg.append(word)
        headers = {"Authorization": f"Bearer {token([sid])}"}
        async with aiohttp.ClientSession() as http:
            base = f"{url(gateway)}/v1/sessions/{sid}/events"
            async with http.get(base, params={"limit": "3"}, headers=headers) as resp:
                page1 = orjson.loads(await resp.read())
            assert resp.status == 200 and page1["more"] is True
            assert [e["event"]["message"] for e in page1["events"]] == ["n0", "n1", "n2"]
            async with http.get(
                base, params={"since": str(page1["next"]), "limit": "100"}, headers=headers
            ) as resp:
                page2 = orjson.loads(await resp.read())
            assert page2["more"] is False
            types = [e["event"]["type"] for e in page2["events"]]
            assert types == [
                "message.created",
                "message.created",
                "run.started",
                "message.snapshot",
            ]
            assert page2["events"][-1]["event"]["text"] == "".join(WORDS[:10])
        await msg.complete()


async def test_edit_and_delete_are_reflected_in_replay(
    gateway: Gateway, client: agent.Client
) -> None:
    """An edited message replays with its new text only; a deleted one as a tombstone."""
    sid = new_id("s-")
    session = client.session(sid)
    async with session.run("r") as run:
        msg = run.message("m")
        await msg.append("draft answer")
        await msg.complete()
    await session.post("typo", message_id="q", role="user")
    await session.edit("m", "final answer")
    await session.delete("q", role="user")
    device = Device(sid, token([sid]))
    await device.connect(url(gateway), since=0)
    await wait_for(lambda: device.view.live, what="caught up")
    assert device.view.texts == {"m": "final answer"}
    assert device.view.deleted == {"q"}
    await device.close()


async def test_trimmed_history_is_reported_not_recovered(
    gateway: Gateway, client: agent.Client
) -> None:
    """A since older than the retained history gets recovered=false and a full snapshot."""
    sid = new_id("s-")
    session = client.session(sid)
    first = await session.post("old", message_id="old", role="user")
    await session.post("newer", message_id="new", role="user")
    # Trim the stream below the second message, as max_age would.
    reply = await client.nc.request(
        f"$JS.API.STREAM.PURGE.{client.log_settings.stream}",
        orjson.dumps({"seq": first + 1}),
        timeout=5,
    )
    assert orjson.loads(reply.data)["success"] is True
    device = Device(sid, token([sid]))
    await device.connect(url(gateway), since=first - 1)
    await wait_for(lambda: device.view.live, what="caught up")
    assert device.view.hellos[0]["recovered"] is False
    assert device.view.texts == {"new": "newer"}
    await device.close()


async def test_wrong_epoch_is_not_recovered(gateway: Gateway, client: agent.Client) -> None:
    """A position from another epoch (a recreated stream) is not trusted."""
    sid = new_id("s-")
    await client.session(sid).post("hello", message_id="h", role="user")
    device = Device(sid, token([sid]))
    await device.connect(url(gateway), since=1, epoch="2001-01-01T00:00:00Z")
    await wait_for(lambda: device.view.live, what="caught up")
    assert device.view.hellos[0]["recovered"] is False
    assert device.view.texts == {"h": "hello"}
    await device.close()


async def test_coalescing_window_rolls_appends_up(gateway: Gateway, client: agent.Client) -> None:
    """With a 50 ms window, many quick appends become a few deltas with the same text."""
    sid = new_id("s-")
    device = Device(sid, token([sid]))
    await device.connect(url(gateway))
    async with client.session(sid).run("r") as run:
        msg = run.message("m", coalesce_ms=50)
        for word in WORDS:
            await msg.append(word)
        await msg.complete()
    await wait_for(lambda: ("run.completed", "r") in device.view.others, what="run end")
    assert device.view.texts["m"] == "".join(WORDS)
    assert msg.chunks < 5
    await device.close()


async def test_checkpoints_bound_replay_and_skip_live_devices(
    gateway: Gateway, nats_server: object
) -> None:
    """Checkpoints keep at most N deltas stored per streaming message; live devices skip them."""
    from shared.settings import LogSettings

    c = await agent.connect(
        nats_server.settings("ckpt"),  # type: ignore[attr-defined]
        log_settings=LogSettings(),
        checkpoint_chunks=100,
    )
    sid = new_id("s-")
    live = Device(sid, token([sid]))
    await live.connect(url(gateway))
    await wait_for(lambda: live.view.live, what="live")
    words = [f"c{i} " for i in range(650)]
    run = agent.Run(c.session(sid), "r")
    message = run.message("m")
    for word in words[:325]:
        await message.append(word)
    away = Device(sid, token([sid]))
    await away.connect(url(gateway), since=0)
    await wait_for(lambda: away.view.live, what="mid-answer device caught up")
    assert away.view.texts == {"m": "".join(words[:325])}
    assert away.view.frames <= 4  # hello, one snapshot, caught_up (+ maybe one live delta)
    await away.disconnect()
    for word in words[325:]:
        await message.append(word)
    page = await history.read(c.nc, c.log_settings.stream, sid, 0)
    assert len(page.events) <= 1 + 100  # the last checkpoint and the deltas after it
    assert page.events[0].event["type"] == wire.MESSAGE_SNAPSHOT
    await away.connect(url(gateway))
    await wait_for(lambda: away.view.live, what="reconnected device caught up")
    await wait_for(lambda: live.view.texts.get("m") == "".join(words), what="live device text")
    assert away.view.texts == {"m": "".join(words)}
    # The live device got the start and every delta, and none of the six checkpoints.
    assert len(live.view.seqs) == 1 + len(words)
    await message.complete()
    await live.close()
    await away.close()
    await c.close()


async def test_long_replay_is_paced_not_overflowed(
    nats_server: EmbeddedNats, client: agent.Client
) -> None:
    """A replay longer than the send queue is paced by the socket; no slow-client close."""
    gw = Gateway(gateway_settings(nats_server, send_queue_frames=32))
    await gw.start()
    sid = new_id("s-")
    session = client.session(sid)
    for i in range(300):
        await session.post(f"message {i}", message_id=f"n{i}", role="user")
    device = Device(sid, token([sid]))
    await device.connect(url(gw), since=0)
    await wait_for(lambda: device.view.live, what="long replay done")
    assert len(device.view.texts) == 300
    assert device.connected
    await device.close()
    await gw.stop()


async def test_oversized_checkpoints_are_skipped_not_fatal(
    gateway: Gateway, nats_server: EmbeddedNats
) -> None:
    """A message whose text outgrows half the message size limit keeps streaming deltas."""
    from shared.settings import LogSettings

    small = LogSettings(max_msg_size=2048)  # as the SDK sees it; the stream is unchanged
    c = await agent.connect(
        nats_server.settings("big"), log_settings=small, checkpoint_chunks=10, ensure=False
    )
    sid = new_id("s-")
    message = agent.Run(c.session(sid), "r").message("m")
    chunk = "x" * 49 + " "
    for _ in range(100):
        await message.append(chunk)
    page = await history.read(c.nc, c.log_settings.stream, sid, 0)
    kinds = [e.event["type"] for e in page.events]
    assert kinds.count(wire.MESSAGE_SNAPSHOT) == 1  # taken while the text was small
    assert kinds.count(wire.MESSAGE_DELTA) > 10  # later ones skipped: deltas stay
    device = Device(sid, token([sid]))
    await device.connect(url(gateway), since=0)
    await wait_for(lambda: device.view.live, what="caught up")
    assert device.view.texts == {"m": chunk * 100}
    await device.close()
    await c.close()


async def test_delta_whose_ack_was_lost_is_resent_not_replaced(
    gateway: Gateway, client: agent.Client
) -> None:
    """A delta stored but reported failed (ack lost) is sent again the same before newer
    text, so no text is lost to the dedupe window."""
    sid = new_id("s-")
    device = Device(sid, token([sid]))
    await device.connect(url(gateway))
    await wait_for(lambda: device.view.live, what="caught up")
    session = client.session(sid)
    publish = session._publish
    fail_next = True

    async def flaky(subject: str, event: dict[str, object], dedupe: str, **kw: object) -> int:
        nonlocal fail_next
        seq = await publish(subject, event, dedupe, **kw)  # type: ignore[arg-type]
        if fail_next and event.get("text") == "two ":
            fail_next = False
            raise PublishError("ack lost")
        return seq

    session._publish = flaky  # type: ignore[method-assign]
    async with session.run("run-1") as run:
        message = run.message("m")
        await message.append("one ")
        with pytest.raises(PublishError):
            await message.append("two ")
        await message.append("three")
        await message.complete()
    assert message.text == "one two three"
    await wait_for(lambda: device.view.texts.get("m") == "one two three", what="complete text")
    page = await history.read(client.nc, client.log_settings.stream, sid, 0)
    [final] = [e.event for e in page.events if e.event.get("message") == "m"]
    assert final["text"] == "one two three"
    await device.close()


async def test_replay_cut_short_resumes_from_before_it(
    gateway: Gateway, client: agent.Client
) -> None:
    """A replayed event's sequence is not a resume point (protocol §7): after a replay cut
    between hello and caught_up, resuming from the saved position loses nothing."""
    sid = new_id("s-")
    session = client.session(sid)
    device = Device(sid, token([sid]))
    async with session.run("run-1") as run:
        message = run.message("a")
        await message.append("A1 ")
        await device.connect(url(gateway))
        await wait_for(lambda: device.view.texts.get("a") == "A1 ", what="first delta")
        await device.disconnect()
        await message.append("A2 ")  # merged with A3 on replay, sent after B
        await session.post("B", message_id="b", role="user")
        await message.append("A3")
        # The replay after the device's position: B first, then A's merged delta.
        ws_url = url(gateway).replace("http", "ws") + f"/v1/sessions/{sid}/ws"
        params = {"token": token([sid]), "since": str(device.view.position)}
        async with aiohttp.ClientSession() as http, http.ws_connect(ws_url, params=params) as ws:
            frames = []
            while not frames or frames[-1]["type"] != "caught_up":
                frames.append(orjson.loads((await ws.receive()).data))
        replayed = [f for f in frames if f["type"] == "event"]
        assert [f["event"]["type"] for f in replayed] == ["message.created", "message.delta"]
        assert replayed[1]["event"]["text"] == "A2 A3"
        # Cut after B: the view goes back to its hello and resumes from there.
        device.view.apply(frames[0])
        device.view.apply(replayed[0])
        assert device.view.texts["b"] == "B"
        await device.connect(url(gateway))
        await wait_for(lambda: device.view.live, what="caught up again")
        assert device.view.texts == {"a": "A1 A2 A3", "b": "B"}
        await message.complete()
    await device.close()


async def test_concurrent_connects_share_stream_state_reads(
    gateway: Gateway, client: agent.Client
) -> None:
    """Fifty devices connecting at once (a drained gateway's devices arriving) share the
    stream-state request in flight instead of one STREAM.INFO each, and all recover."""
    sid = new_id("s-")
    seq = await client.session(sid).post("hello", message_id="h", role="user")
    infos: list[object] = []

    async def count(msg: object) -> None:
        infos.append(msg)

    stream = client.log_settings.stream
    sub = await client.nc.subscribe(f"$JS.API.STREAM.INFO.{stream}", cb=count)
    await client.nc.flush()
    devices = [Device(sid, token([sid])) for _ in range(50)]
    await asyncio.gather(*(d.connect(url(gateway), since=seq) for d in devices))
    await wait_for(lambda: all(d.view.live for d in devices), what="all caught up")
    await sub.unsubscribe()
    assert all(d.view.hellos[0]["recovered"] is True for d in devices)
    assert 1 <= len(infos) < 25, len(infos)
    await asyncio.gather(*(d.close() for d in devices))

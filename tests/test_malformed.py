"""Garbage on the NATS subjects each service consumes: logged, counted, never a crash.

A raw nats client publishes malformed messages (not JSON, wrong shapes, bad headers) to
the gateway's live subjects, the presence service's subjects and the notifier's stream
subjects; each service then proves it still works with a real, well-formed flow.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiohttp
import nats
import orjson

from services.gateway.app import Gateway
from shared import agent, subjects, webhooks
from shared.ids import new_id
from shared.server import EmbeddedNats
from tests.conftest import ServiceProcess, token, wait_for
from tests.device import Device
from tests.test_notifier import (  # noqa: F401 - fixtures used by name
    Receiver,
    Start,
    admin_gateway,
    bot,
    finish_run,
    notifier,
    receiver,
    subscribe,
)
from tests.test_presence import agent_process, leaves, presence_gateway  # noqa: F401

GARBAGE = [
    b"",
    b"not json",
    b"[1, 2, 3]",
    b'{"no": "type"}',
    b'{"type": 7}',
    b"\xff\xfe\x00",
    b'{"type": "message.delta"',
]


async def raw_connect(server: EmbeddedNats) -> nats.NATS:
    settings = server.settings("garbage")
    return await nats.connect(
        servers=list(settings.servers), user=settings.user, password=settings.password.reveal()
    )


async def test_gateway_survives_garbage_on_live_subjects(
    gateway: Gateway, nats_server: EmbeddedNats, client: agent.Client
) -> None:
    """Malformed live events and presence changes are counted in /healthz; delivery goes on."""
    sid = new_id("s-")
    base = f"http://127.0.0.1:{gateway.port}"
    device = Device(sid, token([sid]))
    await device.connect(base)
    await wait_for(lambda: device.view.live, what="caught up")
    nc = await raw_connect(nats_server)
    live = f"{subjects.LIVE_ROOT}.{sid}"
    try:
        for data in GARBAGE:
            await nc.publish(f"{live}.a.m1", data)  # no Nats-Sequence header at all
            await nc.publish(f"{live}.a.m1", data, headers={subjects.SEQUENCE: "not-a-number"})
            await nc.publish(f"{live}.a.m1", data, headers={subjects.SEQUENCE: "0"})
        snapshot = orjson.dumps({"v": 1, "type": "message.snapshot", "message": "m", "text": ""})
        await nc.publish(
            f"{live}.a.m",
            snapshot,
            # sequence 0: parsed past the bad header, then dropped (no device is behind 0)
            headers={subjects.SEQUENCE: "0", subjects.LAST_SEQUENCE: "garbage"},
        )
        for data in GARBAGE:
            await nc.publish(f"{subjects.PRESENCE_LIVE_ROOT}.{sid}.agent.x.y", data)
            await nc.publish(
                f"{subjects.PRESENCE_LIVE_ROOT}.{sid}.user.a.b",
                data,
                headers={subjects.SEQUENCE: "zzz"},
            )
        await nc.flush()
    finally:
        await nc.close()
    expected = len(GARBAGE) * 3 + len(GARBAGE) * 2  # every live and presence garbage message
    await wait_for(lambda: gateway.hubs.malformed >= expected, what="garbage counted")
    await client.session(sid).post("still here", message_id="after-garbage")
    await wait_for(lambda: device.view.texts.get("after-garbage") == "still here", what="delivery")
    assert device.connected and device.view.errors == []
    async with aiohttp.ClientSession() as http, http.get(f"{base}/healthz") as resp:
        health = await resp.json()
    assert resp.status == 200 and health["malformed_events"] == gateway.hubs.malformed
    await device.close()


async def test_presence_service_survives_garbage(
    presence_gateway: Gateway,  # noqa: F811
    presence_process: Callable[..., Awaitable[ServiceProcess]],
    agent_process: Callable[..., Awaitable[ServiceProcess]],  # noqa: F811
    nats_server: EmbeddedNats,
) -> None:
    """Garbage on tether.presence.> and the $SYS disconnect subject; crashes still detected."""
    service = presence_process.started[0]  # type: ignore[attr-defined]
    sid = new_id("s-")
    nc = await raw_connect(nats_server)
    sys_nc = await nats.connect(
        servers=[nats_server.url],
        user=nats_server.creds.sys_user,
        password=nats_server.creds.sys_password.reveal(),
    )
    try:
        for data in GARBAGE:
            await nc.publish(f"{subjects.PRESENCE_LIVE_ROOT}.{sid}.agent.bot.c1", data)
            await nc.publish(
                f"{subjects.PRESENCE_LIVE_ROOT}.{sid}.agent.bot.c2",
                data,
                headers={subjects.SEQUENCE: "x", subjects.STREAM_SUBJECT: "$KV.nope"},
            )
            await sys_nc.publish("$SYS.ACCOUNT.garbage.DISCONNECT", data)
        await sys_nc.publish(
            "$SYS.ACCOUNT.garbage.DISCONNECT",
            orjson.dumps({"server": {"id": 5}, "client": {"id": "not-an-int"}}),
        )
        await nc.flush()
        await sys_nc.flush()
    finally:
        await nc.close()
        await sys_nc.close()
    device = Device(sid, token([sid]))
    await device.connect(f"http://127.0.0.1:{presence_gateway.port}")
    bot_process = await agent_process(sid, "bot")
    await wait_for(
        lambda: any(m["participant"] == "bot" for m in device.view.members.values()),
        what="agent present",
    )
    bot_process.kill()
    await wait_for(lambda: bool(leaves(device, "bot")), timeout=10, what="crash detected")
    assert leaves(device, "bot")[0]["reason"] == "crashed"
    assert service.alive
    await device.close()


async def test_notifier_survives_garbage_on_its_subjects(
    admin_gateway: Gateway,  # noqa: F811
    bot: agent.Client,  # noqa: F811
    receiver: Receiver,  # noqa: F811
    notifier: Start,  # noqa: F811
    own_nats: EmbeddedNats,
) -> None:
    """Malformed run events and delivery jobs are skipped; a real run still gets its webhook."""
    sid = new_id("s-")
    await subscribe(admin_gateway, receiver.url, filter={"session": sid})
    service = await notifier()
    nc = await raw_connect(own_nats)
    js = nc.jetstream()
    try:
        run_subject = f"{subjects.LOG_ROOT}.{sid}.{subjects.RUN}.run-x"
        for data in GARBAGE:
            await js.publish(run_subject, data)
        for event in (
            {"type": "run.completed", "run": ["not", "an", "id"], "user": 5, "ts": "x"},
            {"type": "run.failed", "error": {"deep": [1]}, "run": None},
            {"type": "approval.requested", "options": "yes", "expires_at": []},
        ):
            await js.publish(run_subject, orjson.dumps(event))
        deliver = f"{subjects.DELIVER_ROOT}.wh-garbage"
        for data in [
            *GARBAGE,
            orjson.dumps({"webhook_id": "x", "subscription": "not a valid key"}),
            orjson.dumps({"webhook_id": [1], "subscription": {"a": 1}}),
        ]:
            await js.publish(deliver, data, stream=subjects.DELIVERIES_STREAM)
    finally:
        await nc.close()
    await asyncio.sleep(0.5)
    await finish_run(bot, sid)

    def real() -> list[dict[str, object]]:
        return [
            r.payload
            for r in receiver.requests
            if r.payload.get("user") == "alice" and r.payload["type"] == "run.completed"
        ]

    await wait_for(lambda: len(real()) == 1, timeout=15, what="the real webhook")
    assert real()[0]["session"] == sid
    assert not service.stopping.is_set()
    assert webhooks.EVENT_TYPES  # the service's event filter is in place

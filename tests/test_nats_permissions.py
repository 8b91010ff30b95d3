"""NATS users per role (shared/permissions.py) on a real nats-server: each role can do its
work, and every attempt outside its permissions is refused by the server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import nats
import orjson
import pytest
from nats.aio.client import Client as NATS
from nats.errors import TimeoutError as NatsTimeoutError

from services.gateway.app import Gateway
from shared import agent, presence, subjects, wire
from shared.ids import new_id
from shared.server import EmbeddedNats
from shared.settings import LogSettings
from tests.conftest import ServiceProcess, token, wait_for
from tests.device import Device

Connect = Callable[[str], Awaitable["RoleConnection"]]


class RoleConnection:
    """A raw NATS connection as one role's user, collecting the server's refusals."""

    def __init__(self) -> None:
        self.nc: NATS | None = None
        self.errors: list[str] = []

    async def open(self, server: EmbeddedNats, role: str) -> RoleConnection:
        user, password = server.creds.user(role)

        async def on_error(exc: Exception) -> None:
            self.errors.append(str(exc))

        self.nc = await nats.connect(
            server.url,
            user=user,
            password=password.reveal(),
            error_cb=on_error,
            allow_reconnect=False,
        )
        return self

    @property
    def conn(self) -> NATS:
        if self.nc is None:
            raise RuntimeError("not connected")
        return self.nc

    async def refused(self, what: str) -> None:
        """Wait for the server's permissions violation naming ``what``."""
        await wait_for(
            lambda: any(
                "permissions violation" in e.lower() and what.lower() in e.lower()
                for e in self.errors
            ),
            5,
            f"refusal of {what}",
        )

    async def publish_refused(self, subject: str, payload: bytes = b"{}") -> None:
        """A publish (with a reply, like a JetStream publish) that must be refused."""
        with pytest.raises((NatsTimeoutError, TimeoutError)):
            await self.conn.request(subject, payload, timeout=0.5)
        await self.refused(subject)


@pytest.fixture
async def as_role(nats_server: EmbeddedNats) -> AsyncIterator[Connect]:
    opened: list[RoleConnection] = []

    async def connect(role: str) -> RoleConnection:
        connection = await RoleConnection().open(nats_server, role)
        opened.append(connection)
        return connection

    yield connect
    for connection in opened:
        if connection.nc is not None:
            await connection.nc.close()


async def test_agent_cannot_forge_user_input(gateway: Gateway, as_role: Connect) -> None:
    """An agent's user cannot store a user message or a control signal."""
    bot = await as_role("agent")
    sid = new_id("s-")
    event = wire.dumps({"v": 1, "type": "message.created", "session": sid, "text": "forged"})
    await bot.publish_refused(subjects.user_message(sid, "m1"), event)
    await bot.publish_refused(f"tether.s.{sid}.c.c1", event)


async def test_agent_cannot_reach_sys(as_role: Connect) -> None:
    """No application user publishes to or subscribes on $SYS (the agent and the admin)."""
    for role in ("agent", "admin"):
        conn = await as_role(role)
        await conn.publish_refused("$SYS.REQ.SERVER.PING.CONNZ")
        await conn.conn.subscribe("$SYS.ACCOUNT.>")
        await conn.refused("$SYS.ACCOUNT.>")


async def test_agent_cannot_read_presence_bucket(gateway: Gateway, as_role: Connect) -> None:
    """An agent's user cannot read the presence bucket (direct get, consumer, raw subjects)
    nor write a user's presence."""
    bot = await as_role("agent")
    stream = subjects.PRESENCE_STREAM
    request = orjson.dumps({"seq": 1, "next_by_subj": f"{subjects.PRESENCE_KEY_ROOT}.>"})
    await bot.publish_refused(f"$JS.API.DIRECT.GET.{stream}", request)
    await bot.publish_refused(f"$JS.API.CONSUMER.CREATE.{stream}", b"{}")
    await bot.conn.subscribe(f"{subjects.PRESENCE_KEY_ROOT}.>")
    await bot.refused(f"{subjects.PRESENCE_KEY_ROOT}.>")
    await bot.publish_refused(f"{subjects.PRESENCE_KEY_ROOT}.s1.user.alice.c1")


async def test_agent_cannot_read_secrets_or_manage_streams(
    gateway: Gateway, as_role: Connect
) -> None:
    """An agent's user cannot read webhook subscriptions (signing secrets), read positions
    or dead letters, nor delete or purge the session stream or another durable."""
    bot = await as_role("agent")
    for bucket in (subjects.WEBHOOKS_BUCKET, subjects.CURSORS_BUCKET):
        await bot.publish_refused(f"$JS.API.DIRECT.GET.KV_{bucket}", b'{"last_by_subj":"x"}')
    await bot.publish_refused(f"$JS.API.STREAM.DELETE.{subjects.DEFAULT_STREAM}")
    await bot.publish_refused(f"$JS.API.STREAM.PURGE.{subjects.DEFAULT_STREAM}")
    await bot.publish_refused(f"$JS.API.CONSUMER.DELETE.{subjects.DEFAULT_STREAM}.tether-x")


async def test_gateway_and_notifier_cannot_write_agent_text(
    gateway: Gateway, as_role: Connect
) -> None:
    """The gateway's user cannot store agent messages; the notifier's cannot store anything
    in the session log."""
    sid = new_id("s-")
    gw = await as_role("gateway")
    await gw.publish_refused(subjects.agent_message(sid, "m1"))
    notifier = await as_role("notifier")
    await notifier.publish_refused(subjects.user_message(sid, "m1"))
    await notifier.publish_refused(subjects.agent_message(sid, "m1"))


async def test_agent_role_does_its_work(
    gateway: Gateway,
    nats_server: EmbeddedNats,
    presence_process: Callable[..., Awaitable[ServiceProcess]],
) -> None:
    """An agent connected as the agent user streams an answer a device sees, reads its
    inbox, and asks (through the presence service) who is listening."""
    await presence_process(nats_server)
    bot = await agent.connect(
        nats_server.settings("perm-agent", role="agent"), log_settings=LogSettings()
    )
    sid, durable = new_id("s-"), new_id("inbox-")
    inbox = bot.inbox(durable)
    await inbox.open()
    device = Device(sid, token([sid], subject="alice"))
    await device.connect(f"http://127.0.0.1:{gateway.port}")
    await wait_for(lambda: device.view.live, what="caught up")
    session = bot.session(sid)
    listeners = await session.listeners()
    assert [m["participant"] for m in listeners] == ["alice"]
    await device.send({"type": "send", "id": "q1", "text": "hello"})
    async for item in inbox:
        await item.ack()
        if item.session == sid:
            break
    async with session.run("run-1") as run:
        message = run.message("reply-1")
        await message.start()
        await message.append("hi ")
        await message.append("alice")
        await message.complete()
    await wait_for(lambda: device.view.texts.get("reply-1") == "hi alice", what="answer")
    await inbox.close()
    await device.close()
    await bot.close()


async def test_presence_ask_answers_like_the_bucket(
    gateway: Gateway,
    nats_server: EmbeddedNats,
    presence_process: Callable[..., Awaitable[ServiceProcess]],
) -> None:
    """The presence service's answer to ``ask`` equals a direct read of the bucket."""
    await presence_process(nats_server)
    sid = new_id("s-")
    device = Device(sid, token([sid], subject="bob"))
    await device.connect(f"http://127.0.0.1:{gateway.port}")
    await wait_for(lambda: device.view.live, what="caught up")
    nc = await nats.connect(nats_server.url, **_admin(nats_server))
    try:
        asked = await presence.ask(nc, sid)
        direct = await presence.snapshot(nc, subjects.presence_filter(sid))
        assert asked == direct and len(asked) == 1
    finally:
        await nc.close()
        await device.close()
    await asyncio.sleep(0)


def _admin(server: EmbeddedNats) -> dict[str, str]:
    user, password = server.creds.user("admin")
    return {"user": user, "password": password.reveal()}

"""The demo agent: answers every user message by streaming a reply into the session.

It reads user messages through a durable JetStream consumer (so messages sent while it
was down are answered when it comes back), and derives every id from the user message
(run ``run-{message}``), so a redelivered message republishes the same dedupe ids.
"""

from __future__ import annotations

import asyncio
import signal

import orjson
import structlog
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from shared import agent, subjects, wire
from shared.errors import InvalidId
from shared.settings import Env

log = structlog.get_logger(__name__)

DURABLE = "tether-demo-agent"
CONCURRENCY = 16

REPLY = (
    "Hello from Tether's demo agent. You wrote: \u201c{text}\u201d. "
    "This answer streams token by token into a durable session on NATS JetStream. "
    "Close the tab, switch devices or restart the gateway mid-answer: when you come back "
    "you get the accumulated text as one snapshot and then the live tokens, with nothing "
    "lost and nothing repeated."
)


def tokens_of(text: str) -> list[str]:
    words = text.split(" ")
    return [word if i == 0 else " " + word for i, word in enumerate(words)]


async def answer(
    client: agent.Client, session_id: str, message_id: str, text: str, tokens_per_second: float
) -> None:
    session = client.session(session_id)
    async with session.run(f"run-{message_id}", reply_to=message_id) as run:
        message = run.message(f"reply-{message_id}", coalesce_ms=0)
        await message.start()
        for token in tokens_of(REPLY.format(text=text[:200])):
            await message.append(token)
            await asyncio.sleep(1.0 / tokens_per_second)
        await message.complete()


async def run_demo_agent(env: Env | None = None) -> None:
    env = env or Env()
    rate = env.number("TETHER_DEMO_TOKENS_PER_SECOND", 25.0, minimum=0.1)
    client = await agent.connect()
    js = client.nc.jetstream()
    stream = client.log_settings.stream
    await js.add_consumer(
        stream,
        ConsumerConfig(
            durable_name=DURABLE,
            filter_subject=f"{subjects.LOG_ROOT}.*.{subjects.USER}.*",
            deliver_policy=DeliverPolicy.NEW,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=120,
            max_deliver=3,
            max_ack_pending=CONCURRENCY,
        ),
    )
    sub = await js.pull_subscribe_bind(DURABLE, stream)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(orjson.dumps({"event": "ready", "service": "demo-agent"}).decode(), flush=True)
    log.info("demo_agent_ready", stream=stream)
    running: set[asyncio.Task[None]] = set()

    async def handle(msg: object) -> None:
        data = getattr(msg, "data", b"")
        event = wire.decode_event(data)
        parsed = subjects.parse(getattr(msg, "subject", ""))
        try:
            if (
                event is not None
                and parsed is not None
                and event.get("type") == wire.MESSAGE_CREATED
                and isinstance(event.get("text"), str)
            ):
                await answer(client, parsed.session, parsed.key, event["text"], rate)
        except InvalidId:
            log.warning("demo_agent_skipped", subject=getattr(msg, "subject", ""))
        except Exception as exc:  # noqa: BLE001 - one bad message must not stop the agent
            log.warning("demo_agent_answer_failed", error=repr(exc))
        await msg.ack()  # type: ignore[attr-defined]

    while not stop.is_set():
        try:
            msgs = await sub.fetch(CONCURRENCY - len(running) or 1, timeout=1.0)
        except (TimeoutError, NatsTimeoutError):
            continue
        for msg in msgs:
            task = asyncio.create_task(handle(msg))
            running.add(task)
            task.add_done_callback(running.discard)
    log.info("demo_agent_stopping", in_flight=len(running))
    if running:
        await asyncio.wait(running, timeout=10.0)
    await sub.unsubscribe()
    await client.close()

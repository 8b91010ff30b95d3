"""The demo agent: answers every user message by streaming a reply into the session.

It reads user messages through its durable inbox (``client.inbox()``, so messages sent
while it was down are answered when it comes back), and derives every id from the user message
(run ``run-{message}``), so a redelivered message republishes the same dedupe ids. A message
starting with ``/approve`` makes it ask first (an approval with the options yes and no).
"""

from __future__ import annotations

import asyncio

import structlog

from shared import agent, ops, subjects
from shared.errors import InvalidId
from shared.inbox import UserMessage
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


# A message starting with this asks the user first (an approval, docs/protocol.md §17).
ASK_COMMAND = "/approve"
ASK_PROMPT = "Shall I stream the answer?"
ASK_TIMEOUT = 60.0  # well within the inbox's ack wait (120 s): no redelivery while asking
DECLINED = "Okay, I will not answer that one."
UNANSWERED = "Nobody answered in time, so I did not answer."


def tokens_of(text: str) -> list[str]:
    words = text.split(" ")
    return [word if i == 0 else " " + word for i, word in enumerate(words)]


async def answer(
    client: agent.Client, session_id: str, message_id: str, text: str, tokens_per_second: float
) -> None:
    session = client.session(session_id)
    async with session.run(f"run-{message_id}", reply_to=message_id) as run:
        reply = REPLY.format(text=text[:200])
        if text.strip().lower().startswith(ASK_COMMAND):
            decision = await run.request_approval(ASK_PROMPT, ["yes", "no"], timeout=ASK_TIMEOUT)
            if decision.option != "yes":
                reply = DECLINED if decision.option else UNANSWERED
        message = run.message(f"reply-{message_id}", coalesce_ms=0, resume="continue")
        await message.start()
        answer_text = ""
        for token in tokens_of(reply):
            if run.cancelled.is_set():
                break
            answer_text += token
            await message.extend_to(answer_text)
            await asyncio.sleep(1.0 / tokens_per_second)
        await message.complete()


async def run_demo_agent(env: Env | None = None) -> None:
    env = env or Env()
    rate = env.number("TETHER_DEMO_TOKENS_PER_SECOND", 25.0, minimum=0.1)
    metrics = ops.Metrics()
    client = await agent.connect()
    metrics.watch(client.nc)
    inbox = client.inbox(DURABLE, batch=CONCURRENCY)
    await inbox.open()

    async def readiness() -> str | None:
        streams = [*client.log_settings.streams, subjects.PRESENCE_STREAM]
        return await ops.nats_readiness(client.nc, streams)

    health = ops.Ops("demo-agent", metrics, readiness)
    ops_server = ops.OpsServer(health, ops.OpsSettings.from_env("demo-agent", env))
    await ops_server.start()
    stop = ops.stop_on_signals()
    ops.announce_ready("demo-agent", ops_server.port)
    log.info("demo_agent_ready", durable=DURABLE)
    running: set[asyncio.Task[None]] = set()
    slots = asyncio.Semaphore(CONCURRENCY)

    async def handle(item: UserMessage) -> None:
        try:
            await answer(client, item.session, item.message, item.text, rate)
        except InvalidId:
            log.warning("demo_agent_skipped", session=item.session, message=item.message)
        except Exception as exc:  # noqa: BLE001 - one bad message must not stop the agent
            log.warning("demo_agent_answer_failed", error=repr(exc))
        finally:
            slots.release()
        await item.ack()

    async def consume() -> None:
        async for item in inbox:
            if not isinstance(item, UserMessage):
                await item.ack()  # cancel / steer reach a running answer live
                continue
            await slots.acquire()
            task = asyncio.create_task(handle(item))
            running.add(task)
            task.add_done_callback(running.discard)

    consumer = asyncio.create_task(consume())
    await stop.wait()
    health.start_draining()  # then: no new messages, answers in flight finish, close
    await inbox.close()
    consumer.cancel()
    await asyncio.gather(consumer, return_exceptions=True)
    log.info("demo_agent_stopping", in_flight=len(running))
    if running:
        await asyncio.wait(running, timeout=10.0)
    await client.close()
    await ops_server.stop()

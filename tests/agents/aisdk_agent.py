"""A slow inbox agent for the AI SDK tests: answers every user message in TEST_TOKENS tokens.

    python -m tests.agents.aisdk_agent DURABLE

The answer to message M is run ``run-M`` (``reply_to`` M), message ``reply-M``, text
``answer_text(text)``: tokens ``t0 `` ... streamed one every TEST_TOKEN_DELAY seconds
(default 0.05), so a client can reconnect mid-answer. Prints {"event": "ready"} once the
inbox is open.
"""

from __future__ import annotations

import asyncio
import os
import sys

import orjson

from shared import agent
from shared.inbox import UserMessage


def answer_tokens(text: str, count: int) -> list[str]:
    return [f"echo({text}) "] + [f"t{i} " for i in range(count - 1)]


async def main(durable: str) -> None:
    delay = float(os.environ.get("TEST_TOKEN_DELAY", "0.05"))
    count = int(os.environ.get("TEST_TOKENS", "40"))
    client = await agent.connect(agent_id="aisdk-agent")
    inbox = client.inbox(durable)
    await inbox.open()
    print(orjson.dumps({"event": "ready", "instance": client.instance}).decode(), flush=True)
    async for item in inbox:
        if not isinstance(item, UserMessage):
            await item.ack()
            continue
        session = client.session(item.session)
        async with session.run(f"run-{item.message}", reply_to=item.message) as run:
            message = run.message(f"reply-{item.message}", resume="continue")
            await message.start()
            text = ""
            for token in answer_tokens(item.text, count):
                if run.cancelled.is_set():
                    break
                text += token
                await message.extend_to(text)
                await asyncio.sleep(delay)
            await message.complete()
        await item.ack()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))

"""A real inbox agent process for tests: answers every user message of its durable inbox.

    python -m tests.agents.inbox_agent AGENT_ID DURABLE LOG_FILE

Each answer is run ``run-{message}``, message ``reply-{message}``, text
``answer(<text>)`` streamed in tokens every TEST_TOKEN_DELAY seconds (default 0.01).
A cancelled run stops streaming and ends ``run.cancelled``. Every answer, cancel and
steer it receives is appended to LOG_FILE as a JSON line (with wall-clock ``at``).
Prints {"event": "ready"} once the inbox is open.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import orjson

from shared import agent
from shared.inbox import UserMessage
from shared.runcontrol import Signal


def answer_text(text: str) -> str:
    return f"answer({text}) " + " ".join(
        f"w{i}" for i in range(int(os.environ.get("TEST_WORDS", "5")))
    )


async def main(agent_id: str, durable: str, log_path: str) -> None:
    delay = float(os.environ.get("TEST_TOKEN_DELAY", "0.01"))
    client = await agent.connect(agent_id=agent_id)
    inbox = client.inbox(durable, ack_wait=float(os.environ.get("TEST_ACK_WAIT", "30")))
    await inbox.open()
    out = Path(log_path).open("ab")  # noqa: ASYNC230 - opened once, before serving

    def note(**record: object) -> None:
        out.write(orjson.dumps({**record, "worker": agent_id, "at": time.time()}) + b"\n")
        out.flush()

    async def respond(item: UserMessage) -> None:
        def on_cancel(signal: Signal) -> None:
            note(cancelled=f"run-{item.message}", control=signal.control)

        session = client.session(item.session)
        async with session.run(f"run-{item.message}", on_cancel=on_cancel) as run:
            note(started=item.message, session=item.session)
            message = run.message(f"reply-{item.message}")
            await message.start()
            for token in answer_text(item.text).split(" "):
                if run.cancelled.is_set():
                    break
                while not run.steers.empty():
                    steer = run.steers.get_nowait()
                    note(steer=steer.text, run=run.id)
                await message.append(token + " ")
                await asyncio.sleep(delay)
            await message.complete()
        note(answered=item.message, session=item.session)
        await item.ack()

    print(orjson.dumps({"event": "ready", "instance": client.instance}).decode(), flush=True)
    async for item in inbox:
        if isinstance(item, UserMessage):
            await respond(item)
        else:
            await item.ack()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))

"""A real agent process for crash-safe resume tests: streams one answer into a session.

    python -m tests.agents.resume_agent SESSION MODE ANSWER

Run ``run-resume``, message ``run-resume-m1``, ``resume=MODE`` (``continue`` or
``reset``); streams ANSWER word by word every TEST_TOKEN_DELAY seconds with
``message.extend_to``, then completes. Prints {"event": "ready", "stored": <text>} once
the message has started (so the test sees what it resumed from).
"""

from __future__ import annotations

import asyncio
import os
import sys

import orjson

from shared import agent


async def main(session_id: str, mode: str, answer: str) -> None:
    delay = float(os.environ.get("TEST_TOKEN_DELAY", "0.02"))
    client = await agent.connect(agent_id="resumer")
    session = client.session(session_id)
    async with session.run("run-resume") as run:
        message = run.message(resume=mode)
        await message.start()
        ready = {"event": "ready", "stored": message.stored_text, "chunks": message.chunks}
        print(orjson.dumps(ready).decode(), flush=True)
        words = answer.split(" ")
        for n in range(1, len(words) + 1):
            await message.extend_to(" ".join(words[:n]))
            await asyncio.sleep(delay)
        await message.complete()
    await client.close()
    print(orjson.dumps({"event": "done"}).decode(), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))

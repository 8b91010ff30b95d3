"""A real agent process for tests: joins a session, streams until killed.

    python -m tests.agents.streaming_agent SESSION AGENT_ID

NATS settings come from TETHER_NATS_* variables. Prints {"event": "ready"} once its
presence says ``streaming``.
"""

from __future__ import annotations

import asyncio
import sys

import orjson

from shared import agent


async def main(session_id: str, agent_id: str) -> None:
    client = await agent.connect(agent_id=agent_id)
    session = client.session(session_id)
    run = agent.Run(session, f"run-{agent_id}")
    await run.start()
    message = run.message()
    await message.start()
    print(orjson.dumps({"event": "ready", "instance": client.instance}).decode(), flush=True)
    i = 0
    while True:
        await message.append(f"t{i} ")
        i += 1
        await asyncio.sleep(0.05)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))

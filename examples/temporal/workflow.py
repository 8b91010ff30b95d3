"""A Temporal workflow with one activity that streams a deterministic answer into a session."""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from shared import agent
    from shared.temporal import stream_activity

TASK_QUEUE = "tether-temporal-example"
WORDS = 40


def answer_text(question: str) -> str:
    """The deterministic answer: a retried attempt produces the very same text."""
    return f"answer({question}) " + " ".join(f"w{i}" for i in range(WORDS))


_client: agent.Client | None = None


async def tether_client() -> agent.Client:
    global _client
    if _client is None:
        _client = await agent.connect(agent_id="temporal-worker")
    return _client


@activity.defn
async def stream_answer(session_id: str, question: str) -> str:
    delay = float(os.environ.get("TEMPORAL_TOKEN_DELAY", "0.05"))
    words = answer_text(question).split(" ")
    client = await tether_client()
    async with stream_activity(client, session_id) as message:
        for n in range(1, len(words) + 1):
            await message.extend_to(" ".join(words[:n]))
            activity.heartbeat(n)
            await asyncio.sleep(delay)
    return " ".join(words)


@workflow.defn
class AnswerWorkflow:
    @workflow.run
    async def run(self, session_id: str, question: str) -> str:
        return await workflow.execute_activity(
            stream_answer,
            args=[session_id, question],
            start_to_close_timeout=timedelta(seconds=60),
            heartbeat_timeout=timedelta(seconds=2),
            retry_policy=RetryPolicy(
                initial_interval=timedelta(milliseconds=200), maximum_attempts=5
            ),
        )

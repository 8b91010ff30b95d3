"""A Temporal workflow with one activity that streams a deterministic answer into a session."""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from shared import agent
    from shared.temporal import store_run_failed, stream_activity, workflow_run_id

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
    """Stream the answer word by word. Questions "fail" and "hang" are for the tests: the
    first raises after three words, the second stops heartbeating (a stuck attempt)."""
    delay = float(os.environ.get("TEMPORAL_TOKEN_DELAY", "0.05"))
    words = answer_text(question).split(" ")
    client = await tether_client()
    async with stream_activity(client, session_id) as message:
        for n in range(1, len(words) + 1):
            if n == 4 and question == "fail":
                raise RuntimeError("the model is unavailable")
            if n == 4 and question == "hang":
                await asyncio.sleep(30)  # past the heartbeat timeout: Temporal gives up
                raise RuntimeError("stuck")
            await message.extend_to(" ".join(words[:n]))
            activity.heartbeat(n)
            await asyncio.sleep(delay)
    return " ".join(words)


@activity.defn
async def fail_run(session_id: str, run_id: str, error: str) -> None:
    """Close the session's run as failed (a no-op if the activity already ended it)."""
    await store_run_failed(await tether_client(), session_id, run_id, error)


@workflow.defn
class AnswerWorkflow:
    @workflow.run
    async def run(self, session_id: str, question: str, attempts: int = 5) -> str:
        try:
            return await workflow.execute_activity(
                stream_answer,
                args=[session_id, question],
                start_to_close_timeout=timedelta(seconds=60),
                heartbeat_timeout=timedelta(seconds=2),
                retry_policy=RetryPolicy(
                    initial_interval=timedelta(milliseconds=200), maximum_attempts=attempts
                ),
            )
        except ActivityError as exc:
            # Every attempt failed: make sure the session's run is closed too.
            await workflow.execute_activity(
                fail_run,
                args=[session_id, workflow_run_id(), str(exc.cause or exc)],
                start_to_close_timeout=timedelta(seconds=30),
            )
            raise

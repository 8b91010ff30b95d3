"""Run the example's Temporal worker: ``python -m examples.temporal.worker``.

Env: TEMPORAL_ADDRESS (default localhost:7233) and the usual TETHER_NATS_* settings.
Prints {"event": "ready"} once it polls the task queue.
"""

from __future__ import annotations

import asyncio
import os

import orjson
from temporalio.client import Client
from temporalio.worker import Worker

from examples.temporal.workflow import TASK_QUEUE, AnswerWorkflow, fail_run, stream_answer


async def main() -> None:
    temporal = await Client.connect(os.environ.get("TEMPORAL_ADDRESS", "localhost:7233"))
    worker = Worker(
        temporal,
        task_queue=TASK_QUEUE,
        workflows=[AnswerWorkflow],
        activities=[stream_answer, fail_run],
    )
    async with worker:
        print(orjson.dumps({"event": "ready"}).decode(), flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())

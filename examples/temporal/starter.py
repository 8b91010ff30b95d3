"""Start the example workflow: ``python -m examples.temporal.starter SESSION [QUESTION]``."""

from __future__ import annotations

import asyncio
import os
import sys

from temporalio.client import Client

from examples.temporal.workflow import TASK_QUEUE, AnswerWorkflow


async def main(session_id: str, question: str) -> None:
    temporal = await Client.connect(os.environ.get("TEMPORAL_ADDRESS", "localhost:7233"))
    result = await temporal.execute_workflow(
        AnswerWorkflow.run,
        args=[session_id, question],
        id=f"answer-{session_id}",
        task_queue=TASK_QUEUE,
    )
    print(result)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "hello"))

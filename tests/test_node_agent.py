"""The wire contract from another language: a Node agent publishes straight to NATS."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from services.gateway.app import Gateway
from shared import agent
from shared.ids import new_id
from shared.server import EmbeddedNats
from shared.settings import LogSettings
from tests.conftest import ROOT, token, wait_for
from tests.device import Device, View

AGENT_DIR = ROOT / "examples" / "node-agent"
TEXT = "Hello from a Node agent: héllo wörld ✓ 🚀, streamed in chunks and stored once."
CHUNKS = 5


class RecordingView(View):
    """A device view that also keeps every event it was sent, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[dict[str, Any]] = []

    def apply(self, frame: dict[str, Any]) -> None:
        if frame["type"] == "event":
            self.events.append(frame["event"])
        super().apply(frame)


@pytest.fixture(scope="module")
def node_agent() -> Path:
    """The Node agent's folder with its dependencies installed (skip only without node)."""
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    if not (AGENT_DIR / "node_modules" / "@nats-io" / "jetstream").is_dir():
        npm = shutil.which("npm")
        assert npm is not None, "node_modules is missing and npm is not installed"
        command = "ci" if (AGENT_DIR / "package-lock.json").exists() else "install"
        done = subprocess.run(
            [npm, command, "--no-audit", "--no-fund"],
            cwd=AGENT_DIR,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, f"npm {command} failed:\n{done.stdout}\n{done.stderr}"
    return AGENT_DIR / "agent.mjs"


async def run_agent(agent: Path, server: EmbeddedNats, **env: str) -> list[dict[str, Any]]:
    """Run the Node agent to completion; return the JSON lines it printed."""
    process = await asyncio.create_subprocess_exec(
        shutil.which("node") or "node",
        str(agent),
        cwd=ROOT,
        env={**os.environ, **server.client_env(), **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, f"node agent failed:\n{stdout.decode()}\n{stderr.decode()}"
    return [orjson.loads(line) for line in stdout.splitlines() if line.startswith(b"{")]


async def test_node_agent_streams_an_answer_to_a_device(
    node_agent: Path, nats_server: EmbeddedNats, gateway: Gateway
) -> None:
    """A Node agent's answer reaches a live device once: full text, run events, no dup delta."""
    sid = new_id("s-")
    run, message = "run-node-1", "msg-node-1"
    base = f"http://127.0.0.1:{gateway.port}"
    device = Device(sid, token([sid]))
    view = device.view = RecordingView()
    await device.connect(base)
    await wait_for(lambda: view.live, what="device caught up")

    acks = await run_agent(
        node_agent, nats_server, SESSION=sid, RUN=run, MESSAGE=message, TEXT=TEXT, CHUNKS="5"
    )

    await wait_for(lambda: ("run.completed", run) in view.others, what="run.completed")
    await asyncio.sleep(0.2)  # anything stray would arrive now
    assert view.texts == {message: TEXT}
    assert view.others == [("run.started", run), ("run.completed", run)]
    types = [event["type"] for event in view.events]
    assert types == ["run.started", "message.start"] + ["message.delta"] * CHUNKS + [
        "message.complete",
        "run.completed",
    ]
    assert [e["i"] for e in view.events if e["type"] == "message.delta"] == list(range(CHUNKS))
    assert view.seqs == sorted(set(view.seqs))

    # The agent resent chunk 0: the PubAck said duplicate, with the first copy's sequence.
    deltas = [a for a in acks if a.get("type") == "message.delta"]
    assert [a["msgId"] for a in deltas] == [f"{sid}:a:{message}:0"] + [
        f"{sid}:a:{message}:{i}" for i in range(CHUNKS)
    ]
    assert deltas[0]["duplicate"] is False and deltas[1]["duplicate"] is True
    assert deltas[0]["seq"] == deltas[1]["seq"]
    assert acks[-1]["done"] is True
    await device.close()

    # Nats-Rollup: sub on message.complete left only the final form in the log.
    async with aiohttp.ClientSession() as http:
        async with http.get(
            f"{base}/v1/sessions/{sid}/events",
            headers={"Authorization": f"Bearer {token([sid])}"},
        ) as resp:
            history = orjson.loads(await resp.read())
    assert resp.status == 200
    stored = [(e["event"]["type"], e["event"].get("text")) for e in history["events"]]
    assert stored == [("run.started", None), ("message.complete", TEXT), ("run.completed", None)]


async def test_node_agent_rerun_is_deduplicated(
    node_agent: Path, nats_server: EmbeddedNats, gateway: Gateway
) -> None:
    """Running the same Node agent run again stores nothing new: every id is a duplicate."""
    sid = new_id("s-")
    env = {"SESSION": sid, "RUN": "run-again", "TEXT": "same answer twice", "CHUNKS": "3"}
    first = await run_agent(node_agent, nats_server, **env)
    second = await run_agent(node_agent, nats_server, **env)
    published = [a for a in second if "msgId" in a]
    assert published and all(a["duplicate"] for a in published)
    assert [a["seq"] for a in published] == [a["seq"] for a in first if "msgId" in a]
    device = Device(sid, token([sid]))
    await device.connect(f"http://127.0.0.1:{gateway.port}", since=0)
    await wait_for(lambda: device.view.live, what="late device caught up")
    assert device.view.texts == {"run-again-m1": "same answer twice"}
    assert device.view.others == [("run.started", "run-again"), ("run.completed", "run-again")]
    await device.close()


async def test_node_agent_answers_its_inbox(
    node_agent: Path, nats_server: EmbeddedNats, gateway: Gateway
) -> None:
    """A Node agent in --inbox mode answers a device's messages from its durable consumer."""
    sid, durable = new_id("s-"), new_id("node-inbox-")
    process = await asyncio.create_subprocess_exec(
        shutil.which("node") or "node",
        str(node_agent),
        "--inbox",
        cwd=ROOT,
        env={**os.environ, **nats_server.client_env(), "INBOX": durable, "COUNT": "3"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    ready = await asyncio.wait_for(process.stdout.readline(), 30)
    assert orjson.loads(ready) == {"ready": True, "durable": durable}
    device = Device(sid, token([sid], subject="alice"))
    await device.connect(f"http://127.0.0.1:{gateway.port}")
    for n in range(3):
        await device.send({"type": "send", "id": f"q-{n}", "text": f"hi {n}"})
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, f"node agent failed:\n{stdout.decode()}\n{stderr.decode()}"
    lines = [orjson.loads(line) for line in stdout.splitlines() if line.startswith(b"{")]
    assert [line["answered"] for line in lines if "answered" in line] == ["q-0", "q-1", "q-2"]
    await wait_for(
        lambda: all(("run.completed", f"run-q-{n}") in device.view.others for n in range(3)),
        what="three runs completed",
    )
    assert {f"reply-q-{n}": device.view.texts[f"reply-q-{n}"] for n in range(3)} == {
        f"reply-q-{n}": f"node echo: hi {n}" for n in range(3)
    }
    await device.close()
    client = await agent.connect(nats_server.settings("cleanup"), log_settings=LogSettings())
    await client.nc.jetstream().delete_consumer(client.log_settings.stream, durable)
    await client.close()

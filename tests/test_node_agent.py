"""The wire contract from another language: a Node agent publishes straight to NATS."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from services.gateway.app import Gateway
from shared import agent
from shared.ids import new_id
from shared.partitions import partition, stream_for
from shared.server import EmbeddedNats
from shared.settings import LogSettings
from tests.conftest import PARTITIONS, ROOT, gateway_settings, token, wait_for
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


@pytest.fixture
async def partitioned_gateway(partitioned_nats: EmbeddedNats) -> AsyncIterator[Gateway]:
    """An in-process gateway reading the session log over ``PARTITIONS`` streams."""
    gw = Gateway(gateway_settings(partitioned_nats, log=LogSettings(partitions=PARTITIONS)))
    await gw.start()
    yield gw
    await gw.stop()


def sessions_over_partitions(count: int, partitions: int = PARTITIONS) -> list[str]:
    """``count`` fresh session ids, the first ``partitions`` of them in distinct partitions."""
    sids: list[str] = []
    while len(sids) < count:
        sid = new_id("s-")
        taken = {partition(s, partitions) for s in sids}
        if len(taken) >= partitions or partition(sid, partitions) not in taken:
            sids.append(sid)
    return sids


async def stored_history(gateway: Gateway, sid: str) -> list[tuple[str, Any]]:
    """A session's stored events as (type, text), read through the gateway's history API."""
    async with aiohttp.ClientSession() as http:
        async with http.get(
            f"http://127.0.0.1:{gateway.port}/v1/sessions/{sid}/events",
            headers={"Authorization": f"Bearer {token([sid])}"},
        ) as resp:
            assert resp.status == 200
            history = orjson.loads(await resp.read())
    return [(e["event"]["type"], e["event"].get("text")) for e in history["events"]]


async def check_answer_reaches_a_device(
    node_agent: Path, server: EmbeddedNats, gateway: Gateway, sid: str, **env: str
) -> None:
    """Run the Node agent once into ``sid`` and check what a live device and the log got."""
    run, message = "run-node-1", "msg-node-1"
    base = f"http://127.0.0.1:{gateway.port}"
    device = Device(sid, token([sid]))
    view = device.view = RecordingView()
    await device.connect(base)
    await wait_for(lambda: view.live, what="device caught up")

    acks = await run_agent(
        node_agent, server, SESSION=sid, RUN=run, MESSAGE=message, TEXT=TEXT, CHUNKS="5", **env
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
    stored = await stored_history(gateway, sid)
    assert stored == [("run.started", None), ("message.complete", TEXT), ("run.completed", None)]


async def test_node_agent_streams_an_answer_to_a_device(
    node_agent: Path, nats_server: EmbeddedNats, gateway: Gateway
) -> None:
    """A Node agent's answer reaches a live device once: full text, run events, no dup delta."""
    await check_answer_reaches_a_device(node_agent, nats_server, gateway, new_id("s-"))


async def test_node_agent_streams_answers_over_partitions(
    node_agent: Path, partitioned_nats: EmbeddedNats, partitioned_gateway: Gateway
) -> None:
    """With the log over 3 partition streams, Node answers reach devices of every partition."""
    sids = sessions_over_partitions(PARTITIONS)
    assert {partition(sid, PARTITIONS) for sid in sids} == set(range(PARTITIONS))
    for sid in sids:
        await check_answer_reaches_a_device(
            node_agent,
            partitioned_nats,
            partitioned_gateway,
            sid,
            TETHER_STREAM_PARTITIONS=str(PARTITIONS),
        )


async def test_node_agent_refuses_a_wrong_partition_count(
    node_agent: Path, partitioned_nats: EmbeddedNats, partitioned_gateway: Gateway
) -> None:
    """A Node agent told another partition count than the server's fails on its first PubAck."""
    sid = next(
        s
        for s in sessions_over_partitions(PARTITIONS)
        if partition(s, 2) != partition(s, PARTITIONS)
    )
    process = await asyncio.create_subprocess_exec(
        shutil.which("node") or "node",
        str(node_agent),
        cwd=ROOT,
        env={
            **os.environ,
            **partitioned_nats.client_env(),
            "SESSION": sid,
            "TEXT": "wrong count",
            "TETHER_STREAM_PARTITIONS": "2",
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode != 0
    assert b"TETHER_STREAM_PARTITIONS differs from the server's" in stderr


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


async def check_inbox_answers(
    node_agent: Path,
    server: EmbeddedNats,
    gateway: Gateway,
    sids: list[str],
    log: LogSettings,
    per_session: int = 3,
) -> list[dict[str, Any]]:
    """Run the Node agent in --inbox mode, send ``per_session`` messages from a device of each
    session, and check every one is answered once, in order per session; return the
    agent's {"answered": ...} lines."""
    durable = new_id("node-inbox-")
    total = per_session * len(sids)
    env = {"INBOX": durable, "COUNT": str(total)}
    if log.partitions > 1:
        env["TETHER_STREAM_PARTITIONS"] = str(log.partitions)
    process = await asyncio.create_subprocess_exec(
        shutil.which("node") or "node",
        str(node_agent),
        "--inbox",
        cwd=ROOT,
        env={**os.environ, **server.client_env(), **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        ready = orjson.loads(await asyncio.wait_for(process.stdout.readline(), 30))
        assert ready.pop("streams", list(log.streams)) == list(log.streams)
        assert ready == {"ready": True, "durable": durable}
        base = f"http://127.0.0.1:{gateway.port}"
        devices = [Device(sid, token([sid], subject="alice")) for sid in sids]
        for device in devices:
            await device.connect(base)
        keys = {sid: [f"q{i}-{n}" for n in range(per_session)] for i, sid in enumerate(sids)}
        for n in range(per_session):
            for device in devices:
                key = keys[device.session][n]
                await device.send({"type": "send", "id": key, "text": f"hi {key}"})
        stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, f"node agent failed:\n{stdout.decode()}\n{stderr.decode()}"
    lines = [orjson.loads(line) for line in stdout.splitlines() if line.startswith(b"{")]
    answered = [line for line in lines if "answered" in line]
    for sid in sids:
        assert [a["answered"] for a in answered if a["session"] == sid] == keys[sid]
    assert len(answered) == total
    await wait_for(
        lambda: all(
            ("run.completed", f"run-{k}") in d.view.others for d in devices for k in keys[d.session]
        ),
        what=f"{total} runs completed",
    )
    for device in devices:
        replies = {f"reply-{k}": device.view.texts.get(f"reply-{k}") for k in keys[device.session]}
        assert replies == {f"reply-{k}": f"node echo: hi {k}" for k in keys[device.session]}
        await device.close()
    client = await agent.connect(server.settings("cleanup"), log_settings=log)
    for stream in log.streams:
        await client.nc.jetstream().delete_consumer(stream, durable)
    await client.close()
    return answered


async def test_node_agent_answers_its_inbox(
    node_agent: Path, nats_server: EmbeddedNats, gateway: Gateway
) -> None:
    """A Node agent in --inbox mode answers a device's messages from its durable consumer."""
    answered = await check_inbox_answers(
        node_agent, nats_server, gateway, [new_id("s-")], LogSettings()
    )
    assert all("stream" not in line for line in answered)  # N=1 output as before


async def test_node_agent_answers_its_inbox_over_partitions(
    node_agent: Path, partitioned_nats: EmbeddedNats, partitioned_gateway: Gateway
) -> None:
    """With 3 partition streams, the Node inbox answers sessions of every partition, each
    from its own stream."""
    log = LogSettings(partitions=PARTITIONS)
    sids = sessions_over_partitions(4)
    assert len({partition(sid, PARTITIONS) for sid in sids}) >= 2
    answered = await check_inbox_answers(
        node_agent, partitioned_nats, partitioned_gateway, sids, log
    )
    assert all(line["stream"] == log.stream_for(line["session"]) for line in answered)
    assert len({line["stream"] for line in answered}) >= 2
    for sid in sids:  # the gateway reads each session's history from its own stream
        stored = await stored_history(partitioned_gateway, sid)
        assert [t for t in stored if t[0] == "message.complete"] == [
            ("message.complete", f"node echo: hi q{sids.index(sid)}-{n}") for n in range(3)
        ]


NODE_PARTITION = """
import { readFileSync } from "node:fs";
const { partition, streamFor } = await import(process.argv[1]);
const { ids, counts } = JSON.parse(readFileSync(0, "utf8"));
const out = ids.map((id) => counts.map((n) => [partition(id, n), streamFor("TS", id, n)]));
console.log(JSON.stringify(out));
"""


def test_node_partition_matches_python() -> None:
    """partition.mjs's FNV-1a partition and stream name equal shared.partitions' for 200 ids."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    ids = [new_id("s-") for _ in range(150)] + [f"tether-probe-{n}" for n in range(30)]
    ids += ["a", "-", "_", "Z" * 128, "support-42", "0", "s-" + "9" * 126]
    # Beyond the id rules (ASCII only), to pin the UTF-8 encoding of the hash input.
    odd = ["séance-✓", "héllo-wörld", "🚀", "日本語", "\u00ff", "a\u0000b", ""]
    ids += odd + [f"ünï-{n}" for n in range(200 - len(ids) - len(odd))]
    counts = [1, 2, 3, 7, 16, 64]
    done = subprocess.run(
        [node, "--input-type=module", "-e", NODE_PARTITION, (AGENT_DIR / "partition.mjs").as_uri()],
        input=json.dumps({"ids": ids, "counts": counts}),
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert len(ids) == 200
    want = [
        [[partition(i, n), "TS" if n == 1 else f"TS_{partition(i, n)}"] for n in counts]
        for i in ids
    ]
    assert got == want
    rule_ids = ids[: ids.index("séance-✓")]
    assert [row[2][1] for row in got[: len(rule_ids)]] == [stream_for("TS", i, 3) for i in rule_ids]

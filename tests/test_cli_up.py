"""`tether up` as a user runs it: the whole suite, one process tree, clean shutdown, restarts."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from shared.server import EmbeddedNats
from shared.settings import LogSettings
from tests.conftest import ROOT, wait_for
from tests.device import Device


class Up:
    """A `tether up` process in its own process group, with its banner parsed."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "shared.cli", "up", "--port", "0", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "TETHER_DEMO_TOKENS_PER_SECOND": "400", **(env or {})},
            start_new_session=True,
        )
        self.lines: list[str] = []
        self.url = ""
        self.token = ""
        ready = threading.Event()

        def read() -> None:
            assert self.process.stdout is not None
            for raw in self.process.stdout:
                line = raw.decode().rstrip()
                self.lines.append(line)
                match = re.match(r"\s+gateway\s+(http://\S+)", line)
                if match:
                    self.url = match.group(1)
                if line.startswith("  eyJ"):
                    self.token = line.strip()
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(60) or not self.token:
            self.process.kill()
            raise AssertionError(f"tether up printed no banner: {self.lines}")

    def terminate(self, timeout: float = 30) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill_group(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()

    def group_alive(self) -> bool:
        try:
            os.killpg(self.process.pid, 0)
        except ProcessLookupError:
            return False
        return True


@pytest.fixture
def start_up() -> Iterator[Callable[..., Up]]:
    """Start `tether up` processes; whatever is left of them is killed at teardown."""
    started: list[Up] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Up:
        up = Up(*args, env=env)
        started.append(up)
        return up

    yield start
    for up in started:
        up.kill_group()


async def chat(url: str, token: str, session: str, text: str) -> Device:
    """Send a message over HTTP and wait for the demo agent's whole answer on a device."""
    device = Device(session, token)
    await device.connect(url)
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{url}/v1/sessions/{session}/messages",
            json={"id": "q1", "text": text},
            headers={"Authorization": f"Bearer {token}"},
        ) as resp:
            assert resp.status in (200, 201), await resp.text()
    await wait_for(
        lambda: ("run.completed", "run-q1") in device.view.others,
        timeout=30,
        what="demo agent answer",
    )
    return device


async def check_demo_page(up: Up) -> None:
    """The banner's demo page URL serves the page, and its token opens a demo-* session."""
    page = next(line.split()[-1] for line in up.lines if line.strip().startswith("demo page"))
    base, _, fragment = page.partition("/#token=")
    assert base.startswith("http://127.0.0.1:") and fragment.startswith("eyJ")
    async with aiohttp.ClientSession() as http, http.get(base + "/") as resp:
        assert resp.status == 200 and resp.content_type == "text/html"
    device = Device("demo-page-check", fragment)
    await device.connect(base)
    await wait_for(lambda: device.view.live, what="the demo token's session")
    await device.close()


async def test_up_runs_the_suite_and_keeps_sessions_across_restarts(
    tmp_path: Path, start_up: Callable[..., Up]
) -> None:
    """tether up serves a demo agent's streamed answer, stops cleanly and keeps sessions."""
    data = tmp_path / "data"
    up = start_up("--data-dir", str(data), "--nats-port=-1")
    assert "Tether is up." in up.lines
    await check_demo_page(up)
    device = await chat(up.url, up.token, "demo-up", "hello there")
    answer = device.view.texts["reply-q1"]
    assert "hello there" in answer and answer.endswith("nothing repeated.")
    await device.close()
    assert up.terminate() == 0
    await asyncio.sleep(0.2)
    assert not up.group_alive(), "a child of tether up outlived it"

    again = start_up("--data-dir", str(data), "--nats-port=-1")
    late = Device("demo-up", again.token)
    await late.connect(again.url, since=0)
    await wait_for(lambda: late.view.live, what="history after restart")
    assert late.view.texts == {"q1": "hello there", "reply-q1": answer}
    await late.close()
    assert again.terminate() == 0


async def test_up_with_existing_nats(
    tmp_path: Path, own_nats: EmbeddedNats, start_up: Callable[..., Up]
) -> None:
    """--nats-url runs the gateway and demo agent against an existing NATS."""
    creds = own_nats.creds
    url = f"nats://{creds.app_user}:{creds.app_password.reveal()}@127.0.0.1:{own_nats.port}"
    up = start_up("--data-dir", str(tmp_path / "d"), "--nats-url", url)
    assert not (tmp_path / "d" / "jetstream").exists()  # no bundled server was started
    device = await chat(up.url, up.token, "external", "ping")
    assert "ping" in device.view.texts["reply-q1"]
    await device.close()
    assert up.terminate() == 0


async def test_up_killed_takes_its_children_with_it(
    tmp_path: Path, start_up: Callable[..., Up]
) -> None:
    """SIGKILL of tether up leaves no orphan: nats-server, gateway and agent exit too."""
    up = start_up("--data-dir", str(tmp_path / "data"), "--nats-port=-1")
    children = subprocess.run(  # noqa: ASYNC221 - a quick pgrep
        ["pgrep", "-g", str(up.process.pid)], capture_output=True, text=True
    ).stdout.split()
    assert len(children) >= 4  # up, nats-server, gateway, demo agent
    up.process.kill()  # the supervisor alone, not its group
    up.process.wait()
    for _ in range(100):
        if not up.group_alive():
            break
        await asyncio.sleep(0.1)
    assert not up.group_alive(), "children outlived a killed tether up"


async def test_up_with_partitions(tmp_path: Path, start_up: Callable[..., Up]) -> None:
    """TETHER_STREAM_PARTITIONS=3: tether up renders the mapping into its server and every
    child reads the same count; sessions of every partition are answered."""
    data = tmp_path / "data"
    up = start_up("--data-dir", str(data), "--nats-port=-1", env={"TETHER_STREAM_PARTITIONS": "3"})
    assert "{{partition(3,1)}}" in (data / "nats-server.conf").read_text()
    log = LogSettings(partitions=3)
    sessions = {log.stream_for(f"demo-p{n}"): f"demo-p{n}" for n in range(12)}
    assert len(sessions) == 3
    for session in sessions.values():
        device = await chat(up.url, up.token, session, f"hi {session}")
        assert f"hi {session}" in device.view.texts["reply-q1"]
        await device.close()
    assert up.terminate() == 0

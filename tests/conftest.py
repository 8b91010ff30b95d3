"""Fixtures: a real nats-server from the wheel on a random port, real gateways on real sockets."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path

import orjson
import pytest

from services.gateway.app import Gateway
from services.gateway.settings import GatewaySettings
from shared import agent
from shared.server import EmbeddedNats
from shared.settings import LogSettings, Secret
from shared.tokens import mint

SECRET = Secret("test-signing-secret-0123456789abcdef")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    """One nats-server for the whole run (tests use distinct session ids)."""
    server = EmbeddedNats(tmp_path_factory.mktemp("nats"), port=-1)
    server.start()
    yield server
    server.stop()


PARTITIONS = 3


@pytest.fixture(scope="session")
def partitioned_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    """A nats-server whose account spreads sessions over ``PARTITIONS`` session streams."""
    server = EmbeddedNats(tmp_path_factory.mktemp("nats-p"), port=-1, partitions=PARTITIONS)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[EmbeddedNats]:
    """A nats-server of this test's own, for tests that kill or restart it."""
    server = EmbeddedNats(tmp_path / "nats", port=-1)
    server.start()
    yield server
    server.stop()


def gateway_settings(server: EmbeddedNats, **overrides: object) -> GatewaySettings:
    base = GatewaySettings(
        host="127.0.0.1",
        port=0,
        jwt_secret=SECRET,
        nats=server.settings("test-gateway", role="gateway"),
        log=LogSettings(),
        drain_delay_seconds=0.0,  # no proxy to tell in tests: stop at once
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


@pytest.fixture
async def gateway(nats_server: EmbeddedNats) -> AsyncIterator[Gateway]:
    """An in-process gateway on a real socket."""
    gw = Gateway(gateway_settings(nats_server))
    await gw.start()
    yield gw
    await gw.stop()


@pytest.fixture
async def client(nats_server: EmbeddedNats) -> AsyncIterator[agent.Client]:
    """An agent SDK client on the shared server (as the admin user: tests also use it to
    inspect and clean up; agent processes run as the agent user)."""
    c = await agent.connect(nats_server.settings("test-agent"), log_settings=LogSettings())
    yield c
    await c.close()


def token(sessions: list[str] | None = None, **kwargs: object) -> str:
    return mint(
        SECRET, subject=str(kwargs.pop("subject", "tester")), sessions=sessions or ["*"], **kwargs
    )  # type: ignore[arg-type]


class ServiceProcess:
    """A `tether <command>` subprocess started the way users run it, ready when it says so."""

    def __init__(
        self,
        command: list[str],
        server: EmbeddedNats,
        extra_env: dict[str, str] | None = None,
        module: str = "shared.cli",
        stderr_path: Path | None = None,
        role: str = "admin",
    ) -> None:
        env = {
            **os.environ,
            **server.client_env(role),
            "TETHER_JWT_SECRET": SECRET.reveal(),
            "TETHER_GATEWAY_PORT": "0",
            "TETHER_LOG_FORMAT": "json",
            "TETHER_DRAIN_DELAY_SECONDS": "0",  # no proxy to tell in tests: stop at once
            **(extra_env or {}),
        }
        stderr = open(stderr_path, "ab") if stderr_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, *command],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
        if stderr_path:
            stderr.close()  # type: ignore[union-attr]
        self.port = 0
        ready = threading.Event()
        self.ready_info: dict[str, object] = {}

        def read() -> None:
            assert self.process.stdout is not None
            for line in self.process.stdout:
                if line.startswith(b"{"):
                    info = orjson.loads(line)
                    if info.get("event") == "ready":
                        self.ready_info = info
                        self.port = int(info.get("port", 0))
                        ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(30) or not self.ready_info:
            self.process.kill()
            tail = stderr_path.read_text(errors="replace")[-3000:] if stderr_path else ""
            raise RuntimeError(f"{command} did not become ready {tail}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class GatewayProcess(ServiceProcess):
    """A gateway subprocess (`tether gateway`)."""

    def __init__(self, server: EmbeddedNats, extra_env: dict[str, str] | None = None) -> None:
        super().__init__(["gateway"], server, extra_env, role="gateway")


@pytest.fixture
def gateway_process(nats_server: EmbeddedNats) -> Iterator[Callable[..., GatewayProcess]]:
    """Factory of gateway subprocesses; all are stopped at the end of the test."""
    started: list[GatewayProcess] = []

    def start(server: EmbeddedNats | None = None, **env: str) -> GatewayProcess:
        process = GatewayProcess(server or nats_server, env)
        started.append(process)
        return process

    start.started = started  # type: ignore[attr-defined]
    yield start
    for process in started:
        process.stop()


async def wait_for(
    predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition"
) -> None:
    """Poll ``predicate`` until true; fail the test with ``what`` after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@pytest.fixture
def presence_process(
    nats_server: EmbeddedNats,
) -> Iterator[Callable[..., Awaitable[ServiceProcess]]]:
    """Factory of presence-service subprocesses (system account user from the server)."""
    started: list[ServiceProcess] = []

    async def start(server: EmbeddedNats | None = None, **env: str) -> ServiceProcess:
        srv = server or nats_server
        # In a thread: waiting for readiness must not stall this test's event loop.
        process = await asyncio.to_thread(
            ServiceProcess, ["presence-service"], srv, {**srv.sys_env(), **env}, role="presence"
        )
        started.append(process)
        return process

    start.started = started  # type: ignore[attr-defined]
    yield start
    for process in started:
        process.stop()


@pytest.fixture
def agent_proc(nats_server: EmbeddedNats) -> Iterator[Callable[..., Awaitable[ServiceProcess]]]:
    """Factory of real agent subprocesses (``module``, argv, env); stopped after the test."""
    started: list[ServiceProcess] = []

    async def start(module: str, *args: str, **env: str) -> ServiceProcess:
        # In a thread: waiting for readiness must not stall this test's event loop.
        process = await asyncio.to_thread(
            ServiceProcess, list(args), nats_server, env, module=module, role="agent"
        )
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()

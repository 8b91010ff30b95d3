"""compose.yaml, proven without a Docker engine: validated by docker-compose, the NATS
config checked and run by the real nats-server, the gateway run with compose's command
and environment."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import yaml

from shared.permissions import render_deploy_config
from shared.server import nats_server_binary
from shared.settings import Secret
from shared.tokens import mint
from tests.conftest import ROOT, wait_for
from tests.device import Device

SECRETS = {
    "TETHER_NATS_PASSWORD": "compose-nats-pw",
    "TETHER_GATEWAY_NATS_PASSWORD": "compose-gateway-pw",
    "TETHER_PRESENCE_NATS_PASSWORD": "compose-presence-pw",
    "TETHER_NOTIFIER_NATS_PASSWORD": "compose-notifier-pw",
    "TETHER_AGENT_NATS_PASSWORD": "compose-agent-pw",
    "TETHER_SYS_PASSWORD": "compose-sys-pw",
    "TETHER_JWT_SECRET": "compose-jwt-secret-0123456789abcdef",
}


def compose_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.fail("docker-compose is not installed (scripts/test.sh installs it)")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    return subprocess.run(
        [binary, "-f", str(ROOT / "compose.yaml"), "config"],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_compose_file_is_valid() -> None:
    """docker-compose accepts compose.yaml: nats, gateway, presence, notifier, demo-agent."""
    result = compose_config(SECRETS)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert set(services) == {"nats", "gateway", "presence", "notifier", "demo-agent"}
    for name in ("nats", "gateway"):
        assert "healthcheck" in services[name]


def test_deploy_nats_conf_is_generated() -> None:
    """deploy/nats.conf equals what shared/permissions.py renders (users and permissions
    have one source)."""
    assert (ROOT / "deploy" / "nats.conf").read_text() == render_deploy_config()


def test_compose_refuses_missing_secrets() -> None:
    """Without the secrets, compose stops with a message naming the missing variable."""
    result = compose_config({k: v for k, v in SECRETS.items() if k != "TETHER_JWT_SECRET"})
    assert result.returncode != 0
    assert "TETHER_JWT_SECRET" in result.stderr


def host_path(volumes: list[object], target: str) -> Path:
    """The host side of the bind mount whose container side is ``target``."""
    for volume in volumes:
        if isinstance(volume, dict) and volume.get("target") == target:
            return Path(str(volume["source"]))
        if isinstance(volume, str) and volume.split(":")[1:2] == [target]:
            return ROOT / volume.split(":")[0]
    raise AssertionError(f"no volume mounts {target}")


class ComposeServices:
    """nats and gateway from compose.yaml, as local processes (host names -> loopback)."""

    def __init__(self, tmp_path: Path) -> None:
        services = yaml.safe_load(compose_config(SECRETS).stdout)["services"]
        nats_service = services["nats"]
        command = nats_service["command"]
        config = host_path(nats_service["volumes"], command[command.index("-c") + 1])
        nats_env = {
            **os.environ,
            **nats_service["environment"],
            "NATS_STORE_DIR": str(tmp_path / "js"),
        }  # the volume, as a local dir
        check = subprocess.run(
            [nats_server_binary(), "-t", "-c", str(config)],
            env=nats_env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert check.returncode == 0, check.stderr + check.stdout
        nats_port = free_port()
        self.nats = subprocess.Popen(
            [
                nats_server_binary(),
                "-c",
                str(config),
                "-a",
                "127.0.0.1",
                "-p",
                str(nats_port),
                "-m",
                str(free_port()),
            ],
            env=nats_env,
            stderr=subprocess.DEVNULL,
        )
        self.port = free_port()
        self.processes = [self.nats]
        for name in ("gateway", "presence", "notifier", "demo-agent"):
            env = dict(services[name]["environment"])
            env["TETHER_NATS_URL"] = env["TETHER_NATS_URL"].replace(
                "//nats:4222", f"//127.0.0.1:{nats_port}"
            )
            if name == "gateway":
                env.update(TETHER_GATEWAY_PORT=str(self.port), TETHER_GATEWAY_HOST="127.0.0.1")
                self.token = mint(
                    Secret(env["TETHER_JWT_SECRET"]), subject="c", sessions=["compose"]
                )
            self.processes.append(self.run_service(services[name]["command"], env))

    @staticmethod
    def run_service(command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        """A service with compose's command and environment, once it says it is ready."""
        base = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
        process = subprocess.Popen(
            [sys.executable, "-m", "shared.cli", *command],
            cwd=ROOT,
            env={**base, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert process.stdout is not None
        ready = process.stdout.readline()  # {"event": "ready", ...}
        assert b'"ready"' in ready, f"{command} did not start"
        return process

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.terminate()
            process.wait(10)


@pytest.fixture
def compose_services(tmp_path: Path) -> Iterator[ComposeServices]:
    services = ComposeServices(tmp_path)
    yield services
    services.stop()


async def test_compose_services_run_as_described(compose_services: ComposeServices) -> None:
    """nats, gateway, presence, notifier and the demo agent run with compose's config, command
    and environment (each service as the NATS user of its role): a message is answered."""
    url = f"http://127.0.0.1:{compose_services.port}"
    token = compose_services.token
    device = Device("compose", token)
    await device.connect(url)
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{url}/v1/sessions/compose/messages",
            json={"id": "c1", "text": "via compose"},
            headers={"Authorization": f"Bearer {token}"},
        ) as resp:
            assert resp.status == 201
        async with http.get(f"{url}/healthz") as resp:
            assert resp.status == 200
    await wait_for(lambda: device.view.texts.get("c1") == "via compose", what="message")
    users = [m["participant"] for m in device.view.hellos[0]["presence"] if m["role"] == "user"]
    assert users == ["c"]
    await wait_for(
        lambda: any(kind == "run.completed" for kind, _ in device.view.others), 20, "answer"
    )
    assert len(device.view.texts) >= 2  # the question and the demo agent's answer
    await device.close()

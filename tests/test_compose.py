"""compose.yaml, proven without a Docker engine: validated by docker-compose (the default
services and the `cluster` profile), the NATS configs checked and run by the real
nats-server, every Tether service run with compose's command and environment, its health
check run against it, and a session through both gateways."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml

from shared import agent, leaders
from shared.ids import new_id
from shared.permissions import (
    CLUSTER_NODES,
    CLUSTER_PARTITIONS,
    render_deploy_cluster_config,
    render_deploy_config,
)
from shared.server import nats_server_binary
from shared.settings import LogSettings, NatsSettings, Secret
from shared.tokens import mint
from tests.conftest import ROOT, GatewayProcess, token, wait_for
from tests.device import Device

SECRETS = {
    "TETHER_NATS_PASSWORD": "compose-nats-pw",
    "TETHER_GATEWAY_NATS_PASSWORD": "compose-gateway-pw",
    "TETHER_PRESENCE_NATS_PASSWORD": "compose-presence-pw",
    "TETHER_NOTIFIER_NATS_PASSWORD": "compose-notifier-pw",
    "TETHER_AGENT_NATS_PASSWORD": "compose-agent-pw",
    "TETHER_SYS_PASSWORD": "compose-sys-pw",
    "TETHER_JWT_SECRET": "compose-jwt-secret-0123456789abcdef",
    "TETHER_WEBHOOK_SEALING_KEYS": "Y29tcG9zZS1zZWFsaW5nLWtleS0wMTIzNDU2Nzg5YWI=",
}
NATS_NODES = {"nats-1", "nats-2", "nats-3"}
TETHER_SERVICES = ("gateway-1", "gateway-2", "presence", "notifier", "demo-agent")
# The port each Tether service serves /readyz on inside its container.
OPS_PORTS = {"gateway-1": 8080, "gateway-2": 8080, "presence": 8081, "notifier": 8082}
OPS_PORTS["demo-agent"] = 8083
# Where a service's ops server is told to listen (compose's container address and port).
HTTP_ENV = {
    "presence": "TETHER_PRESENCE_HTTP",
    "notifier": "TETHER_NOTIFIER_HTTP",
    "demo-agent": "TETHER_DEMO_AGENT_HTTP",
}


def env_file(path: Path) -> dict[str, str]:
    """A compose env file: NAME=value lines, # comments."""
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


CLUSTER_ENV = env_file(ROOT / "deploy" / "cluster.env")


def compose_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.fail("docker-compose is not installed (scripts/test.sh installs it)")
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("TETHER_", "COMPOSE_", "NATS_"))
    }
    return subprocess.run(
        [binary, "-f", str(ROOT / "compose.yaml"), "config"],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def compose_services(env: dict[str, str]) -> dict[str, Any]:
    result = compose_config(env)
    assert result.returncode == 0, result.stderr
    services: dict[str, Any] = yaml.safe_load(result.stdout)["services"]
    return services


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def host_path(volumes: list[object], target: str) -> Path:
    """The host side of the bind mount whose container side is ``target``."""
    for volume in volumes:
        if isinstance(volume, dict) and volume.get("target") == target:
            return Path(str(volume["source"]))
        if isinstance(volume, str) and volume.split(":")[1:2] == [target]:
            return ROOT / volume.split(":")[0]
    raise AssertionError(f"no volume mounts {target}")


def nats_config(service: dict[str, Any]) -> Path:
    """The host file behind the ``-c`` argument of a nats service's command."""
    command = service["command"]
    return host_path(service["volumes"], command[command.index("-c") + 1])


def check_nats_config(service: dict[str, Any], store: Path) -> dict[str, str]:
    """``nats-server -t`` accepts the service's config with the service's environment;
    returns that environment (the store dir made local)."""
    env = {**os.environ, **service["environment"], "NATS_STORE_DIR": str(store)}
    check = subprocess.run(
        [nats_server_binary(), "-t", "-c", str(nats_config(service))],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert check.returncode == 0, check.stderr + check.stdout
    return env


def test_compose_file_is_valid() -> None:
    """docker-compose accepts compose.yaml: NATS, two gateways behind a proxy, presence,
    notifier and the demo agent; every service has a health check (Tether's: /readyz)."""
    services = compose_services(SECRETS)
    assert set(services) == NATS_NODES | {*TETHER_SERVICES, "proxy"}
    assert services["nats-2"]["profiles"] == services["nats-3"]["profiles"] == ["cluster"]
    assert "profiles" not in services["nats-1"]
    for name, service in services.items():
        assert "healthcheck" in service, name
        assert service["restart"] == "unless-stopped", name
    for name in TETHER_SERVICES:
        service = services[name]
        env = service["environment"]
        assert f"127.0.0.1:{OPS_PORTS[name]}/readyz" in " ".join(service["healthcheck"]["test"])
        assert env["TETHER_LOG_FORMAT"] == "json"
        assert env["TETHER_NATS_URL"] == "nats://nats-1:4222"
        assert env["TETHER_STREAM_REPLICAS"] == "1"
        assert service["depends_on"]["nats-1"]["condition"] == "service_healthy"
    for name in ("gateway-1", "gateway-2"):
        assert services[name]["command"] == ["gateway"]
        assert services[name]["environment"]["TETHER_NATS_USER"] == "gateway"
    assert services["nats-1"]["command"] == ["-c", "/etc/nats/nats.conf"]


def test_proxy_routes_to_both_gateways() -> None:
    """The proxy is the official Caddy image, its config names both gateways, checks their
    /readyz and keeps tokens out of its access log."""
    proxy = compose_services(SECRETS)["proxy"]
    assert re.fullmatch(r"caddy:2[.\d]*-alpine", proxy["image"])
    caddyfile = host_path(proxy["volumes"], "/etc/caddy/Caddyfile").read_text()
    assert "reverse_proxy gateway-1:8080 gateway-2:8080" in caddyfile
    assert "health_uri /readyz" in caddyfile
    assert "delete token" in caddyfile
    assert {d: c["condition"] for d, c in proxy["depends_on"].items()} == {
        "gateway-1": "service_healthy",
        "gateway-2": "service_healthy",
    }


def test_cluster_profile(tmp_path: Path) -> None:
    """With deploy/cluster.env the profile runs nats-1..3 on the routed cluster config
    (checked by nats-server), and every service connects to all three at R3."""
    assert CLUSTER_ENV["COMPOSE_PROFILES"] == "cluster"
    services = compose_services({**SECRETS, **CLUSTER_ENV})
    urls = {f"nats://{node}:4222" for node in CLUSTER_NODES}
    for name in TETHER_SERVICES:
        env = services[name]["environment"]
        assert set(env["TETHER_NATS_URL"].split(",")) == urls, name
        assert env["TETHER_STREAM_REPLICAS"] == "3", name
        assert env["TETHER_STREAM_PARTITIONS"] == str(CLUSTER_PARTITIONS), name
    names = set()
    for node in sorted(NATS_NODES):
        service = services[node]
        assert nats_config(service).read_text() == render_deploy_cluster_config()
        env = check_nats_config(service, tmp_path / node)
        names.add(env["NATS_SERVER_NAME"])
    assert names == NATS_NODES  # unique server names: JetStream requires them
    config = render_deploy_cluster_config()
    for node in CLUSTER_NODES:
        assert f"nats-route://{node}:6222" in config
    assert f"{{{{partition({CLUSTER_PARTITIONS},1)}}}}" in config  # the services' count


def test_deploy_nats_confs_are_generated() -> None:
    """deploy/nats.conf and deploy/nats-cluster.conf equal what shared/permissions.py
    renders (users and permissions have one source)."""
    assert (ROOT / "deploy" / "nats.conf").read_text() == render_deploy_config()
    assert (ROOT / "deploy" / "nats-cluster.conf").read_text() == render_deploy_cluster_config()


def test_compose_refuses_missing_secrets() -> None:
    """Without the secrets, compose stops with a message naming the missing variable."""
    result = compose_config({k: v for k, v in SECRETS.items() if k != "TETHER_JWT_SECRET"})
    assert result.returncode != 0
    assert "TETHER_JWT_SECRET" in result.stderr


class ComposeServices:
    """The NATS node(s) and every Tether service of compose.yaml as local processes:
    compose's command and environment (``profile``: deploy/cluster.env's lines, for the
    cluster profile), service host names mapped to loopback ports."""

    def __init__(self, tmp_path: Path, profile: dict[str, str] | None = None) -> None:
        self.processes: list[subprocess.Popen[bytes]] = []
        try:
            self._start(tmp_path, profile or {})
        except BaseException:
            self.stop()  # no nats-server or service outlives a failed start
            raise

    def _start(self, tmp_path: Path, profile: dict[str, str]) -> None:
        services = compose_services({**SECRETS, **profile})
        self.services = services
        active = set(profile.get("COMPOSE_PROFILES", "").split(","))
        nodes = sorted(
            n
            for n in NATS_NODES
            if n in services and set(services[n].get("profiles") or active) & active
        )
        client, monitor = {n: free_port() for n in nodes}, {n: free_port() for n in nodes}
        routes = {n: free_port() for n in nodes}
        self.monitor_port = monitor["nats-1"]
        self.monitor_ports = list(monitor.values())
        for node in nodes:
            nats_env = check_nats_config(services[node], tmp_path / node)  # volume: a dir
            command = [nats_server_binary(), "-c", str(nats_config(services[node]))]
            command += ["-a", "127.0.0.1", "-p", str(client[node]), "-m", str(monitor[node])]
            if len(nodes) > 1:  # the config's routes name the compose hosts: map them here
                command += ["--cluster", f"nats://127.0.0.1:{routes[node]}", "--routes"]
                command.append(",".join(f"nats-route://127.0.0.1:{p}" for p in routes.values()))
            self.processes.append(
                subprocess.Popen(command, env=nats_env, stderr=subprocess.DEVNULL)
            )
        self.nats = self.processes[0]
        self.nats_urls = [f"nats://127.0.0.1:{client[n]}" for n in nodes]
        wait_nats_healthy(self.monitor_ports)
        self.ports: dict[str, int] = {}
        for name in TETHER_SERVICES:
            env = dict(services[name]["environment"])
            for node in nodes:
                env["TETHER_NATS_URL"] = env["TETHER_NATS_URL"].replace(
                    f"//{node}:4222", f"//127.0.0.1:{client[node]}"
                )
            if name.startswith("gateway"):
                env.update(TETHER_GATEWAY_PORT="0", TETHER_GATEWAY_HOST="127.0.0.1")
                env["TETHER_DRAIN_DELAY_SECONDS"] = "0"  # no proxy to tell here
                self.token = mint(
                    Secret(env["TETHER_JWT_SECRET"]), subject="c", sessions=["compose"]
                )
            else:
                prefix = HTTP_ENV[name]
                assert env[f"{prefix}_PORT"] == str(OPS_PORTS[name])
                env.update({f"{prefix}_PORT": "0", f"{prefix}_HOST": "127.0.0.1"})
            process, port = self.run_service(services[name]["command"], env)
            self.processes.append(process)
            self.ports[name] = port

    def run_service(
        self, command: list[str], env: dict[str, str]
    ) -> tuple[subprocess.Popen[bytes], int]:
        """A service with compose's command and environment, once it says it is ready."""
        base = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
        process = subprocess.Popen(
            [sys.executable, "-m", "shared.cli", *command],
            cwd=ROOT,
            env={**base, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.processes.append(process)  # stopped even if it never says ready
        assert process.stdout is not None
        ready = orjson.loads(process.stdout.readline() or b"{}")
        assert ready.get("event") == "ready", f"{command} did not start"
        self.processes.remove(process)
        return process, int(ready["port"])

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def health_check(self, name: str) -> subprocess.CompletedProcess[str]:
        """Run the service's compose health check against the local process."""
        test = self.services[name]["healthcheck"]["test"]
        assert test[0] == "CMD" and test[1] == "python"
        command = [
            sys.executable,
            *(
                arg.replace(f"127.0.0.1:{OPS_PORTS[name]}/", f"127.0.0.1:{self.ports[name]}/")
                for arg in test[2:]
            ),
        ]
        return subprocess.run(command, capture_output=True, text=True, timeout=30)

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_nats_healthy(monitor_ports: list[int], timeout: float = 30.0) -> None:
    """Block until every node's ``/healthz`` is 200 (a cluster: a meta leader elected)."""
    deadline = time.monotonic() + timeout
    pending, last = list(monitor_ports), ""
    while pending:
        port = pending[0]
        url = f"http://127.0.0.1:{port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback
                if response.status == 200:
                    pending.pop(0)
                    continue
        except OSError as exc:  # not listening yet, or 503 (no meta leader yet)
            last = repr(exc)
        if time.monotonic() > deadline:
            raise AssertionError(f"nats-server on monitor port {port} not healthy: {last}")
        time.sleep(0.1)


@pytest.fixture
def compose_processes(tmp_path: Path) -> Iterator[ComposeServices]:
    services = ComposeServices(tmp_path)
    yield services
    services.stop()


async def test_compose_services_run_as_described(compose_processes: ComposeServices) -> None:
    """nats-1, both gateways, presence, notifier and the demo agent run with compose's
    config, command and environment (each as the NATS user of its role); every health
    check passes; a message sent through gateway-2 reaches a device on gateway-1 and is
    answered, and a device on gateway-2 sees the same session."""
    await check_session_through_both_gateways(compose_processes)


@pytest.fixture
def compose_cluster(tmp_path: Path) -> Iterator[ComposeServices]:
    services = ComposeServices(tmp_path, CLUSTER_ENV)
    yield services
    services.stop()


async def test_cluster_profile_runs_as_described(compose_cluster: ComposeServices) -> None:
    """The cluster profile as local processes (nats-1..3 on deploy/nats-cluster.conf, the
    services with deploy/cluster.env): a session works end to end, and the log is three
    R3 partition streams with their leaders on three different nodes."""
    await check_session_through_both_gateways(compose_cluster)
    admin = await agent.connect(
        NatsSettings(
            servers=tuple(compose_cluster.nats_urls),
            user="tether",
            password=Secret(SECRETS["TETHER_NATS_PASSWORD"]),
        ),
        ensure=False,
    )
    found = await leaders.placements(admin.nc, [f"TETHER_SESSIONS_{k}" for k in range(3)])
    assert len({p.leader for p in found}) == len(CLUSTER_NODES), found
    assert all(len(p.current) == 3 for p in found), found
    home = LogSettings(partitions=CLUSTER_PARTITIONS).stream_for("compose")
    assert [p.stream for p in found if p.messages] == [home], found  # only its partition
    await admin.close()


async def check_session_through_both_gateways(services: ComposeServices) -> None:
    """Health checks pass; a message sent through gateway-2 reaches a device on gateway-1
    and the demo agent answers it; a device on gateway-2 sees the same session."""
    compose_processes = services
    for name in TETHER_SERVICES:
        check = compose_processes.health_check(name)
        assert check.returncode == 0, f"{name}: {check.stderr}"
    nats_check = compose_processes.services["nats-1"]["healthcheck"]["test"][-1]
    monitor = nats_check.replace(":8222/", f":{compose_processes.monitor_port}/")
    async with aiohttp.ClientSession() as http, http.get(monitor) as resp:
        assert resp.status == 200, await resp.text()  # nats-1's own health check URL
    one, two = compose_processes.url("gateway-1"), compose_processes.url("gateway-2")
    token = compose_processes.token
    device = Device("compose", token)
    await device.connect(one)
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{two}/v1/sessions/compose/messages",
            json={"id": "c1", "text": "via compose"},
            headers={"Authorization": f"Bearer {token}"},
        ) as resp:
            assert resp.status == 201
        for url in (one, two):
            async with http.get(f"{url}/readyz") as resp:
                assert resp.status == 200
    await wait_for(lambda: device.view.texts.get("c1") == "via compose", what="message")
    users = [m["participant"] for m in device.view.hellos[0]["presence"] if m["role"] == "user"]
    assert users == ["c"]
    await wait_for(
        lambda: any(kind == "run.completed" for kind, _ in device.view.others), 20, "answer"
    )
    assert len(device.view.texts) >= 2  # the question and the demo agent's answer
    other = Device("compose", token)
    await other.connect(two)
    await wait_for(lambda: other.view.live, what="second device live")
    assert other.view.texts == device.view.texts
    await other.close()
    await device.close()


@pytest.fixture
def caddy(tmp_path: Path) -> Iterator[Callable[[list[str]], str]]:
    """Caddy running deploy/Caddyfile with the gateways' host names mapped to loopback
    ports (skipped where caddy is not installed: scripts/test.sh installs it)."""
    binary = shutil.which("caddy")
    if binary is None:
        pytest.skip("caddy is not installed")
    started: list[subprocess.Popen[bytes]] = []

    def start(upstreams: list[str]) -> str:
        port = free_port()
        config = (ROOT / "deploy" / "Caddyfile").read_text()
        for number, upstream in enumerate(upstreams, 1):
            config = config.replace(f"gateway-{number}:8080", upstream)
        config = config.replace(":8080 {", f":{port} {{\n\tbind 127.0.0.1")
        path = tmp_path / "Caddyfile"
        path.write_text(config)
        command = [binary, "run", "--config", str(path), "--adapter", "caddyfile"]
        started.append(
            subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )
        return f"http://127.0.0.1:{port}"

    yield start
    for process in started:
        process.terminate()
        process.wait(10)


async def test_proxy_moves_devices_off_a_draining_gateway(
    caddy: Callable[[list[str]], str],
    gateway_process: Callable[..., GatewayProcess],
    client: agent.Client,
) -> None:
    """Through deploy/Caddyfile: WebSockets reach both gateways; SIGTERM one mid-answer and
    its devices (closed 1012) reconnect through the proxy to the other, missing nothing;
    /metrics is not served on the public port."""
    a = gateway_process(TETHER_DRAIN_DELAY_SECONDS="2.5")  # the health check runs every 2 s
    b = gateway_process()
    proxy = caddy([f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"])
    async with aiohttp.ClientSession() as http:
        for _ in range(100):  # until both upstreams passed a health check
            try:
                async with http.get(f"{proxy}/readyz") as resp:
                    if resp.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        async with http.get(f"{proxy}/metrics") as resp:
            assert resp.status == 404
    sid = new_id("s-")
    devices = [Device(sid, token([sid])) for _ in range(4)]
    for device in devices:
        await device.connect(proxy)
    await wait_for(lambda: all(d.view.live for d in devices), what="devices live")
    words = [f"w{i} " for i in range(300)]
    async with client.session(sid).run("r") as run:
        message = run.message("m")
        for word in words[:100]:
            await message.append(word)
        a.process.send_signal(signal.SIGTERM)
        for word in words[100:]:
            await message.append(word)
            await asyncio.sleep(0.01)
        assert await asyncio.to_thread(a.process.wait, 20) == 0
        moved = [d for d in devices if not d.connected]
        assert moved and all(d.close_code == 1012 for d in moved)  # round robin used A
        for device in moved:
            await device.disconnect()
            await device.connect(proxy)  # the proxy routes to B now
        await message.complete()
    for device in devices:
        await wait_for(
            lambda d=device: ("run.completed", "r") in d.view.others,  # type: ignore[misc]
            what="run end",
        )
        assert device.view.texts == {"m": "".join(words)}
        assert device.view.hellos[-1]["recovered"] is True
        await device.close()

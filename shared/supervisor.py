"""``tether up``: the bundled nats-server, the gateway, presence, the notifier and the demo
agent as one process tree.

Children are restarted with backoff when they die. SIGTERM or SIGINT stops them in
reverse start order (demo agent, gateway, then nats-server), each with SIGTERM and a
grace period before SIGKILL.
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import structlog

from shared import sealing
from shared.server import EmbeddedNats, die_with_parent
from shared.settings import LogSettings, Secret
from shared.tokens import mint

log = structlog.get_logger(__name__)

STOP_GRACE = 10.0


def dev_secret(data_dir: Path) -> Secret:
    """The development signing secret kept in the data dir (created on first use)."""
    path = data_dir / "dev-jwt-secret"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32))
    return Secret(path.read_text().strip())


def dev_sealing_key(data_dir: Path) -> str:
    """The webhook sealing key kept in the data dir (created on first use), unless the
    environment gives ``TETHER_WEBHOOK_SEALING_KEYS`` itself."""
    given = os.environ.get(sealing.VARIABLE) or os.environ.get(f"{sealing.VARIABLE}_FILE")
    if given:
        return ""
    path = data_dir / "webhook-sealing-key"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(base64.b64encode(secrets.token_bytes(sealing.KEY_BYTES)).decode())
    return path.read_text().strip()


@dataclass
class Child:
    """A supervised ``tether <command>`` child process."""

    name: str
    args: list[str]
    env: dict[str, str]
    process: asyncio.subprocess.Process | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    ready_info: dict[str, object] = field(default_factory=dict)
    stopping: bool = False
    restarts: int = 0

    async def spawn(self) -> None:
        self.ready.clear()
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "shared.cli",
            *self.args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, **self.env},
            preexec_fn=die_with_parent,
        )
        log.info("child_started", child=self.name, pid=self.process.pid)
        asyncio.create_task(self._read_stdout(self.process))

    async def _read_stdout(self, process: asyncio.subprocess.Process) -> None:
        if process.stdout is None:
            return
        async for raw in process.stdout:
            line = raw.decode(errors="replace").strip()
            if line.startswith("{"):
                try:
                    info = orjson.loads(line)
                except orjson.JSONDecodeError:
                    info = None
                if isinstance(info, dict) and info.get("event") == "ready":
                    self.ready_info = info
                    self.ready.set()
                    continue
            print(line, file=sys.stderr, flush=True)

    async def supervise(self) -> None:
        """Restart the child with backoff whenever it exits, until stopping."""
        delay = 0.5
        while not self.stopping:
            if self.process is None:
                await self.spawn()
            process = self.process
            if process is None:
                return
            code = await process.wait()
            if self.stopping:
                return
            self.restarts += 1
            log.warning("child_exited", child=self.name, code=code, restart_in=delay)
            self.process = None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def stop(self) -> None:
        self.stopping = True
        process = self.process
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), STOP_GRACE)
        except TimeoutError:
            log.warning("child_killed", child=self.name)
            process.kill()
            await process.wait()
        log.info("child_stopped", child=self.name, code=process.returncode)


def page_url(host: str, port: object) -> str:
    """The URL a browser on this machine opens (a wildcard bind address is not one)."""
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


async def watch_server(server: EmbeddedNats, stop: asyncio.Event) -> None:
    """Restart the bundled nats-server if it dies (its store survives on disk)."""
    while not stop.is_set():
        process = server.process
        if process is None:
            return
        code = await asyncio.to_thread(process.wait)
        if stop.is_set():
            return
        log.warning("nats_server_exited", code=code, tail=list(server.output)[-3:])
        await asyncio.sleep(1.0)
        if not stop.is_set():
            server.start()


def role_env(server: EmbeddedNats | None, role: str) -> dict[str, str]:
    """The NATS user of a child's role on the embedded server (shared/permissions.py); with
    ``--nats-url`` the children use the TETHER_NATS_USER/PASSWORD of the environment."""
    return server.client_env(role) if server is not None else {}


async def up(
    data_dir: Path,
    *,
    nats_url: str | None,
    host: str,
    port: int,
    nats_port: int,
    demo_agent: bool = True,
) -> int:
    """Run the whole suite until SIGTERM or SIGINT; returns the exit code."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    secret = dev_secret(data_dir)
    env = {
        "TETHER_JWT_SECRET": secret.reveal(),
        "TETHER_GATEWAY_HOST": host,
        "TETHER_GATEWAY_PORT": str(port),
    }
    server: EmbeddedNats | None = None
    if nats_url is None:
        partitions = LogSettings.from_env().partitions  # the services read the same variable
        server = EmbeddedNats(data_dir, port=nats_port, tie_to_parent=True, partitions=partitions)
        server.start()  # from the main thread: the parent-death signal follows the thread
        env["TETHER_NATS_URL"] = server.url
    else:
        env["TETHER_NATS_URL"] = nats_url

    watcher = asyncio.create_task(watch_server(server, stop)) if server else None
    # One gateway and no proxy to tell: stop at once (unless the environment says otherwise).
    drain = {"TETHER_DRAIN_DELAY_SECONDS": os.environ.get("TETHER_DRAIN_DELAY_SECONDS", "0")}
    # Only the gateway (stores subscriptions) and the notifier (signs) get the sealing key.
    key = dev_sealing_key(data_dir)
    sealing_env = {sealing.VARIABLE: key} if key else {}
    gateway_env = {**env, **role_env(server, "gateway"), **drain, **sealing_env}
    children = [Child("gateway", ["gateway"], gateway_env)]
    sys_env = (
        server.sys_env()
        if server
        else {
            k: v
            for k, v in os.environ.items()
            if k in ("TETHER_NATS_SYS_USER", "TETHER_NATS_SYS_PASSWORD")
        }
    )
    if sys_env.get("TETHER_NATS_SYS_USER"):
        presence_env = {**env, **role_env(server, "presence"), **sys_env}
        children.append(Child("presence", ["presence-service"], presence_env))
    else:
        log.warning(
            "presence_service_skipped",
            why="--nats-url without TETHER_NATS_SYS_USER: no system account user",
        )
    notifier_env = {**env, **role_env(server, "notifier"), **sealing_env}
    children.append(Child("notifier", ["notifier"], notifier_env))
    if demo_agent:
        agent_env = {**env, **role_env(server, "agent")}
        children.append(Child("demo-agent", ["demo-agent"], agent_env))
    tasks = []
    for child in children:
        await child.spawn()
        tasks.append(asyncio.create_task(child.supervise()))
    gateway = children[0]

    # The banner waits for every child: a message sent before the demo agent's inbox exists
    # would not be answered.
    async def all_ready() -> None:
        for child in children:
            await child.ready.wait()

    ready = asyncio.create_task(all_ready())
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({ready, stopped}, return_when=asyncio.FIRST_COMPLETED)
    ready.cancel()
    if all(child.ready.is_set() for child in children):
        token = mint(secret, subject="dev", sessions=["*"], role="user", ttl_seconds=30 * 86400)
        demo_token = mint(
            secret, subject="demo", sessions=["demo-*"], role="user", ttl_seconds=30 * 86400
        )
        url = f"http://{host}:{gateway.ready_info.get('port', port)}"
        page = page_url(host, gateway.ready_info.get("port", port))
        banner = [
            "",
            "Tether is up.",
            f"  gateway     {url}",
            f"  demo page   {page}/#token={demo_token}",
            f"  websocket   {url.replace('http', 'ws', 1)}/v1/sessions/demo/ws?token=...",
            f"  nats        {server.url if server else nats_url}",
            f"  data dir    {data_dir}",
            "  dev token   (all sessions, 30 days)",
            f"  {token}",
            "",
            "Try:  tether send demo 'hello'   tether tail demo   tether presence demo",
            "Ctrl-C stops everything.",
            "",
        ]
        print("\n".join(banner), flush=True)
    await stop.wait()
    log.info("shutting_down")
    for child in reversed(children):
        await child.stop()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    if server is not None:
        await asyncio.to_thread(server.stop)
    if watcher is not None:
        await asyncio.gather(watcher, return_exceptions=True)
    log.info("stopped")
    return 0

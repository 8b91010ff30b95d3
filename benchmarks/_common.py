"""Helpers shared by the benchmarks: child processes, /proc readings, statistics, tables.

Children are started with ``sys.executable`` and report on stdout, one JSON object per
line. Each is killed when the benchmark ends (normally or not), and gets SIGKILL from
the kernel if the benchmark process itself dies (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import datetime as dt
import math
import os
import platform
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import orjson

from shared import loop
from shared.server import EmbeddedNats, nats_server_binary
from shared.settings import Secret

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
SECRET = Secret("benchmark-signing-secret-0123456789abcdef")
CLK_TCK = os.sysconf("SC_CLK_TCK")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_prctl = _libc.prctl
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


# ---- statistics ----------------------------------------------------------------------------


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank quantile of already sorted values (NaN when empty)."""
    if not sorted_values:
        return math.nan
    index = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return float(sorted_values[index])


def latency_summary(values_ns: Sequence[int]) -> dict[str, float]:
    """p50/p90/p99/p99.9/max/mean in milliseconds, and the count."""
    ordered = sorted(values_ns)
    n = len(ordered)
    ms = 1e6
    return {
        "count": n,
        "p50_ms": quantile(ordered, 0.50) / ms,
        "p90_ms": quantile(ordered, 0.90) / ms,
        "p99_ms": quantile(ordered, 0.99) / ms,
        "p999_ms": quantile(ordered, 0.999) / ms,
        "max_ms": (ordered[-1] / ms) if n else math.nan,
        "mean_ms": (sum(ordered) / n / ms) if n else math.nan,
    }


def timing_summary(seconds: Sequence[float]) -> dict[str, float]:
    """Median, p95, min and max of repeated timings, in milliseconds."""
    ordered = sorted(seconds)
    return {
        "runs": len(ordered),
        "median_ms": quantile(ordered, 0.50) * 1e3,
        "p95_ms": quantile(ordered, 0.95) * 1e3,
        "min_ms": ordered[0] * 1e3 if ordered else math.nan,
        "max_ms": ordered[-1] * 1e3 if ordered else math.nan,
    }


def ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


# ---- /proc -------------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    """VmRSS of a process in KiB (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_cpu_seconds() -> tuple[float, float]:
    """CPU seconds the whole machine has been busy (all cores) and had stolen, since boot."""
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            fields = [int(v) for v in handle.readline().split()[1:]]
    except OSError:
        return 0.0, 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq) / CLK_TCK, steal / CLK_TCK


def machine_info() -> dict[str, Any]:
    try:
        with open("/proc/loadavg", encoding="ascii") as handle:
            load = handle.read().split()[:3]
    except OSError:
        load = []
    from importlib.metadata import version

    try:
        server = subprocess.run(
            [nats_server_binary(), "--version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        server = "unknown"
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "nats_server": server,
        "nats_py": version("nats-py"),
        "aiohttp": version("aiohttp"),
        "loadavg_at_start": load,
    }


def event_loop() -> str:
    """The event loop ``shared.loop.run`` gives every process (TETHER_EVENT_LOOP)."""
    choice = os.environ.get("TETHER_EVENT_LOOP") or "uvloop"
    if choice == "uvloop":
        try:
            import uvloop
        except ImportError:
            return "asyncio (uvloop not installed)"
        return f"uvloop {getattr(uvloop, '__version__', '?')}"
    return choice


# ---- output --------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain text table; floats get three significant decimals."""

    def fmt(value: Any) -> str:
        if isinstance(value, float):
            if math.isnan(value):
                return "-"
            return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.1f}"
        if isinstance(value, int):
            return f"{value:,}"
        return str(value)

    cells = [[fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = [
        "  ".join(
            h.ljust(w) if i == 0 else h.rjust(w)
            for i, (h, w) in enumerate(zip(headers, widths, strict=True))
        )
    ]
    lines.append("  ".join("-" * w for w in widths))
    for row in cells:
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    return "\n".join(lines)


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))


def say(*parts: Any, file: TextIO | None = None) -> None:
    print(*parts, file=file or sys.stdout, flush=True)


def emit(record: dict[str, Any]) -> None:
    """A child's report to the benchmark process: one JSON line on stdout."""
    sys.stdout.write(orjson.dumps(record).decode() + "\n")
    sys.stdout.flush()


async def watch_parent() -> None:
    """In a child: exit when the benchmark process is gone (belt and braces)."""
    parent = os.getppid()
    while True:
        await asyncio.sleep(1.0)
        if os.getppid() != parent:
            os._exit(3)


# ---- child processes -------------------------------------------------------------------------


class Child:
    """One child process whose stdout carries JSON lines."""

    def __init__(self, name: str, process: asyncio.subprocess.Process, log_path: Path) -> None:
        self.name = name
        self.process = process
        self.log_path = log_path
        self.records: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.reader = asyncio.create_task(self._read())

    @property
    def pid(self) -> int:
        return self.process.pid

    async def _read(self) -> None:
        stream = self.process.stdout
        if stream is None:
            return
        while True:
            line = await stream.readline()
            if not line:
                break
            if line.startswith(b"{"):
                try:
                    record = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(record, dict):
                    await self.records.put(record)
        await self.records.put({"event": "exit"})

    async def expect(
        self, event: str, timeout: float, on_other: Callable[[dict[str, Any]], None] | None = None
    ) -> dict[str, Any]:
        """The next record whose ``event`` is ``event`` (others go to ``on_other``)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError(f"{self.name}: no {event!r} within {timeout:.0f} s{self.tail()}")
            try:
                record = await asyncio.wait_for(self.records.get(), left)
            except TimeoutError:
                continue
            kind = record.get("event")
            if kind == event:
                return record
            if kind == "exit":
                await self.process.wait()
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode} before {event!r}"
                    f"{self.tail()}"
                )
            if kind == "error":
                raise RuntimeError(f"{self.name} failed: {record.get('error')}{self.tail()}")
            if on_other is not None:
                on_other(record)

    def send(self, record: dict[str, Any]) -> None:
        """A command on the child's stdin (one JSON line)."""
        stdin = self.process.stdin
        if stdin is not None and not stdin.is_closing():
            stdin.write(orjson.dumps(record) + b"\n")

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return ("\n--- " + self.name + " stderr ---\n" + "\n".join(text)) if text else ""

    async def stop(self, grace: float = 5.0) -> None:
        if self.process.returncode is None:
            try:
                self.process.terminate()
                await asyncio.wait_for(self.process.wait(), grace)
            except (TimeoutError, ProcessLookupError):
                try:
                    self.process.kill()
                except ProcessLookupError:
                    pass
                await self.process.wait()
        self.reader.cancel()


class Children:
    """Every child a benchmark starts; ``stop_all()`` ends them in reverse order."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: list[Child] = []

    async def start(
        self, name: str, args: Sequence[str], env: dict[str, str] | None = None
    ) -> Child:
        log_path = self.log_dir / f"{name}.log"
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                *args,
                cwd=ROOT,
                env={**os.environ, **(env or {})},
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log_fd,
                preexec_fn=_die_with_parent,
                limit=64 * 1024 * 1024,
            )
        finally:
            os.close(log_fd)
        child = Child(name, process, log_path)
        self.children.append(child)
        return child

    async def stop(self, child: Child) -> None:
        await child.stop()
        if child in self.children:
            self.children.remove(child)

    async def stop_all(self) -> None:
        while self.children:
            await self.stop(self.children[-1])


async def start_gateway(
    children: Children,
    server: EmbeddedNats,
    name: str = "gateway",
    extra_env: dict[str, str] | None = None,
) -> tuple[Child, int]:
    """A gateway subprocess (``python -m shared.cli gateway``) on a random loopback port."""
    env = {
        **server.client_env(),
        "TETHER_JWT_SECRET": SECRET.reveal(),
        "TETHER_GATEWAY_HOST": "127.0.0.1",
        "TETHER_GATEWAY_PORT": "0",
        "TETHER_LOG_FORMAT": "json",
        # Benchmark devices share one token subject across up to thousands of sessions, and
        # a benchmark measures the gateway, not its rate limits (they stay on, just high).
        "TETHER_MAX_CONNECTIONS_PER_SUBJECT": "1000000",
        "TETHER_WS_FRAMES_PER_SECOND": "1000000",
        "TETHER_WS_FRAME_BURST": "1000000",
        "TETHER_TOKEN_REQUESTS_PER_SECOND": "1000000",
        "TETHER_TOKEN_BURST": "1000000",
        **(extra_env or {}),
    }
    child = await children.start(name, ["-m", "shared.cli", "gateway"], env)
    ready = await child.expect("ready", 30)
    return child, int(ready["port"])


def start_nats(data_dir: Path) -> EmbeddedNats:
    server = EmbeddedNats(data_dir, host="127.0.0.1", port=-1)
    server.start()
    return server


def raise_fd_limit() -> int:
    """Raise this process's open-file limit to its hard limit (children inherit it)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def quiet_logs(service: str, level: str = "warning") -> None:
    """Warnings and errors only, as JSON on stderr (stdout carries the reports)."""
    from shared import logs
    from shared.settings import Env

    logs.configure(service, Env({"TETHER_LOG_LEVEL": level, "TETHER_LOG_FORMAT": "json"}))


def orchestrate_main(
    orchestrate: Callable[[], Awaitable[dict[str, Any]]], seconds: float, out: Path
) -> None:
    """What every benchmark's ``main`` does once it is not a child role: Ctrl-C and SIGTERM
    stop every child, the run is bounded by ``seconds``, the result goes to ``out``."""
    install_signal_exit()
    quiet_logs("bench", "error")
    try:
        result = loop.run(asyncio.wait_for(orchestrate(), seconds))
    except KeyboardInterrupt:
        say("interrupted; every child process was stopped")
        sys.exit(130)
    write_json(out, result)
    say(f"\nwrote {out}")


def install_signal_exit() -> None:
    """SIGTERM behaves like Ctrl-C, so ``finally`` blocks stop every child."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)

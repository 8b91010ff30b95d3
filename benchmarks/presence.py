"""Crash detection: SIGKILL of an agent process -> ``presence`` ``leave`` at a device.

    python -m benchmarks.presence                  # 25 kills per design
    python -m benchmarks.presence --kills 50

Processes (all on loopback): the bundled nats-server, ONE gateway subprocess, ONE
presence-service subprocess and, for every kill, a fresh agent subprocess
(``--role agent``: ``shared.agent.connect``, then ``session.set_state("streaming")`` in
session ``kill-{n}``). A WebSocket device in this process is connected to the session;
once it has seen the agent's ``join`` (state ``streaming``) and a random 0 - 1 s pause
has passed, the agent gets SIGKILL. Latency = time the device receives the ``presence``
``leave`` frame for that agent connection (reason ``crashed``) - ``time.time_ns()`` just
before ``os.kill``.

Baseline, in the same run: the TTL-only design (Centrifugo / Phoenix style). The
presence service is stopped; agents (sessions ``ttl-kill-{n}``) put their entry with
``presence.put(nc, entry, ttl_seconds=3)`` and refresh it every 1 s (TTL / 3, an
aggressive heartbeat). The offline signal is the TTL-expiry ``leave`` (reason
``expired``). The random pause before each kill spreads the kills evenly over the
heartbeat cycle, so the baseline is neither best nor worst case.

The benchmark process also follows the server's ``$SYS`` DISCONNECT events and the
bucket's republished changes, to split the latency into stages (kill -> DISCONNECT
event, kill -> bucket removal, kill -> device frame).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

from benchmarks._common import (
    RESULTS,
    SECRET,
    Child,
    Children,
    emit,
    event_loop,
    install_signal_exit,
    latency_summary,
    machine_info,
    ratio,
    say,
    start_gateway,
    start_nats,
    table,
    watch_parent,
    write_json,
)
from shared import loop
from shared.server import EmbeddedNats

MODULE = "benchmarks.presence"
AGENT_ID = "bench-agent"
TTL_SECONDS = 3
GRACE_MS = 100.0  # the presence service's default TETHER_PRESENCE_GRACE_MS
TARGET_P99_MS = 250.0
DESIGNS = {
    "service": {"label": "presence service", "reason": "crashed", "prefix": "kill"},
    "ttl": {
        "label": f"TTL-only ({TTL_SECONDS} s, beat 1 s)",
        "reason": "expired",
        "prefix": "ttl-kill",
    },
}


# ---- the agent child -----------------------------------------------------------------------


async def role_agent(args: argparse.Namespace) -> None:
    """Connect with the SDK, show up in the session, report, then wait to be killed."""
    from shared import agent, presence

    client = await agent.connect(agent_id=AGENT_ID, ensure=False)
    session = client.session(args.session)
    beat: asyncio.Task[None] | None = None
    if args.mode == "service":
        await session.set_state("streaming")
    else:  # TTL-only: a short TTL and a heartbeat, nobody watches the connection
        entry = client.presence.entry(
            session.id, "agent", client.agent_id, client.instance, "streaming"
        )
        await presence.put(client.nc, entry, ttl_seconds=args.ttl)

        async def heartbeat() -> None:
            while True:
                await asyncio.sleep(args.ttl / 3)
                await presence.put(client.nc, entry, ttl_seconds=args.ttl)

        beat = asyncio.create_task(heartbeat())
    server_id, client_id = presence.owner_of(client.nc)
    emit(
        {
            "event": "ready",
            "connection": client.instance,
            "client_id": client_id,
            "server_id": server_id,
        }
    )
    # Until SIGKILL (the benchmark's) or the hard timeout.
    await (beat if beat is not None else asyncio.Event().wait())


async def run_role(args: argparse.Namespace) -> None:
    from shared import logs
    from shared.settings import Env

    logs.configure("bench-agent", Env({"TETHER_LOG_LEVEL": "warning", "TETHER_LOG_FORMAT": "json"}))
    watchdog = asyncio.create_task(watch_parent())
    try:
        await asyncio.wait_for(role_agent(args), args.hard_timeout)
    except Exception as exc:
        emit({"event": "error", "error": repr(exc)})
        raise
    finally:
        watchdog.cancel()


# ---- the benchmark process ------------------------------------------------------------------


class Device:
    """One WebSocket to one session; every frame is stamped with ``time.time_ns()`` on
    arrival (by a reader task that does nothing else)."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.frames: asyncio.Queue[tuple[int, dict[str, Any]]] = asyncio.Queue()
        self.reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, http: Any, port: int, session: str, token: str) -> Device:
        ws = await http.ws_connect(
            f"ws://127.0.0.1:{port}/v1/sessions/{session}/ws",
            params={"token": token, "device": "bench-device"},
        )
        return cls(ws)

    async def _read(self) -> None:
        import aiohttp

        async for msg in self.ws:
            now = time.time_ns()
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            await self.frames.put((now, orjson.loads(msg.data)))
        await self.frames.put((time.time_ns(), {"type": "closed", "code": self.ws.close_code}))

    async def wait(self, match: Any, timeout: float) -> tuple[int, dict[str, Any]]:
        """The first frame ``match`` accepts; TimeoutError after ``timeout`` seconds."""
        loop_ = asyncio.get_running_loop()
        deadline = loop_.time() + timeout
        while True:
            left = deadline - loop_.time()
            if left <= 0:
                raise TimeoutError
            stamp, frame = await asyncio.wait_for(self.frames.get(), left)
            if frame.get("type") == "closed":
                raise RuntimeError(f"the device WebSocket closed ({frame.get('code')})")
            if frame.get("type") == "error":
                raise RuntimeError(f"the gateway sent an error frame: {frame}")
            if match(frame):
                return stamp, frame

    async def close(self) -> None:
        await self.ws.close()
        self.reader.cancel()


@dataclass
class Design:
    """The kills of one design and what each one measured."""

    name: str
    reason: str
    latencies_ns: list[int] = field(default_factory=list)
    disconnect_ns: list[int] = field(default_factory=list)  # kill -> $SYS DISCONNECT
    removal_ns: list[int] = field(default_factory=list)  # kill -> bucket change at a subscriber
    reasons: dict[str, int] = field(default_factory=dict)
    missed: int = 0
    kills: int = 0
    truncated: bool = False
    samples: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "kills": self.kills,
            "leaves_received": len(self.latencies_ns),
            "expected_reason": self.reason,
            "reasons": self.reasons,
            "missed": self.missed,
            "truncated_by_time_budget": self.truncated,
            "latency": latency_summary(self.latencies_ns),
            "stages": {
                "kill_to_sys_disconnect_event": latency_summary(self.disconnect_ns),
                "kill_to_bucket_change_at_subscriber": latency_summary(self.removal_ns),
            },
            "samples": self.samples,
        }


class Watcher:
    """Stamps the server's DISCONNECT events and the bucket's removals as they arrive."""

    def __init__(self) -> None:
        self.disconnects: dict[int, int] = {}  # client id -> arrival ns
        self.removals: dict[str, tuple[int, str]] = {}  # key -> (arrival ns, reason)
        self.app: Any = None
        self.sys: Any = None

    async def start(self, server: EmbeddedNats) -> None:
        from shared import natsconn, subjects

        self.app = await natsconn.connect(server.settings("bench-watch"))
        sys_settings = replace(
            server.settings("bench-watch-sys"),
            user=server.creds.sys_user,
            password=server.creds.sys_password,
        )
        self.sys = await natsconn.connect(sys_settings)
        await self.sys.subscribe(subjects.SYS_DISCONNECT, cb=self._on_disconnect)
        await self.app.subscribe(f"{subjects.PRESENCE_LIVE_ROOT}.>", cb=self._on_change)
        await self.sys.flush()
        await self.app.flush()

    async def _on_disconnect(self, msg: Any) -> None:
        now = time.time_ns()
        try:
            self.disconnects[int(orjson.loads(msg.data)["client"]["id"])] = now
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            pass

    async def _on_change(self, msg: Any) -> None:
        from shared import presence

        now = time.time_ns()
        change = presence.parse_change(msg.subject, msg.headers, msg.data)
        if change is not None and change.entry is None:
            self.removals[change.key] = (now, change.reason)

    async def stop(self) -> None:
        from shared import natsconn

        for nc in (self.sys, self.app):
            if nc is not None:
                await natsconn.close(nc)


class Bench:
    def __init__(self, args: argparse.Namespace, children: Children, server: EmbeddedNats) -> None:
        self.args = args
        self.children = children
        self.server = server
        self.port = 0
        self.presence: Child | None = None
        self.watcher = Watcher()
        self.random = random.Random(args.seed)
        self.started = time.monotonic()
        self.deadline = self.started + args.max_seconds
        from shared.tokens import mint

        self.token = mint(SECRET, subject="bench-device", sessions=["*"], ttl_seconds=3600)

    async def start_presence_service(self) -> None:
        env = {
            **self.server.client_env(),
            **self.server.sys_env(),
            "TETHER_LOG_FORMAT": "json",
            "TETHER_PRESENCE_GRACE_MS": str(GRACE_MS),
        }
        self.presence = await self.children.start(
            "presence-service", ["-m", "shared.cli", "presence-service"], env
        )
        await self.presence.expect("ready", 30)

    async def stop_presence_service(self) -> None:
        if self.presence is not None:
            await self.children.stop(self.presence)
            self.presence = None

    def agent_args(self, mode: str, session: str) -> list[str]:
        return [
            "-m",
            MODULE,
            "--role",
            "agent",
            "--mode",
            mode,
            "--session",
            session,
            "--ttl",
            str(TTL_SECONDS),
            "--hard-timeout",
            str(self.args.max_seconds + 60),
        ]

    async def one_kill(self, http: Any, design: Design, mode: str, n: int) -> None:
        from shared import subjects

        session = f"{DESIGNS[mode]['prefix']}-{n}"
        device = await Device.open(http, self.port, session, self.token)
        agent: Child | None = None
        try:
            await device.wait(lambda f: f.get("type") == "hello", 10)
            agent = await self.children.start(
                f"agent-{session}", self.agent_args(mode, session), self.server.client_env()
            )
            ready = await agent.expect("ready", 30)
            connection = str(ready["connection"])
            key = subjects.presence_key(session, "agent", AGENT_ID, connection)

            def ours(frame: dict[str, Any], *actions: str) -> bool:
                member = frame.get("member") or {}
                return (
                    frame.get("type") == "presence"
                    and frame.get("action") in actions
                    and member.get("connection") == connection
                )

            await device.wait(
                lambda f: ours(f, "join", "update") and f["member"].get("state") == "streaming",
                10,
            )
            await asyncio.sleep(self.random.uniform(0.0, TTL_SECONDS / 3))
            design.kills += 1
            killed = time.time_ns()
            os.kill(agent.pid, signal.SIGKILL)
            try:
                received, frame = await device.wait(
                    lambda f: ours(f, "leave"), self.args.leave_timeout
                )
            except TimeoutError:
                design.missed += 1
                say(f"  {mode:7} #{n:<3} no leave within {self.args.leave_timeout:g} s  (MISSED)")
                design.samples.append({"session": session, "missed": True})
                return
            reason = str(frame.get("reason", ""))
            design.reasons[reason] = design.reasons.get(reason, 0) + 1
            latency = received - killed
            sample: dict[str, Any] = {
                "session": session,
                "reason": reason,
                "latency_ms": round(latency / 1e6, 3),
            }
            disconnect = self.watcher.disconnects.get(int(ready["client_id"]))
            if disconnect is not None and disconnect >= killed:
                design.disconnect_ns.append(disconnect - killed)
                sample["sys_disconnect_ms"] = round((disconnect - killed) / 1e6, 3)
            removal = self.watcher.removals.get(key)
            if removal is not None and removal[0] >= killed:
                design.removal_ns.append(removal[0] - killed)
                sample["bucket_change_ms"] = round((removal[0] - killed) / 1e6, 3)
            design.samples.append(sample)
            flag = ""
            if reason == design.reason:
                design.latencies_ns.append(latency)
            else:
                flag = f"  (WRONG REASON, expected {design.reason}; not counted)"
            stages = "".join(
                f"  {name} {sample[k]:8.1f} ms"
                for name, k in (("disconnect", "sys_disconnect_ms"), ("bucket", "bucket_change_ms"))
                if k in sample
            )
            say(f"  {mode:7} #{n:<3} leave {reason:8} {latency / 1e6:8.1f} ms{stages}{flag}")
        finally:
            if agent is not None:
                await self.children.stop(agent)
            await device.close()

    async def run_design(self, http: Any, mode: str, budget_end: float) -> Design:
        design = Design(mode, str(DESIGNS[mode]["reason"]))
        for n in range(self.args.kills):
            if time.monotonic() > budget_end:
                design.truncated = True
                say(f"  ! time budget reached: {mode} stops after {n} kills")
                break
            await self.one_kill(http, design, mode, n)
        return design


def print_report(service: dict[str, Any], ttl: dict[str, Any]) -> None:
    rows: list[list[Any]] = []
    for label, res in (
        (str(DESIGNS["service"]["label"]), service),
        (str(DESIGNS["ttl"]["label"]), ttl),
    ):
        lat = res["latency"]
        rows.append(
            [
                label,
                res["kills"],
                res["leaves_received"],
                res["missed"],
                lat["p50_ms"],
                lat["p90_ms"],
                lat["p99_ms"],
                lat["max_ms"],
                res["stages"]["kill_to_sys_disconnect_event"]["p50_ms"],
                res["stages"]["kill_to_bucket_change_at_subscriber"]["p50_ms"],
            ]
        )
    rows.append(
        ["ratio TTL / service", "", "", ""]
        + [
            ratio(ttl["latency"][k], service["latency"][k])
            for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms")
        ]
        + ["", ""]
    )
    say()
    say("SIGKILL of an agent -> presence leave at the device (ms)")
    headers = ["", "kills", "leaves", "missed", "p50", "p90", "p99", "max", "disc p50", "bkt p50"]
    say(table(headers, rows))
    say("  disc = kill -> $SYS DISCONNECT event; bkt = kill -> bucket removal at a subscriber")
    for name, res in (("service", service), ("ttl", ttl)):
        wrong = {r: c for r, c in res["reasons"].items() if r != res["expected_reason"]}
        if wrong:
            say(f"  ! {name}: leaves with an unexpected reason (not counted): {wrong}")
    p99 = service["latency"]["p99_ms"]
    verdict = "meets" if p99 <= TARGET_P99_MS else "MISSES"
    say(f"  presence service p99 {p99:.1f} ms {verdict} the {TARGET_P99_MS:g} ms target")


async def orchestrate(args: argparse.Namespace) -> dict[str, Any]:
    import aiohttp

    work = Path(tempfile.mkdtemp(prefix="tether-bench-presence-"))
    children = Children(work)
    server: EmbeddedNats | None = None
    bench: Bench | None = None
    try:
        say(f"starting nats-server (data in {work})")
        server = await asyncio.to_thread(start_nats, work / "nats")
        machine = machine_info()
        bench = Bench(args, children, server)
        say("starting the gateway and the presence service")
        _, bench.port = await start_gateway(children, server)
        await bench.start_presence_service()
        await bench.watcher.start(server)
        async with aiohttp.ClientSession() as http:
            # The service phase is short; keep most of the budget for the TTL phase.
            say(f"phase 1: presence service (grace {GRACE_MS:g} ms), {args.kills} kills")
            service_end = bench.started + 0.4 * args.max_seconds
            service = await bench.run_design(http, "service", service_end)
            say("phase 2: TTL-only baseline, presence service stopped")
            await bench.stop_presence_service()
            ttl_end = bench.deadline - 2 * (TTL_SECONDS + 3)
            ttl = await bench.run_design(http, "ttl", ttl_end)
        service_summary, ttl_summary = service.summary(), ttl.summary()
        print_report(service_summary, ttl_summary)
        return {
            "benchmark": "presence",
            "config": {
                "kills_per_design": args.kills,
                "grace_ms": GRACE_MS,
                "ttl_seconds": TTL_SECONDS,
                "heartbeat_seconds": TTL_SECONDS / 3,
                "pause_before_kill_seconds": [0.0, TTL_SECONDS / 3],
                "leave_timeout_seconds": args.leave_timeout,
                "seed": args.seed,
            },
            "machine": {**machine, "event_loop": event_loop()},
            "presence_service": service_summary,
            "ttl_only": ttl_summary,
            "ratio_ttl_over_service": {
                key: ratio(
                    ttl_summary["latency"][f"{key}_ms"], service_summary["latency"][f"{key}_ms"]
                )
                for key in ("p50", "p90", "p99", "max")
            },
            "target_p99_ms": TARGET_P99_MS,
            "meets_target": service_summary["latency"]["p99_ms"] <= TARGET_P99_MS,
            "elapsed_seconds": round(time.monotonic() - bench.started, 1),
        }
    finally:
        if bench is not None:
            await bench.watcher.stop()
        await children.stop_all()
        if server is not None:
            await asyncio.to_thread(server.stop)
        shutil.rmtree(work, ignore_errors=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.presence",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--kills", type=int, default=25, help="agent kills per design")
    parser.add_argument("--out", type=Path, default=RESULTS / "presence.json")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=270.0,
        help="time budget; phases stop taking new kills when it runs out",
    )
    parser.add_argument(
        "--leave-timeout", type=float, default=10.0, help="seconds to wait for a leave"
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the pauses before kills")
    parser.add_argument("--role", choices=["agent"], help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=sorted(DESIGNS), help=argparse.SUPPRESS)
    parser.add_argument("--session", default="", help=argparse.SUPPRESS)
    parser.add_argument("--ttl", type=int, default=TTL_SECONDS, help=argparse.SUPPRESS)
    parser.add_argument("--hard-timeout", type=float, default=600.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.kills < 1 or args.max_seconds <= 0 or args.leave_timeout <= 0:
        parser.error("--kills, --max-seconds and --leave-timeout must be positive")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.role:
        loop.run(run_role(args))  # the project's event loop, as a real agent would use
        return
    install_signal_exit()
    from shared import logs
    from shared.settings import Env

    logs.configure("bench", Env({"TETHER_LOG_LEVEL": "error", "TETHER_LOG_FORMAT": "json"}))
    try:
        # Hard bound: the budget plus room for start-up and shutdown.
        result = asyncio.run(asyncio.wait_for(orchestrate(args), args.max_seconds + 25))
    except KeyboardInterrupt:
        say("interrupted; every child process was stopped")
        sys.exit(130)
    except TimeoutError:
        say(f"gave up after {args.max_seconds + 25:g} s; every child process was stopped")
        sys.exit(1)
    write_json(args.out, result)
    say(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()

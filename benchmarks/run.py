"""``tether bench``: run the benchmark scenarios, then write the report.

    tether bench                       # every scenario at full scale (~20 minutes)
    tether bench latency throughput    # named scenarios
    tether bench --quick               # tiny scale (seconds each): the smoke test
    tether bench --report-only         # rebuild docs/benchmarks.md from the results

Each scenario is one ``python -m benchmarks.<script>`` subprocess (which starts its own
nats-server, gateway and client processes); its output is shown as it runs, prefixed with
the scenario's name. Results are JSON files in ``benchmarks/results/`` (``--quick``:
``benchmarks/results/quick/``, so a smoke run never overwrites measured figures); the
report (``docs/benchmarks.md`` and PNG charts in ``docs/benchmarks/``; for ``--quick`` both
next to the quick results) is generated from whatever results are there.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


@dataclass(frozen=True)
class Scenario:
    name: str
    module: str
    out: str  # results file name
    full: tuple[str, ...]
    quick: tuple[str, ...]
    timeout: float  # seconds, full scale
    needs: str = ""  # an executable that must be on the PATH
    about: str = ""


LATENCY_QUICK = ("--seconds", "0.5", "--rounds", "1", "--warmup", "0.2", "--drain", "3")

SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "latency-1",
        "latency",
        "latency.json",
        ("--sessions", "1"),
        ("--sessions", "1", *LATENCY_QUICK),
        300,
        about="agent publish -> device, 1 session x 50 tokens/s vs raw NATS",
    ),
    Scenario(
        "latency-100",
        "latency",
        "latency.json",
        ("--sessions", "100"),
        ("--sessions", "5", *LATENCY_QUICK),
        300,
        about="100 sessions x 50 tokens/s vs raw NATS",
    ),
    Scenario(
        "latency-1000",
        "latency",
        "latency.json",
        ("--sessions", "1000"),
        ("--sessions", "10", *LATENCY_QUICK),
        420,
        about="1,000 sessions x 50 tokens/s vs raw NATS",
    ),
    Scenario(
        "throughput",
        "throughput",
        "throughput.json",
        (),
        ("--quick",),
        600,
        about="frames/s from one gateway, fan-out 1 and 10, vs a raw aiohttp send loop",
    ),
    Scenario(
        "connections",
        "connections",
        "connections.json",
        (),
        ("--quick",),
        900,
        about="10,000 WebSockets on one gateway: KB each, p99 of a stream among them",
    ),
    Scenario(
        "redis-sse",
        "redis_sse",
        "redis_sse.json",
        (),
        ("--quick",),
        300,
        needs="redis-server",
        about="Redis pub/sub + SSE relay vs Tether: latency, events lost on a 2 s disconnect",
    ),
    Scenario(
        "replay",
        "replay",
        "replay.json",
        (),
        ("--tiny",),
        900,
        about="reconnect mid-answer with 10k deltas stored; direct get vs consumers",
    ),
    Scenario(
        "presence",
        "presence",
        "presence.json",
        (),
        ("--kills", "1"),
        400,
        about="agent kill -9 -> device sees it offline, vs TTL heartbeats",
    ),
    Scenario(
        "cancel",
        "cancel",
        "cancel.json",
        (),
        ("--cancels", "5"),
        180,
        about="device cancel -> agent knows",
    ),
    Scenario(
        "notifier",
        "notifier",
        "notifier.json",
        (),
        ("--runs", "5", "--burst", "20", "--concurrency", "4"),
        300,
        about="run completed, user offline -> webhook received",
    ),
    Scenario(
        "partitions",
        "partitions",
        "partitions.json",
        (),
        ("--quick",),
        300,
        about="session log on a 3-node R3 cluster: one stream vs 3 partitions, acks/s, CPU",
    ),
)

BY_NAME = {s.name: s for s in SCENARIOS}
GROUPS = {"latency": [s.name for s in SCENARIOS if s.module == "latency"]}


def select(names: list[str]) -> list[Scenario]:
    if not names or names == ["all"]:
        return list(SCENARIOS)
    chosen: list[str] = []
    for name in names:
        key = name.replace("_", "-")
        for item in GROUPS.get(key, [key]):
            if item not in BY_NAME:
                known = ", ".join([*BY_NAME, *GROUPS])
                raise SystemExit(f"tether bench: unknown scenario {name!r} (known: {known})")
            if item not in chosen:
                chosen.append(item)
    return [BY_NAME[n] for n in chosen]


def run_scenario(scenario: Scenario, quick: bool, results: Path, python: str) -> tuple[str, float]:
    """Run one scenario as a subprocess, streaming its output; (status, seconds)."""
    if scenario.needs and shutil.which(scenario.needs) is None:
        print(
            f"[{scenario.name}] skipped: {scenario.needs} is not installed"
            f" (Debian: apt-get install -y {scenario.needs})",
            flush=True,
        )
        return "skipped", 0.0
    args = [*(scenario.quick if quick else scenario.full), "--out", str(results / scenario.out)]
    command = [python, "-m", f"benchmarks.{scenario.module}", *args]
    timeout = 240.0 if quick else scenario.timeout
    print(f"\n=== {scenario.name}: {scenario.about}", flush=True)
    print(f"[{scenario.name}] $ {' '.join(command[1:])}", flush=True)
    started = time.monotonic()
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        start_new_session=True,
    )
    status = "ok"
    try:
        assert process.stdout is not None
        for line in process.stdout:
            print(f"[{scenario.name}] {line.rstrip()}", flush=True)
            if time.monotonic() - started > timeout:
                status = "timeout"
                break
        if status == "timeout":
            process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(max(1.0, timeout - (time.monotonic() - started)) + 30)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
            status = "timeout"
    except KeyboardInterrupt:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
        raise
    seconds = time.monotonic() - started
    if status == "ok" and code != 0:
        status = f"failed (exit {code})"
    print(f"[{scenario.name}] {status} in {seconds:.1f} s", flush=True)
    return status, seconds


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="tether bench",
        description="Run the benchmark scenarios and write docs/benchmarks.md.",
    )
    parser.add_argument(
        "scenarios",
        nargs="*",
        help=f"all (default) or some of: {', '.join([*BY_NAME, *GROUPS])}",
    )
    parser.add_argument("--quick", action="store_true", help="tiny scale, seconds each")
    parser.add_argument("--results", type=Path, default=None, help="results directory")
    parser.add_argument("--report", type=Path, default=None, help="the Markdown report")
    parser.add_argument("--charts", type=Path, default=None, help="PNG chart directory")
    parser.add_argument("--no-report", action="store_true", help="only run the scenarios")
    parser.add_argument("--report-only", action="store_true", help="only write the report")
    parser.add_argument("--list", action="store_true", help="list the scenarios")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for s in SCENARIOS:
            print(f"{s.name:14} {s.about}")
        return 0
    results = args.results or (RESULTS / "quick" if args.quick else RESULTS)
    report = args.report or (
        results / "benchmarks.md" if args.quick else ROOT / "docs" / "benchmarks.md"
    )
    charts = args.charts or (report.parent / "benchmarks")
    results.mkdir(parents=True, exist_ok=True)
    statuses: dict[str, str] = {}
    if not args.report_only:
        chosen = select(args.scenarios)
        env_python = os.environ.get("TETHER_BENCH_PYTHON") or sys.executable
        print(
            f"tether bench: {len(chosen)} scenario(s){' (quick)' if args.quick else ''};"
            f" results in {results}",
            flush=True,
        )
        total = time.monotonic()
        for scenario in chosen:
            status, _ = run_scenario(scenario, args.quick, results, env_python)
            statuses[scenario.name] = status
        print(f"\ntether bench: done in {time.monotonic() - total:.0f} s", flush=True)
        for name, status in statuses.items():
            print(f"  {name:14} {status}", flush=True)
    if not args.no_report:
        from benchmarks import report as report_module

        written = report_module.write(results, report, charts)
        print(f"report: {report}", flush=True)
        for path in written:
            print(f"chart:  {path}", flush=True)
    failed = [n for n, s in statuses.items() if s not in ("ok", "skipped")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Smoke test of ``tether bench``: every scenario at tiny scale, then the report.

No timing is asserted (the machine is shared); this only keeps the benchmarks runnable.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from benchmarks import run as bench_run
from shared import natsfast

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = [s.name for s in bench_run.SCENARIOS]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One results directory shared by the scenarios and the report."""
    return tmp_path_factory.mktemp("bench-results")


def bench(*args: str, timeout: float = 170) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", "bench", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.timeout(180)
@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario_runs_at_tiny_scale(name: str, results: Path) -> None:
    """Each scenario runs with --quick and writes its results JSON."""
    scenario = bench_run.BY_NAME[name]
    if scenario.needs and shutil.which(scenario.needs) is None:
        pytest.skip(
            f"{scenario.needs} is not installed (apt-get install -y {scenario.needs}):"
            f" the {name} scenario needs it"
        )
    if name == "redis-sse" and importlib.util.find_spec("redis") is None:
        pytest.skip("the redis package is not installed (pip install -e '.[bench]')")
    done = bench("--quick", "--no-report", "--results", str(results), name)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert f"[{name}] ok in" in done.stdout
    data = orjson.loads((results / scenario.out).read_bytes())
    assert isinstance(data, dict) and data


def test_report_has_a_section_per_scenario(results: Path, tmp_path: Path) -> None:
    """The report renders a table for every scenario that has results, plus charts."""
    report = tmp_path / "benchmarks.md"
    done = bench("--report-only", "--results", str(results), "--report", str(report), timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    text = report.read_text(encoding="utf-8")
    assert "## Summary against DESIGN.md §5" in text
    titles = {
        "latency.json": "End-to-end latency",
        "throughput.json": "Frames per second",
        "connections.json": "Concurrent WebSockets",
        "redis_sse.json": "hand-built stack",
        "replay.json": "Reconnect mid-answer",
        "presence.json": "Agent crash",
        "cancel.json": "Cancel: device",
        "notifier.json": "Run completed",
    }
    for name, title in titles.items():
        assert title in text
        if (results / name).exists():
            assert f"{title}" in text and "Not run yet" not in text.split(title, 1)[1][:200]
    if importlib.util.find_spec("matplotlib") is not None and (results / "latency.json").exists():
        charts = sorted((tmp_path / "benchmarks").glob("*.png"))
        assert charts, "no charts were written"
        assert all(c.stat().st_size > 1000 for c in charts)


def test_bench_rejects_an_unknown_scenario() -> None:
    """An unknown scenario name is an error that lists the known ones."""
    done = bench("no-such-scenario", timeout=60)
    assert done.returncode != 0
    assert "unknown scenario" in done.stderr and "throughput" in done.stderr


@pytest.mark.parametrize(
    "raw",
    [
        b"Nats-Stream: TETHER\r\nNats-Sequence: 12\r\nNats-Last-Sequence: 11\r\n\r\n",
        b"A:b\r\nB:\tc \r\nbad name: x\r\nno-colon\r\n\xff\xfe: y\r\nU: \xc3\xa9\xff\r\n\r\n",
        b"",
        b": empty name\r\nK:\r\nK2: a: b\r\n",
        b"X\x1fY: z\r\n Lead: v\r\nTab\tIn: w\r\n",
    ],
)
def test_fast_header_parser_matches_nats_py(raw: bytes) -> None:
    """shared.natsfast parses headers exactly as nats-py's own parser does."""
    original = natsfast.original()
    if original is None:
        pytest.skip("this nats-py has no pure-Python header parser to compare with")
    assert natsfast.parse_header_lines(raw) == original(raw)  # type: ignore[operator]


def test_fast_header_parser_matches_nats_py_on_random_blocks() -> None:
    """On 20,000 random header blocks the fast parser and nats-py's agree."""
    import random

    original = natsfast.original()
    if original is None:
        pytest.skip("this nats-py has no pure-Python header parser to compare with")
    pieces = [b"a", b"Z", b":", b" ", b"\t", b"\r\n", b"\r", b"\x0b", b"\x1c", b"\xc2\x85"]
    pieces += [b"\xc2\xa0", b"\xff", b"\xe2\x80", b"\xc3\xa9", b"-", b"\x00", b"Nats-Seq"]
    rng = random.Random(7)
    for _ in range(20_000):
        raw = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 16)))
        assert natsfast.parse_header_lines(raw) == original(raw), raw  # type: ignore[operator]

"""Durable Streams on the gateway (/v1/stream/*): the public conformance suite, bad input,
auth, and two gateways serving one stream."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from services.gateway.app import Gateway
from services.gateway.durable_streams import store, sweeper
from services.gateway.durable_streams.meta import Metadata
from services.gateway.durable_streams.service import Streams
from shared import natsconn, subjects
from shared.server import EmbeddedNats
from tests.conftest import ROOT, GatewayProcess, gateway_settings, token

SUITE_DIR = ROOT / "tests" / "js" / "durable-streams"

# Conformance tests allowed to fail, each with its reason. Empty: the gateway passes them all.
KNOWN_FAILURES: dict[str, str] = {}


# ---- the conformance suite (@durable-streams/server-conformance-tests 0.3.6) -------------


@pytest.fixture(scope="module")
def suite() -> Path:
    """The suite's folder with its pinned dependencies (skip only without node and npm)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed for the Durable Streams conformance suite")
    if not (SUITE_DIR / "node_modules" / "@durable-streams" / "server-conformance-tests").is_dir():
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=SUITE_DIR,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, f"npm ci failed:\n{done.stdout}\n{done.stderr}"
    return SUITE_DIR


def _results(report: dict[str, Any]) -> tuple[list[str], list[str]]:
    passed, failed = [], []
    for file in report.get("testResults", []):
        for result in file.get("assertionResults", []):
            title = " > ".join([*result.get("ancestorTitles", [])[1:], result["title"]])
            if result["status"] == "passed":
                passed.append(title)
            elif result["status"] == "failed":
                failed.append(title)
    return passed, failed


async def _run_suite(suite: Path, url: str, report_path: Path) -> tuple[list[str], list[str]]:
    """Run the suite against ``url``; (passed, failed) test titles."""
    npx = shutil.which("npx")
    assert npx is not None, "npx is missing although node and npm are installed"
    process = await asyncio.create_subprocess_exec(
        npx,
        "vitest",
        "run",
        "--reporter=json",
        f"--outputFile={report_path}",
        cwd=suite,
        env={**os.environ, "DURABLE_STREAMS_URL": url, "DURABLE_STREAMS_LONG_POLL_MS": "8000"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 840)
    report = _read_report(report_path)
    assert report is not None, f"vitest wrote no report:\n{output.decode()[-4000:]}"
    return _results(report)


def _read_report(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def _check(passed: list[str], failed: list[str], label: str) -> None:
    print(f"durable streams conformance ({label}): {len(passed)} passed, {len(failed)} failed")
    unexpected = sorted(set(failed) - set(KNOWN_FAILURES))
    assert not unexpected, "conformance failures:\n" + "\n".join(unexpected)
    assert len(passed) >= 300, f"only {len(passed)} conformance tests passed"


GATEWAY_ENV = {
    "TETHER_STREAMS_AUTH": "none",
    "TETHER_STREAMS_LONG_POLL_SECONDS": "3",
    "TETHER_STREAMS_SSE_SECONDS": "10",
}


@pytest.mark.timeout(900)
async def test_conformance_suite(
    suite: Path, gateway_process: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    """Every Durable Streams conformance test passes against a gateway subprocess."""
    gw = await asyncio.to_thread(gateway_process, **GATEWAY_ENV)
    passed, failed = await _run_suite(suite, gw.url, tmp_path / "vitest.json")
    _check(passed, failed, "one gateway")
    assert gw.alive


async def _round_robin(upstreams: list[str]) -> web.AppRunner:
    """A reverse proxy on a free port sending each request to the next upstream in turn."""
    turn = itertools.cycle(upstreams)
    hop = {"transfer-encoding", "connection", "keep-alive", "content-length", "host"}
    client = aiohttp.ClientSession(auto_decompress=False)

    async def forward(request: web.Request) -> web.StreamResponse:
        data = await request.read()
        async with client.request(
            request.method,
            next(turn) + request.path_qs,
            headers={k: v for k, v in request.headers.items() if k.lower() not in hop},
            data=data or None,
            allow_redirects=False,
            skip_auto_headers=["Content-Type"],
        ) as upstream:
            headers = {k: v for k, v in upstream.headers.items() if k.lower() not in hop}
            response = web.StreamResponse(status=upstream.status, headers=headers)
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    async def close_client(_: web.Application) -> None:
        await client.close()

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", forward)
    app.on_cleanup.append(close_client)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


@pytest.mark.timeout(900)
async def test_conformance_suite_across_two_gateways(
    suite: Path, gateway_process: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    """The suite passes when consecutive requests alternate between two gateway processes."""
    gateways = [await asyncio.to_thread(gateway_process, **GATEWAY_ENV) for _ in range(2)]
    runner = await _round_robin([gw.url for gw in gateways])
    try:
        port = runner.addresses[0][1]
        passed, failed = await _run_suite(suite, f"http://127.0.0.1:{port}", tmp_path / "r.json")
    finally:
        await runner.cleanup()
    _check(passed, failed, "two gateways, round robin")
    assert all(gw.alive for gw in gateways)


# ---- bad input, auth, two gateways (in-process) ------------------------------------------


@pytest.fixture
async def open_gateway(nats_server: EmbeddedNats) -> AsyncIterator[Gateway]:
    """An in-process gateway with TETHER_STREAMS_AUTH=none and short live timeouts."""
    gw = Gateway(
        gateway_settings(
            nats_server,
            streams_auth="none",
            streams_long_poll_seconds=2.0,
            streams_max_append_bytes=64 * 1024,
        )
    )
    await gw.start()
    yield gw
    await gw.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client session."""
    async with aiohttp.ClientSession() as session:
        yield session


def _url(gw: Gateway, path: str) -> str:
    return f"http://127.0.0.1:{gw.port}/v1/stream/{path}"


async def _error(response: aiohttp.ClientResponse, status: int, code: str) -> None:
    assert response.status == status, await response.text()
    assert response.headers["Content-Type"].startswith("application/json")
    body = await response.json()
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"


async def test_bad_input_is_rejected_and_loses_nothing(
    open_gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    """Malformed bodies, wrong content types, bad headers and unknown streams get clear 4xx
    JSON errors, and a good stream next to them keeps exactly its data."""
    good = _url(open_gateway, "bad-input/good")
    events = _url(open_gateway, "bad-input/events")
    async with http.put(good, data=b"kept", headers={"Content-Type": "text/plain"}) as r:
        assert r.status == 201
    async with http.put(events, data=b'[{"n":1}]', headers={"Content-Type": "application/json"}):
        pass
    text = {"Content-Type": "text/plain"}
    as_json = {"Content-Type": "application/json"}

    # Unknown streams.
    missing = _url(open_gateway, "bad-input/missing")
    async with http.get(missing) as r:
        await _error(r, 404, "stream_not_found")
    async with http.post(missing, data=b"x", headers=text) as r:
        await _error(r, 404, "stream_not_found")
    async with http.delete(missing) as r:
        await _error(r, 404, "stream_not_found")
    async with http.head(missing) as r:
        assert r.status == 404
    # Malformed bodies.
    async with http.post(events, data=b"{not json", headers=as_json) as r:
        await _error(r, 400, "bad_request")
    async with http.post(events, data=b"[]", headers=as_json) as r:
        await _error(r, 400, "bad_request")
    async with http.post(events, data=b"NaN", headers=as_json) as r:
        await _error(r, 400, "bad_request")
    async with http.post(good, data=b"", headers=text) as r:
        await _error(r, 400, "bad_request")
    async with http.post(good, data=b"x" * (64 * 1024 + 1), headers=text) as r:
        await _error(r, 413, "payload_too_large")
    # Wrong or missing content types.
    async with http.post(good, data=b'{"a":1}', headers=as_json) as r:
        await _error(r, 409, "stream_conflict")
    async with http.post(events, data=b"plain", headers=text) as r:
        await _error(r, 409, "stream_conflict")
    async with http.post(good, data=b"x", headers={"Content-Type": ""}) as r:
        await _error(r, 400, "bad_request")
    async with http.put(good, headers=as_json) as r:
        await _error(r, 409, "stream_conflict")
    # Bad headers and parameters.
    async with http.get(good, params={"offset": "../etc"}) as r:
        await _error(r, 400, "bad_request")
    async with http.get(good, params={"live": "long-poll"}) as r:
        await _error(r, 400, "bad_request")
    async with http.get(good, params={"offset": "-1", "live": "forever"}) as r:
        await _error(r, 400, "bad_request")
    bad_ttl = _url(open_gateway, "bad-input/ttl")
    for headers in (
        {"Stream-TTL": "1e3"},
        {"Stream-TTL": "60", "Stream-Expires-At": "2030-01-01T00:00:00Z"},
        {"Stream-Expires-At": "tomorrow"},
    ):
        async with http.put(bad_ttl, headers={**text, **headers}) as r:
            await _error(r, 400, "bad_request")
    async with http.put(bad_ttl, data=b'{"a":', headers=as_json) as r:
        await _error(r, 400, "bad_request")
    async with http.head(bad_ttl) as r:
        assert r.status == 404  # nothing half-created
    for headers in (
        {"Producer-Id": "p"},
        {"Producer-Id": "p", "Producer-Epoch": "x", "Producer-Seq": "0"},
    ):
        async with http.post(good, data=b"x", headers={**text, **headers}) as r:
            await _error(r, 400, "bad_request")
    async with http.put(
        _url(open_gateway, "bad-input/fork"),
        headers={**text, "Stream-Forked-From": "/v1/stream/bad-input/nope"},
    ) as r:
        await _error(r, 404, "stream_not_found")

    async with http.patch(good, data=b"x", headers=text) as r:
        await _error(r, 405, "method_not_allowed")

    # Nothing lost, nothing added.
    async with http.get(good) as r:
        assert r.status == 200
        assert await r.read() == b"kept"
    async with http.get(events) as r:
        assert await r.json() == [{"n": 1}]


async def test_token_auth_guards_streams(
    nats_server: EmbeddedNats, http: aiohttp.ClientSession
) -> None:
    """With TETHER_STREAMS_AUTH=token (the default) the path's first segment must be granted,
    and a read-only token reads but cannot append."""
    gw = Gateway(gateway_settings(nats_server))
    await gw.start()
    try:
        url = _url(gw, "team-a/notes")
        text = {"Content-Type": "text/plain"}
        async with http.put(url, headers=text) as r:
            await _error(r, 401, "unauthorized")
        wrong = {"Authorization": f"Bearer {token(['team-b'])}"}
        async with http.put(url, headers={**text, **wrong}) as r:
            await _error(r, 403, "forbidden")
        right = {"Authorization": f"Bearer {token(['team-*'])}"}
        async with http.put(url, data=b"hi", headers={**text, **right}) as r:
            assert r.status == 201
        async with http.get(url, params={"token": token(["team-a"])}) as r:
            assert await r.read() == b"hi"
        reader = {"Authorization": f"Bearer {token(['team-a'], scopes=['read'])}"}
        async with http.get(url, headers=reader) as r:
            assert await r.read() == b"hi"
        async with http.post(url, data=b"more", headers={**text, **reader}) as r:
            await _error(r, 403, "forbidden")  # read-only: no appends
    finally:
        await gw.stop()


async def test_two_gateways_serve_one_stream(
    nats_server: EmbeddedNats, http: aiohttp.ClientSession
) -> None:
    """A long-poll on one gateway wakes for an append through another, and producer state
    (dedupe, fencing) holds across gateways."""
    gateways = [
        Gateway(gateway_settings(nats_server, streams_auth="none", streams_long_poll_seconds=5.0))
        for _ in range(2)
    ]
    for gw in gateways:
        await gw.start()
    try:
        a, b = (_url(gw, "shared/two-gateways") for gw in gateways)
        text = {"Content-Type": "text/plain"}
        async with http.put(a, headers=text) as r:
            tail = r.headers["Stream-Next-Offset"]
        poll = asyncio.ensure_future(http.get(b, params={"offset": tail, "live": "long-poll"}))
        await asyncio.sleep(0.3)
        producer = {"Producer-Id": "p1", "Producer-Epoch": "0", "Producer-Seq": "0"}
        async with http.post(a, data=b"one", headers={**text, **producer}) as r:
            assert r.status == 200
        response = await asyncio.wait_for(poll, 5)
        assert response.status == 200
        assert await response.read() == b"one"
        response.release()
        async with http.post(b, data=b"one", headers={**text, **producer}) as r:
            assert r.status == 204  # the retry through the other gateway is a duplicate
        fenced = {**producer, "Producer-Epoch": "1"}
        async with http.post(b, data=b"two", headers={**text, **fenced}) as r:
            assert r.status == 200
        async with http.post(
            a, data=b"zombie", headers={**text, **producer, "Producer-Seq": "1"}
        ) as r:
            assert r.status == 403
            assert r.headers["Producer-Epoch"] == "1"
        async with http.get(a) as r:
            assert await r.read() == b"onetwo"

        async def append(url: str, i: int) -> int:
            async with http.post(url, data=f"<{i}>".encode(), headers=text) as r:
                return r.status

        statuses = await asyncio.gather(*(append((a, b)[i % 2], i) for i in range(40)))
        assert statuses == [204] * 40
        async with http.get(b) as r:
            content = (await r.read()).decode()
        assert sorted(content[6:].strip("<>").split("><"), key=int) == [str(i) for i in range(40)]
    finally:
        for gw in gateways:
            await gw.stop()


async def test_sweep_reclaims_streams_nobody_reads(
    open_gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    """An expired stream nobody touches again is deleted by the sweep, data and record."""
    streams = Streams(open_gateway.nc, Metadata(open_gateway.bucket(subjects.DS_META_BUCKET)))
    text = {"Content-Type": "text/plain"}
    async with http.put(
        _url(open_gateway, "sweep/short"), data=b"old", headers={**text, "Stream-TTL": "1"}
    ):
        pass
    async with http.put(
        _url(open_gateway, "sweep/long"), data=b"kept", headers={**text, "Stream-TTL": "3600"}
    ):
        pass
    short = await streams.metadata.get("sweep/short")
    assert short is not None
    await asyncio.sleep(1.2)
    assert await sweeper.sweep(streams) >= 1
    assert await streams.metadata.get("sweep/short") is None
    found, _ = await store.scan(open_gateway.nc, short.meta.gen, 0, None, 1 << 20)
    assert found == []
    async with http.get(_url(open_gateway, "sweep/long")) as r:
        assert await r.read() == b"kept"


async def test_sweeper_reads_only_what_changed_since_its_last_sweep(
    open_gateway: Gateway, http: aiohttp.ClientSession, nats_server: EmbeddedNats
) -> None:
    """A gateway's sweeper reads the whole metadata bucket once, then only the records
    written since, and still reclaims a stream that expires later."""
    streams = Streams(open_gateway.nc, Metadata(open_gateway.bucket(subjects.DS_META_BUCKET)))
    text = {"Content-Type": "text/plain"}
    for n in range(5):
        async with http.put(
            _url(open_gateway, f"inc/keep-{n}"), data=b"x", headers={**text, "Stream-TTL": "3600"}
        ):
            pass
    requests: list[dict[str, Any]] = []

    async def record(msg: Any) -> None:
        requests.append(orjson.loads(msg.data))

    admin = await natsconn.connect(nats_server.settings("ds-sweep-watch"))  # sees API calls
    watch = await admin.subscribe(f"$JS.API.DIRECT.GET.KV_{subjects.DS_META_BUCKET}", cb=record)
    await admin.flush()
    sweep = sweeper.Sweeper(streams)
    await sweep.sweep()
    async with http.put(
        _url(open_gateway, "inc/short"), data=b"old", headers={**text, "Stream-TTL": "1"}
    ):
        pass
    await asyncio.sleep(1.2)
    assert await sweep.sweep() >= 1
    assert await streams.metadata.get("inc/short") is None
    await sweep.sweep()
    await admin.flush()
    await watch.unsubscribe()
    await natsconn.close(admin)
    assert [r.get("seq") == 1 for r in requests].count(True) == 1, requests  # one full read
    assert len(requests) >= 3

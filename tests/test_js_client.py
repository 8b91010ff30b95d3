"""The browser client and demo page: node unit tests of the JS, and how the gateway serves it."""

from __future__ import annotations

import gzip
import shutil
import subprocess

import aiohttp
import pytest

from services.gateway import static
from services.gateway.app import Gateway
from tests.conftest import ROOT

JS_TESTS = ROOT / "tests" / "js" / "client"


def test_js_client_unit_tests_pass_under_node() -> None:
    """`node --test tests/js/client/` passes (merge logic, reconnects, resends, storage)."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    files = sorted(str(path) for path in JS_TESTS.glob("*.test.mjs"))
    assert files, "no JS tests found"
    done = subprocess.run(
        [node, "--test", *files], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    output = f"{done.stdout[-6000:]}\n{done.stderr[-2000:]}"
    assert done.returncode == 0, f"node --test failed:\n{output}"


def test_every_static_file_exists() -> None:
    """Each route's file ships in the package (also checked by a non-editable install)."""
    for name, _ in static.ROUTES.values():
        assert (static.ROOT / name).is_file(), name


async def test_gateway_serves_page_and_client_with_types_caching_and_csp(gateway: Gateway) -> None:
    """Content types, CSP and security headers, ETag revalidation (304), gzip, CORS on /client."""
    base = f"http://127.0.0.1:{gateway.port}"
    expected = {
        "/": "text/html",
        "/static/app.js": "text/javascript",
        "/static/app.css": "text/css",
        "/static/favicon.svg": "image/svg+xml",
        "/client/tether.js": "text/javascript",
        "/client/merge.js": "text/javascript",
        "/client/tether.d.ts": "application/typescript",
    }
    async with aiohttp.ClientSession(auto_decompress=False) as http:
        for path, content_type in expected.items():
            async with http.get(base + path, headers={"Accept-Encoding": "identity"}) as response:
                assert response.status == 200, path
                assert response.content_type == content_type, path
                body = await response.read()
                headers = response.headers
                assert body == (static.ROOT / static.ROUTES[path][0]).read_bytes()
                assert headers["Cache-Control"] == "no-cache"
                assert headers["X-Content-Type-Options"] == "nosniff"
                assert "default-src 'none'" in headers["Content-Security-Policy"]
                assert "script-src 'self'" in headers["Content-Security-Policy"]
                assert "'unsafe-inline'" not in headers["Content-Security-Policy"]
                assert "Content-Encoding" not in headers
                etag = headers["ETag"]
                cors = headers.get("Access-Control-Allow-Origin")
                assert cors == ("*" if path.startswith("/client/") else None), path
            async with http.get(base + path, headers={"If-None-Match": etag}) as response:
                assert response.status == 304, path
                assert response.headers["ETag"] == etag
            async with http.get(base + path, headers={"Accept-Encoding": "gzip, br"}) as response:
                packed = await response.read()
                if response.headers.get("Content-Encoding") == "gzip":
                    assert gzip.decompress(packed) == body
                else:
                    assert len(body) < static.GZIP_MIN_BYTES, path
            async with http.head(base + path) as response:
                assert response.status == 200
        async with http.get(base + "/static/nope.js") as response:
            assert response.status == 404


def test_page_has_no_inline_code() -> None:
    """The page works under its CSP: no inline scripts, styles or event handlers."""
    html = (static.ROOT / "index.html").read_text()
    assert "<script>" not in html and "<style" not in html
    assert " style=" not in html and " onclick=" not in html
    for name in ("app.js", "tether.js", "merge.js"):
        assert "innerHTML" not in (static.ROOT / name).read_text(), name

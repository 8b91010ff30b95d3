"""The demo chat page (``/``) and the browser client (``/client/tether.js``), from memory.

The files under ``static/`` are read once when the routes are added. Every answer carries
a strong ``ETag`` and ``Cache-Control: no-cache`` (browsers revalidate and get a 304 when
nothing changed: the names carry no content hash, so they must not be cached blindly), a
gzip body when the browser accepts it, and a strict Content-Security-Policy: scripts,
styles and images from this origin only, no inline code, Trusted Types enforced (the page
builds its DOM without HTML strings), WebSockets back to this origin only. The client
modules under ``/client/`` may also be imported by apps on other origins (CORS ``*``).
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import structlog
from aiohttp import web

log = structlog.get_logger(__name__)

ROOT = Path(__file__).resolve().parent / "static"

JS = "text/javascript; charset=utf-8"

# path -> (file under static/, content type)
ROUTES: dict[str, tuple[str, str]] = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", JS),
    "/static/app.css": ("app.css", "text/css; charset=utf-8"),
    "/static/favicon.svg": ("favicon.svg", "image/svg+xml"),
    "/client/tether.js": ("tether.js", JS),
    "/client/merge.js": ("merge.js", JS),
    "/client/tether.d.ts": ("tether.d.ts", "application/typescript; charset=utf-8"),
}

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "manifest-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
        "require-trusted-types-for 'script'",
        "trusted-types 'none'",
    )
)

SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
}

CACHE_CONTROL = "no-cache"
GZIP_MIN_BYTES = 512


@dataclass(frozen=True, slots=True)
class Asset:
    """One file, ready to serve."""

    body: bytes
    gzipped: bytes | None
    etag: str
    content_type: str
    cross_origin: bool


def load(name: str, content_type: str, *, cross_origin: bool = False) -> Asset:
    body = (ROOT / name).read_bytes()
    packed = gzip.compress(body, compresslevel=9, mtime=0)
    return Asset(
        body=body,
        gzipped=packed if len(body) >= GZIP_MIN_BYTES and len(packed) < len(body) else None,
        etag='"' + hashlib.sha256(body).hexdigest()[:32] + '"',
        content_type=content_type,
        cross_origin=cross_origin,
    )


def add_routes(app: web.Application) -> None:
    """Serve the demo page and the client (GET and HEAD)."""
    for path, (name, content_type) in ROUTES.items():
        asset = load(name, content_type, cross_origin=path.startswith("/client/"))
        app.router.add_get(path, partial(serve, asset))
    log.debug("static_routes_added", routes=len(ROUTES))


def etag_matches(header: str, etag: str) -> bool:
    """``If-None-Match``: ``*`` or a list of (possibly weak) tags."""
    if header.strip() == "*":
        return True
    tags = (tag.strip() for tag in header.split(","))
    return any(tag.removeprefix("W/") == etag for tag in tags)


async def serve(asset: Asset, request: web.Request) -> web.StreamResponse:
    headers = {
        **SECURITY_HEADERS,
        "Cache-Control": CACHE_CONTROL,
        "ETag": asset.etag,
        "Vary": "Accept-Encoding",
    }
    if asset.cross_origin:
        headers["Access-Control-Allow-Origin"] = "*"
        headers["Cross-Origin-Resource-Policy"] = "cross-origin"
    else:
        headers["Cross-Origin-Resource-Policy"] = "same-origin"
    if etag_matches(request.headers.get("If-None-Match", ""), asset.etag):
        return web.Response(status=304, headers=headers)
    body = asset.body
    accepts = request.headers.get("Accept-Encoding", "")
    if asset.gzipped is not None and "gzip" in accepts.lower():
        body = asset.gzipped
        headers["Content-Encoding"] = "gzip"
    headers["Content-Type"] = asset.content_type
    return web.Response(body=body, headers=headers)

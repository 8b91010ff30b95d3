"""HTTP handlers of ``/v1/stream/{path}``: PUT create, POST append/close, GET read (catch-up,
long-poll, SSE), HEAD metadata, DELETE, and CORS preflight."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import orjson
import structlog
from aiohttp import web

from services.gateway.durable_streams import appends, body, live, offsets, producers
from services.gateway.durable_streams.appends import CLOSED, NEXT_OFFSET, Append
from services.gateway.durable_streams.errors import BadStreamRequest, StreamError
from services.gateway.durable_streams.offsets import BadRequest
from services.gateway.durable_streams.service import Spec, Streams
from shared.errors import ClientError
from shared.tokens import READ, WRITE

if TYPE_CHECKING:
    from services.gateway.app import Gateway

log = structlog.get_logger(__name__)

PREFIX = "/v1/stream/"
MAX_NAME = 1024
UP_TO_DATE = "Stream-Up-To-Date"
CURSOR = "Stream-Cursor"
FORKED_FROM = "Stream-Forked-From"
FORK_OFFSET = "Stream-Fork-Offset"
FORK_SUB_OFFSET = "Stream-Fork-Sub-Offset"
EXPOSED = ", ".join(
    (
        NEXT_OFFSET,
        CURSOR,
        UP_TO_DATE,
        CLOSED,
        "Stream-TTL",
        "Stream-Expires-At",
        "Stream-SSE-Data-Encoding",
        producers.EPOCH,
        producers.SEQ,
        producers.EXPECTED_SEQ,
        producers.RECEIVED_SEQ,
        "ETag",
        "Location",
    )
)
COMMON = {
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Resource-Policy": "cross-origin",
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": EXPOSED,
}
METHODS = "GET, HEAD, POST, PUT, DELETE, OPTIONS"


class Handlers:
    """The handlers, bound to one gateway and its Streams."""

    def __init__(self, gateway: Gateway, streams: Streams) -> None:
        self.gateway = gateway
        self.streams = streams
        self.settings = gateway.settings
        self.cache = (
            "public, max-age=60, stale-while-revalidate=300"
            if self.settings.streams_auth == "none"
            else "private, max-age=60, stale-while-revalidate=300"
        )

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        handler: Callable[[web.Request, str], Awaitable[web.StreamResponse]] | None = {
            "PUT": self.put,
            "POST": self.post,
            "GET": self.get,
            "HEAD": self.head,
            "DELETE": self.delete,
        }.get(request.method)
        try:
            if request.method == "OPTIONS":
                return self.preflight(request)
            if handler is None:
                error = {"code": "method_not_allowed", "message": f"use one of {METHODS}"}
                body_ = orjson.dumps({"error": error})
                return _response(405, {"Allow": METHODS}, body_, "application/json")
            name = request.match_info["name"]
            if len(name) > MAX_NAME:
                raise BadRequest(f"the stream path is over {MAX_NAME} characters")
            self._authorize(request, name)
            return await handler(request, name)
        except ClientError as error:
            headers = error.headers if isinstance(error, StreamError) else {}
            if error.http_status >= 500:
                log.warning("durable_stream_unavailable", path=request.path, error=error.message)
            return _response(
                error.http_status,
                headers,
                orjson.dumps({"error": error.as_dict()}),
                "application/json",
            )

    def _authorize(self, request: web.Request, name: str) -> None:
        """With ``TETHER_STREAMS_AUTH=token``, the first path segment is the resource the
        token's ``sessions`` patterns must grant (for a fork, the source's too, to read),
        with the scope ``read`` for GET and HEAD and ``write`` for the rest."""
        if self.settings.streams_auth == "none":
            return
        claims = self.gateway.authenticate(request)
        scope = READ if request.method in ("GET", "HEAD") else WRITE
        claims.require(name.split("/", 1)[0], scope)
        source = request.headers.get(FORKED_FROM)
        if source is not None:
            claims.require(_strip(source).split("/", 1)[0], READ)

    def preflight(self, request: web.Request) -> web.Response:
        asked = request.headers.get("Access-Control-Request-Headers")
        return _response(
            204,
            {
                "Access-Control-Allow-Methods": METHODS,
                "Access-Control-Allow-Headers": asked or "*",
                "Access-Control-Max-Age": "86400",
            },
        )

    # ---- PUT -------------------------------------------------------------------------

    async def put(self, request: web.Request, name: str) -> web.StreamResponse:
        spec = _spec(request)
        closed = _flag(request, CLOSED)
        data = await body.read_body(request, self.settings.streams_max_append_bytes)
        if data and spec.content_type is not None and offsets.is_json(spec.content_type):
            body.json_payload(data, allow_empty=True)  # a bad initial body creates nothing
        record, created = await self.streams.create(name, spec)
        headers = {"Content-Type": record.meta.content_type}
        tail = record.meta.tail
        if created and (data or closed):
            outcome = await appends.append(
                self.streams,
                name,
                Append(data, record.meta.content_type, close=closed, initial=True),
            )
            headers.update(outcome.headers)
        else:
            headers[NEXT_OFFSET] = offsets.encode(tail)
            if record.meta.closed:
                headers[CLOSED] = "true"
        if created:
            headers["Location"] = str(request.url.with_query(None))
        return _response(201 if created else 200, headers)

    # ---- POST ------------------------------------------------------------------------

    async def post(self, request: web.Request, name: str) -> web.StreamResponse:
        producer = producers.from_request(request)
        close = _flag(request, CLOSED)
        data = await body.read_body(request, self.settings.streams_max_append_bytes)
        if not data and not close:
            raise BadStreamRequest("an append needs a non-empty body (or Stream-Closed: true)")
        outcome = await appends.append(
            self.streams,
            name,
            Append(
                data,
                request.headers.get("Content-Type") or None,
                close=close,
                producer=producer,
                stream_seq=request.headers.get("Stream-Seq"),
            ),
        )
        return _response(outcome.status, outcome.headers)

    # ---- GET / HEAD ------------------------------------------------------------------

    async def head(self, request: web.Request, name: str) -> web.StreamResponse:
        meta = (await self.streams.load(name)).meta
        headers = {
            "Content-Type": meta.content_type,
            NEXT_OFFSET: offsets.encode(meta.tail),
            "Cache-Control": "no-store",
        }
        if meta.ttl is not None:
            headers["Stream-TTL"] = str(meta.ttl)
        if meta.expires_at is not None:
            headers["Stream-Expires-At"] = offsets.format_expires_at(meta.expires_at)
        if meta.closed:
            headers[CLOSED] = "true"
        return _response(200, headers)

    async def get(self, request: web.Request, name: str) -> web.StreamResponse:
        offset_values = request.query.getall("offset", [])
        if len(offset_values) > 1:
            raise BadRequest("give one offset")
        mode = request.query.get("live")
        if mode not in (None, "long-poll", "sse"):
            raise BadRequest(f"live must be long-poll or sse, not {mode!r}")
        if mode is not None and not offset_values:
            raise BadRequest(f"live={mode} needs an offset")
        position = offsets.parse(offset_values[0] if offset_values else offsets.BEGINNING)
        after = None if position.now else position.seq
        max_bytes = self.settings.streams_read_bytes
        if mode == "sse":
            lifetime = self.settings.streams_sse_seconds
            return await live.sse(self.streams, request, name, after, COMMON, lifetime, max_bytes)
        if mode == "long-poll":
            return await self._long_poll(request, name, after, max_bytes)
        record = await self.streams.load(name, touch=True)
        meta = record.meta
        if after is None:
            headers = {
                "Content-Type": meta.content_type,
                NEXT_OFFSET: offsets.encode(meta.tail),
                UP_TO_DATE: "true",
                "Cache-Control": "no-store",
            }
            if meta.closed:
                headers[CLOSED] = "true"
            return _response(200, headers, b"[]" if offsets.is_json(meta.content_type) else b"")
        page = await self.streams.read(meta, after, max_bytes)
        closed = page.closed and page.up_to_date
        etag = f'"{meta.gen}:{offsets.encode(after)}:{offsets.encode(page.next_seq)}'
        etag += ':c"' if closed else '"'
        headers = {
            "Content-Type": meta.content_type,
            NEXT_OFFSET: offsets.encode(page.next_seq),
            "ETag": etag,
            "Cache-Control": self.cache,
        }
        if page.up_to_date:
            headers[UP_TO_DATE] = "true"
        if closed:
            headers[CLOSED] = "true"
        if request.headers.get("If-None-Match") == etag:
            return _response(304, headers)
        return _response(200, headers, _body(meta.content_type, page.payloads))

    async def _long_poll(
        self, request: web.Request, name: str, after: int | None, max_bytes: int
    ) -> web.StreamResponse:
        timeout = self.settings.streams_long_poll_seconds
        page, closed = await live.long_poll(self.streams, name, after, timeout, max_bytes)
        record = await self.streams.load(name)
        content_type = record.meta.content_type
        headers = {
            NEXT_OFFSET: offsets.encode(page.next_seq),
            CURSOR: offsets.cursor(request.query.get("cursor")),
        }
        if page.up_to_date:
            headers[UP_TO_DATE] = "true"
        if closed:
            headers[CLOSED] = "true"
        if not any(page.payloads):
            headers[UP_TO_DATE] = "true"
            headers["Cache-Control"] = "no-store"
            return _response(204, headers)
        headers["Content-Type"] = content_type
        headers["Cache-Control"] = self.cache
        headers["ETag"] = f'"{record.meta.gen}:long-poll:{offsets.encode(page.next_seq)}"'
        return _response(200, headers, _body(content_type, page.payloads))

    # ---- DELETE ----------------------------------------------------------------------

    async def delete(self, request: web.Request, name: str) -> web.StreamResponse:
        await self.streams.delete(name)
        return _response(204, {})


def _body(content_type: str, payloads: list[bytes]) -> bytes:
    if offsets.is_json(content_type):
        return body.json_array(payloads)
    return b"".join(payloads)


def _response(
    status: int, headers: dict[str, str], data: bytes = b"", content_type: str | None = None
) -> web.Response:
    merged = {**COMMON, **headers}
    if content_type is not None:
        merged["Content-Type"] = content_type
    if status in (204, 304):
        return web.Response(status=status, headers=merged)
    return web.Response(status=status, headers=merged, body=data)


def _flag(request: web.Request, header: str) -> bool:
    return request.headers.get(header, "").strip().lower() == "true"


def _strip(path: str) -> str:
    """A ``Stream-Forked-From`` value (a stream URL path) as a stream name."""
    if "://" in path:
        path = "/" + path.split("://", 1)[1].split("/", 1)[-1]
    return path[len(PREFIX) :] if path.startswith(PREFIX) else path.lstrip("/")


def _spec(request: web.Request) -> Spec:
    ttl_raw = request.headers.get("Stream-TTL")
    expires_raw = request.headers.get("Stream-Expires-At")
    if ttl_raw is not None and expires_raw is not None:
        raise BadRequest("give Stream-TTL or Stream-Expires-At, not both")
    source = request.headers.get(FORKED_FROM)
    fork_offset = request.headers.get(FORK_OFFSET)
    sub_offset = request.headers.get(FORK_SUB_OFFSET)
    sub = 0
    if sub_offset is not None:
        if source is None:
            raise BadRequest(f"{FORK_SUB_OFFSET} needs {FORKED_FROM}")
        sub = offsets.parse_ttl(sub_offset, FORK_SUB_OFFSET)
        if sub > 0 and fork_offset is None:
            raise BadRequest(f"{FORK_SUB_OFFSET} above 0 needs {FORK_OFFSET}")
    if fork_offset is not None:
        if source is None:
            raise BadRequest(f"{FORK_OFFSET} needs {FORKED_FROM}")
        offsets.parse_seq(fork_offset)
    content_type = request.headers.get("Content-Type")
    return Spec(
        content_type=content_type.strip() if content_type else None,
        ttl=offsets.parse_ttl(ttl_raw) if ttl_raw is not None else None,
        expires_at=offsets.parse_expires_at(expires_raw) if expires_raw is not None else None,
        fork_from=_strip(source) if source is not None else None,
        fork_offset=fork_offset,
        fork_sub_offset=sub,
    )

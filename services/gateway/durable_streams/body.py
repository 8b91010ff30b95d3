"""Request and response bodies: JSON mode framing (protocol §7.1) and the append limit."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from services.gateway.durable_streams.offsets import BadRequest
from shared.errors import ClientError


class PayloadTooLarge(ClientError):
    """An append or initial body above the configured maximum (413)."""

    code = "payload_too_large"
    http_status = 413


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole request body, at most ``limit`` bytes (413 beyond)."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"the body is {request.content_length} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def json_messages(body: bytes, *, allow_empty: bool) -> list[bytes]:
    """The messages of a JSON-mode body: an array is flattened one level, anything else is
    one message. Each message is stored as compact JSON."""
    try:
        value = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as error:
        raise BadRequest(f"the body is not valid JSON: {error}") from None
    items = value if isinstance(value, list) else [value]
    if not items and not allow_empty:
        raise BadRequest("an empty JSON array appends nothing")
    return [_compact(item) for item in items]


def _compact(item: Any) -> bytes:
    """One message as compact JSON (ASCII escapes only where UTF-8 cannot carry it)."""
    try:
        text = json.dumps(item, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        return text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a "\ud800" escape
        return json.dumps(item, separators=(",", ":"), allow_nan=False).encode()
    except ValueError:  # a number too large for a double (1e400)
        raise BadRequest("the body has a number JSON readers cannot represent") from None


def json_payload(body: bytes, *, allow_empty: bool) -> bytes:
    """What one JSON-mode append stores: its messages joined by commas (b"" for none)."""
    return b",".join(json_messages(body, allow_empty=allow_empty))


def json_array(payloads: list[bytes]) -> bytes:
    """A JSON-mode read: the stored messages as one array."""
    return b"[" + b",".join(p for p in payloads if p) + b"]"

"""Durable Streams errors: JSON bodies like the rest of the gateway, plus protocol headers."""

from __future__ import annotations

from shared.errors import ClientError


class StreamError(ClientError):
    """A client error that also carries response headers (offsets, producer state)."""

    def __init__(self, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.headers = headers or {}


class StreamNotFound(StreamError):
    code = "stream_not_found"
    http_status = 404


class StreamGone(StreamError):
    """A soft-deleted stream (kept only because forks still read its data)."""

    code = "stream_gone"
    http_status = 410


class StreamConflict(StreamError):
    code = "stream_conflict"
    http_status = 409


class StreamClosed(StreamError):
    code = "stream_closed"
    http_status = 409


class StaleEpoch(StreamError):
    code = "stale_producer_epoch"
    http_status = 403


class BadStreamRequest(StreamError):
    code = "bad_request"
    http_status = 400

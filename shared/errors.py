"""Every error Tether raises on purpose, in one flat module.

Client-facing errors carry a stable ``code`` string, an HTTP status and a WebSocket
close code; the values are documented in docs/protocol.md ("Errors and close codes").
"""

from __future__ import annotations


class TetherError(Exception):
    """Base class of every error raised on purpose by Tether."""


class ConfigError(TetherError):
    """A setting read from the environment or the command line is invalid."""


class ClientError(TetherError):
    """An error caused by what a client sent; reported to that client, never fatal."""

    code = "bad_request"
    http_status = 400
    ws_close_code = 4400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class InvalidId(ClientError):
    """A session, message or run id does not follow the id rules."""

    code = "invalid_id"


class BadFrame(ClientError):
    """A client frame or request body is malformed (not JSON, wrong shape, unknown type)."""

    code = "bad_frame"


class FrameTooLarge(ClientError):
    """A client frame or request body is larger than the configured maximum."""

    code = "frame_too_large"
    http_status = 413
    ws_close_code = 1009


class Unauthorized(ClientError):
    """No token, or a token that is expired, malformed or wrongly signed."""

    code = "unauthorized"
    http_status = 401
    ws_close_code = 4401


class Forbidden(ClientError):
    """A valid token that does not grant the requested session or action."""

    code = "forbidden"
    http_status = 403
    ws_close_code = 4403


class OriginNotAllowed(Forbidden):
    """A browser request whose ``Origin`` is not in ``TETHER_ALLOWED_ORIGINS``."""

    code = "origin_not_allowed"


class SlowClient(ClientError):
    """A device stopped reading; its send queue overflowed. Reconnect with ``since``."""

    code = "slow_client"
    http_status = 503
    ws_close_code = 4008


class RateLimited(ClientError):
    """A client sent frames or requests faster than its rate limit allows; slow down."""

    code = "rate_limited"
    http_status = 429
    ws_close_code = 4429


class TooManyConnections(ClientError):
    """The token's subject already holds the maximum number of WebSockets on this gateway."""

    code = "too_many_connections"
    http_status = 429
    ws_close_code = 4429


class Unavailable(ClientError):
    """NATS or JetStream did not answer in time; retry later."""

    code = "unavailable"
    http_status = 503
    ws_close_code = 1011


class UnknownRun(ClientError):
    """A control signal names a run the session has no events of."""

    code = "unknown_run"
    http_status = 404


class RunEnded(ClientError):
    """A control signal names a run that already ended (completed, failed or cancelled)."""

    code = "run_ended"
    http_status = 409


class UnknownApproval(ClientError):
    """An answer names an approval the run has no ``approval.requested`` of."""

    code = "unknown_approval"
    http_status = 404


class InvalidOption(ClientError):
    """An answer's option is not one of the options the approval offered."""

    code = "invalid_option"


class ApprovalClosed(ClientError):
    """An answer to an approval that was already decided, expired, or whose run ended."""

    code = "approval_closed"
    http_status = 409


class ServerNotReady(TetherError):
    """The embedded nats-server did not report readiness."""


class PublishError(TetherError):
    """JetStream did not acknowledge a publish (after the SDK's own retries)."""

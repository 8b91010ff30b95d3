"""Gateway token keys and browser origins: settings parsing and the Origin check.

``TETHER_JWT_KEYS`` (or the file named by ``TETHER_JWT_KEYS_FILE``) holds a JSON object
``{kid: {"alg": ..., "secret" | "secret_file" | "public_key" | "public_key_file": ...}}``
next to the legacy ``TETHER_JWT_SECRET`` (kid ``default``, HS256). ``TETHER_ALLOWED_ORIGINS``
is a comma-separated allow-list of browser origins (empty: any); a request whose
``Origin`` header is not in it gets 403 ``origin_not_allowed`` before any upgrade.
See docs/security.md.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import orjson
import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware

from shared.errors import ConfigError, OriginNotAllowed
from shared.settings import Env
from shared.tokens import DEFAULT_KID, VerifyingKey, keys_from_json

log = structlog.get_logger(__name__)

MAX_LEEWAY_SECONDS = 300.0
DEFAULT_PORTS = {"http": 80, "https": 443}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def keys_from_env(env: Env, *, has_default: bool) -> tuple[VerifyingKey, ...]:
    """The keys of ``TETHER_JWT_KEYS`` / ``TETHER_JWT_KEYS_FILE`` (none when unset)."""
    if env.string("TETHER_JWT_KEYS", "") and env.string("TETHER_JWT_KEYS_FILE", ""):
        raise ConfigError("TETHER_JWT_KEYS and TETHER_JWT_KEYS_FILE are both set; set one")
    source = "TETHER_JWT_KEYS_FILE" if env.string("TETHER_JWT_KEYS_FILE", "") else "TETHER_JWT_KEYS"
    raw = env.secret("TETHER_JWT_KEYS")  # a Secret: HMAC keys may be inline
    if not raw:
        return ()
    keys = keys_from_json(raw.reveal(), source)
    if has_default and any(key.kid == DEFAULT_KID for key in keys):
        raise ConfigError(
            f"{source} has kid {DEFAULT_KID!r}, which TETHER_JWT_SECRET already defines; "
            "set only one of them"
        )
    return keys


def leeway_from_env(env: Env, default: float) -> float:
    value = env.number("TETHER_JWT_LEEWAY_SECONDS", default, minimum=0)
    if value > MAX_LEEWAY_SECONDS:
        raise ConfigError(
            f"TETHER_JWT_LEEWAY_SECONDS has value {value}, above the maximum {MAX_LEEWAY_SECONDS}"
        )
    return value


# ---- origins ----------------------------------------------------------------------------


def normalize_origin(raw: str) -> str | None:
    """``scheme://host[:port]`` lower-cased without a default port; None if not an origin.

    ``https://*.example.com`` (any subdomain) is kept as a pattern.
    """
    text = raw.strip().rstrip("/").lower()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    if parts.path or parts.query or parts.fragment or parts.username or parts.password:
        return None
    host = parts.hostname
    if "*" in host and not (host.startswith("*.") and "*" not in host[2:]):
        return None
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == DEFAULT_PORTS[parts.scheme]:
        return f"{parts.scheme}://{host}"
    return f"{parts.scheme}://{host}:{port}"


def origins_from_env(env: Env) -> tuple[str, ...]:
    """``TETHER_ALLOWED_ORIGINS``: comma-separated origins, ``*`` or empty (any)."""
    raw = env.string("TETHER_ALLOWED_ORIGINS", "")
    allowed: list[str] = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        if item == "*":
            allowed.append("*")
            continue
        origin = normalize_origin(item)
        if origin is None:
            raise ConfigError(
                f"TETHER_ALLOWED_ORIGINS has value {item!r}, not an origin "
                "(http[s]://host[:port], https://*.domain) or *"
            )
        allowed.append(origin)
    return tuple(allowed)


def origin_allowed(origin: str, allowed: tuple[str, ...]) -> bool:
    """Whether a request's ``Origin`` header value is in the allow-list (empty: any)."""
    if not allowed or "*" in allowed:
        return True
    normal = normalize_origin(origin)
    if normal is None or "*" in normal:
        return False  # "null", opaque or malformed origins match only "*"
    for pattern in allowed:
        if pattern == normal:
            return True
        scheme, _, host = pattern.partition("://*.")
        if host and normal.startswith(f"{scheme}://") and normal.endswith(f".{host}"):
            return True
    return False


def origin_middleware(allowed: tuple[str, ...]) -> Middleware:
    """Refuse browser requests from origins not in ``allowed`` (403 before any upgrade).

    Requests without an ``Origin`` header (non-browser clients) pass.
    """

    @web.middleware
    async def check_origin(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is not None and not origin_allowed(origin, allowed):
            error = OriginNotAllowed(
                f"origin {origin[:100]!r} is not allowed here (TETHER_ALLOWED_ORIGINS)"
            )
            log.info("origin_refused", origin=origin[:100], path=request.path)
            return web.Response(
                body=orjson.dumps({"error": error.as_dict()}),
                status=error.http_status,
                content_type="application/json",
            )
        return await handler(request)

    return check_origin

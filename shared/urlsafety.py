"""Webhook URL safety: refuse URLs whose host resolves to a non-public address.

Checked when a subscription is created and again before every delivery (DNS can change).
``TETHER_WEBHOOK_ALLOW_PRIVATE`` relaxes it: ``true`` allows every kind, or a comma list of
kinds (``private``, ``loopback``, ``link_local``, ``multicast``, ``reserved``,
``unspecified``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from shared.errors import BadFrame, ConfigError
from shared.settings import Env

KINDS = ("private", "loopback", "link_local", "multicast", "reserved", "unspecified")
MAX_URL_LENGTH = 2048
RESOLVE_TIMEOUT = 5.0

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class UnsafeUrl(BadFrame):
    """A webhook URL that is malformed or points at an address that is not allowed."""

    code = "invalid_webhook_url"


@dataclass(frozen=True, slots=True)
class AddressPolicy:
    """Which non-public address kinds a webhook URL may resolve to (none by default)."""

    allowed: frozenset[str] = frozenset()

    @classmethod
    def from_env(cls, env: Env | None = None) -> AddressPolicy:
        raw = (env or Env()).string("TETHER_WEBHOOK_ALLOW_PRIVATE", "").strip().lower()
        if raw in ("", "false", "0", "no", "none"):
            return cls()
        if raw in ("true", "1", "yes", "all"):
            return cls(frozenset(KINDS))
        kinds = frozenset(k.strip().replace("-", "_") for k in raw.split(",") if k.strip())
        unknown = sorted(kinds - set(KINDS))
        if unknown:
            raise ConfigError(
                f"TETHER_WEBHOOK_ALLOW_PRIVATE has value {raw!r}: unknown kind {unknown[0]!r}; "
                f"use true or a comma list of {', '.join(KINDS)}"
            )
        return cls(kinds)


def kind_of(address: Address) -> str | None:
    """The non-public kind of an address, or None when it is a public address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link_local"
    if address.is_multicast:
        return "multicast"
    if address.is_reserved:
        return "reserved"
    if address.is_private or not address.is_global:
        return "private"
    return None


def parse_url(url: object) -> tuple[str, str, int]:
    """Check the shape of a webhook URL; return (scheme, host, port)."""
    if not isinstance(url, str) or not url:
        raise UnsafeUrl("field 'url' must be a non-empty string")
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeUrl(f"url is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeUrl(f"url {url[:80]!r} is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise UnsafeUrl(f"url {url[:80]!r} must use http or https")
    if not parts.hostname:
        raise UnsafeUrl(f"url {url[:80]!r} has no host")
    if parts.username or parts.password:
        raise UnsafeUrl("url must not contain credentials")
    default = 443 if parts.scheme == "https" else 80
    return parts.scheme, parts.hostname, port or default


async def resolve(host: str, port: int) -> list[Address]:
    """Every address the host resolves to (a literal IP resolves to itself)."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT
        )
    except (OSError, TimeoutError) as exc:
        raise UnsafeUrl(f"url host {host!r} does not resolve: {exc}") from None
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]


async def check_url(url: object, policy: AddressPolicy) -> str:
    """Refuse a malformed URL, or one resolving to an address kind the policy does not allow."""
    _, host, port = parse_url(url)
    addresses = await resolve(host, port)
    if not addresses:
        raise UnsafeUrl(f"url host {host!r} does not resolve")
    for address in addresses:
        kind = kind_of(address)
        if kind is not None and kind not in policy.allowed:
            raise UnsafeUrl(
                f"url host {host!r} resolves to {address}, a {kind.replace('_', '-')} address; "
                f"allow it with TETHER_WEBHOOK_ALLOW_PRIVATE={kind}"
            )
    return str(url)


class SafeResolver(AbstractResolver):
    """aiohttp's resolver with the policy applied at connect time.

    ``check_url`` before a delivery is not enough on its own: aiohttp resolves the host
    again when it connects, and a DNS answer can change in between (DNS rebinding). This
    resolver refuses, at the moment of connecting, any answer with an address the policy
    does not allow. (aiohttp never resolves literal IPs; ``check_url`` covers those.)
    """

    def __init__(self, policy: AddressPolicy) -> None:
        self.policy = policy
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            address = ipaddress.ip_address(str(result["host"]).split("%")[0])
            kind = kind_of(address)
            if kind is not None and kind not in self.policy.allowed:
                raise OSError(f"{host} resolves to {address}, a {kind} address (refused)")
        return results

    async def close(self) -> None:
        await self._inner.close()

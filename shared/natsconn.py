"""Connecting to NATS the same way in every Tether process."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import nats
import structlog
from nats.aio.client import Client as NATS
from nats.errors import NoServersError

from shared import natsfast
from shared.errors import Unavailable
from shared.settings import NatsSettings

log = structlog.get_logger(__name__)

Callback = Callable[[], Awaitable[None]]


async def connect(
    settings: NatsSettings,
    *,
    on_reconnect: Callback | None = None,
    on_disconnect: Callback | None = None,
    connect_timeout: float = 2.0,
    first_connect_seconds: float = 30.0,
) -> NATS:
    """Connect (retrying for ``first_connect_seconds``), then reconnect forever."""
    natsfast.install()  # nats-py's header parser, twice as fast, same result (idempotent)

    async def error_cb(exc: Exception) -> None:
        log.warning("nats_error", error=repr(exc))

    async def disconnected_cb() -> None:
        log.warning("nats_disconnected")
        if on_disconnect is not None:
            await on_disconnect()

    async def reconnected_cb() -> None:
        log.info("nats_reconnected")
        if on_reconnect is not None:
            await on_reconnect()

    options: dict[str, object] = {}
    if settings.user:
        options["user"] = settings.user
        options["password"] = settings.password.reveal()
    deadline = asyncio.get_running_loop().time() + first_connect_seconds
    delay = 0.1
    while True:
        try:
            nc: NATS = await nats.connect(
                servers=list(settings.servers),
                name=settings.name,
                connect_timeout=connect_timeout,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.25,
                error_cb=error_cb,
                disconnected_cb=disconnected_cb,
                reconnected_cb=reconnected_cb,
                pending_size=64 * 1024 * 1024,
                **options,
            )
            break
        except (TimeoutError, OSError, NoServersError) as exc:
            if asyncio.get_running_loop().time() + delay > deadline:
                raise Unavailable(
                    f"cannot connect to NATS at {', '.join(settings.servers)}: {exc!r}"
                ) from None
            log.info("nats_connect_retry", error=repr(exc), retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
    url = nc.connected_url
    log.info("nats_connected", host=url.hostname if url else None, port=url.port if url else None)
    return nc


async def close(nc: NATS, timeout: float = 5.0) -> None:
    """Drain (flush pending publishes, finish callbacks) then close; never hangs.

    Draining a client that is disconnected and reconnecting would wait forever, so such a
    client, or one whose drain takes longer than ``timeout``, is closed outright.
    """
    if nc.is_closed:
        return
    if not nc.is_connected:
        await nc.close()
        return
    try:
        await asyncio.wait_for(nc.drain(), timeout)
    except (TimeoutError, nats.errors.Error):
        await nc.close()

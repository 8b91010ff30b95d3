"""Durable Streams (Electric's open HTTP protocol for resumable streams) on the gateway,
stored in JetStream: ``/v1/stream/{path}``. See docs/protocol.md §20."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from aiohttp import web

from services.gateway.durable_streams import store, sweeper
from services.gateway.durable_streams.meta import Metadata
from services.gateway.durable_streams.routes import Handlers
from services.gateway.durable_streams.service import Streams
from shared import subjects, webhooks

if TYPE_CHECKING:
    from services.gateway.app import Gateway

__all__ = ["add_routes", "ensure"]


async def ensure(gateway: Gateway) -> None:
    """Create (or update) the data stream and open the metadata bucket."""
    replicas = gateway.settings.log.replicas
    await store.ensure_stream(gateway.nc, replicas)
    gateway._buckets[subjects.DS_META_BUCKET] = await webhooks.bucket(
        gateway.nc, subjects.DS_META_BUCKET, replicas
    )


class _State:
    """The handlers and the expiry sweeper of one app, built once NATS is connected."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._handlers: Handlers | None = None
        self._sweeper: asyncio.Task[None] | None = None

    def handlers(self) -> Handlers:
        if self._handlers is None:
            metadata = Metadata(self.gateway.bucket(subjects.DS_META_BUCKET))
            self._handlers = Handlers(self.gateway, Streams(self.gateway.nc, metadata))
        return self._handlers

    async def handle(self, request: web.Request) -> web.StreamResponse:
        return await self.handlers().dispatch(request)

    async def start_sweeper(self, _: web.Application) -> None:
        interval = self.gateway.settings.streams_sweep_seconds
        if interval > 0:
            self._sweeper = asyncio.create_task(sweeper.run(self.handlers().streams, interval))

    async def stop_sweeper(self, _: web.Application) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper


def add_routes(app: web.Application, gateway: Gateway) -> None:
    """Serve ``/v1/stream/{path}`` (every method; the handlers dispatch), and sweep expired
    streams while the app runs."""
    state = _State(gateway)
    app.router.add_route("*", "/v1/stream/{name:.+}", state.handle)
    app.on_startup.append(state.start_sweeper)
    app.on_cleanup.append(state.stop_sweeper)

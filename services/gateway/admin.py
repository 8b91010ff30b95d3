"""The admin HTTP API for webhook subscriptions and dead letters (tokens with role admin).

``POST /v1/webhooks``, ``GET /v1/webhooks``, ``GET|DELETE /v1/webhooks/{id}``,
``GET /v1/webhooks/dead``, ``POST /v1/webhooks/dead/{id}/replay``. See docs/protocol.md §15.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

import structlog
from aiohttp import web

from services.gateway.http import error_response, json_response
from shared import subjects, webhooks, wire
from shared.errors import BadFrame, ClientError, Forbidden, FrameTooLarge, TetherError
from shared.ids import check_id
from shared.tokens import ADMIN
from shared.urlsafety import check_url, parse_url

if TYPE_CHECKING:
    from services.gateway.app import Gateway

log = structlog.get_logger(__name__)


class NotFound(ClientError):
    """No subscription or dead letter with that id."""

    code = "not_found"
    http_status = 404
    ws_close_code = 4404


def add_routes(app: web.Application, gateway: Gateway) -> None:
    # The fixed /dead paths first: they must win over /{id}.
    app.router.add_get("/v1/webhooks/dead", partial(list_dead, gateway))
    app.router.add_post("/v1/webhooks/dead/{id}/replay", partial(replay_dead, gateway))
    app.router.add_post("/v1/webhooks", partial(create, gateway))
    app.router.add_get("/v1/webhooks", partial(list_all, gateway))
    app.router.add_get("/v1/webhooks/{id}", partial(get_one, gateway))
    app.router.add_delete("/v1/webhooks/{id}", partial(delete, gateway))


def require_admin(gateway: Gateway, request: web.Request) -> None:
    claims = gateway.authenticate(request)
    if claims.role != "admin":
        raise Forbidden(f"webhooks need a token with role 'admin', not {claims.role!r}")
    claims.require_scope(ADMIN)


async def create(gateway: Gateway, request: web.Request) -> web.Response:
    """Validate and store a subscription; the response holds the secret (only here)."""
    try:
        require_admin(gateway, request)
        try:
            data = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise FrameTooLarge("request body is too large") from None
        body = wire.parse_json_object(data, "request body")
        if "url" not in body:
            raise BadFrame("missing field 'url'")
        parse_url(body["url"])  # the shape first; resolving the host comes last
        subscription = webhooks.parse_request(body, str(body["url"]))
        await check_url(subscription.url, gateway.settings.webhook_policy)
        kv = gateway.bucket(subjects.WEBHOOKS_BUCKET)
        await kv.put(subscription.id, subscription.stored(gateway.settings.webhook_sealer))
    except ClientError as error:
        return error_response(error)
    log.info("webhook_created", webhook=subscription.id, events=list(subscription.events))
    return json_response(subscription.public(with_secret=True), status=201)


async def list_all(gateway: Gateway, request: web.Request) -> web.Response:
    try:
        require_admin(gateway, request)
        found = await webhooks.list_all(gateway.nc)
    except ClientError as error:
        return error_response(error)
    return json_response({"webhooks": [s.public() for s in found]})


async def get_one(gateway: Gateway, request: web.Request) -> web.Response:
    try:
        require_admin(gateway, request)
        wid = check_id(request.match_info["id"], "webhook subscription id")
        found = await webhooks.get(gateway.bucket(subjects.WEBHOOKS_BUCKET), wid)
        if found is None:
            raise NotFound(f"no webhook subscription {wid!r}")
    except ClientError as error:
        return error_response(error)
    return json_response(found.public())


async def delete(gateway: Gateway, request: web.Request) -> web.Response:
    try:
        require_admin(gateway, request)
        wid = check_id(request.match_info["id"], "webhook subscription id")
        kv = gateway.bucket(subjects.WEBHOOKS_BUCKET)
        if await webhooks.get(kv, wid) is None:
            raise NotFound(f"no webhook subscription {wid!r}")
        await kv.delete(wid)
    except ClientError as error:
        return error_response(error)
    log.info("webhook_deleted", webhook=wid)
    return json_response({"id": wid, "deleted": True})


async def list_dead(gateway: Gateway, request: web.Request) -> web.Response:
    try:
        require_admin(gateway, request)
        records = await webhooks.dead_letters(gateway.nc)
    except ClientError as error:
        return error_response(error)
    return json_response({"dead": records})


async def replay_dead(gateway: Gateway, request: web.Request) -> web.Response:
    try:
        require_admin(gateway, request)
        wid = check_id(request.match_info["id"], "webhook id")
        try:
            record = await webhooks.replay(
                gateway.nc, gateway.bucket(subjects.DEAD_LETTERS_BUCKET), wid
            )
        except TetherError as exc:
            raise BadFrame(f"replay failed: {exc}") from None
        if record is None:
            raise NotFound(f"no dead letter {wid!r}")
    except ClientError as error:
        return error_response(error)
    log.info("webhook_replayed", webhook_id=wid)
    return json_response({"id": wid, "replayed": True})

"""A faster NATS message-header parser for nats-py, installed by ``shared.natsconn``.

Every message the stream republishes carries six headers (``Nats-Sequence``,
``Nats-Last-Sequence``, ...) and every direct-get reply seven; nats-py parses them in
``Client._parse_header_lines``, which checks each header name for whitespace with a
generator (``any(c.isspace() for c in key)``). Profiles of the gateway at 100 sessions
put that parser at ~20 % of the gateway's CPU. This version gives the same dict for every
input (a regular expression ``\\s`` matches exactly the characters ``str.isspace`` accepts)
in about half the time. It replaces the method only when nats-py has the expected
pure-Python parser; with ``fast_mail_parser`` installed nats-py does not call it at all.

It also has :func:`subscribe_direct`: a subscription whose messages are handed to a plain
(synchronous) callback from nats-py's read loop, without the ``asyncio.Queue`` and the task
nats-py creates for every callback subscription (~4 KB each: a gateway holds one or two
per session it serves). Only for callbacks that never block: they run inside the read loop.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import structlog
from nats import errors
from nats.aio import client as client_module
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import DEFAULT_SUB_PENDING_BYTES_LIMIT, Subscription

log = structlog.get_logger(__name__)

_WHITESPACE = re.compile(r"\s")
_CRLF = b"\r\n"


def parse_header_lines(raw: bytes) -> dict[str, str]:
    """``Name: Value`` per CRLF-separated line -> dict (nats-py's rules, faster)."""
    out: dict[str, str] = {}
    search = _WHITESPACE.search
    for line in raw.split(_CRLF):
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        try:
            key = name.strip().decode("ascii")
        except UnicodeDecodeError:
            continue  # a malformed (non-ASCII) name: skipped, as nats-py does
        if search(key) is not None:
            continue  # whitespace inside a name: invalid, skipped as nats-py does
        out[key] = value.strip().decode("utf-8", "replace")
    return out


_ORIGINAL = Client.__dict__.get("_parse_header_lines")


def install() -> bool:
    """Use :func:`parse_header_lines` in nats-py; False when nats-py's layout differs."""
    if not isinstance(_ORIGINAL, staticmethod):
        return False
    Client._parse_header_lines = staticmethod(parse_header_lines)  # type: ignore[method-assign]
    return True


def original() -> object:
    """nats-py's own parser (for the equivalence test), or None."""
    return _ORIGINAL.__func__ if isinstance(_ORIGINAL, staticmethod) else None


# ---- direct subscriptions -------------------------------------------------------------------

DirectCallback = Callable[[Msg], None]


class _Handoff:
    """Stands in for a subscription's pending queue (nats-py's ``_process_msg`` calls
    ``put_nowait``): runs the callback at once, so nothing is ever pending."""

    __slots__ = ("_cb", "_sub")

    def __init__(self, sub: DirectSubscription, cb: DirectCallback) -> None:
        self._sub = sub
        self._cb = cb

    def put_nowait(self, msg: Msg) -> None:
        sub = self._sub
        sub._pending_size -= len(msg.data)
        if sub._closed:
            return  # unsubscribed: what was already read is discarded, as nats-py does
        try:
            self._cb(msg)
        except Exception as exc:  # noqa: BLE001 - never into nats-py's read loop
            log.error("nats_direct_callback_failed", subject=msg.subject, error=repr(exc))

    def qsize(self) -> int:
        return 0

    def empty(self) -> bool:
        return True

    def task_done(self) -> None:
        pass

    async def join(self) -> None:
        return None  # drain: every message was handled when it was read

    async def get(self) -> Msg:
        raise errors.Error("a direct subscription delivers to its callback only")


class DirectSubscription(Subscription):
    """A nats-py ``Subscription`` delivering each message to a synchronous callback."""

    def __init__(
        self,
        conn: Client,
        sid: int,
        subject: str,
        cb: DirectCallback,
        pending_bytes_limit: int = DEFAULT_SUB_PENDING_BYTES_LIMIT,
    ) -> None:
        # pending_msgs_limit=1: the queue nats-py builds here is dropped at once (small).
        super().__init__(conn, sid, subject, pending_msgs_limit=1)
        self._cb = cb  # type: ignore[assignment]  # synchronous; nats-py never awaits it here
        self._pending_bytes_limit = pending_bytes_limit
        self._pending_queue = _Handoff(self, cb)  # type: ignore[assignment]

    def _start(self, error_cb: Any) -> None:
        pass  # no task: messages are delivered by _Handoff.put_nowait


def _has_layout(nc: Client) -> bool:
    return (
        isinstance(getattr(nc, "_subs", None), dict)
        and isinstance(getattr(nc, "_sid", None), int)
        and callable(getattr(nc, "_send_subscribe", None))
    )


async def subscribe_direct(
    nc: Client,
    subject: str,
    cb: DirectCallback,
    *,
    pending_bytes_limit: int = DEFAULT_SUB_PENDING_BYTES_LIMIT,
) -> Subscription:
    """Subscribe with a synchronous callback run from the read loop (see the module doc).

    The callback must not block, and its exceptions are logged, never raised into nats-py.
    Unsubscribe, drain, reconnect and close work as for any subscription. Falls back to an
    ordinary subscription (a queue and a task) when nats-py's internals differ.
    """
    if not _has_layout(nc):

        async def deliver(msg: Msg) -> None:
            cb(msg)

        return await nc.subscribe(subject, cb=deliver, pending_bytes_limit=pending_bytes_limit)
    validate = getattr(client_module, "_validate_subject", None)
    if callable(validate) and not getattr(nc, "_skip_subject_validation", False):
        validate(subject, strict=True)
    elif not subject:
        raise errors.BadSubjectError
    if nc.is_closed:
        raise errors.ConnectionClosedError
    if nc.is_draining:
        raise errors.ConnectionDrainingError
    nc._sid += 1
    sub = DirectSubscription(nc, nc._sid, subject, cb, pending_bytes_limit)
    nc._subs[sub._id] = sub
    try:
        await nc._send_subscribe(sub)
    except BaseException:
        nc._subs.pop(sub._id, None)
        raise
    return sub

"""Following who is listening in a session, for agents that pause when nobody watches."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from shared import presence, subjects

if TYPE_CHECKING:
    from shared.agent import Session


class Listeners:
    """The user devices of one session, followed live (``async with session.watch_listeners()``)."""

    def __init__(
        self,
        session: Session,
        *,
        on_empty: Callable[[], Awaitable[None] | None] | None = None,
        on_return: Callable[[], Awaitable[None] | None] | None = None,
    ) -> None:
        self.session = session
        self.on_empty = on_empty
        self.on_return = on_return
        self.members: dict[str, int] = {}  # bucket key -> sequence
        self._seen: dict[str, int] = {}
        self._present = asyncio.Event()
        self._subscription: Any = None

    @property
    def count(self) -> int:
        return len(self.members)

    async def __aenter__(self) -> Listeners:
        nc = self.session.client.nc
        self._subscription = await nc.subscribe(
            subjects.presence_live(self.session.id, "user"), cb=self._on_change
        )
        await nc.flush()
        for change in (await presence.ask(nc, self.session.id)).values():
            if change.entry is not None and change.entry.role == "user":
                await self._apply(change, notify=False)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._subscription is not None:
            await self._subscription.unsubscribe()

    async def _on_change(self, msg: Any) -> None:
        change = presence.parse_change(msg.subject, msg.headers, msg.data)
        if change is not None:
            await self._apply(change, notify=True)

    async def _apply(self, change: presence.Change, *, notify: bool) -> None:
        if self._seen.get(change.key, 0) >= change.seq:
            return
        self._seen[change.key] = change.seq
        before = len(self.members)
        if change.entry is None:
            self.members.pop(change.key, None)
        else:
            self.members[change.key] = change.seq
        if self.members:
            self._present.set()
        else:
            self._present.clear()
        if notify and before and not self.members and self.on_empty is not None:
            await _maybe_await(self.on_empty())
        if notify and not before and self.members and self.on_return is not None:
            await _maybe_await(self.on_return())

    async def wait_for_listener(self) -> None:
        await self._present.wait()


async def _maybe_await(value: Awaitable[None] | None) -> None:
    if value is not None:
        await value

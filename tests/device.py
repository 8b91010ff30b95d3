"""A real WebSocket device for tests: connects with ``since``, applies frames to a view.

The view is what a user would see: each message's text by id, plus the other events.
It also checks the protocol's promises as frames arrive: sequences strictly increase
and no sequence is seen twice across reconnects.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson


@dataclass
class View:
    """A device's state, rebuilt from frames."""

    texts: dict[str, str] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)
    others: list[tuple[str, str]] = field(default_factory=list)  # (type, run) of run events
    approvals: list[dict[str, Any]] = field(default_factory=list)  # approval.* events, in order
    seqs: list[int] = field(default_factory=list)
    position: int = 0
    epoch: str | None = None
    hellos: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    acks: list[dict[str, Any]] = field(default_factory=list)
    caught_up: int = 0
    live: bool = False
    members: dict[str, dict[str, Any]] = field(default_factory=dict)  # by connection id
    presence: list[dict[str, Any]] = field(default_factory=list)  # presence frames, in order
    frames: int = 0
    wire_bytes: int = 0
    saved: tuple[Any, ...] | None = None  # the view at the last hello, until caught_up

    def checkpoint(self) -> None:
        """Remember the view as it is now: a replay that does not reach caught_up is undone
        back to here (a replayed event's sequence is not a resume point, protocol §7)."""
        self.saved = (
            dict(self.texts),
            set(self.deleted),
            list(self.others),
            list(self.approvals),
            self.position,
            len(self.seqs),
        )

    def restore(self) -> None:
        """Undo an interrupted replay (the next connect resumes from the saved position)."""
        if self.saved is None:
            return
        texts, deleted, others, approvals, position, count = self.saved
        self.texts, self.deleted, self.others, self.approvals = texts, deleted, others, approvals
        self.position = position
        del self.seqs[count:]
        self.saved = None

    def apply(self, frame: dict[str, Any]) -> None:
        kind = frame["type"]
        if kind == "hello":
            self.hellos.append(frame)
            self.members = {m["connection"]: m for m in frame.get("presence", [])}
            self.epoch = frame["epoch"]
            self.caught_up = 0
            if not frame["recovered"]:
                self.texts.clear()
                self.deleted.clear()
                self.others.clear()
                self.approvals.clear()
                self.position = 0
            self.checkpoint()
        elif kind == "event":
            seq = frame["seq"]
            if seq <= self.position:
                raise AssertionError(
                    f"sequence {seq} after {self.position}: out of order or duplicated"
                )
            self.position = seq
            self.seqs.append(seq)
            self._event(frame["event"])
        elif kind == "caught_up":
            self.saved = None
            self.live = True
            self.caught_up = frame["seq"]
            self.position = max(self.position, frame["seq"])
        elif kind == "presence":
            self.presence.append(frame)
            member = frame["member"]
            if frame["action"] == "leave":
                self.members.pop(member["connection"], None)
            else:
                self.members[member["connection"]] = member
        elif kind == "error":
            self.errors.append(frame)
        elif kind == "ack":
            self.acks.append(frame)

    def _event(self, event: dict[str, Any]) -> None:
        etype = event["type"]
        mid = event.get("message")
        text = event.get("text", "")
        if etype in (
            "message.created",
            "message.complete",
            "message.edit",
            "message.snapshot",
            "message.reset",
        ):
            self.texts[mid] = text
        elif etype == "message.start":
            self.texts.setdefault(mid, text or "")
        elif etype == "message.delta":
            if mid not in self.texts:
                raise AssertionError(f"delta for unknown message {mid}")
            self.texts[mid] += text
        elif etype == "message.delete":
            self.texts.pop(mid, None)
            self.deleted.add(mid)
        else:
            self.others.append((etype, event.get("run", "")))
            if etype.startswith("approval."):
                self.approvals.append(event)


class Device:
    """One device that may connect, disconnect and reconnect (to any gateway)."""

    def __init__(self, session: str, token: str) -> None:
        self.session = session
        self.token = token
        self.view = View()
        self.http: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.reader: asyncio.Task[None] | None = None
        self.close_code: int | None = None

    async def connect(
        self, base_url: str, *, since: int | None = None, epoch: str | None = None
    ) -> None:
        if self.http is None:
            self.http = aiohttp.ClientSession()
        params = {"token": self.token, "since": str(self.view.position if since is None else since)}
        if epoch or self.view.epoch:
            params["epoch"] = epoch or self.view.epoch or ""
        url = base_url.replace("http", "ws", 1) + f"/v1/sessions/{self.session}/ws"
        if since is None:
            self.view.restore()  # the last replay was cut short: resume from before it
            params["since"] = str(self.view.position)
        self.view.caught_up = 0
        self.view.live = False
        self.ws = await self.http.ws_connect(url, params=params, max_msg_size=0)
        self.close_code = None
        self.reader = asyncio.create_task(self._read(self.ws))

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                self.view.frames += 1
                self.view.wire_bytes += len(msg.data)
                self.view.apply(orjson.loads(msg.data))
            else:
                break
        self.close_code = ws.close_code

    async def send(self, frame: dict[str, Any]) -> None:
        assert self.ws is not None
        await self.ws.send_str(orjson.dumps(frame).decode())

    async def disconnect(self) -> None:
        """The device goes away (closes its socket). The socket and reader are taken first:
        a reconnecting task that connects meanwhile gets new ones, which this call must
        neither wait for nor clear (it did, and then waited for that connection to end)."""
        ws, reader = self.ws, self.reader
        self.ws = None
        self.reader = None
        if ws is not None:
            await ws.close()
        if reader is not None:
            await asyncio.gather(reader, return_exceptions=True)

    async def wait_closed(self, timeout: float = 10.0) -> int | None:
        if self.reader is not None:
            await asyncio.wait_for(asyncio.shield(self.reader), timeout)
        return self.close_code

    async def close(self) -> None:
        await self.disconnect()
        if self.http is not None:
            await self.http.close()
            self.http = None

    @property
    def connected(self) -> bool:
        return self.reader is not None and not self.reader.done()

"""Where the session streams' Raft leaders are, and moving them apart.

Every write to a stream goes through its leader, so partitions only add write capacity when
their leaders sit on different servers. JetStream does not see to that: newly created
streams often share a leader (seen on nats-server 2.15.1: two of three on one node), and a
leader that loses its server moves to a survivor and stays there after the server comes
back. :func:`spread` moves leaders apart (a stepdown with a preferred successor, one short
election per moved stream; publishers retry through it) until no server leads two more
streams than another. The process that creates the partition streams runs it once
(:func:`spread_new`); every gateway runs a :class:`Balancer` that spreads them again when
the same imbalance is seen twice in a row (after a node's restart); ``tether streams
--spread`` does it at once, ``tether streams`` prints where each leader is.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from nats.aio.client import Client as NATS

from shared.errors import TetherError, Unavailable
from shared.streams import api

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Placement:
    """One stream's leader and the servers holding a current copy (leader included)."""

    stream: str
    leader: str | None
    current: tuple[str, ...]
    messages: int = 0
    bytes: int = 0


async def placements(nc: NATS, streams: tuple[str, ...] | list[str]) -> list[Placement]:
    """Where each stream's leader and current replicas are (Unavailable if one is missing)."""
    found = []
    for stream in streams:
        info = await api(nc, f"$JS.API.STREAM.INFO.{stream}")
        if "error" in info:
            raise Unavailable(f"stream {stream}: {info['error'].get('description')}")
        found.append(_placement(stream, info))
    return found


def _placement(stream: str, info: dict[str, Any]) -> Placement:
    cluster = info.get("cluster") or {}
    leader = cluster.get("leader") or None
    followers = [r["name"] for r in cluster.get("replicas") or [] if r.get("current")]
    state = info.get("state") or {}
    return Placement(
        stream=stream,
        leader=leader,
        current=tuple(sorted({*followers, *([leader] if leader else [])})),
        messages=int(state.get("messages", 0)),
        bytes=int(state.get("bytes", 0)),
    )


def plan(found: list[Placement]) -> list[tuple[str, str]]:
    """The leader moves ``(stream, new leader)`` that even out leaders per server: each
    move takes a stream from a server leading the most to a current replica leading the
    fewest, until no server leads two more than another (or no move helps)."""
    servers = {name for p in found for name in p.current}
    counts = Counter({name: 0 for name in servers})
    leaders = {p.stream: p.leader for p in found}
    for leader in leaders.values():
        if leader:
            counts[leader] += 1
    moves: list[tuple[str, str]] = []
    for _ in range(len(found)):
        best: tuple[int, str, str] | None = None
        for p in found:
            here = leaders[p.stream]
            if here is None:
                continue
            for there in p.current:
                gain = counts[here] - counts[there]
                if there != here and gain >= 2 and (best is None or gain > best[0]):
                    best = (gain, p.stream, there)
        if best is None:
            break
        _, stream, there = best
        here = leaders[stream]
        if here is not None:
            counts[here] -= 1
        counts[there] += 1
        leaders[stream] = there
        moves.append((stream, there))
    return moves


async def spread(
    nc: NATS, streams: tuple[str, ...] | list[str], *, timeout: float = 30.0
) -> list[Placement]:
    """Move leaders apart (:func:`plan`), one move at a time, each planned from a fresh read
    (so two processes spreading at once do not undo each other); returns the placements
    afterwards."""
    for _ in range(len(streams)):
        moves = plan(await placements(nc, streams))
        if not moves:
            break
        stream, there = moves[0]
        reply = await api(
            nc,
            f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}",
            {"placement": {"preferred": there}},
        )
        if "error" in reply:
            raise TetherError(
                f"stream {stream}: leader stepdown to {there} failed: "
                f"{reply['error'].get('description')}"
            )
        await _wait_leader(nc, stream, there, timeout)
        log.info("stream_leader_moved", stream=stream, leader=there)
    return await placements(nc, streams)


async def spread_new(
    nc: NATS, streams: tuple[str, ...] | list[str], replicas: int, *, timeout: float = 15.0
) -> list[Placement]:
    """After creating ``streams``: wait until each has a leader and every replica current,
    then :func:`spread` them. A cluster that is not settled by ``timeout`` keeps its leaders
    where they are (logged; ``tether streams --spread`` can move them later)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            found = await placements(nc, streams)
        except Unavailable:
            found = []
        if found and all(p.leader and len(p.current) >= replicas for p in found):
            return await spread(nc, streams)
        if loop.time() > deadline:
            log.warning("stream_leaders_not_spread", streams=list(streams), why="not settled")
            return found
        await asyncio.sleep(0.2)


class Balancer:
    """Keeps partition leaders spread: every ``period`` seconds (jittered, so gateways do not
    check in step) it reads the placements, and when the same moves are due on two checks
    in a row (not a passing election) it spreads the leaders. Errors are logged, not raised:
    the cluster may be mid-failure."""

    def __init__(self, nc: NATS, streams: tuple[str, ...], period: float) -> None:
        self.nc = nc
        self.streams = streams
        self.period = period

    async def run(self) -> None:
        due: list[tuple[str, str]] = []
        while True:
            await asyncio.sleep(self.period * random.uniform(1.0, 1.5))  # noqa: S311 - jitter
            try:
                moves = plan(await placements(self.nc, self.streams))
                if moves and moves == due:
                    await spread(self.nc, self.streams)
                    moves = []
                due = moves
            except Exception as exc:  # noqa: BLE001 - a background loop: log, check again later
                log.warning("leader_balance_failed", error=repr(exc))
                due = []


async def _wait_leader(nc: NATS, stream: str, wanted: str, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        try:
            (current,) = await placements(nc, [stream])
        except Unavailable:  # mid-election
            current = None
        if current is not None and current.leader == wanted:
            return
        await asyncio.sleep(0.2)
    raise Unavailable(f"stream {stream}: no leader on {wanted} after {timeout:.0f}s")


def render(found: list[Placement]) -> str:
    """A table for ``tether streams``: stream, leader, current replicas, size."""
    head = ("stream", "leader", "current replicas", "messages", "bytes")
    lines = ["{:<24} {:<16} {:<32} {:>10} {:>12}".format(*head)]
    for p in found:
        lines.append(
            f"{p.stream:<24} {p.leader or '-':<16} {','.join(p.current) or '-':<32} "
            f"{p.messages:>10} {p.bytes:>12}"
        )
    return "\n".join(lines)


def to_json(found: list[Placement]) -> bytes:
    return orjson.dumps(
        [
            {
                "stream": p.stream,
                "leader": p.leader,
                "current": list(p.current),
                "messages": p.messages,
                "bytes": p.bytes,
            }
            for p in found
        ]
    )


async def command(*, move: bool, as_json: bool) -> int:
    """``tether streams [--spread] [--json]``: NATS settings from ``TETHER_NATS_*`` (a user
    with stream rights, the admin user for ``--spread``), names from ``TETHER_STREAM*``."""
    from shared import natsconn  # noqa: PLC0415 - only this command needs a connection
    from shared.settings import LogSettings, NatsSettings  # noqa: PLC0415

    log_settings = LogSettings.from_env()
    nc = await natsconn.connect(NatsSettings.from_env(name="tether-cli"))
    try:
        streams = log_settings.streams
        found = await (spread(nc, streams) if move else placements(nc, streams))
    finally:
        await natsconn.close(nc)
    print(to_json(found).decode() if as_json else render(found))
    return 0

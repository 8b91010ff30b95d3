"""Many deadlines on one event-loop timer: the token expiry of every WebSocket.

A connection closes when its token expires. One ``loop.call_later`` per connection costs a
``TimerHandle`` and a libuv timer each (~0.5 KB); here a connection holds one small
:class:`Deadline` in a heap and the gateway keeps a single timer, armed for the earliest.
A cancelled deadline stays in the heap until it is due or the heap is compacted (when more
than half of it is cancelled), so connections that come and go do not make it grow.
"""

from __future__ import annotations

import asyncio
import heapq
import math
from collections.abc import Callable
from itertools import count

import structlog

log = structlog.get_logger(__name__)

SLACK = 0.001  # event-loop timers may fire this early (uvloop counts milliseconds)
COMPACT_MIN = 64  # cancelled deadlines kept before a compaction is considered


class Deadline:
    """One scheduled callback; ``cancel()`` it as a ``TimerHandle`` would be."""

    __slots__ = ("callback", "owner", "seq", "when")

    def __init__(
        self, when: float, seq: int, callback: Callable[[], object], owner: Deadlines
    ) -> None:
        self.when = when
        self.seq = seq
        self.callback: Callable[[], object] | None = callback
        self.owner: Deadlines | None = owner

    def __lt__(self, other: Deadline) -> bool:
        return (self.when, self.seq) < (other.when, other.seq)

    def cancelled(self) -> bool:
        return self.callback is None

    def cancel(self) -> None:
        owner = self.owner
        if self.callback is None or owner is None:
            return
        self.callback = None
        self.owner = None
        owner._cancelled_one()


class Deadlines:
    """A heap of deadlines (event-loop time) served by one timer."""

    def __init__(self) -> None:
        self._heap: list[Deadline] = []
        self._seq = count()
        self._cancelled = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    def __len__(self) -> int:
        """Deadlines scheduled and not cancelled."""
        return len(self._heap) - self._cancelled

    def call_later(self, delay: float, callback: Callable[[], object]) -> Deadline:
        """Run ``callback`` in ``delay`` seconds (at once if ``delay`` <= 0)."""
        loop = asyncio.get_running_loop()
        deadline = Deadline(loop.time() + max(0.0, delay), next(self._seq), callback, self)
        heapq.heappush(self._heap, deadline)
        if deadline.when < self._timer_at:
            self._arm(loop, deadline.when)
        return deadline

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(when, self._fire)
        self._timer_at = when

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._timer_at = math.inf

    def _cancelled_one(self) -> None:
        self._cancelled += 1
        heap = self._heap
        if self._cancelled == len(heap):
            heap.clear()
            self._cancelled = 0
            self._disarm()
        elif self._cancelled > COMPACT_MIN and self._cancelled * 2 > len(heap):
            self._heap = [d for d in heap if d.callback is not None]
            heapq.heapify(self._heap)
            self._cancelled = 0

    def _fire(self) -> None:
        self._timer = None
        self._timer_at = math.inf
        loop = asyncio.get_running_loop()
        now = loop.time() + SLACK
        while self._heap and (self._heap[0].callback is None or self._heap[0].when <= now):
            deadline = heapq.heappop(self._heap)  # a callback may compact (replace) the heap
            callback = deadline.callback
            if callback is None:
                self._cancelled -= 1
                continue
            deadline.callback = None
            deadline.owner = None
            try:
                callback()
            except Exception:  # noqa: BLE001 - one failing callback must not stop the others
                log.exception("deadline_callback_failed")
        if self._heap:
            self._arm(loop, self._heap[0].when)

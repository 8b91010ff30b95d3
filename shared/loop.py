"""Running a process's main coroutine on the best event loop available.

``TETHER_EVENT_LOOP`` is ``uvloop`` (the default; falls back to asyncio where uvloop is not
installed) or ``asyncio``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from shared.settings import Env

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T], env: Env | None = None) -> T:
    """``asyncio.run(main)``, on uvloop unless ``TETHER_EVENT_LOOP=asyncio``."""
    choice = (env or Env()).choice("TETHER_EVENT_LOOP", "uvloop", ("uvloop", "asyncio"))
    if choice == "uvloop":
        try:
            import uvloop
        except ImportError:
            return asyncio.run(main)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main)
    return asyncio.run(main)

"""Helpers for tests with real agent subprocesses (inbox and resume agents)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

from tests.conftest import ServiceProcess

StartAgent = Callable[..., Awaitable[ServiceProcess]]


def records(path: Path) -> list[dict[str, Any]]:
    """The JSON lines an inbox agent wrote to its log file."""
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def answer_text(text: str, words: int = 5) -> str:
    """What tests/agents/inbox_agent.py answers to ``text`` (tokens joined, trailing space)."""
    tokens = f"answer({text}) " + " ".join(f"w{i}" for i in range(words))
    return "".join(token + " " for token in tokens.split(" "))

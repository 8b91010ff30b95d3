"""The gateway's garbage-collector policy (``TETHER_GC_FREEZE``, ``TETHER_GC_THRESHOLDS``).

A gateway holding 10,000 WebSockets has ~1.5 million tracked objects; a CPython full
(generation 2) collection walks all of them and paused the process for 1-1.6 s
(docs/benchmarks.md). After start-up the gateway collects once and freezes what is left
(imports, settings, the app: never garbage, never scanned again), and raises the
generation thresholds so young collections run less often and full collections are
considered only after many more surviving allocations (CPython still runs one only when
the objects promoted since the last one reach 25 % of the old generation).
"""

from __future__ import annotations

import gc

import structlog

from shared.errors import ConfigError

log = structlog.get_logger(__name__)

DEFAULT_THRESHOLDS = (10_000, 20, 50)


def parse_thresholds(
    name: str, raw: str | None, default: tuple[int, int, int]
) -> tuple[int, int, int]:
    """``"gen0,gen1,gen2"``: three integers of at least 1 (0 would disable the collector)."""
    if raw is None or raw.strip() == "":
        return default
    parts = [part.strip() for part in raw.split(",")]
    if len(parts) != 3:
        raise ConfigError(f"{name} has value {raw!r}; use three integers gen0,gen1,gen2")
    values: list[int] = []
    for part in parts:
        try:
            value = int(part)
        except ValueError:
            raise ConfigError(f"{name} has value {raw!r}; {part!r} is not a valid int") from None
        if value < 1:
            raise ConfigError(f"{name} has value {raw!r}; every threshold must be at least 1")
        values.append(value)
    return values[0], values[1], values[2]


def apply(thresholds: tuple[int, int, int], freeze: bool) -> None:
    """Called once the gateway is started (before it serves traffic)."""
    gc.set_threshold(*thresholds)
    frozen = 0
    if freeze:
        gc.collect()  # garbage is not frozen: only what survives start-up
        gc.freeze()
        frozen = gc.get_freeze_count()
    log.info("gc_policy", thresholds=list(thresholds), frozen_objects=frozen)

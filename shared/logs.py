"""structlog configuration shared by every Tether process.

``TETHER_LOG_FORMAT`` is ``console`` (default on a terminal) or ``json``;
``TETHER_LOG_LEVEL`` is a standard level name. Event names are snake_case.
"""

from __future__ import annotations

import logging
import sys

import structlog

from shared.settings import Env


def configure(service: str, env: Env | None = None) -> None:
    """Configure structlog (and stdlib logging) for one process; call once from main()."""
    env = env or Env()
    default_format = "console" if sys.stderr.isatty() else "json"
    fmt = env.choice("TETHER_LOG_FORMAT", default_format, ("console", "json"))
    level_name = env.choice(
        "TETHER_LOG_LEVEL", "info", ("debug", "info", "warning", "error", "critical")
    )
    level = getattr(logging, level_name.upper())
    renderer: structlog.types.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)
    logging.basicConfig(level=max(level, logging.WARNING), stream=sys.stderr)

"""Reading settings from the environment, with precise errors.

Each service has one frozen settings dataclass with a ``from_env()`` constructor built
from these helpers. Secrets are wrapped in :class:`Secret` so they never show in a repr.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from shared import partitions
from shared.errors import ConfigError
from shared.partitions import MAX_PARTITIONS

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"


class Secret:
    """A string that hides itself from repr() and str(); call ``reveal()`` to use it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')" if self._value else "Secret('')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class Env:
    """Typed access to an environment mapping; every error names the variable and value."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ

    def string(self, name: str, default: str) -> str:
        value = self._environ.get(name)
        return default if value is None or value == "" else value

    def integer(
        self, name: str, default: int, *, minimum: int | None = None, maximum: int | None = None
    ) -> int:
        raw = self._environ.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name} has value {raw!r}, not a valid int") from None
        if minimum is not None and value < minimum:
            raise ConfigError(f"{name} has value {value}, below the minimum {minimum}")
        if maximum is not None and value > maximum:
            raise ConfigError(f"{name} has value {value}, above the maximum {maximum}")
        return value

    def number(self, name: str, default: float, *, minimum: float | None = None) -> float:
        raw = self._environ.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name} has value {raw!r}, not a valid number") from None
        if minimum is not None and value < minimum:
            raise ConfigError(f"{name} has value {value}, below the minimum {minimum}")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        raw = self._environ.get(name)
        if raw is None or raw == "":
            return default
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name} has value {raw!r}, not a valid bool (use true or false)")

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.string(name, default)
        if value not in choices:
            raise ConfigError(f"{name} has value {value!r}, not one of {', '.join(choices)}")
        return value

    def secret(self, name: str, default: str = "") -> Secret:
        """A secret from ``NAME`` or from the file named by ``NAME_FILE``."""
        file_name = self._environ.get(f"{name}_FILE")
        if file_name:
            try:
                with open(file_name, encoding="utf-8") as handle:
                    return Secret(handle.read().strip())
            except OSError as exc:
                raise ConfigError(
                    f"{name}_FILE names {file_name!r}, which cannot be read: {exc.strerror}"
                ) from None
        return Secret(self.string(name, default))


@dataclass(frozen=True, slots=True)
class NatsSettings:
    """How a process reaches NATS. ``TETHER_NATS_URL`` may hold several comma-separated URLs."""

    servers: tuple[str, ...] = (DEFAULT_NATS_URL,)
    user: str = ""
    password: Secret = field(default_factory=lambda: Secret(""))
    name: str = "tether"

    @classmethod
    def from_env(cls, env: Env | None = None, *, name: str = "tether") -> NatsSettings:
        env = env or Env()
        raw = env.string("TETHER_NATS_URL", DEFAULT_NATS_URL)
        servers = tuple(url.strip() for url in raw.split(",") if url.strip())
        for url in servers:
            if not url.startswith(("nats://", "tls://", "ws://", "wss://")):
                raise ConfigError(f"TETHER_NATS_URL has value {url!r}, not a nats:// URL")
        return cls(
            servers=servers,
            user=env.string("TETHER_NATS_USER", ""),
            password=env.secret("TETHER_NATS_PASSWORD"),
            name=name,
        )


@dataclass(frozen=True)
class LogSettings:
    """The session log: its stream name (the base name when partitioned), partition count
    and retention limits."""

    stream: str = "TETHER_SESSIONS"
    partitions: int = 1
    replicas: int = 1
    max_age_seconds: float = 30 * 24 * 3600.0
    max_bytes: int = -1
    max_msg_size: int = 1024 * 1024
    max_msgs_per_subject: int = 100_000
    duplicate_window_seconds: float = 600.0

    @classmethod
    def from_env(cls, env: Env | None = None) -> LogSettings:
        env = env or Env()
        return cls(
            stream=env.string("TETHER_STREAM", cls.stream),
            partitions=env.integer(
                "TETHER_STREAM_PARTITIONS", cls.partitions, minimum=1, maximum=MAX_PARTITIONS
            ),
            replicas=env.integer("TETHER_STREAM_REPLICAS", cls.replicas, minimum=1),
            max_age_seconds=env.number("TETHER_MAX_AGE_SECONDS", cls.max_age_seconds, minimum=0),
            max_bytes=env.integer("TETHER_STREAM_MAX_BYTES", cls.max_bytes, minimum=-1),
            max_msg_size=env.integer("TETHER_MAX_MSG_SIZE", cls.max_msg_size, minimum=1024),
            max_msgs_per_subject=env.integer(
                "TETHER_MAX_MSGS_PER_SUBJECT", cls.max_msgs_per_subject, minimum=-1
            ),
            duplicate_window_seconds=env.number(
                "TETHER_DUPLICATE_WINDOW_SECONDS", cls.duplicate_window_seconds, minimum=1
            ),
        )

    @property
    def streams(self) -> tuple[str, ...]:
        """Every session stream (one, or one per partition)."""
        return partitions.stream_names(self.stream, self.partitions)

    def stream_for(self, session: str) -> str:
        """The stream that holds ``session`` (ValueError for an invalid session id)."""
        return partitions.stream_for(self.stream, session, self.partitions)

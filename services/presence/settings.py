"""Presence service settings, read from ``TETHER_*`` environment variables."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from shared.errors import ConfigError
from shared.ops import OpsSettings
from shared.settings import Env, NatsSettings


@dataclass(frozen=True)
class PresenceSettings:
    """Two NATS identities: the application account (the bucket) and the system account
    (the server's CONNECT / DISCONNECT events and CONNZ)."""

    nats: NatsSettings = field(default_factory=NatsSettings)
    sys_nats: NatsSettings = field(default_factory=NatsSettings)
    grace_ms: float = 100.0
    reconcile_seconds: float = 30.0
    replicas: int = 1
    # /healthz, /readyz, /metrics (TETHER_PRESENCE_HTTP_HOST / _PORT; port 0: random)
    http: OpsSettings = field(default_factory=OpsSettings)

    @classmethod
    def from_env(cls, env: Env | None = None) -> PresenceSettings:
        env = env or Env()
        nats = NatsSettings.from_env(env, name="tether-presence")
        sys_user = env.string("TETHER_NATS_SYS_USER", "")
        if not sys_user:
            raise ConfigError(
                "TETHER_NATS_SYS_USER is not set: the presence service needs a "
                "system account user to receive connection events"
            )
        sys_nats = replace(
            nats,
            user=sys_user,
            password=env.secret("TETHER_NATS_SYS_PASSWORD"),
            name="tether-presence-sys",
        )
        return cls(
            nats=nats,
            sys_nats=sys_nats,
            grace_ms=env.number("TETHER_PRESENCE_GRACE_MS", cls.grace_ms, minimum=0),
            reconcile_seconds=env.number(
                "TETHER_PRESENCE_RECONCILE_SECONDS", cls.reconcile_seconds, minimum=1
            ),
            replicas=env.integer("TETHER_STREAM_REPLICAS", cls.replicas, minimum=1),
            http=OpsSettings.from_env("presence", env),
        )

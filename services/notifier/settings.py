"""Notifier settings, read from ``TETHER_*`` environment variables."""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.ops import OpsSettings
from shared.sealing import Sealer
from shared.settings import Env, LogSettings, NatsSettings
from shared.urlsafety import AddressPolicy


@dataclass(frozen=True)
class NotifierSettings:
    """Grace period, retry schedule, timeouts and the endpoint concurrency bound."""

    nats: NatsSettings = field(default_factory=NatsSettings)
    log: LogSettings = field(default_factory=LogSettings)
    grace_seconds: float = 10.0
    max_attempts: int = 8
    backoff_seconds: float = 1.0
    max_backoff_seconds: float = 3600.0
    timeout_seconds: float = 10.0
    ack_wait_seconds: float = 30.0
    concurrency: int = 4
    policy: AddressPolicy = field(default_factory=AddressPolicy)
    # Opens sealed signing secrets (TETHER_WEBHOOK_SEALING_KEYS, shared/sealing.py).
    sealer: Sealer | None = None
    # /healthz, /readyz, /metrics (TETHER_NOTIFIER_HTTP_HOST / _PORT; port 0: random)
    http: OpsSettings = field(default_factory=OpsSettings)

    @classmethod
    def from_env(cls, env: Env | None = None) -> NotifierSettings:
        env = env or Env()
        timeout = env.number("TETHER_WEBHOOK_TIMEOUT_SECONDS", cls.timeout_seconds, minimum=0.1)
        return cls(
            nats=NatsSettings.from_env(env, name="tether-notifier"),
            log=LogSettings.from_env(env),
            grace_seconds=env.number("TETHER_NOTIFY_GRACE_SECONDS", cls.grace_seconds, minimum=0),
            max_attempts=env.integer("TETHER_WEBHOOK_MAX_ATTEMPTS", cls.max_attempts, minimum=1),
            backoff_seconds=env.number(
                "TETHER_WEBHOOK_BACKOFF_SECONDS", cls.backoff_seconds, minimum=0.01
            ),
            max_backoff_seconds=env.number(
                "TETHER_WEBHOOK_MAX_BACKOFF_SECONDS", cls.max_backoff_seconds, minimum=0.01
            ),
            timeout_seconds=timeout,
            # Redelivery after a crash mid-delivery: must outlast one attempt.
            ack_wait_seconds=env.number(
                "TETHER_WEBHOOK_ACK_WAIT_SECONDS", max(cls.ack_wait_seconds, timeout + 5), minimum=1
            ),
            concurrency=env.integer("TETHER_WEBHOOK_CONCURRENCY", cls.concurrency, minimum=1),
            policy=AddressPolicy.from_env(env),
            sealer=Sealer.from_env(env),
            http=OpsSettings.from_env("notifier", env),
        )

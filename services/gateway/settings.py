"""Gateway settings, read from ``TETHER_*`` environment variables."""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.errors import ConfigError
from shared.settings import Env, LogSettings, NatsSettings, Secret
from shared.tokens import DEFAULT_AUDIENCE
from shared.urlsafety import AddressPolicy


@dataclass(frozen=True)
class GatewaySettings:
    """Everything the gateway reads from its environment."""

    host: str = "127.0.0.1"
    port: int = 8080
    jwt_secret: Secret = field(default_factory=lambda: Secret(""))
    jwt_audience: str = DEFAULT_AUDIENCE
    jwt_issuer: str = ""
    max_frame_bytes: int = 64 * 1024
    send_queue_frames: int = 4096
    history_limit: int = 1000
    heartbeat_seconds: float = 20.0
    nats: NatsSettings = field(default_factory=NatsSettings)
    log: LogSettings = field(default_factory=LogSettings)
    webhook_policy: AddressPolicy = field(default_factory=AddressPolicy)

    @classmethod
    def from_env(cls, env: Env | None = None) -> GatewaySettings:
        env = env or Env()
        secret = env.secret("TETHER_JWT_SECRET")
        if not secret:
            raise ConfigError("TETHER_JWT_SECRET is not set: the gateway needs it to verify tokens")
        return cls(
            host=env.string("TETHER_GATEWAY_HOST", cls.host),
            port=env.integer("TETHER_GATEWAY_PORT", cls.port, minimum=0),
            jwt_secret=secret,
            jwt_audience=env.string("TETHER_JWT_AUDIENCE", cls.jwt_audience),
            jwt_issuer=env.string("TETHER_JWT_ISSUER", cls.jwt_issuer),
            max_frame_bytes=env.integer("TETHER_MAX_FRAME_BYTES", cls.max_frame_bytes, minimum=256),
            send_queue_frames=env.integer(
                "TETHER_SEND_QUEUE_FRAMES", cls.send_queue_frames, minimum=16
            ),
            history_limit=env.integer("TETHER_HISTORY_LIMIT", cls.history_limit, minimum=1),
            heartbeat_seconds=env.number(
                "TETHER_WS_HEARTBEAT_SECONDS", cls.heartbeat_seconds, minimum=1
            ),
            nats=NatsSettings.from_env(env, name="tether-gateway"),
            log=LogSettings.from_env(env),
            webhook_policy=AddressPolicy.from_env(env),
        )

"""Gateway settings, read from ``TETHER_*`` environment variables."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from services.gateway.auth import keys_from_env, leeway_from_env, origins_from_env
from services.gateway.gcpolicy import DEFAULT_THRESHOLDS, parse_thresholds
from shared.errors import ConfigError
from shared.sealing import Sealer
from shared.settings import Env, LogSettings, NatsSettings, Secret
from shared.tokens import DEFAULT_AUDIENCE, KeyRing, VerifyingKey
from shared.urlsafety import AddressPolicy


@dataclass(frozen=True)
class GatewaySettings:
    """Everything the gateway reads from its environment."""

    host: str = "127.0.0.1"
    port: int = 8080
    jwt_secret: Secret = field(default_factory=lambda: Secret(""))
    jwt_audience: str = DEFAULT_AUDIENCE
    jwt_issuer: str = ""
    # More keys by kid (TETHER_JWT_KEYS); jwt_secret is the kid "default" (HS256).
    jwt_keys: tuple[VerifyingKey, ...] = ()
    jwt_leeway_seconds: float = 5.0
    # Browser origins allowed (TETHER_ALLOWED_ORIGINS): empty or "*" allows any.
    allowed_origins: tuple[str, ...] = ()
    max_frame_bytes: int = 64 * 1024
    send_queue_frames: int = 4096
    send_queue_bytes: int = 8 * 1024 * 1024
    frames_per_second: float = 50.0
    frame_burst: int = 100
    token_requests_per_second: float = 200.0
    token_burst: int = 400
    max_connections_per_subject: int = 100
    history_limit: int = 1000
    heartbeat_seconds: float = 20.0
    # Graceful stop (SIGTERM): /readyz is 503 this long before the listener closes, then
    # WebSockets are flushed and closed 1012 within drain_seconds (docs/deploy.md).
    drain_delay_seconds: float = 2.0
    drain_seconds: float = 10.0
    # Partitioned log in a cluster: how often to check that stream leaders are spread
    # (shared/leaders.py Balancer; 0: never, leave it to `tether streams --spread`).
    leader_balance_seconds: float = 60.0
    nats: NatsSettings = field(default_factory=NatsSettings)
    log: LogSettings = field(default_factory=LogSettings)
    webhook_policy: AddressPolicy = field(default_factory=AddressPolicy)
    # Seals webhook signing secrets in the bucket (TETHER_WEBHOOK_SEALING_KEYS); None: plain.
    webhook_sealer: Sealer | None = None
    # Durable Streams (/v1/stream/*): "token" (the path's first segment must be granted by
    # the token's sessions patterns) or "none" (open, e.g. for the conformance suite).
    streams_auth: str = "token"
    streams_long_poll_seconds: float = 20.0
    streams_sse_seconds: float = 60.0
    streams_max_append_bytes: int = 1024 * 1024 - 4096
    streams_read_bytes: int = 1024 * 1024
    streams_sweep_seconds: float = 60.0  # 0: expire streams only when they are accessed
    # AI SDK streams (/api/chat): end with an error once no agent has been present (nor
    # produced output) this long while an answer is awaited (aisdk_watch.py; 0: never).
    aisdk_agent_grace_seconds: float = 10.0
    # Garbage collector (services/gateway/gcpolicy.py): freeze what start-up leaves, and the
    # generation thresholds (gen0 allocations, gen1 and gen2 collection counts).
    gc_freeze: bool = True
    gc_thresholds: tuple[int, int, int] = DEFAULT_THRESHOLDS

    @classmethod
    def from_env(cls, env: Env | None = None) -> GatewaySettings:
        env = env or Env()
        secret = env.secret("TETHER_JWT_SECRET")
        jwt_keys = keys_from_env(env, has_default=bool(secret))
        if not secret and not jwt_keys:
            raise ConfigError("TETHER_JWT_SECRET is not set: the gateway needs it to verify tokens")
        return cls(
            host=env.string("TETHER_GATEWAY_HOST", cls.host),
            port=env.integer("TETHER_GATEWAY_PORT", cls.port, minimum=0),
            jwt_secret=secret,
            jwt_audience=env.string("TETHER_JWT_AUDIENCE", cls.jwt_audience),
            jwt_issuer=env.string("TETHER_JWT_ISSUER", cls.jwt_issuer),
            jwt_keys=jwt_keys,
            jwt_leeway_seconds=leeway_from_env(env, cls.jwt_leeway_seconds),
            allowed_origins=origins_from_env(env),
            max_frame_bytes=env.integer("TETHER_MAX_FRAME_BYTES", cls.max_frame_bytes, minimum=256),
            send_queue_frames=env.integer(
                "TETHER_SEND_QUEUE_FRAMES", cls.send_queue_frames, minimum=16
            ),
            send_queue_bytes=env.integer(
                "TETHER_SEND_QUEUE_BYTES", cls.send_queue_bytes, minimum=64 * 1024
            ),
            frames_per_second=env.number(
                "TETHER_WS_FRAMES_PER_SECOND", cls.frames_per_second, minimum=0.1
            ),
            frame_burst=env.integer("TETHER_WS_FRAME_BURST", cls.frame_burst, minimum=1),
            token_requests_per_second=env.number(
                "TETHER_TOKEN_REQUESTS_PER_SECOND", cls.token_requests_per_second, minimum=0.1
            ),
            token_burst=env.integer("TETHER_TOKEN_BURST", cls.token_burst, minimum=1),
            max_connections_per_subject=env.integer(
                "TETHER_MAX_CONNECTIONS_PER_SUBJECT", cls.max_connections_per_subject, minimum=1
            ),
            history_limit=env.integer("TETHER_HISTORY_LIMIT", cls.history_limit, minimum=1),
            heartbeat_seconds=env.number(
                "TETHER_WS_HEARTBEAT_SECONDS", cls.heartbeat_seconds, minimum=1
            ),
            drain_delay_seconds=env.number(
                "TETHER_DRAIN_DELAY_SECONDS", cls.drain_delay_seconds, minimum=0
            ),
            drain_seconds=env.number("TETHER_DRAIN_SECONDS", cls.drain_seconds, minimum=0.1),
            leader_balance_seconds=env.number(
                "TETHER_LEADER_BALANCE_SECONDS", cls.leader_balance_seconds, minimum=0
            ),
            nats=NatsSettings.from_env(env, name="tether-gateway"),
            log=LogSettings.from_env(env),
            webhook_policy=AddressPolicy.from_env(env),
            webhook_sealer=Sealer.from_env(env),
            streams_auth=_streams_auth(env.string("TETHER_STREAMS_AUTH", cls.streams_auth)),
            streams_long_poll_seconds=env.number(
                "TETHER_STREAMS_LONG_POLL_SECONDS", cls.streams_long_poll_seconds, minimum=0.1
            ),
            streams_sse_seconds=env.number(
                "TETHER_STREAMS_SSE_SECONDS", cls.streams_sse_seconds, minimum=1
            ),
            streams_max_append_bytes=env.integer(
                "TETHER_STREAMS_MAX_APPEND_BYTES", cls.streams_max_append_bytes, minimum=1024
            ),
            streams_read_bytes=env.integer(
                "TETHER_STREAMS_READ_BYTES", cls.streams_read_bytes, minimum=1024
            ),
            streams_sweep_seconds=env.number(
                "TETHER_STREAMS_SWEEP_SECONDS", cls.streams_sweep_seconds, minimum=0
            ),
            aisdk_agent_grace_seconds=env.number(
                "TETHER_AISDK_AGENT_GRACE_SECONDS", cls.aisdk_agent_grace_seconds, minimum=0
            ),
            gc_freeze=env.boolean("TETHER_GC_FREEZE", cls.gc_freeze),
            gc_thresholds=parse_thresholds(
                "TETHER_GC_THRESHOLDS", env.string("TETHER_GC_THRESHOLDS", ""), cls.gc_thresholds
            ),
        )

    @cached_property
    def keyring(self) -> KeyRing:
        """The keys tokens are verified with: ``jwt_secret`` as kid "default", then ``jwt_keys``."""
        return KeyRing((*KeyRing.from_secret(self.jwt_secret).keys(), *self.jwt_keys))


def _streams_auth(value: str) -> str:
    if value not in ("token", "none"):
        raise ConfigError(f"TETHER_STREAMS_AUTH has value {value!r}; use 'token' or 'none'")
    return value

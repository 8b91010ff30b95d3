"""The gateway's Prometheus metrics (docs/deploy.md lists them), one registry per gateway."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram

from shared.ops import Metrics

# Frame types a label may take; anything else is counted as "other" (bounded cardinality).
FRAMES_IN = ("send", "cancel", "steer", "approve", "ping")
FRAMES_OUT = ("hello", "event", "caught_up", "presence", "ack", "error", "pong")
EVENT_BUCKETS = (0, 1, 10, 100, 1_000, 10_000, 100_000, 1_000_000)
BYTE_BUCKETS = (0, 1_024, 16_384, 131_072, 1_048_576, 8_388_608, 67_108_864, 536_870_912)
TYPE_PREFIX = b'{"type":"'


def frame_type_out(frame: bytes) -> str:
    """The ``type`` of a frame the gateway serialised (it is always the first key)."""
    if frame.startswith(TYPE_PREFIX):
        end = frame.find(b'"', len(TYPE_PREFIX), len(TYPE_PREFIX) + 16)
        if end > 0:
            kind = frame[len(TYPE_PREFIX) : end].decode("ascii", "replace")
            if kind in FRAMES_OUT:
                return kind
    return "other"


class GatewayMetrics(Metrics):
    """Connections, frames in and out by type, replay sizes, plus every service's own."""

    def __init__(self, connections: Callable[[], int]) -> None:
        super().__init__()
        registry = self.registry
        self.connections = Gauge(
            "tether_gateway_connections",
            "Open WebSocket connections on this gateway.",
            registry=registry,
        )
        self.connections.set_function(lambda: float(connections()))
        self.frames_in = Counter(
            "tether_gateway_frames_in",
            "WebSocket frames received from clients, by frame type.",
            ["type"],
            registry=registry,
        )
        self.frames_out = Counter(
            "tether_gateway_frames_out",
            "WebSocket frames written to clients, by frame type.",
            ["type"],
            registry=registry,
        )
        self.replay_events = Histogram(
            "tether_gateway_replay_events",
            "Events sent per WebSocket replay (after compaction).",
            buckets=EVENT_BUCKETS,
            registry=registry,
        )
        self.replay_bytes = Histogram(
            "tether_gateway_replay_bytes",
            "Bytes of event frames sent per WebSocket replay.",
            buckets=BYTE_BUCKETS,
            registry=registry,
        )
        # Children created up front: every type shows (as 0) from the first scrape.
        self._in = {kind: self.frames_in.labels(kind) for kind in (*FRAMES_IN, "other")}
        self._out = {kind: self.frames_out.labels(kind) for kind in (*FRAMES_OUT, "other")}

    def frame_in(self, kind: object) -> None:
        self._in.get(kind if isinstance(kind, str) else "other", self._in["other"]).inc()

    def frame_out(self, frame: bytes) -> None:
        self._out[frame_type_out(frame)].inc()

    def replayed(self, events: int, size: int) -> None:
        self.replay_events.observe(events)
        self.replay_bytes.observe(size)

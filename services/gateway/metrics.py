"""The gateway's Prometheus metrics (docs/deploy.md lists them), one registry per gateway.

Frames in and out are counted per frame in plain ints (no lock, no label lookup on the hot
path) and exported as counters by a collector at scrape time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from shared.ops import Metrics

# Frame types a label may take; anything else is counted as "other" (bounded cardinality).
FRAMES_IN = ("send", "cancel", "steer", "approve", "ping")
FRAMES_OUT = ("hello", "event", "caught_up", "presence", "ack", "error", "pong")
EVENT_BUCKETS = (0, 1, 10, 100, 1_000, 10_000, 100_000, 1_000_000)
BYTE_BUCKETS = (0, 1_024, 16_384, 131_072, 1_048_576, 8_388_608, 67_108_864, 536_870_912)
TYPE_PREFIX = b'{"type":"'
EVENT_PREFIX = b'{"type":"event",'


def frame_type_out(frame: bytes) -> str:
    """The ``type`` of a frame the gateway serialised (it is always the first key)."""
    if frame.startswith(TYPE_PREFIX):
        end = frame.find(b'"', len(TYPE_PREFIX), len(TYPE_PREFIX) + 16)
        if end > 0:
            kind = frame[len(TYPE_PREFIX) : end].decode("ascii", "replace")
            if kind in FRAMES_OUT:
                return kind
    return "other"


class FrameCounters(Collector):
    """Frames by direction and type, counted in plain ints, exported at each scrape."""

    def __init__(self) -> None:
        self.frames_in = dict.fromkeys((*FRAMES_IN, "other"), 0)
        self.frames_out = dict.fromkeys((*FRAMES_OUT, "other"), 0)

    def collect(self) -> Iterator[Metric]:
        for name, doc, counts in (
            (
                "tether_gateway_frames_in",
                "WebSocket frames received from clients, by frame type.",
                self.frames_in,
            ),
            (
                "tether_gateway_frames_out",
                "WebSocket frames written to clients, by frame type.",
                self.frames_out,
            ),
        ):
            family = CounterMetricFamily(name, doc, labels=["type"])
            for kind, count in counts.items():
                family.add_metric([kind], float(count))
            yield family


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
        self.frames = FrameCounters()
        registry.register(self.frames)
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
        self._in = self.frames.frames_in
        self._out = self.frames.frames_out

    def frame_in(self, kind: object) -> None:
        key = kind if isinstance(kind, str) and kind in self._in else "other"
        self._in[key] += 1

    def frame_out(self, frame: bytes) -> None:
        if frame.startswith(EVENT_PREFIX):  # nearly every frame: skip the generic parse
            self._out["event"] += 1
        else:
            self._out[frame_type_out(frame)] += 1

    def replayed(self, events: int, size: int) -> None:
        self.replay_events.observe(events)
        self.replay_bytes.observe(size)

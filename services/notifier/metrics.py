"""The notifier's Prometheus metrics (docs/deploy.md lists them), one registry per instance."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from shared.ops import Metrics

SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 21600)


class NotifierMetrics(Metrics):
    """Webhook attempts, failures, dead letters and latencies, plus every service's own."""

    def __init__(self) -> None:
        super().__init__()
        registry = self.registry
        self.attempts = Counter(
            "tether_webhook_attempts",
            "Webhook POSTs attempted (every try of every delivery).",
            registry=registry,
        )
        self.failures = Counter(
            "tether_webhook_failures",
            "Webhook POSTs that failed (non-2xx, timeout, refused address, network error).",
            registry=registry,
        )
        self.dead_letters = Counter(
            "tether_webhook_dead_letters",
            "Deliveries given up after TETHER_WEBHOOK_MAX_ATTEMPTS and stored as dead letters.",
            registry=registry,
        )
        self.request_seconds = Histogram(
            "tether_webhook_request_seconds",
            "Duration of one webhook POST, from sending to the endpoint's answer.",
            buckets=SECONDS_BUCKETS,
            registry=registry,
        )
        self.delivery_seconds = Histogram(
            "tether_webhook_delivery_latency_seconds",
            "From the job's enqueueing to its successful delivery (retries included).",
            buckets=SECONDS_BUCKETS,
            registry=registry,
        )

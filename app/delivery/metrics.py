"""Prometheus metrics of the delivery side of one process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from app.domain.retry import Verdict
from app.store.deliveries import AttemptRecord


class DeliveryMetrics:
    """Attempts by verdict and their durations."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.attempts = Counter(
            "tidings_delivery_attempts",
            "Delivery attempts by verdict",
            ["verdict"],
            registry=registry,
        )
        self.duration = Histogram(
            "tidings_delivery_attempt_seconds",
            "Duration of one delivery attempt",
            registry=registry,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )

    def observe(self, record: AttemptRecord, verdict: Verdict) -> None:
        """Count one judged attempt."""
        self.attempts.labels(verdict=verdict.value).inc()
        self.duration.observe(record.outcome.duration_ms / 1000)

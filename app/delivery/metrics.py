"""Prometheus metrics of the delivery side, and the registry `/metrics` exposes."""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.multiprocess import MultiProcessCollector

from app.domain.retry import Verdict
from app.store.deliveries import AttemptRecord


class DeliveryMetrics:
    """Attempts by verdict and their durations; the worker's claims, by whether they found
    work (claims that find nothing are what wake-ups and polls cost)."""

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
        self.claims = Counter(
            "tidings_worker_claims",
            "Claims of due deliveries, by whether they found any",
            ["found"],
            registry=registry,
        )

    def claimed(self, count: int) -> None:
        """Count one claim that found `count` due deliveries."""
        self.claims.labels(found="deliveries" if count else "nothing").inc()

    def observe(self, record: AttemptRecord, verdict: Verdict) -> None:
        """Count one judged attempt."""
        self.attempts.labels(verdict=verdict.value).inc()
        self.duration.observe(record.outcome.duration_ms / 1000)


def exposed_registry(registry: CollectorRegistry) -> CollectorRegistry:
    """What `/metrics` shows: this process's `registry`, or, when PROMETHEUS_MULTIPROC_DIR
    names a directory (`--processes N` sets one for its processes), the sums over every
    process that has written there, so that each scrape counts them all, whichever process
    answers it."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return registry
    every_process = CollectorRegistry()
    MultiProcessCollector(every_process)  # type: ignore[no-untyped-call]
    return every_process

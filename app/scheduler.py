"""APScheduler wiring only: the timed work around the delivery worker."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from app.delivery import maintenance, notifications
from app.delivery.worker import Worker
from app.domain.catalog import Catalog
from app.ingest.upstream import UpstreamWatcher
from app.store.db import SessionFactory

# How often Subscriptions are checked for a due heartbeat (their periods are seconds or more).
HEARTBEAT_CHECK_SECONDS = 5


def build_scheduler(
    *,
    worker: Worker,
    sessions: SessionFactory,
    catalog: Catalog,
    clock: Callable[[], datetime],
    disable_after: int,
    poll_seconds: float = 1.0,
    upstreams: UpstreamWatcher | None = None,
) -> AsyncIOScheduler:
    """Due retries wake the worker every `poll_seconds`; Subscription heartbeats are queued as
    they fall due; auto-disable runs every minute (more often when `disable_after` is short,
    so the rule holds within a quarter of it); due upstream FHIR servers are polled every
    second."""
    scheduler = AsyncIOScheduler()
    _every(scheduler, poll_seconds, "due-retries", worker.wake)

    async def heartbeats() -> None:
        if await notifications.queue_due_heartbeats(sessions, now=clock()):
            worker.wake()

    async def disable_failing() -> None:
        await maintenance.disable_failing_endpoints(
            sessions, catalog=catalog, now=clock(), disable_after=disable_after
        )

    _every(scheduler, HEARTBEAT_CHECK_SECONDS, "subscription-heartbeats", heartbeats)
    _every(scheduler, max(1, min(60, disable_after // 4)), "auto-disable", disable_failing)
    if upstreams is not None:
        # Each upstream keeps its own `next_poll_at`; this only looks for the due ones.
        _every(scheduler, 1, "upstream-poll", upstreams.run_once)
    return scheduler


def _every(
    scheduler: AsyncIOScheduler, seconds: float, name: str, job: Callable[[], object]
) -> None:
    """A job that never overlaps itself and skips missed runs instead of catching up."""
    scheduler.add_job(job, "interval", seconds=seconds, id=name, max_instances=1, coalesce=True)

"""APScheduler wiring only: the timed work around the delivery worker."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from app.delivery import maintenance, notifications
from app.delivery.worker import Worker
from app.domain.catalog import Catalog
from app.ingest.upstream import UpstreamWatcher
from app.store.db import SessionFactory

# How often Subscriptions are checked for a due heartbeat (their periods are seconds or more).
HEARTBEAT_CHECK_SECONDS = 5
# How often every ordered endpoint's queue is checked (see `maintenance.move_ordered_queues_on`).
ORDERED_QUEUES_CHECK_SECONDS = 60


def build_scheduler(
    *,
    worker: Worker,
    sessions: SessionFactory,
    catalog: Catalog,
    clock: Callable[[], datetime],
    disable_after: int,
    poll_seconds: float = 1.0,
    upstreams: UpstreamWatcher | None = None,
) -> TimedWork:
    """Due retries wake the worker every `poll_seconds`; Subscription heartbeats are queued as
    they fall due; auto-disable runs every minute (more often when `disable_after` is short,
    so the rule holds within a quarter of it); the ordered endpoints' queues are checked at
    start and every minute; due upstream FHIR servers are polled every second."""
    timed = TimedWork()
    timed.every(poll_seconds, "due-retries", worker.wake)

    async def heartbeats() -> None:
        if await notifications.queue_due_heartbeats(sessions, now=clock()):
            worker.wake()

    async def disable_failing() -> None:
        await maintenance.disable_failing_endpoints(
            sessions, catalog=catalog, now=clock(), disable_after=disable_after
        )

    async def ordered_queues() -> None:
        await maintenance.move_ordered_queues_on(sessions, now=clock())
        worker.wake()

    timed.every(HEARTBEAT_CHECK_SECONDS, "subscription-heartbeats", heartbeats)
    timed.every(ORDERED_QUEUES_CHECK_SECONDS, "ordered-queues", ordered_queues, at_start=True)
    timed.every(max(1, min(60, disable_after // 4)), "auto-disable", disable_failing)
    if upstreams is not None:
        # Each upstream keeps its own `next_poll_at`; this only looks for the due ones.
        timed.every(1, "upstream-poll", upstreams.run_once)
    return timed


class TimedWork:
    """An APScheduler whose stop lets running jobs finish.

    APScheduler's asyncio executor cancels running coroutine jobs on shutdown (and logs the
    cancellation as a job failure); a job cut off mid-transaction only wastes work, but the
    noise hides real failures. Each coroutine job therefore runs as a task of its own that the
    scheduler merely waits on, and `stop` waits for those tasks.
    """

    def __init__(self) -> None:
        self._scheduler = AsyncIOScheduler()
        self._running: set[asyncio.Task[object]] = set()
        self._at_start: list[str] = []  # the jobs that run first when the scheduler starts

    def every(
        self, seconds: float, name: str, job: Callable[[], object], *, at_start: bool = False
    ) -> None:
        """Run `job` every `seconds` on the event loop (a plain function too: APScheduler
        would run it on a thread), never overlapping itself, skipping missed runs instead of
        catching up; with `at_start`, first as soon as the scheduler starts."""
        self._scheduler.add_job(
            self._tracked(job),
            "interval",
            seconds=seconds,
            id=name,
            max_instances=1,
            coalesce=True,
        )
        if at_start:
            self._at_start.append(name)

    def _tracked(self, job: Callable[[], object]) -> Callable[[], Awaitable[None]]:
        async def call() -> object:
            result = job()
            return await result if inspect.isawaitable(result) else result

        async def run() -> None:
            task: asyncio.Task[object] = asyncio.ensure_future(call())
            self._running.add(task)
            task.add_done_callback(self._running.discard)
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                # Only the scheduler's shutdown cancels this wrapper; `stop` awaits the job.
                return

        return run

    def start(self) -> None:
        """Begin running the jobs (needs a running event loop)."""
        self._scheduler.start()
        for name in self._at_start:
            self._scheduler.modify_job(name, next_run_time=datetime.now(UTC))

    async def stop(self) -> None:
        """Start no more jobs and wait for the running ones to finish."""
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        await asyncio.gather(*self._running, return_exceptions=True)

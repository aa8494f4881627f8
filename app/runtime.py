"""The delivery side of a process, without the API: worker, scheduler, sender, wake-ups.

`tidings worker` runs only this (`run_worker_process`), so it imports neither Quart nor the
routes; `tidings serve` runs it beside the API (`factory.create_app(run_worker=True)`).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from app.delivery import dns
from app.delivery.attempts import AttemptContext
from app.delivery.metrics import DeliveryMetrics
from app.delivery.sender import Sender
from app.delivery.wakeups import PostgresWakeups
from app.delivery.worker import Worker, WorkerSettings
from app.domain.addresses import Resolver
from app.domain.catalog import Catalog, load_catalog
from app.domain.matching import CriteriaCache
from app.domain.retry import RetryPolicy
from app.domain.secrets import SecretBox
from app.ingest.upstream import UpstreamWatcher, new_upstream_client
from app.scheduler import TimedWork, build_scheduler
from app.store.db import SessionFactory, make_engine, make_session_factory
from app.store.sqlite_checkpoints import WalCheckpointer, checkpointer_for

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The real clock."""
    return datetime.now(UTC)


@dataclass
class Runtime:
    """The delivery side of one process: worker, scheduler, sender and wake-ups."""

    worker: Worker
    sender: Sender
    timed_work: TimedWork
    wakeups: PostgresWakeups | None
    task: asyncio.Task[None] | None = None
    upstreams: UpstreamWatcher | None = None

    async def start(self) -> None:
        """Begin delivering."""
        self.timed_work.start()
        if self.wakeups is not None:
            await self.wakeups.listen(self.worker.wake)
        self.task = asyncio.create_task(self.worker.run())

    async def stop(self) -> None:
        """Finish in-flight attempts within the grace period, release the rest, close."""
        self.worker.stop()
        await self.timed_work.stop()
        if self.task is not None:
            await self.task
        await self.sender.aclose()
        if self.upstreams is not None:
            await self.upstreams.aclose()


def build_runtime(
    settings: Settings,
    *,
    sessions: SessionFactory,
    catalog: Catalog,
    clock: Clock,
    resolve: Resolver = dns.resolve,
    wakeups: PostgresWakeups | None = None,
    registry: CollectorRegistry | None = None,
) -> Runtime:
    """Wire a worker and its scheduler for these settings."""
    worker, sender, secret_box = _build_worker(
        settings, sessions, catalog, clock, resolve, registry
    )
    watcher = UpstreamWatcher(
        sessions=sessions,
        client=new_upstream_client(),
        catalog=catalog,
        criteria_cache=CriteriaCache(),
        secret_box=secret_box,
        clock=clock,
        resolve=resolve,
        allowed_networks=settings.allowed_networks,
        on_events=lambda: wake_workers(worker, wakeups),
    )
    timed_work = build_scheduler(
        upstreams=watcher,
        worker=worker,
        sessions=sessions,
        catalog=catalog,
        clock=clock,
        disable_after=settings.disable_after,
        poll_seconds=settings.poll_seconds,
    )
    return Runtime(
        worker=worker,
        sender=sender,
        timed_work=timed_work,
        wakeups=wakeups,
        upstreams=watcher,
    )


def _build_worker(
    settings: Settings,
    sessions: SessionFactory,
    catalog: Catalog,
    clock: Clock,
    resolve: Resolver,
    registry: CollectorRegistry | None,
) -> tuple[Worker, Sender, SecretBox]:
    """The worker, its sender, and the box that opens the stored secrets."""
    assert settings.secret_key is not None
    sender = Sender(
        timeout=settings.delivery_timeout,
        allowed_networks=settings.allowed_networks,
        resolver=resolve,
        max_connections=settings.worker_concurrency,
        clock=clock,
    )
    context = AttemptContext(
        catalog=catalog,
        secret_box=SecretBox(settings.secret_key),
        public_url=settings.public_url,
        policy=RetryPolicy(settings.retry_schedule),
        default_timeout=settings.delivery_timeout,
    )
    worker = Worker(
        sessions=sessions,
        sender=sender,
        context=context,
        clock=clock,
        rng=random.Random(),
        settings=WorkerSettings(
            batch_size=settings.worker_batch_size,
            concurrency=settings.worker_concurrency,
            lease_seconds=settings.lease_seconds,
            poll_seconds=settings.poll_seconds,
            shutdown_grace_seconds=settings.delivery_timeout + 1,
        ),
        metrics=DeliveryMetrics(registry) if registry is not None else None,
    )
    return worker, sender, context.secret_box


def wake_workers(worker: Worker | None, wakeups: PostgresWakeups | None) -> None:
    """New work is due: wake this process's worker, if it has one, and the other processes'
    through PostgreSQL when this one cannot take a batch of it at once (it has none, it is
    stopping, or too few of its slots are free). A worker with room claims what it was woken
    for; woken too, the others' claims would find nothing (with two `serve` processes, half
    of all claims did). They still find what this one leaves at their next poll."""
    if worker is not None:
        worker.wake()
        if worker.takes_a_batch_now():
            return
    if wakeups is not None:
        wakeups.notify()


async def run_worker_process(settings: Settings, stop: Callable[[], Awaitable[None]]) -> None:
    """`tidings worker`: deliver (and run the timed work) until `stop` returns."""
    engine = make_engine(settings.database_url)
    sessions = make_session_factory(engine)
    wakeups = None if settings.is_sqlite else PostgresWakeups(settings.database_url)
    catalog = load_catalog(settings.catalog_paths)
    runtime = build_runtime(
        settings, sessions=sessions, catalog=catalog, clock=utc_now, wakeups=wakeups
    )
    await runtime.start()
    checkpointer = checkpointer_for(settings.database_url)
    if checkpointer is not None:
        checkpointer.start()
    try:
        await stop()
    finally:
        await shut_down(runtime, wakeups, engine, checkpointer)


async def shut_down(
    runtime: Runtime | None,
    wakeups: PostgresWakeups | None,
    engine: AsyncEngine,
    checkpointer: WalCheckpointer | None,
) -> None:
    """A process's end: stop delivering, stop listening for wake-ups, close the database, and
    in any case stop checkpointing it (`tidings worker`, and the app after serving)."""
    try:
        if runtime is not None:
            await runtime.stop()
        if wakeups is not None:
            await wakeups.close()
        await engine.dispose()
    finally:
        if checkpointer is not None:
            await asyncio.to_thread(checkpointer.stop)

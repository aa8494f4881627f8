"""The delivery worker: claim due deliveries, send them concurrently, record every attempt.

`run_once` handles one batch from claim to record and is what tests drive with a fake clock.
`run` is the long-running loop: it keeps up to `concurrency` attempts in flight, claims more
as slots free up (so a slow endpoint never holds up the others), and sleeps until woken by a
new event, a due retry, or the poll interval.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from app.config import Settings
from app.delivery import attempts, operational
from app.delivery.attempts import AttemptContext, UnsendableError
from app.delivery.limits import EndpointLimits
from app.delivery.metrics import DeliveryMetrics
from app.delivery.sender import Sender
from app.domain.retry import AttemptOutcome
from app.store import deliveries as queue
from app.store.db import SessionFactory, is_unavailable, transaction
from app.store.deliveries import ClaimedDelivery

log = logging.getLogger("tidings.worker")
Result = tuple[ClaimedDelivery, AttemptOutcome]
# After the first attempt of a round finishes, wait this long for others to record together.
RECORD_GATHER_SECONDS = 0.005


@dataclass(frozen=True)
class WorkerSettings:
    """How much a worker takes on at once (by default, what `Settings` defaults to)."""

    batch_size: int = Settings.worker_batch_size
    concurrency: int = Settings.worker_concurrency
    lease_seconds: int = Settings.lease_seconds
    poll_seconds: float = Settings.poll_seconds
    shutdown_grace_seconds: float = 10.0


class Worker:
    """Sends due deliveries; one per process on SQLite, any number on PostgreSQL."""

    def __init__(
        self,
        *,
        sessions: SessionFactory,
        sender: Sender,
        context: AttemptContext,
        clock: Callable[[], datetime],
        rng: random.Random | None = None,
        settings: WorkerSettings | None = None,
        metrics: DeliveryMetrics | None = None,
    ) -> None:
        self._sessions = sessions
        self._sender = sender
        self._context = context
        self._clock = clock
        self._rng = rng or random.Random()
        self._settings = settings or WorkerSettings()
        self._limits = EndpointLimits()
        self._metrics = metrics
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()

    def wake(self) -> None:
        """New work may be due: stop sleeping."""
        self._wake.set()

    def stop(self) -> None:
        """Finish what is in flight (within the grace period), then return from `run`."""
        self._stopping.set()
        self._wake.set()

    async def run_once(self) -> int:
        """Claim one batch, send it all, record it all; the number of attempts made."""
        claimed = await self._claim(self._settings.batch_size)
        results = await asyncio.gather(*(self._attempt(item) for item in claimed))
        await self._record(results)
        return len(claimed)

    async def run(self) -> None:
        """Deliver until `stop` is called.

        Claims happen when at least half a batch of slots is free (or nothing is in flight),
        and finished attempts are recorded together, so the database sees few, large
        statements however fast the receivers answer.
        """
        in_flight: dict[asyncio.Task[Result], ClaimedDelivery] = {}
        threshold = max(1, min(self._settings.batch_size, self._settings.concurrency) // 2)
        while not self._stopping.is_set():
            try:
                await self._step(in_flight, threshold)
            except Exception as error:  # the worker must outlive a database outage
                await self._back_off(error)
        await self._drain(in_flight)

    async def _step(
        self, in_flight: dict[asyncio.Task[Result], ClaimedDelivery], threshold: int
    ) -> None:
        free = self._settings.concurrency - len(in_flight)
        claimed: list[ClaimedDelivery] = []
        if free >= threshold or not in_flight:
            claimed = await self._claim(min(free, self._settings.batch_size))
            for item in claimed:
                in_flight[asyncio.create_task(self._attempt(item))] = item
        if len(claimed) < threshold:
            await self._sleep(set(in_flight))
        done = [task for task in in_flight if task.done()]
        for task in done:
            del in_flight[task]
        await self._record([task.result() for task in done])

    async def _back_off(self, error: Exception) -> None:
        """Log a failed step and wait a poll interval. Attempts whose outcome could not be
        recorded stay leased; when the lease expires they are sent again (at least once)."""
        if is_unavailable(error):
            log.warning("database unavailable (%s); the worker retries", type(error).__name__)
        else:
            log.exception("worker step failed; the worker retries")
        try:
            await asyncio.wait_for(self._stopping.wait(), self._settings.poll_seconds)
        except TimeoutError:
            pass

    async def _sleep(self, in_flight: set[asyncio.Task[Result]]) -> None:
        """Until an attempt finishes (and a few more with it), someone wakes us, or the poll
        interval passes."""
        waker = asyncio.ensure_future(self._wake.wait())
        done, _ = await asyncio.wait(
            {*in_flight, waker},
            timeout=self._settings.poll_seconds,
            return_when=asyncio.FIRST_COMPLETED,
        )
        if done - {waker}:
            await asyncio.sleep(RECORD_GATHER_SECONDS)
        waker.cancel()
        self._wake.clear()

    async def _drain(self, in_flight: dict[asyncio.Task[Result], ClaimedDelivery]) -> None:
        """Shutdown: let attempts finish within the grace period, give the rest back."""
        if in_flight:
            await asyncio.wait(in_flight, timeout=self._settings.shutdown_grace_seconds)
        await self._record([task.result() for task in in_flight if task.done()])
        unfinished = [task for task in in_flight if not task.done()]
        for task in unfinished:
            task.cancel()
        async with transaction(self._sessions) as session:
            await queue.release_deliveries(
                session, [in_flight[task].id for task in unfinished], now=self._clock()
            )

    async def _claim(self, limit: int) -> list[ClaimedDelivery]:
        if limit <= 0:
            return []
        now = self._clock()
        async with transaction(self._sessions) as session:
            claimed = await queue.claim_due_deliveries(
                session,
                now=now,
                limit=limit,
                lease_seconds=self._settings.lease_seconds,
                skip_endpoints=self._limits.full(),
            )
            admitted, deferred = self._limits.admit(claimed, now)
            for retry_at, items in deferred.items():
                await queue.release_deliveries(
                    session, [item.id for item in items], now=now, retry_at=retry_at
                )
        return admitted

    async def _attempt(self, claimed: ClaimedDelivery) -> Result:
        try:
            request = attempts.build_request(claimed, self._context, self._clock())
        except UnsendableError as error:
            log.warning("delivery %s cannot be sent: %s", claimed.id, error)
            self._limits.finished(claimed.endpoint.id)
            return claimed, attempts.unsendable_outcome(error)
        outcome: AttemptOutcome | None = None
        try:
            outcome = await self._sender.send(request)
            return claimed, outcome
        finally:
            self._limits.finished(claimed.endpoint.id, outcome)

    async def _record(self, results: Sequence[Result]) -> None:
        if not results:
            return
        now = self._clock()
        judged = [
            attempts.judge(
                claimed,
                outcome,
                context=self._context,
                now=now,
                rng=self._rng,
                trigger=claimed.trigger,
            )
            for claimed, outcome in results
        ]
        async with transaction(self._sessions) as session:
            await queue.record_attempts(session, [record for record, _ in judged])
            for (claimed, _), (record, verdict) in zip(results, judged, strict=True):
                await operational.after_attempt(
                    session, claimed, record, verdict, catalog=self._context.catalog, now=now
                )
        for record, verdict in judged:
            if self._metrics is not None:
                self._metrics.observe(record, verdict)
            log.debug("delivery %s: %s -> %s", record.delivery_id, record.outcome.result, verdict)

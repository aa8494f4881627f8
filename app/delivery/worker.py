"""The delivery worker: claim due deliveries, send them concurrently, record every attempt.

`run_once` handles one batch from claim to record and is what tests drive with a fake clock.
`run` is the long-running loop. It holds at most `concurrency` deliveries between claim and
record (in flight, or finished and not yet recorded) and claims as soon as there is work and
room: when woken by a new event, at once again after a full claim, after recorded attempts free
slots while more is known to be due, and every poll interval (due retries, expired leases). A
slow endpoint never holds up the others. Finished attempts are recorded by a second task, each
round taking everything finished since the last (gathered for up to `RECORD_GATHER_SECONDS`),
so recording never delays a claim and the database sees few, large statements.

A slot is freed when its outcome is recorded, not when the attempt ends: what a killed worker
can have sent without recording it (and so sends again once the lease runs out) is at most
`concurrency` deliveries, and a database that records slowly slows claiming instead of letting
unrecorded outcomes pile up.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

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
# Recording waits up to this long after an attempt finishes, for others to record with it: every
# transaction saved is one that accepted events do not queue behind under `serve` on SQLite
# (e2e p50 at 500/s 31 -> 25 ms). It records at once when `RECORD_AT_ONCE` results are waiting
# (fewer when that many would hold the slots a claim waits for), and when an attempt to an
# ordered endpoint has finished: the endpoint's next delivery is due only once that outcome is
# recorded.
RECORD_GATHER_SECONDS = 0.025
RECORD_AT_ONCE = 64


class _Next(enum.Enum):
    """What the loop waits for before its next claim."""

    CLAIM = "claim at once: the last claim was full and there is room"
    SLOTS = "more is due: claim when attempts free slots"
    WAKE = "nothing more is due: claim when woken or at the poll interval"


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
        self._in_flight: dict[asyncio.Task[Result], ClaimedDelivery] = {}
        self._slot_freed = asyncio.Event()
        self._finished: list[Result] = []
        self._unrecorded = 0  # finished attempts whose outcome is not recorded yet: slots held
        self._finished_ready = asyncio.Event()
        self._record_now = asyncio.Event()
        self._record_at_once = min(RECORD_AT_ONCE, self._claim_threshold())
        self._recording_closed = False
        # Expired leases (a worker died) are rare: looked for once per poll interval.
        self._next_lease_sweep = datetime.min.replace(tzinfo=UTC)
        # The earliest time deliveries the endpoints' limits sent back are due again.
        self._deferred_until: datetime | None = None

    def wake(self) -> None:
        """New work may be due: stop sleeping."""
        self._wake.set()

    def takes_a_batch_now(self) -> bool:
        """Whether, woken now, this worker would claim a whole batch at once: it is running
        and a batch's worth of its slots are free (all of them, when it has fewer)."""
        batch = min(self._settings.batch_size, self._settings.concurrency)
        return not self._stopping.is_set() and self._free_slots() >= batch

    def stop(self) -> None:
        """Finish what is in flight (within the grace period), then return from `run`."""
        self._stopping.set()
        self._wake.set()

    async def run_once(self) -> int:
        """Claim one batch, send it all, record it all; the number of attempts made."""
        claimed, _ = await self._claim(self._settings.batch_size)
        results = await asyncio.gather(*(self._attempt(item) for item in claimed))
        await self._record(results)
        return len(claimed)

    async def run(self) -> None:
        """Deliver until `stop` is called."""
        recorder = asyncio.ensure_future(self._record_continuously())
        while not self._stopping.is_set():
            try:
                await self._wait(await self._claim_and_start())
            except Exception as error:  # the worker must outlive a database outage
                await self._back_off(error)
        await self._drain(recorder)

    async def _claim_and_start(self) -> _Next:
        """Claim (when enough slots are free, or none is held) and start the attempts; what
        to wait for next."""
        self._slot_freed.clear()  # from here on, a freed slot counts for the next wait
        if not self._may_claim():
            return _Next.SLOTS
        limit = min(self._free_slots(), self._settings.batch_size)
        claimed, more_due = await self._claim(limit)
        for item in claimed:
            task = asyncio.ensure_future(self._attempt(item))
            self._in_flight[task] = item
            task.add_done_callback(self._finished_attempt)
        if not more_due:
            return _Next.WAKE
        return _Next.CLAIM if self._may_claim() and len(claimed) == limit else _Next.SLOTS

    def _claim_threshold(self) -> int:
        """A claim waits until this many slots are free (or none is held)."""
        return max(1, min(self._settings.batch_size, self._settings.concurrency) // 2)

    def _may_claim(self) -> bool:
        """Whether enough slots are free for a claim (`_claim_threshold`)."""
        free = self._free_slots()
        return free >= self._claim_threshold() or free >= self._settings.concurrency

    def _free_slots(self) -> int:
        return self._settings.concurrency - len(self._in_flight) - self._unrecorded

    def _finished_attempt(self, task: asyncio.Task[Result]) -> None:
        del self._in_flight[task]
        if task.cancelled():  # shutdown: `_drain` gives the delivery back
            return
        error = task.exception()
        if error is not None:  # a bug, not an outcome: the lease runs out, and it is sent again
            log.error("attempt failed unexpectedly", exc_info=error)
            self._slot_freed.set()
            return
        result = task.result()
        self._finished.append(result)
        self._unrecorded += 1  # its slot is freed once the outcome is recorded
        self._finished_ready.set()
        # An ordered endpoint's next delivery waits for this one's outcome to be recorded.
        if len(self._finished) >= self._record_at_once or result[0].endpoint.ordered:
            self._record_now.set()

    async def _wait(self, next_: _Next) -> None:
        """Until the next claim is worth making (see `_Next`), or the poll interval passes."""
        if next_ is _Next.CLAIM:
            return
        waiting = {asyncio.ensure_future(self._wake.wait())}
        if next_ is _Next.SLOTS:
            waiting.add(asyncio.ensure_future(self._slot_freed.wait()))
        await asyncio.wait(
            waiting, timeout=self._wait_at_most(), return_when=asyncio.FIRST_COMPLETED
        )
        for waiter in waiting:
            waiter.cancel()
        self._wake.clear()

    def _wait_at_most(self) -> float:
        """The poll interval, or less when deliveries sent back by a limit are due sooner and
        enough slots are free to claim them. Without the slots a claim cannot be made, so the
        wait is for a freed slot: a wait cut short instead would return at once, again and
        again, until the outcomes are recorded, and that spin held up the recording itself
        (the database thread waits for the GIL on every row)."""
        if self._deferred_until is None or not self._may_claim():
            return self._settings.poll_seconds
        due_in = (self._deferred_until - self._clock()).total_seconds()
        return min(self._settings.poll_seconds, max(0.0, due_in))

    async def _record_continuously(self) -> None:
        """Record finished attempts until `_drain` closes recording and nothing is left."""
        while not (self._recording_closed and not self._finished):
            await self._finished_ready.wait()
            if not self._recording_closed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._record_now.wait(), RECORD_GATHER_SECONDS)
            self._finished_ready.clear()
            self._record_now.clear()
            results, self._finished = self._finished, []
            try:
                await self._record(results)
            except Exception as error:
                await self._back_off(error)
            finally:  # recorded, or left leased to be sent again: either way the slots are free
                self._unrecorded -= len(results)
                self._slot_freed.set()

    async def _back_off(self, error: Exception) -> None:
        """Log a failed claim or record and wait a poll interval. Attempts whose outcome could
        not be recorded stay leased; when the lease expires they are sent again (at least
        once)."""
        if is_unavailable(error):
            log.warning("database unavailable (%s); the worker retries", type(error).__name__)
        else:
            log.exception("worker step failed; the worker retries")
        try:
            await asyncio.wait_for(self._stopping.wait(), self._settings.poll_seconds)
        except TimeoutError:
            pass

    async def _drain(self, recorder: asyncio.Future[None]) -> None:
        """Shutdown: let attempts finish within the grace period, record what finished, give
        the rest back."""
        if self._in_flight:
            await asyncio.wait(self._in_flight, timeout=self._settings.shutdown_grace_seconds)
        unfinished = {task: item for task, item in self._in_flight.items() if not task.done()}
        for task in unfinished:
            task.cancel()
        await asyncio.sleep(0)  # the finished attempts' callbacks hand their results over
        self._recording_closed = True
        self._record_now.set()  # no more gathering
        self._finished_ready.set()
        await recorder
        async with transaction(self._sessions) as session:
            await queue.release_deliveries(
                session, [item.id for item in unfinished.values()], now=self._clock()
            )

    async def _claim(self, limit: int) -> tuple[list[ClaimedDelivery], bool]:
        """Claim up to `limit` and admit what the endpoints' limits allow (releasing the rest
        until they allow it); the admitted, and whether more may be due right now."""
        if limit <= 0:
            return [], True
        now = self._clock()
        at_cap = self._limits.full()
        sweep = now >= self._next_lease_sweep
        async with transaction(self._sessions) as session:
            claimed = await queue.claim_due_deliveries(
                session,
                now=now,
                limit=limit,
                lease_seconds=self._settings.lease_seconds,
                skip_endpoints=at_cap,
                expired_leases=sweep,
            )
            admitted, deferred = self._limits.admit(claimed, now)
            for retry_at, items in deferred.items():
                await queue.release_deliveries(
                    session, [item.id for item in items], now=now, retry_at=retry_at
                )
        if self._metrics is not None:
            self._metrics.claimed(len(claimed))
        # The earliest still to come of those sent back before and now (this claim saw the rest).
        later = [at for at in (self._deferred_until, *deferred) if at is not None and at > now]
        self._deferred_until = min(later, default=None)
        if sweep:
            self._next_lease_sweep = now + timedelta(seconds=self._settings.poll_seconds)
        return admitted, len(claimed) == limit or bool(at_cap)

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
        records = [record for record, _ in judged]
        async with transaction(self._sessions) as session:
            # Who still holds its delivery, where a verdict would tell the organization so: a
            # worker whose lease ran out must not report a delivery another claim now owns.
            reporting = [record for record, verdict in judged if verdict in operational.REPORTED]
            current = await queue.still_leased(session, reporting)
            await queue.record_attempts(session, records)
            for (claimed, _), (record, verdict) in zip(results, judged, strict=True):
                await operational.after_attempt(
                    session,
                    claimed,
                    record,
                    verdict,
                    catalog=self._context.catalog,
                    now=now,
                    report=record.delivery_id in current,
                )
        if any(
            claimed.endpoint.ordered and record.status.finished
            for (claimed, _), (record, _) in zip(results, judged, strict=True)
        ):
            self.wake()  # an ordered endpoint's next delivery may go now, not at the next poll
        for record, verdict in judged:
            if self._metrics is not None:
                self._metrics.observe(record, verdict)
            log.debug("delivery %s: %s -> %s", record.delivery_id, record.outcome.result, verdict)

"""Group commit for published events: concurrent requests share one transaction.

Each `POST /v1/events` hands its event to the `EventCommitter` and waits. The committer takes
everything queued since its last round and stores it with `outbox.insert_events_with_deliveries`
in ONE transaction, then answers every waiter. Under load, a transaction, a candidate lookup
per event type and the inserts are paid once per round instead of once per event; alone, an
event is committed at once. Durability is unchanged: nobody is answered before the commit.

A round costs about as much as a dozen events (each statement is a trip to the database
driver's thread or server), so under load the committer gathers before it starts one: when the last
round ended moments ago, it waits until as many events are queued as in the larger of the
last two rounds. Without that, a closed loop of clients settles into two groups, e.g. rounds
of 1 event alternating with rounds of all the others. The wait is at most as long as the last
commit took (and never over `GATHER_SECONDS`): waiting longer would cost the waiting events
more than a round of their own, and at a steady rate of arrivals (500/s, commits of 5 ms) a
fixed wait turned every round into a full one, adding its whole length to every answer.

The wait counts from when the requests the last round answered have run again, not from the
commit: answering a request only schedules it, and until its handler has sent its response its
client cannot send the next event. Counted from the commit, the wait was mostly spent while the
answered handlers still queued behind the committer, and rounds ended short of their company.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from app.domain.catalog import Catalog
from app.domain.matching import CriteriaCache
from app.store import outbox
from app.store.db import SessionFactory, transaction

MAX_ROUND = 500
GATHER_AFTER_SECONDS = 0.010  # a round that starts this soon after the last one gathers first
GATHER_SECONDS = 0.020
GATHER_PER_COMMIT = 1.0  # the most a round waits, as a share of how long the last commit took


@dataclass(eq=False)  # hashed by identity: held in a set until its request runs again
class _Waiting:
    item: outbox.NewEvent
    answer: asyncio.Future[str | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class EventCommitter:
    """Stores events from concurrent requests together; see the module docstring."""

    def __init__(
        self,
        sessions: SessionFactory,
        catalog: Catalog,
        criteria_cache: CriteriaCache,
        clock: Callable[[], datetime],
    ) -> None:
        self._sessions = sessions
        self._catalog = catalog
        self._criteria = criteria_cache
        self._clock = clock
        self._queue: list[_Waiting] = []
        self._running: asyncio.Task[None] | None = None
        self._recent_sizes = (0, 0)  # of the last two rounds
        self._last_ended = float("-inf")  # loop time
        self._last_commit_seconds = 0.0
        self._enough: asyncio.Future[None] | None = None
        self._unread: set[_Waiting] = set()  # answered; their requests have not run again yet
        self._all_read: asyncio.Future[None] | None = None

    async def store(self, item: outbox.NewEvent) -> str | None:
        """Store one event; None when stored, else the id of the event stored first with the
        same idempotency key. Raises what storing it raised."""
        waiting = _Waiting(item)
        self._queue.append(waiting)
        if self._enough is not None and len(self._queue) >= max(self._recent_sizes):
            if not self._enough.done():
                self._enough.set_result(None)
        if self._running is None or self._running.done():
            self._running = asyncio.ensure_future(self._commit_rounds())
        try:
            return await waiting.answer
        finally:
            self._unread.discard(waiting)
            if not self._unread and self._all_read is not None and not self._all_read.done():
                self._all_read.set_result(None)

    async def _commit_rounds(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            if loop.time() - self._last_ended < GATHER_AFTER_SECONDS:
                await self._answers_read(loop)
                await self._gather(loop)
            round_, self._queue = self._queue[:MAX_ROUND], self._queue[MAX_ROUND:]
            started = loop.time()
            try:
                await self._commit(round_)
            except Exception:  # one bad event must not fail the others: go one by one
                for waiting in round_:
                    await self._commit_alone(waiting)
            self._recent_sizes = (self._recent_sizes[1], len(round_))
            self._last_ended = loop.time()
            self._last_commit_seconds = self._last_ended - started

    async def _answers_read(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait until the requests the last round answered have run again (at most
        `GATHER_SECONDS`)."""
        if not self._unread:
            return
        self._all_read = loop.create_future()
        try:
            async with asyncio.timeout(GATHER_SECONDS):
                await self._all_read
        except TimeoutError:
            pass
        finally:
            self._all_read = None

    async def _gather(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait until as many events are queued as in the recent rounds, or as long as the
        last commit took (at most `GATHER_SECONDS`)."""
        if len(self._queue) >= max(self._recent_sizes):
            return
        self._enough = loop.create_future()
        try:
            async with asyncio.timeout(
                min(GATHER_SECONDS, self._last_commit_seconds * GATHER_PER_COMMIT)
            ):
                await self._enough
        except TimeoutError:
            pass
        finally:
            self._enough = None

    async def _commit(self, round_: list[_Waiting]) -> None:
        async with transaction(self._sessions) as session:
            stored = await outbox.insert_events_with_deliveries(
                session,
                [w.item for w in round_],
                catalog=self._catalog,
                criteria_cache=self._criteria,
                now=self._clock(),
            )
            firsts = [
                None
                if deliveries is not None
                else await outbox.first_event_id(session, w.item.event, w.item.change_key)
                for w, deliveries in zip(round_, stored, strict=True)
            ]
        for waiting, first in zip(round_, firsts, strict=True):
            if not waiting.answer.done():  # else its request was cancelled: nobody to answer
                waiting.answer.set_result(first)
                self._unread.add(waiting)

    async def _commit_alone(self, waiting: _Waiting) -> None:
        try:
            await self._commit([waiting])
        except Exception as error:
            if not waiting.answer.done():
                waiting.answer.set_exception(error)

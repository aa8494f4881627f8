"""Wake-ups across processes on PostgreSQL: a process does not hear its own NOTIFY, and it
sends one only when its own worker cannot take the new work at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from app.delivery.wakeups import PostgresWakeups
from app.delivery.worker import WorkerSettings
from app.runtime import wake_workers
from tests.integration.delivery_harness import Delivering
from tests.receivers import Answer

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.parametrize("database_url", ["postgres"], indirect=True),
]

QUIET_SECONDS = 0.5  # a NOTIFY on loopback arrives in milliseconds


class Process:
    """One process's wake-ups, counting the NOTIFYs it hears."""

    def __init__(self, database_url: str) -> None:
        self.wakeups = PostgresWakeups(database_url)
        self.heard = 0

    def wake(self) -> None:
        self.heard += 1

    async def hears(self, count: int, seconds: float = 5.0) -> bool:
        deadline = time.monotonic() + seconds
        while self.heard < count and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return self.heard >= count


@pytest.fixture
async def processes(database_url: str) -> AsyncIterator[tuple[Process, Process]]:
    this, other = Process(database_url), Process(database_url)
    for process in (this, other):
        await process.wakeups.listen(process.wake)
    yield this, other
    for process in (this, other):
        await process.wakeups.close()


async def test_a_process_hears_the_others_notify_but_not_its_own(
    processes: tuple[Process, Process],
) -> None:
    this, other = processes
    this.wakeups.notify()
    assert await other.hears(1)
    await asyncio.sleep(QUIET_SECONDS)
    assert this.heard == 0, "a process woke its own worker a second time"
    other.wakeups.notify()
    assert await this.hears(1)
    await asyncio.sleep(QUIET_SECONDS)
    assert (this.heard, other.heard) == (1, 1)


async def test_a_worker_with_room_takes_the_work_without_telling_the_others(
    delivering: Delivering, processes: tuple[Process, Process]
) -> None:
    this, other = processes
    wake_workers(delivering.worker, this.wakeups)
    await asyncio.sleep(QUIET_SECONDS)
    assert other.heard == 0
    delivering.worker.stop()  # a stopping worker takes nothing more: the others must hear
    wake_workers(delivering.worker, this.wakeups)
    assert await other.hears(1)


async def test_a_process_without_a_worker_tells_the_others(
    processes: tuple[Process, Process],
) -> None:
    this, other = processes
    wake_workers(None, this.wakeups)  # `tidings api`
    assert await other.hears(1)


async def test_a_worker_without_free_slots_tells_the_others(
    delivering: Delivering, processes: tuple[Process, Process]
) -> None:
    this, other = processes
    worker = delivering.worker
    worker._settings = WorkerSettings(batch_size=2, concurrency=2, poll_seconds=0.05)
    await delivering.endpoint("/stuck", Answer(hang=True), timeout_seconds=30)
    for _ in range(2):
        await delivering.publish()
    running = asyncio.create_task(worker.run())
    try:
        deadline = time.monotonic() + 5
        while len(delivering.receiver.at("/stuck")) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert len(delivering.receiver.at("/stuck")) == 2, "the worker did not fill its slots"
        wake_workers(worker, this.wakeups)
        assert await other.hears(1)
    finally:
        worker.stop()
        delivering.receiver.release.set()
        await running

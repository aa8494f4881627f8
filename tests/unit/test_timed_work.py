"""The scheduler's stop lets a running job finish, quietly; plain jobs run on the loop; a job
marked `at_start` runs first as the scheduler starts."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from app.scheduler import TimedWork


async def test_stop_waits_for_a_running_job_and_logs_no_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    started = asyncio.Event()
    finished: list[bool] = []

    async def slow_job() -> None:
        started.set()
        await asyncio.sleep(0.3)
        finished.append(True)

    timed = TimedWork()
    timed.every(0.05, "slow", slow_job)
    caplog.set_level(logging.INFO)
    timed.start()
    await asyncio.wait_for(started.wait(), 5)
    await timed.stop()

    assert finished == [True], "stop returned before the running job finished"
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert failures == [], [r.getMessage() for r in failures]


async def test_a_plain_function_runs_on_the_event_loop_thread() -> None:
    loop_thread = threading.get_ident()
    ran_on: list[int] = []
    ran = asyncio.Event()

    def plain_job() -> None:
        ran_on.append(threading.get_ident())
        ran.set()

    timed = TimedWork()
    timed.every(0.05, "plain", plain_job)
    timed.start()
    await asyncio.wait_for(ran.wait(), 5)
    await timed.stop()

    assert set(ran_on) == {loop_thread}


async def test_a_failing_job_is_logged_and_runs_again(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []
    twice = asyncio.Event()

    async def failing_job() -> None:
        calls.append(1)
        if len(calls) >= 2:
            twice.set()
        raise RuntimeError("boom")

    timed = TimedWork()
    timed.every(0.05, "failing", failing_job)
    timed.start()
    await asyncio.wait_for(twice.wait(), 5)
    await timed.stop()

    assert any("boom" in (r.exc_text or "") or r.exc_info for r in caplog.records)


async def test_a_job_marked_at_start_runs_when_the_scheduler_starts_then_on_its_interval() -> None:
    runs: list[str] = []
    both = asyncio.Event()

    def job(name: str) -> None:
        runs.append(name)
        if len(runs) == 2:
            both.set()

    timed = TimedWork()
    timed.every(3600, "hourly", lambda: job("hourly"))
    timed.every(3600, "at-start", lambda: job("at-start"), at_start=True)
    timed.every(0.3, "soon", lambda: job("soon"))
    timed.start()
    await asyncio.wait_for(both.wait(), 5)
    await timed.stop()

    assert runs[:2] == ["at-start", "soon"], "the hourly job waits its hour"

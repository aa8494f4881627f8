"""The group commit: under load, events gather into rounds; a round is never held for long."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app.domain import ids
from app.domain.models import Event
from app.store import group_commit, outbox
from tests.integration.conftest import Api
from tests.integration.outbox_helpers import services_of, stored_event_types

FLOW = {
    "id": "flow_1",
    "patient": "Patient/123",
    "status": "completed",
    "completed_at": "2026-01-01T11:00:00Z",
}


@pytest.fixture
async def round_sizes(api: Api, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of events of each round the committer stores, in order."""
    await api.key("acme", "source")  # the organization
    sizes: list[int] = []
    insert = outbox.insert_events_with_deliveries

    async def recording(session: Any, items: Any, **options: Any) -> Any:
        sizes.append(len(items))
        return await insert(session, items, **options)

    monkeypatch.setattr(outbox, "insert_events_with_deliveries", recording)
    return sizes


def new_event(api: Api) -> outbox.NewEvent:
    event = Event(
        id=ids.new_id("evt"),
        organization_id="acme",
        account_id=None,
        type="patient_flow.completed",
        occurred_at=api.clock(),
        data=FLOW,
        focus=None,
        source="api",
    )
    return outbox.NewEvent(event)


async def store_many(api: Api, count: int) -> list[str | None]:
    committer = services_of(api).event_committer
    return await asyncio.gather(*(committer.store(new_event(api)) for _ in range(count)))


def gathering(
    monkeypatch: pytest.MonkeyPatch, *, after: float, at_most: float, per_commit: float = 1.0
) -> None:
    """When a round gathers (`GATHER_AFTER_SECONDS`), and for how long at most."""
    monkeypatch.setattr(group_commit, "GATHER_AFTER_SECONDS", after)
    monkeypatch.setattr(group_commit, "GATHER_SECONDS", at_most)
    monkeypatch.setattr(group_commit, "GATHER_PER_COMMIT", per_commit)


async def test_events_arriving_soon_after_a_round_gather_into_one(
    api: Api, round_sizes: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    gathering(monkeypatch, after=60.0, at_most=60.0, per_commit=1e6)  # only a full round ends it
    assert await store_many(api, 4) == [None] * 4
    first = asyncio.ensure_future(store_many(api, 1))
    await asyncio.sleep(0.01)
    assert round_sizes == [4]  # the lone event waits for company
    assert await store_many(api, 3) == [None] * 3
    assert await first == [None]
    assert round_sizes == [4, 4]
    assert await stored_event_types(api) == {"patient_flow.completed": 8}


@pytest.mark.parametrize(
    ("after", "at_most", "per_commit"),
    [
        pytest.param(60.0, 0.01, 1e6, id="held-at-most-the-gathering-time"),
        pytest.param(0.0, 60.0, 1.0, id="after-a-quiet-moment-committed-at-once"),
    ],
)
async def test_a_lone_event_is_not_held_back_for_long(
    api: Api,
    round_sizes: list[int],
    monkeypatch: pytest.MonkeyPatch,
    after: float,
    at_most: float,
    per_commit: float,
) -> None:
    gathering(monkeypatch, after=after, at_most=at_most, per_commit=per_commit)
    await store_many(api, 4)
    assert await asyncio.wait_for(store_many(api, 1), timeout=5) == [None]
    assert round_sizes == [4, 1]


async def test_a_gathering_round_waits_no_longer_than_the_last_commit_took(
    api: Api, round_sizes: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    gathering(monkeypatch, after=60.0, at_most=60.0)
    committer = services_of(api).event_committer
    commit = committer._commit
    slow_commits = 0.2

    async def slow(round_: Any) -> None:
        await asyncio.sleep(slow_commits)
        await commit(round_)

    monkeypatch.setattr(committer, "_commit", slow)
    await store_many(api, 4)  # the last commit took a little over slow_commits
    slow_commits = 0.0
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await asyncio.wait_for(store_many(api, 1), timeout=5) == [None]
    held = loop.time() - started
    assert round_sizes == [4, 1]
    assert 0.2 <= held < 2.0  # it waited for company, but only as long as a commit takes


async def test_a_round_gathers_once_the_requests_it_answered_run_again(
    api: Api, round_sizes: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Answering a request only schedules it: a round that starts gathering before the
    requests it answered have run again spends its wait on them, not on new events."""
    gathering(monkeypatch, after=60.0, at_most=60.0)
    committer = services_of(api).event_committer
    resumed = 0
    not_yet_resumed_at_gathering: list[int] = []
    gather = committer._gather

    async def recording(loop: asyncio.AbstractEventLoop) -> None:
        not_yet_resumed_at_gathering.append(sum(round_sizes) - resumed)
        await gather(loop)

    monkeypatch.setattr(committer, "_gather", recording)

    async def request() -> None:
        nonlocal resumed
        assert await committer.store(new_event(api)) is None
        resumed += 1

    async def publisher() -> None:  # sends its next event as soon as it is answered
        for _ in range(5):
            await request()

    async def trickle() -> None:  # sends events at its own pace, answered or not
        sent = []
        for _ in range(40):
            sent.append(asyncio.ensure_future(request()))
            await asyncio.sleep(0.0005)
        await asyncio.gather(*sent)

    await asyncio.gather(*(publisher() for _ in range(8)), trickle())
    assert not_yet_resumed_at_gathering  # rounds followed one another
    assert set(not_yet_resumed_at_gathering) == {0}
    assert await stored_event_types(api) == {"patient_flow.completed": 80}


async def test_a_request_cancelled_while_its_round_commits_leaves_the_others_answered(
    api: Api, round_sizes: list[int]
) -> None:
    committer = services_of(api).event_committer
    requests = [asyncio.ensure_future(committer.store(new_event(api))) for _ in range(3)]
    await asyncio.sleep(0)  # all three are queued
    requests[0].cancel()
    answers = await asyncio.gather(*requests, return_exceptions=True)
    assert isinstance(answers[0], asyncio.CancelledError)
    assert answers[1:] == [None, None]
    assert round_sizes == [3]  # stored together once, not again one by one
    assert await stored_event_types(api) == {"patient_flow.completed": 3}

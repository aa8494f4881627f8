"""Ordered endpoints hold their queue: one delivery at a time, in the order the events occurred,
whatever order they arrived in; switching `ordered` on or off, recovering failures, and a
delivery stored while the flag changes each leave nothing stuck and nothing out of order."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from app.delivery import maintenance
from app.domain import ids
from app.domain.models import DeliveryStatus, Event
from app.domain.retry import AttemptOutcome
from app.store import deliveries as queue
from app.store import ordered_queues, outbox
from app.store.db import transaction
from app.store.deliveries import AttemptRecord, ClaimedDelivery
from tests.integration.delivery_harness import Delivering
from tests.receivers import Answer

ABORT = Answer(status=400, headers={"webhook-delivery": "abort-message"})


def numbers_received(delivering: Delivering, path: str) -> list[int]:
    bodies = [json.loads(item.body) for item in delivering.receiver.at(path)]
    return [body["data"]["object"]["resources_added"] for body in bodies]


async def claim(delivering: Delivering) -> list[ClaimedDelivery]:
    """Lease what is due now, up to 10, in a transaction of its own (nothing recorded)."""
    sessions = delivering.api.app.extensions["tidings"].sessions
    async with transaction(sessions) as session:
        return await queue.claim_due_deliveries(
            session, now=delivering.api.clock(), limit=10, lease_seconds=60
        )


async def publish_numbered(delivering: Delivering, number: int, **fields: Any) -> str:
    data = {"connection_id": "c", "patient": "Patient/p", "resources_added": number}
    return await delivering.publish(data=data, idempotency_key=f"n{number}", **fields)


def numbered_event(organization_id: str, number: int, occurred_at: datetime) -> Event:
    """An event as `publish_numbered` makes one, to store straight through the outbox."""
    return Event(
        id=ids.new_id("evt"),
        organization_id=organization_id,
        type="records.sync.completed",
        occurred_at=occurred_at,
        data={"connection_id": "c", "patient": "Patient/p", "resources_added": number},
        source="test",
    )


async def ordered_pair(
    delivering: Delivering, reported: str, path: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Two ordered endpoints taking the numbered events, the first made first (so first in id
    order) and also taking Tidings' `reported` events."""
    watcher = await delivering.endpoint(
        "/watcher", ordered=True, event_types=[reported, "records.sync.completed"]
    )
    other = await delivering.endpoint(path, ordered=True, event_types=["records.sync.completed"])
    assert watcher["id"] < other["id"]
    return watcher, other


async def test_waiting_events_go_in_the_order_they_occurred_not_the_order_they_arrived(
    delivering: Delivering,
) -> None:
    endpoint = await delivering.endpoint("/occurred", ordered=True)
    start = delivering.api.clock.now - timedelta(hours=1)
    await publish_numbered(delivering, 0, occurred_at=start.isoformat())  # due: nothing before
    for number, minutes in [(3, 30), (1, 10), (4, 40), (2, 20)]:  # they wait behind it
        moment = start + timedelta(minutes=minutes)
        await publish_numbered(delivering, number, occurred_at=moment.isoformat())
    for _ in range(5):
        assert await delivering.worker.run_once() == 1, "one at a time"
    assert await delivering.worker.run_once() == 0
    assert numbers_received(delivering, "/occurred") == [0, 1, 2, 3, 4]
    assert {d["status"] for d in await delivering.deliveries(endpoint["id"])} == {"succeeded"}


async def test_waiting_deliveries_are_pending_with_no_attempt_due(delivering: Delivering) -> None:
    endpoint = await delivering.endpoint("/shown", 500, ordered=True)
    for number in range(3):
        await publish_numbered(delivering, number)
    assert await delivering.worker.run_once() == 1
    shown = {
        d["event_id"]: (d["status"], d["next_attempt_at"] is None)
        for d in await delivering.deliveries(endpoint["id"])
    }
    assert sorted(shown.values()) == [("pending", False), ("pending", True), ("pending", True)]


async def test_switching_ordered_off_releases_the_waiting_deliveries(
    delivering: Delivering,
) -> None:
    endpoint = await delivering.endpoint("/released", 500, 200, ordered=True)
    for number in range(3):
        await publish_numbered(delivering, number)
    assert await delivering.worker.run_once() == 1  # the first fails and waits for its retry
    assert await delivering.worker.run_once() == 0, "the others wait behind it"
    response = await delivering.api.call(
        "PATCH", f"/v1/endpoints/{endpoint['id']}", delivering.partner, json={"ordered": False}
    )
    assert response.status_code == 200
    assert await delivering.worker.run_once() == 2, "no longer waiting for the retry"
    received = numbers_received(delivering, "/released")
    assert received[0] == 0 and sorted(received[1:]) == [1, 2]


async def test_switching_ordered_on_queues_what_is_pending_in_order(
    delivering: Delivering,
) -> None:
    endpoint = await delivering.endpoint("/switched", 500, 500, 500, 200)
    for number in range(3):
        await publish_numbered(delivering, number)
    assert await delivering.worker.run_once() == 3  # all three fail and wait for a retry
    response = await delivering.api.call(
        "PATCH", f"/v1/endpoints/{endpoint['id']}", delivering.partner, json={"ordered": True}
    )
    assert response.status_code == 200 and (await response.get_json())["ordered"] is True
    waiting = [d["next_attempt_at"] for d in await delivering.deliveries(endpoint["id"])]
    assert waiting.count(None) == 2, "held, but for the earliest, due at once"
    for _ in range(3):
        assert await delivering.worker.run_once() == 1, "one at a time now"
    received = numbers_received(delivering, "/switched")
    assert sorted(received[:3]) == [0, 1, 2], "the first round went concurrently"
    assert received[3:] == [0, 1, 2]


async def test_recovered_failures_of_an_ordered_endpoint_go_again_in_order(
    delivering: Delivering,
) -> None:
    endpoint = await delivering.endpoint("/recovered", ABORT, ABORT, ABORT, 200, ordered=True)
    since = delivering.api.clock.now
    for number in range(3):
        await publish_numbered(delivering, number)
    assert await delivering.drain() == 3
    assert {d["status"] for d in await delivering.deliveries(endpoint["id"])} == {"failed"}
    response = await delivering.api.call(
        "POST",
        f"/v1/endpoints/{endpoint['id']}/recover",
        delivering.partner,
        json={"since": since.isoformat()},
    )
    assert (await response.get_json())["recovered"] == 3
    for _ in range(3):
        assert await delivering.worker.run_once() == 1, "one at a time again"
    assert numbers_received(delivering, "/recovered") == [0, 1, 2, 0, 1, 2]
    assert {d["status"] for d in await delivering.deliveries(endpoint["id"])} == {"succeeded"}


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
@pytest.mark.parametrize("ordered_before", [False, True])
async def test_a_delivery_stored_while_ordered_changes_follows_the_change(
    delivering: Delivering, ordered_before: bool
) -> None:
    """A request storing deliveries has read the endpoint's flag (under its lock) when the flag
    is switched: the switch waits for it to commit, then holds or releases them too. Without
    the wait, deliveries held for an endpoint no longer ordered would never be sent."""
    endpoint = await delivering.endpoint("/switch", ordered=ordered_before)
    sessions = delivering.api.app.extensions["tidings"].sessions
    now = delivering.api.clock()
    events = [
        Event(
            id=ids.new_id("evt"),
            organization_id=endpoint["organization"],
            type="ping",
            occurred_at=now + timedelta(seconds=number),
            data={"message": "ping"},
            source="test",
        )
        for number in range(2)
    ]
    async with transaction(sessions) as session:
        for event in events:
            await outbox.insert_event_for_endpoints(session, event, [endpoint["id"]], now)
        switch = asyncio.create_task(
            delivering.api.call(
                "PATCH",
                f"/v1/endpoints/{endpoint['id']}",
                delivering.partner,
                json={"ordered": not ordered_before},
            )
        )
        await asyncio.sleep(0.3)
        assert not switch.done(), "the switch waits for the deliveries' transaction"
    assert (await switch).status_code == 200
    due = [d["next_attempt_at"] for d in await delivering.deliveries(endpoint["id"])]
    # Ordered now: the earlier is due and the later held; no longer ordered: both due.
    assert due.count(None) == (0 if ordered_before else 1)
    assert await delivering.drain() == 2


async def test_each_ordered_endpoint_moves_on_by_itself(delivering: Delivering) -> None:
    slow = await delivering.endpoint("/slow", 500, ordered=True)
    fast = await delivering.endpoint("/fast", ordered=True)
    plain = await delivering.endpoint("/plain")
    for number in range(3):
        await publish_numbered(delivering, number)
    assert await delivering.worker.run_once() == 5  # both heads, and all three to /plain
    assert await delivering.worker.run_once() == 1  # /fast's second; /slow waits for its retry
    assert await delivering.worker.run_once() == 1
    assert await delivering.worker.run_once() == 0
    assert numbers_received(delivering, "/fast") == [0, 1, 2]
    assert numbers_received(delivering, "/slow") == [0]
    assert sorted(numbers_received(delivering, "/plain")) == [0, 1, 2]  # concurrently
    waiting = [d for d in await delivering.deliveries(slow["id"]) if d["next_attempt_at"] is None]
    assert len(waiting) == 2
    assert {d["status"] for d in await delivering.deliveries(fast["id"])} == {"succeeded"}
    assert {d["status"] for d in await delivering.deliveries(plain["id"])} == {"succeeded"}


async def test_concurrent_claims_schedule_an_endpoint_s_next_delivery_once(
    delivering: Delivering,
) -> None:
    """Two claims in a row, neither recording: the second finds the head in flight and leases
    nothing of that endpoint."""
    await delivering.endpoint("/once", ordered=True)
    for number in range(3):
        await publish_numbered(delivering, number)
    first = await claim(delivering)
    second = await claim(delivering)
    assert len(first) == 1 and second == []
    assert first[0].event.data["resources_added"] == 0


async def test_a_running_worker_sends_the_next_in_order_without_waiting_for_a_poll(
    delivering: Delivering,
) -> None:
    await delivering.endpoint("/prompt", ordered=True)
    for number in range(5):
        await publish_numbered(delivering, number)
    delivering.worker._settings = type(delivering.worker._settings)(poll_seconds=60)
    running = asyncio.create_task(delivering.worker.run())
    try:
        async with asyncio.timeout(10):  # five in a row, not one a poll interval
            while len(delivering.receiver.at("/prompt")) < 5:
                await asyncio.sleep(0.02)
    finally:
        delivering.worker.stop()
        await asyncio.wait_for(running, 5)
    assert numbers_received(delivering, "/prompt") == [0, 1, 2, 3, 4]


async def scheduled_numbers(delivering: Delivering, endpoint_id: str) -> list[int]:
    """The numbers of the endpoint's deliveries that are scheduled (due or in flight) now."""
    rows = await delivering.sql(
        "SELECT e.data FROM delivery d JOIN event e ON e.id = d.event_id "
        "WHERE d.endpoint_id = :endpoint AND d.next_attempt_at IS NOT NULL",
        endpoint=endpoint_id,
    )
    return sorted(
        (data if isinstance(data, dict) else json.loads(data))["resources_added"]
        for (data,) in rows
    )


async def test_the_queue_moves_on_as_deliveries_are_stored_and_finished(
    delivering: Delivering,
) -> None:
    """An idle endpoint's first delivery is due as it is stored, and the next one as soon as
    the one before is recorded, in that transaction: no claim has to look for it."""
    endpoint = await delivering.endpoint("/moves", ordered=True)
    for number in range(3):
        await publish_numbered(delivering, number)
    assert await scheduled_numbers(delivering, endpoint["id"]) == [0]
    assert await delivering.worker.run_once() == 1
    assert await scheduled_numbers(delivering, endpoint["id"]) == [1]
    assert await delivering.worker.run_once() == 1
    assert await delivering.worker.run_once() == 1
    assert await scheduled_numbers(delivering, endpoint["id"]) == []
    await publish_numbered(delivering, 3)
    assert await scheduled_numbers(delivering, endpoint["id"]) == [3], "idle again: due at once"


async def test_switching_ordered_on_while_deliveries_are_in_flight_moves_on_when_they_end(
    delivering: Delivering,
) -> None:
    """Deliveries claimed before the switch finish as deliveries to an unordered endpoint; the
    last of them to finish moves the queue on, read from the endpoint as it is now."""
    endpoint = await delivering.endpoint("/inflight")
    for number in range(2):
        await publish_numbered(delivering, number)
    in_flight = await claim(delivering)
    sessions = delivering.api.app.extensions["tidings"].sessions
    now = delivering.api.clock()
    assert len(in_flight) == 2 and not in_flight[0].endpoint.ordered
    response = await delivering.api.call(
        "PATCH", f"/v1/endpoints/{endpoint['id']}", delivering.partner, json={"ordered": True}
    )
    assert response.status_code == 200
    await publish_numbered(delivering, 2)
    assert await scheduled_numbers(delivering, endpoint["id"]) == [0, 1], "#2 waits for them"
    for claimed in in_flight:
        async with transaction(sessions) as session:
            await queue.record_attempts(session, [succeeded(claimed, now)])
    assert await scheduled_numbers(delivering, endpoint["id"]) == [2]


async def test_the_worker_moves_on_the_queues_an_earlier_version_left_held(
    delivering: Delivering,
) -> None:
    """Claims used to move the queues on; a queue left with nothing scheduled, as the upgrade
    leaves them, moves on when a worker starts (and at each check after)."""
    endpoint = await delivering.endpoint("/upgraded", ordered=True)
    for number in range(2):
        await publish_numbered(delivering, number)
    sessions = delivering.api.app.extensions["tidings"].sessions
    async with transaction(sessions) as session:
        await session.exec(
            sa.text("UPDATE delivery SET next_attempt_at = NULL WHERE endpoint_id = :endpoint"),
            params={"endpoint": endpoint["id"]},
        )
    assert await delivering.worker.run_once() == 0
    await maintenance.move_ordered_queues_on(sessions, now=delivering.api.clock())
    assert await scheduled_numbers(delivering, endpoint["id"]) == [0]
    assert await delivering.worker.run_once() == 1
    assert await delivering.worker.run_once() == 1
    assert numbers_received(delivering, "/upgraded") == [0, 1]


def succeeded(claimed: ClaimedDelivery, now: datetime) -> AttemptRecord:
    return AttemptRecord(
        delivery_id=claimed.id,
        endpoint_id=claimed.endpoint.id,
        attempted_at=now,
        outcome=AttemptOutcome(status=200, duration_ms=1),
        status=DeliveryStatus.SUCCEEDED,
        next_attempt_at=None,
        lease_expires_at=claimed.lease_expires_at,
    )


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_two_stores_never_schedule_two_deliveries_of_one_endpoint(
    delivering: Delivering,
) -> None:
    """One transaction has stored the endpoint's next delivery, scheduled it, and not yet
    committed when an earlier event arrives: the second store, which cannot see the first
    one's choice, waits for it rather than schedule the earlier event as well."""
    endpoint = await delivering.endpoint("/race", ordered=True)
    now = delivering.api.clock()
    long_ago = (now - timedelta(hours=1)).isoformat()
    await publish_numbered(delivering, 9, occurred_at=long_ago)  # its queue has moved on before
    assert await delivering.drain() == 1
    sessions = delivering.api.app.extensions["tidings"].sessions
    event = numbered_event(endpoint["organization"], 1, now)
    async with transaction(sessions) as first:
        await outbox.insert_event_for_endpoints(first, event, [endpoint["id"]], now)
        await ordered_queues.flush(first)  # #1 due, as at the commit, not yet committed
        earlier = (now - timedelta(minutes=1)).isoformat()
        second = asyncio.create_task(publish_numbered(delivering, 0, occurred_at=earlier))
        await asyncio.sleep(0.3)
        assert not second.done(), "the second store waits for the first"
    await second
    assert await scheduled_numbers(delivering, endpoint["id"]) == [1], "#1 already chosen"
    assert await delivering.worker.run_once() == 1
    assert await delivering.worker.run_once() == 1
    assert numbers_received(delivering, "/race") == [9, 1, 0]
    assert {d["status"] for d in await delivering.deliveries(endpoint["id"])} == {"succeeded"}


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_switching_ordered_on_while_the_last_in_flight_delivery_is_recorded(
    delivering: Delivering,
) -> None:
    """The worker records the endpoint's only delivery in flight while a PATCH switches
    `ordered` on. The record reads the flag under a lock the switch waits for, so one of the
    two sees the other's work and moves the queue on: it is never left held with nothing
    scheduled. (Reading the flag in the record's own snapshot, both missed it.)"""
    endpoint = await delivering.endpoint("/switch-race")
    await publish_numbered(delivering, 0)
    [in_flight] = await claim(delivering)
    await publish_numbered(delivering, 1)
    await publish_numbered(delivering, 2)
    sessions = delivering.api.app.extensions["tidings"].sessions
    now = delivering.api.clock()
    async with transaction(sessions) as worker:  # the worker's record, not yet committed
        await queue.record_attempts(worker, [succeeded(in_flight, now)])
        switch = asyncio.create_task(
            delivering.api.call(
                "PATCH",
                f"/v1/endpoints/{endpoint['id']}",
                delivering.partner,
                json={"ordered": True},
            )
        )
        await asyncio.sleep(0.3)
        assert not switch.done(), "the switch waits for the record"
    assert (await switch).status_code == 200
    assert await scheduled_numbers(delivering, endpoint["id"]) == [1]
    assert await delivering.worker.run_once() == 1


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_recording_a_failure_reported_to_an_ordered_endpoint_does_not_deadlock(
    delivering: Delivering,
) -> None:
    """The worker's record moves the failed delivery's endpoint on and stores `delivery.failed`
    for another ordered endpoint; an API request meanwhile stores an event for both. Locking
    each endpoint as it came (the failed one, then the other) deadlocked with the request,
    which locks both in id order: each transaction now locks all of its endpoints at its end,
    in id order."""
    watcher, failing = await ordered_pair(delivering, "delivery.failed", "/failing")
    sessions = delivering.api.app.extensions["tidings"].sessions
    catalog = delivering.api.app.extensions["tidings"].catalog
    now = delivering.api.clock()
    first, later = (
        numbered_event(failing["organization"], number, now + timedelta(seconds=number))
        for number in range(2)
    )
    async with transaction(sessions) as session:
        await outbox.insert_event_for_endpoints(session, first, [failing["id"]], now)
    [claimed] = await claim(delivering)
    failed = dataclasses.replace(
        succeeded(claimed, now),
        outcome=AttemptOutcome(status=400, duration_ms=1),
        status=DeliveryStatus.FAILED,
    )

    async def store_for_both() -> None:  # an API request
        async with transaction(sessions) as session:
            await outbox.insert_event_for_endpoints(
                session, later, [watcher["id"], failing["id"]], now
            )

    async with transaction(sessions) as worker:  # what the worker's record does
        await queue.record_attempts(worker, [failed])
        storing = asyncio.create_task(store_for_both())
        await asyncio.sleep(0.3)
        await outbox.insert_operational_event(
            worker,
            failing["organization"],
            "delivery.failed",
            {
                "delivery_id": claimed.id,
                "endpoint_id": failing["id"],
                "event_id": claimed.event.id,
                "event_type": claimed.event.type,
                "attempts": 1,
            },
            catalog=catalog,
            now=now,
        )
    await storing
    assert await scheduled_numbers(delivering, failing["id"]) == [1]
    assert len(await delivering.deliveries(watcher["id"])) == 2, "the report and the event"
    assert await delivering.drain() == 3


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_enabling_an_endpoint_that_reports_to_another_ordered_one_does_not_deadlock(
    delivering: Delivering,
) -> None:
    """Enabling an endpoint updates its row, then stores `endpoint.enabled` for an ordered
    endpoint that names it; a request meanwhile stores an event for both. The request, moving
    their queues on in id order, holds the earlier and waits for the enabled one's row; the
    enabling must then not need the earlier one's lock."""
    watcher, enabled = await ordered_pair(delivering, "endpoint.enabled", "/enabled")
    sessions = delivering.api.app.extensions["tidings"].sessions
    catalog = delivering.api.app.extensions["tidings"].catalog
    now = delivering.api.clock()
    event = numbered_event(enabled["organization"], 0, now)

    async def store_for_both() -> None:  # an API request
        async with transaction(sessions) as session:
            await outbox.insert_event_for_endpoints(
                session, event, [watcher["id"], enabled["id"]], now
            )

    async with transaction(sessions) as enabling:  # as `POST .../enable` does
        await enabling.exec(
            sa.text("UPDATE endpoint SET updated_at = :now WHERE id = :id"),
            params={"now": now.replace(tzinfo=None), "id": enabled["id"]},
        )
        storing = asyncio.create_task(store_for_both())
        await asyncio.sleep(0.3)
        await outbox.insert_operational_event(
            enabling,
            enabled["organization"],
            "endpoint.enabled",
            {"endpoint_id": enabled["id"], "enabled_at": now.isoformat()},
            catalog=catalog,
            now=now,
        )
    await storing
    assert await scheduled_numbers(delivering, enabled["id"]) == [0]
    assert await delivering.drain() == 3


async def test_deliveries_stored_after_a_switch_follow_it_though_the_endpoints_were_cached(
    delivering: Delivering,
) -> None:
    """Publishing reads the endpoints once and caches them; a switch of `ordered` afterwards
    still decides how the next events' deliveries are stored, both ways."""
    endpoint = await delivering.endpoint("/cached")
    await publish_numbered(delivering, 0)  # the endpoints are read and cached
    assert await delivering.drain() == 1
    for ordered, numbers in ((True, (1, 2)), (False, (3, 4))):
        path, change = f"/v1/endpoints/{endpoint['id']}", {"ordered": ordered}
        response = await delivering.api.call("PATCH", path, delivering.partner, json=change)
        assert response.status_code == 200
        for number in numbers:
            await publish_numbered(delivering, number)
        pending = [
            d["next_attempt_at"]
            for d in await delivering.deliveries(endpoint["id"])
            if d["status"] == "pending"
        ]
        # Ordered: the earlier of the two is due, the later held; not ordered: both due.
        assert len(pending) == 2 and pending.count(None) == (1 if ordered else 0), pending
        assert await delivering.drain() == 2
    assert numbers_received(delivering, "/cached") == [0, 1, 2, 3, 4]

"""Ordered endpoints hold their queue: one delivery at a time, in the order the events occurred,
whatever order they arrived in; switching `ordered` on or off, recovering failures, and a
delivery stored while the flag changes each leave nothing stuck and nothing out of order."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import pytest

from app.domain import ids
from app.domain.models import Event
from app.store import deliveries as queue
from app.store import outbox
from app.store.db import transaction
from tests.integration.delivery_harness import Delivering
from tests.receivers import Answer

ABORT = Answer(status=400, headers={"webhook-delivery": "abort-message"})


def numbers_received(delivering: Delivering, path: str) -> list[int]:
    bodies = [json.loads(item.body) for item in delivering.receiver.at(path)]
    return [body["data"]["object"]["resources_added"] for body in bodies]


async def publish_numbered(delivering: Delivering, number: int, **fields: Any) -> str:
    data = {"connection_id": "c", "patient": "Patient/p", "resources_added": number}
    return await delivering.publish(data=data, idempotency_key=f"n{number}", **fields)


async def test_events_go_in_the_order_they_occurred_not_the_order_they_arrived(
    delivering: Delivering,
) -> None:
    endpoint = await delivering.endpoint("/occurred", ordered=True)
    start = delivering.api.clock.now
    for number, minutes in [(3, 30), (1, 10), (4, 40), (2, 20)]:
        moment = start - timedelta(hours=1) + timedelta(minutes=minutes)
        await publish_numbered(delivering, number, occurred_at=moment.isoformat())
    for _ in range(4):
        assert await delivering.worker.run_once() == 1, "one at a time"
    assert await delivering.worker.run_once() == 0
    assert numbers_received(delivering, "/occurred") == [1, 2, 3, 4]
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
    assert waiting == [None, None, None]
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
    """A request storing a delivery has read the endpoint's flag (under its lock) when the flag
    is switched: the switch waits for it to commit, then holds or releases that delivery too.
    Without the wait, a delivery held for an endpoint no longer ordered would never be sent."""
    endpoint = await delivering.endpoint("/switch", ordered=ordered_before)
    sessions = delivering.api.app.extensions["tidings"].sessions
    now = delivering.api.clock()
    event = Event(
        id=ids.new_id("evt"),
        organization_id=endpoint["organization"],
        type="ping",
        occurred_at=now,
        data={"message": "ping"},
        source="test",
    )
    async with transaction(sessions) as session:
        [delivery_id] = await outbox.insert_event_for_endpoints(
            session, event, [endpoint["id"]], now
        )
        switch = asyncio.create_task(
            delivering.api.call(
                "PATCH",
                f"/v1/endpoints/{endpoint['id']}",
                delivering.partner,
                json={"ordered": not ordered_before},
            )
        )
        await asyncio.sleep(0.3)
        assert not switch.done(), "the switch waits for the delivery's transaction"
    assert (await switch).status_code == 200
    [(due,)] = await delivering.sql(
        "SELECT next_attempt_at FROM delivery WHERE id = :id", id=delivery_id
    )
    assert (due is None) is (not ordered_before), "held exactly when the endpoint is ordered"
    assert await delivering.worker.run_once() == 1  # released, or moved on as the queue's head


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
    sessions = delivering.api.app.extensions["tidings"].sessions
    now = delivering.api.clock()
    async with transaction(sessions) as session:
        first = await queue.claim_due_deliveries(session, now=now, limit=10, lease_seconds=60)
    async with transaction(sessions) as session:
        second = await queue.claim_due_deliveries(session, now=now, limit=10, lease_seconds=60)
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


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_two_claims_never_schedule_two_deliveries_of_one_endpoint(
    delivering: Delivering,
) -> None:
    """One claim has scheduled the endpoint's next delivery and not yet committed when an
    earlier event arrives: another claim, which cannot see the first one's choice, must leave
    the endpoint alone rather than schedule the earlier event as well."""
    endpoint = await delivering.endpoint("/race", ordered=True)
    start = delivering.api.clock.now
    await publish_numbered(delivering, 1, occurred_at=start.isoformat())
    sessions = delivering.api.app.extensions["tidings"].sessions
    now = delivering.api.clock()
    async with transaction(sessions) as first:
        await queue.schedule_next_in_order(first, now)  # #1, in this open transaction
        earlier = (start - timedelta(minutes=1)).isoformat()
        await publish_numbered(delivering, 0, occurred_at=earlier)  # committed meanwhile
        async with transaction(sessions) as second:
            claimed = await queue.claim_due_deliveries(second, now=now, limit=10, lease_seconds=60)
        assert claimed == [], "the endpoint is the first claim's"
    assert await delivering.worker.run_once() == 1
    assert await delivering.worker.run_once() == 1
    assert numbers_received(delivering, "/race") == [1, 0], "one at a time, #1 already chosen"
    assert {d["status"] for d in await delivering.deliveries(endpoint["id"])} == {"succeeded"}

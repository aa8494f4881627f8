"""The worker against real receivers: signing, retries, exhaustion, 410, abort, leases, order."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from datetime import timedelta
from typing import Any

import pytest
import standardwebhooks
import svix.webhooks

from app.delivery import maintenance
from app.delivery import worker as worker_module
from app.delivery.limits import EndpointLimits
from app.domain.models import DeliveryStatus
from app.domain.retry import AttemptOutcome
from app.store import deliveries as queue
from app.store.db import transaction
from tests.integration.delivery_harness import Delivering
from tests.receivers import Answer


def headers_of(received: Any) -> dict[str, str]:
    return {key.lower(): value for key, value in received.headers.items()}


async def test_a_delivery_is_signed_for_standard_webhooks_and_svix(delivering: Delivering) -> None:
    endpoint = await delivering.endpoint("/hook")
    event_id = await delivering.publish()
    assert await delivering.worker.run_once() == 1
    [received] = delivering.receiver.at("/hook")
    headers = headers_of(received)
    assert headers["webhook-id"] == event_id
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"].startswith("Tidings/")
    verified = standardwebhooks.Webhook(endpoint["secret"]).verify(received.body, headers)
    assert verified["id"] == event_id and verified["type"] == "records.sync.completed"
    svix_headers = {
        "svix-id": headers["webhook-id"],
        "svix-timestamp": headers["webhook-timestamp"],
        "svix-signature": headers["webhook-signature"],
    }
    svix.webhooks.Webhook(endpoint["secret"]).verify(received.body, svix_headers)  # raises if bad
    tampered = received.body.replace(event_id.encode(), b"evt_forged")
    with pytest.raises(svix.webhooks.WebhookVerificationError):
        svix.webhooks.Webhook(endpoint["secret"]).verify(tampered, svix_headers)
    [delivery] = await delivering.deliveries(endpoint["id"])
    assert delivery["status"] == "succeeded"


async def test_failures_are_retried_on_the_schedule_until_success(delivering: Delivering) -> None:
    endpoint = await delivering.endpoint("/flaky", 500, 503, 200)
    await delivering.publish()
    assert await delivering.worker.run_once() == 1
    [delivery] = await delivering.deliveries(endpoint["id"])
    assert delivery["status"] == "pending" and delivery["attempt_count"] == 1
    assert await delivering.worker.run_once() == 0, "not due before the schedule says"
    delivering.api.clock.advance(6.1)  # 5 s ± 20 %
    assert await delivering.worker.run_once() == 1
    delivering.api.clock.advance(360.1)  # 300 s ± 20 %
    assert await delivering.worker.run_once() == 1
    detail = await (
        await delivering.api.call("GET", f"/v1/deliveries/{delivery['id']}", delivering.partner)
    ).get_json()
    assert detail["status"] == "succeeded"
    assert [a["status_code"] for a in detail["attempts"]] == [500, 503, 200]
    ids = {headers_of(r)["webhook-id"] for r in delivering.receiver.at("/flaky")}
    assert len(ids) == 1, "retries keep the webhook-id"


async def test_exhausted_retries_fail_and_raise_delivery_failed(delivering: Delivering) -> None:
    watcher = await delivering.endpoint("/ops", event_types=["delivery.failed"])
    endpoint = await delivering.endpoint("/down", 500, event_types=["records.*"])
    event_id = await delivering.publish()
    for _ in range(8):
        await delivering.worker.run_once()
        delivering.api.clock.advance(36000 * 1.3)
    [delivery] = await delivering.deliveries(endpoint["id"])
    assert delivery["status"] == "failed" and delivery["attempt_count"] == 8
    assert delivering.receiver.at("/ops") == []
    await delivering.drain()
    [notice] = delivering.receiver.at("/ops")
    body = json.loads(notice.body)
    assert body["type"] == "delivery.failed"
    assert body["data"]["object"]["event_id"] == event_id
    assert body["data"]["object"]["endpoint_id"] == endpoint["id"]
    assert len(await delivering.deliveries(watcher["id"])) == 1


async def test_410_disables_the_endpoint_at_once(delivering: Delivering) -> None:
    watcher = await delivering.endpoint("/ops", event_types=["endpoint.disabled"])
    endpoint = await delivering.endpoint("/gone", 410, event_types=["records.*"])
    await delivering.publish()
    await delivering.drain()
    read = await (
        await delivering.api.call("GET", f"/v1/endpoints/{endpoint['id']}", delivering.partner)
    ).get_json()
    assert read["active"] is False and "410" in read["disabled_reason"]
    [notice] = delivering.receiver.at("/ops")
    assert json.loads(notice.body)["data"]["object"]["endpoint_id"] == endpoint["id"]
    await delivering.publish()
    await delivering.drain()
    assert len(delivering.receiver.at("/gone")) == 1, "a disabled endpoint gets nothing more"
    assert watcher["active"] is True


async def test_abort_message_stops_retries(delivering: Delivering) -> None:
    endpoint = await delivering.endpoint(
        "/abort", Answer(status=400, headers={"webhook-delivery": "abort-message"})
    )
    await delivering.publish()
    await delivering.worker.run_once()
    [delivery] = await delivering.deliveries(endpoint["id"])
    assert delivery["status"] == "failed" and delivery["attempt_count"] == 1


async def test_retry_after_is_honoured_within_bounds(delivering: Delivering) -> None:
    endpoint = await delivering.endpoint(
        "/busy", Answer(status=429, headers={"Retry-After": "8"}), 200
    )
    await delivering.publish()
    await delivering.worker.run_once()
    [delivery] = await delivering.deliveries(endpoint["id"])
    due = delivering.api.clock.now + timedelta(seconds=8)
    assert delivery["next_attempt_at"] == due.isoformat()


async def test_a_hanging_receiver_times_out(delivering: Delivering) -> None:
    endpoint = await delivering.endpoint("/hang", Answer(hang=True), timeout_seconds=0.3)
    await delivering.publish()
    await delivering.worker.run_once()
    [delivery] = await delivering.deliveries(endpoint["id"])
    detail = await (
        await delivering.api.call("GET", f"/v1/deliveries/{delivery['id']}", delivering.partner)
    ).get_json()
    assert detail["attempts"][0]["error"] == "timeout"
    assert detail["status"] == "pending"


async def test_rotation_signs_with_both_secrets(delivering: Delivering) -> None:
    endpoint = await delivering.endpoint("/rotating")
    path = f"/v1/endpoints/{endpoint['id']}/secret/rotate"
    new = await (await delivering.api.call("POST", path, delivering.partner, json={})).get_json()
    await delivering.publish()
    await delivering.worker.run_once()
    [received] = delivering.receiver.at("/rotating")
    headers = headers_of(received)
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (endpoint["secret"], new["secret"]):
        standardwebhooks.Webhook(secret).verify(received.body, headers)


async def test_medplum_and_timestamped_schemes(delivering: Delivering) -> None:
    medplum = await delivering.endpoint("/medplum", signature_scheme="medplum")
    stamped = await delivering.endpoint(
        "/stamped", signature_scheme="timestamped-hmac", signature_header="Medblocks-Signature"
    )
    await delivering.publish()
    await delivering.worker.run_once()
    [m] = delivering.receiver.at("/medplum")
    expected = hmac.new(medplum["secret"].encode(), m.body, hashlib.sha256).hexdigest()
    assert headers_of(m)["x-signature"] == expected
    [s] = delivering.receiver.at("/stamped")
    stamp, signature = headers_of(s)["medblocks-signature"].split(",")
    timestamp = stamp.removeprefix("t=")
    content = f"{timestamp}.".encode() + s.body
    assert (
        signature
        == "v1=" + hmac.new(stamped["secret"].encode(), content, hashlib.sha256).hexdigest()
    )


async def test_basic_auth_and_custom_headers_are_sent(delivering: Delivering) -> None:
    url = delivering.receiver.url("/bot").replace("http://", "http://bot:pa55@")
    response = await delivering.api.call(
        "POST",
        "/v1/endpoints",
        delivering.partner,
        json={"url": url, "headers": {"X-Team": "blue"}},
    )
    assert response.status_code == 201
    await delivering.publish()
    await delivering.worker.run_once()
    [received] = delivering.receiver.at("/bot")
    headers = headers_of(received)
    assert headers["authorization"] == "Basic " + base64.b64encode(b"bot:pa55").decode()
    assert headers["x-team"] == "blue"


async def test_an_expired_lease_comes_back(delivering: Delivering) -> None:
    endpoint = await delivering.endpoint("/lease")
    await delivering.publish()
    sessions = delivering.api.app.extensions["tidings"].sessions
    async with transaction(sessions) as session:  # a worker claims, then dies
        claimed = await queue.claim_due_deliveries(
            session, now=delivering.api.clock(), limit=10, lease_seconds=60
        )
    assert len(claimed) == 1
    assert await delivering.worker.run_once() == 0, "the lease is still held"
    delivering.api.clock.advance(61)
    assert await delivering.worker.run_once() == 1
    [delivery] = await delivering.deliveries(endpoint["id"])
    assert delivery["status"] == "succeeded"


async def test_a_claim_skips_the_endpoints_it_is_told_to(delivering: Delivering) -> None:
    busy = await delivering.endpoint("/busy")
    free = await delivering.endpoint("/free")
    await delivering.publish()
    sessions = delivering.api.app.extensions["tidings"].sessions
    async with transaction(sessions) as session:
        claimed = await queue.claim_due_deliveries(
            session,
            now=delivering.api.clock(),
            limit=10,
            lease_seconds=60,
            skip_endpoints=[busy["id"]],
        )
    assert [item.endpoint.id for item in claimed] == [free["id"]]
    [waiting] = await delivering.deliveries(busy["id"])
    assert waiting["status"] == "pending"


async def test_a_claim_takes_at_most_its_limit_oldest_first(delivering: Delivering) -> None:
    endpoint = await delivering.endpoint("/limited")
    published = []
    for index in range(5):
        published.append(await delivering.publish(idempotency_key=f"lim{index}"))
        delivering.api.clock.advance(1)
    sessions = delivering.api.app.extensions["tidings"].sessions
    async with transaction(sessions) as session:
        claimed = await queue.claim_due_deliveries(
            session, now=delivering.api.clock(), limit=2, lease_seconds=60
        )
    assert [item.event.id for item in claimed] == published[:2]
    statuses = sorted(d["status"] for d in await delivering.deliveries(endpoint["id"]))
    assert statuses == ["delivering"] * 2 + ["pending"] * 3


async def test_a_claim_is_undone_with_its_transaction(delivering: Delivering) -> None:
    endpoint = await delivering.endpoint("/undone")
    await delivering.publish()
    sessions = delivering.api.app.extensions["tidings"].sessions
    async with sessions() as session, session.begin():
        claimed = await queue.claim_due_deliveries(
            session, now=delivering.api.clock(), limit=10, lease_seconds=60
        )
        assert len(claimed) == 1
        await session.rollback()
    [delivery] = await delivering.deliveries(endpoint["id"])
    assert delivery["status"] == "pending"
    assert await delivering.worker.run_once() == 1


async def test_ordered_endpoints_deliver_one_at_a_time_in_order(delivering: Delivering) -> None:
    endpoint = await delivering.endpoint("/fifo", 500, 200, ordered=True)
    first = await delivering.publish(idempotency_key="one")
    second = await delivering.publish(idempotency_key="two")
    assert await delivering.worker.run_once() == 1
    delivering.api.clock.advance(7)
    assert await delivering.worker.run_once() == 1
    assert await delivering.worker.run_once() == 1
    ids = [headers_of(r)["webhook-id"] for r in delivering.receiver.at("/fifo")]
    assert ids == [first, first, second]
    assert {d["status"] for d in await delivering.deliveries(endpoint["id"])} == {"succeeded"}


async def test_rate_limited_endpoints_defer_the_excess(delivering: Delivering) -> None:
    endpoint = await delivering.endpoint("/limited", rate_limit=2)
    for index in range(5):
        await delivering.publish(idempotency_key=f"k{index}")
    assert await delivering.worker.run_once() == 2
    assert len(delivering.receiver.at("/limited")) == 2
    delivering.api.clock.advance(1)
    assert await delivering.worker.run_once() == 2
    delivering.api.clock.advance(1)
    assert await delivering.worker.run_once() == 1
    statuses = {d["status"] for d in await delivering.deliveries(endpoint["id"])}
    assert statuses == {"succeeded"}


async def test_endpoints_that_only_fail_are_disabled(delivering: Delivering) -> None:
    endpoint = await delivering.endpoint("/dead", 500)
    healthy = await delivering.endpoint("/alive")
    await delivering.publish()
    await delivering.worker.run_once()
    services = delivering.api.app.extensions["tidings"]
    settings = delivering.api.settings
    now = delivering.api.clock
    assert (
        await maintenance.disable_failing_endpoints(
            services.sessions,
            catalog=services.catalog,
            now=now(),
            disable_after=settings.disable_after,
        )
        == []
    )
    now.advance(settings.disable_after + 1)
    disabled = await maintenance.disable_failing_endpoints(
        services.sessions, catalog=services.catalog, now=now(), disable_after=settings.disable_after
    )
    assert disabled == [endpoint["id"]]
    assert healthy["id"] not in disabled


async def test_shutdown_gives_unfinished_attempts_back(delivering: Delivering) -> None:
    endpoint = await delivering.endpoint("/stuck", Answer(hang=True), timeout_seconds=30)
    await delivering.publish()
    delivering.worker._settings = type(delivering.worker._settings)(
        shutdown_grace_seconds=0.2, poll_seconds=0.05
    )
    running = asyncio.create_task(delivering.worker.run())
    while not delivering.receiver.at("/stuck"):
        await asyncio.sleep(0.02)
    delivering.worker.stop()
    await asyncio.wait_for(running, 5)
    [delivery] = await delivering.deliveries(endpoint["id"])
    assert delivery["status"] == "pending" and delivery["attempt_count"] == 0


async def test_deliveries_held_back_by_an_endpoint_cap_go_when_due_not_at_the_poll(
    delivering: Delivering,
) -> None:
    endpoint = await delivering.endpoint("/capped")
    for index in range(10):
        await delivering.publish(idempotency_key=f"cap{index}")
    delivering.worker._limits = EndpointLimits(max_in_flight=4)
    delivering.worker._settings = type(delivering.worker._settings)(poll_seconds=60)
    running = asyncio.create_task(delivering.worker.run())
    try:
        async with asyncio.timeout(10):  # far less than the poll interval
            while len(delivering.receiver.at("/capped")) < 10:
                await asyncio.sleep(0.1)
                delivering.api.clock.advance(1)  # those sent back are due by now
    finally:
        delivering.worker.stop()
        await asyncio.wait_for(running, 5)
    assert {d["status"] for d in await delivering.deliveries(endpoint["id"])} == {"succeeded"}


async def test_outcomes_are_recorded_together_yet_never_held_back_long(
    delivering: Delivering, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint = await delivering.endpoint("/gathered")
    monkeypatch.setattr(worker_module, "RECORD_GATHER_SECONDS", 60.0)
    delivering.worker._record_at_once = 3
    delivering.worker._settings = type(delivering.worker._settings)(poll_seconds=0.05)

    async def statuses() -> list[str]:
        return sorted(d["status"] for d in await delivering.deliveries(endpoint["id"]))

    for index in range(3):
        await delivering.publish(idempotency_key=f"g{index}")
    running = asyncio.create_task(delivering.worker.run())
    try:
        async with asyncio.timeout(5):  # three waiting: recorded at once, not after 60 s
            while await statuses() != ["succeeded"] * 3:
                await asyncio.sleep(0.05)
        await delivering.publish(idempotency_key="g3")
        delivering.worker.wake()
        async with asyncio.timeout(5):
            while len(delivering.receiver.at("/gathered")) < 4:
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
        assert await statuses() == ["delivering"] + ["succeeded"] * 3  # waiting for company
    finally:
        delivering.worker.stop()
        await asyncio.wait_for(running, 5)
    assert await statuses() == ["succeeded"] * 4  # shutdown records what finished


async def test_ordered_endpoints_keep_the_order_of_one_push(delivering: Delivering) -> None:
    endpoint = await delivering.endpoint("/fifo-push", 200, ordered=True, event_types=["patient.*"])
    entries = [
        {
            "fullUrl": f"Patient/p{index}",
            "resource": {"resourceType": "Patient", "id": f"p{index}", "meta": {"versionId": "1"}},
            "request": {"method": "POST", "url": "Patient"},
        }
        for index in range(6)
    ]
    response = await delivering.api.call(
        "POST",
        "/v1/ingest/fhir",
        delivering.source,
        json={"resourceType": "Bundle", "type": "transaction", "entry": entries},
    )
    assert response.status_code == 202, await response.get_data(as_text=True)
    for _ in range(8):
        await delivering.worker.run_once()
    bodies = [json.loads(r.body) for r in delivering.receiver.at("/fifo-push")]
    assert [body["data"]["object"]["id"] for body in bodies] == [f"p{i}" for i in range(6)]
    assert {d["status"] for d in await delivering.deliveries(endpoint["id"])} == {"succeeded"}


async def test_manual_redeliveries_are_marked_in_the_attempt_log(delivering: Delivering) -> None:
    endpoint = await delivering.endpoint("/manual", 500, 200)
    await delivering.publish()
    await delivering.worker.run_once()
    [delivery] = await delivering.deliveries(endpoint["id"])
    path = f"/v1/deliveries/{delivery['id']}"
    assert (
        await delivering.api.call("POST", f"{path}/redeliver", delivering.partner)
    ).status_code == 202
    await delivering.worker.run_once()
    log = await (await delivering.api.call("GET", path, delivering.partner)).get_json()
    assert [(a["status_code"], a["trigger"]) for a in log["attempts"]] == [
        (500, "scheduled"),
        (200, "manual"),
    ]


async def taken_over(delivering: Delivering) -> tuple[queue.ClaimedDelivery, ...]:
    """The one due delivery claimed by a slow worker whose lease then runs out, and claimed
    again by another: both claims."""
    sessions = delivering.api.app.extensions["tidings"].sessions
    clock = delivering.api.clock
    async with transaction(sessions) as session:
        [stale] = await queue.claim_due_deliveries(session, now=clock(), limit=1, lease_seconds=60)
    clock.advance(61)
    async with transaction(sessions) as session:
        [fresh] = await queue.claim_due_deliveries(session, now=clock(), limit=1, lease_seconds=60)
    return stale, fresh


async def test_an_attempt_after_its_lease_was_taken_over_does_not_overwrite(
    delivering: Delivering,
) -> None:
    endpoint = await delivering.endpoint("/taken-over", 500)
    await delivering.publish()
    stale, fresh = await taken_over(delivering)
    assert fresh.id == stale.id and fresh.lease_expires_at != stale.lease_expires_at
    late = queue.AttemptRecord(
        delivery_id=stale.id,
        endpoint_id=endpoint["id"],
        attempted_at=delivering.api.clock(),
        outcome=AttemptOutcome(status=500),
        status=DeliveryStatus.FAILED,
        next_attempt_at=None,
        lease_expires_at=stale.lease_expires_at,
    )
    async with transaction(delivering.api.app.extensions["tidings"].sessions) as session:
        await queue.record_attempts(session, [late])
    [delivery] = await delivering.deliveries(endpoint["id"])
    assert delivery["status"] == "delivering", "the stale attempt left the new claim alone"
    log = await (
        await delivering.api.call("GET", f"/v1/deliveries/{delivery['id']}", delivering.partner)
    ).get_json()
    assert [a["status_code"] for a in log["attempts"]] == [500], "but its attempt is logged"


async def test_a_worker_that_lost_its_lease_does_not_report_the_delivery_failed(
    delivering: Delivering,
) -> None:
    """Its attempt is logged, but the delivery is another claim's now: that claim's outcome,
    not the stale one, decides whether `delivery.failed` is sent."""
    await delivering.endpoint("/taken-over")
    await delivering.publish()
    stale, fresh = await taken_over(delivering)
    aborted = AttemptOutcome(status=400, abort=True)
    await delivering.worker._record([(stale, aborted)])

    async def reports() -> list[Any]:
        return await delivering.sql("SELECT id FROM event WHERE type = 'delivery.failed'")

    assert await reports() == [], "the stale worker's verdict is not the delivery's"
    await delivering.worker._record([(fresh, aborted)])
    assert len(await reports()) == 1, "the current claim's is"


async def until_received(delivering: Delivering, count: int, *paths: str) -> None:
    """Wait (at most 5 s) until the receiver has had `count` requests at `paths` in all."""
    async with asyncio.timeout(5):
        while sum(len(delivering.receiver.at(path)) for path in paths) < count:
            await asyncio.sleep(0.02)


def stall_recording(delivering: Delivering, monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """Hold the worker's records of outcomes (and so its slots) until the event is set."""
    recording = asyncio.Event()
    record = delivering.worker._record

    async def stalled_record(results: Any) -> None:
        await recording.wait()
        await record(results)

    monkeypatch.setattr(delivering.worker, "_record", stalled_record)
    return recording


async def test_unrecorded_outcomes_hold_their_slots(
    delivering: Delivering, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the database does not record outcomes, the worker sends no more than its
    concurrency: that is all a killed worker can have sent without recording it."""
    endpoint = await delivering.endpoint("/held")
    for index in range(10):
        await delivering.publish(idempotency_key=f"h{index}")
    delivering.worker._settings = type(delivering.worker._settings)(
        concurrency=4, poll_seconds=0.05
    )
    recording = stall_recording(delivering, monkeypatch)
    running = asyncio.create_task(delivering.worker.run())
    try:
        await until_received(delivering, 4, "/held")
        await asyncio.sleep(0.5)  # ten poll intervals: room to claim, were slots free
        assert len(delivering.receiver.at("/held")) == 4
        recording.set()
        await until_received(delivering, 10, "/held")
    finally:
        recording.set()
        delivering.worker.stop()
        await asyncio.wait_for(running, 5)
    assert {d["status"] for d in await delivering.deliveries(endpoint["id"])} == {"succeeded"}
    assert len(delivering.receiver.at("/held")) == 10  # each sent once


async def test_a_worker_with_no_free_slot_waits_for_one_when_sent_back_deliveries_come_due(
    delivering: Delivering, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deliveries sent back by an endpoint's cap come due while every slot waits for its
    outcome to be recorded: the worker waits for a freed slot instead of trying again and
    again at once (a spin that held up the recording it waited for)."""
    capped = await delivering.endpoint("/capped-a", event_types=["records.*"])
    await delivering.endpoint("/capped-b", event_types=["records.*"])
    for index in range(3):
        await delivering.publish(idempotency_key=f"s{index}")
    delivering.worker._limits = EndpointLimits(max_in_flight=1)
    delivering.worker._settings = type(delivering.worker._settings)(
        concurrency=4, poll_seconds=0.05
    )
    recording = stall_recording(delivering, monkeypatch)
    rounds = 0
    claim_and_start = delivering.worker._claim_and_start

    async def counted() -> Any:
        nonlocal rounds
        rounds += 1
        return await claim_and_start()

    monkeypatch.setattr(delivering.worker, "_claim_and_start", counted)
    running = asyncio.create_task(delivering.worker.run())
    try:
        # The first claim sends each endpoint's first and sends its second back (cap 1); the
        # next, a quarter of a second later, sends the thirds and fills the last two slots.
        await until_received(delivering, 4, "/capped-a", "/capped-b")
        assert delivering.worker._deferred_until is not None
        delivering.api.clock.advance(1)  # the sent-back deliveries are due; no slot is free
        rounds = 0
        await asyncio.sleep(0.5)  # ten poll intervals
        assert rounds <= 20, f"{rounds} claim rounds in 0.5 s without a free slot"
        recording.set()
        await until_received(delivering, 3, "/capped-a")
    finally:
        recording.set()
        delivering.worker.stop()
        await asyncio.wait_for(running, 5)
    assert {d["status"] for d in await delivering.deliveries(capped["id"])} == {"succeeded"}

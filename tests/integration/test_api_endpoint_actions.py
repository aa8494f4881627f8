"""Actions on one endpoint: ping, enable, recover, stats."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import pytest

from tests.integration import delivery_harness
from tests.integration.delivery_harness import Delivering
from tests.receivers import Answer

delivering = delivery_harness.delivering  # the fixture, used by name
ABORT = Answer(status=400, headers={"webhook-delivery": "abort-message"})


async def post(delivering: Delivering, path: str, json: Any = None) -> Any:
    return await delivering.api.call("POST", path, delivering.partner, json=json)


async def read(delivering: Delivering, path: str) -> Any:
    response = await delivering.api.call("GET", path, delivering.partner)
    assert response.status_code == 200, await response.get_data(as_text=True)
    return await response.get_json()


@asynccontextmanager
async def worker_running(delivering: Delivering) -> AsyncIterator[None]:
    """The worker, driven by hand in a loop while the test awaits something else."""
    stop = asyncio.Event()

    async def loop() -> None:
        while not stop.is_set():
            await delivering.worker.run_once()
            await asyncio.sleep(0.01)

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_ping_answers_with_the_attempt_outcome(delivering: Delivering) -> None:
    endpoint = await delivering.endpoint("/ping")
    async with worker_running(delivering):
        response = await post(delivering, f"/v1/endpoints/{endpoint['id']}/ping")
    assert response.status_code == 200
    body = await response.get_json()
    assert body["event_id"].startswith("evt_") and body["delivery_id"].startswith("dlv_")
    assert body["attempt"]["status_code"] == 200 and body["attempt"]["error"] is None
    [received] = delivering.receiver.at("/ping")
    sent = json.loads(received.body)
    assert sent["type"] == "ping" and sent["id"] == body["event_id"]
    assert sent["data"]["object"]["endpoint_id"] == endpoint["id"]


async def test_a_ping_to_a_failing_receiver_shows_the_500(delivering: Delivering) -> None:
    endpoint = await delivering.endpoint("/ping-down", 500)
    async with worker_running(delivering):
        response = await post(delivering, f"/v1/endpoints/{endpoint['id']}/ping")
    assert response.status_code == 200
    attempt = (await response.get_json())["attempt"]
    assert attempt["status_code"] == 500 and attempt["response_excerpt"] == "answer"


async def test_enable_brings_a_disabled_endpoint_back(delivering: Delivering) -> None:
    watcher = await delivering.endpoint("/ops", event_types=["endpoint.enabled"])
    endpoint = await delivering.endpoint("/gone", 410, 200, event_types=["records.*"])
    started = delivering.api.clock.now
    event_id = await delivering.publish()
    await delivering.drain()
    shown = await read(delivering, f"/v1/endpoints/{endpoint['id']}")
    assert shown["active"] is False
    [failed] = await delivering.deliveries(endpoint["id"])
    assert failed["status"] == "failed"
    delivering.api.clock.advance(60)
    response = await post(
        delivering,
        f"/v1/endpoints/{endpoint['id']}/enable",
        {"recover_since": started.isoformat()},
    )
    assert response.status_code == 200
    assert await response.get_json() == {"id": endpoint["id"], "active": True, "recovered": 1}
    assert (await read(delivering, f"/v1/endpoints/{endpoint['id']}"))["active"] is True
    await delivering.drain()
    [notice] = delivering.receiver.at("/ops")
    sent = json.loads(notice.body)
    assert sent["type"] == "endpoint.enabled"
    assert sent["data"]["object"]["endpoint_id"] == endpoint["id"]
    assert [json.loads(r.body)["id"] for r in delivering.receiver.at("/gone")] == [event_id] * 2
    [recovered] = await delivering.deliveries(endpoint["id"])
    assert recovered["status"] == "succeeded"
    assert len(await delivering.deliveries(watcher["id"])) == 1


async def test_enabling_an_active_endpoint_changes_nothing(delivering: Delivering) -> None:
    await delivering.endpoint("/ops", event_types=["endpoint.enabled"])
    endpoint = await delivering.endpoint("/fine")
    response = await post(delivering, f"/v1/endpoints/{endpoint['id']}/enable")
    assert (await response.get_json())["recovered"] == 0
    await delivering.drain()
    assert delivering.receiver.at("/ops") == [], "no endpoint.enabled for an active endpoint"


async def test_recover_requeues_only_failures_in_the_window(delivering: Delivering) -> None:
    endpoint = await delivering.endpoint("/window", ABORT, ABORT, ABORT, 200)
    moments = []
    for index in range(3):
        moments.append(delivering.api.clock.now)
        await delivering.publish(idempotency_key=f"w{index}")
        await delivering.worker.run_once()
        delivering.api.clock.advance(60)
    statuses = [d["status"] for d in await delivering.deliveries(endpoint["id"])]
    assert statuses == ["failed"] * 3
    window = {"since": moments[1].isoformat(), "until": moments[2].isoformat()}
    response = await post(delivering, f"/v1/endpoints/{endpoint['id']}/recover", window)
    assert response.status_code == 202
    assert await response.get_json() == {"id": endpoint["id"], "recovered": 1}
    assert await delivering.worker.run_once() == 1
    delivering.api.clock.advance(10**6)
    assert await delivering.worker.run_once() == 0, "exactly one more attempt"
    found = await delivering.deliveries(endpoint["id"])
    assert [(d["status"], d["attempt_count"]) for d in found] == [
        ("failed", 1),
        ("succeeded", 2),
        ("failed", 1),
    ]


@pytest.mark.parametrize(
    ("body", "pointer"),
    [
        ({"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, "/until"),
        ({"since": "2026-01-02T00:00:00Z", "until": "2026-01-02T00:00:00Z"}, "/until"),
        ({"until": "2026-01-02T00:00:00Z"}, "/since"),
        ({"since": "2026-01-02T00:00:00"}, "/since"),
        ({"since": "2026-01-02T00:00:00Z", "from": "x"}, "/from"),
    ],
)
async def test_a_bad_recover_window_is_422(
    delivering: Delivering, body: dict[str, str], pointer: str
) -> None:
    endpoint = await delivering.endpoint("/never", ABORT)
    await delivering.publish()
    await delivering.worker.run_once()
    response = await post(delivering, f"/v1/endpoints/{endpoint['id']}/recover", body)
    assert response.status_code == 422
    errors = (await response.get_json())["errors"]
    assert [error["pointer"] for error in errors] == [pointer]
    [delivery] = await delivering.deliveries(endpoint["id"])
    assert delivery["status"] == "failed", "nothing re-queued"


async def test_stats_count_statuses_and_success_rates(delivering: Delivering) -> None:
    endpoint = await delivering.endpoint("/stats", ABORT, 500, 200)
    for index in range(3):
        await delivering.publish(idempotency_key=f"s{index}")
        await delivering.worker.run_once()
    stats = await read(delivering, f"/v1/endpoints/{endpoint['id']}/stats")
    assert stats["id"] == endpoint["id"]
    assert stats["deliveries"] == {"failed": 1, "pending": 1, "succeeded": 1}
    for window in ("1h", "24h", "7d"):
        assert stats["attempts"][window] == {
            "total": 3,
            "succeeded": 1,
            "failed": 2,
            "success_rate": 0.3333,
        }
    delivering.api.clock.advance(timedelta(hours=2).total_seconds())
    later = await read(delivering, f"/v1/endpoints/{endpoint['id']}/stats")
    assert later["attempts"]["1h"]["total"] == 0
    assert later["attempts"]["1h"]["success_rate"] is None
    assert later["attempts"]["24h"]["total"] == 3
    reader = await delivering.api.key("acme", "reader")
    response = await delivering.api.call("GET", f"/v1/endpoints/{endpoint['id']}/stats", reader)
    assert response.status_code == 200


async def test_readers_may_not_act(delivering: Delivering) -> None:
    endpoint = await delivering.endpoint("/quiet")
    reader = await delivering.api.key("acme", "reader")
    for action, body in (
        ("ping", None),
        ("enable", None),
        ("recover", {"since": "2026-01-01T00:00:00Z"}),
    ):
        response = await delivering.api.call(
            "POST", f"/v1/endpoints/{endpoint['id']}/{action}", reader, json=body
        )
        assert response.status_code == 403
    assert await delivering.deliveries(endpoint["id"]) == []


async def test_pinging_a_disabled_endpoint_is_a_conflict(delivering: Delivering) -> None:
    endpoint = await delivering.endpoint("/gone-ping", 410)
    await delivering.publish()
    await delivering.worker.run_once()
    path = f"/v1/endpoints/{endpoint['id']}/ping"
    response = await delivering.api.call("POST", path, delivering.partner)
    assert response.status_code == 409
    assert "enable" in (await response.get_json())["detail"]

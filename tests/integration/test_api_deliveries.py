"""`/v1/deliveries` and replay: filters, paging, the attempt log, redelivery, roles."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from aiohttp import web
from sqlmodel import SQLModel, select

from app.store import deliveries as queue
from app.store.db import transaction
from app.store.tables import AttemptRow, DeliveryRow
from tests.integration import delivery_harness
from tests.integration.delivery_harness import Delivering
from tests.receivers import Answer

delivering = delivery_harness.delivering  # the fixture, used by name
ABORT = Answer(status=400, headers={"webhook-delivery": "abort-message"})
FAILED_SYNC = {"connection_id": "conn_1", "patient": "Patient/p1", "reason": "token expired"}


async def get(delivering: Delivering, path: str, key: str | None = None, **params: Any) -> Any:
    response = await delivering.api.call(
        "GET", path, key or delivering.partner, query_string=params
    )
    assert response.status_code == 200, await response.get_data(as_text=True)
    return await response.get_json()


async def listed(delivering: Delivering, key: str | None = None, **params: Any) -> list[str]:
    body = await get(delivering, "/v1/deliveries", key, **params)
    return [item["id"] for item in body["data"]]


async def post(delivering: Delivering, path: str, json: Any = None, key: str | None = None) -> Any:
    return await delivering.api.call("POST", path, key or delivering.partner, json=json)


async def count_rows(delivering: Delivering, table: type[SQLModel]) -> int:
    async with transaction(delivering.api.app.extensions["tidings"].sessions) as session:
        return int((await session.exec(select(sa.func.count()).select_from(table))).one())


def webhook_ids(delivering: Delivering, path: str) -> list[str]:
    return [
        {k.lower(): v for k, v in item.headers.items()}["webhook-id"]
        for item in delivering.receiver.at(path)
    ]


@asynccontextmanager
async def chatty_receiver(size: int) -> AsyncIterator[str]:
    """A receiver that answers 500 with a body of `size` bytes; its URL."""

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=500, body=b"x" * size)

    app = web.Application()
    app.router.add_post("/chatty", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    assert site._server is not None
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/chatty"
    finally:
        await runner.cleanup()


async def test_filters_by_endpoint_event_status_type_and_time(delivering: Delivering) -> None:
    good = await delivering.endpoint("/good")
    bad = await delivering.endpoint("/bad", 500, event_types=["records.sync.completed"])
    first = await delivering.publish()
    start_second = delivering.api.clock.now + timedelta(seconds=60)
    delivering.api.clock.advance(60)
    second = await delivering.publish("records.sync.failed", FAILED_SYNC)
    await delivering.worker.run_once()

    all_ids = await listed(delivering)
    assert len(all_ids) == 3
    assert len(await listed(delivering, endpoint_id=good["id"])) == 2
    assert len(await listed(delivering, endpoint_id=bad["id"])) == 1
    by_event = await get(delivering, "/v1/deliveries", event_id=first)
    assert {d["endpoint_id"] for d in by_event["data"]} == {good["id"], bad["id"]}
    pending = await get(delivering, "/v1/deliveries", status="pending")
    assert [(d["endpoint_id"], d["event_id"]) for d in pending["data"]] == [(bad["id"], first)]
    assert len(await listed(delivering, status="succeeded")) == 2
    typed = await get(delivering, "/v1/deliveries", event_type="records.sync.failed")
    assert [d["event_id"] for d in typed["data"]] == [second]
    since = start_second.isoformat()
    later = await get(delivering, "/v1/deliveries", since=since)
    assert [d["event_id"] for d in later["data"]] == [second]
    earlier = await get(delivering, "/v1/deliveries", until=since)
    assert {d["event_id"] for d in earlier["data"]} == {first}
    assert await listed(delivering, since=since, endpoint_id=bad["id"]) == []


async def test_pages_follow_signed_cursors(delivering: Delivering) -> None:
    await delivering.endpoint("/paged")
    for index in range(5):
        await delivering.publish(idempotency_key=f"page-{index}")
        delivering.api.clock.advance(index % 2)  # some share a creation time
    everything = await listed(delivering)
    seen: list[str] = []
    cursor: str | None = None
    sizes = []
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = await get(delivering, "/v1/deliveries", **params)
        sizes.append(len(page["data"]))
        seen += [item["id"] for item in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sizes == [2, 2, 1]
    assert seen == everything and len(set(seen)) == 5


async def test_a_tampered_cursor_is_400(delivering: Delivering) -> None:
    await delivering.endpoint("/tamper")
    for index in range(3):
        await delivering.publish(idempotency_key=f"t-{index}")
    page = await get(delivering, "/v1/deliveries", limit=1)
    cursor = page["next_cursor"]
    forged = cursor[:-2] + ("AA" if not cursor.endswith("AA") else "BB")
    response = await delivering.api.call(
        "GET", "/v1/deliveries", delivering.partner, query_string={"cursor": forged}
    )
    assert response.status_code == 400
    assert response.mimetype == "application/problem+json"


@pytest.mark.parametrize(
    ("params", "pointer"),
    [
        ({"status": "lost"}, "query:/status"),
        ({"since": "yesterday"}, "query:/since"),
        ({"until": "2026-01-01T00:00:00"}, "query:/until"),  # no offset: ambiguous
        ({"limit": "0"}, "query:/limit"),
        ({"colour": "red"}, "query:/colour"),
    ],
)
async def test_bad_filters_are_422(
    delivering: Delivering, params: dict[str, str], pointer: str
) -> None:
    response = await delivering.api.call(
        "GET", "/v1/deliveries", delivering.partner, query_string=params
    )
    assert response.status_code == 422
    body = await response.get_json()
    assert [error["pointer"] for error in body["errors"]] == [pointer]


async def test_one_delivery_shows_its_attempt_log(delivering: Delivering) -> None:
    timeout = await delivering.endpoint("/slow", Answer(hang=True), timeout_seconds=0.3)
    async with chatty_receiver(10_000) as url:
        response = await post(delivering, "/v1/endpoints", {"url": url})
        endpoint = await response.get_json()
        await delivering.publish()
        assert await delivering.worker.run_once() == 2
    [chatty] = await delivering.deliveries(endpoint["id"])
    detail = await get(delivering, f"/v1/deliveries/{chatty['id']}")
    assert detail["status"] == "pending" and detail["attempt_count"] == 1
    [attempt] = detail["attempts"]
    assert attempt["status_code"] == 500 and attempt["error"] is None
    assert attempt["response_excerpt"] == "x" * 4096, "capped at 4 KiB"
    assert attempt["duration_ms"] >= 0 and attempt["trigger"] == "scheduled"
    assert attempt["attempted_at"] == delivering.api.clock.now.isoformat()
    [slow] = await delivering.deliveries(timeout["id"])
    slow_detail = await get(delivering, f"/v1/deliveries/{slow['id']}")
    [slow_attempt] = slow_detail["attempts"]
    assert slow_attempt["status_code"] is None and slow_attempt["error"] == "timeout"


async def test_redeliver_a_failed_delivery_keeps_the_webhook_id(delivering: Delivering) -> None:
    endpoint = await delivering.endpoint("/again", ABORT, 200)
    event_id = await delivering.publish()
    await delivering.worker.run_once()
    [delivery] = await delivering.deliveries(endpoint["id"])
    assert delivery["status"] == "failed"
    response = await post(delivering, f"/v1/deliveries/{delivery['id']}/redeliver")
    assert response.status_code == 202
    assert (await response.get_json()) == {"id": delivery["id"], "status": "pending"}
    assert await delivering.worker.run_once() == 1
    detail = await get(delivering, f"/v1/deliveries/{delivery['id']}")
    assert detail["status"] == "succeeded" and detail["attempt_count"] == 2
    assert [a["status_code"] for a in detail["attempts"]] == [400, 200]
    assert webhook_ids(delivering, "/again") == [event_id, event_id]
    delivering.api.clock.advance(10**6)
    assert await delivering.worker.run_once() == 0, "exactly one more attempt"


async def test_redeliver_while_delivering_is_409(delivering: Delivering) -> None:
    endpoint = await delivering.endpoint("/busy")
    await delivering.publish()
    sessions = delivering.api.app.extensions["tidings"].sessions
    async with transaction(sessions) as session:  # a worker holds the lease
        await queue.claim_due_deliveries(
            session, now=delivering.api.clock(), limit=10, lease_seconds=60
        )
    [delivery] = await delivering.deliveries(endpoint["id"])
    assert delivery["status"] == "delivering"
    response = await post(delivering, f"/v1/deliveries/{delivery['id']}/redeliver")
    assert response.status_code == 409
    assert response.mimetype == "application/problem+json"
    assert (await delivering.deliveries(endpoint["id"])) == [delivery]


@pytest.mark.parametrize("delivery_id", ["dlv_01ZZZZZZZZZZZZZZZZZZZZZZZZ", "nope"])
async def test_an_unknown_delivery_is_404(delivering: Delivering, delivery_id: str) -> None:
    read = await delivering.api.call("GET", f"/v1/deliveries/{delivery_id}", delivering.partner)
    assert read.status_code == 404
    again = await post(delivering, f"/v1/deliveries/{delivery_id}/redeliver")
    assert again.status_code == 404


async def test_replay_makes_new_deliveries_with_the_same_webhook_id(
    delivering: Delivering,
) -> None:
    one = await delivering.endpoint("/one")
    two = await delivering.endpoint("/two")
    event_id = await delivering.publish()
    await delivering.worker.run_once()
    response = await post(delivering, f"/v1/events/{event_id}/replay")
    assert response.status_code == 202
    body = await response.get_json()
    assert body["event_id"] == event_id and len(body["deliveries"]) == 2
    assert await delivering.worker.run_once() == 2
    assert webhook_ids(delivering, "/one") == [event_id, event_id]
    assert webhook_ids(delivering, "/two") == [event_id, event_id]
    for endpoint in (one, two):
        statuses = [d["status"] for d in await delivering.deliveries(endpoint["id"])]
        assert statuses == ["succeeded", "succeeded"]


async def test_replay_to_chosen_endpoints(delivering: Delivering) -> None:
    await delivering.endpoint("/first")
    second = await delivering.endpoint("/second")
    event_id = await delivering.publish()
    await delivering.worker.run_once()
    response = await post(
        delivering, f"/v1/events/{event_id}/replay", {"endpoint_ids": [second["id"]] * 2}
    )
    assert response.status_code == 202
    assert len((await response.get_json())["deliveries"]) == 1, "each endpoint once"
    await delivering.worker.run_once()
    assert len(delivering.receiver.at("/first")) == 1
    assert webhook_ids(delivering, "/second") == [event_id, event_id]


async def test_replay_to_another_organizations_endpoint_is_422(delivering: Delivering) -> None:
    mine = await delivering.endpoint("/mine")
    stranger = await delivering.api.key("other-org")
    theirs = await (
        await post(delivering, "/v1/endpoints", {"url": delivering.receiver.url("/x")}, stranger)
    ).get_json()
    event_id = await delivering.publish()
    before = await count_rows(delivering, DeliveryRow)
    for endpoint_ids in ([mine["id"], theirs["id"]], ["ep_01ZZZZZZZZZZZZZZZZZZZZZZZZ"]):
        response = await post(
            delivering, f"/v1/events/{event_id}/replay", {"endpoint_ids": endpoint_ids}
        )
        assert response.status_code == 422
        errors = (await response.get_json())["errors"]
        assert [e["pointer"] for e in errors] == [f"/endpoint_ids/{len(endpoint_ids) - 1}"]
    assert await count_rows(delivering, DeliveryRow) == before, "nothing stored"
    refused = await post(delivering, f"/v1/events/{event_id}/replay", {"endpoint_ids": []})
    assert refused.status_code == 422
    elsewhere = await post(delivering, f"/v1/events/{event_id}/replay", {}, stranger)
    assert elsewhere.status_code == 404


async def test_a_reader_may_list_but_not_redeliver_or_replay(delivering: Delivering) -> None:
    endpoint = await delivering.endpoint("/read", ABORT)
    event_id = await delivering.publish()
    await delivering.worker.run_once()
    reader = await delivering.api.key("acme", "reader")
    [delivery] = await delivering.deliveries(endpoint["id"])
    assert await listed(delivering, reader) == [delivery["id"]]
    assert (await get(delivering, f"/v1/deliveries/{delivery['id']}", reader))["attempts"]
    for path in (f"/v1/deliveries/{delivery['id']}/redeliver", f"/v1/events/{event_id}/replay"):
        response = await post(delivering, path, key=reader)
        assert response.status_code == 403
    assert await delivering.deliveries(endpoint["id"]) == [delivery]
    assert await count_rows(delivering, AttemptRow) == 1


async def test_only_admins_filter_by_organization(delivering: Delivering) -> None:
    await delivering.endpoint("/orgs")
    await delivering.publish()
    admin = await delivering.api.key("ops", "admin")
    stranger = await delivering.api.key("other-org")
    everything = await listed(delivering)
    assert len(everything) == 1
    assert await listed(delivering, admin, organization="acme") == everything
    assert await listed(delivering, admin, organization="other-org") == []
    assert await listed(delivering, stranger, organization="acme") == []
    assert await listed(delivering, organization="acme") == everything

"""`GET /fhir/AuditEvent`: every attempt as an AuditEvent, searchable by entity, date, outcome."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.delivery_harness import Delivering
from tests.integration.fhir_helpers import backport, create, encounter, fhir, fhir_valid, push

pytestmark = pytest.mark.usefixtures("delivering")


async def search(
    delivering: Delivering, query: str, key: str | None = None
) -> list[dict[str, Any]]:
    response = await fhir(
        delivering.api, "GET", f"/fhir/AuditEvent{query}", key or delivering.partner
    )
    assert response.status_code == 200, await response.get_data(as_text=True)
    bundle = await response.get_json()
    fhir_valid(bundle)
    return [entry["resource"] for entry in bundle.get("entry", [])]


async def test_attempts_are_audit_events(delivering: Delivering) -> None:
    url = delivering.receiver.script("/a", 200, 503, 200)
    created = await create(delivering.api, delivering.partner, backport(url))
    await delivering.worker.run_once()  # handshake 200
    start = delivering.api.clock().isoformat().replace("+00:00", "Z")
    delivering.api.clock.advance(60)
    await push(delivering.api, delivering.source, encounter(), "update")
    await delivering.worker.run_once()  # 503, retried
    delivering.api.clock.advance(10)
    await delivering.worker.run_once()  # 200
    gone = await create(
        delivering.api, delivering.partner, backport(delivering.receiver.script("/g", 410))
    )
    await delivering.worker.run_once()  # 410: final failure
    every = await search(delivering, "")
    assert [event["outcome"] for event in every] == ["0", "4", "0", "8"]
    assert all(event["type"]["code"] == "transmit" for event in every)
    mine = await search(delivering, f"?entity=Subscription/{created['id']}")
    assert len(mine) == 3
    assert len(await search(delivering, f"?entity=Subscription/{gone['id']}&outcome=8")) == 1
    focus = await search(delivering, "?entity=Encounter/enc-1")
    assert [event["outcome"] for event in focus] == ["4", "0"]
    assert len(await search(delivering, "?outcome=0")) == 2
    assert len(await search(delivering, f"?date=le{start}")) == 1
    assert len(await search(delivering, f"?date=gt{start}")) == 3
    later = delivering.api.clock().isoformat().replace("+00:00", "Z")
    assert len(await search(delivering, f"?date=gt{start}&date=lt{later}")) == 1
    other = await delivering.api.key("other-org")
    assert await search(delivering, "", other) == []
    first = await (
        await fhir(delivering.api, "GET", "/fhir/AuditEvent?_count=3", delivering.partner)
    ).get_json()
    [next_url] = [link["url"] for link in first["link"] if link["relation"] == "next"]
    rest = await (
        await fhir(delivering.api, "GET", next_url.split("8080", 1)[1], delivering.partner)
    ).get_json()
    assert len(first["entry"]) == 3 and len(rest["entry"]) == 1


async def test_bad_search_values_are_operation_outcomes(delivering: Delivering) -> None:
    for query in ("?outcome=5", "?date=yesterday", "?_count=0", "?actor=x"):
        response = await fhir(delivering.api, "GET", f"/fhir/AuditEvent{query}", delivering.partner)
        assert response.status_code == 422, query
        assert (await response.get_json())["resourceType"] == "OperationOutcome"

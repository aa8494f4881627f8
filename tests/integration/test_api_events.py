"""`/v1/events`: publishing, idempotency, every refusal, matching and the event log."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from app.store import outbox
from app.store.db import transaction
from app.store.tables import EndpointRow
from tests.integration.conftest import Api
from tests.integration.outbox_helpers import (
    deliveries_by_endpoint,
    fhir_valid,
    payload_for,
    register,
    services_of,
    stored_event_types,
)

FLOW = {
    "id": "flow_1",
    "patient": "Patient/123",
    "status": "completed",
    "completed_at": "2026-01-01T11:00:00Z",
}
DELETED_USER = {
    "person_id": "7d3e9c2a-1111",
    "external_identifier": {"system": "https://partner.example.org/users", "value": "u-1"},
}
FINISHED = {
    "resourceType": "Encounter",
    "id": "e1",
    "status": "finished",
    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
}


async def publish(api: Api, key: str, type_: str, data: Any, **fields: Any) -> Any:
    return await api.call("POST", "/v1/events", key, json={"type": type_, "data": data, **fields})


async def published_id(api: Api, key: str, type_: str, data: Any, **fields: Any) -> str:
    response = await publish(api, key, type_, data, **fields)
    assert response.status_code == 202, await response.get_data(as_text=True)
    event_id: str = (await response.get_json())["id"]
    return event_id


async def test_publish_then_read_with_a_delivery_summary(api: Api) -> None:
    source, partner = await api.key("acme", "source"), await api.key("acme")
    await register(api, partner, event_types=["patient_flow.*"])
    event_id = await published_id(api, source, "patient_flow.completed", FLOW)
    assert event_id.startswith("evt_")
    response = await api.call("GET", f"/v1/events/{event_id}", partner)
    assert response.status_code == 200
    body = await response.get_json()
    assert body["type"] == "patient_flow.completed"
    assert body["data"] == FLOW
    assert body["organization"] == "acme"
    assert body["occurred_at"] == api.clock.now.isoformat()
    assert body["deliveries"]["pending"] == 1
    assert sum(body["deliveries"].values()) == 1


async def test_the_same_idempotency_key_answers_the_first_event(api: Api) -> None:
    source = await api.key("acme", "source")
    first = await published_id(api, source, "patient_flow.completed", FLOW, idempotency_key="k1")
    again = await publish(api, source, "patient_flow.completed", FLOW, idempotency_key="k1")
    assert again.status_code == 200
    assert (await again.get_json())["id"] == first
    changed = dict(FLOW, status="abandoned")
    different = await publish(api, source, "patient_flow.completed", changed, idempotency_key="k1")
    assert (different.status_code, (await different.get_json())["id"]) == (200, first)
    read = await (await api.call("GET", f"/v1/events/{first}", await api.key("acme"))).get_json()
    assert read["data"]["status"] == "completed"
    assert await stored_event_types(api) == {"patient_flow.completed": 1}
    elsewhere = await api.key("globex", "source")
    other = await published_id(api, elsewhere, "patient_flow.completed", FLOW, idempotency_key="k1")
    assert other != first


async def test_concurrent_publishes_with_one_key_store_one_event(api: Api) -> None:
    source = await api.key("acme", "source")
    responses = await asyncio.gather(
        *(
            publish(api, source, "patient_flow.completed", FLOW, idempotency_key="race")
            for _ in range(4)
        )
    )
    ids = {(await response.get_json())["id"] for response in responses}
    assert len(ids) == 1
    assert sorted(response.status_code for response in responses) == [200, 200, 200, 202]
    assert await stored_event_types(api) == {"patient_flow.completed": 1}


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
async def test_numbers_json_does_not_have_are_refused(api: Api, constant: str) -> None:
    source = await api.key("acme", "source")
    data = json.dumps(FLOW)[:-1] + f', "score": {constant}}}'
    body = f'{{"type": "patient_flow.completed", "data": {data}}}'
    response = await api.call(
        "POST", "/v1/events", source, data=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400, await response.get_data(as_text=True)
    problem = await response.get_json()
    assert constant.lstrip("-") in problem["detail"]
    assert await stored_event_types(api) == {}


@pytest.mark.parametrize(
    ("data", "pointers"),
    [
        ({"external_identifier": {"value": "u"}}, ["/data/person_id"]),
        ({"person_id": "no spaces allowed", "external_identifier": {}}, None),
        (
            {"person_id": "p1", "external_identifier": {"value": ""}, "deleted_at": 5},
            ["/data/deleted_at", "/data/external_identifier/value"],
        ),
        ({**DELETED_USER, "deleted_at": "nope"}, ["/data/deleted_at"]),
    ],
)
async def test_data_is_checked_against_the_schema(
    api: Api, data: dict[str, Any], pointers: list[str] | None
) -> None:
    source = await api.key("acme", "source")
    response = await publish(api, source, "user-delete-completed", data)
    assert response.status_code == 422
    body = await response.get_json()
    found = [error["pointer"] for error in body["errors"]]
    if pointers is None:
        assert "/data/person_id" in found and "/data/external_identifier/value" in found
    else:
        assert found == pointers
    assert await stored_event_types(api) == {}


@pytest.mark.parametrize(
    ("body", "pointer", "words"),
    [
        ({"type": "no.such.type", "data": {}}, "/type", "unknown event type 'no.such.type'"),
        ({"type": "ping"}, "/data", "required"),
        ({"type": "ping", "data": []}, "/data", "dictionary"),
        ({"type": "ping", "data": {}, "colour": "red"}, "/colour", "unknown field"),
        ({"type": "ping", "data": {}, "occurred_at": "2026-01-01T10:00:00"}, "/occurred_at", ""),
        ({"type": "ping", "data": {}, "organization": "globex"}, "/organization", "admin"),
        ({"type": "ping", "data": {}, "idempotency_key": ""}, "/idempotency_key", ""),
    ],
)
async def test_bad_bodies_are_422_with_a_pointer(
    api: Api, body: dict[str, Any], pointer: str, words: str
) -> None:
    source = await api.key("acme", "source")
    response = await api.call("POST", "/v1/events", source, json=body)
    assert response.status_code == 422
    problem = await response.get_json()
    assert response.content_type == "application/problem+json"
    assert problem["errors"][0]["pointer"] == pointer
    assert words in problem["errors"][0]["detail"]
    assert await stored_event_types(api) == {}


@pytest.mark.parametrize(
    ("data", "content_type", "status"),
    [
        (b'{"type": "ping", "data": ', "application/json", 400),
        (
            b'{"type": "ping", "data": ' + b'{"a": ' * 200 + b"1" + b"}" * 201,
            "application/json",
            400,
        ),
        (b"type=ping", "application/x-www-form-urlencoded", 415),
        (b"", "application/json", 400),
    ],
)
async def test_unreadable_bodies_store_nothing(
    api: Api, data: bytes, content_type: str, status: int
) -> None:
    source = await api.key("acme", "source")
    headers = {"Content-Type": content_type}
    response = await api.call("POST", "/v1/events", source, data=data, headers=headers)
    assert response.status_code == status
    assert response.content_type == "application/problem+json"
    assert await stored_event_types(api) == {}


async def test_an_oversized_body_is_a_413(api: Api) -> None:
    source = await api.key("acme", "source")
    api.app.config["MAX_CONTENT_LENGTH"] = 2048
    try:
        response = await publish(api, source, "ping", {"blob": "x" * 5000})
    finally:
        api.app.config["MAX_CONTENT_LENGTH"] = 1024 * 1024
    assert response.status_code == 413
    assert await stored_event_types(api) == {}


async def test_a_body_that_stops_arriving_is_a_408_and_stores_nothing(api: Api) -> None:
    source = await api.key("acme", "source")
    api.app.config["BODY_TIMEOUT"] = 0.2
    headers = {"Authorization": f"Bearer {source}", "Content-Type": "application/json"}
    try:
        async with api.client.request("/v1/events", method="POST", headers=headers) as sending:
            await sending.send(b'{"type": "ping", "da')  # and nothing more
            async with asyncio.timeout(5):
                await sending.receive()  # the answer's body: sent once the timeout ran out
            response = await sending.as_response()
    finally:
        api.app.config["BODY_TIMEOUT"] = 60
    assert response.status_code == 408
    assert response.content_type == "application/problem+json"
    assert await stored_event_types(api) == {}


async def test_roles(api: Api) -> None:
    partner, reader = await api.key("acme"), await api.key("acme", "reader")
    source, admin = await api.key("acme", "source"), await api.key("ops", "admin")
    assert (await publish(api, partner, "ping", {})).status_code == 403
    assert (await publish(api, reader, "ping", {})).status_code == 403
    event_id = await published_id(api, admin, "ping", {}, organization="acme")
    assert (await api.call("GET", f"/v1/events/{event_id}", reader)).status_code == 200
    assert (await api.call("GET", "/v1/events", source)).status_code == 403


async def test_an_account_key_publishes_into_its_account(api: Api) -> None:
    source = await api.key("acme", "source", account="acc-1")
    event_id = await published_id(api, source, "ping", {})
    assert (await publish(api, source, "ping", {}, account="acc-2")).status_code == 422
    body = await (await api.call("GET", f"/v1/events/{event_id}", await api.key("acme"))).get_json()
    assert body["account"] == "acc-1"
    hidden = await api.call("GET", f"/v1/events/{event_id}", await api.key("acme", account="acc-2"))
    assert hidden.status_code == 404


async def disable(api: Api, endpoint_id: str) -> None:
    async with transaction(services_of(api).sessions) as session:
        row = await session.get(EndpointRow, endpoint_id)
        assert row is not None
        row.active = False
        session.add(row)


async def test_matching_sends_to_exactly_the_endpoints_that_want_the_event(api: Api) -> None:
    partner, source = await api.key("acme"), await api.key("acme", "source")
    wanted = {
        await register(api, partner, event_types=["encounter.updated"]): "exact",
        await register(api, partner, event_types=["encounter.*"]): "prefix",
        await register(api, partner, event_types=["*"]): "all",
        await register(api, partner, event_types=["encounter.*", "*"]): "twice",
        await register(
            api, partner, event_types=["encounter.updated"], filter="Encounter?status=finished"
        ): "filter",
    }
    unwanted = [
        await register(api, partner, event_types=["encounter.created", "patient.*"]),
        await register(api, partner, event_types=["*"], filter="Encounter?status=planned"),
        await register(api, partner, event_types=["*"], account="acc-1"),
        await register(api, await api.key("globex"), event_types=["*"]),
    ]
    disabled, deleted = await register(api, partner), await register(api, partner)
    await disable(api, disabled)
    assert (await api.call("DELETE", f"/v1/endpoints/{deleted}", partner)).status_code == 204
    event_id = await published_id(api, source, "encounter.updated", FINISHED)
    delivered = await deliveries_by_endpoint(api)
    assert set(delivered) == set(wanted)
    assert all(types == ["encounter.updated"] for types in delivered.values())
    assert not {*unwanted, disabled, deleted} & set(delivered)
    summary = await (await api.call("GET", f"/v1/events/{event_id}", partner)).get_json()
    assert summary["deliveries"]["pending"] == len(wanted)


async def test_account_endpoints_receive_their_accounts_events(api: Api) -> None:
    partner = await api.key("acme")
    mine = await register(api, partner, event_types=["ping"], account="acc-1")
    theirs = await register(api, partner, event_types=["ping"], account="acc-2")
    everyone = await register(api, partner, event_types=["ping"])
    await published_id(api, await api.key("acme", "source", account="acc-1"), "ping", {})
    assert await deliveries_by_endpoint(api) == {mine: ["ping"], everyone: ["ping"]}
    assert theirs not in await deliveries_by_endpoint(api)


async def test_user_delete_completed_becomes_a_message_header(api: Api) -> None:
    partner, source = await api.key("acme"), await api.key("acme", "source")
    endpoint_id = await register(api, partner, event_types=["user-delete-completed"])
    event_id = await published_id(api, source, "user-delete-completed", DELETED_USER)
    payload = await payload_for(api, event_id, endpoint_id)
    header = json.loads(payload.body)
    assert payload.content_type == "application/fhir+json"
    fhir_valid(header)
    assert header["resourceType"] == "MessageHeader"
    assert header["eventCoding"]["code"] == "user-delete-completed"
    assert header["focus"] == [{"reference": "Person/7d3e9c2a-1111"}]
    assert header["extension"][0]["valueIdentifier"]["value"] == "u-1"
    assert header["destination"] == [{"endpoint": "http://127.0.0.1:9/hooks"}]


async def test_patient_flow_completed_becomes_an_envelope_of_the_flow(api: Api) -> None:
    partner, source = await api.key("acme"), await api.key("acme", "source")
    endpoint_id = await register(api, partner, event_types=["patient_flow.completed"])
    event_id = await published_id(api, source, "patient_flow.completed", FLOW)
    payload = await payload_for(api, event_id, endpoint_id)
    envelope = json.loads(payload.body)
    assert payload.content_type == "application/json"
    assert envelope == {
        "id": event_id,
        "type": "patient_flow.completed",
        "timestamp": api.clock.now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "data": {"object": FLOW},
    }


async def test_a_failure_after_the_event_insert_stores_nothing(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    partner, source = await api.key("acme"), await api.key("acme", "source")
    await register(api, partner)

    async def broken(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        raise RuntimeError("the disk is full")

    monkeypatch.setattr(outbox, "_deliveries_for", broken)  # runs after the event's INSERT
    try:
        response = await publish(api, source, "ping", {})
        assert response.status_code == 500
    except RuntimeError:
        pass
    monkeypatch.undo()
    assert await stored_event_types(api) == {}
    assert await deliveries_by_endpoint(api) == {}


async def test_list_filters_by_type_and_time_and_pages_newest_first(api: Api) -> None:
    source, partner = await api.key("acme", "source"), await api.key("acme")
    ids = []
    for hour in range(5):
        occurred = f"2026-01-0{hour + 1}T10:00:00Z"
        ids.append(await published_id(api, source, "ping", {"n": hour}, occurred_at=occurred))
    await published_id(api, source, "patient_flow.completed", FLOW)
    await published_id(api, await api.key("globex", "source"), "ping", {})
    seen: list[str] = []
    path = "/v1/events?type=ping&limit=2"
    while path:
        page = await (await api.call("GET", path, partner)).get_json()
        seen += [item["id"] for item in page["data"]]
        cursor = page["next_cursor"]
        path = f"/v1/events?type=ping&limit=2&cursor={cursor}" if cursor else ""
    assert seen == ids[::-1]
    window = "/v1/events?since=2026-01-02T10:00:00Z&until=2026-01-04T10:00:00Z"
    page = await (await api.call("GET", window, partner)).get_json()
    assert [item["id"] for item in page["data"]] == [ids[2], ids[1]]


@pytest.mark.parametrize(
    "query", ["limit=0", "since=yesterday", "until=2026-01-01T00:00:00", "colour=red"]
)
async def test_bad_list_parameters_are_422(api: Api, query: str) -> None:
    response = await api.call("GET", f"/v1/events?{query}", await api.key("acme"))
    assert response.status_code == 422
    assert (await response.get_json())["errors"][0]["pointer"].startswith("query:/")


async def test_a_tampered_cursor_is_a_400(api: Api) -> None:
    source, partner = await api.key("acme", "source"), await api.key("acme")
    for _ in range(3):
        await published_id(api, source, "ping", {})
    page = await (await api.call("GET", "/v1/events?limit=1", partner)).get_json()
    tampered = page["next_cursor"][:-2] + "AA"
    if tampered == page["next_cursor"]:
        tampered = page["next_cursor"][:-2] + "BB"
    response = await api.call("GET", f"/v1/events?cursor={tampered}", partner)
    assert response.status_code == 400


@pytest.mark.parametrize("event_id", ["nope", "evt_doesnotexist0000000", "../x"])
async def test_unknown_events_are_404(api: Api, event_id: str) -> None:
    response = await api.call("GET", f"/v1/events/{event_id}", await api.key("acme"))
    assert response.status_code == 404

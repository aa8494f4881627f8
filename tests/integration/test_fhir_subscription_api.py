"""`/fhir`: metadata, topics, Subscription create/read/update/delete/search, and bad input."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.conftest import Api
from tests.integration.delivery_harness import Delivering
from tests.integration.fhir_helpers import (
    BACKPORT,
    FHIR_JSON,
    MEDPLUM,
    backport,
    create,
    fhir,
    fhir_valid,
    r4,
    r5,
    topic,
)

HOOK = "https://hooks.partner.test/fhir"


@pytest.fixture
async def partner(api: Api) -> str:
    return await api.key("acme")


async def count_rows(api: Api, table: str) -> int:
    deliverer = Delivering.__new__(Delivering)
    deliverer.api = api
    [(count,)] = await deliverer.sql(f"SELECT count(*) FROM {table}")
    return int(count)


async def test_metadata_and_topics_are_valid_fhir(api: Api, partner: str) -> None:
    response = await fhir(api, "GET", "/fhir/metadata", partner)
    assert response.headers["Content-Type"].startswith(FHIR_JSON)
    statement = await response.get_json()
    fhir_valid(statement)
    [rest] = statement["rest"]
    assert {r["type"] for r in rest["resource"]} == {
        "Subscription",
        "SubscriptionTopic",
        "AuditEvent",
    }
    bundle = await (await fhir(api, "GET", "/fhir/SubscriptionTopic", partner)).get_json()
    fhir_valid(bundle)
    urls = {entry["resource"]["url"] for entry in bundle["entry"]}
    assert topic("encounter.updated") in urls and topic("patient-flow.completed") in urls
    assert topic("subscription.handshake") not in urls, "internal notices are no topics"
    one = await fhir(api, "GET", "/fhir/SubscriptionTopic/encounter.updated", partner)
    fhir_valid(await one.get_json())
    missing = await fhir(api, "GET", "/fhir/SubscriptionTopic/subscription.heartbeat", partner)
    assert missing.status_code == 404
    assert (await missing.get_json())["issue"][0]["code"] == "not-found"


SHAPES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("r4-criteria", r4(HOOK, payload=FHIR_JSON), {"status": "active", "version": "R4"}),
    (
        "r4-backport",
        backport(HOOK, filters=("Encounter?status=finished",), heartbeat=60),
        {"status": "requested", "version": "R4"},
    ),
    ("r5", r5(HOOK), {"status": "requested", "version": "R5"}),
]


@pytest.mark.parametrize(("shape", "resource", "expected"), SHAPES, ids=[s[0] for s in SHAPES])
async def test_create_read_update_search_delete(
    api: Api, partner: str, shape: str, resource: dict[str, Any], expected: dict[str, Any]
) -> None:
    created = await create(api, partner, resource)
    fhir_valid(created, expected["version"])
    assert created["status"] == expected["status"]
    assert created["id"].startswith("ep-")
    path = f"/fhir/Subscription/{created['id']}"
    read = await (await fhir(api, "GET", path, partner)).get_json()
    assert read["id"] == created["id"] and read["status"] == expected["status"]
    changed = {**resource, "id": created["id"], "status": "off"}
    updated = await fhir(api, "PUT", path, partner, changed)
    assert updated.status_code == 200, await updated.get_data(as_text=True)
    assert (await updated.get_json())["status"] == "off"
    endpoint = await (
        await api.call("GET", "/v1/endpoints/" + created["id"].replace("-", "_", 1), partner)
    ).get_json()
    assert endpoint["active"] is False and endpoint["payload_format"] == "fhir-notification"
    found = await (await fhir(api, "GET", "/fhir/Subscription?status=off", partner)).get_json()
    fhir_valid(found, expected["version"])
    assert [e["resource"]["id"] for e in found["entry"]] == [created["id"]]
    none = await (await fhir(api, "GET", "/fhir/Subscription?status=active", partner)).get_json()
    assert none.get("entry", []) == []
    by_url = await (await fhir(api, "GET", f"/fhir/Subscription?url={HOOK}", partner)).get_json()
    assert len(by_url["entry"]) == 1
    assert (await fhir(api, "DELETE", path, partner)).status_code == 204
    assert (await fhir(api, "GET", path, partner)).status_code == 404


async def test_search_pages_with_next_links(api: Api, partner: str) -> None:
    for _ in range(3):
        await create(api, partner, r5(HOOK))
    page = await (await fhir(api, "GET", "/fhir/Subscription?_count=2", partner)).get_json()
    assert len(page["entry"]) == 2
    [next_link] = [link["url"] for link in page["link"] if link["relation"] == "next"]
    rest = await (await fhir(api, "GET", next_link.split("8080", 1)[1], partner)).get_json()
    assert len(rest["entry"]) == 1
    assert not [link for link in rest["link"] if link["relation"] == "next"]


async def test_medplum_extensions_map_to_the_endpoint(api: Api, partner: str) -> None:
    resource = r4(
        HOOK,
        criteria="Encounter",
        payload=FHIR_JSON,
        header=["Authorization: Bearer abc:def", "X-Trace: 1"],
        extension=[
            {"url": MEDPLUM + "subscription-secret", "valueString": "medplum-secret"},
            {"url": MEDPLUM + "subscription-supported-interaction", "valueCode": "create"},
            {"url": MEDPLUM + "subscription-supported-interaction", "valueCode": "delete"},
            {
                "url": MEDPLUM + "fhir-path-criteria-expression",
                "valueString": "%current.status = 'finished'",
            },
            {"url": MEDPLUM + "subscription-max-attempts", "valueInteger": 2},
        ],
    )
    created = await create(api, partner, resource)
    assert "medplum-secret" not in str(created)
    endpoint_id = created["id"].replace("-", "_", 1)
    endpoint = await (await api.call("GET", f"/v1/endpoints/{endpoint_id}", partner)).get_json()
    assert endpoint["signature_scheme"] == "medplum"
    assert endpoint["event_types"] == ["encounter.created", "encounter.deleted"]
    assert endpoint["headers"] == {"Authorization": "Bearer abc:def", "X-Trace": "1"}
    secret = await (
        await api.call("GET", f"/v1/endpoints/{endpoint_id}/secret", partner)
    ).get_json()
    assert secret["secret"] == "medplum-secret"
    kept = {**created, "status": "requested"}
    response = await fhir(api, "PUT", f"/fhir/Subscription/{created['id']}", partner, kept)
    assert response.status_code == 200, await response.get_data(as_text=True)
    secret = await (
        await api.call("GET", f"/v1/endpoints/{endpoint_id}/secret", partner)
    ).get_json()
    assert secret["secret"] == "medplum-secret", "the masked secret keeps the stored one"


async def test_plain_endpoints_still_refuse_an_authorization_header(api: Api, partner: str) -> None:
    response = await api.call(
        "POST",
        "/v1/endpoints",
        partner,
        json={"url": HOOK, "headers": {"Authorization": "Bearer x"}},
    )
    assert response.status_code == 422


def _not_a_subscription() -> dict[str, Any]:
    return {"resourceType": "Patient", "id": "p1"}


def _unknown_topic() -> dict[str, Any]:
    return backport(HOOK, name="no.such.topic")


def _bad_criteria() -> dict[str, Any]:
    return r4(HOOK, criteria="Encounter?status=finished&&&bogus-param=1")


def _websocket() -> dict[str, Any]:
    resource = r4(HOOK)
    resource["channel"]["type"] = "websocket"
    return resource


def _private_address() -> dict[str, Any]:
    return r4("https://internal.partner.test/hook")


def _reserved_header() -> dict[str, Any]:
    return r4(HOOK, header=["webhook-signature: forged"])


BAD_INPUT: list[tuple[str, Any, int, str | None]] = [
    ("malformed-json", b'{"resourceType": "Subscription",', 400, None),
    ("not-a-subscription", _not_a_subscription(), 422, "Subscription"),
    ("unknown-topic", _unknown_topic(), 422, "Subscription.criteria"),
    ("bad-criteria", _bad_criteria(), 422, "Subscription.criteria"),
    ("unsupported-channel", _websocket(), 422, "Subscription.channel.type"),
    ("private-address", _private_address(), 422, "Subscription.channel.endpoint"),
    ("reserved-header", _reserved_header(), 422, "Subscription.channel.header"),
]


@pytest.mark.parametrize(
    ("case", "body", "status", "expression"), BAD_INPUT, ids=[c[0] for c in BAD_INPUT]
)
async def test_bad_input_is_an_operation_outcome_and_stores_nothing(
    api: Api, partner: str, case: str, body: Any, status: int, expression: str | None
) -> None:
    response = await fhir(api, "POST", "/fhir/Subscription", partner, body)
    assert response.status_code == status, await response.get_data(as_text=True)
    assert response.headers["Content-Type"].startswith(FHIR_JSON)
    outcome = await response.get_json()
    fhir_valid(outcome)
    issue = outcome["issue"][0]
    assert issue["severity"] == "error" and issue["diagnostics"]
    if expression is not None:
        assert any(expression in (i.get("expression") or [""])[0] for i in outcome["issue"])
    assert await count_rows(api, "endpoint") == 0
    assert await count_rows(api, "event") == 0


async def test_wrong_content_type_method_and_key_are_operation_outcomes(
    api: Api, partner: str
) -> None:
    response = await api.call(
        "POST", "/fhir/Subscription", partner, data="x", headers={"Content-Type": "text/plain"}
    )
    assert response.status_code == 415
    assert (await response.get_json())["resourceType"] == "OperationOutcome"
    response = await api.call("PATCH", "/fhir/Subscription/ep-x", partner)
    assert response.status_code == 405
    assert (await response.get_json())["issue"][0]["code"] == "not-supported"
    response = await api.call("GET", "/fhir/metadata", None)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await response.get_json())["issue"][0]["code"] == "login"
    response = await fhir(api, "GET", "/fhir/Subscription?colour=red", partner)
    assert response.status_code == 422
    assert (await response.get_json())["issue"][0]["expression"] == ["colour"]


async def test_readers_read_but_do_not_write(api: Api, partner: str) -> None:
    created = await create(api, partner, r5(HOOK))
    reader = await api.key("acme", "reader")
    assert (
        await fhir(api, "GET", f"/fhir/Subscription/{created['id']}", reader)
    ).status_code == 200
    refused = await fhir(api, "POST", "/fhir/Subscription", reader, r5(HOOK))
    assert refused.status_code == 403
    assert (await refused.get_json())["issue"][0]["code"] == "forbidden"


async def test_backport_extensions_are_kept(api: Api, partner: str) -> None:
    created = await create(api, partner, backport(HOOK, heartbeat=120))
    urls = {ext["url"] for ext in created["channel"]["extension"]}
    assert {
        BACKPORT + "backport-heartbeat-period",
        BACKPORT + "backport-timeout",
        BACKPORT + "backport-max-count",
    } <= urls
    endpoint_id = created["id"].replace("-", "_", 1)
    endpoint = await (await api.call("GET", f"/v1/endpoints/{endpoint_id}", partner)).get_json()
    assert endpoint["timeout_seconds"] == 20 and endpoint["content"] == "full-resource"

"""No organization reads, changes or learns of another's objects: every route, every role."""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa
from sqlmodel import col

from app.store.db import transaction
from app.store.tables import AttemptRow, DeliveryRow
from tests.integration.conftest import Api

SUBSCRIPTION = {
    "resourceType": "Subscription",
    "status": "requested",
    "reason": "A's",
    "criteria": "Encounter?status=finished",
    "channel": {"type": "rest-hook", "endpoint": "http://127.0.0.1:9/s"},
}

# Every route that takes an object id: (method, path, body). `{endpoint}` is org A's endpoint,
# `{event}` org A's event, `{delivery}` that event's delivery to the endpoint.
OBJECT_ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/v1/events/{event}", None),
    ("GET", "/v1/endpoints/{endpoint}", None),
    ("PATCH", "/v1/endpoints/{endpoint}", {"description": "taken over"}),
    ("DELETE", "/v1/endpoints/{endpoint}", None),
    ("GET", "/v1/endpoints/{endpoint}/secret", None),
    ("POST", "/v1/endpoints/{endpoint}/secret/rotate", {}),
    ("GET", "/v1/deliveries/{delivery}", None),
    ("POST", "/v1/deliveries/{delivery}/redeliver", None),
    ("POST", "/v1/events/{event}/replay", {}),
    ("POST", "/v1/endpoints/{endpoint}/ping", None),
    ("POST", "/v1/endpoints/{endpoint}/enable", {"recover_since": "2000-01-01T00:00:00Z"}),
    ("POST", "/v1/endpoints/{endpoint}/recover", {"since": "2000-01-01T00:00:00Z"}),
    ("GET", "/v1/endpoints/{endpoint}/stats", None),
    ("GET", "/fhir/Subscription/{subscription}", None),
    ("PUT", "/fhir/Subscription/{subscription}", SUBSCRIPTION),
    ("DELETE", "/fhir/Subscription/{subscription}", None),
    ("GET", "/fhir/Subscription/{subscription}/$status", None),
    ("GET", "/fhir/Subscription/{subscription}/$events", None),
]


@pytest.fixture
async def endpoint_of_a(api: Api) -> dict[str, Any]:
    key = await api.key("org-a")
    response = await api.call(
        "POST", "/v1/endpoints", key, json={"url": "http://127.0.0.1:9/a", "description": "A's"}
    )
    body: dict[str, Any] = await response.get_json()
    body["key"] = key
    source = await api.key("org-a", "source")
    data = {"connection_id": "A's connection", "patient": "Patient/p1"}
    published = await api.call(
        "POST", "/v1/events", source, json={"type": "records.sync.completed", "data": data}
    )
    body["event"] = (await published.get_json())["id"]
    [delivery] = await deliveries_seen_by(api, key)
    body["delivery"] = delivery["id"]
    # As if its retries ran out: a leaked redeliver, recover or enable would queue it again.
    async with transaction(api.app.extensions["tidings"].sessions) as session:
        await session.exec(
            sa.update(DeliveryRow)
            .where(col(DeliveryRow.id) == delivery["id"])
            .values(status="failed", next_attempt_at=None)
        )
    created = await api.call("POST", "/fhir/Subscription", key, json=SUBSCRIPTION)
    body["subscription"] = (await created.get_json())["id"]
    return body


async def deliveries_seen_by(api: Api, key: str, **params: str) -> list[dict[str, Any]]:
    response = await api.call("GET", "/v1/deliveries", key, query_string=params)
    assert response.status_code == 200
    found: list[dict[str, Any]] = (await response.get_json())["data"]
    return found


@pytest.mark.parametrize(("method", "path", "body"), OBJECT_ROUTES)
@pytest.mark.parametrize("role", ["partner", "reader", "source"])
async def test_another_organization_gets_404(
    api: Api, endpoint_of_a: dict[str, Any], role: str, method: str, path: str, body: Any
) -> None:
    intruder = await api.key("org-b", role)
    logged_before = await deliveries_seen_by(api, endpoint_of_a["key"])
    api.clock.advance(60)  # anything the intruder's call changed would carry a new time
    target = path.format(
        endpoint=endpoint_of_a["id"],
        event=endpoint_of_a["event"],
        delivery=endpoint_of_a["delivery"],
        subscription=endpoint_of_a["subscription"],
    )
    response = await api.call(method, target, intruder, json=body)
    assert response.status_code in (404, 403)
    if role == "partner" or (role == "reader" and method == "GET" and "secret" not in path):
        assert response.status_code == 404
    text = await response.get_data(as_text=True)
    assert endpoint_of_a["secret"] not in text and "A's" not in text
    owner_view = await api.call("GET", f"/v1/endpoints/{endpoint_of_a['id']}", endpoint_of_a["key"])
    assert owner_view.status_code == 200
    assert (await owner_view.get_json())["description"] == "A's"
    secret = await api.call(
        "GET", f"/v1/endpoints/{endpoint_of_a['id']}/secret", endpoint_of_a["key"]
    )
    assert (await secret.get_json())["secret"] == endpoint_of_a["secret"]
    assert await deliveries_seen_by(api, endpoint_of_a["key"]) == logged_before
    attempts = await api.call(
        "GET", f"/v1/deliveries/{endpoint_of_a['delivery']}", endpoint_of_a["key"]
    )
    assert (await attempts.get_json())["attempts"] == []


async def test_lists_show_only_the_callers_organization(
    api: Api, endpoint_of_a: dict[str, Any]
) -> None:
    intruder = await api.key("org-b")
    own = await (
        await api.call("POST", "/v1/endpoints", intruder, json={"url": "http://127.0.0.1:9/b"})
    ).get_json()
    listed = await (await api.call("GET", "/v1/endpoints", intruder)).get_json()
    assert [item["id"] for item in listed["data"]] == [own["id"]]
    events = await (await api.call("GET", "/v1/events", intruder)).get_json()
    assert events["data"] == []


@pytest.mark.parametrize("role", ["partner", "reader"])
async def test_fhir_searches_show_only_the_callers_organization(
    api: Api, endpoint_of_a: dict[str, Any], role: str
) -> None:
    """Subscriptions (every status, every url) and the attempt log as AuditEvents."""
    owner = endpoint_of_a["key"]
    seen_by_owner = await (await api.call("GET", "/fhir/Subscription", owner)).get_json()
    assert [e["resource"]["id"] for e in seen_by_owner["entry"]] == [
        endpoint_of_a["subscription"]
    ], "the search finds A's Subscription for A"
    intruder = await api.key("org-b", role)
    for query in ("", "?status=requested", "?url=http://127.0.0.1:9/s"):
        response = await api.call("GET", f"/fhir/Subscription{query}", intruder)
        assert response.status_code == 200, query
        body = await response.get_json()
        assert body.get("entry", []) == [] and "A's" not in json.dumps(body), query
    async with transaction(api.app.extensions["tidings"].sessions) as session:
        session.add(  # an attempt of A's delivery, logged
            AttemptRow(
                id="att_a",
                delivery_id=endpoint_of_a["delivery"],
                endpoint_id=endpoint_of_a["id"],
                attempted_at=api.clock(),
                status_code=500,
                response_excerpt="A's receiver failed",
            )
        )
    owner_log = await (await api.call("GET", "/fhir/AuditEvent", owner)).get_json()
    assert len(owner_log["entry"]) == 1, "the search finds A's attempt for A"
    for query in ("", "?outcome=4", "?outcome=8", f"?entity=Endpoint/{endpoint_of_a['id']}"):
        response = await api.call("GET", f"/fhir/AuditEvent{query}", intruder)
        assert response.status_code == 200, query
        body = await response.get_json()
        assert body.get("entry", []) == [] and "A's" not in json.dumps(body), query


@pytest.mark.parametrize("role", ["partner", "reader"])
async def test_delivery_lists_never_show_another_organization(
    api: Api, endpoint_of_a: dict[str, Any], role: str
) -> None:
    intruder = await api.key("org-b", role)
    for params in (
        {},
        {"endpoint_id": endpoint_of_a["id"]},
        {"event_id": endpoint_of_a["event"]},
        {"organization": "org-a"},
        {"status": "failed"},
    ):
        assert await deliveries_seen_by(api, intruder, **params) == []
    admin = await api.key("ops", "admin")
    [seen] = await deliveries_seen_by(api, admin, organization="org-a")
    assert seen["id"] == endpoint_of_a["delivery"]


async def test_admins_see_every_organization(api: Api, endpoint_of_a: dict[str, Any]) -> None:
    admin = await api.key("ops", "admin")
    response = await api.call("GET", f"/v1/endpoints/{endpoint_of_a['id']}", admin)
    assert response.status_code == 200
    created = await api.call(
        "POST",
        "/v1/endpoints",
        admin,
        json={"url": "http://127.0.0.1:9/c", "organization": "org-c"},
    )
    assert (await created.get_json())["organization"] == "org-c"


# /v1 and /fhir routes with an id that are not one organization's object, and why.
NOT_TENANT_OBJECTS = {
    ("GET", "/v1/event-types/{name}"): "the event catalog is shared by every organization",
    ("GET", "/fhir/SubscriptionTopic/{topic_id}"): "the catalog, as SubscriptionTopics",
    (
        "GET",
        "/v1/upstreams/{upstream_id}",
    ): "admin keys only (tests/integration/test_api_upstreams)",
    ("DELETE", "/v1/upstreams/{upstream_id}"): "admin keys only",
}
PLACEHOLDERS = {
    "endpoint_id": "endpoint",
    "event_id": "event",
    "delivery_id": "delivery",
    "subscription_id": "subscription",
}


def test_every_route_with_an_id_is_in_the_matrix(api: Api) -> None:
    """A new /v1 or /fhir route that takes an id fails here until it is added to
    OBJECT_ROUTES."""
    covered = {(method, path) for method, path, _ in OBJECT_ROUTES}
    missing = []
    for rule in api.app.url_map.iter_rules():
        if not rule.rule.startswith(("/v1/", "/fhir/")) or not rule.arguments:
            continue
        path = rule.rule
        for argument in rule.arguments:
            path = path.replace(f"<{argument}>", "{" + PLACEHOLDERS.get(argument, argument) + "}")
        for method in sorted(set(rule.methods or ()) - {"HEAD", "OPTIONS"}):
            if (method, path) not in covered and (method, path) not in NOT_TENANT_OBJECTS:
                missing.append(f"{method} {path}")
    assert missing == [], "add these to OBJECT_ROUTES (or to NOT_TENANT_OBJECTS, with the reason)"

"""Pushed FHIR bodies into resource changes: bare resources, Bundles, notifications, refusals."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app.domain.errors import ValidationFailed
from app.domain.models import Interaction, ResourceChange
from app.ingest.change_events import occurrence_times
from app.ingest.fhir_push import PushedChange, parse_push, signature_matches

CREATE, UPDATE, DELETE = Interaction.CREATE, Interaction.UPDATE, Interaction.DELETE


def patient(version: str | None = "1", **fields: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "Patient", "id": "p1", **fields}
    if version is not None:
        resource["meta"] = {"versionId": version}
    return resource


def changes_of(body: Any, headers: dict[str, str] | None = None) -> list[ResourceChange]:
    return [pushed.change for pushed in parse_push(body, headers or {})]


def summary(changes: list[ResourceChange]) -> list[tuple[str, str | None, str]]:
    return [(c.reference, c.version_id, c.interaction.value) for c in changes]


def refusal(body: Any, headers: dict[str, str] | None = None) -> list[tuple[str, str]]:
    with pytest.raises(ValidationFailed) as caught:
        parse_push(body, headers or {})
    return [(p.pointer, p.detail) for p in caught.value.problems]


@pytest.mark.parametrize(
    ("resource", "headers", "expected"),
    [
        (patient("1"), {}, CREATE),
        (patient("2"), {}, UPDATE),
        (patient(None), {}, UPDATE),
        (patient("7"), {"X-Tidings-Interaction": "create"}, CREATE),
        (patient("1"), {"x-medplum-interaction": "update"}, UPDATE),
        (
            patient("1"),
            {"X-Tidings-Interaction": "update", "X-Medplum-Interaction": "delete"},
            UPDATE,
        ),
        (patient("3"), {"X-Medplum-Deleted-Resource": "Patient/p1"}, DELETE),
    ],
)
def test_bare_resource_interaction(
    resource: dict[str, Any], headers: dict[str, str], expected: Interaction
) -> None:
    [change] = changes_of(resource, headers)
    assert change.interaction is expected
    assert change.reference == "Patient/p1"
    if expected is DELETE:
        assert change.resource is None and change.previous == resource
    else:
        assert change.resource == resource


def test_medplum_delete_with_an_empty_body() -> None:
    headers = {"X-Medplum-Interaction": "delete", "X-Medplum-Deleted-Resource": "Patient/p9"}
    [change] = changes_of({}, headers)
    assert (change.reference, change.interaction, change.resource) == ("Patient/p9", DELETE, None)


@pytest.mark.parametrize(
    ("body", "headers", "pointer", "words"),
    [
        ({"id": "x"}, {}, "/resourceType", "not a FHIR resource"),
        ({}, {}, "/resourceType", "not a FHIR resource"),
        ([1, 2], {}, "", "JSON object"),
        ({"resourceType": "Spaceship", "id": "s1"}, {}, "/resourceType", "'Spaceship'"),
        ({"resourceType": "Patient"}, {}, "/id", "needs an id"),
        ({"resourceType": "Patient", "id": "a b"}, {}, "/id", "needs an id"),
        (patient(), {"X-Tidings-Interaction": "merge"}, "header:X-Tidings-Interaction", "merge"),
        ({"resourceType": "Bundle", "type": "searchset"}, {}, "/type", "searchset"),
        ({"resourceType": "Bundle", "type": "batch", "entry": {}}, {}, "/entry", "list"),
        (
            {},
            {"X-Medplum-Deleted-Resource": "Nope/1"},
            "header:X-Medplum-Deleted-Resource",
            "Type/id",
        ),
    ],
)
def test_refused_bodies_name_the_field(
    body: Any, headers: dict[str, str], pointer: str, words: str
) -> None:
    [(found_pointer, detail)] = refusal(body, headers)
    assert found_pointer == pointer
    assert words in detail


def entry(method: str, url: str, resource: dict[str, Any] | None = None, **extra: Any) -> Any:
    item: dict[str, Any] = {"request": {"method": method, "url": url}, **extra}
    if resource is not None:
        item["resource"] = resource
    return item


def encounter(version: str, status: str, updated: str) -> dict[str, Any]:
    meta = {"versionId": version, "lastUpdated": updated}
    return {"resourceType": "Encounter", "id": "e1", "meta": meta, "status": status}


def test_history_bundle_is_read_oldest_first_with_previous_versions() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "history",
        "entry": [
            entry(
                "DELETE",
                "Encounter/e1",
                response={"etag": 'W/"3"', "lastModified": "2026-01-01T10:03:00Z"},
            ),
            entry("PUT", "Encounter/e1", encounter("2", "finished", "2026-01-01T10:02:00Z")),
            entry("POST", "Encounter", encounter("1", "in-progress", "2026-01-01T10:01:00Z")),
        ],
    }
    changes = changes_of(bundle, {})
    assert summary(changes) == [
        ("Encounter/e1", "1", "create"),
        ("Encounter/e1", "2", "update"),
        ("Encounter/e1", "3", "delete"),
    ]
    assert changes[0].previous is None
    assert changes[1].previous is not None and changes[1].previous["status"] == "in-progress"
    assert changes[2].resource is None
    assert changes[2].previous is not None and changes[2].previous["status"] == "finished"


def test_history_without_times_is_taken_as_newest_first() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "history",
        "entry": [
            entry("PUT", "Patient/p1", patient("2")),
            entry("POST", "Patient", patient("1")),
        ],
    }
    assert summary(changes_of(bundle, {})) == [
        ("Patient/p1", "1", "create"),
        ("Patient/p1", "2", "update"),
    ]


@pytest.mark.parametrize("kind", ["transaction", "batch"])
def test_transaction_and_batch_map_methods(kind: str) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": kind,
        "entry": [
            entry("POST", "Patient", patient("1")),
            entry("PUT", "Observation/o1", {"resourceType": "Observation", "id": "o1"}),
            entry("PATCH", "Encounter/e1", {"resourceType": "Binary", "id": "patch"}),
            entry("DELETE", "Condition/c1/_history/4"),
            entry("GET", "Patient/p1"),
        ],
    }
    changes = changes_of(bundle, {})
    assert summary(changes) == [
        ("Patient/p1", "1", "create"),
        ("Observation/o1", None, "update"),
        ("Encounter/e1", None, "update"),
        ("Condition/c1", "4", "delete"),
    ]
    assert changes[2].resource is None  # the patch document is not the resource


R4_STATUS = {
    "fullUrl": "urn:uuid:292d3c72-edc1-4d8a-afaa-d85e19c7f563",
    "resource": {
        "resourceType": "Parameters",
        "meta": {
            "profile": [
                "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
                "backport-subscription-status-r4"
            ]
        },
        "parameter": [
            {"name": "subscription", "valueReference": {"reference": "Subscription/admission"}},
            {"name": "status", "valueCode": "active"},
            {"name": "type", "valueCode": "event-notification"},
        ],
    },
    "request": {"method": "GET", "url": "https://example.org/fhir/Subscription/admission/$status"},
    "response": {"status": "200"},
}
R5_STATUS = {"resource": {"resourceType": "SubscriptionStatus", "type": "event-notification"}}
ID_ONLY = {
    "fullUrl": "https://example.org/fhir/Encounter/86009987-eabe-42bf",
    "request": {"method": "PUT", "url": "https://example.org/fhir/Encounter/86009987-eabe-42bf"},
    "response": {"status": "200"},
}
FULL = {
    "fullUrl": "https://example.org/fhir/Encounter/e2",
    "resource": {"resourceType": "Encounter", "id": "e2", "meta": {"versionId": "1"}},
    "request": {"method": "POST", "url": "Encounter"},
    "response": {"status": "201"},
}


@pytest.mark.parametrize(
    ("kind", "status"),
    [("history", R4_STATUS), ("history", R5_STATUS), ("subscription-notification", R5_STATUS)],
)
def test_notifications_skip_the_status_and_read_both_content_levels(
    kind: str, status: dict[str, Any]
) -> None:
    bundle = {"resourceType": "Bundle", "type": kind, "entry": [status, ID_ONLY, FULL]}
    changes = changes_of(bundle, {})
    assert summary(changes) == [
        ("Encounter/86009987-eabe-42bf", None, "update"),
        ("Encounter/e2", "1", "create"),
    ]
    assert changes[0].resource is None


def test_a_heartbeat_has_no_changes() -> None:
    bundle = {"resourceType": "Bundle", "type": "history", "entry": [R4_STATUS]}
    assert changes_of(bundle, {}) == []


def test_one_bad_entry_refuses_the_bundle_and_names_each_bad_entry() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            entry("POST", "Patient", patient("1")),
            entry("PUT", "Patient/p1", {"resourceType": "Patient", "id": "p1"}),
            entry("PUT", "Spaceship/s1", {"resourceType": "Spaceship", "id": "s1"}),
            entry("POST", "Patient", {"resourceType": "Patient"}),
            entry("DELETE", "urn:uuid:1234"),
            entry("MOVE", "Patient/p1"),
            "not an entry",
        ],
    }
    assert [pointer for pointer, _ in refusal(bundle)] == [
        "/entry/2/resource/resourceType",
        "/entry/3/resource/id",
        "/entry/4/request/url",
        "/entry/5/request/method",
        "/entry/6",
    ]


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("post", Interaction.CREATE),
        ("Put", Interaction.UPDATE),
        ("delete", Interaction.DELETE),
        ("get", None),
        ("head", None),
    ],
)
def test_request_methods_are_read_in_any_case(method: str, expected: Interaction | None) -> None:
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [entry(method, "Patient/p1")]}
    assert [item.change.interaction for item in parse_push(bundle, {})] == (
        [] if expected is None else [expected]
    )


@pytest.mark.parametrize(
    ("method", "detail"),
    [
        ("MOVE", "'MOVE' is not POST, PUT, PATCH or DELETE"),
        (7, "7 is not POST, PUT, PATCH or DELETE"),
        ("", "'' is not POST, PUT, PATCH or DELETE"),
    ],
)
def test_an_unknown_request_method_is_refused_by_name(method: Any, detail: str) -> None:
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [entry(method, "Patient/p1")]}
    assert refusal(bundle) == [("/entry/0/request/method", detail)]


def test_signature_is_a_hex_hmac_of_the_exact_body() -> None:
    body, secret = b'{"resourceType":"Patient"}', "medplum-subscription-secret"
    good = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    assert signature_matches(body, secret, good)
    assert signature_matches(body, secret, good.upper())
    assert not signature_matches(body + b" ", secret, good)
    assert not signature_matches(body, secret, None)
    assert not signature_matches(body, "another-secret-entirely", good)


def test_changes_carry_their_time_and_push_times_never_run_backwards() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "history",
        "entry": [
            entry("DELETE", "Patient/p1", response={"lastModified": "2026-01-01T10:05:00Z"}),
            entry("PUT", "Patient/p1", patient("2")),
        ],
    }
    pushed = parse_push(bundle, {})
    deleted_at = datetime(2026, 1, 1, 10, 5, tzinfo=UTC)
    assert [item.moment for item in pushed] == [None, deleted_at]
    received = datetime(2026, 1, 1, 12, tzinfo=UTC)
    assert occurrence_times(pushed, received) == [received, received + timedelta(microseconds=1)]
    earlier = datetime(2026, 1, 1, 9, tzinfo=UTC)
    timed = [PushedChange(item.change, earlier) for item in pushed]
    assert occurrence_times(timed, received) == [earlier, earlier + timedelta(microseconds=1)]
    [bare] = parse_push(
        patient(None, meta={"versionId": "1", "lastUpdated": "2026-01-01T09:00:00Z"}), {}
    )
    assert bare.moment == earlier

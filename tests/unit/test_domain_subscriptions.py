"""FHIR Subscriptions as endpoint values, and the catalog as SubscriptionTopics."""

from __future__ import annotations

import importlib
from datetime import UTC, datetime
from typing import Any

import pytest

from app.domain.catalog import Catalog, load_catalog
from app.domain.event_types import EventType, Trigger
from app.domain.models import Event, Interaction
from app.domain.subscriptions import (
    INTERNAL_EVENT_TYPES,
    endpoint_values,
    event_type_for_topic,
    known_topics,
    notification_event,
    topic_names,
    topic_resource,
)
from app.fhir.subscriptions import SubscriptionError, SubscriptionSpec, parse_subscription

BASE = "https://tidings.example"
BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
MEDPLUM = "https://medplum.com/fhir/StructureDefinition/"
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog([])


def fhir_valid(resource: dict[str, Any], version: str) -> None:
    name = resource["resourceType"]
    package = "fhir.resources" if version == "R5" else "fhir.resources.R4B"
    getattr(importlib.import_module(f"{package}.{name.lower()}"), name).model_validate(resource)


def r4(criteria: str, *extensions: dict[str, Any], payload: bool = True) -> dict[str, Any]:
    channel: dict[str, Any] = {"type": "rest-hook", "endpoint": "https://hooks.example.org/in"}
    if payload:
        channel["payload"] = "application/fhir+json"
    resource = {"resourceType": "Subscription", "status": "requested", "reason": "watch"}
    return {**resource, "criteria": criteria, "channel": channel, "extension": list(extensions)}


def backport(topic: str, *filters: str) -> dict[str, Any]:
    extension = [{"url": BACKPORT + "backport-filter-criteria", "valueString": f} for f in filters]
    payload_content = {"url": BACKPORT + "backport-payload-content", "valueCode": "id-only"}
    return {
        "resourceType": "Subscription",
        "meta": {"profile": [BACKPORT + "backport-subscription"]},
        "status": "requested",
        "reason": "topic",
        "criteria": topic,
        "_criteria": {"extension": extension},
        "channel": {
            "type": "rest-hook",
            "endpoint": "https://hooks.example.org/in",
            "payload": "application/fhir+json",
            "_payload": {"extension": [payload_content]},
            "extension": [
                {"url": BACKPORT + "backport-heartbeat-period", "valueUnsignedInt": 3600}
            ],
        },
    }


def spec_for(catalog: Catalog, resource: dict[str, Any]) -> SubscriptionSpec:
    return parse_subscription(resource, topics=known_topics(catalog, BASE))


ENDPOINT_CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    (
        "r4-criteria",
        r4("Patient?gender=female"),
        {
            "event_types": ["patient.created", "patient.updated"],
            "filter": "Patient?gender=female",
            "content": "full-resource",
            "signature_scheme": "standard-webhooks",
            "payload_format": "fhir-notification",
            "fhir_version": "R4",
            "fhir_status": "requested",
            "description": "watch",
            "active": True,
        },
    ),
    (
        "medplum",
        r4(
            "Patient",
            {"url": MEDPLUM + "subscription-supported-interaction", "valueCode": "update"},
            {"url": MEDPLUM + "subscription-supported-interaction", "valueCode": "delete"},
            {"url": MEDPLUM + "fhir-path-criteria-expression", "valueString": "%current.active"},
            {"url": MEDPLUM + "subscription-max-attempts", "valueInteger": 5},
            {"url": MEDPLUM.replace("//", "//www.") + "subscription-secret", "valueString": "s"},
            payload=False,
        ),
        {
            "event_types": ["patient.updated", "patient.deleted"],
            "filter": "Patient",
            "content": "empty",
            "signature_scheme": "medplum",
            "fhirpath_criteria": "%current.active",
            "max_attempts": 5,
        },
    ),
    (
        "backport",
        backport(f"{BASE}/fhir/SubscriptionTopic/encounter.updated", "patient=Patient/1"),
        {
            "event_types": ["encounter.updated"],
            "filter": "Encounter?patient=Patient/1",
            "content": "id-only",
            "fhir_version": "R4-backport",
            "heartbeat_seconds": 3600,
        },
    ),
    (
        "backport-two-filters",
        backport(
            f"{BASE}/fhir/SubscriptionTopic/encounter.updated",
            "Encounter?patient=Patient/1",
            "status=finished",
        ),
        {"filter": "Encounter?patient=Patient/1&status=finished"},
    ),
    (
        "published-event-topic",
        backport(f"{BASE}/fhir/SubscriptionTopic/patient-flow.completed"),
        {"event_types": ["patient_flow.completed"], "filter": None},
    ),
]


@pytest.mark.parametrize(
    ("resource", "expected"),
    [case[1:] for case in ENDPOINT_CASES],
    ids=[case[0] for case in ENDPOINT_CASES],
)
def test_endpoint_values(
    catalog: Catalog, resource: dict[str, Any], expected: dict[str, Any]
) -> None:
    values = endpoint_values(spec_for(catalog, resource), catalog)
    assert {key: values[key] for key in expected} == expected
    assert values["url"] == "https://hooks.example.org/in"
    assert "s" not in (values["headers"] or {}).values()


def test_a_subscription_turned_off_is_an_inactive_endpoint(catalog: Catalog) -> None:
    values = endpoint_values(spec_for(catalog, {**r4("Patient"), "status": "off"}), catalog)
    assert (values["active"], values["fhir_status"]) == (False, "off")


def test_criteria_without_catalog_event_type() -> None:
    patient = Trigger(resource="Patient", interactions=frozenset({Interaction.CREATE}))
    small = Catalog([EventType(name="patient.created", triggers=(patient,))])
    spec = parse_subscription(r4("Patient"), topics={})
    with pytest.raises(SubscriptionError) as caught:
        endpoint_values(spec, small)
    assert caught.value.issues == [
        ("Subscription.criteria", "the catalog has no event type 'patient.updated'")
    ]


def test_filters_on_several_resource_types_are_refused() -> None:
    triggers = tuple(
        Trigger(resource=resource, interactions=frozenset({Interaction.UPDATE}))
        for resource in ("Encounter", "Patient")
    )
    catalog = Catalog([EventType(name="care.changed", triggers=triggers)])
    resource = backport(
        f"{BASE}/fhir/SubscriptionTopic/care.changed",
        "Encounter?status=finished",
        "Patient?active=true",
    )
    with pytest.raises(SubscriptionError) as caught:
        endpoint_values(spec_for(catalog, resource), catalog)
    assert caught.value.issues[0][0] == "Subscription.criteria.extension"


def test_known_topics(catalog: Catalog) -> None:
    topics = known_topics(catalog, BASE)
    assert topics[f"{BASE}/fhir/SubscriptionTopic/encounter.updated"] == ("Encounter",)
    assert topics[f"{BASE}/fhir/SubscriptionTopic/patient-flow.completed"] == ()
    assert len(topics) == len(catalog) - len(INTERNAL_EVENT_TYPES)
    assert not any(url.endswith(("handshake", "heartbeat")) for url in topics)


@pytest.mark.parametrize(
    ("canonical", "name"),
    [
        (f"{BASE}/fhir/SubscriptionTopic/patient-flow.completed", "patient_flow.completed"),
        (f"{BASE}/fhir/SubscriptionTopic/encounter.created|1.0", "encounter.created"),
        (f"{BASE}/fhir/SubscriptionTopic/nothing.here", None),
    ],
)
def test_event_type_for_topic(catalog: Catalog, canonical: str, name: str | None) -> None:
    found = event_type_for_topic(catalog, canonical)
    assert (found.name if found else None) == name


@pytest.mark.parametrize("version", ["R4B", "R5"])
def test_every_catalog_event_type_is_a_valid_topic(catalog: Catalog, version: Any) -> None:
    names = topic_names(catalog)
    for event_type in catalog:
        topic = topic_resource(event_type, base_url=BASE, version=version)
        fhir_valid(topic, version)
        assert names[topic["id"]] == event_type.name


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (
            Event("evt_1", "org", "patient.deleted", NOW, {"resourceType": "Patient", "id": "p1"}),
            ("Patient/p1", "delete", True),
        ),
        (
            Event("evt_2", "org", "patient_flow.completed", NOW, {"id": "flow"}, focus="Patient/9"),
            ("Patient/9", None, False),
        ),
        (
            Event(
                "evt_3",
                "org",
                "encounter.updated",
                NOW,
                {"resourceType": "Encounter", "id": "e1"},
                focus="Patient/9",
            ),
            ("Patient/9", "update", False),
        ),
    ],
    ids=["resource-event", "published-event", "focus-elsewhere"],
)
def test_notification_event(event: Event, expected: tuple[Any, ...]) -> None:
    notified = notification_event(event, 12)
    assert (notified.number, notified.timestamp) == (12, NOW)
    has_resource = notified.resource is not None
    assert (notified.focus_reference, notified.interaction, has_resource) == expected

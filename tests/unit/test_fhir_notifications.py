"""Notification Bundles per FHIR version, kind and content level; each validated by its version."""

from __future__ import annotations

import importlib
from datetime import UTC, datetime
from typing import Any

import pytest

from app.fhir.notifications import (
    R4_BUNDLE_PROFILE,
    R4_STATUS_PROFILE,
    NotificationEvent,
    build_notification,
    build_status_bundle,
)

BASE = "https://tidings.example"
TOPIC = "https://tidings.example/fhir/SubscriptionTopic/encounter.updated"
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
# Valid in R4 and R5 alike: Tidings holds R4 resources, an R5 Bundle carries them as they are.
OBSERVATION = {"resourceType": "Observation", "id": "obs-1", "status": "final",
               "code": {"text": "finished"}}  # fmt: skip
PATIENT = {"resourceType": "Patient", "id": "pat-1", "gender": "female"}
EVENTS = (
    NotificationEvent(7, NOW, "Observation/obs-1", OBSERVATION, "update", ("Patient/pat-1",)),
    NotificationEvent(8, NOW, "Patient/pat-1", PATIENT, "create"),
    NotificationEvent(9, NOW, "Patient/pat-2", None, "delete"),
)
VERSIONS = ("R4", "R4-backport", "R4B", "R5")
CONTENTS = ("empty", "id-only", "full-resource")


def fhir_valid(resource: dict[str, Any], version: str) -> None:
    """Validate with fhir.resources: R4B as R4's stand-in, the default models for R5."""
    name = resource["resourceType"]
    package = "fhir.resources" if version == "R5" else "fhir.resources.R4B"
    getattr(importlib.import_module(f"{package}.{name.lower()}"), name).model_validate(resource)


def notify(version: Any, content: Any = "id-only", kind: Any = "event-notification",
           events: Any = EVENTS, **overrides: Any) -> dict[str, Any]:  # fmt: skip
    arguments: dict[str, Any] = {
        "subscription_id": "ep_2Vx9abcdEFGH",
        "topic": TOPIC,
        "status": "active",
        "kind": kind,
        "events_since_start": 9,
        "events": events,
        "content": content,
        "base_url": BASE + "/",
        "bundle_id": "5f2c0b7e-2a8c-4f2e-9a51-1d7d6a3f0c11",
        "timestamp": NOW,
        **overrides,
    }
    return build_notification(version, **arguments)


def status_of(bundle: dict[str, Any]) -> dict[str, Any]:
    resource: dict[str, Any] = bundle["entry"][0]["resource"]
    return resource


def parameters(status: dict[str, Any]) -> dict[str, Any]:
    """Parameters as {name: value-or-parts}; repeated names as lists."""
    found: dict[str, Any] = {}
    for item in status["parameter"]:
        value = item.get("part") or next(v for k, v in item.items() if k.startswith("value"))
        found.setdefault(item["name"], []).append(value)
    return {name: values[0] if len(values) == 1 else values for name, values in found.items()}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("content", CONTENTS)
@pytest.mark.parametrize("kind", ["handshake", "heartbeat", "event-notification", "query-event"])
def test_every_bundle_is_valid_fhir(version: str, content: str, kind: str) -> None:
    bundle = notify(version, content, kind)
    fhir_valid(bundle, "R5" if version == "R5" else "R4")
    expected_type = "subscription-notification" if version == "R5" else "history"
    assert bundle["type"] == expected_type
    first = status_of(bundle)["resourceType"]
    assert first == ("Parameters" if version in ("R4", "R4-backport") else "SubscriptionStatus")


@pytest.mark.parametrize("version", ["R4", "R4B"])
@pytest.mark.parametrize("content", CONTENTS)
def test_history_entries_carry_request_and_response(version: str, content: str) -> None:
    bundle = notify(version, content)
    assert all("request" in entry and "response" in entry for entry in bundle["entry"])
    first = bundle["entry"][0]
    assert first["request"] == {
        "method": "GET",
        "url": f"{BASE}/fhir/Subscription/ep-2Vx9abcdEFGH/$status",
    }
    assert first["response"] == {"status": "200"}


def test_r5_entries_carry_no_response() -> None:
    bundle = notify("R5", "full-resource")
    assert all("response" not in entry for entry in bundle["entry"])
    assert "request" not in bundle["entry"][0]


def test_r4_event_notification_matches_the_ig_example_shape() -> None:
    bundle = notify("R4", "id-only", events=EVENTS[:1])
    assert bundle["meta"] == {"profile": [R4_BUNDLE_PROFILE]}
    status = status_of(bundle)
    assert status["meta"] == {"profile": [R4_STATUS_PROFILE]}
    assert [item["name"] for item in status["parameter"]] == [
        "subscription", "topic", "status", "type", "events-since-subscription-start",
        "notification-event",
    ]  # fmt: skip
    assert parameters(status)["notification-event"] == [
        {"name": "event-number", "valueString": "7"},
        {"name": "timestamp", "valueInstant": "2025-06-01T12:00:00Z"},
        {"name": "focus", "valueReference": {"reference": "Observation/obs-1"}},
        {"name": "additional-context", "valueReference": {"reference": "Patient/pat-1"}},
    ]
    assert parameters(status)["events-since-subscription-start"] == "9"


@pytest.mark.parametrize("version", VERSIONS)
def test_empty_sends_numbers_without_focus_or_topic(version: str) -> None:
    bundle = notify(version, "empty")
    assert len(bundle["entry"]) == 1
    text = repr(status_of(bundle))
    assert "Observation/obs-1" not in text and TOPIC not in text
    assert "'7'" in text  # the event numbers still let the client see gaps


@pytest.mark.parametrize("version", VERSIONS)
def test_id_only_has_references_and_no_resources(version: str) -> None:
    bundle = notify(version, "id-only")
    events = bundle["entry"][1:]
    references = ["Observation/obs-1", "Patient/pat-1", "Patient/pat-2"]
    assert [entry["fullUrl"] for entry in events] == [f"{BASE}/fhir/{r}" for r in references]
    assert all("resource" not in entry for entry in events)
    assert "finished" not in repr(bundle) and "female" not in repr(bundle)


@pytest.mark.parametrize("version", VERSIONS)
def test_full_resource_carries_the_resources_but_not_on_delete(version: str) -> None:
    events = notify(version, "full-resource")["entry"][1:]
    assert [entry.get("resource") for entry in events] == [OBSERVATION, PATIENT, None]
    requests = [entry["request"] for entry in events]
    assert requests == [
        {"method": "PUT", "url": "Observation/obs-1"},
        {"method": "POST", "url": "Patient"},
        {"method": "DELETE", "url": "Patient/pat-2"},
    ]


def test_r5_keeps_one_entry_per_resource() -> None:
    twice = (EVENTS[1], NotificationEvent(10, NOW, "Patient/pat-1", PATIENT, "update"))
    bundle = notify("R5", "full-resource", events=twice)
    assert len(bundle["entry"]) == 2
    assert bundle["entry"][1]["request"]["method"] == "PUT"
    events = status_of(bundle)["notificationEvent"]
    assert [event["eventNumber"] for event in events] == ["8", "10"]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("kind", ["handshake", "heartbeat"])
def test_handshake_and_heartbeat_have_no_events(version: str, kind: str) -> None:
    status = "requested" if kind == "handshake" else "active"
    bundle = notify(version, kind=kind, status=status, events_since_start=0)
    assert len(bundle["entry"]) == 1
    resource = status_of(bundle)
    assert "notificationEvent" not in resource and "notification-event" not in repr(resource)
    assert status in repr(resource) and kind in repr(resource)


def test_absolute_focus_reference_is_the_full_url() -> None:
    absolute = NotificationEvent(1, NOW, "https://ehr.example/fhir/Patient/9", None, "update")
    bundle = notify("R4", events=[absolute])
    assert bundle["entry"][1]["fullUrl"] == "https://ehr.example/fhir/Patient/9"
    assert bundle["entry"][1]["request"] == {"method": "PUT", "url": "Patient/9"}


@pytest.mark.parametrize("version", VERSIONS)
def test_error_is_reported_in_the_status(version: str) -> None:
    bundle = notify(version, kind="heartbeat", status="error", error="no-response")
    fhir_valid(bundle, "R5" if version == "R5" else "R4")
    assert "no-response" in repr(status_of(bundle))


@pytest.mark.parametrize("version", VERSIONS)
def test_status_answer_is_a_searchset(version: str) -> None:
    bundle = build_status_bundle(
        version,  # type: ignore[arg-type]
        subscription_id="ep_2Vx9abcdEFGH",
        topic=TOPIC,
        status="active",
        events_since_start=42,
        base_url=BASE,
        bundle_id="status-1",
        timestamp=NOW,
    )
    fhir_valid(bundle, "R5" if version == "R5" else "R4")
    assert (bundle["type"], bundle["total"]) == ("searchset", 1)
    entry = bundle["entry"][0]
    assert entry["search"] == {"mode": "match"} and "request" not in entry
    assert "query-status" in repr(entry["resource"]) and "'42'" in repr(entry["resource"])


def test_criteria_based_subscription_has_no_topic() -> None:
    bundle = notify("R4", "full-resource", topic=None)
    assert "topic" not in parameters(status_of(bundle))
    fhir_valid(bundle, "R4")

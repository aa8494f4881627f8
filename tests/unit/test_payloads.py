"""Payload bodies per format and content level; every FHIR body validates with fhir.resources."""

from __future__ import annotations

import importlib
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from app import __version__
from app.domain.catalog import Catalog, load_catalog
from app.domain.event_types import EventType
from app.domain.models import ContentLevel, Endpoint, Event, PayloadFormat
from app.domain.payloads import (
    Payload,
    UnsupportedPayloadFormatError,
    body_key,
    build_payload,
)

PUBLIC_URL = "https://tidings.example.org"
MESSAGE_ID = "0b1e7c1a-4a0e-4a56-9a1b-9a3f4a2c2d10"
WHEN = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
PERSON_ID = "7d3e9c2a-1111-4c3b-8f00-2b6f0e1a9b77"
ENCOUNTER = {
    "resourceType": "Encounter",
    "id": "enc-1",
    "meta": {"versionId": "3"},
    "status": "finished",
    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
    "subject": {"reference": "Patient/pat-1", "display": "Peter Chalmers"},
}
PHI = ("Peter Chalmers", "finished", "AMB")
EXTERNAL_ID_URL = f"{PUBLIC_URL}/fhir/StructureDefinition/external-identifier"
DOWNLOAD_URL = f"{PUBLIC_URL}/fhir/StructureDefinition/download-url"
FHIR_FORMATS = (PayloadFormat.MESSAGE_HEADER, PayloadFormat.MESSAGE_BUNDLE)


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog([])


def event_type(catalog: Catalog, name: str) -> EventType:
    found = catalog.get(name)
    assert found is not None
    return found


def endpoint(**overrides: Any) -> Endpoint:
    fields: dict[str, Any] = {
        "id": "ep_1",
        "organization_id": "org_a",
        "url": "https://receiver.example.org/hooks/fhir",
    }
    return Endpoint(**(fields | overrides))


def resource_event() -> Event:
    return Event(
        id="evt_01",
        organization_id="org_a",
        type="encounter.updated",
        occurred_at=WHEN,
        data=ENCOUNTER,
        focus="Encounter/enc-1",
    )


def identity_event(name: str, **data: Any) -> Event:
    return Event(
        id="evt_02",
        organization_id="org_a",
        type=name,
        occurred_at=WHEN,
        data={
            "person_id": PERSON_ID,
            "external_identifier": {"system": "https://partner.example.org/users", "value": "u-1"},
            **data,
        },
        focus=f"Person/{PERSON_ID}",
    )


def build(catalog: Catalog, event: Event, target: Endpoint) -> Payload:
    return build_payload(
        event,
        target,
        event_type(catalog, event.type),
        public_url=PUBLIC_URL,
        message_id=MESSAGE_ID,
    )


def fhir_valid(body: dict[str, Any]) -> None:
    """Validate a FHIR body with fhir.resources (R4B as R4's stand-in); raises if invalid."""
    resource_type = body["resourceType"]
    module = importlib.import_module(f"fhir.resources.R4B.{resource_type.lower()}")
    getattr(module, resource_type).model_validate(body)


def parsed(payload: Payload) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(payload.body)
    compact = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    assert payload.body == compact
    if payload.content_type == "application/fhir+json":
        fhir_valid(body)
    return body


def test_user_delete_completed_is_a_bwell_style_message_header(catalog: Catalog) -> None:
    target = endpoint(url="https://user:secret@receiver.example.org/hooks/fhir")
    payload = build(catalog, identity_event("user-delete-completed"), target)
    assert payload.content_type == "application/fhir+json"
    header = parsed(payload)
    assert header == {
        "resourceType": "MessageHeader",
        "id": MESSAGE_ID,
        "extension": [
            {
                "url": EXTERNAL_ID_URL,
                "valueIdentifier": {"system": "https://partner.example.org/users", "value": "u-1"},
            }
        ],
        "eventCoding": {
            "system": f"{PUBLIC_URL}/fhir/CodeSystem/events",
            "code": "user-delete-completed",
        },
        "destination": [{"endpoint": "https://receiver.example.org/hooks/fhir"}],
        "source": {
            "name": "tidings",
            "software": "Tidings",
            "version": __version__,
            "endpoint": f"{PUBLIC_URL}/fhir",
        },
        "focus": [{"reference": f"Person/{PERSON_ID}"}],
    }


def test_data_export_completed_carries_both_extensions(catalog: Catalog) -> None:
    url = "https://exports.example.org/e/1.zip"
    event = identity_event("data-export-completed", download_url=url)
    header = parsed(build(catalog, event, endpoint()))
    assert header["eventCoding"]["code"] == "data-export-completed"
    assert header["extension"] == [
        {
            "url": EXTERNAL_ID_URL,
            "valueIdentifier": {"system": "https://partner.example.org/users", "value": "u-1"},
        },
        {"url": DOWNLOAD_URL, "valueUrl": url},
    ]


def test_event_coding_from_the_catalog(tmp_path: Any) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[[event_types]]\nname = "lab.ready"\npayload_format = "message-header"\n'
        'event_coding = { system = "http://example.org/events", code = "LAB-READY" }\n'
    )
    catalog = load_catalog([path])
    event = Event("evt_3", "org_a", "lab.ready", WHEN, data={}, focus="DiagnosticReport/d1")
    header = parsed(build(catalog, event, endpoint()))
    assert header["eventCoding"] == {"system": "http://example.org/events", "code": "LAB-READY"}
    assert header["focus"] == [{"reference": "DiagnosticReport/d1"}]
    assert "extension" not in header


def test_patient_flow_envelope_carries_the_flow(catalog: Catalog) -> None:
    flow = {"id": "flow_1", "patient": "Patient/1", "status": "completed", "completed_at": "x"}
    event = Event("evt_4", "org_a", "patient_flow.completed", WHEN, data=flow)
    payload = build(catalog, event, endpoint())
    assert payload.content_type == "application/json"
    assert parsed(payload) == {
        "id": "evt_4",
        "type": "patient_flow.completed",
        "timestamp": "2025-06-01T12:00:00Z",
        "data": {"object": flow},
    }


STUB = {"resourceType": "Encounter", "id": "enc-1"}


@pytest.mark.parametrize(
    ("payload_format", "content", "expected"),
    [
        (
            PayloadFormat.ENVELOPE,
            ContentLevel.FULL_RESOURCE,
            {
                "id": "evt_01",
                "type": "encounter.updated",
                "timestamp": "2025-06-01T12:00:00Z",
                "data": {"object": ENCOUNTER},
            },
        ),
        (
            PayloadFormat.ENVELOPE,
            ContentLevel.ID_ONLY,
            {
                "id": "evt_01",
                "type": "encounter.updated",
                "timestamp": "2025-06-01T12:00:00Z",
                "data": {"object": STUB},
            },
        ),
        (
            PayloadFormat.ENVELOPE,
            ContentLevel.EMPTY,
            {
                "id": "evt_01",
                "type": "encounter.updated",
                "timestamp": "2025-06-01T12:00:00Z",
                "data": {},
            },
        ),
        (
            PayloadFormat.SIMPLE,
            ContentLevel.FULL_RESOURCE,
            {"id": "evt_01", "event": "encounter.updated", "payload": ENCOUNTER},
        ),
        (
            PayloadFormat.SIMPLE,
            ContentLevel.ID_ONLY,
            {"id": "evt_01", "event": "encounter.updated", "payload": STUB},
        ),
        (
            PayloadFormat.SIMPLE,
            ContentLevel.EMPTY,
            {"id": "evt_01", "event": "encounter.updated", "payload": {}},
        ),
    ],
)
def test_json_formats_by_content_level(
    catalog: Catalog,
    payload_format: PayloadFormat,
    content: ContentLevel,
    expected: dict[str, Any],
) -> None:
    target = endpoint(payload_format=payload_format, content=content)
    payload = build(catalog, resource_event(), target)
    assert payload.content_type == "application/json"
    assert parsed(payload) == expected


def test_message_bundle_full_resource(catalog: Catalog) -> None:
    target = endpoint(payload_format=PayloadFormat.MESSAGE_BUNDLE)
    bundle = parsed(build(catalog, resource_event(), target))
    assert bundle["type"] == "message"
    assert bundle["id"] == MESSAGE_ID
    assert bundle["timestamp"] == "2025-06-01T12:00:00Z"
    header_entry, focus_entry = bundle["entry"]
    assert header_entry["fullUrl"] == f"urn:uuid:{MESSAGE_ID}"
    header = header_entry["resource"]
    assert header["resourceType"] == "MessageHeader"
    assert header["eventCoding"]["code"] == "encounter.updated"
    assert header["focus"] == [{"reference": focus_entry["fullUrl"]}]
    assert focus_entry["fullUrl"].startswith("urn:uuid:")
    assert focus_entry["resource"] == ENCOUNTER
    assert all("request" not in entry and "response" not in entry for entry in bundle["entry"])


@pytest.mark.parametrize(
    ("content", "focus"),
    [
        (ContentLevel.ID_ONLY, [{"reference": "Encounter/enc-1"}]),
        (ContentLevel.EMPTY, None),
    ],
)
def test_message_bundle_without_resource_body(
    catalog: Catalog, content: ContentLevel, focus: list[dict[str, str]] | None
) -> None:
    target = endpoint(payload_format=PayloadFormat.MESSAGE_BUNDLE, content=content)
    bundle = parsed(build(catalog, resource_event(), target))
    (header_entry,) = bundle["entry"]
    assert header_entry["resource"].get("focus") == focus


def test_message_bundle_for_published_event_has_header_only(catalog: Catalog) -> None:
    target = endpoint(payload_format=PayloadFormat.MESSAGE_BUNDLE)
    bundle = parsed(build(catalog, identity_event("user-delete-completed"), target))
    (header_entry,) = bundle["entry"]
    header = header_entry["resource"]
    assert header["focus"] == [{"reference": f"Person/{PERSON_ID}"}]
    assert header["extension"][0]["url"] == EXTERNAL_ID_URL


@pytest.mark.parametrize(
    "payload_format", [*FHIR_FORMATS, PayloadFormat.ENVELOPE, PayloadFormat.SIMPLE]
)
@pytest.mark.parametrize("content", [ContentLevel.ID_ONLY, ContentLevel.EMPTY])
def test_no_resource_body_leaves_below_full_content(
    catalog: Catalog, payload_format: PayloadFormat, content: ContentLevel
) -> None:
    target = endpoint(payload_format=payload_format, content=content)
    payload = build(catalog, resource_event(), target)
    parsed(payload)
    for value in PHI:
        assert value.encode() not in payload.body


@pytest.mark.parametrize("payload_format", FHIR_FORMATS)
def test_empty_content_drops_focus_and_extensions(
    catalog: Catalog, payload_format: PayloadFormat
) -> None:
    target = endpoint(payload_format=payload_format, content=ContentLevel.EMPTY)
    payload = build(catalog, identity_event("user-delete-completed"), target)
    parsed(payload)
    assert PERSON_ID.encode() not in payload.body
    assert b"u-1" not in payload.body


@pytest.mark.parametrize(
    ("endpoint_format", "content_type", "first_key"),
    [
        (None, "application/fhir+json", "resourceType"),
        (PayloadFormat.ENVELOPE, "application/json", "id"),
        (PayloadFormat.SIMPLE, "application/json", "id"),
        (PayloadFormat.MESSAGE_BUNDLE, "application/fhir+json", "resourceType"),
    ],
)
def test_endpoint_format_overrides_the_catalog_default(
    catalog: Catalog, endpoint_format: PayloadFormat | None, content_type: str, first_key: str
) -> None:
    target = endpoint(payload_format=endpoint_format)
    payload = build(catalog, identity_event("user-delete-completed"), target)
    assert payload.content_type == content_type
    assert next(iter(parsed(payload))) == first_key


def test_message_header_for_a_non_uuid_message_id_is_still_valid(catalog: Catalog) -> None:
    target = endpoint(payload_format=PayloadFormat.MESSAGE_BUNDLE)
    payload = build_payload(
        resource_event(),
        target,
        event_type(catalog, "encounter.updated"),
        public_url=PUBLIC_URL + "/",
        message_id="msg-42",
    )
    bundle = parsed(payload)
    assert bundle["entry"][0]["fullUrl"].startswith("urn:uuid:")
    assert bundle["entry"][0]["resource"]["source"]["endpoint"] == f"{PUBLIC_URL}/fhir"


def test_fhir_notification_is_not_built_here(catalog: Catalog) -> None:
    target = endpoint(payload_format=PayloadFormat.FHIR_NOTIFICATION)
    with pytest.raises(UnsupportedPayloadFormatError):
        build(catalog, resource_event(), target)


# Every endpoint field, each set to a value other than the default one.
OTHER_ENDPOINT_VALUES: dict[str, Any] = {
    "id": "ep_2",
    "organization_id": "org_b",
    "url": "https://other.example.org/hooks",
    "event_types": ("encounter.*",),
    "account_id": "acc-1",
    "filter": "Encounter?status=finished",
    "content": ContentLevel.ID_ONLY,
    "signature_header": "X-Signature",
    "headers": {"X-Tenant": "t1"},
    "active": False,
    "timeout_seconds": 3.0,
    "rate_limit": 5,
    "ordered": True,
    "max_attempts": 2,
    "description": "other",
    "metadata": {"team": "b"},
    "has_credentials": True,
    "disabled_reason": "x",
    "disabled_at": WHEN,
    "created_at": WHEN,
    "updated_at": WHEN,
}


@pytest.mark.parametrize(
    "payload_format",
    [None, *(f for f in PayloadFormat if f is not PayloadFormat.FHIR_NOTIFICATION)],
)
@pytest.mark.parametrize("changed", sorted(OTHER_ENDPOINT_VALUES))
def test_endpoints_with_equal_body_keys_get_identical_bodies(
    catalog: Catalog, payload_format: PayloadFormat | None, changed: str
) -> None:
    """`body_key` names everything of the endpoint that the body depends on: a worker reuses
    one body for every endpoint with the same key."""
    kind = event_type(catalog, "encounter.updated")
    first = endpoint(payload_format=payload_format)
    second = endpoint(payload_format=payload_format, **{changed: OTHER_ENDPOINT_VALUES[changed]})
    event = resource_event()

    def body(of: Endpoint) -> bytes:
        return build_payload(event, of, kind, public_url=PUBLIC_URL, message_id=MESSAGE_ID).body

    if body_key(event, first, kind) == body_key(event, second, kind):
        assert body(first) == body(second)
    else:
        assert changed in ("url", "content")

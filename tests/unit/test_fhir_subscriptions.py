"""Submitted Subscriptions (R4, R4 backport, R5, Medplum extensions) parsed, refused, rendered."""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from app.fhir.subscriptions import (
    MASKED_SECRET,
    SubscriptionError,
    SubscriptionSpec,
    fhir_id,
    parse_subscription,
    render_subscription,
    subscription_shape,
    tidings_id,
)

BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
MEDPLUM = "https://medplum.com/fhir/StructureDefinition/"
SECRET_URL = "https://www.medplum.com/fhir/StructureDefinition/subscription-secret"
ADMISSION = "http://hl7.org/SubscriptionTopic/admission"
R5_TOPIC = "http://example.org/FHIR/R5/SubscriptionTopic/example"
TOPICS: dict[str, tuple[str, ...]] = {
    ADMISSION: ("Encounter",),
    R5_TOPIC: ("Encounter",),
    "https://tidings.example/fhir/SubscriptionTopic/multi": ("Encounter", "Patient"),
}
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)

# The reference's minimal R4 example (close to the spec's own example-error).
R4: dict[str, Any] = {
    "resourceType": "Subscription",
    "status": "requested",
    "reason": "Monitor new neonatal function",
    "criteria": "Observation?code=http://loinc.org|1975-2",
    "end": "2026-01-01T00:00:00Z",
    "channel": {
        "type": "rest-hook",
        "endpoint": "https://hooks.example.org/on-result",
        "payload": "application/fhir+json",
        "header": ["Authorization: Bearer secret-token-abc-123"],
    },
}

# The reference's minimal R4 backport Subscription.
BACKPORT_SUBSCRIPTION: dict[str, Any] = {
    "resourceType": "Subscription",
    "id": "subscription-admission",
    "meta": {"profile": [BACKPORT + "backport-subscription"]},
    "status": "requested",
    "reason": "R4 topic-based subscription",
    "end": "2026-12-31T12:00:00Z",
    "criteria": ADMISSION,
    "_criteria": {
        "extension": [
            {
                "url": BACKPORT + "backport-filter-criteria",
                "valueString": "Encounter?patient=Patient/123",
            }
        ]
    },
    "channel": {
        "extension": [
            {"url": BACKPORT + "backport-heartbeat-period", "valueUnsignedInt": 86400},
            {"url": BACKPORT + "backport-timeout", "valueUnsignedInt": 60},
            {"url": BACKPORT + "backport-max-count", "valuePositiveInt": 20},
        ],
        "type": "rest-hook",
        "endpoint": "https://example.org/Endpoints/d7dcc004",
        "payload": "application/fhir+json",
        "_payload": {
            "extension": [{"url": BACKPORT + "backport-payload-content", "valueCode": "id-only"}]
        },
        "header": ["Authorization: Bearer abc"],
    },
}

# Medplum's documented Subscription with every extension Tidings honours.
MEDPLUM_SUBSCRIPTION: dict[str, Any] = {
    "resourceType": "Subscription",
    "reason": "test",
    "status": "active",
    "criteria": "Patient",
    "channel": {"type": "rest-hook", "endpoint": "https://example.com/webhook"},
    "extension": [
        {"url": SECRET_URL, "valueString": "medplum-secret"},
        {"url": MEDPLUM + "subscription-supported-interaction", "valueCode": "create"},
        {"url": MEDPLUM + "subscription-supported-interaction", "valueCode": "delete"},
        {
            "url": MEDPLUM + "fhir-path-criteria-expression",
            "valueString": "%previous.name != %current.name",
        },
        {"url": MEDPLUM + "subscription-max-attempts", "valueInteger": 3},
    ],
}

# The R5 spec's subscription example.
R5: dict[str, Any] = {
    "resourceType": "Subscription",
    "id": "example",
    "status": "requested",
    "topic": R5_TOPIC,
    "reason": "Example subscription for example topic",
    "filterBy": [
        {"resourceType": "Encounter", "filterParameter": "patient", "value": "Patient/123"}
    ],
    "channelType": {
        "system": "http://terminology.hl7.org/CodeSystem/subscription-channel-type",
        "code": "rest-hook",
    },
    "endpoint": "https://example.org/Endpoints/d7dcc004-808d-452b-8030-3a3a13cd871d",
    "parameter": [{"name": "Authorization", "value": "Bearer secret-token-abc-123"}],
    "heartbeatPeriod": 86400,
    "timeout": 60,
    "contentType": "application/fhir+json",
    "content": "id-only",
    "maxCount": 20,
}


def fhir_valid(resource: dict[str, Any], version: str) -> None:
    """Validate with fhir.resources: R4B as R4's stand-in, the default models for R5."""
    name = resource["resourceType"]
    package = "fhir.resources" if version == "R5" else "fhir.resources.R4B"
    getattr(importlib.import_module(f"{package}.{name.lower()}"), name).model_validate(resource)


def parse(resource: dict[str, Any]) -> SubscriptionSpec:
    return parse_subscription(resource, topics=TOPICS)


def changed(base: dict[str, Any], change: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    resource = copy.deepcopy(base)
    change(resource)
    return resource


@pytest.mark.parametrize(
    ("resource", "expected"),
    [
        (
            R4,
            {
                "version": "R4",
                "status": "requested",
                "endpoint": "https://hooks.example.org/on-result",
                "content": "full-resource",
                "criteria": "Observation?code=http://loinc.org|1975-2",
                "topic": None,
                "headers": {"Authorization": "Bearer secret-token-abc-123"},
                "interactions": ("create", "update"),
                "end": datetime(2026, 1, 1, tzinfo=UTC),
                "payload_mime_type": "application/fhir+json",
            },
        ),
        (
            BACKPORT_SUBSCRIPTION,
            {
                "version": "R4-backport",
                "content": "id-only",
                "criteria": None,
                "topic": ADMISSION,
                "filters": ("Encounter?patient=Patient/123",),
                "heartbeat_seconds": 86400,
                "timeout_seconds": 60,
                "max_count": 20,
                "interactions": (),
                "headers": {"Authorization": "Bearer abc"},
            },
        ),
        (
            MEDPLUM_SUBSCRIPTION,
            {
                "version": "R4",
                "status": "requested",
                "content": "empty",
                "criteria": "Patient",
                "interactions": ("create", "delete"),
                "fhirpath": "%previous.name != %current.name",
                "max_attempts": 3,
                "secret": "medplum-secret",
                "keeps_secret": False,
            },
        ),
        (
            R5,
            {
                "version": "R5",
                "content": "id-only",
                "topic": R5_TOPIC,
                "filters": ("Encounter?patient=Patient/123",),
                "headers": {"Authorization": "Bearer secret-token-abc-123"},
                "heartbeat_seconds": 86400,
                "timeout_seconds": 60,
                "max_count": 20,
                "reason": "Example subscription for example topic",
            },
        ),
    ],
    ids=["r4", "backport", "medplum", "r5"],
)
def test_reference_examples_parse(resource: dict[str, Any], expected: dict[str, Any]) -> None:
    spec = parse(resource)
    assert {key: getattr(spec, key) for key in expected} == expected


@pytest.mark.parametrize(
    ("change", "field", "expected"),
    [
        (lambda r: r["channel"].pop("payload"), "content", "empty"),
        (lambda r: r["channel"].update(header=["X-Link: https://a.example/x?y=1"]), "headers",
         {"X-Link": "https://a.example/x?y=1"}),
        (lambda r: r["channel"].update(payload="application/fhir+json; fhirVersion=4.3"),
         "version", "R4B"),
        (lambda r: r["channel"].update(payload="application/fhir+json; fhirVersion=4.0"),
         "version", "R4"),
        (lambda r: r.update(status="off"), "status", "off"),
        (lambda r: r.update(status="active"), "status", "requested"),
    ],
    ids=["no-payload-empty", "first-colon", "r4b", "r4-explicit", "off", "active-requested"],
)  # fmt: skip
def test_r4_variants(change: Callable[[dict[str, Any]], Any], field: str, expected: Any) -> None:
    assert getattr(parse(changed(R4, change)), field) == expected


@pytest.mark.parametrize(
    ("change", "field", "expected"),
    [
        (lambda r: r.pop("meta"), "topic", ADMISSION),
        (lambda r: r.update(criteria=ADMISSION + "|1.0"), "topic", ADMISSION),
        (lambda r: r["_criteria"]["extension"].append(
            {"url": BACKPORT + "backport-filter-criteria", "valueString": "status=finished"}),
         "filters", ("Encounter?patient=Patient/123", "Encounter?status=finished")),
        (lambda r: r["_criteria"]["extension"][0].update(
            url=BACKPORT + "backport-additional-criteria"),
         "filters", ("Encounter?patient=Patient/123",)),
        (lambda r: r["channel"]["_payload"]["extension"][0].update(valueCode="full-resource"),
         "content", "full-resource"),
        (lambda r: r["channel"].update(payload="application/fhir+json;fhirVersion=4.3"),
         "version", "R4B"),
    ],
    ids=["no-profile", "versioned-topic", "two-filters", "legacy-filter", "full", "r4b"],
)  # fmt: skip
def test_backport_variants(
    change: Callable[[dict[str, Any]], Any], field: str, expected: Any
) -> None:
    assert getattr(parse(changed(BACKPORT_SUBSCRIPTION, change)), field) == expected


@pytest.mark.parametrize(
    ("filter_by", "expected"),
    [
        ({"filterParameter": "status", "value": "finished"}, "Encounter?status=finished"),
        ({"resourceType": "http://hl7.org/fhir/StructureDefinition/Encounter",
          "filterParameter": "date", "comparator": "ge", "value": "2025-01-01"},
         "Encounter?date=ge2025-01-01"),
        ({"filterParameter": "status", "modifier": "not", "value": "finished"},
         "Encounter?status:not=finished"),
    ],
    ids=["no-type", "comparator", "modifier"],
)  # fmt: skip
def test_r5_filter_by(filter_by: dict[str, Any], expected: str) -> None:
    spec = parse(changed(R5, lambda r: r.update(filterBy=[filter_by])))
    assert spec.filters == (expected,)


def test_r5_content_defaults_to_id_only() -> None:
    assert parse(changed(R5, lambda r: r.pop("content"))).content == "id-only"


def test_medplum_legacy_and_docs_urls() -> None:
    def legacy(resource: dict[str, Any]) -> None:
        resource["extension"][0]["url"] = (
            "https://www.medplum.com/fhir/StructureDefinition-subscriptionSecret"
        )
        resource["extension"][4]["url"] = (
            "https://www.medplum.com/fhir/StructureDefinition/subscription-max-attempts"
        )

    spec = parse(changed(MEDPLUM_SUBSCRIPTION, legacy))
    assert (spec.secret, spec.max_attempts) == ("medplum-secret", 3)


ERROR_CASES: list[tuple[str, dict[str, Any], Callable[[dict[str, Any]], Any], str, str]] = [
    ("channel-type", R4, lambda r: r["channel"].update(type="websocket"),
     "Subscription.channel.type", "only the rest-hook channel"),
    ("no-endpoint", R4, lambda r: r["channel"].pop("endpoint"),
     "Subscription.channel.endpoint", "endpoint URL is required"),
    ("ftp-endpoint", R4, lambda r: r["channel"].update(endpoint="ftp://x.example/"),
     "Subscription.channel.endpoint", "http(s)"),
    ("bad-criteria", R4, lambda r: r.update(criteria="Observation?nope=1"),
     "Subscription.criteria", "unknown search parameter 'nope'"),
    ("unknown-type", R4, lambda r: r.update(criteria="Foo?x=1"),
     "Subscription.criteria", "unknown resource type 'Foo'"),
    ("no-criteria", R4, lambda r: r.pop("criteria"), "Subscription.criteria", "required"),
    ("bad-header", R4, lambda r: r["channel"].update(header=["ok: 1", "no colon"]),
     "Subscription.channel.header[1]", "'Name: value'"),
    ("bad-header-name", R4, lambda r: r["channel"].update(header=["Bad Name: 1"]),
     "Subscription.channel.header[0]", "not a valid HTTP header name"),
    ("twice-header", R4, lambda r: r["channel"].update(header=["A: 1", "a: 2"]),
     "Subscription.channel.header[1]", "given twice"),
    ("xml", R4, lambda r: r["channel"].update(payload="application/fhir+xml"),
     "Subscription.channel.payload", "JSON only"),
    ("fhir-version", R4,
     lambda r: r["channel"].update(payload="application/fhir+json; fhirVersion=5.0"),
     "Subscription.channel.payload", "fhirVersion=5.0"),
    ("status", R4, lambda r: r.update(status="error"), "Subscription.status", "requested or off"),
    ("end", R4, lambda r: r.update(end="tomorrow"), "Subscription.end", "FHIR instant"),
    ("reason", R4, lambda r: r.pop("reason"), "Subscription.reason", "required"),
    ("modifier", R4, lambda r: r.update(modifierExtension=[{"url": "x", "valueBoolean": True}]),
     "Subscription.modifierExtension", "not supported"),
    ("fhirpath", MEDPLUM_SUBSCRIPTION, lambda r: r["extension"][3].update(valueString="name.("),
     "Subscription.extension[3]", "invalid FHIRPath"),
    ("fhirpath-function", MEDPLUM_SUBSCRIPTION,
     lambda r: r["extension"][3].update(valueString="name.nosuch()"),
     "Subscription.extension[3]", "unknown FHIRPath function"),
    ("interaction", MEDPLUM_SUBSCRIPTION, lambda r: r["extension"][1].update(valueCode="read"),
     "Subscription.extension[1].valueCode", "create, update or delete"),
    ("max-attempts", MEDPLUM_SUBSCRIPTION, lambda r: r["extension"][4].update(valueInteger=0),
     "Subscription.extension[4].valueInteger", "at least 1"),
    ("secret", MEDPLUM_SUBSCRIPTION, lambda r: r["extension"][0].update(valueString=""),
     "Subscription.extension[0]", "non-empty valueString"),
    ("unknown-topic", BACKPORT_SUBSCRIPTION, lambda r: r.update(criteria="http://x.example/t"),
     "Subscription.criteria", "unknown SubscriptionTopic"),
    ("filter", BACKPORT_SUBSCRIPTION,
     lambda r: r["_criteria"]["extension"][0].update(valueString="Encounter?nope=1"),
     "Subscription.criteria.extension[0]", "unknown search parameter"),
    ("filter-type", BACKPORT_SUBSCRIPTION,
     lambda r: r["_criteria"]["extension"][0].update(valueString="Patient?name=x"),
     "Subscription.criteria.extension[0]", "no trigger on Patient"),
    ("no-content", BACKPORT_SUBSCRIPTION, lambda r: r["channel"].pop("_payload"),
     "Subscription.channel.payload", "backport-payload-content"),
    ("no-payload", BACKPORT_SUBSCRIPTION, lambda r: r["channel"].pop("payload"),
     "Subscription.channel.payload", "MIME type is required"),
    ("bad-content", BACKPORT_SUBSCRIPTION,
     lambda r: r["channel"]["_payload"]["extension"][0].update(valueCode="everything"),
     "Subscription.channel.payload.extension[0]", "payload content"),
    ("heartbeat", BACKPORT_SUBSCRIPTION,
     lambda r: r["channel"]["extension"][0].update(valueUnsignedInt=-1),
     "Subscription.channel.extension[0].valueUnsignedInt", "whole number"),
    ("custom-channel", BACKPORT_SUBSCRIPTION,
     lambda r: r["channel"].update(_type={"extension": [{"url": BACKPORT + "backport-channel-type",
                                                         "valueCoding": {"code": "kafka"}}]}),
     "Subscription.channel.type", "custom channel types"),
    ("topic-interaction", BACKPORT_SUBSCRIPTION,
     lambda r: r.update(extension=[{"url": MEDPLUM + "subscription-supported-interaction",
                                    "valueCode": "create"}]),
     "Subscription.extension[0]", "the topic defines the interactions"),
    ("r5-channel", R5, lambda r: r["channelType"].update(code="email"),
     "Subscription.channelType", "only the rest-hook"),
    ("r5-endpoint", R5, lambda r: r.pop("endpoint"), "Subscription.endpoint", "required"),
    ("r5-topic", R5, lambda r: r.pop("topic"), "Subscription.topic", "canonical URL is required"),
    ("r5-filter", R5, lambda r: r["filterBy"][0].pop("value"),
     "Subscription.filterBy[0]", "filterParameter and value"),
    ("r5-filter-type", R5,
     lambda r: r.update(topic="https://tidings.example/fhir/SubscriptionTopic/multi",
                        filterBy=[{"filterParameter": "status", "value": "x"}]),
     "Subscription.filterBy[0]", "name the resource type"),
    ("r5-parameter", R5, lambda r: r["parameter"].append({"name": "X"}),
     "Subscription.parameter[1]", "name and value"),
    ("r5-content", R5, lambda r: r.update(content="all"), "Subscription.content", "one of"),
    ("r5-max-count", R5, lambda r: r.update(maxCount=0), "Subscription.maxCount", "at least 1"),
    ("r5-version", R5, lambda r: r.update(contentType="application/fhir+json; fhirVersion=4.0"),
     "Subscription.contentType", "fhirVersion=4.0"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("base", "change", "location", "message"),
    [case[1:] for case in ERROR_CASES],
    ids=[case[0] for case in ERROR_CASES],
)
def test_problems_name_their_location(
    base: dict[str, Any], change: Callable[[dict[str, Any]], Any], location: str, message: str
) -> None:
    with pytest.raises(SubscriptionError) as caught:
        parse(changed(base, change))
    assert any(at == location and message in text for at, text in caught.value.issues), (
        caught.value.issues
    )


def test_every_problem_is_reported_at_once() -> None:
    bad = {"resourceType": "Subscription", "status": "active", "criteria": "Foo", "channel": {}}
    with pytest.raises(SubscriptionError) as caught:
        parse(bad)
    locations = {location for location, _ in caught.value.issues}
    assert locations >= {
        "Subscription.channel.type",
        "Subscription.channel.endpoint",
        "Subscription.criteria",
        "Subscription.reason",
    }


@pytest.mark.parametrize("resource", [None, [], {"resourceType": "Patient"}])
def test_not_a_subscription(resource: Any) -> None:
    with pytest.raises(SubscriptionError) as caught:
        parse_subscription(resource, topics=TOPICS)
    assert caught.value.issues == [("Subscription", "expected a Subscription resource")]


@pytest.mark.parametrize(
    ("resource", "shape"),
    [(R4, "R4"), (BACKPORT_SUBSCRIPTION, "R4-backport"), (MEDPLUM_SUBSCRIPTION, "R4"), (R5, "R5")],
)
def test_shape(resource: dict[str, Any], shape: str) -> None:
    assert subscription_shape(resource) == shape


@pytest.mark.parametrize(
    ("resource", "fhir_version", "error"),
    [
        (R4, "R4", "Delivery failed"),
        (BACKPORT_SUBSCRIPTION, "R4", None),
        (MEDPLUM_SUBSCRIPTION, "R4", None),
        (R5, "R5", "ignored in R5"),
    ],
    ids=["r4", "backport", "medplum", "r5"],
)
def test_rendered_subscriptions_are_valid_fhir(
    resource: dict[str, Any], fhir_version: str, error: str | None
) -> None:
    spec = parse(resource)
    rendered = render_subscription(
        spec, id="ep_2Vx9abcdEFGH", status="active", version_id="3", last_updated=NOW, error=error
    )
    fhir_valid(rendered, fhir_version)
    assert rendered["id"] == "ep-2Vx9abcdEFGH"
    assert rendered["meta"]["versionId"] == "3"
    assert rendered["meta"]["lastUpdated"] == "2025-06-01T12:00:00Z"
    assert rendered["status"] == "active"
    assert rendered.get("error") == (error if fhir_version == "R4" else None)


def test_rendering_keeps_the_backport_profile_and_extensions() -> None:
    rendered = render_subscription(
        parse(BACKPORT_SUBSCRIPTION), id="a", status="requested", version_id="1", last_updated=NOW
    )
    assert rendered["meta"]["profile"] == BACKPORT_SUBSCRIPTION["meta"]["profile"]
    assert rendered["_criteria"] == BACKPORT_SUBSCRIPTION["_criteria"]
    assert rendered["channel"] == BACKPORT_SUBSCRIPTION["channel"]


def test_the_secret_never_comes_back() -> None:
    spec = parse(MEDPLUM_SUBSCRIPTION)
    stored = spec.resource
    rendered = render_subscription(
        stored, id="ep_1", status="active", version_id="1", last_updated=NOW
    )
    assert "medplum-secret" not in repr(stored) + repr(rendered) + repr(spec)
    assert rendered["extension"][0] == {"url": SECRET_URL, "valueString": MASKED_SECRET}


def test_the_masked_secret_sent_back_keeps_the_stored_one() -> None:
    spec = parse(MEDPLUM_SUBSCRIPTION)
    again = render_subscription(spec, id="ep_1", status="active", version_id="1", last_updated=NOW)
    reparsed = parse(again)
    assert (reparsed.secret, reparsed.keeps_secret) == (None, True)


def test_server_owned_elements_are_not_stored() -> None:
    submitted = changed(R4, lambda r: r.update(id="x", error="old", meta={"versionId": "9"}))
    assert {"id", "error", "meta"}.isdisjoint(parse(submitted).resource)


@pytest.mark.parametrize(
    ("tidings", "fhir"),
    [
        ("ep_2Vx9abcdEFGH", "ep-2Vx9abcdEFGH"),
        ("att_0aZ0aZ0aZ0aZ", "att-0aZ0aZ0aZ0aZ"),
        ("plain-id", "plain-id"),
    ],
)
def test_ids_round_trip(tidings: str, fhir: str) -> None:
    assert fhir_id(tidings) == fhir
    assert tidings_id(fhir) == (tidings if "_" in tidings else fhir)

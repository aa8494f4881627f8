"""SubscriptionTopic resources and the CapabilityStatement, valid for R4B and R5."""

from __future__ import annotations

import importlib
from datetime import date
from typing import Any

import pytest

from app.fhir.topics import (
    TOPIC_CANONICAL_EXTENSION,
    TopicTrigger,
    capability_statement,
    subscription_topic,
    topic_id,
    topic_url,
)

BASE = "https://tidings.example"
ENCOUNTER_COMPLETE = TopicTrigger(
    resource="Encounter",
    interactions=("create", "update"),
    criteria="Encounter?status=finished",
    previous_criteria="Encounter?status:not=finished",
    fhirpath="(%previous.id.empty() or (%previous.status != 'finished'))"
    " and (%current.status = 'finished')",
)


def fhir_valid(resource: dict[str, Any], version: str) -> None:
    """Validate with fhir.resources: R4B (also R4's stand-in), the default models for R5."""
    name = resource["resourceType"]
    package = "fhir.resources" if version == "R5" else "fhir.resources.R4B"
    getattr(importlib.import_module(f"{package}.{name.lower()}"), name).model_validate(resource)


TOPIC_CASES: list[tuple[str, list[TopicTrigger], dict[str, Any]]] = [
    (
        "criteria-and-fhirpath",
        [ENCOUNTER_COMPLETE],
        {
            "resourceTrigger": [
                {
                    "resource": "http://hl7.org/fhir/StructureDefinition/Encounter",
                    "supportedInteraction": ["create", "update"],
                    "queryCriteria": {
                        "previous": "status:not=finished",
                        "resultForCreate": "test-fails",
                        "current": "status=finished",
                        "resultForDelete": "test-fails",
                        "requireBoth": True,
                    },
                    "fhirPathCriteria": ENCOUNTER_COMPLETE.fhirpath,
                }
            ]
        },
    ),
    (
        "plain-resource-event",
        [TopicTrigger("Patient", ("create",), criteria="Patient")],
        {
            "resourceTrigger": [
                {
                    "resource": "http://hl7.org/fhir/StructureDefinition/Patient",
                    "supportedInteraction": ["create"],
                }
            ]
        },
    ),
    (
        "published-event",
        [],
        {
            "eventTrigger": [
                {
                    "description": "A flow finished.",
                    "event": {
                        "coding": [
                            {
                                "system": f"{BASE}/fhir/CodeSystem/events",
                                "code": "patient_flow.completed",
                            }
                        ]
                    },
                    "resource": "http://hl7.org/fhir/StructureDefinition/Resource",
                }
            ]
        },
    ),
]


@pytest.mark.parametrize("version", ["R4B", "R5"])
@pytest.mark.parametrize(
    ("triggers", "expected"),
    [case[1:] for case in TOPIC_CASES],
    ids=[case[0] for case in TOPIC_CASES],
)
def test_topics_are_valid_fhir(
    version: Any, triggers: list[TopicTrigger], expected: dict[str, Any]
) -> None:
    topic = subscription_topic(
        base_url=BASE + "/",
        name="patient_flow.completed",
        description="A flow finished.",
        triggers=triggers,
        version=version,
    )
    fhir_valid(topic, version)
    assert topic["id"] == "patient-flow.completed"
    assert topic["url"] == f"{BASE}/fhir/SubscriptionTopic/patient-flow.completed"
    assert (topic["title"], topic["status"]) == ("patient_flow.completed", "active")
    assert {key: topic[key] for key in expected} == expected
    assert topic.get("name") == ("PatientFlowCompleted" if version == "R5" else None)


def test_can_filter_by() -> None:
    topic = subscription_topic(
        base_url=BASE,
        name="encounter.updated",
        description="",
        triggers=[TopicTrigger("Encounter", ("update",))],
        can_filter_by=[("Encounter", "patient")],
    )
    fhir_valid(topic, "R4B")
    assert topic["canFilterBy"] == [
        {
            "resource": "http://hl7.org/fhir/StructureDefinition/Encounter",
            "filterParameter": "patient",
        }
    ]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("encounter.created", "encounter.created"),
        ("connection.token_refresh_failed", "connection.token-refresh-failed"),
        ("user-delete-completed", "user-delete-completed"),
    ],
)
def test_topic_ids_are_fhir_ids(name: str, expected: str) -> None:
    assert topic_id(name) == expected
    assert topic_url(BASE, name) == f"{BASE}/fhir/SubscriptionTopic/{expected}"


def test_long_names_get_distinct_ids() -> None:
    first, second = topic_id("a" * 70 + ".one"), topic_id("a" * 70 + ".two")
    assert len(first) <= 64 and len(second) <= 64 and first != second


@pytest.mark.parametrize(
    ("version", "validate_as", "fhir_version"),
    [("R4", "R4B", "4.0.1"), ("R4B", "R4B", "4.3.0"), ("R5", "R5", "5.0.0")],
)
def test_capability_statement(version: Any, validate_as: str, fhir_version: str) -> None:
    topics = [f"{BASE}/fhir/SubscriptionTopic/encounter.created"]
    statement = capability_statement(
        base_url=BASE,
        version=version,
        software_version="0.1.0",
        published=date(2025, 6, 1),
        topic_urls=topics,
    )
    fhir_valid(statement, validate_as)
    assert statement["fhirVersion"] == fhir_version
    resources = {item["type"]: item for item in statement["rest"][0]["resource"]}
    assert set(resources) == {"Subscription", "SubscriptionTopic", "AuditEvent"}
    subscription = resources["Subscription"]
    assert [op["name"] for op in subscription["operation"]] == ["status", "events"]
    assert subscription["extension"] == [
        {"url": TOPIC_CANONICAL_EXTENSION, "valueCanonical": topics[0]}
    ]
    audit_parameters = [param["name"] for param in resources["AuditEvent"]["searchParam"]]
    assert audit_parameters == ["entity", "date", "outcome"]

"""The catalog as FHIR: `SubscriptionTopic` resources and the server's `CapabilityStatement`.

Each catalog event type is one topic, canonical `{public_url}/fhir/SubscriptionTopic/{id}`.
Its resource triggers become `resourceTrigger`s (search criteria as `queryCriteria`, FHIRPath as
`fhirPathCriteria`); an event type published directly (no trigger) gets an `eventTrigger` coded
with the event type's name. These builders take plain values; the domain decides what goes in.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Literal

TopicVersion = Literal["R4B", "R5"]
ServerVersion = Literal["R4", "R4B", "R5"]

STRUCTURE_DEFINITION = "http://hl7.org/fhir/StructureDefinition/"
BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/"
TOPIC_CANONICAL_EXTENSION = (
    BACKPORT + "StructureDefinition/capabilitystatement-subscriptiontopic-canonical"
)
FHIR_VERSIONS: dict[ServerVersion, str] = {"R4": "4.0.1", "R4B": "4.3.0", "R5": "5.0.0"}
_OPERATIONS: dict[ServerVersion, tuple[str, str]] = {
    "R4": (
        BACKPORT + "OperationDefinition/backport-subscription-status",
        BACKPORT + "OperationDefinition/backport-subscription-events",
    ),
    "R4B": (
        "http://hl7.org/fhir/OperationDefinition/Subscription-status",
        "http://hl7.org/fhir/OperationDefinition/Subscription-events",
    ),
    "R5": (
        "http://hl7.org/fhir/OperationDefinition/Subscription-status",
        "http://hl7.org/fhir/OperationDefinition/Subscription-events",
    ),
}
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9\-.]")


@dataclass(frozen=True)
class TopicTrigger:
    """One resource trigger of a topic, as plain text from the catalog."""

    resource: str
    interactions: tuple[str, ...]
    criteria: str | None = None
    previous_criteria: str | None = None
    fhirpath: str | None = None


def topic_id(name: str) -> str:
    """The FHIR id of an event type's topic: the name, with characters ids lack made `-`.

    Names longer than a FHIR id (64) are cut and given a short hash, so they stay distinct.
    """
    safe = _ID_UNSAFE.sub("-", name)
    if len(safe) <= 64:
        return safe
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{safe[:55]}-{digest}"


def topic_url(base_url: str, name: str) -> str:
    """The canonical URL of an event type's topic (it also resolves: GET gives the topic)."""
    return f"{base_url.rstrip('/')}/fhir/SubscriptionTopic/{topic_id(name)}"


def subscription_topic(
    *,
    base_url: str,
    name: str,
    description: str,
    triggers: Sequence[TopicTrigger],
    version: TopicVersion = "R4B",
    can_filter_by: Sequence[tuple[str, str]] = (),
) -> dict[str, Any]:
    """The `SubscriptionTopic` for one event type, valid for `version`.

    `can_filter_by` lists (resource type, search parameter) pairs subscribers may filter on.
    """
    topic: dict[str, Any] = {
        "resourceType": "SubscriptionTopic",
        "id": topic_id(name),
        "url": topic_url(base_url, name),
    }
    if version == "R5":
        topic["name"] = _computable_name(name)
    topic["title"] = name
    topic["status"] = "active"
    if description:
        topic["description"] = description
    if triggers:
        topic["resourceTrigger"] = [_resource_trigger(trigger) for trigger in triggers]
    else:
        topic["eventTrigger"] = [_event_trigger(base_url, name, description)]
    if can_filter_by:
        topic["canFilterBy"] = [
            {"resource": STRUCTURE_DEFINITION + resource, "filterParameter": parameter}
            for resource, parameter in can_filter_by
        ]
    return topic


def _computable_name(name: str) -> str:
    """R5 `name` (`PatientFlowCompleted`): a capital letter, then letters, digits and `_`."""
    words = re.split(r"[^A-Za-z0-9]+", name)
    joined = "".join(word[:1].upper() + word[1:] for word in words)
    return joined if joined[:1].isalpha() else f"T{joined}"


def _resource_trigger(trigger: TopicTrigger) -> dict[str, Any]:
    result: dict[str, Any] = {
        "resource": STRUCTURE_DEFINITION + trigger.resource,
        "supportedInteraction": list(trigger.interactions),
    }
    query = _query_criteria(trigger)
    if query:
        result["queryCriteria"] = query
    if trigger.fhirpath:
        result["fhirPathCriteria"] = trigger.fhirpath
    return result


def _query_criteria(trigger: TopicTrigger) -> dict[str, Any]:
    """`queryCriteria` as Tidings evaluates it: a missing version never matches criteria."""
    query: dict[str, Any] = {}
    previous, current = _query(trigger.previous_criteria), _query(trigger.criteria)
    if previous:
        query["previous"] = previous
        query["resultForCreate"] = "test-fails"
    if current:
        query["current"] = current
        query["resultForDelete"] = "test-fails"
    if previous and current:
        query["requireBoth"] = True
    return query


def _query(criteria: str | None) -> str | None:
    """The query part of `Type?query` (what `queryCriteria` holds), None when there is none."""
    if not criteria:
        return None
    query = criteria.split("?", 1)[1] if "?" in criteria else ""
    return query or None


def _event_trigger(base_url: str, name: str, description: str) -> dict[str, Any]:
    return {
        "description": description or f"The {name} event is published.",
        "event": {
            "coding": [{"system": f"{base_url.rstrip('/')}/fhir/CodeSystem/events", "code": name}]
        },
        "resource": STRUCTURE_DEFINITION + "Resource",
    }


def capability_statement(
    *,
    base_url: str,
    version: ServerVersion,
    software_version: str,
    published: date | datetime,
    topic_urls: Sequence[str] = (),
) -> dict[str, Any]:
    """The `CapabilityStatement` for `/fhir/metadata`: Subscription, SubscriptionTopic, AuditEvent.

    `topic_urls` are advertised with the backport IG's subscriptiontopic-canonical extension.
    """
    fhir_base = base_url.rstrip("/") + "/fhir"
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": published.isoformat(),
        "publisher": "Tidings",
        "kind": "instance",
        "software": {"name": "Tidings", "version": software_version},
        "implementation": {"description": "Tidings webhook publisher", "url": fhir_base},
        "fhirVersion": FHIR_VERSIONS[version],
        "format": ["json"],
        "rest": [
            {
                "mode": "server",
                "resource": [
                    _subscription_capability(version, topic_urls),
                    _read_search("SubscriptionTopic", ["url", "status"]),
                    _read_search("AuditEvent", ["entity", "date", "outcome"]),
                ],
            }
        ],
    }


def _subscription_capability(version: ServerVersion, topic_urls: Sequence[str]) -> dict[str, Any]:
    status_definition, events_definition = _OPERATIONS[version]
    capability: dict[str, Any] = {}
    if topic_urls:
        capability["extension"] = [
            {"url": TOPIC_CANONICAL_EXTENSION, "valueCanonical": url} for url in topic_urls
        ]
    capability["type"] = "Subscription"
    if version == "R4":
        capability["supportedProfile"] = [BACKPORT + "StructureDefinition/backport-subscription"]
    interactions = ["read", "create", "update", "delete", "search-type"]
    capability["interaction"] = [{"code": code} for code in interactions]
    capability["operation"] = [
        {"name": "status", "definition": status_definition},
        {"name": "events", "definition": events_definition},
    ]
    return capability


def _read_search(resource_type: str, parameters: Sequence[str]) -> dict[str, Any]:
    types = {"entity": "reference", "date": "date", "outcome": "token", "url": "uri"}
    return {
        "type": resource_type,
        "interaction": [{"code": "read"}, {"code": "search-type"}],
        "searchParam": [{"name": name, "type": types.get(name, "token")} for name in parameters],
    }

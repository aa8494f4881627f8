"""FHIR Subscriptions as endpoints: the catalog as topics, a Subscription as endpoint values.

A FHIR Subscription is a face of an endpoint (SPEC section 7): the same table and the same
engine. A topic-based Subscription subscribes to the topic's event type; a criteria-based one
(`Patient?...`) to `patient.created` and `patient.updated` (and `patient.deleted` when the Medplum
supported-interaction extension asks for it), with the criteria as the endpoint's filter.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.domain.catalog import Catalog
from app.domain.event_types import EventType
from app.domain.models import (
    ContentLevel,
    Event,
    PayloadFormat,
    SignatureScheme,
)
from app.fhir.notifications import NotificationEvent
from app.fhir.search import parse_criteria
from app.fhir.subscriptions import SubscriptionError, SubscriptionSpec
from app.fhir.topics import TopicTrigger, TopicVersion, subscription_topic, topic_id, topic_url

HANDSHAKE = "subscription.handshake"
HEARTBEAT = "subscription.heartbeat"
# Tidings' own notifications to a Subscription: never a topic, never numbered.
INTERNAL_EVENT_TYPES = frozenset({HANDSHAKE, HEARTBEAT})
PAST_TENSE = {"create": "created", "update": "updated", "delete": "deleted"}
_INTERACTION_OF = {past: interaction for interaction, past in PAST_TENSE.items()}


def topic_names(catalog: Catalog) -> dict[str, str]:
    """Topic id to event type name; when two names share an id, the first in name order wins."""
    names: dict[str, str] = {}
    for name in catalog.names():
        names.setdefault(topic_id(name), name)
    return names


def subscribable_topics(catalog: Catalog) -> dict[str, EventType]:
    """Topic id to event type, for every event type a Subscription may name."""
    found: dict[str, EventType] = {}
    for topic, name in topic_names(catalog).items():
        event_type = catalog.get(name)
        if event_type is not None and name not in INTERNAL_EVENT_TYPES:
            found[topic] = event_type
    return found


def known_topics(catalog: Catalog, base_url: str) -> dict[str, tuple[str, ...]]:
    """Each topic canonical with the resource types its triggers watch (`parse_subscription`)."""
    return {
        topic_url(base_url, event_type.name): tuple(
            dict.fromkeys(trigger.resource for trigger in event_type.triggers)
        )
        for event_type in subscribable_topics(catalog).values()
    }


def event_type_for_topic(catalog: Catalog, canonical: str) -> EventType | None:
    """The event type behind a topic canonical (matched by the topic id that ends it)."""
    name = topic_names(catalog).get(canonical.split("|", 1)[0].rstrip("/").rsplit("/", 1)[-1])
    return None if name is None else catalog.get(name)


def topic_resource(
    event_type: EventType, *, base_url: str, version: TopicVersion = "R4B"
) -> dict[str, Any]:
    """The `SubscriptionTopic` resource for one catalog event type."""
    triggers = [
        TopicTrigger(
            resource=trigger.resource,
            interactions=tuple(i.value for i in sorted(trigger.interactions)),
            criteria=trigger.criteria.text if trigger.criteria else None,
            previous_criteria=trigger.previous_criteria.text if trigger.previous_criteria else None,
            fhirpath=trigger.fhirpath.text if trigger.fhirpath else None,
        )
        for trigger in event_type.triggers
    ]
    return subscription_topic(
        base_url=base_url,
        name=event_type.name,
        description=event_type.description,
        triggers=triggers,
        version=version,
    )


def endpoint_values(spec: SubscriptionSpec, catalog: Catalog) -> dict[str, Any]:
    """The endpoint columns a Subscription sets (the secret itself is stored apart, encrypted).

    Raises SubscriptionError when the catalog has no event type for what the Subscription asks.
    """
    has_secret = spec.secret is not None or spec.keeps_secret
    scheme = SignatureScheme.MEDPLUM if has_secret else SignatureScheme.STANDARD_WEBHOOKS
    return {
        "url": spec.endpoint,
        "description": spec.reason or "",
        "headers": dict(spec.headers),
        "event_types": list(_event_types(spec, catalog)),
        "filter": _filter(spec),
        "payload_format": PayloadFormat.FHIR_NOTIFICATION.value,
        "content": ContentLevel(spec.content).value,
        "signature_scheme": scheme.value,
        "timeout_seconds": float(spec.timeout_seconds) if spec.timeout_seconds else None,
        "max_attempts": spec.max_attempts,
        "active": spec.status != "off",
        "fhir_version": spec.version,
        "fhir_resource": spec.resource,
        "fhir_status": spec.status,
        "fhirpath_criteria": spec.fhirpath,
        "heartbeat_seconds": spec.heartbeat_seconds or None,
    }


def _event_types(spec: SubscriptionSpec, catalog: Catalog) -> tuple[str, ...]:
    if spec.topic is not None:
        event_type = event_type_for_topic(catalog, spec.topic)
        if event_type is None:
            raise SubscriptionError([(_topic_location(spec), f"unknown topic {spec.topic!r}")])
        return (event_type.name,)
    assert spec.criteria is not None
    resource = parse_criteria(spec.criteria).resource_type.lower()
    names = tuple(f"{resource}.{PAST_TENSE[interaction]}" for interaction in spec.interactions)
    missing = [name for name in names if name not in catalog]
    if missing:
        message = f"the catalog has no event type {missing[0]!r}"
        raise SubscriptionError([("Subscription.criteria", message)])
    return names


def _filter(spec: SubscriptionSpec) -> str | None:
    """The criteria, or the topic filters joined into one `Type?a&b` (all must match)."""
    if spec.criteria is not None:
        return spec.criteria
    if not spec.filters:
        return None
    types = {text.split("?", 1)[0] for text in spec.filters}
    if len(types) > 1:
        message = (
            f"filters on several resource types ({', '.join(sorted(types))}) cannot be combined"
        )
        raise SubscriptionError([(_filter_location(spec), message)])
    queries = [text.split("?", 1)[1] for text in spec.filters if "?" in text]
    return f"{types.pop()}?{'&'.join(query for query in queries if query)}"


def _topic_location(spec: SubscriptionSpec) -> str:
    return "Subscription.topic" if spec.version == "R5" else "Subscription.criteria"


def _filter_location(spec: SubscriptionSpec) -> str:
    return "Subscription.filterBy" if spec.version == "R5" else "Subscription.criteria.extension"


def notification_event(event: Event, number: int) -> NotificationEvent:
    """A stored event as a notification event numbered `number` within its Subscription.

    The interaction comes from a resource event's type (`patient.deleted`); the resource is the
    event data when that data is the focus resource itself.
    """
    return NotificationEvent(
        number=number,
        timestamp=event.occurred_at,
        focus_reference=event.focus or _reference(event.data),
        resource=event.data if _is_focus_resource(event) else None,
        interaction=_INTERACTION_OF.get(event.type.rsplit(".", 1)[-1]),
    )


def _reference(data: Mapping[str, Any]) -> str | None:
    resource_type, resource_id = data.get("resourceType"), data.get("id")
    if isinstance(resource_type, str) and isinstance(resource_id, str) and resource_id:
        return f"{resource_type}/{resource_id}"
    return None


def _is_focus_resource(event: Event) -> bool:
    reference = _reference(event.data)
    return reference is not None and event.focus in (None, reference)

"""`/fhir/metadata` and `/fhir/SubscriptionTopic`: what this FHIR face offers.

Every catalog event type is a SubscriptionTopic, except Tidings' own handshake and heartbeat
notices, which are not events anyone can subscribe to.
"""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response, request

from app import __version__
from app.api.context import caller, services
from app.api.fhir_outcomes import fhir_response
from app.domain import subscriptions
from app.domain.errors import NotFound
from app.domain.event_types import EventType
from app.domain.subscriptions import topic_resource
from app.fhir.topics import capability_statement, topic_url

blueprint = Blueprint("fhir_metadata", __name__, url_prefix="/fhir")


def subscribable_topics() -> dict[str, EventType]:
    """Topic id to event type, for every event type a Subscription may name."""
    return subscriptions.subscribable_topics(services().catalog)


def topic_canonicals() -> dict[str, tuple[str, ...]]:
    """Each subscribable topic canonical with the resource types its triggers watch."""
    return subscriptions.known_topics(services().catalog, services().public_url)


@blueprint.get("/metadata")
async def metadata() -> Response:
    """The CapabilityStatement: Subscription, SubscriptionTopic, AuditEvent and operations."""
    caller()
    statement = capability_statement(
        base_url=services().public_url,
        version="R4",
        software_version=__version__,
        published=services().clock().date(),
        topic_urls=sorted(topic_canonicals()),
    )
    return fhir_response(statement)


@blueprint.get("/SubscriptionTopic")
async def search_topics() -> Response:
    """The catalog as a searchset Bundle of SubscriptionTopics (`url` narrows it to one)."""
    caller()
    wanted = request.args.get("url")
    base = services().public_url
    entries = [
        _entry(topic_resource(event_type, base_url=base))
        for event_type in subscribable_topics().values()
        if wanted is None or topic_url(base, event_type.name) == wanted.split("|", 1)[0]
    ]
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(entries),
        "link": [{"relation": "self", "url": f"{base.rstrip('/')}/fhir/SubscriptionTopic"}],
        "entry": entries,
    }
    return fhir_response(bundle)


@blueprint.get("/SubscriptionTopic/<topic_id>")
async def read_topic(topic_id: str) -> Response:
    """One SubscriptionTopic, by id."""
    caller()
    event_type = subscribable_topics().get(topic_id)
    if event_type is None:
        raise NotFound(f"no SubscriptionTopic {topic_id!r}")
    return fhir_response(topic_resource(event_type, base_url=services().public_url))


def _entry(topic: dict[str, Any]) -> dict[str, Any]:
    return {
        "fullUrl": topic["url"],
        "resource": topic,
        "search": {"mode": "match"},
    }

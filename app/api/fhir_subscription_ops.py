"""`$status` and `$events` of a Subscription, answered from the stored event numbers.

`$events` returns the Subscription's events numbered `eventsSinceNumber`..`eventsUntilNumber`
(inclusive; default from 1 to the latest) in a `query-event` notification Bundle of its
version, at most `MAX_EVENTS` at a time (or the Subscription's `maxCount` when smaller): a
client that got fewer than it asked for asks again from the next number.
"""

from __future__ import annotations

import uuid

from quart import Blueprint, Response, request

from app.api.context import require_role, services
from app.api.fhir_outcomes import fhir_response
from app.api.fhir_subscriptions import READERS, subscription_row
from app.domain.errors import Problem, ValidationFailed
from app.domain.subscriptions import notification_event
from app.fhir.notifications import build_notification, build_status_bundle
from app.fhir.subscriptions import ContentCode, FhirVersion
from app.store import subscriptions
from app.store.db import transaction
from app.store.tables import EndpointRow

blueprint = Blueprint("fhir_subscription_ops", __name__, url_prefix="/fhir/Subscription")
MAX_EVENTS = 100
CONTENT_CODES = ("empty", "id-only", "full-resource")


@blueprint.get("/<subscription_id>/$status")
async def subscription_status(subscription_id: str) -> Response:
    """The `$status` searchset: status, error and `eventsSinceSubscriptionStart` as stored."""
    principal = require_role(*READERS)
    async with transaction(services().sessions) as session:
        row = await subscription_row(session, principal, subscription_id)
    status, error = subscriptions.shown_status(row)
    bundle = build_status_bundle(
        _version(row),
        subscription_id=row.id,
        topic=_topic(row),
        status=status,
        events_since_start=row.events_since_start,
        base_url=services().public_url,
        bundle_id=str(uuid.uuid4()),
        timestamp=services().clock(),
        error=error if status in ("error", "off") else None,
    )
    return fhir_response(bundle)


@blueprint.get("/<subscription_id>/$events")
async def subscription_events(subscription_id: str) -> Response:
    """Stored events by number, as a `query-event` notification Bundle."""
    principal = require_role(*READERS)
    since = _number("eventsSinceNumber", default=None) or 1
    until = _number("eventsUntilNumber", default=None)
    content = _content()
    async with transaction(services().sessions) as session:
        row = await subscription_row(session, principal, subscription_id)
        numbered = await subscriptions.select_numbered_events(
            session, row.id, since=since, until=until, limit=_limit(row)
        )
    status, error = subscriptions.shown_status(row)
    bundle = build_notification(
        _version(row),
        subscription_id=row.id,
        topic=_topic(row),
        status=status,
        kind="query-event",
        events_since_start=row.events_since_start,
        events=[notification_event(event, number) for number, event in numbered],
        content=content or _stored_content(row),
        base_url=services().public_url,
        bundle_id=str(uuid.uuid4()),
        timestamp=services().clock(),
        error=error if status in ("error", "off") else None,
    )
    return fhir_response(bundle)


def _number(name: str, *, default: int | None) -> int | None:
    text = request.args.get(name)
    if text is None:
        return default
    if not text.isdigit() or int(text) < 1:
        raise ValidationFailed([Problem(name, "an event number: a whole number from 1")])
    return int(text)


def _content() -> ContentCode | None:
    text = request.args.get("content")
    if text is None:
        return None
    if text not in CONTENT_CODES:
        raise ValidationFailed([Problem("content", f"one of {', '.join(CONTENT_CODES)}")])
    return text  # type: ignore[return-value]


def _limit(row: EndpointRow) -> int:
    resource = row.fhir_resource or {}
    max_count = resource.get("maxCount")
    return (
        min(MAX_EVENTS, max_count) if isinstance(max_count, int) and max_count > 0 else MAX_EVENTS
    )


def _version(row: EndpointRow) -> FhirVersion:
    return row.fhir_version  # type: ignore[return-value]


def _stored_content(row: EndpointRow) -> ContentCode:
    return row.content  # type: ignore[return-value]


def _topic(row: EndpointRow) -> str | None:
    resource = row.fhir_resource or {}
    value = resource.get("topic") if "topic" in resource else resource.get("criteria")
    if not isinstance(value, str) or "://" not in value:
        return None
    return value.split("|", 1)[0].strip()

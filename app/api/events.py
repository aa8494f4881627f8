"""`/v1/events`: sources publish events; partners read what was published.

Publishing with an `idempotency_key` already used in the organization answers 200 with the first
event's id and changes nothing, whatever the new body holds (as Svix does): a retried request is
safe, and a key cannot be reused for a different event.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from quart import Blueprint
from quart_schema import document_querystring, document_request

from app.api.context import owner_of, require_role, scope_of, services
from app.api.pagination import decode_cursor, encode_cursor
from app.api.requests import body_as, query_as
from app.domain import ids
from app.domain.catalog import Catalog
from app.domain.errors import NotFound, Problem, ValidationFailed
from app.domain.event_types import EventType
from app.domain.models import Event, Principal, Role
from app.store import outbox, tenants
from app.store.db import transaction

blueprint = Blueprint("events", __name__, url_prefix="/v1/events")
PUBLISHERS = (Role.SOURCE,)
READERS = (Role.PARTNER, Role.READER)
_STRICT = ConfigDict(extra="forbid")


class EventIn(BaseModel):
    """An event to publish."""

    model_config = _STRICT

    type: str = Field(min_length=1, max_length=200, description="an event type of the catalog")
    data: dict[str, Any] = Field(description="checked against the type's data_schema")
    focus: str | None = Field(default=None, min_length=1, max_length=300)
    account: str | None = Field(default=None, min_length=1, max_length=64)
    organization: str | None = Field(default=None, min_length=1, max_length=64)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=300)
    occurred_at: AwareDatetime | None = None


class EventListQuery(BaseModel):
    """Filters and paging of the event list."""

    model_config = _STRICT

    type: str | None = Field(default=None, max_length=200)
    since: AwareDatetime | None = Field(default=None, description="occurred at or after")
    until: AwareDatetime | None = Field(default=None, description="occurred before")
    limit: int = Field(default=50, ge=1, le=250)
    cursor: str | None = None


@blueprint.post("")
@document_request(EventIn)
async def publish_event() -> tuple[dict[str, str], int]:
    """Accept an event: 202 with its id; the same idempotency key again answers 200."""
    principal = require_role(*PUBLISHERS)
    body = await body_as(EventIn)
    found = services()
    event_type = _event_type(found.catalog, body.type)
    problems = event_type.validate_data(body.data, at="/data")
    if problems:
        raise ValidationFailed(problems)
    event = _event(body, event_type, principal, found.clock)
    if event.organization_id != principal.organization_id:  # an admin's choice
        async with transaction(found.sessions) as session:
            await tenants.ensure_organization(session, event.organization_id, found.clock())
    item = outbox.NewEvent(event, outbox.focus_resource_of(event))
    first_id = await found.event_committer.store(item)
    if first_id is not None:
        return {"id": first_id}, 200
    found.wake_worker()
    return {"id": event.id}, 202


@blueprint.get("")
@document_querystring(EventListQuery)
async def list_events() -> dict[str, Any]:
    """The caller's events, newest first, `limit` at a time."""
    principal = require_role(*READERS)
    query = query_as(EventListQuery)
    async with transaction(services().sessions) as session:
        page = await outbox.select_events_page(
            session,
            scope_of(principal),
            event_type=query.type,
            since=query.since,
            until=query.until,
            before=decode_cursor(query.cursor),
            limit=query.limit + 1,
        )
    more = len(page) > query.limit
    page = page[: query.limit]
    cursor = encode_cursor(page[-1].occurred_at, page[-1].id) if more else None
    return {"data": [event_out(event) for event in page], "next_cursor": cursor}


@blueprint.get("/<event_id>")
async def read_event(event_id: str) -> dict[str, Any]:
    """One event, with how many of its deliveries are in each status."""
    principal = require_role(*READERS)
    async with transaction(services().sessions) as session:
        event = await outbox.select_event(session, scope_of(principal), event_id)
        if event is None:
            raise NotFound(f"no event {event_id!r}")
        deliveries = await outbox.count_deliveries_by_status(session, event.id)
    return event_out(event) | {"deliveries": deliveries}


def event_out(event: Event) -> dict[str, Any]:
    """The public fields of an event."""
    return {
        "id": event.id,
        "type": event.type,
        "organization": event.organization_id,
        "account": event.account_id,
        "occurred_at": event.occurred_at.isoformat(),
        "focus": event.focus,
        "data": event.data,
        "source": event.source,
        "idempotency_key": event.idempotency_key,
    }


def _event_type(catalog: Catalog, name: str) -> EventType:
    event_type = catalog.get(name)
    if event_type is None:
        detail = f"unknown event type {name!r}; GET /v1/event-types lists the catalog"
        raise ValidationFailed([Problem("/type", detail)])
    return event_type


def _event(
    body: EventIn, event_type: EventType, principal: Principal, clock: Callable[[], datetime]
) -> Event:
    organization_id, account_id = owner_of(principal, body.organization, body.account)
    return Event(
        id=ids.new_id("evt"),
        organization_id=organization_id,
        account_id=account_id,
        type=event_type.name,
        occurred_at=body.occurred_at or clock(),
        data=body.data,
        focus=body.focus or event_type.focus_for_data(body.data),
        source="api",
        idempotency_key=body.idempotency_key,
    )

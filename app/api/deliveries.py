"""`/v1/deliveries` and replay: the attempt log, and sending again."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from quart import Blueprint
from quart_schema import document_querystring, document_request
from sqlmodel.ext.asyncio.session import AsyncSession

from app.api.context import require_role, scope_of, services
from app.api.pagination import decode_cursor, encode_cursor
from app.api.requests import body_as, query_as
from app.domain.errors import Conflict, NotFound, Problem, ValidationFailed
from app.domain.models import DeliveryStatus, Event, Principal, Role
from app.store import delivery_log, outbox, redelivery
from app.store.db import transaction
from app.store.endpoints import select_endpoint

blueprint = Blueprint("deliveries", __name__)
READERS = (Role.PARTNER, Role.READER)


class DeliveryQuery(BaseModel):
    """Filters and paging for the delivery list."""

    model_config = ConfigDict(extra="forbid")

    endpoint_id: str | None = None
    event_id: str | None = None
    event_type: str | None = None
    status: DeliveryStatus | None = None
    since: AwareDatetime | None = None
    until: AwareDatetime | None = None
    organization: str | None = Field(default=None, description="admins: one organization")
    limit: int = Field(default=50, ge=1, le=250)
    cursor: str | None = None


class ReplayIn(BaseModel):
    """Which endpoints to replay an event to (default: every endpoint it went to)."""

    model_config = ConfigDict(extra="forbid")

    endpoint_ids: list[str] | None = Field(default=None, min_length=1, max_length=1000)


@blueprint.get("/v1/deliveries")
@document_querystring(DeliveryQuery)
async def list_deliveries() -> dict[str, Any]:
    """Deliveries, oldest first, filtered by endpoint, event, type, status and time."""
    principal = require_role(*READERS)
    query = query_as(DeliveryQuery)
    scope = scope_of(principal)
    if query.organization is not None and principal.is_admin:
        scope = type(scope)(organization_id=query.organization)
    elif query.organization not in (None, principal.organization_id):
        # A filter narrows the caller's scope; it never widens it to another organization.
        return {"data": [], "next_cursor": None}
    wanted = delivery_log.DeliveryFilter(
        endpoint_id=query.endpoint_id,
        event_id=query.event_id,
        event_type=query.event_type,
        status=query.status.value if query.status else None,
        since=query.since,
        until=query.until,
    )
    async with transaction(services().sessions) as session:
        page = await delivery_log.select_deliveries_page(
            session, scope, wanted, after=decode_cursor(query.cursor), limit=query.limit + 1
        )
    more = len(page) > query.limit
    page = page[: query.limit]
    cursor = (
        encode_cursor(datetime.fromisoformat(page[-1]["created_at"]), page[-1]["id"])
        if more
        else None
    )
    return {"data": page, "next_cursor": cursor}


@blueprint.get("/v1/deliveries/<delivery_id>")
async def read_delivery(delivery_id: str) -> dict[str, Any]:
    """One delivery with every attempt: time, duration, status or error, response excerpt."""
    principal = require_role(*READERS)
    async with transaction(services().sessions) as session:
        found = await delivery_log.select_delivery(session, scope_of(principal), delivery_id)
    if found is None:
        raise NotFound(f"no delivery {delivery_id!r}")
    return found


@blueprint.post("/v1/deliveries/<delivery_id>/redeliver")
async def redeliver(delivery_id: str) -> tuple[dict[str, Any], int]:
    """One more attempt now, outside the schedule; the `webhook-id` stays the same."""
    principal = require_role(Role.PARTNER)
    async with transaction(services().sessions) as session:
        found = await delivery_log.select_delivery(
            session, scope_of(principal), delivery_id, with_attempts=False
        )
        if found is None:
            raise NotFound(f"no delivery {delivery_id!r}")
        if not await redelivery.redeliver(session, delivery_id, services().clock()):
            raise Conflict("an attempt of this delivery is in flight; try again when it ends")
    services().wake_worker()
    return {"id": delivery_id, "status": "pending"}, 202


@blueprint.post("/v1/events/<event_id>/replay")
@document_request(ReplayIn)
async def replay_event(event_id: str) -> tuple[dict[str, Any], int]:
    """Deliver an event again as new deliveries, with the same `webhook-id`."""
    principal = require_role(Role.PARTNER)
    body = await body_as(ReplayIn, allow_empty=True)
    now = services().clock()
    async with transaction(services().sessions) as session:
        event = await outbox.select_event(session, scope_of(principal), event_id)
        if event is None:
            raise NotFound(f"no event {event_id!r}")
        targets = await _replay_targets(session, principal, event, body.endpoint_ids)
        created = await outbox.insert_deliveries(session, event, targets, now)
    services().wake_worker()
    return {"event_id": event.id, "deliveries": created}, 202


async def _replay_targets(
    session: AsyncSession, principal: Principal, event: Event, requested: list[str] | None
) -> list[str]:
    """The live endpoints of the event's organization to replay to, each once.

    Without `requested`, every endpoint the event went to that still exists; a requested id
    that is not such an endpoint is a 422.
    """
    candidates = requested or await redelivery.select_event_endpoints(session, event.id)
    targets: list[str] = []
    for index, endpoint_id in enumerate(candidates):
        endpoint = await select_endpoint(session, scope_of(principal), endpoint_id)
        if endpoint is not None and endpoint.organization_id == event.organization_id:
            targets.append(endpoint_id)
        elif requested is not None:
            raise ValidationFailed(
                [Problem(f"/endpoint_ids/{index}", f"no endpoint {endpoint_id!r}")]
            )
    return list(dict.fromkeys(targets))

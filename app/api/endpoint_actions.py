"""Actions on one endpoint: ping, enable, recover, stats."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict
from quart import Blueprint
from quart_schema import document_request

from app.api.context import require_role, scope_of, services
from app.api.fhir_subscriptions import restart_after_enable
from app.api.requests import body_as
from app.domain import ids
from app.domain.errors import Conflict, NotFound, Problem, ValidationFailed
from app.domain.models import Endpoint, Event, Principal, Role
from app.store import delivery_log, endpoints, outbox, redelivery
from app.store.db import transaction

blueprint = Blueprint("endpoint_actions", __name__, url_prefix="/v1/endpoints")
PING_WAIT_MARGIN = 2.0


class EnableIn(BaseModel):
    """Enable a disabled endpoint, optionally re-sending what failed since a time."""

    model_config = ConfigDict(extra="forbid")

    recover_since: AwareDatetime | None = None


class RecoverIn(BaseModel):
    """A window of failed deliveries to queue again."""

    model_config = ConfigDict(extra="forbid")

    since: AwareDatetime
    until: AwareDatetime | None = None


@blueprint.post("/<endpoint_id>/ping")
async def ping(endpoint_id: str) -> tuple[dict[str, Any], int]:
    """Send a `ping` event to this endpoint now and answer with the attempt's outcome."""
    principal = require_role(Role.PARTNER)
    endpoint = await _endpoint(principal, endpoint_id)
    if not endpoint.active:
        raise Conflict("the endpoint is disabled: enable it before pinging it")
    now = services().clock()
    event = Event(
        id=ids.new_id("evt"),
        organization_id=endpoint.organization_id,
        type="ping",
        occurred_at=now,
        data={"message": "ping", "endpoint_id": endpoint.id},
        account_id=endpoint.account_id,
        source="ping",
    )
    async with transaction(services().sessions) as session:
        [delivery_id] = await outbox.insert_event_for_endpoints(session, event, [endpoint.id], now)
    services().wake_worker()
    attempt = await _first_attempt(principal, delivery_id, (endpoint.timeout_seconds or 5.0))
    if attempt is None:
        return {"event_id": event.id, "delivery_id": delivery_id, "status": "pending"}, 202
    return {"event_id": event.id, "delivery_id": delivery_id, "attempt": attempt}, 200


@blueprint.post("/<endpoint_id>/enable")
@document_request(EnableIn)
async def enable(endpoint_id: str) -> dict[str, Any]:
    """Enable a disabled endpoint; with `recover_since`, queue its failures since then again."""
    principal = require_role(Role.PARTNER)
    body = await body_as(EnableIn, allow_empty=True)
    endpoint = await _endpoint(principal, endpoint_id)
    now = services().clock()
    recovered = 0
    async with transaction(services().sessions) as session:
        if await endpoints.enable_endpoint(session, endpoint.id, now):
            await restart_after_enable(session, scope_of(principal), endpoint.id, now)
            await outbox.insert_operational_event(
                session,
                endpoint.organization_id,
                "endpoint.enabled",
                {"endpoint_id": endpoint.id, "enabled_at": now.isoformat()},
                catalog=services().catalog,
                now=now,
            )
        if body.recover_since is not None:
            recovered = await redelivery.recover_failed(
                session, endpoint.id, since=body.recover_since, until=None, now=now
            )
    services().wake_worker()
    return {"id": endpoint.id, "active": True, "recovered": recovered}


@blueprint.post("/<endpoint_id>/recover")
@document_request(RecoverIn)
async def recover(endpoint_id: str) -> tuple[dict[str, Any], int]:
    """Queue again this endpoint's failed deliveries created in [since, until)."""
    principal = require_role(Role.PARTNER)
    body = await body_as(RecoverIn)
    if body.until is not None and body.until <= body.since:
        raise ValidationFailed([Problem("/until", "must be later than since")])
    endpoint = await _endpoint(principal, endpoint_id)
    async with transaction(services().sessions) as session:
        count = await redelivery.recover_failed(
            session, endpoint.id, since=body.since, until=body.until, now=services().clock()
        )
    services().wake_worker()
    return {"id": endpoint.id, "recovered": count}, 202


@blueprint.get("/<endpoint_id>/stats")
async def stats(endpoint_id: str) -> dict[str, Any]:
    """Delivery counts by status and attempt success rates over the last hour, day and week."""
    principal = require_role(Role.PARTNER, Role.READER)
    endpoint = await _endpoint(principal, endpoint_id)
    async with transaction(services().sessions) as session:
        found = await delivery_log.select_endpoint_stats(session, endpoint.id, services().clock())
    return {"id": endpoint.id, **found}


async def _endpoint(principal: Principal, endpoint_id: str) -> Endpoint:
    async with transaction(services().sessions) as session:
        endpoint = await endpoints.select_endpoint(session, scope_of(principal), endpoint_id)
    if endpoint is None:
        raise NotFound(f"no endpoint {endpoint_id!r}")
    return endpoint


async def _first_attempt(
    principal: Principal, delivery_id: str, timeout: float
) -> dict[str, Any] | None:
    """Wait (on the wall clock) for the worker's first attempt of the ping delivery."""
    deadline = time.monotonic() + timeout + PING_WAIT_MARGIN
    while time.monotonic() < deadline:
        async with transaction(services().sessions) as session:
            found = await delivery_log.select_delivery(session, scope_of(principal), delivery_id)
        if found and found["attempts"]:
            first: dict[str, Any] = found["attempts"][0]
            return first
        await asyncio.sleep(0.05)
    return None

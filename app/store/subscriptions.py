"""FHIR Subscriptions: the endpoints with a Subscription face, their status and their events.

A Subscription is an endpoint row with `fhir_version` set (SPEC section 7). Its shown status is
`off` whenever the endpoint is inactive, else the stored `fhir_status`. Handshakes and
heartbeats are events of Tidings' own (`subscription.handshake` / `subscription.heartbeat`)
sent to that one endpoint through the outbox, so the worker delivers them like any other.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.domain import ids
from app.domain.models import Event
from app.domain.subscriptions import HANDSHAKE
from app.store import outbox
from app.store.endpoints import Scope, select_endpoint_row
from app.store.tables import DeliveryRow, EndpointRow, EventRow

_endpoint: sa.Table = EndpointRow.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class SubscriptionFace:
    """What a notification needs to know of the Subscription it goes to."""

    version: str
    resource: dict[str, Any]
    status: str
    events_since_start: int
    error: str | None = None


def shown_status(row: Any) -> tuple[str, str | None]:
    """(status, error text) as the Subscription shows them."""
    if not row.active:
        return "off", row.fhir_error or row.disabled_reason
    return row.fhir_status or "requested", row.fhir_error


def face_of(row: Any) -> SubscriptionFace | None:
    """The Subscription face of an endpoint row, None for a plain endpoint."""
    if row.fhir_version is None:
        return None
    status, error = shown_status(row)
    return SubscriptionFace(
        version=row.fhir_version,
        resource=dict(row.fhir_resource or {}),
        status=status,
        events_since_start=row.events_since_start,
        error=error,
    )


def _scoped(query: Any, scope: Scope) -> Any:
    query = query.where(col(EndpointRow.deleted_at).is_(None))
    query = query.where(col(EndpointRow.fhir_version).is_not(None))
    if scope.organization_id is not None:
        query = query.where(EndpointRow.organization_id == scope.organization_id)
    if scope.account_id is not None:
        query = query.where(EndpointRow.account_id == scope.account_id)
    return query


async def select_subscription_row(
    session: AsyncSession, scope: Scope, endpoint_id: str, *, for_update: bool = False
) -> EndpointRow | None:
    """The live Subscription with this Tidings id inside the scope, or None."""
    row = await select_endpoint_row(session, scope, endpoint_id, for_update=for_update)
    return row if row is not None and row.fhir_version is not None else None


async def select_subscriptions_page(
    session: AsyncSession,
    scope: Scope,
    *,
    status: str | None,
    url: str | None,
    after: tuple[datetime, str] | None,
    limit: int,
) -> list[EndpointRow]:
    """Subscriptions in the scope, oldest first, narrowed by shown status and endpoint URL."""
    query = _scoped(select(EndpointRow), scope)
    if url is not None:
        query = query.where(EndpointRow.url == url)
    if status == "off":
        query = query.where(
            sa.or_(col(EndpointRow.active).is_(False), col(EndpointRow.fhir_status) == "off")
        )
    elif status is not None:
        query = query.where(col(EndpointRow.active).is_(True), EndpointRow.fhir_status == status)
    if after is not None:
        created, last_id = after
        query = query.where(
            sa.or_(
                col(EndpointRow.created_at) > created,
                sa.and_(col(EndpointRow.created_at) == created, col(EndpointRow.id) > last_id),
            )
        )
    query = query.order_by(col(EndpointRow.created_at), col(EndpointRow.id)).limit(limit)
    return list((await session.exec(query)).all())


async def queue_notice(
    session: AsyncSession, row: EndpointRow, event_type: str, now: datetime
) -> str:
    """Queue a handshake or heartbeat for this Subscription alone; the event id."""
    event = Event(
        id=ids.new_id("evt"),
        organization_id=row.organization_id,
        account_id=row.account_id,
        type=event_type,
        occurred_at=now,
        data={"subscription": row.id},
        source="tidings",
    )
    await outbox.insert_event_for_endpoints(session, event, [row.id], now)
    return event.id


async def request_handshake(session: AsyncSession, row: EndpointRow, now: datetime) -> None:
    """Put the Subscription in `requested` and queue its handshake."""
    await set_status(session, row.id, "requested", None, now)
    await queue_notice(session, row, HANDSHAKE, now)


async def set_status(
    session: AsyncSession,
    endpoint_id: str,
    status: str,
    error: str | None,
    now: datetime,
    *,
    when: str | None = None,
) -> bool:
    """Set the Subscription's status and error text (only from status `when`, if given)."""
    statement = sa.update(_endpoint).where(
        _endpoint.c.id == endpoint_id, _endpoint.c.fhir_version.is_not(None)
    )
    if when is not None:
        statement = statement.where(_endpoint.c.fhir_status == when)
    values = {"fhir_status": status, "fhir_error": error, "updated_at": now}
    result = await session.exec(statement.values(**values))
    return bool(result.rowcount)


async def mark_off(session: AsyncSession, endpoint_id: str, reason: str, now: datetime) -> None:
    """A disabled endpoint's Subscription is `off`, with the reason as its error."""
    await set_status(session, endpoint_id, "off", reason, now)


async def touch_notified(session: AsyncSession, endpoint_id: str, now: datetime) -> None:
    """Note that the Subscription was just sent something (heartbeats count from here)."""
    await session.exec(
        sa.update(_endpoint).where(_endpoint.c.id == endpoint_id).values(last_notified_at=now)
    )


async def select_due_heartbeats(session: AsyncSession, now: datetime) -> list[EndpointRow]:
    """Active Subscriptions whose heartbeat period has passed since they were last notified."""
    rows = (
        await session.exec(
            select(EndpointRow)
            .where(col(EndpointRow.heartbeat_seconds).is_not(None))
            .where(col(EndpointRow.active).is_(True), col(EndpointRow.deleted_at).is_(None))
            .where(EndpointRow.fhir_status == "active")
            .order_by(col(EndpointRow.id))
        )
    ).all()
    return [row for row in rows if _heartbeat_due(row, now)]


def _heartbeat_due(row: EndpointRow, now: datetime) -> bool:
    last = row.last_notified_at or row.created_at
    return last + timedelta(seconds=row.heartbeat_seconds or 0) <= now


async def select_numbered_events(
    session: AsyncSession, endpoint_id: str, *, since: int, until: int | None, limit: int
) -> list[tuple[int, Event]]:
    """The Subscription's events numbered `since`..`until` (inclusive), in number order."""
    query = (
        select(DeliveryRow.event_number, EventRow)
        .join(EventRow, col(EventRow.id) == col(DeliveryRow.event_id))
        .where(DeliveryRow.endpoint_id == endpoint_id)
        .where(col(DeliveryRow.event_number) >= since)
        .order_by(col(DeliveryRow.event_number), col(DeliveryRow.created_at))
    )
    if until is not None:
        query = query.where(col(DeliveryRow.event_number) <= until)
    found: dict[int, Event] = {}
    for number, event in (await session.exec(query.limit(limit * 2))).all():
        if number is not None:
            found.setdefault(number, outbox.to_event(event))  # replays share a number
    return sorted(found.items())[:limit]

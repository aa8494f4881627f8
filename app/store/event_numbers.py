"""Event numbers of FHIR Subscriptions: `eventsSinceSubscriptionStart` and `eventNumber`.

Every event a Subscription is sent gets the next number of that Subscription, given in the
transaction that stores the delivery: `UPDATE endpoint SET events_since_start = ... + 1
RETURNING` locks the endpoint row until commit, so concurrent writers on PostgreSQL take turns
and the numbers have no gaps and no doubles. The counter lives in the database and is never
reset. Handshakes and heartbeats are not events and get no number (backport IG, errors page).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.domain.subscriptions import HANDSHAKE, HEARTBEAT, INTERNAL_EVENT_TYPES
from app.store.tables import DeliveryRow, EndpointRow

INTERNAL_EVENT_TYPES = INTERNAL_EVENT_TYPES
__all__ = ["HANDSHAKE", "HEARTBEAT", "INTERNAL_EVENT_TYPES", "assign_event_numbers"]


async def assign_event_numbers(
    session: AsyncSession, event_id: str, event_type: str, endpoint_ids: Sequence[str]
) -> dict[str, int]:
    """The event number of `event_id` for each Subscription among `endpoint_ids`.

    A Subscription that already has a numbered delivery of this event (a replay) keeps that
    number; the others count one more event. Plain endpoints get no number.
    """
    if event_type in INTERNAL_EVENT_TYPES or not endpoint_ids:
        return {}
    subscriptions = (
        await session.exec(
            select(EndpointRow.id)
            .where(col(EndpointRow.id).in_(list(endpoint_ids)))
            .where(col(EndpointRow.fhir_version).is_not(None))
            .order_by(col(EndpointRow.id))
        )
    ).all()
    if not subscriptions:
        return {}
    numbers = await _numbers_given(session, event_id, subscriptions)
    for endpoint_id in subscriptions:  # in id order, so concurrent writers lock alike
        if endpoint_id not in numbers:
            numbers[endpoint_id] = await _next_number(session, endpoint_id)
    return numbers


async def _numbers_given(
    session: AsyncSession, event_id: str, endpoint_ids: Sequence[str]
) -> dict[str, int]:
    rows = (
        await session.exec(
            select(DeliveryRow.endpoint_id, DeliveryRow.event_number)
            .where(DeliveryRow.event_id == event_id)
            .where(col(DeliveryRow.endpoint_id).in_(list(endpoint_ids)))
            .where(col(DeliveryRow.event_number).is_not(None))
        )
    ).all()
    return {endpoint_id: number for endpoint_id, number in rows if number is not None}


async def _next_number(session: AsyncSession, endpoint_id: str) -> int:
    table: sa.Table = EndpointRow.__table__  # type: ignore[attr-defined]
    statement = (
        sa.update(table)
        .where(table.c.id == endpoint_id)
        .values(events_since_start=table.c.events_since_start + 1)
        .returning(table.c.events_since_start)
    )
    number = (await session.exec(statement)).scalar_one()
    return int(number)

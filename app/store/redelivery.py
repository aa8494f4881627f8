"""Sending again: one delivery now, an endpoint's failures in a window, or a whole event."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.domain.models import DeliveryStatus
from app.store import ordered_queues
from app.store.endpoints import ordered_among
from app.store.tables import DeliveryRow

_delivery: sa.Table = DeliveryRow.__table__  # type: ignore[attr-defined]
MANUAL = "manual"
_RESENDABLE = (
    DeliveryStatus.SUCCEEDED.value,
    DeliveryStatus.FAILED.value,
    DeliveryStatus.CANCELLED.value,
    DeliveryStatus.PENDING.value,
)


async def redeliver(session: AsyncSession, delivery_id: str, now: datetime) -> bool:
    """Queue one more attempt now, outside the schedule; False while one is in flight."""
    result = await session.exec(
        sa.update(_delivery)
        .where(_delivery.c.id == delivery_id, _delivery.c.status.in_(_RESENDABLE))
        .values(
            status=DeliveryStatus.PENDING.value,
            next_attempt_at=now,
            updated_at=now,
            lease_expires_at=None,
            next_trigger=MANUAL,
        )
    )
    return bool(result.rowcount)


async def recover_failed(
    session: AsyncSession,
    endpoint_id: str,
    *,
    since: datetime,
    until: datetime | None,
    now: datetime,
) -> int:
    """Queue again the endpoint's failed deliveries created in [since, until): due now, or, for
    an ordered endpoint, held to go one at a time in their order."""
    ordered = endpoint_id in await ordered_among(session, [endpoint_id])
    query = (
        sa.update(_delivery)
        .where(
            _delivery.c.endpoint_id == endpoint_id,
            _delivery.c.status == DeliveryStatus.FAILED.value,
            _delivery.c.created_at >= since,
        )
        .values(
            status=DeliveryStatus.PENDING.value,
            next_attempt_at=None if ordered else now,
            updated_at=now,
            next_trigger=MANUAL,
        )
    )
    if until is not None:
        query = query.where(_delivery.c.created_at < until)
    result = await session.exec(query)
    if ordered:
        await ordered_queues.move_on(session, [endpoint_id], now)
    return int(result.rowcount)


async def select_event_endpoints(session: AsyncSession, event_id: str) -> list[str]:
    """The endpoints an event was delivered to."""
    query = select(DeliveryRow.endpoint_id).where(DeliveryRow.event_id == event_id).distinct()
    return list((await session.exec(query)).all())

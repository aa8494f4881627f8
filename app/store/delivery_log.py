"""Reading deliveries and their attempts: the attempt log partners and operators see."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.domain import ids
from app.store.endpoints import Scope
from app.store.tables import AttemptRow, DeliveryRow, EndpointRow, EventRow


@dataclass(frozen=True)
class DeliveryFilter:
    """What a delivery list may be narrowed to."""

    endpoint_id: str | None = None
    event_id: str | None = None
    status: str | None = None
    event_type: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def delivery_view(row: DeliveryRow, event_type: str) -> dict[str, Any]:
    """A delivery as the API shows it."""
    return {
        "id": row.id,
        "event_id": row.event_id,
        "endpoint_id": row.endpoint_id,
        "organization": row.organization_id,
        "event_type": event_type,
        "status": row.status,
        "attempt_count": row.attempt_count,
        "next_attempt_at": row.next_attempt_at.isoformat() if row.next_attempt_at else None,
        "created_at": row.created_at.isoformat(),
        "updated_at": row.updated_at.isoformat(),
    }


def attempt_view(row: AttemptRow) -> dict[str, Any]:
    """One attempt as the API shows it."""
    return {
        "id": row.id,
        "attempted_at": row.attempted_at.isoformat(),
        "duration_ms": row.duration_ms,
        "status_code": row.status_code,
        "error": row.error_kind,
        "response_excerpt": row.response_excerpt,
        "trigger": row.trigger,
    }


def _scoped(query: Any, scope: Scope) -> Any:
    if scope.organization_id is not None:
        query = query.where(col(DeliveryRow.organization_id) == scope.organization_id)
    if scope.account_id is not None:
        query = query.join(EndpointRow, col(EndpointRow.id) == col(DeliveryRow.endpoint_id)).where(
            col(EndpointRow.account_id) == scope.account_id
        )
    return query


async def select_deliveries_page(
    session: AsyncSession,
    scope: Scope,
    wanted: DeliveryFilter,
    *,
    after: tuple[datetime, str] | None,
    limit: int,
) -> list[dict[str, Any]]:
    """Deliveries in the scope matching the filter, oldest first, after the cursor key."""
    query = _scoped(
        select(DeliveryRow, col(EventRow.type)).join(
            EventRow, col(EventRow.id) == col(DeliveryRow.event_id)
        ),
        scope,
    )
    for column, value in (
        (DeliveryRow.endpoint_id, wanted.endpoint_id),
        (DeliveryRow.event_id, wanted.event_id),
        (DeliveryRow.status, wanted.status),
        (EventRow.type, wanted.event_type),
    ):
        if value is not None:
            query = query.where(col(column) == value)
    if wanted.since is not None:
        query = query.where(col(DeliveryRow.created_at) >= wanted.since)
    if wanted.until is not None:
        query = query.where(col(DeliveryRow.created_at) < wanted.until)
    if after is not None:
        query = query.where(
            sa.or_(
                col(DeliveryRow.created_at) > after[0],
                sa.and_(col(DeliveryRow.created_at) == after[0], col(DeliveryRow.id) > after[1]),
            )
        )
    query = query.order_by(col(DeliveryRow.created_at), col(DeliveryRow.id)).limit(limit)
    return [delivery_view(row, event_type) for row, event_type in (await session.exec(query)).all()]


async def select_delivery(
    session: AsyncSession, scope: Scope, delivery_id: str, *, with_attempts: bool = True
) -> dict[str, Any] | None:
    """One delivery in the scope with its attempt log, or None."""
    if not ids.looks_like_id(delivery_id, "dlv"):
        return None
    query = _scoped(
        select(DeliveryRow, col(EventRow.type)).join(
            EventRow, col(EventRow.id) == col(DeliveryRow.event_id)
        ),
        scope,
    )
    found = (await session.exec(query.where(col(DeliveryRow.id) == delivery_id))).first()
    if found is None:
        return None
    view = delivery_view(*found)
    if with_attempts:
        attempts = (
            await session.exec(
                select(AttemptRow)
                .where(col(AttemptRow.delivery_id) == delivery_id)
                .order_by(col(AttemptRow.attempted_at), col(AttemptRow.id))
            )
        ).all()
        view["attempts"] = [attempt_view(row) for row in attempts]
    return view


async def select_endpoint_stats(
    session: AsyncSession, endpoint_id: str, now: datetime
) -> dict[str, Any]:
    """Delivery counts by status, and attempt success rates over the last hour, day and week."""
    statuses = (
        await session.exec(
            select(col(DeliveryRow.status), sa.func.count())
            .where(col(DeliveryRow.endpoint_id) == endpoint_id)
            .group_by(col(DeliveryRow.status))
        )
    ).all()
    windows = {}
    for name, span in (
        ("1h", timedelta(hours=1)),
        ("24h", timedelta(days=1)),
        ("7d", timedelta(days=7)),
    ):
        windows[name] = await _attempt_window(session, endpoint_id, now - span)
    return {"deliveries": {status: count for status, count in statuses}, "attempts": windows}


async def _attempt_window(
    session: AsyncSession, endpoint_id: str, since: datetime
) -> dict[str, Any]:
    success = sa.and_(col(AttemptRow.status_code) >= 200, col(AttemptRow.status_code) < 300)
    total, succeeded = (
        await session.exec(
            select(sa.func.count(), sa.func.count().filter(success)).where(
                col(AttemptRow.endpoint_id) == endpoint_id, col(AttemptRow.attempted_at) >= since
            )
        )
    ).one()
    rate = round(succeeded / total, 4) if total else None
    return {
        "total": total,
        "succeeded": succeeded,
        "failed": total - succeeded,
        "success_rate": rate,
    }

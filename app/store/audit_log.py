"""Delivery attempts as an audit trail: what `GET /fhir/AuditEvent` searches.

Each attempt's AuditEvent outcome is decided in SQL, so it can be searched and paged:
`0` a 2xx; `8` the last attempt of a delivery that failed for good (retries used up, aborted,
or a 410); `4` any other failure (a retry follows, or was pending when it was superseded).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from app.domain.models import DeliveryStatus
from app.store.endpoints import Scope
from app.store.tables import AttemptRow, DeliveryRow, EndpointRow, EventRow

_FINAL = (DeliveryStatus.FAILED.value, DeliveryStatus.CANCELLED.value)
DateBound = tuple[str, datetime]  # (operator: ">=" or "<", moment)


@dataclass(frozen=True)
class AuditFilter:
    """What the AuditEvent search narrows attempts to."""

    endpoint_id: str | None = None
    subscriptions_only: bool = False
    focus: str | None = None
    dates: tuple[tuple[DateBound, ...], ...] = ()  # all must hold; bounds of one are OR-ed
    outcome: str | None = None


@dataclass(frozen=True)
class AuditedAttempt:
    """One attempt with what its AuditEvent shows."""

    id: str
    delivery_id: str
    attempted_at: datetime
    duration_ms: int
    result: str
    outcome: str
    focus: str | None
    endpoint_id: str
    endpoint_url: str
    is_subscription: bool


def _outcome() -> Any:
    later: sa.Table = AttemptRow.__table__.alias("later")  # type: ignore[attr-defined]
    is_last = ~sa.exists().where(
        later.c.delivery_id == col(AttemptRow.delivery_id),
        sa.or_(
            later.c.attempted_at > col(AttemptRow.attempted_at),
            sa.and_(
                later.c.attempted_at == col(AttemptRow.attempted_at),
                later.c.id > col(AttemptRow.id),
            ),
        ),
    )
    success = sa.and_(col(AttemptRow.status_code) >= 200, col(AttemptRow.status_code) < 300)
    final = sa.and_(col(DeliveryRow.status).in_(_FINAL), is_last)
    return sa.case((success, "0"), (final, "8"), else_="4")


async def select_audited_attempts(
    session: AsyncSession,
    scope: Scope,
    wanted: AuditFilter,
    *,
    after: tuple[datetime, str] | None,
    limit: int,
) -> list[AuditedAttempt]:
    """The scope's attempts matching `wanted`, oldest first, after the cursor key."""
    outcome = _outcome().label("outcome")
    query = (
        sa.select(
            AttemptRow,
            col(DeliveryRow.id),
            col(EventRow.focus),
            col(EventRow.data),
            EndpointRow,
            outcome,
        )
        .join(DeliveryRow, col(DeliveryRow.id) == col(AttemptRow.delivery_id))
        .join(EventRow, col(EventRow.id) == col(DeliveryRow.event_id))
        .join(EndpointRow, col(EndpointRow.id) == col(DeliveryRow.endpoint_id))
    )
    query = _narrowed(_scoped(query, scope), wanted, outcome)
    if after is not None:
        query = query.where(
            sa.or_(
                col(AttemptRow.attempted_at) > after[0],
                sa.and_(col(AttemptRow.attempted_at) == after[0], col(AttemptRow.id) > after[1]),
            )
        )
    query = query.order_by(col(AttemptRow.attempted_at), col(AttemptRow.id)).limit(limit)
    rows = (await session.exec(query)).all()
    return [_audited(*row) for row in rows]


def _scoped(query: Any, scope: Scope) -> Any:
    if scope.organization_id is not None:
        query = query.where(col(DeliveryRow.organization_id) == scope.organization_id)
    if scope.account_id is not None:
        query = query.where(col(EndpointRow.account_id) == scope.account_id)
    return query


def _narrowed(query: Any, wanted: AuditFilter, outcome: Any) -> Any:
    if wanted.endpoint_id is not None:
        query = query.where(col(DeliveryRow.endpoint_id) == wanted.endpoint_id)
    if wanted.subscriptions_only:
        query = query.where(col(EndpointRow.fhir_version).is_not(None))
    if wanted.focus is not None:
        query = query.where(col(EventRow.focus) == wanted.focus)
    for bounds in wanted.dates:
        query = query.where(sa.or_(*(_bound(operator, moment) for operator, moment in bounds)))
    if wanted.outcome is not None:
        query = query.where(_outcome() == wanted.outcome)
    return query


def _bound(operator: str, moment: datetime) -> Any:
    column = col(AttemptRow.attempted_at)
    return column >= moment if operator == ">=" else column < moment


def _audited(
    attempt: AttemptRow,
    delivery_id: str,
    focus: str | None,
    data: dict[str, Any],
    endpoint: EndpointRow,
    outcome: str,
) -> AuditedAttempt:
    result = str(attempt.status_code) if attempt.status_code is not None else attempt.error_kind
    return AuditedAttempt(
        id=attempt.id,
        delivery_id=delivery_id,
        attempted_at=attempt.attempted_at,
        duration_ms=attempt.duration_ms,
        result=result or "unknown",
        outcome=outcome,
        focus=focus or _reference(data),
        endpoint_id=endpoint.id,
        endpoint_url=endpoint.url,
        is_subscription=endpoint.fhir_version is not None,
    )


def _reference(data: dict[str, Any]) -> str | None:
    resource_type, resource_id = data.get("resourceType"), data.get("id")
    if isinstance(resource_type, str) and isinstance(resource_id, str):
        return f"{resource_type}/{resource_id}"
    return None

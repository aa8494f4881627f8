"""The delivery queue: claiming due deliveries under a lease, recording attempts, redelivery.

The `delivery` table is the queue. A claim moves due rows to `delivering` with a lease; a
worker that dies leaves leases that expire, and the next claim takes those rows again.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from app.domain import ids
from app.domain.models import DeliveryStatus, Endpoint, Event
from app.domain.retry import AttemptOutcome
from app.store import ordered_queues, outbox
from app.store.bulk import BulkStatement
from app.store.db import fetch_all
from app.store.endpoints import (
    ENDPOINT_COLUMNS,
    NEWEST_SECRET_FIRST,
    ordered_among,
    secret_is_live,
    to_endpoint,
)
from app.store.subscriptions import SubscriptionFace, face_of
from app.store.tables import (
    SCHEDULED_TRIGGER,
    AttemptRow,
    DeliveryRow,
    EndpointRow,
    EndpointSecret,
    EventRow,
)
from app.store.types import UTCDateTime

_delivery: sa.Table = DeliveryRow.__table__  # type: ignore[attr-defined]
_attempt: sa.Table = AttemptRow.__table__  # type: ignore[attr-defined]
# What a claim reads back of each delivery it leased.
_CLAIMED_COLUMNS = tuple(
    _delivery.c[name]
    for name in (
        "id",
        "event_id",
        "endpoint_id",
        "attempt_count",
        "event_number",
        "next_trigger",
        "created_at",
    )
)
_EVENT_COLUMNS = tuple(EventRow.__table__.columns)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class ClaimedDelivery:
    """A delivery this worker holds a lease on, with what it needs to send it."""

    id: str
    attempt_count: int
    event: Event
    endpoint: Endpoint
    credentials: str | None
    secrets: tuple[str, ...]
    trigger: str = SCHEDULED_TRIGGER
    lease_expires_at: datetime | None = None
    event_number: int | None = None
    subscription: SubscriptionFace | None = None


@dataclass(frozen=True)
class AttemptRecord:
    """The outcome of one attempt and what the delivery becomes after it."""

    delivery_id: str
    endpoint_id: str
    attempted_at: datetime
    outcome: AttemptOutcome
    status: DeliveryStatus
    next_attempt_at: datetime | None
    trigger: str = SCHEDULED_TRIGGER
    lease_expires_at: datetime | None = None


async def claim_due_deliveries(
    session: AsyncSession,
    *,
    now: datetime,
    limit: int,
    lease_seconds: int,
    skip_endpoints: Sequence[str] = (),
    expired_leases: bool = True,
) -> list[ClaimedDelivery]:
    """Lease up to `limit` due deliveries (pending and due, then, with `expired_leases`,
    those whose lease ran out), none for the endpoints in `skip_endpoints` (the worker has as
    many in flight as they may take).

    Each kind is one statement that picks the rows in due order (an index walk that stops at
    `limit`, however long the queue) and leases them, returning them. On PostgreSQL, rows
    locked by another worker are skipped (`FOR UPDATE SKIP LOCKED`), so several workers share
    the queue without sending anything twice. An ordered endpoint has at most one delivery
    scheduled (`ordered_queues`): the others are held, in no due walk.
    """
    postgres = session.get_bind().dialect.name == "postgresql"
    lease = now + timedelta(seconds=lease_seconds)
    kinds = [DeliveryStatus.PENDING]
    if expired_leases:
        kinds.append(DeliveryStatus.DELIVERING)
    claimed: list[Any] = []
    for status in kinds:
        claim = _claim_statement(status, postgres=postgres, skipping=bool(skip_endpoints))
        parameters = {"now": now, "lease": lease, "limit": limit - len(claimed)}
        if skip_endpoints:
            parameters["skip"] = list(skip_endpoints)
        claimed += await fetch_all(session, claim, parameters)
        if len(claimed) >= limit:
            break
    claimed.sort(key=lambda row: (row.created_at, row.id))
    return await _load_claimed(session, claimed, lease, now)


@functools.cache
def _claim_statement(status: DeliveryStatus, *, postgres: bool, skipping: bool) -> Any:
    """The UPDATE that leases up to `:limit` due deliveries in `status` (pending and due at
    `:now`, or delivering with a lease expired by then) until `:lease`, none for the endpoints
    in `:skip`, and returns them. Built once per variant: building it cost more than running
    it."""
    due_column = col(
        DeliveryRow.next_attempt_at
        if status is DeliveryStatus.PENDING
        else DeliveryRow.lease_expires_at
    )
    now = sa.bindparam("now", type_=UTCDateTime())
    # The endpoint's flags are read by correlated subqueries, not a join: a join lets the planner
    # hash every due delivery and sort them all before the LIMIT (on PostgreSQL, with statistics
    # from before the queue came due: 27 ms a claim of 256 from 50,000 due). This way the only
    # plan is the walk of the due index, in order, that stops at `limit`.
    chosen = (
        sa.select(col(DeliveryRow.id))
        .where(col(DeliveryRow.status) == status.value, due_column <= now)
        .where(_endpoint_flag(col(EndpointRow.active)).is_(True))
        .order_by(due_column)
        .limit(sa.bindparam("limit", type_=sa.Integer()))
    )
    if skipping:
        chosen = chosen.where(
            col(DeliveryRow.endpoint_id).not_in(sa.bindparam("skip", expanding=True))
        )
    if postgres:
        chosen = chosen.with_for_update(skip_locked=True, of=DeliveryRow)
    # A subquery, not a CTE: SQLite's Python driver opens its implicit transaction only for
    # statements that start with INSERT, UPDATE, DELETE or REPLACE.
    return (
        sa.update(_delivery)
        .where(_delivery.c.id.in_(chosen.scalar_subquery()))
        .values(
            status=DeliveryStatus.DELIVERING.value,
            lease_expires_at=sa.bindparam("lease", type_=UTCDateTime()),
            updated_at=now,
        )
        .returning(*_CLAIMED_COLUMNS)
    )


def _endpoint_flag(flag: Any) -> Any:
    """The delivery's endpoint's `flag` (a column of the endpoint), as a correlated subquery."""
    return (
        sa.select(flag)
        .where(col(EndpointRow.id) == col(DeliveryRow.endpoint_id))
        .correlate(DeliveryRow)
        .scalar_subquery()
    )


async def _load_claimed(
    session: AsyncSession, deliveries: Sequence[Any], lease: datetime, now: datetime
) -> list[ClaimedDelivery]:
    """What sending the claimed delivery rows (leased until `lease`) needs, read as Core rows
    (no ORM objects on the hot path), each event and endpoint of the batch once."""
    if not deliveries:
        return []
    events = {
        row.id: outbox.to_event(row)
        for row in await fetch_all(
            session, _LOAD_EVENTS, {"ids": list({d.event_id for d in deliveries})}
        )
    }
    endpoint_ids = list({d.endpoint_id for d in deliveries})
    endpoint_rows = {
        row.id: row for row in await fetch_all(session, _LOAD_ENDPOINTS, {"ids": endpoint_ids})
    }
    endpoints = {key: to_endpoint(row) for key, row in endpoint_rows.items()}
    faces = {key: face_of(row) for key, row in endpoint_rows.items()}
    secrets: dict[str, list[str]] = {}
    for row in await fetch_all(session, _LOAD_LIVE_SECRETS, {"ids": endpoint_ids, "now": now}):
        secrets.setdefault(row.endpoint_id, []).append(row.secret)
    return [
        ClaimedDelivery(
            id=delivery.id,
            attempt_count=delivery.attempt_count,
            event=events[delivery.event_id],
            endpoint=endpoints[delivery.endpoint_id],
            credentials=endpoint_rows[delivery.endpoint_id].url_credentials,
            secrets=tuple(secrets.get(delivery.endpoint_id, ())),
            event_number=delivery.event_number,
            subscription=faces[delivery.endpoint_id],
            trigger=delivery.next_trigger,
            lease_expires_at=lease,
        )
        for delivery in deliveries
    ]


# The reads that complete a claim, by the ids in `:ids` (a list), built once like the claims.
_WANTED: Any = sa.bindparam("ids", expanding=True)
_LOAD_EVENTS = sa.select(*_EVENT_COLUMNS).where(col(EventRow.id).in_(_WANTED))
_LOAD_ENDPOINTS = sa.select(*ENDPOINT_COLUMNS).where(col(EndpointRow.id).in_(_WANTED))
_LOAD_LIVE_SECRETS = (  # live at `:now`, newest first
    sa.select(col(EndpointSecret.endpoint_id), col(EndpointSecret.secret))
    .where(
        col(EndpointSecret.endpoint_id).in_(_WANTED),
        secret_is_live(sa.bindparam("now", type_=UTCDateTime())),
    )
    .order_by(*NEWEST_SECRET_FIRST)
)


async def record_attempts(session: AsyncSession, records: Sequence[AttemptRecord]) -> None:
    """Write the attempts and move each delivery to its next state: two batched statements.
    Where a delivery finished, its endpoint's queue moves on if the endpoint is ordered
    (`ordered_queues.move_on`: one more statement, and three at the commit if any is).

    The state changes only while the delivery still carries the lease of the claim that made
    the attempt: a worker whose lease ran out (and whose delivery another worker claimed
    again) logs its attempt but leaves the delivery to the new claim.
    """
    if not records:
        return
    attempt_ids = ids.new_ids("att", len(records))
    await _INSERT_ATTEMPTS.execute(
        session, [_attempt_row(i, r) for i, r in zip(attempt_ids, records, strict=True)]
    )
    await _RECORD_OUTCOMES.execute(
        session,
        [
            (r.status.value, r.next_attempt_at, r.attempted_at, r.delivery_id, r.lease_expires_at)
            for r in records
        ],
    )
    finished = [r for r in records if r.status.finished]
    if finished:
        # The flags as they are now: a change of `ordered` still open is waited for.
        ordered = await ordered_among(session, {r.endpoint_id for r in finished})
        now = max(r.attempted_at for r in finished)
        await ordered_queues.move_on(session, ordered, now)


async def still_leased(session: AsyncSession, records: Sequence[AttemptRecord]) -> set[str]:
    """The deliveries of `records` that still carry the lease of the claim that made the
    attempt: those whose state `record_attempts` will move. On PostgreSQL their rows are
    locked until the transaction ends, so no other claim takes them meanwhile."""
    if not records:
        return set()
    leases = {record.delivery_id: record.lease_expires_at for record in records}
    rows = await fetch_all(session, _LEASES, {"ids": list(leases)})
    return {row.id for row in rows if row.lease_expires_at == leases[row.id]}


_LEASES = (
    sa.select(_delivery.c.id, _delivery.c.lease_expires_at)
    .where(_delivery.c.id.in_(sa.bindparam("ids", expanding=True)))
    .order_by(_delivery.c.id)  # every recorder locks in the same order
    .with_for_update()
)


# A delivery's next state after an attempt, while it still carries the claim's lease.
_RECORD_OUTCOMES = BulkStatement(
    sa.update(_delivery)
    .where(
        _delivery.c.id == sa.bindparam("delivery_id"),
        _delivery.c.lease_expires_at == sa.bindparam("lease", type_=UTCDateTime()),
    )
    .values(
        status=sa.bindparam("new_status"),
        next_attempt_at=sa.bindparam("due", type_=UTCDateTime()),
        updated_at=sa.bindparam("at", type_=UTCDateTime()),
        attempt_count=_delivery.c.attempt_count + sa.literal_column("1"),
        lease_expires_at=sa.null(),
        next_trigger=sa.literal_column(f"'{SCHEDULED_TRIGGER}'"),  # a constant: SQL, not bound
    ),
    ("new_status", "due", "at", "delivery_id", "lease"),  # as they appear in the SQL
)
_INSERT_ATTEMPTS = BulkStatement(
    sa.insert(_attempt),
    (
        "id",
        "delivery_id",
        "endpoint_id",
        "attempted_at",
        "duration_ms",
        "status_code",
        "error_kind",
        "response_excerpt",
        "trigger",
    ),
)


def _attempt_row(attempt_id: str, record: AttemptRecord) -> tuple[Any, ...]:
    """The row of `_INSERT_ATTEMPTS` for one attempt."""
    outcome = record.outcome
    return (
        attempt_id,
        record.delivery_id,
        record.endpoint_id,
        record.attempted_at,
        outcome.duration_ms,
        outcome.status,
        outcome.error.value if outcome.error else None,
        outcome.response_excerpt,
        record.trigger,
    )


async def release_deliveries(
    session: AsyncSession,
    delivery_ids: Sequence[str],
    *,
    now: datetime,
    retry_at: datetime | None = None,
) -> None:
    """Give leased deliveries back to the queue unsent (shutdown, rate limits)."""
    if not delivery_ids:
        return
    await session.exec(
        sa.update(_delivery)
        .where(
            _delivery.c.id.in_(list(delivery_ids)),
            _delivery.c.status == DeliveryStatus.DELIVERING.value,
        )
        .values(
            status=DeliveryStatus.PENDING.value,
            lease_expires_at=None,
            next_attempt_at=retry_at or now,
            updated_at=now,
        )
    )


async def hold_pending(session: AsyncSession, endpoint_id: str, *, now: datetime) -> int:
    """Hold every pending delivery of an endpoint that has just become ordered, so that they go
    one at a time, in order: the earliest at once, unless one is in flight (the queue moves on
    when it finishes); how many were pending."""
    result = await session.exec(
        sa.update(_delivery)
        .where(
            _delivery.c.endpoint_id == endpoint_id,
            _delivery.c.status == DeliveryStatus.PENDING.value,
            ordered_queues.scheduled(_delivery),
        )
        .values(next_attempt_at=None, updated_at=now)
    )
    await ordered_queues.move_on(session, [endpoint_id], now)
    return int(result.rowcount)


async def release_held(session: AsyncSession, endpoint_id: str, *, now: datetime) -> int:
    """Make due at `now` every held delivery of an endpoint that is no longer ordered; how
    many. The caller holds the endpoint's row lock (`endpoints.lock_endpoint`), so no delivery
    can be stored held for it meanwhile."""
    result = await session.exec(
        sa.update(_delivery)
        .where(_delivery.c.endpoint_id == endpoint_id, *ordered_queues.held(_delivery))
        .values(next_attempt_at=now, updated_at=now)
    )
    return int(result.rowcount)


async def select_failing_endpoints(
    session: AsyncSession, *, cutoff: datetime
) -> list[tuple[str, str, datetime]]:
    """(organization, endpoint, first failure) for active endpoints that have had nothing but
    failures since at least `cutoff`: their first failure after their last success is older."""
    success = sa.and_(col(AttemptRow.status_code) >= 200, col(AttemptRow.status_code) < 300)
    earlier: sa.Table = AttemptRow.__table__.alias("earlier")  # type: ignore[attr-defined]
    last_success = (
        sa.select(sa.func.max(earlier.c.attempted_at))
        .where(
            earlier.c.endpoint_id == col(EndpointRow.id),
            earlier.c.status_code >= 200,
            earlier.c.status_code < 300,
        )
        .correlate(EndpointRow)
        .scalar_subquery()
    )
    query = (
        sa.select(
            col(EndpointRow.organization_id),
            col(EndpointRow.id),
            sa.func.min(col(AttemptRow.attempted_at)),
        )
        .join(AttemptRow, col(AttemptRow.endpoint_id) == col(EndpointRow.id))
        .where(col(EndpointRow.active).is_(True), col(EndpointRow.deleted_at).is_(None))
        .where(sa.not_(sa.func.coalesce(success, False)))
        .where(sa.or_(last_success.is_(None), col(AttemptRow.attempted_at) > last_success))
        .group_by(col(EndpointRow.organization_id), col(EndpointRow.id))
        .having(sa.func.min(col(AttemptRow.attempted_at)) <= cutoff)
    )
    rows = (await session.exec(query)).all()  # type: ignore[call-overload]
    return [(org, endpoint_id, _aware(first)) for org, endpoint_id, first in rows]


def _aware(moment: datetime) -> datetime:
    """Aggregates may come back naive (SQLite); they are UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)

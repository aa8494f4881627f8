"""The transactional outbox: an event and its deliveries are written together or not at all.

`insert_event_with_deliveries` picks the endpoints that match from the organization's
candidates for the event type (`store/candidates.py`: one indexed query, cached per process
while the organization's endpoints do not change), checks each with the matching rules, and
stores the event and one pending delivery per endpoint in the caller's transaction. The worker
finds the deliveries by their `next_attempt_at`; an accepted event is therefore never lost. A
delivery to an ordered endpoint is stored held (no `next_attempt_at`), and becomes due when its
turn comes (`ordered_queues`).

Duplicates are refused by the database itself: `INSERT ... ON CONFLICT DO NOTHING` on the unique
(organization, idempotency key) and (organization, change key), so two concurrent requests with
the same key cannot both store an event, on PostgreSQL as on SQLite.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import islice
from typing import Any

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.domain import ids, matching
from app.domain.catalog import Catalog
from app.domain.models import DeliveryStatus, Endpoint, Event, JSONObject
from app.fhir.resource_types import is_resource_type
from app.store import ordered_queues
from app.store.bulk import BulkStatement
from app.store.candidates import CANDIDATES, endpoints_version_of
from app.store.db import insert_ignoring_conflicts
from app.store.endpoints import Scope, ordered_among
from app.store.event_numbers import assign_event_numbers
from app.store.subscription_filters import keep_fhirpath_matches
from app.store.tables import SCHEDULED_TRIGGER, DeliveryRow, EventRow

_event: sa.Table = EventRow.__table__  # type: ignore[attr-defined]
_delivery: sa.Table = DeliveryRow.__table__  # type: ignore[attr-defined]


class DuplicateEvent(Exception):
    """The event is already stored: same idempotency key, or the same FHIR change."""

    def __init__(self, event_id: str) -> None:
        super().__init__(f"already stored as {event_id}")
        self.event_id = event_id


def to_event(row: Any) -> Event:
    """The domain view of an event row."""
    return Event(
        id=row.id,
        organization_id=row.organization_id,
        account_id=row.account_id,
        type=row.type,
        occurred_at=row.occurred_at,
        data=dict(row.data),
        focus=row.focus,
        source=row.source,
        idempotency_key=row.idempotency_key,
    )


def focus_resource_of(event: Event) -> JSONObject | None:
    """The resource an endpoint's FHIR filter is checked against: the data, when it is the focus."""
    resource_type, resource_id = event.data.get("resourceType"), event.data.get("id")
    if not isinstance(resource_type, str) or not is_resource_type(resource_type):
        return None
    if event.focus is not None and event.focus != f"{resource_type}/{resource_id}":
        return None
    return event.data


@dataclass(frozen=True)
class NewEvent:
    """An event to store, with what matching needs besides the event itself."""

    event: Event
    focus_resource: JSONObject | None = None
    change_key: str | None = None


async def insert_event_with_deliveries(
    session: AsyncSession,
    event: Event,
    *,
    catalog: Catalog,
    criteria_cache: matching.CriteriaCache,
    focus_resource: JSONObject | None,
    now: datetime,
    change_key: str | None = None,
) -> list[str]:
    """Store `event` and a pending delivery for every endpoint that accepts it; the delivery ids.

    Raises `DuplicateEvent` (storing nothing) when the organization already has an event with
    the same idempotency key or `change_key`, and ValueError for a type not in the catalog.
    """
    [stored] = await insert_events_with_deliveries(
        session,
        [NewEvent(event, focus_resource, change_key)],
        catalog=catalog,
        criteria_cache=criteria_cache,
        now=now,
    )
    if stored is None:
        raise DuplicateEvent(await first_event_id(session, event, change_key))
    return stored


async def insert_events_with_deliveries(
    session: AsyncSession,
    items: Sequence[NewEvent],
    *,
    catalog: Catalog,
    criteria_cache: matching.CriteriaCache,
    now: datetime,
) -> list[list[str] | None]:
    """Store many events and their deliveries with a few statements: for each item, its
    delivery ids, or None when it was a duplicate (nothing stored for it)."""
    for item in items:
        if item.event.type not in catalog:
            raise ValueError(f"unknown event type {item.event.type!r}")
    inserted = await _insert_event_rows(session, items, now)
    candidates: dict[tuple[str, str], Sequence[Endpoint]] = {}
    counts: list[int | None] = []  # deliveries per item; None for a duplicate
    unnamed: list[tuple[Any, ...]] = []
    for item in items:
        if item.event.id not in inserted:
            counts.append(None)
            continue
        key = (item.event.organization_id, item.event.type)
        if key not in candidates:
            version = inserted[item.event.id]
            candidates[key] = await CANDIDATES.candidates_at(session, *key, version)
        new_rows = await _deliveries_for(session, item, candidates[key], criteria_cache, now)
        counts.append(len(new_rows))
        unnamed += new_rows
    rows = _named(unnamed)
    await _store_deliveries(session, rows, now, candidates=candidates.values())
    delivery_ids = (row[0] for row in rows)
    return [None if count is None else list(islice(delivery_ids, count)) for count in counts]


async def _deliveries_for(
    session: AsyncSession,
    item: NewEvent,
    candidates: Sequence[Endpoint],
    criteria_cache: matching.CriteriaCache,
    now: datetime,
) -> list[tuple[Any, ...]]:
    """The delivery rows (without ids) of one new event: the candidates that accept it."""
    event, focus = item.event, item.focus_resource
    accepting = matching.accepting_endpoints(candidates, event, focus, criteria_cache)
    endpoint_ids = [endpoint.id for endpoint in accepting]
    if any(endpoint.fhirpath_criteria for endpoint in accepting):
        endpoint_ids = await keep_fhirpath_matches(session, event, focus, endpoint_ids)
    numbered = any(endpoint.fhir_version for endpoint in accepting)
    return await _delivery_rows(session, event, endpoint_ids, now, numbered=numbered)


async def insert_deliveries(
    session: AsyncSession,
    event: Event,
    endpoint_ids: Sequence[str],
    now: datetime,
    *,
    numbered: bool = True,
) -> list[str]:
    """One pending delivery of `event` per endpoint; their ids.

    A FHIR Subscription's delivery carries the event's number within that Subscription;
    `numbered=False` says the caller knows none of the endpoints is a Subscription.
    """
    rows = _named(await _delivery_rows(session, event, endpoint_ids, now, numbered=numbered))
    await _store_deliveries(session, rows, now)
    return [row[0] for row in rows]


async def _delivery_rows(
    session: AsyncSession,
    event: Event,
    endpoint_ids: Sequence[str],
    now: datetime,
    *,
    numbered: bool,
) -> list[tuple[Any, ...]]:
    """Rows for `_INSERT_DELIVERIES`, but for their ids (`_named`): pending, due now."""
    numbers = (
        await assign_event_numbers(session, event.id, event.type, endpoint_ids) if numbered else {}
    )
    event_id, organization_id, occurred_at = event.id, event.organization_id, event.occurred_at
    return [
        (
            event_id,
            endpoint_id,
            organization_id,
            _PENDING,
            0,
            now,
            None,
            occurred_at,
            now,
            now,
            numbers.get(endpoint_id),
            SCHEDULED_TRIGGER,
        )
        for endpoint_id in endpoint_ids
    ]


async def _store_deliveries(
    session: AsyncSession,
    rows: Sequence[tuple[Any, ...]],
    now: datetime,
    *,
    candidates: Iterable[Sequence[Endpoint]] = (),
) -> None:
    """Insert named delivery rows, those to an ordered endpoint held (no `next_attempt_at`),
    and move those endpoints' queues on (`ordered_queues`): an idle one's earliest is due at
    once.

    Whether an endpoint is ordered is known as of this transaction, never from an older view.
    On PostgreSQL it is read here, as the rows are stored (`endpoints.ordered_among`, under
    the lock a change of `ordered` waits for). On SQLite, `candidates` (the endpoints the
    rows were matched against, `CANDIDATES.candidates_at`) say it when they name every
    endpoint of the rows: they are the endpoints as of the `endpoints_version` the event
    INSERT read, and since that INSERT this transaction has held SQLite's only write lock,
    so no change to an endpoint (each gives a new version) can have come in between.
    """
    endpoint_ids = {row[_ENDPOINT_AT] for row in rows}
    ordered = _ordered_as_matched(session, endpoint_ids, candidates)
    if ordered is None:
        ordered = await ordered_among(session, endpoint_ids)
    if ordered:
        rows = [_as_held(row) if row[_ENDPOINT_AT] in ordered else row for row in rows]
    await _INSERT_DELIVERIES.execute(session, rows)
    if ordered:
        await ordered_queues.move_on(session, ordered, now)


def _ordered_as_matched(
    session: AsyncSession, endpoint_ids: set[str], candidates: Iterable[Sequence[Endpoint]]
) -> set[str] | None:
    """On SQLite, which of `endpoint_ids` are ordered according to `candidates`, when those
    name them all (see `_store_deliveries`); else None: read them."""
    if session.get_bind().dialect.name != "sqlite":
        return None
    matched = {endpoint.id: endpoint.ordered for found in candidates for endpoint in found}
    if not endpoint_ids <= matched.keys():
        return None
    return {endpoint_id for endpoint_id in endpoint_ids if matched[endpoint_id]}


def _as_held(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return (*row[:_DUE_AT], None, *row[_DUE_AT + 1 :])


def _named(rows: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Delivery rows with their new ids first, made together (`ids.new_ids`)."""
    new_ids = ids.new_ids("dlv", len(rows))
    return [(delivery_id, *row) for delivery_id, row in zip(new_ids, rows, strict=True)]


_PENDING = DeliveryStatus.PENDING.value
_INSERT_DELIVERIES = BulkStatement(
    sa.insert(_delivery),
    (
        "id",
        "event_id",
        "endpoint_id",
        "organization_id",
        "status",
        "attempt_count",
        "next_attempt_at",
        "lease_expires_at",
        "occurred_at",
        "created_at",
        "updated_at",
        "event_number",
        "next_trigger",
    ),
)
_ENDPOINT_AT = _INSERT_DELIVERIES.columns.index("endpoint_id")
_DUE_AT = _INSERT_DELIVERIES.columns.index("next_attempt_at")


async def _insert_event_rows(
    session: AsyncSession, items: Sequence[NewEvent], now: datetime
) -> dict[str, str | None]:
    """Insert the events whose keys are free; the ids actually inserted, each with its
    organization's `endpoints_version` as this transaction sees it (for matching).

    One statement, in pages of multi-row INSERTs (`BulkStatement`).
    """
    if not items:
        return {}
    inserted = await _INSERT_EVENTS.execute(session, [_event_row(item, now) for item in items])
    return {event_id: version for event_id, version in inserted}


def _insert_events_statement(dialect: str) -> sa.Insert:
    return insert_ignoring_conflicts(dialect, _event).returning(
        _event.c.id, endpoints_version_of(_event.c.organization_id)
    )


_INSERT_EVENTS = BulkStatement(
    _insert_events_statement,
    (
        "id",
        "organization_id",
        "account_id",
        "type",
        "occurred_at",
        "received_at",
        "focus",
        "data",
        "source",
        "idempotency_key",
        "change_key",
    ),
)


def _event_row(item: NewEvent, now: datetime) -> tuple[Any, ...]:
    event = item.event
    return (
        event.id,
        event.organization_id,
        event.account_id,
        event.type,
        event.occurred_at,
        now,
        event.focus,
        event.data,
        event.source,
        event.idempotency_key,
        item.change_key,
    )


async def first_event_id(session: AsyncSession, event: Event, change_key: str | None) -> str:
    """The id of the stored event whose idempotency or change key `event` repeats."""
    query = select(EventRow.id).where(EventRow.organization_id == event.organization_id)
    if event.idempotency_key is not None:
        query = query.where(EventRow.idempotency_key == event.idempotency_key)
    elif change_key is not None:
        query = query.where(EventRow.change_key == change_key)
    else:
        raise RuntimeError(f"event id {event.id} collided with a stored event")
    found = (await session.exec(query)).first()
    if found is None:
        raise RuntimeError("an event key conflicted, but its event is not visible")
    return found


async def select_event(session: AsyncSession, scope: Scope, event_id: str) -> Event | None:
    """The event with this id inside the scope, or None (also for other tenants)."""
    if not ids.looks_like_id(event_id, "evt"):
        return None
    query = _scoped(select(EventRow), scope).where(EventRow.id == event_id)
    row = (await session.exec(query)).first()
    return to_event(row) if row is not None else None


async def select_events_page(
    session: AsyncSession,
    scope: Scope,
    *,
    event_type: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    before: tuple[datetime, str] | None = None,
    limit: int,
) -> list[Event]:
    """A page of events, newest first by (occurred_at, id), starting before the given key.

    `since` is inclusive and `until` exclusive, both on the occurrence time.
    """
    query = _scoped(select(EventRow), scope)
    if event_type is not None:
        query = query.where(EventRow.type == event_type)
    if since is not None:
        query = query.where(col(EventRow.occurred_at) >= since)
    if until is not None:
        query = query.where(col(EventRow.occurred_at) < until)
    if before is not None:
        occurred, last_id = before
        query = query.where(
            sa.or_(
                col(EventRow.occurred_at) < occurred,
                sa.and_(col(EventRow.occurred_at) == occurred, col(EventRow.id) < last_id),
            )
        )
    query = query.order_by(col(EventRow.occurred_at).desc(), col(EventRow.id).desc()).limit(limit)
    return [to_event(row) for row in (await session.exec(query)).all()]


async def count_deliveries_by_status(session: AsyncSession, event_id: str) -> dict[str, int]:
    """How many of the event's deliveries are in each status (every status, zeros included)."""
    query = (
        select(DeliveryRow.status, sa.func.count())
        .where(DeliveryRow.event_id == event_id)
        .group_by(col(DeliveryRow.status))
    )
    counts = {status.value: 0 for status in DeliveryStatus}
    for status, count in (await session.exec(query)).all():
        counts[status] = int(count)
    return counts


def _scoped(query: Any, scope: Scope) -> Any:
    if scope.organization_id is not None:
        query = query.where(EventRow.organization_id == scope.organization_id)
    if scope.account_id is not None:
        query = query.where(EventRow.account_id == scope.account_id)
    return query


async def insert_event_for_endpoints(
    session: AsyncSession, event: Event, endpoint_ids: Sequence[str], now: datetime
) -> list[str]:
    """Store `event` for the given endpoints only, without matching (pings); the delivery ids."""
    if event.id not in await _insert_event_rows(session, [NewEvent(event)], now):
        raise DuplicateEvent(event.id)
    return await insert_deliveries(session, event, endpoint_ids, now)


_OPERATIONAL_CRITERIA = matching.CriteriaCache()


async def insert_operational_event(
    session: AsyncSession,
    organization_id: str,
    event_type: str,
    data: JSONObject,
    *,
    catalog: Catalog,
    now: datetime,
) -> Event:
    """Tidings' own event (`endpoint.disabled`, `delivery.failed`...) through the same outbox."""
    event = Event(
        id=ids.new_id("evt"),
        organization_id=organization_id,
        type=event_type,
        occurred_at=now,
        data=data,
        source="tidings",
    )
    await insert_event_with_deliveries(
        session,
        event,
        catalog=catalog,
        criteria_cache=_OPERATIONAL_CRITERIA,
        focus_resource=None,
        now=now,
    )
    return event

"""Resource changes turned into events of the catalog, and stored with their deliveries.

One change raises one event per event type whose trigger fires. The event data is the resource;
for a delete, the version that was deleted when known, else `{resourceType, id}`. The same
change pushed twice (same type, id, version and interaction) raises its events only once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlmodel.ext.asyncio.session import AsyncSession

from app.domain import ids
from app.domain.catalog import Catalog
from app.domain.matching import CriteriaCache
from app.domain.models import Event, JSONObject, ResourceChange
from app.ingest.fhir_push import PushedChange
from app.store import outbox

SOURCE = "fhir-push"


@dataclass
class IngestResult:
    """What one push did: changes read, events stored, events already stored before."""

    changes: int = 0
    event_ids: list[str] = field(default_factory=list)
    duplicates: int = 0


def events_for_change(
    change: ResourceChange,
    catalog: Catalog,
    *,
    organization_id: str,
    account_id: str | None,
    occurred_at: datetime,
    event_ids: Iterator[str],
) -> list[outbox.NewEvent]:
    """The events `change` raises, ready to store: one per event type of the catalog whose
    trigger fires, each with its de-duplication key. Their ids come from `event_ids` (made
    ahead, together: `ids.new_ids`) while it lasts, then are made one by one.

    A change without a version id cannot be told apart from the next one, so it is never
    de-duplicated.
    """
    data = event_data(change)
    dedup_key = change.dedup_key if change.version_id else None
    new_events = []
    for event_type in catalog.types_for_change(change):
        event = Event(
            id=next(event_ids, None) or ids.new_id("evt"),
            organization_id=organization_id,
            account_id=account_id,
            type=event_type.name,
            occurred_at=occurred_at,
            data=data,
            focus=event_type.focus_for_change(change),
            source=SOURCE,
        )
        change_key = f"{event_type.name}:{dedup_key}" if dedup_key is not None else None
        new_events.append(outbox.NewEvent(event, outbox.focus_resource_of(event), change_key))
    return new_events


def event_data(change: ResourceChange) -> JSONObject:
    """The resource; for a delete the deleted version, or `{resourceType, id}` when unknown."""
    if change.resource is not None:
        return change.resource
    if change.previous is not None:
        return change.previous
    return {"resourceType": change.resource_type, "id": change.resource_id}


def occurrence_times(pushed: Sequence[PushedChange], received_at: datetime) -> list[datetime]:
    """When each change happened: its own time, else `received_at`, never running backwards.

    Every time is later than the one before, by a microsecond at least, so the events of one
    push keep their order for ordered endpoints even when times are missing or equal.
    """
    times: list[datetime] = []
    for item in pushed:
        moment = item.moment or received_at
        if times and moment <= times[-1]:
            moment = times[-1] + timedelta(microseconds=1)
        times.append(moment)
    return times


async def ingest_changes(
    session: AsyncSession,
    changes: Sequence[PushedChange],
    *,
    catalog: Catalog,
    criteria_cache: CriteriaCache,
    organization_id: str,
    account_id: str | None,
    now: datetime,
) -> IngestResult:
    """Store the events of `changes` and their deliveries in the caller's transaction."""
    result = IngestResult(changes=len(changes))
    event_ids = iter(ids.new_ids("evt", len(changes)))  # most changes raise one event
    items = [
        item
        for pushed, occurred_at in zip(changes, occurrence_times(changes, now), strict=True)
        for item in events_for_change(
            pushed.change,
            catalog,
            organization_id=organization_id,
            account_id=account_id,
            occurred_at=occurred_at,
            event_ids=event_ids,
        )
    ]
    stored = await outbox.insert_events_with_deliveries(
        session, items, catalog=catalog, criteria_cache=criteria_cache, now=now
    )
    for item, deliveries in zip(items, stored, strict=True):
        if deliveries is None:
            result.duplicates += 1
        else:
            result.event_ids.append(item.event.id)
    return result

"""The outbox: the candidate query reads only matching endpoints; keys hold in races."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import aiosqlite
import pytest
import sqlalchemy as sa
from sqlmodel import select

from app.domain import ids
from app.domain.matching import CriteriaCache
from app.domain.models import Event
from app.store import candidates, outbox, tenants
from app.store import endpoints as endpoint_store
from app.store.db import transaction
from app.store.tables import DeliveryRow, EventRow
from tests.integration.conftest import Api
from tests.integration.outbox_helpers import RECEIVER, services_of


async def add_endpoints(api: Api, organization: str, count: int, event_types: list[str]) -> None:
    now = api.clock()
    async with transaction(services_of(api).sessions) as session:
        await tenants.ensure_organization(session, organization, api.clock())
        for _ in range(count):
            values: dict[str, Any] = {
                "organization_id": organization,
                "url": RECEIVER,
                "event_types": event_types,
                "headers": {},
                "metadata_": {},
            }
            await endpoint_store.insert_endpoint(session, values, "ciphertext", now)


async def test_the_candidate_query_reads_only_matching_endpoints(api: Api) -> None:
    await add_endpoints(api, "big-neighbour", 500, ["*"])
    await add_endpoints(api, "acme", 500, ["patient.created"])
    await add_endpoints(api, "acme", 2, ["encounter.*"])
    await add_endpoints(api, "acme", 1, ["encounter.updated", "*"])
    sessions = services_of(api).sessions
    async with transaction(sessions) as session:
        found = await candidates.select_candidate_endpoints(session, "acme", "encounter.updated")
        statement = sa.text(
            "SELECT COUNT(*) FROM endpoint_event_type WHERE organization_id = 'acme'"
            " AND pattern IN ('encounter.updated', 'encounter.*', '*')"
        )
        index_rows = (await session.exec(statement)).one()  # type: ignore[call-overload]
    assert len(found) == 3
    assert {endpoint.organization_id for endpoint in found} == {"acme"}
    assert index_rows[0] == 4  # the third endpoint's two patterns both match: still one endpoint


async def store(api: Api, event: Event, change_key: str | None = None) -> list[str] | str:
    services = services_of(api)
    async with transaction(services.sessions) as session:
        try:
            return await outbox.insert_event_with_deliveries(
                session,
                event,
                catalog=services.catalog,
                criteria_cache=CriteriaCache(),
                focus_resource=None,
                now=api.clock(),
                change_key=change_key,
            )
        except outbox.DuplicateEvent as duplicate:
            return duplicate.event_id


def ping(organization: str = "acme", key: str | None = None, when: datetime | None = None) -> Event:
    return Event(
        id=ids.new_id("evt"),
        organization_id=organization,
        type="ping",
        occurred_at=when or datetime.fromisoformat("2026-01-01T00:00:00+00:00"),
        data={},
        idempotency_key=key,
    )


@pytest.mark.parametrize("kind", ["idempotency", "change"])
async def test_concurrent_duplicates_store_one_event(api: Api, kind: str) -> None:
    await add_endpoints(api, "acme", 2, ["ping"])
    events = [ping(key="same" if kind == "idempotency" else None) for _ in range(5)]
    change_key = "ping:Patient/p1/_history/1#create" if kind == "change" else None
    outcomes = await asyncio.gather(*(store(api, event, change_key) for event in events))
    stored = [outcome for outcome in outcomes if isinstance(outcome, list)]
    duplicates = {outcome for outcome in outcomes if isinstance(outcome, str)}
    assert len(stored) == 1 and len(stored[0]) == 2
    assert len(duplicates) == 1
    async with transaction(services_of(api).sessions) as session:
        event_ids = (await session.exec(select(EventRow.id))).all()
        delivery_count = len((await session.exec(select(DeliveryRow.id))).all())
    assert event_ids == list(duplicates)
    assert delivery_count == 2


async def test_keys_are_per_organization(api: Api) -> None:
    async with transaction(services_of(api).sessions) as session:
        await tenants.ensure_organization(session, "globex", api.clock())
        await tenants.ensure_organization(session, "acme", api.clock())
    first = await store(api, ping("acme", key="k"), change_key="c")
    second = await store(api, ping("globex", key="k"), change_key="c")
    assert first == [] and second == []


async def test_an_unknown_type_is_refused(api: Api) -> None:
    async with transaction(services_of(api).sessions) as session:
        await tenants.ensure_organization(session, "acme", api.clock())
    event = Event(ids.new_id("evt"), "acme", "no.such.type", api.clock(), data={})
    with pytest.raises(ValueError, match="unknown event type"):
        await store(api, event)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_on_sqlite_storing_events_with_cached_endpoints_takes_three_trips(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Insert the events (which reads the endpoints' version), insert the deliveries, commit:
    with the endpoints cached at that version, nothing else goes to the database, not even
    their `ordered` flags, which the cached endpoints tell as of this transaction."""
    await add_endpoints(api, "acme", 2, ["ping"])
    services = services_of(api)
    criteria = CriteriaCache()

    async def store_round(events: list[Event]) -> list[list[str] | None]:
        async with transaction(services.sessions) as session:
            return await outbox.insert_events_with_deliveries(
                session,
                [outbox.NewEvent(event) for event in events],
                catalog=services.catalog,
                criteria_cache=criteria,
                now=api.clock(),
            )

    await store_round([ping()])  # reads and caches the endpoints
    trips: list[str] = []
    run_on_thread = aiosqlite.Connection._execute

    async def counted(self: aiosqlite.Connection, function: Any, *args: Any) -> Any:
        trips.append(args[1].split()[0] if len(args) > 1 else function.__name__)
        return await run_on_thread(self, function, *args)

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
    stored = await store_round([ping(), ping()])
    assert [len(ids_ or []) for ids_ in stored] == [2, 2]
    assert trips == ["INSERT", "INSERT", "commit"]

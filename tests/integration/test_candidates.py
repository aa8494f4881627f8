"""The per-process cache of candidate endpoints: every endpoint change is seen by the next
event, whoever made it, and a cache hit does not read the endpoints again."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from app.store import candidates
from app.store import endpoints as endpoint_store
from app.store.db import make_engine, make_session_factory, transaction
from app.store.endpoints import Scope
from tests.integration.conftest import Api
from tests.integration.outbox_helpers import deliveries_by_endpoint, register, services_of

FINISHED = {"resourceType": "Encounter", "id": "e1", "status": "finished"}


async def publish(api: Api, key: str) -> set[str]:
    """Publish an Encounter update; the endpoints it got a delivery for."""
    before = await deliveries_by_endpoint(api)
    response = await api.call(
        "POST", "/v1/events", key, json={"type": "encounter.updated", "data": FINISHED}
    )
    assert response.status_code == 202, await response.get_data(as_text=True)
    after = await deliveries_by_endpoint(api)
    return {e for e, types in after.items() if len(types) > len(before.get(e, []))}


@contextmanager
def candidate_queries(
    engine: AsyncEngine, reading: str = "endpoint_event_type"
) -> Iterator[list[str]]:
    """The SELECT statements that mention `reading` (by default the (organization, pattern)
    index) while inside."""
    seen: list[str] = []

    def before(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if reading in statement and statement.lstrip().upper().startswith("SELECT"):
            seen.append(statement)

    sa.event.listen(engine.sync_engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        sa.event.remove(engine.sync_engine, "before_cursor_execute", before)


async def test_every_endpoint_change_reaches_the_next_event(api: Api) -> None:
    partner, source = await api.key("acme"), await api.key("acme", "source")
    first = await register(api, partner, event_types=["encounter.*"])
    assert await publish(api, source) == {first}  # the cache is warm from here on

    second = await register(api, partner, event_types=["encounter.updated"])
    assert await publish(api, source) == {first, second}

    patched = await api.call(
        "PATCH", f"/v1/endpoints/{second}", partner, json={"event_types": ["patient.*"]}
    )
    assert patched.status_code == 200
    assert await publish(api, source) == {first}

    patched = await api.call("PATCH", f"/v1/endpoints/{second}", partner, json={"filter": None})
    assert patched.status_code == 200
    patched = await api.call(
        "PATCH", f"/v1/endpoints/{first}", partner, json={"filter": "Encounter?status=planned"}
    )
    assert patched.status_code == 200
    assert await publish(api, source) == set()

    await api.call("PATCH", f"/v1/endpoints/{first}", partner, json={"filter": None})
    async with transaction(services_of(api).sessions) as session:
        assert await endpoint_store.disable_endpoint(session, first, "test", api.clock())
    assert await publish(api, source) == set()

    enabled = await api.call("POST", f"/v1/endpoints/{first}/enable", partner)
    assert enabled.status_code in (200, 202, 204), await enabled.get_data(as_text=True)
    assert await publish(api, source) == {first}

    assert (await api.call("DELETE", f"/v1/endpoints/{first}", partner)).status_code == 204
    assert await publish(api, source) == set()


async def test_a_change_made_through_another_engine_is_seen(api: Api) -> None:
    """Another process (here: another engine and connection pool) changes an endpoint: the
    version in the database tells this process's cache."""
    partner, source = await api.key("acme"), await api.key("acme", "source")
    endpoint_id = await register(api, partner, event_types=["encounter.updated"])
    assert await publish(api, source) == {endpoint_id}
    other = make_engine(api.settings.database_url)
    try:
        async with transaction(make_session_factory(other)) as session:
            row = await endpoint_store.select_endpoint_row(session, Scope("acme"), endpoint_id)
            assert row is not None
            await endpoint_store.update_endpoint(
                session, row, {"event_types": ["patient.created"]}, api.clock()
            )
    finally:
        await other.dispose()
    assert await publish(api, source) == set()


async def test_a_cache_hit_reads_no_endpoints(api: Api) -> None:
    partner, source = await api.key("acme"), await api.key("acme", "source")
    endpoint_id = await register(api, partner, event_types=["encounter.updated"])
    engine = services_of(api).sessions.kw["bind"]
    with candidate_queries(engine) as first_reads:
        assert await publish(api, source) == {endpoint_id}
    with (
        candidate_queries(engine) as later_reads,
        candidate_queries(engine, "endpoints_version") as version_reads,
    ):
        for _ in range(3):
            assert await publish(api, source) == {endpoint_id}
    assert len(first_reads) == 1
    assert later_reads == []
    assert version_reads == []  # the event INSERT returned the version


async def test_a_rolled_back_change_leaves_no_trace(api: Api) -> None:
    partner, source = await api.key("acme"), await api.key("acme", "source")
    endpoint_id = await register(api, partner, event_types=["encounter.updated"])
    assert await publish(api, source) == {endpoint_id}
    sessions = services_of(api).sessions
    cache = candidates.CANDIDATES
    with pytest.raises(RuntimeError):
        async with transaction(sessions) as session:
            row = await endpoint_store.select_endpoint_row(session, Scope("acme"), endpoint_id)
            assert row is not None
            await endpoint_store.update_endpoint(
                session, row, {"event_types": ["patient.created"]}, api.clock()
            )
            # Matching inside the failing transaction sees (and caches) its own change ...
            version = await candidates.endpoints_version(session, "acme")
            found = await cache.candidates_at(session, "acme", "encounter.updated", version)
            assert found == ()
            raise RuntimeError("roll back")
    # ... but that version never becomes the organization's: the next event sees the endpoint.
    assert await publish(api, source) == {endpoint_id}


async def test_organizations_never_share_cached_candidates(api: Api) -> None:
    acme, globex = await api.key("acme"), await api.key("globex")
    mine = await register(api, acme, event_types=["encounter.updated"])
    theirs = await register(api, globex, event_types=["encounter.updated"])
    assert await publish(api, await api.key("acme", "source")) == {mine}
    assert await publish(api, await api.key("globex", "source")) == {theirs}
    assert await publish(api, await api.key("acme", "source")) == {mine}

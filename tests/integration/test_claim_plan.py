"""A claim reads about as many deliveries as it leases, however long the queue is, even when the
statistics were taken before the queue came due (as after an outage, or a release of held
deliveries): on PostgreSQL a join with the endpoints let the planner hash and sort every due
delivery before the LIMIT. And moving an ordered endpoint's long queue of held deliveries on
costs a few index lookups, not a walk: claims used to test every waiting delivery for an
earlier unfinished one."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from app.store import deliveries as queue
from app.store import ordered_queues
from app.store.db import SessionFactory, make_engine, make_session_factory, transaction
from tests.integration.outbox_helpers import stored_endpoint

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
NAIVE_NOW = NOW.replace(tzinfo=None)
DUE = 20_000
LIMIT = 256
ENDPOINTS = 10


async def queued(database_url: str, count: int) -> tuple[AsyncEngine, SessionFactory]:
    """An engine and sessions on a database with `ENDPOINTS` endpoints, `count` events and one
    pending delivery of each, round robin over the endpoints, due in a day, each event a second
    after the one before, and fresh statistics (PostgreSQL only: `generate_series`)."""
    engine = make_engine(database_url)
    sessions = make_session_factory(engine)
    async with transaction(sessions) as session:
        endpoints = [await stored_endpoint(session, "acme", NOW) for _ in range(ENDPOINTS)]
    async with engine.begin() as connection:
        await connection.execute(
            sa.text(
                "INSERT INTO event (id, organization_id, type, occurred_at, received_at, data) "
                "SELECT 'evt_' || n, 'acme', 'encounter.updated', "
                "CAST(:now AS TIMESTAMP) + n * INTERVAL '1 second', :now, '{}' "
                "FROM generate_series(1, :count) AS n"
            ),
            {"now": NAIVE_NOW, "count": count},
        )
        await connection.execute(
            sa.text(
                "INSERT INTO delivery (id, event_id, endpoint_id, organization_id, status, "
                "attempt_count, next_attempt_at, occurred_at, created_at, updated_at, "
                "next_trigger) "
                "SELECT 'dlv_' || n, 'evt_' || n, "
                "(CAST(:endpoints AS VARCHAR[]))[1 + n % :width], 'acme', "
                "'pending', 0, :later, CAST(:now AS TIMESTAMP) + n * INTERVAL '1 second', "
                ":now, :now, 'scheduled' "
                "FROM generate_series(1, :count) AS n"
            ),
            {
                "endpoints": endpoints,
                "width": ENDPOINTS,
                "now": NAIVE_NOW,
                "later": NAIVE_NOW + timedelta(days=1),
                "count": count,
            },
        )
    autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
    async with autocommit.connect() as connection:
        await connection.execute(sa.text("ANALYZE delivery, event, endpoint"))
    return engine, sessions


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_a_claim_walks_the_due_index_and_stops_at_its_limit(database_url: str) -> None:
    engine, sessions = await queued(database_url, DUE)
    async with engine.begin() as connection:  # now all due: the statistics say none are
        await connection.execute(
            sa.text("UPDATE delivery SET next_attempt_at = :now"), {"now": NAIVE_NOW}
        )

    with _explained(engine.sync_engine, "EXPLAIN (ANALYZE) ") as plans:
        async with transaction(sessions) as session:
            await queue.claim_due_deliveries(
                session, now=NOW, limit=LIMIT, lease_seconds=60, expired_leases=False
            )
    await engine.dispose()

    [plan] = [plan for plan in plans if "ix_delivery_due" in plan]
    assert "Sort" not in plan and "Hash Join" not in plan, plan
    read = [int(rows) for rows in re.findall(r"ix_delivery_due.*?actual.*? rows=(\d+)", plan)]
    assert read and max(read) <= LIMIT, plan


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_moving_an_ordered_endpoints_held_queue_on_costs_a_few_lookups(
    database_url: str,
) -> None:
    engine, sessions = await queued(database_url, DUE)
    async with engine.begin() as connection:  # all held now: the statistics say none are
        await connection.execute(sa.text("UPDATE endpoint SET ordered = true"))
        await connection.execute(sa.text("UPDATE delivery SET next_attempt_at = NULL"))

    with _explained(engine.sync_engine, "EXPLAIN (ANALYZE) ") as plans:
        async with transaction(sessions) as session:
            await ordered_queues.move_all_on(session, NOW)
    async with transaction(sessions) as session:  # for real this time
        await ordered_queues.move_all_on(session, NOW)
    async with transaction(sessions) as session:
        claimed = await queue.claim_due_deliveries(
            session, now=NOW, limit=LIMIT, lease_seconds=60, expired_leases=False
        )
    await engine.dispose()

    [plan] = [plan for plan in plans if "held" in plan]
    assert "Seq Scan on delivery" not in plan and "Sort" not in plan, plan
    read = [int(rows) for rows in re.findall(r"Index.*? on delivery .*? rows=(\d+) loops", plan)]
    assert read and max(read) <= 1, plan
    assert sorted(c.event.id for c in claimed) == sorted(f"evt_{n}" for n in range(1, 11)), (
        "each endpoint's earliest"
    )


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_sqlite_finds_an_ordered_endpoints_next_delivery_by_index(
    database_url: str,
) -> None:
    engine = make_engine(database_url)
    sessions = make_session_factory(engine)
    async with transaction(sessions) as session:
        endpoint = await stored_endpoint(session, "acme", NOW, ordered=True)
    with _explained(engine.sync_engine, "EXPLAIN QUERY PLAN ") as plans:
        async with transaction(sessions) as session:
            await ordered_queues.move_on(session, [endpoint], NOW)
            await queue.claim_due_deliveries(session, now=NOW, limit=LIMIT, lease_seconds=60)
    await engine.dispose()

    [plan] = [plan for plan in plans if "AS held" in plan]
    assert "USING INDEX ix_delivery_held" in plan, plan
    assert "USING INDEX ix_delivery_scheduled" in plan, plan
    assert "TEMP B-TREE" not in plan and not re.search(r"SCAN (held|live)\b", plan), plan
    walk = "USING INDEX ix_delivery_due (status=? AND next_attempt_at<?)"
    assert any(walk in plan for plan in plans), "the due walk still uses the (now partial) index"


@contextmanager
def _explained(sync_engine: Any, explain_with: str) -> Iterator[list[str]]:
    """Every statement on deliveries inside the block runs as `explain_with` it instead (so
    it changes and returns no deliveries); the plans, as text, each with the statement."""
    plans: list[str] = []

    def explain(*args: Any) -> tuple[str, Any]:
        _, _, statement, parameters, _, _ = args
        if re.match(r"(UPDATE delivery|SELECT \(SELECT held)", statement):
            return explain_with + statement, parameters
        return statement, parameters

    def keep(*args: Any) -> None:
        _, cursor, statement, _, _, _ = args
        if statement.startswith(explain_with):
            rows = "\n".join(str(row[-1]) for row in cursor.fetchall())
            plans.append(f"{statement}\n{rows}")

    event.listen(sync_engine, "before_cursor_execute", explain, retval=True)
    event.listen(sync_engine, "after_cursor_execute", keep)
    try:
        yield plans
    finally:
        event.remove(sync_engine, "before_cursor_execute", explain)
        event.remove(sync_engine, "after_cursor_execute", keep)

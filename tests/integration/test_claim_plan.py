"""A claim reads about as many deliveries as it leases, however long the due queue is, even when
the statistics were taken before the queue came due (as after an outage, or a release of held
deliveries): on PostgreSQL a join with the endpoints let the planner hash and sort every due
delivery before the LIMIT."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from app.store import deliveries as queue
from app.store.db import make_engine, make_session_factory, transaction
from tests.integration.outbox_helpers import stored_endpoint

pytestmark = pytest.mark.postgres

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DUE = 20_000
LIMIT = 256
ENDPOINTS = 10


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_a_claim_walks_the_due_index_and_stops_at_its_limit(database_url: str) -> None:
    engine = make_engine(database_url)
    sessions = make_session_factory(engine)
    async with transaction(sessions) as session:
        endpoints = [await stored_endpoint(session, "acme", NOW) for _ in range(ENDPOINTS)]
    naive_now = NOW.replace(tzinfo=None)
    async with engine.begin() as connection:
        await connection.execute(
            sa.text(
                "INSERT INTO event (id, organization_id, type, occurred_at, received_at, data) "
                "SELECT 'evt_' || n, 'acme', 'encounter.updated', :now, :now, '{}' "
                "FROM generate_series(1, :count) AS n"
            ),
            {"now": naive_now, "count": DUE},
        )
        await connection.execute(
            sa.text(
                "INSERT INTO delivery (id, event_id, endpoint_id, organization_id, status, "
                "attempt_count, next_attempt_at, created_at, updated_at, next_trigger) "
                "SELECT 'dlv_' || n, 'evt_' || n, "
                "(CAST(:endpoints AS VARCHAR[]))[1 + n % :width], 'acme', "
                "'pending', 0, :later, :now, :now, 'scheduled' "
                "FROM generate_series(1, :count) AS n"
            ),
            {
                "endpoints": endpoints,
                "width": ENDPOINTS,
                "now": naive_now,
                "later": naive_now + timedelta(days=1),
                "count": DUE,
            },
        )
    autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
    async with autocommit.connect() as connection:
        await connection.execute(sa.text("ANALYZE delivery, event, endpoint"))
    async with engine.begin() as connection:  # now all due: the statistics say none are
        await connection.execute(
            sa.text("UPDATE delivery SET next_attempt_at = :now"), {"now": naive_now}
        )

    with _explained(engine.sync_engine) as plans:
        async with transaction(sessions) as session:
            await queue.claim_due_deliveries(
                session, now=NOW, limit=LIMIT, lease_seconds=60, expired_leases=False
            )
    await engine.dispose()

    [plan] = [plan for plan in plans if plan.startswith("Update on delivery")]
    assert "Sort" not in plan and "Hash Join" not in plan, plan
    read = [int(rows) for rows in re.findall(r"ix_delivery_due.*?actual.*? rows=(\d+)", plan)]
    assert read and max(read) <= LIMIT, plan


@contextmanager
def _explained(sync_engine: Any) -> Iterator[list[str]]:
    """Every UPDATE of deliveries inside the block runs as EXPLAIN ANALYZE instead (so it
    returns no deliveries); the plans, as text."""
    plans: list[str] = []

    def explain(*args: Any) -> tuple[str, Any]:
        _, _, statement, parameters, _, _ = args
        if statement.startswith("UPDATE delivery"):
            return "EXPLAIN (ANALYZE) " + statement, parameters
        return statement, parameters

    def keep(*args: Any) -> None:
        _, cursor, statement, _, _, _ = args
        if statement.startswith("EXPLAIN"):
            plans.append("\n".join(row[0] for row in cursor.fetchall()))

    event.listen(sync_engine, "before_cursor_execute", explain, retval=True)
    event.listen(sync_engine, "after_cursor_execute", keep)
    try:
        yield plans
    finally:
        event.remove(sync_engine, "before_cursor_execute", explain)
        event.remove(sync_engine, "after_cursor_execute", keep)

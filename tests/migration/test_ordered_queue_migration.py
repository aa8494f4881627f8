"""The migration that holds ordered endpoints' queues, run over a database with deliveries in
it: each delivery takes its event's time, the pending ones of ordered endpoints are held, a
finished delivery loses its stale `next_attempt_at`, and nothing else changes; the downgrade
makes the held ones due again."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy.ext.asyncio import create_async_engine

from app.store.migrate import alembic_config
from app.store.types import UTCDateTime

BEFORE = "bd3d9546dd65"
AFTER = "c38dc4b23ade"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
OCCURRED = NOW - timedelta(hours=2)
DUE = NOW + timedelta(minutes=5)
TIME = UTCDateTime()


def _run(url: str, statement: str, **values: Any) -> list[Any]:
    async def run() -> list[Any]:
        engine = create_async_engine(url)
        query = sa.text(statement).bindparams(
            *(
                sa.bindparam(name, type_=TIME)
                for name in values
                if isinstance(values[name], datetime)
            )
        )
        if statement.startswith("SELECT"):
            query = query.columns(id=sa.String(), occurred_at=TIME, next_attempt_at=TIME)
        async with engine.begin() as connection:
            result = await connection.execute(query, values)
            rows = list(result.all()) if result.returns_rows else []
        await engine.dispose()
        return rows

    return asyncio.run(run())


def _seed(url: str) -> None:
    _run(
        url,
        "INSERT INTO organization (id, name, created_at, endpoints_version) "
        "VALUES ('acme', 'Acme', :now, 'v1')",
        now=NOW,
    )
    for endpoint_id, ordered in [("ep_ordered", True), ("ep_plain", False)]:
        _run(
            url,
            "INSERT INTO endpoint (id, organization_id, url, description, event_types, content, "
            "signature_scheme, headers, active, ordered, metadata, created_at, updated_at, "
            "events_since_start) VALUES (:id, 'acme', 'https://example.com/hook', '', '[\"*\"]', "
            "'full-resource', 'standard-webhooks', '{}', :yes, :ordered, '{}', :now, :now, 0)",
            id=endpoint_id,
            yes=True,
            ordered=ordered,
            now=NOW,
        )
    _run(
        url,
        "INSERT INTO event (id, organization_id, type, occurred_at, received_at, data) "
        "VALUES ('evt_1', 'acme', 'ping', :occurred, :now, '{}')",
        occurred=OCCURRED,
        now=NOW,
    )
    deliveries = [
        ("dlv_ordered_pending", "ep_ordered", "pending"),
        ("dlv_ordered_done", "ep_ordered", "succeeded"),
        ("dlv_plain_pending", "ep_plain", "pending"),
        ("dlv_plain_failed", "ep_plain", "failed"),
    ]
    for delivery_id, endpoint_id, status in deliveries:
        _run(
            url,
            "INSERT INTO delivery (id, event_id, endpoint_id, organization_id, status, "
            "attempt_count, next_attempt_at, created_at, updated_at, next_trigger) VALUES "
            "(:id, 'evt_1', :endpoint, 'acme', :status, 0, :due, :now, :now, 'scheduled')",
            id=delivery_id,
            endpoint=endpoint_id,
            status=status,
            due=DUE,
            now=NOW,
        )


def _deliveries(url: str, *columns: str) -> dict[str, tuple[Any, ...]]:
    rows = _run(url, f"SELECT id, {', '.join(columns)} FROM delivery")
    return {row[0]: tuple(row[1:]) for row in rows}


def _check(url: str) -> None:
    config = alembic_config(url)
    command.upgrade(config, BEFORE)
    _seed(url)
    command.upgrade(config, AFTER)
    assert _deliveries(url, "occurred_at", "next_attempt_at") == {
        "dlv_ordered_pending": (OCCURRED, None),
        "dlv_ordered_done": (OCCURRED, None),
        "dlv_plain_pending": (OCCURRED, DUE),
        "dlv_plain_failed": (OCCURRED, None),
    }
    command.downgrade(config, BEFORE)
    assert _deliveries(url, "next_attempt_at") == {
        "dlv_ordered_pending": (NOW,),
        "dlv_ordered_done": (None,),
        "dlv_plain_pending": (DUE,),
        "dlv_plain_failed": (None,),
    }


def test_sqlite_ordered_queues_are_held_by_the_migration(tmp_path: object) -> None:
    _check(f"sqlite+aiosqlite:///{tmp_path}/migrated.db")


@pytest.mark.postgres
def test_postgres_ordered_queues_are_held_by_the_migration(empty_postgres_url: str) -> None:
    _check(empty_postgres_url)

"""Rows the outbox and the queue hand to the driver as tuples (`BulkStatement`) are stored
exactly as SQLAlchemy's own executemany of the same INSERT or UPDATE stores them, on SQLite and
PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import aiosqlite
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

from app.store import deliveries as queue
from app.store import outbox
from app.store.bulk import PAGE_ROWS, BulkStatement
from app.store.db import (
    SessionFactory,
    column_json,
    make_engine,
    make_session_factory,
    transaction,
)
from tests.integration.outbox_helpers import stored_endpoint

NOW = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
EVENT_COLUMNS = outbox._INSERT_EVENTS.columns
DELIVERY_COLUMNS = outbox._INSERT_DELIVERIES.columns
ATTEMPT_COLUMNS = queue._INSERT_ATTEMPTS.columns

# Event values worth comparing: times with and without microseconds, in another zone, in
# year 1; empty and absent texts; JSON of every kind, with integers orjson refuses.
EVENT_VALUES: list[dict[str, Any]] = [
    {
        "account_id": None,
        "occurred_at": NOW,
        "focus": "Encounter/enc-1",
        "data": {"resourceType": "Encounter", "id": "enc-1", "n": [1, 1.5, -0.0, 1e300, None]},
        "source": "fhir-push",
        "idempotency_key": None,
    },
    {
        "account_id": "acc-1",
        "occurred_at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=5.5))),
        "focus": None,
        "data": {"text": 'Zoë 李 🎉 \u2028 "quoted" \\', "big": 2**70, "empty": {}},
        "source": None,
        "idempotency_key": "key-1",
    },
    {
        "account_id": "",
        "occurred_at": datetime(1, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
        "focus": "",
        "data": {"list": [[], [{}]], "negative": -(2**65), "float": 0.1},
        "source": "",
        "idempotency_key": "",
    },
]


@dataclass
class Store:
    sessions: SessionFactory
    endpoint_id: str


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    engine = make_engine(database_url)
    sessions = make_session_factory(engine)
    async with transaction(sessions) as session:
        endpoint_id = await stored_endpoint(session, "acme", NOW)
    yield Store(sessions, endpoint_id)
    await engine.dispose()


def event_rows() -> list[dict[str, Any]]:
    return [
        {
            "id": f"evt_{number:020d}",
            "organization_id": "acme",
            "type": "encounter.updated",
            "received_at": NOW,
            "change_key": f"encounter.updated:Encounter/enc-{number}/_history/1#update",
            **values,
        }
        for number, values in enumerate(EVENT_VALUES)
    ]


async def stored_then_undone(
    store: Store, insert: Callable[[AsyncSession], Awaitable[None]]
) -> dict[str, list[Any]]:
    """What `insert` stores, as the text the database holds (events, deliveries, attempts); then
    rolled back, so the other way of inserting can store the very same rows."""
    async with store.sessions() as session, session.begin():
        await insert(session)
        connection = await session.connection()
        found = {}
        for table, columns in (
            ("event", EVENT_COLUMNS),
            ("delivery", DELIVERY_COLUMNS),
            ("attempt", ATTEMPT_COLUMNS),
        ):
            shown = ", ".join(f"CAST({name} AS TEXT)" for name in columns)
            query = f"SELECT {shown} FROM {table} ORDER BY id"
            found[table] = [tuple(row) for row in (await connection.exec_driver_sql(query))]
        await session.rollback()
    return found


def as_tuples(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> list[tuple[Any, ...]]:
    return [tuple(row[name] for name in columns) for row in rows]


async def test_events_are_stored_as_sqlalchemy_stores_them(store: Store) -> None:
    async def by_core(session: AsyncSession) -> None:
        connection = await session.connection()
        statement = outbox._insert_events_statement(connection.dialect.name)
        await connection.execute(statement, event_rows())

    async def by_bulk(session: AsyncSession) -> None:
        returned = await outbox._INSERT_EVENTS.execute(
            session, as_tuples(event_rows(), EVENT_COLUMNS)
        )
        assert sorted(event_id for event_id, _ in returned) == [r["id"] for r in event_rows()]

    expected = await stored_then_undone(store, by_core)
    assert len(expected["event"]) == len(EVENT_VALUES)
    assert await stored_then_undone(store, by_bulk) == expected


async def stored_both_ways(
    store: Store,
    bulk: BulkStatement,
    table: sa.Table,
    rows: list[tuple[Any, ...]],
    before: Callable[[AsyncSession], Awaitable[None]],
) -> dict[str, list[Any]]:
    """What the database holds after `before` and `rows` (in `bulk.columns` order) inserted
    by SQLAlchemy's executemany; checked to be the same when `bulk` inserts them."""

    async def by_core(session: AsyncSession) -> None:
        await before(session)
        connection = await session.connection()
        await connection.execute(
            sa.insert(table), [dict(zip(bulk.columns, row, strict=True)) for row in rows]
        )

    async def by_bulk(session: AsyncSession) -> None:
        await before(session)
        await bulk.execute(session, rows)

    expected = await stored_then_undone(store, by_core)
    assert await stored_then_undone(store, by_bulk) == expected
    return expected


async def events_stored(session: AsyncSession) -> None:
    await outbox._INSERT_EVENTS.execute(session, as_tuples(event_rows(), EVENT_COLUMNS))


async def test_deliveries_are_stored_as_sqlalchemy_stores_them(store: Store) -> None:
    event_id = event_rows()[0]["id"]
    rows = [
        (
            "dlv_0",
            event_id,
            store.endpoint_id,
            "acme",
            "pending",
            0,
            NOW,
            None,
            NOW - timedelta(hours=1),
            NOW,
            NOW,
            None,
            "scheduled",
        ),
        (
            "dlv_1",
            event_id,
            store.endpoint_id,
            "acme",
            "failed",
            3,
            None,
            NOW,
            NOW - timedelta(hours=2),
            NOW,
            NOW,
            7,
            "manual",
        ),
    ]
    stored = await stored_both_ways(
        store, outbox._INSERT_DELIVERIES, outbox._delivery, rows, events_stored
    )
    assert len(stored["delivery"]) == len(rows)


@pytest.mark.parametrize("count", [PAGE_ROWS, 2 * PAGE_ROWS + 5])
async def test_many_deliveries_are_stored_as_sqlalchemy_stores_them(
    store: Store, count: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Enough rows for pages of multi-row VALUES on SQLite: whole pages, and some more."""
    event_id = event_rows()[0]["id"]
    rows = [
        (
            f"dlv_{n:04d}",
            event_id,
            store.endpoint_id,
            "acme",
            "pending" if n % 2 else "failed",
            n,
            NOW + timedelta(microseconds=n) if n % 2 else None,
            None,
            NOW - timedelta(seconds=n),
            NOW,
            NOW,
            n if n % 3 else None,
            "scheduled",
        )
        for n in range(count)
    ]
    pages: list[int] = []  # rows of VALUES per statement SQLite ran
    run_on_thread = aiosqlite.Connection._execute

    async def seen(self: aiosqlite.Connection, function: Callable[..., Any], *args: Any) -> Any:
        statement = args[1] if len(args) > 1 else None
        if isinstance(statement, str) and statement.startswith("INSERT INTO delivery"):
            pages.append(statement.count("), (") + 1)
        return await run_on_thread(self, function, *args)

    monkeypatch.setattr(aiosqlite.Connection, "_execute", seen)
    stored = await stored_both_ways(
        store, outbox._INSERT_DELIVERIES, outbox._delivery, rows, events_stored
    )
    engine = store.sessions.kw["bind"].sync_engine
    assert len(stored["delivery"]) == len(rows)
    if engine.dialect.name == "sqlite":  # PostgreSQL takes them all in one statement
        assert PAGE_ROWS in pages, pages


async def test_attempts_are_stored_as_sqlalchemy_stores_them(store: Store) -> None:
    event_id = event_rows()[0]["id"]
    delivery = (
        "dlv_0",
        event_id,
        store.endpoint_id,
        "acme",
        "pending",
        0,
        NOW,
        None,
        NOW,
        NOW,
        NOW,
    )
    rows = [
        ("att_0", "dlv_0", store.endpoint_id, NOW, 12, 200, None, "ok", "scheduled"),
        (
            "att_1",
            "dlv_0",
            store.endpoint_id,
            NOW + timedelta(seconds=1),
            0,
            None,
            "timeout",
            "",
            "manual",
        ),
        ("att_2", "dlv_0", store.endpoint_id, NOW, 5, 500, None, 'Zoë 李 🎉 "x" \\', "replay"),
    ]

    async def queued(session: AsyncSession) -> None:
        await events_stored(session)
        await outbox._INSERT_DELIVERIES.execute(session, [(*delivery, None, "scheduled")])

    stored = await stored_both_ways(store, queue._INSERT_ATTEMPTS, queue._attempt, rows, queued)
    assert len(stored["attempt"]) == len(rows)


async def test_pages_of_returning_rows_skip_the_conflicts(store: Store) -> None:
    rows = [
        {**event_rows()[n % 3], "id": f"evt_{n:020d}", "idempotency_key": None} for n in range(7)
    ]
    for number, row in enumerate(rows):
        row["change_key"] = f"change-{number}"
    rows[5]["change_key"] = rows[1]["change_key"]  # the same change twice: not stored again
    async with transaction(store.sessions) as session:
        dialect = (await session.connection()).dialect
        dialect.insertmanyvalues_page_size = 2
        try:
            returned = await outbox._INSERT_EVENTS.execute(session, as_tuples(rows, EVENT_COLUMNS))
        finally:
            dialect.insertmanyvalues_page_size = 1000
        connection = await session.connection()
        query = "SELECT endpoints_version FROM organization"
        version = (await connection.exec_driver_sql(query)).scalar_one()
    expected = [(row["id"], version) for number, row in enumerate(rows) if number != 5]
    assert sorted(tuple(found) for found in returned) == expected


async def test_each_engine_binds_with_its_own_settings(store: Store, database_url: str) -> None:
    """Two engines of one dialect, two JSON serializers: each engine's rows carry its own."""
    spaced = create_async_engine(database_url, json_serializer=lambda v: json.dumps(v, indent=1))
    rows = [{**row, "idempotency_key": None} for row in event_rows()[:1]]
    try:
        async with transaction(store.sessions) as session:
            await outbox._INSERT_EVENTS.execute(session, as_tuples(rows, EVENT_COLUMNS))
        rows[0].update(id="evt_spaced", change_key="spaced")
        async with transaction(make_session_factory(spaced)) as session:
            await outbox._INSERT_EVENTS.execute(session, as_tuples(rows, EVENT_COLUMNS))
            connection = await session.connection()
            query = "SELECT id, CAST(data AS TEXT) FROM event ORDER BY id"
            found = [tuple(row) for row in (await connection.exec_driver_sql(query)).all()]
            texts: dict[str, str] = dict(found)
    finally:
        await spaced.dispose()
    assert texts["evt_spaced"] == json.dumps(rows[0]["data"], indent=1)
    assert texts[event_rows()[0]["id"]] == column_json(rows[0]["data"])


async def test_outcomes_are_recorded_as_sqlalchemy_records_them(store: Store) -> None:
    """The UPDATE that moves deliveries to their next state after an attempt, including one
    whose lease no longer matches (another claim has it: left as it is)."""
    event_id = event_rows()[0]["id"]
    lease = NOW + timedelta(minutes=1)
    deliveries = [
        (
            f"dlv_{n}",
            event_id,
            store.endpoint_id,
            "acme",
            "delivering",
            n,
            NOW,
            lease,
            NOW,
            NOW,
            NOW,
        )
        for n in range(4)
    ]
    rows = [
        ("succeeded", None, NOW, "dlv_0", lease),
        ("pending", NOW + timedelta(seconds=30), NOW, "dlv_1", lease),
        ("failed", None, NOW + timedelta(microseconds=1), "dlv_2", lease),
        ("succeeded", None, NOW, "dlv_3", lease + timedelta(seconds=1)),  # not its lease
    ]

    async def claimed(session: AsyncSession) -> None:
        await events_stored(session)
        await outbox._INSERT_DELIVERIES.execute(
            session, [(*delivery, None, "manual") for delivery in deliveries]
        )

    async def by_core(session: AsyncSession) -> None:
        await claimed(session)
        connection = await session.connection()
        statement = queue._RECORD_OUTCOMES.statement_for(connection.dialect.name)
        columns = queue._RECORD_OUTCOMES.columns
        await connection.execute(statement, [dict(zip(columns, row, strict=True)) for row in rows])

    async def by_bulk(session: AsyncSession) -> None:
        await claimed(session)
        await queue._RECORD_OUTCOMES.execute(session, rows)

    expected = await stored_then_undone(store, by_core)
    assert await stored_then_undone(store, by_bulk) == expected
    by_id = {row[0]: row for row in expected["delivery"]}
    status, attempts, trigger = (
        DELIVERY_COLUMNS.index(n) for n in ("status", "attempt_count", "next_trigger")
    )
    assert [by_id[f"dlv_{n}"][status] for n in range(4)] == [
        "succeeded",
        "pending",
        "failed",
        "delivering",
    ]
    assert [by_id[f"dlv_{n}"][attempts] for n in range(4)] == ["1", "2", "3", "3"]
    assert [by_id[f"dlv_{n}"][trigger] for n in range(4)] == ["scheduled"] * 3 + ["manual"]


async def test_an_update_must_name_its_parameters_in_the_order_of_its_sql(store: Store) -> None:
    """Tuples carry no names: parameters listed in another order than the SQL's are refused,
    not written to each other's columns."""
    delivery = queue._delivery
    update = (
        sa.update(delivery)
        .where(delivery.c.id == sa.bindparam("delivery_id"))
        .values(status=sa.bindparam("new_status"))
    )
    swapped = BulkStatement(update, ("delivery_id", "new_status"))
    async with store.sessions() as session:
        with pytest.raises(ValueError, match="not exactly"):
            await swapped.execute(session, [("dlv_0", "failed")])

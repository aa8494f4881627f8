"""SQLite through aiosqlite (`app/store/sqlite_driver.py`): one trip to the driver's thread per
statement, none to commit or roll back when SQLite has no transaction open, and what a
transaction wrote is committed or rolled back all the same; a `BulkStatement` runs straight on
the driver, one trip a statement, and its errors are SQLAlchemy's. And `db.transaction` runs
work registered with `before_commit` once, last, inside the transaction, and not when it
fails."""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel.ext.asyncio.session import AsyncSession

from app.store.bulk import PAGE_ROWS, BulkStatement
from app.store.db import (
    SessionFactory,
    before_commit,
    make_engine,
    make_session_factory,
    transaction,
)


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'driver.db'}")
    async with engine.begin() as connection:
        await connection.exec_driver_sql("CREATE TABLE note (id INTEGER PRIMARY KEY, text TEXT)")
    yield engine
    await engine.dispose()


@pytest.fixture
def trips(monkeypatch: pytest.MonkeyPatch) -> collections.Counter[str]:
    """The functions run on the aiosqlite thread, by name, from here on."""
    counted: collections.Counter[str] = collections.Counter()
    original = aiosqlite.Connection._execute

    async def counting(self: aiosqlite.Connection, function: Callable[..., Any], *args: Any) -> Any:
        counted[getattr(function, "__name__", repr(function))] += 1
        return await original(self, function, *args)

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counting)
    return counted


async def notes(sessions: SessionFactory) -> list[str]:
    async with transaction(sessions) as session:
        connection = await session.connection()
        result = await connection.exec_driver_sql("SELECT text FROM note ORDER BY id")
        return [row[0] for row in result]


async def test_a_write_costs_a_trip_per_statement_and_one_to_commit(
    engine: AsyncEngine, trips: collections.Counter[str]
) -> None:
    sessions = make_session_factory(engine)
    await notes(sessions)  # the pool holds its connection: no trip to open one below
    trips.clear()
    async with transaction(sessions) as session:
        connection = await session.connection()
        await connection.exec_driver_sql("INSERT INTO note (text) VALUES ('a')")
        await connection.exec_driver_sql("INSERT INTO note (text) VALUES ('b')")
    assert dict(trips) == {"_execute": 2, "commit": 1}
    trips.clear()
    assert await notes(sessions) == ["a", "b"]
    assert dict(trips) == {"_execute": 1}  # read only: nothing to commit or roll back


async def test_what_a_failed_transaction_wrote_is_rolled_back(
    engine: AsyncEngine, trips: collections.Counter[str]
) -> None:
    sessions = make_session_factory(engine)
    with pytest.raises(RuntimeError):
        async with transaction(sessions) as session:
            connection = await session.connection()
            await connection.exec_driver_sql("INSERT INTO note (text) VALUES ('lost')")
            raise RuntimeError("the unit of work fails")
    assert trips["rollback"] == 1
    assert await notes(sessions) == []


async def test_a_session_closed_mid_transaction_leaves_nothing_behind(engine: AsyncEngine) -> None:
    sessions = make_session_factory(engine)
    async with sessions() as session:  # no commit: closing gives the connection back
        connection = await session.connection()
        await connection.exec_driver_sql("INSERT INTO note (text) VALUES ('uncommitted')")
    assert await notes(sessions) == []
    async with transaction(sessions) as session:  # the connection is usable again
        connection = await session.connection()
        await connection.exec_driver_sql("INSERT INTO note (text) VALUES ('kept')")
    assert await notes(sessions) == ["kept"]


async def write(session: AsyncSession, text: str) -> None:
    await session.exec(sa.text("INSERT INTO note (text) VALUES (:text)"), params={"text": text})


NOTE = sa.Table(
    "note", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True), sa.Column("text", sa.Text)
)
INSERT_NOTES = BulkStatement(sa.insert(NOTE), ("id", "text"))
INSERT_NOTES_RETURNING = BulkStatement(sa.insert(NOTE).returning(NOTE.c.id), ("id", "text"))


async def test_a_bulk_statement_runs_on_the_driver_one_trip_a_statement(
    engine: AsyncEngine, trips: collections.Counter[str]
) -> None:
    sessions = make_session_factory(engine)
    await notes(sessions)
    through_sqlalchemy: list[str] = []
    sa.event.listen(
        engine.sync_engine,
        "before_cursor_execute",
        lambda _conn, _cursor, statement, *_: through_sqlalchemy.append(statement),
    )
    trips.clear()
    rows = [(n, f"note {n}") for n in range(1, PAGE_ROWS + 3)]  # a page, and 2 rows more
    async with transaction(sessions) as session:
        assert await INSERT_NOTES.execute(session, rows) == []
        returned = await INSERT_NOTES_RETURNING.execute(session, [(100, "returned")])
    assert [tuple(row) for row in returned] == [(100,)]
    assert dict(trips) == {"_execute_many": 2, "_execute": 1, "commit": 1}
    assert through_sqlalchemy == []
    assert await notes(sessions) == [text for _, text in rows] + ["returned"]


async def test_a_bulk_statement_fails_as_sqlalchemy_would_and_nothing_is_kept(
    engine: AsyncEngine,
) -> None:
    sessions = make_session_factory(engine)
    with pytest.raises(IntegrityError) as raised:
        async with transaction(sessions) as session:
            await INSERT_NOTES.execute(session, [(1, "first")])
            await INSERT_NOTES.execute(session, [(2, "second"), (1, "the same id")])
    assert "UNIQUE constraint failed: note.id" in str(raised.value.orig)
    assert raised.value.statement is not None and "INSERT INTO note" in raised.value.statement
    assert await notes(sessions) == []
    async with transaction(sessions) as session:  # the connection is usable again
        await INSERT_NOTES.execute(session, [(1, "kept")])
    assert await notes(sessions) == ["kept"]


async def test_work_before_commit_runs_once_after_the_rest_and_commits_with_it(
    engine: AsyncEngine,
) -> None:
    async def last(session: AsyncSession) -> None:
        await write(session, "last")

    sessions = make_session_factory(engine)
    async with transaction(sessions) as session:
        before_commit(session, "last", last)
        await write(session, "first")
        before_commit(session, "last", last)  # the same name again: still once
        await write(session, "second")
    assert await notes(sessions) == ["first", "second", "last"]


async def test_work_before_commit_does_not_run_when_the_transaction_fails(
    engine: AsyncEngine,
) -> None:
    ran: list[str] = []

    async def last(session: AsyncSession) -> None:
        ran.append("last")

    sessions = make_session_factory(engine)
    with pytest.raises(RuntimeError):
        async with transaction(sessions) as session:
            before_commit(session, "last", last)
            await write(session, "first")
            raise RuntimeError("the unit of work fails")
    assert ran == [] and await notes(sessions) == []

"""SQLite through aiosqlite (`app/store/sqlite_driver.py`): one trip to the driver's thread per
statement, none to commit or roll back when SQLite has no transaction open, and what a
transaction wrote is committed or rolled back all the same."""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from app.store.db import SessionFactory, make_engine, make_session_factory, transaction


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

"""`db.transaction`: work registered with `before_commit` runs once, last, inside the
transaction (what it writes commits with the rest), and not at all when the transaction fails."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel.ext.asyncio.session import AsyncSession

from app.store.db import before_commit, make_engine, make_session_factory, transaction


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'transaction.db'}")
    async with engine.begin() as connection:
        await connection.exec_driver_sql("CREATE TABLE note (id INTEGER PRIMARY KEY, text TEXT)")
    yield engine
    await engine.dispose()


async def notes(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as connection:
        result = await connection.exec_driver_sql("SELECT text FROM note ORDER BY id")
        return [text for (text,) in result.all()]


async def write(session: AsyncSession, text: str) -> None:
    await session.exec(sa.text("INSERT INTO note (text) VALUES (:text)"), params={"text": text})


async def test_work_before_commit_runs_once_after_the_rest_and_commits_with_it(
    engine: AsyncEngine,
) -> None:
    async def last(session: AsyncSession) -> None:
        await write(session, "last")

    async with transaction(make_session_factory(engine)) as session:
        before_commit(session, "last", last)
        await write(session, "first")
        before_commit(session, "last", last)  # the same name again: still once
        await write(session, "second")
    assert await notes(engine) == ["first", "second", "last"]


async def test_work_before_commit_does_not_run_when_the_transaction_fails(
    engine: AsyncEngine,
) -> None:
    ran: list[str] = []

    async def last(session: AsyncSession) -> None:
        ran.append("last")

    with pytest.raises(RuntimeError):
        async with transaction(make_session_factory(engine)) as session:
            before_commit(session, "last", last)
            await write(session, "first")
            raise RuntimeError("the unit of work fails")
    assert ran == [] and await notes(engine) == []

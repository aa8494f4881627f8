"""Shared fixtures: settings, a fake clock, databases on SQLite and PostgreSQL, the app."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine
from sqlmodel import SQLModel

import app.store.tables  # noqa: F401
from app.config import Settings

PG_ADMIN_URL = os.environ.get(
    "TIDINGS_TEST_PG", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
SECRET_KEY = "test-secret-key-that-is-long-enough-0123456789"


def run_in_thread(coroutine: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine to completion on its own loop, even when called from inside a loop."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, coroutine).result()


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """No TIDINGS_* variable of the developer's shell leaks into a test."""
    for name in list(os.environ):
        if name.startswith("TIDINGS_"):
            monkeypatch.delenv(name)


@dataclass
class FakeClock:
    """A clock that only moves when told to."""

    now: datetime = field(default_factory=lambda: datetime.now(UTC).replace(microsecond=0))

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[str]:
    """A database for this test session, dropped at the end."""
    name = f"tidings_test_{uuid.uuid4().hex[:10]}"

    async def create() -> None:
        engine = create_async_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        async with engine.connect() as connection:
            await connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
        await engine.dispose()
        engine = create_async_engine(PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name)
        async with engine.begin() as connection:
            await connection.run_sync(SQLModel.metadata.create_all)
        await engine.dispose()

    async def drop() -> None:
        engine = create_async_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        async with engine.connect() as connection:
            await connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await engine.dispose()

    run_in_thread(create())
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    run_in_thread(drop())


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """An empty database with the current schema: a fresh SQLite file, or a truncated PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'tidings.db'}"
        engine = create_async_engine(url)
        async with engine.begin() as connection:
            await connection.run_sync(SQLModel.metadata.create_all)
        await engine.dispose()
        yield url
        return
    url = request.getfixturevalue("postgres_template")
    engine = create_async_engine(url)
    async with engine.begin() as connection:
        names = ", ".join(f'"{table.name}"' for table in SQLModel.metadata.sorted_tables)
        await connection.execute(sa.text(f"TRUNCATE {names} CASCADE"))
    await engine.dispose()
    yield url


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(
        database_url=database_url,
        secret_key=SECRET_KEY,
        allowed_networks=(ipaddress.ip_network("127.0.0.0/8"),),
    )


@pytest.fixture
def empty_postgres_url() -> Iterator[str]:
    """A brand-new, empty PostgreSQL database for this one test."""
    name = f"tidings_empty_{uuid.uuid4().hex[:10]}"

    async def run(statement: str) -> None:
        engine = create_async_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        async with engine.connect() as connection:
            await connection.execute(sa.text(statement))
        await engine.dispose()

    run_in_thread(run(f'CREATE DATABASE "{name}"'))
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    run_in_thread(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

"""Alembic head builds exactly the schema the models describe, on both databases."""

from __future__ import annotations

import asyncio

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine
from sqlmodel import SQLModel

from app.store import migrate


def _differences(url: str) -> list[object]:
    async def compare() -> list[object]:
        engine = create_async_engine(url)
        async with engine.connect() as connection:
            diff = await connection.run_sync(
                lambda sync: compare_metadata(
                    MigrationContext.configure(sync, opts={"compare_type": True}),
                    SQLModel.metadata,
                )
            )
        await engine.dispose()
        return list(diff)

    return asyncio.run(compare())


def test_sqlite_head_equals_models(tmp_path: object) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/migrated.db"
    migrate.upgrade_to_head(url)
    assert _differences(url) == []


@pytest.mark.postgres
def test_postgres_head_equals_models(empty_postgres_url: str) -> None:
    migrate.upgrade_to_head(empty_postgres_url)
    assert _differences(empty_postgres_url) == []
    migrate.upgrade_to_head(empty_postgres_url)  # a second run is a no-op

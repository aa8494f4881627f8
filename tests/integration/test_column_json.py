"""JSON columns store any value the API accepts and read it back unchanged, on both databases,
whichever serializer (`orjson`, or the standard library's for what `orjson` refuses) wrote it."""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa

from app.store.db import column_json, make_engine

VALUES: list[Any] = [
    {"resourceType": "Patient", "name": [{"given": ["Zoë", "李"]}], "active": True},
    {"big": 2**70, "negative": -(2**65), "nested": [[], {}, [None, 1.5, -0.0, 1e300]]},
    {"texts": ["emoji 🎉", 'quote " and backslash \\', "\u2028 line separator"]},
    {"beyond 64 bits": [12345678901234567890123]},
]

_probe = sa.Table(
    "json_column_probe",
    sa.MetaData(),
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("document", sa.JSON, nullable=False),
)


async def test_json_columns_read_back_what_was_stored(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_probe.create, checkfirst=True)
            await connection.execute(
                _probe.insert(), [{"id": n, "document": v} for n, v in enumerate(VALUES)]
            )
        async with engine.connect() as connection:
            rows = (await connection.execute(sa.select(_probe).order_by(_probe.c.id))).all()
            await connection.run_sync(_probe.drop)
            await connection.commit()
    finally:
        await engine.dispose()
    assert [row.document for row in rows] == VALUES


@pytest.mark.parametrize(
    "value",
    [{"big": 2**64}, {1: "integer key"}, {"lone": "\ud800"}],
    ids=["integer beyond 64 bits", "non-string key", "lone surrogate"],
)
def test_what_orjson_refuses_is_written_by_the_standard_library(value: Any) -> None:
    assert column_json(value) == json.dumps(value)

"""UTCDateTime: aware UTC in, naive UTC stored; its bind conversion remembers only its last
answer, and only for the very same object."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect

from app.store.types import UTCDateTime

MOMENT = datetime(2026, 11, 23, 12, 30, 45, 123456, tzinfo=UTC)


def bind_processor(dialect: Dialect) -> Callable[[Any], Any]:
    """The conversion SQLAlchemy applies to bound values of the column type on `dialect`."""
    process = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)
    return process if process is not None else (lambda value: value)


@pytest.mark.parametrize("dialect", [sqlite.aiosqlite.dialect(), postgresql.asyncpg.dialect()])
def test_each_value_is_converted_for_itself(dialect: Dialect) -> None:
    process = bind_processor(dialect)
    other_zone = MOMENT.astimezone(timezone(timedelta(hours=2)))
    sequence = [MOMENT, MOMENT, MOMENT + timedelta(microseconds=1), MOMENT, other_zone, None]
    for value in sequence:
        assert process(value) == bind_processor(dialect)(value)  # a fresh one, no memory
    assert process(other_zone) == process(MOMENT)  # the same instant, stored alike


def test_a_different_object_for_the_same_instant_is_converted_anew() -> None:
    process = bind_processor(sqlite.aiosqlite.dialect())
    assert process(MOMENT) == process(MOMENT.replace()) == "2026-11-23 12:30:45.123456"
    later = MOMENT + timedelta(seconds=1)
    assert process(later) == "2026-11-23 12:30:46.123456"


def test_sqlite_stores_naive_utc_text() -> None:
    process = bind_processor(sqlite.aiosqlite.dialect())
    assert process(MOMENT) == "2026-11-23 12:30:45.123456"
    assert process(MOMENT.astimezone(timezone(timedelta(hours=-5)))) == "2026-11-23 12:30:45.123456"


def test_naive_datetimes_are_refused() -> None:
    process = bind_processor(sqlite.aiosqlite.dialect())
    with pytest.raises(ValueError, match="naive"):
        process(datetime(2026, 1, 1))

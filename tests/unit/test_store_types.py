"""UTCDateTime: aware UTC in, naive UTC stored; its bind conversion remembers only its last
answer, and only for the very same object."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import example, given
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect

from app.store import types
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


def test_sqlite_takes_the_isoformat_path() -> None:
    utc_datetime = UTCDateTime().impl_instance
    assert types._stores_default_sqlite_text(utc_datetime, sqlite.aiosqlite.dialect())
    assert not types._stores_default_sqlite_text(utc_datetime, postgresql.asyncpg.dialect())


@given(
    moment=st.datetimes(
        timezones=st.builds(timezone, st.timedeltas(timedelta(hours=-23), timedelta(hours=23))),
        allow_imaginary=False,
    )
)
@example(moment=datetime(1, 1, 1, tzinfo=UTC))
@example(moment=datetime(999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC))
@example(moment=datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC))
@example(moment=MOMENT.replace(microsecond=0))
def test_sqlite_text_is_sqlalchemys_own(moment: datetime) -> None:
    dialect = sqlite.aiosqlite.dialect()
    try:
        naive = UTCDateTime().process_bind_param(moment, dialect)
    except OverflowError:  # before year 1 or after 9999 in UTC: no way stores it
        return
    expected = sqlite.DATETIME().bind_processor(dialect)(naive)
    assert types._sqlite_text(moment) == expected
    assert bind_processor(dialect)(moment) == expected


def test_naive_datetimes_are_refused() -> None:
    process = bind_processor(sqlite.aiosqlite.dialect())
    with pytest.raises(ValueError, match="naive"):
        process(datetime(2026, 1, 1))

"""Column types that behave the same on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect


class UTCDateTime(sa.TypeDecorator[datetime]):
    """An aware UTC datetime, stored as naive UTC so both databases compare it alike."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Store naive UTC; refuse naive input, which would be ambiguous."""
        return None if value is None else _in_utc(value).replace(tzinfo=None)

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any] | None:
        """The driver's bind conversion, remembering its last answer: batches bind the same
        moment (`now`) for many rows and columns, and formatting it is the costly part on
        SQLite."""
        convert: Callable[[Any], Any] | None
        if _stores_default_sqlite_text(self.impl_instance, dialect):
            convert = _sqlite_text
        else:
            convert = super().bind_processor(dialect)
        if convert is None:
            return None
        last: tuple[Any, Any] = (None, None)

        def process(value: Any) -> Any:
            nonlocal last
            seen, converted = last
            if value is seen and value is not None:
                return converted
            converted = convert(value)
            last = (value, converted)
            return converted

        return process

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        """Read back as an aware UTC datetime."""
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC)


# SQLAlchemy's SQLite DATETIME text (`sqlalchemy.dialects.sqlite.DATETIME`'s default format).
_SQLITE_STORAGE_FORMAT = (
    "%(year)04d-%(month)02d-%(day)02d %(hour)02d:%(minute)02d:%(second)02d.%(microsecond)06d"
)


def _stores_default_sqlite_text(impl: sa.types.TypeEngine[Any], dialect: Dialect) -> bool:
    """Whether `impl` binds datetimes on `dialect` as SQLAlchemy's default SQLite text."""
    storage = getattr(impl.dialect_impl(dialect), "_storage_format", None)
    return dialect.name == "sqlite" and storage == _SQLITE_STORAGE_FORMAT


def _sqlite_text(value: datetime | None) -> str | None:
    """The text `process_bind_param` and then SQLAlchemy's SQLite DATETIME make of `value`
    (`2026-01-02 03:04:05.000006`), in one C call: 1.1 µs against 2.6 µs for the two steps,
    which an event's occurrence time, a new moment on every row, cannot skip."""
    if value is None:
        return None
    return _in_utc(value).isoformat(" ", "microseconds")[:-6]  # without "+00:00"


def _in_utc(value: datetime) -> datetime:
    """`value` in UTC; naive input is refused, being ambiguous."""
    if value.tzinfo is None:
        raise ValueError("naive datetimes are not stored; pass an aware UTC datetime")
    return value.astimezone(UTC)

"""INSERTs and UPDATEs of many rows, handed to the driver as tuples.

SQLAlchemy's executemany turns every row's dict into the driver's parameters a value at a
time (`construct_params`, then each parameter's bind processor, in Python): for the event and
delivery rows of a 500-change FHIR Bundle that was a fifth of the API's CPU, and for the
worker's recorded outcomes 6-9 µs a delivery. `BulkStatement` compiles its statement once per
engine's dialect with SQLAlchemy, so the text, the casts and the RETURNING are the ones
SQLAlchemy would send; takes rows as tuples in the order of its parameters; converts the
values whose parameter type has a bind processor with that same processor, so the stored
values are exactly those of `connection.execute(statement, dicts)`; and passes the result to
the driver (on SQLite straight, `sqlite_driver.execute_on_driver`; on PostgreSQL with
`exec_driver_sql`):

- a plain INSERT on SQLite: from `PAGE_ROWS` rows up, one executemany of a multi-row VALUES
  statement of exactly that many rows, for every whole page, and one executemany of the rest.
  An executemany binds and steps every row on its own: for 500 delivery rows, 4.8 against
  7.0 µs a row (4.1-4.3 µs with one statement of all 500 rows, but SQLite prepares a statement
  per text and keeps the last 128 per connection: statements of 64-191 rows took 30 MB);
- an UPDATE on SQLite: one executemany;
- a plain INSERT or UPDATE on PostgreSQL: one statement over arrays, a column each
  (`unnest`). An executemany runs the statement once per row on the server; one statement
  for all the rows cost the server 13-16 against 22 µs per row for the worker's UPDATE of 256
  deliveries (about 40 % less), and it is one round trip;
- an INSERT ... RETURNING: multi-row VALUES pages as SQLAlchemy's "insertmanyvalues" makes them
  (sized by the dialect's `insertmanyvalues_page_size` and `insertmanyvalues_max_parameters`).
"""

from __future__ import annotations

import itertools
import re
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel.ext.asyncio.session import AsyncSession

from app.store.sqlite_driver import execute_on_driver, runs_one_trip

# The placeholder of one value, by the dialect's paramstyle (SQLite: qmark, asyncpg: $1, $2...).
_PLACEHOLDERS = {"qmark": r"\?", "numeric_dollar": r"\$\d+"}
_MAX_CACHED_TEXTS = 32
PAGE_ROWS = 64  # rows of the multi-row VALUES statement of a plain INSERT on SQLite, at most
_Statement = sa.Insert | sa.Update


class BulkStatement:
    """An INSERT (optionally with RETURNING) or an UPDATE of rows given as tuples in `columns`
    order; `statement` is the statement, or what makes it for a dialect's name (`ON CONFLICT`
    is spelled per dialect in SQLAlchemy).

    An INSERT's `columns` are the columns it fills; every column it would fill from a
    Python-side default must be among them: no default is applied here. An UPDATE's `columns`
    are its bound parameters, in the order they appear in its SQL (constants are written as
    SQL, not bound); a column with a Python-side `onupdate` must be set explicitly. The rows
    of one UPDATE must each match different rows of the table: on PostgreSQL they are applied
    by one statement, which changes a row once.
    """

    def __init__(
        self, statement: _Statement | Callable[[str], _Statement], columns: Sequence[str]
    ) -> None:
        self._statement = statement
        self.columns = tuple(columns)
        # Per dialect object, not name: bind processors carry the engine's own settings
        # (its `json_serializer`, for one).
        self._compiled: weakref.WeakKeyDictionary[Dialect, _Compiled] = weakref.WeakKeyDictionary()

    def statement_for(self, dialect_name: str) -> _Statement:
        """The statement as SQLAlchemy would run it on this dialect."""
        statement = self._statement
        if isinstance(statement, sa.Insert | sa.Update):
            return statement
        return statement(dialect_name)

    async def execute(self, session: AsyncSession, rows: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Run the statement for `rows` in the session's transaction; the rows an INSERT's
        RETURNING gave (else [])."""
        if not rows:
            return []
        connection = await session.connection()
        compiled = self._compiled_for(connection.dialect)
        parameters = compiled.bound(rows)
        if compiled.columnar is not None:
            arrays = tuple(list(values) for values in zip(*parameters, strict=True))
            await connection.exec_driver_sql(compiled.columnar, arrays)
            return []
        if compiled.returning:
            return await self._returning(connection, compiled, parameters)
        page_rows = min(PAGE_ROWS, _page_rows(connection.dialect, len(self.columns)))
        if compiled.pieces and len(parameters) >= page_rows:
            whole = len(parameters) - len(parameters) % page_rows
            pages = [_flat(parameters[at : at + page_rows]) for at in range(0, whole, page_rows)]
            await _execute(connection, compiled.text_for(page_rows), pages, many=True)
            parameters = parameters[whole:]
        if parameters:
            await _execute(connection, compiled.text, parameters, many=True)
        return []

    async def _returning(
        self, connection: AsyncConnection, compiled: _Compiled, parameters: list[tuple[Any, ...]]
    ) -> list[Any]:
        """Multi-row VALUES, a page of rows at a time; the rows RETURNING gave."""
        returned: list[Any] = []
        page_rows = _page_rows(connection.dialect, len(self.columns))
        for start in range(0, len(parameters), page_rows):
            page = parameters[start : start + page_rows]
            returned += await _execute(
                connection, compiled.text_for(len(page)), _flat(page), many=False
            )
        return returned

    def _compiled_for(self, dialect: Dialect) -> _Compiled:
        found = self._compiled.get(dialect)
        if found is None:
            statement = self.statement_for(dialect.name)
            found = self._compiled[dialect] = _compile(statement, self.columns, dialect)
        return found


@dataclass
class _Compiled:
    """The statement as one dialect runs it."""

    text: str  # one row
    processors: tuple[tuple[int, Callable[[Any], Any]], ...]  # (column index, bind processor)
    returning: bool
    columnar: str | None = None  # PostgreSQL, no RETURNING: the statement over `unnest` arrays
    head: str = ""  # for pages of VALUES: the text before the rows...
    pieces: tuple[str, ...] = ()  # ...one row's VALUES between its placeholders...
    tail: str = ""  # ...and the text after them
    numbered: bool = False  # placeholders are $1, $2... (else ?)
    texts: dict[int, str] = field(default_factory=dict)

    def bound(self, rows: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        """The rows with each value converted as its column's type binds it."""
        if not self.processors:
            return list(rows)
        bound = []
        for row in rows:
            values = list(row)
            for index, process in self.processors:
                values[index] = process(values[index])
            bound.append(tuple(values))
        return bound

    def text_for(self, count: int) -> str:
        """The statement with `count` rows of VALUES."""
        text = self.texts.get(count)
        if text is None:
            if len(self.texts) >= _MAX_CACHED_TEXTS:
                self.texts.clear()
            text = self.texts[count] = self.head + ", ".join(self._rows(count)) + self.tail
        return text

    def _rows(self, count: int) -> list[str]:
        width = len(self.pieces) - 1
        if not self.numbered:
            return ["?".join(self.pieces)] * count
        rows = []
        for row in range(count):
            parts = [self.pieces[0]]
            for index in range(width):
                parts += (f"${row * width + index + 1}", self.pieces[index + 1])
            rows.append("".join(parts))
        return rows


def _compile(statement: _Statement, columns: tuple[str, ...], dialect: Dialect) -> _Compiled:
    placeholder = _PLACEHOLDERS.get(dialect.paramstyle)
    if placeholder is None:
        raise NotImplementedError(f"paramstyle {dialect.paramstyle!r} is not supported")
    if isinstance(statement, sa.Insert):
        compiled = statement.compile(dialect=dialect, column_keys=list(columns))
        prefetch = compiled.insert_prefetch
    else:
        compiled = statement.compile(dialect=dialect)
        prefetch = compiled.update_prefetch
    if list(compiled.positiontup or ()) != list(columns) or prefetch:
        raise ValueError(f"the statement's parameters are not exactly {columns}")
    processors = []
    for index, name in enumerate(columns):
        process = compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect)
        if process is not None:
            processors.append((index, process))
    text = compiled.string
    result = _Compiled(text, tuple(processors), bool(compiled.effective_returning))
    if result.returning and not isinstance(statement, sa.Insert):
        raise NotImplementedError("only an INSERT may have RETURNING")
    if result.returning or (isinstance(statement, sa.Insert) and dialect.name == "sqlite"):
        _split_values(result, text, placeholder, len(columns))
    elif dialect.name == "postgresql":
        render_cast: Callable[..., str] = compiled.render_bind_cast  # untyped in SQLAlchemy
        casts = [
            render_cast(
                compiled.binds[name].type,
                compiled.binds[name].type.dialect_impl(dialect),
                f"${number}",
            )
            for number, name in enumerate(columns, start=1)
        ]
        result.columnar = _over_arrays(text, casts, isinstance(statement, sa.Insert))
    return result


def _over_arrays(text: str, casts: Sequence[str], insert: bool) -> str:
    """`text`, whose parameters are `casts` (`$1::VARCHAR`...), rewritten to take every row at
    once: a column of values per parameter, `unnest` turning them back into rows."""
    found = [list(re.finditer(re.escape(cast) + r"(?=[,) ]|$)", text)) for cast in casts]
    if any(len(matches) != 1 for matches in found):
        raise ValueError(f"cannot find each parameter of {text!r} once")
    arrays = ", ".join(f"{cast}[]" for cast in casts)
    if insert:
        row = f" VALUES ({', '.join(casts)})"
        if text.count(row) != 1:
            raise ValueError(f"cannot turn the VALUES of {text!r} into arrays")
        return text.replace(row, f" SELECT * FROM unnest({arrays})")
    if text.count(" WHERE ") != 1 or " FROM " in text:
        raise ValueError(f"cannot turn {text!r} into an UPDATE over arrays")
    for number, cast in enumerate(casts, start=1):
        text = re.sub(re.escape(cast) + r"(?=[,) ]|$)", f"_rows.p{number}", text)
    names = ", ".join(f"p{number}" for number in range(1, len(casts) + 1))
    return text.replace(" WHERE ", f" FROM unnest({arrays}) AS _rows({names}) WHERE ")


async def _execute(
    connection: AsyncConnection, text: str, parameters: Any, *, many: bool
) -> list[Any]:
    """Run the driver-ready `text`: an executemany (returning nothing) or one execution (its
    rows). On SQLite (`make_engine`'s) straight on the driver (`sqlite_driver`); elsewhere
    through `exec_driver_sql` (on PostgreSQL the trip to the server is the larger part)."""
    if runs_one_trip(connection):
        return await execute_on_driver(connection, text, parameters, many=many)
    result = await connection.exec_driver_sql(text, parameters)
    return [] if many else list(result.all())


def _flat(rows: Sequence[tuple[Any, ...]]) -> tuple[Any, ...]:
    """The values of a page of rows, as one multi-row VALUES statement takes them."""
    return tuple(itertools.chain.from_iterable(rows))


def _page_rows(dialect: Dialect, width: int) -> int:
    """Rows per multi-row INSERT: as many as SQLAlchemy's "insertmanyvalues" would put."""
    by_parameters = dialect.insertmanyvalues_max_parameters // width
    return max(1, min(dialect.insertmanyvalues_page_size, by_parameters))


def _split_values(compiled: _Compiled, text: str, placeholder: str, width: int) -> None:
    """Find the one row of VALUES in `text`, so pages of many rows can be written."""
    found = re.search(r" VALUES (\([^()]*\))", text)
    if found is None or len(re.findall(placeholder, text)) != width:
        raise ValueError(f"cannot page the VALUES of {text!r}")
    row = found.group(1)
    pieces = tuple(re.split(placeholder, row))
    if len(pieces) != width + 1:
        raise ValueError(f"cannot page the VALUES of {text!r}")
    compiled.head, compiled.tail = text[: found.start(1)], text[found.end(1) :]
    compiled.pieces = pieces
    compiled.numbered = placeholder != _PLACEHOLDERS["qmark"]
    if compiled.text_for(1) != text:
        raise ValueError(f"cannot page the VALUES of {text!r}")

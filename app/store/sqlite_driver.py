"""SQLite through aiosqlite with one trip to its thread per statement.

SQLAlchemy's aiosqlite adapter makes four trips to the aiosqlite thread for a statement that
returns rows (open a cursor, execute, fetch, close), and one to commit and one to roll back
every transaction, whether SQLite has one open or not (the pool rolls back every connection
returned to it). Each trip waits for the event loop to come round, so under load a
transaction of a few statements spent most of its time queued behind other work (a claim of
256 deliveries: 17 trips). `ONE_TRIP_AIOSQLITE` is the same DBAPI adapter with a cursor that
does all four in one function on that thread and keeps the results, and a connection that
skips the commit and the rollback when there is no transaction; engines take it as their
`module`. Transactions, types, errors and server-side cursors are aiosqlite's and
SQLAlchemy's, unchanged.

`execute_on_driver` goes one step further for statements that need nothing of SQLAlchemy's
execution layer (`bulk.BulkStatement`'s, compiled once and bound there): the same one trip,
without `exec_driver_sql`, which cost the event loop's thread more than the trip itself
(about 130 against 50 µs of CPU a statement).
"""

from __future__ import annotations

import collections
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

import aiosqlite
from sqlalchemy.connectors.asyncio import AsyncAdapt_dbapi_connection
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

# What one statement left behind: description, rowcount, lastrowid, and the rows, if any.
_Outcome = tuple[Any, int, int | None, list[Any] | None]


def _execute(connection: sqlite3.Connection, operation: str, parameters: Any) -> _Outcome:
    """On the aiosqlite thread: run one statement and collect everything it produced."""
    cursor = connection.cursor()
    try:
        cursor.execute(operation, parameters if parameters is not None else ())
        rows = cursor.fetchall() if cursor.description else None
        return cursor.description, cursor.rowcount, cursor.lastrowid, rows
    finally:
        cursor.close()


def _execute_many(
    connection: sqlite3.Connection, operation: str, parameters: Sequence[Any]
) -> _Outcome:
    """On the aiosqlite thread: run one statement for every set of parameters."""
    cursor = connection.cursor()
    try:
        cursor.executemany(operation, parameters)
        return cursor.description, cursor.rowcount, cursor.lastrowid, None
    finally:
        cursor.close()


async def _one_trip(
    adapted: AsyncAdapt_dbapi_connection,
    run: Callable[[sqlite3.Connection, str, Any], _Outcome],
    operation: str,
    parameters: Any,
) -> _Outcome:
    """`run` (`_execute` or `_execute_many`) on the connection's aiosqlite thread, one trip,
    one statement of the connection at a time (the adapter's mutex)."""
    driver: Any = adapted._connection  # an aiosqlite.Connection
    async with adapted._execute_mutex:
        outcome: _Outcome = await driver._execute(run, driver._conn, operation, parameters)
    return outcome


class _OneTripCursor(AsyncAdapt_aiosqlite_cursor):
    """A cursor whose statements each make one trip to the aiosqlite thread."""

    __slots__ = ("_description", "_lastrowid", "_rowcount")

    def __init__(self, adapt_connection: AsyncAdapt_aiosqlite_connection) -> None:
        # No aiosqlite cursor is opened here (the base class opens one: a trip).
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._cursor = None  # type: ignore[assignment]
        self._soft_closed_memoized = {}  # type: ignore[assignment]
        self._rows = collections.deque()
        self._description: Any = None
        self._rowcount = -1
        self._lastrowid: int | None = None

    @property
    def description(self) -> Any:
        return self._description

    @property
    def rowcount(self) -> int:
        return self._rowcount

    @property
    def lastrowid(self) -> Any:
        return self._lastrowid

    async def _async_soft_close(self) -> None:
        """Nothing is open between statements."""

    def close(self) -> None:
        self._rows.clear()

    async def _execute_async(self, operation: Any, parameters: Any) -> Any:
        self._keep(await _one_trip(self._adapt_connection, _execute, operation, parameters))

    async def _executemany_async(self, operation: Any, seq_of_parameters: Any) -> Any:
        outcome = await _one_trip(
            self._adapt_connection, _execute_many, operation, seq_of_parameters
        )
        self._keep(outcome)

    def _keep(self, outcome: _Outcome) -> None:
        self._description, self._rowcount, self._lastrowid, rows = outcome
        self._rows = collections.deque(rows or ())


class _OneTripConnection(AsyncAdapt_aiosqlite_connection):
    """The adapter's connection, with `_OneTripCursor`s, and no trip to the thread to commit
    or roll back when SQLite has no transaction open: SQLAlchemy's pool rolls back every
    connection it gets back, after a commit too, and read-only work commits nothing."""

    __slots__ = ()
    _cursor_cls: type[AsyncAdapt_aiosqlite_cursor] = _OneTripCursor

    def rollback(self) -> None:
        if self._has_transaction():
            super().rollback()

    def commit(self) -> None:
        if self._has_transaction():
            super().commit()

    def _has_transaction(self) -> bool:
        """Read on the event loop's thread: the connection's statements have all returned (the
        adapter awaits each), so the aiosqlite thread is not using it."""
        connection = self._connection
        return connection._connection is not None and connection.in_transaction


class _OneTripDBAPI(AsyncAdapt_aiosqlite_dbapi):
    def connect(self, *arg: Any, **kw: Any) -> _OneTripConnection:
        adapted = super().connect(*arg, **kw)
        return _OneTripConnection(self, adapted._connection)


ONE_TRIP_AIOSQLITE = _OneTripDBAPI(aiosqlite, sqlite3)


def runs_one_trip(connection: AsyncConnection) -> bool:
    """Whether `connection` (connected) is of an engine made with `ONE_TRIP_AIOSQLITE`."""
    sync = connection.sync_connection
    return sync is not None and isinstance(sync.connection.dbapi_connection, _OneTripConnection)


async def execute_on_driver(
    connection: AsyncConnection, operation: str, parameters: Any, *, many: bool
) -> list[Any]:
    """Run a statement in the transaction of `connection` (`runs_one_trip`, already begun)
    straight on the driver, in one trip: an executemany of `parameters` (returning nothing),
    or one execution (returning its rows).

    What SQLAlchemy's execution layer would add is not wanted here: no events are listened
    for, the parameters are already bound, and the rows are plain tuples. A database error
    reaches the caller as `exec_driver_sql` would raise it (`DBAPIError.instance`).
    """
    sync = connection.sync_connection
    adapted = sync.connection.dbapi_connection if sync is not None else None
    if sync is None or not isinstance(adapted, _OneTripConnection):
        raise TypeError("execute_on_driver needs a connection of ONE_TRIP_AIOSQLITE")
    try:
        *_, rows = await _one_trip(
            adapted, _execute_many if many else _execute, operation, parameters
        )
    except sqlite3.Error as error:
        raise DBAPIError.instance(
            operation,
            parameters,
            error,
            sqlite3.Error,
            hide_parameters=sync.engine.hide_parameters,
            dialect=sync.dialect,
            ismulti=many,
        ) from error
    return rows or []

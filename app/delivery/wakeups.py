"""Waking workers the moment an event is accepted: in-process directly, across processes on
PostgreSQL with LISTEN/NOTIFY. A wake-up is only a hint; the queue table is the truth."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import asyncpg

CHANNEL = "tidings_deliveries"
log = logging.getLogger("tidings.wakeups")


def asyncpg_dsn(database_url: str) -> str:
    """The plain PostgreSQL DSN asyncpg takes, from a SQLAlchemy URL."""
    return "postgresql://" + database_url.split("://", 1)[1]


class PostgresWakeups:
    """Sends NOTIFY (coalesced: one per loop turn however many events) and LISTENs for it.

    A process hears its own NOTIFY too; `listen` passes that one over: whoever notifies has
    woken its own worker already (`runtime.wake_workers`), and a second wake-up would only
    make it claim again and find nothing."""

    def __init__(self, database_url: str) -> None:
        self._dsn = asyncpg_dsn(database_url)
        self._pending: asyncio.Task[None] | None = None
        self._sender: asyncpg.Connection | None = None
        self._listener: asyncpg.Connection | None = None

    def notify(self) -> None:
        """Ask every listening worker to look at the queue now."""
        if self._pending is None or self._pending.done():
            self._pending = asyncio.ensure_future(self._send())

    async def _send(self) -> None:
        await asyncio.sleep(0)
        try:
            if self._sender is None or self._sender.is_closed():
                self._sender = await asyncpg.connect(self._dsn)
            await self._sender.execute(f"NOTIFY {CHANNEL}")
        except (OSError, asyncpg.PostgresError) as error:
            log.warning("could not notify workers (they will poll): %s", error)
            self._sender = None

    async def listen(self, on_wake: Callable[[], None]) -> None:
        """Call `on_wake` for every NOTIFY on the channel."""

        def callback(_connection: Any, sender_pid: int, *_: Any) -> None:
            if sender_pid != self._sender_pid():
                on_wake()

        self._listener = await asyncpg.connect(self._dsn)
        await self._listener.add_listener(CHANNEL, callback)

    def _sender_pid(self) -> int | None:
        """The server process of this process's NOTIFY connection, if it is open."""
        if self._sender is None or self._sender.is_closed():
            return None
        return int(self._sender.get_server_pid())

    async def close(self) -> None:
        """Close both connections."""
        if self._pending is not None:
            with contextlib.suppress(Exception):
                await self._pending
        for connection in (self._sender, self._listener):
            if connection is not None and not connection.is_closed():
                await connection.close()

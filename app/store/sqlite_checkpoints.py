"""SQLite's write-ahead log copied into the database file by a thread of its own.

In WAL mode a commit appends pages to the log; a checkpoint copies them into the database file
and syncs it. By default the connection that commits checkpoints itself every 1,000 pages, in
that commit, while it still holds the only write connection: every few 500-change FHIR Bundles,
one push's commit took the copy and two `fsync`s (a commit averaged 4 against 2 ms) and the
next push waited for it. A `WalCheckpointer` runs SQLite's PASSIVE checkpoint from its own
connection, on its own thread, which copies what it can while writers go on and waits for
nobody. The commits then find the log copied, and SQLite starts it again from the beginning
(a log is only rewound by the next writer once all of it is in the database file).

Nothing about durability changes: the checkpoint is SQLite's own, with its syncs. Connections
still checkpoint themselves as a fallback (`AUTOCHECKPOINT_PAGES`, above SQLite's default so
that normally the thread gets there first), and a process without a checkpointer (the
one-shot commands) relies on that alone.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path
from urllib.parse import quote

from sqlalchemy.engine import make_url

log = logging.getLogger("tidings.sqlite")

AUTOCHECKPOINT_PAGES = 4_000  # a connection's own checkpoint, the fallback (SQLite's: 1,000)
BUSY_SECONDS = 0.020  # between checkpoints while the log grows
IDLE_SECONDS = 1.0  # at most, between checkpoints while it does not (doubling up to this)


class WalCheckpointer:
    """Checkpoints the SQLite database at `path` from a thread, from `start` to `stop`."""

    def __init__(self, path: Path) -> None:
        self.path = path.absolute()  # as SQLAlchemy reads a relative path: from here, now
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # the connection, one checkpoint at a time
        self._connection: sqlite3.Connection | None = None
        self._last_frames = 0
        self._failing = False

    def start(self) -> None:
        """Begin checkpointing in the background (once)."""
        if self._thread is not None or self._stopping.is_set():
            raise RuntimeError("a WalCheckpointer starts once, before it stops")
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoints", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop after the checkpoint in progress, if any, and close the connection."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            self._close()

    @property
    def running(self) -> bool:
        """Whether the thread is running."""
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        interval = BUSY_SECONDS
        while not self._stopping.wait(interval):
            interval = self.checkpoint_once(interval)

    def checkpoint_once(self, interval: float = BUSY_SECONDS) -> float:
        """One checkpoint; how long to wait before the next: soon while the log grows, longer
        and longer while it does not, and long after an error (logged, tried again)."""
        with self._lock:
            if self._stopping.is_set():
                return IDLE_SECONDS  # stopping: nothing is opened again
            try:
                if self._connection is None:
                    self._connection = self._connect()
                frames = checkpoint(self._connection)
            except sqlite3.Error as error:
                self._failed(error)
                return IDLE_SECONDS
        if self._failing:
            log.info("SQLite checkpoints of %s work again", self.path)
            self._failing = False
        growing, self._last_frames = frames != self._last_frames, frames
        return BUSY_SECONDS if growing else min(2 * interval, IDLE_SECONDS)

    def _failed(self, error: sqlite3.Error) -> None:
        """Warn once a run of failures begins (each connection still checkpoints itself past
        `AUTOCHECKPOINT_PAGES`); close the connection to open a new one next time."""
        level = logging.DEBUG if self._failing else logging.WARNING
        log.log(level, "SQLite checkpoint of %s failed, will try again: %s", self.path, error)
        self._failing = True
        self._close()

    def _close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _connect(self) -> sqlite3.Connection:
        """A connection to the existing file (never one that creates it)."""
        uri = f"file://{quote(str(self.path))}?mode=rw"
        return sqlite3.connect(
            uri, uri=True, timeout=1.0, isolation_level=None, check_same_thread=False
        )


def checkpoint(connection: sqlite3.Connection) -> int:
    """One PASSIVE checkpoint: copy what the log holds that no reader still needs, waiting for
    nobody. The number of pages in the log (-1 when the database is not in WAL mode, or when
    another checkpoint was running)."""
    _busy, frames, _copied = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return int(frames)


def checkpointer_for(database_url: str) -> WalCheckpointer | None:
    """A checkpointer for a SQLite database file; None for PostgreSQL and in-memory SQLite."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    if url.database.startswith("file:") or url.query.get("uri"):
        return None  # a URI filename names a file in its own syntax, rarely used here
    return WalCheckpointer(Path(url.database))

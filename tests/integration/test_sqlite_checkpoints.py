"""The WAL checkpointer: it copies SQLite's log into the database file from its own thread, so
that writers find it copied and rewind it, and it never creates a database."""

from __future__ import annotations

import logging
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from app.config import Settings
from app.factory import create_app
from app.store.db import make_engine
from app.store.sqlite_checkpoints import (
    AUTOCHECKPOINT_PAGES,
    IDLE_SECONDS,
    WalCheckpointer,
    checkpointer_for,
)
from tests.conftest import SECRET_KEY

ROW = "x" * 2_000  # a page or so a row


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    """A connection in WAL mode that never checkpoints by itself, kept open: the last
    connection to close would checkpoint."""
    connection = sqlite3.connect(tmp_path / "t.db", isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA wal_autocheckpoint=0")
    connection.execute("CREATE TABLE note (body TEXT)")
    yield connection
    connection.close()


def write(connection: sqlite3.Connection, rows: int = 50) -> None:
    with connection:
        connection.execute("BEGIN")
        connection.executemany("INSERT INTO note VALUES (?)", [(ROW,)] * rows)


def rows_in_file_alone(path: Path, tmp_path: Path) -> int:
    """The rows of a copy of the database file without its log: what was checkpointed."""
    copy = tmp_path / "copy.db"
    shutil.copyfile(path, copy)
    with sqlite3.connect(copy) as connection:
        try:
            return int(connection.execute("SELECT count(*) FROM note").fetchone()[0])
        except sqlite3.OperationalError:  # not even the table is in the file yet
            return 0
        finally:
            copy.unlink()


def log_salt(path: Path) -> bytes:
    """The salts of the WAL header, which SQLite changes each time a writer rewinds the log."""
    with open(path.with_name(path.name + "-wal"), "rb") as log:
        return log.read(24)[16:24]


def test_a_checkpoint_copies_the_log_into_the_database_file(
    writer: sqlite3.Connection, tmp_path: Path
) -> None:
    path = tmp_path / "t.db"
    write(writer)
    assert rows_in_file_alone(path, tmp_path) == 0

    checkpointer = WalCheckpointer(path)
    checkpointer.checkpoint_once()
    checkpointer.stop()

    assert rows_in_file_alone(path, tmp_path) == 50


def test_the_thread_copies_the_log_while_writers_go_on_and_they_rewind_it(
    writer: sqlite3.Connection, tmp_path: Path
) -> None:
    path = tmp_path / "t.db"
    write(writer)
    first_salt = log_salt(path)
    checkpointer = WalCheckpointer(path)
    checkpointer.start()
    try:
        deadline = time.monotonic() + 10
        written = 50
        while log_salt(path) == first_salt and time.monotonic() < deadline:
            write(writer, rows=5)  # the writer itself never checkpoints
            written += 5
            time.sleep(0.005)
        assert log_salt(path) != first_salt, "the log was never rewound"
    finally:
        checkpointer.stop()
    assert not checkpointer.running
    assert 0 < rows_in_file_alone(path, tmp_path) <= written


def test_a_missing_database_is_not_created_and_the_failure_is_told_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "missing.db"
    checkpointer = WalCheckpointer(path)
    caplog.set_level(logging.DEBUG, logger="tidings.sqlite")

    assert checkpointer.checkpoint_once() == IDLE_SECONDS  # tried again later
    assert checkpointer.checkpoint_once() == IDLE_SECONDS
    assert not path.exists()
    levels = [record.levelno for record in caplog.records]
    assert levels == [logging.WARNING, logging.DEBUG]


def test_a_stopped_checkpointer_copies_nothing(writer: sqlite3.Connection, tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    write(writer)
    checkpointer = WalCheckpointer(path)
    checkpointer.stop()

    checkpointer.checkpoint_once()

    assert rows_in_file_alone(path, tmp_path) == 0


def test_a_checkpointer_starts_once(tmp_path: Path) -> None:
    checkpointer = WalCheckpointer(tmp_path / "t.db")
    checkpointer.start()
    with pytest.raises(RuntimeError):
        checkpointer.start()
    checkpointer.stop()
    assert not checkpointer.running
    with pytest.raises(RuntimeError):
        checkpointer.start()


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite+aiosqlite:///./tidings.db", Path.cwd() / "tidings.db"),
        ("sqlite+aiosqlite:////var/lib/tidings/t.db", Path("/var/lib/tidings/t.db")),
        ("sqlite+aiosqlite://", None),
        ("sqlite+aiosqlite:///:memory:", None),
        ("postgresql+asyncpg://postgres@127.0.0.1/tidings", None),
    ],
)
def test_only_a_sqlite_file_gets_a_checkpointer(url: str, path: Path | None) -> None:
    checkpointer = checkpointer_for(url)
    assert (checkpointer.path if checkpointer else None) == path


async def test_a_connection_checkpoints_itself_only_as_a_fallback(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 't.db'}")
    async with engine.connect() as connection:
        pages = (await connection.execute(sa.text("PRAGMA wal_autocheckpoint"))).scalar()
    await engine.dispose()
    assert pages == AUTOCHECKPOINT_PAGES > 1_000  # SQLite's default


async def test_the_app_checkpoints_while_it_serves(tmp_path: Path) -> None:
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 't.db'}", secret_key=SECRET_KEY
    )

    def running() -> int:
        return sum(thread.name == "sqlite-checkpoints" for thread in threading.enumerate())

    before = running()
    app = create_app(settings)
    async with app.test_app():
        assert running() == before + 1
    assert running() == before

"""What the benchmark runs against: receiver and `tidings` processes, databases, sizes."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from app.store import migrate

SCRIPTS = Path(__file__).resolve().parent
TIDINGS = str(Path(sys.executable).parent / "tidings")
SECRET_KEY = "bench-secret-key-0123456789abcdef-0123456789"
PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- processes ------------------------------------------------------------------------------


def start_process(
    args: Sequence[str], *, log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start a child process whose output goes to `log`."""
    with log.open("ab") as out:
        return subprocess.Popen(list(args), stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)


def stop_process(process: subprocess.Popen[bytes], grace: float = 3.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of a process (all its threads) and of its running
    children (`tidings api --processes N` serves in its children)."""
    own, children = 0.0, 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        used = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
        if stat.parent.name == str(pid):
            own = used
        elif fields[1] == str(pid):
            children += used
    return own + children


async def settled(
    processes: Sequence[subprocess.Popen[bytes]],
    *,
    window: float = 0.3,
    busy_below: float = 0.1,
    timeout: float = 60.0,
) -> None:
    """Until every process has finished starting: none used more than `busy_below` of a core
    over the last `window` seconds (an idle worker polls; a starting one imports and connects).

    Raises RuntimeError when one exits, or when they are still busy after `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    before = [cpu_seconds(process.pid) for process in processes]
    while time.monotonic() < deadline:
        await asyncio.sleep(window)
        if any(process.poll() is not None for process in processes):
            raise RuntimeError(f"{processes[0].args!r} exited while starting")
        now = [cpu_seconds(process.pid) for process in processes]
        used = [after - start for start, after in zip(before, now, strict=True)]
        if max(used) < busy_below * window:
            return
        before = now
    raise RuntimeError(f"{len(processes)} process(es) still busy after {timeout:g} s")


async def wait_http(url: str, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Until `url` answers 200 (the process must stay alive meanwhile)."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


@dataclass
class Receiver:
    """A `bench_receiver.py` process."""

    port: int
    process: subprocess.Popen[bytes]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _call(self, method: str, path: str) -> Any:
        async with (
            aiohttp.ClientSession() as session,
            session.request(method, self.url(path)) as response,
        ):
            return await response.json()

    async def stats(self) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = await self._call("GET", "/_stats")
        return found

    async def arrivals(self) -> dict[str, float]:
        """Webhook id -> first arrival time at `/ok`."""
        found: dict[str, float] = {}
        for webhook_id, moment in await self._call("GET", "/_arrivals"):
            found.setdefault(webhook_id, moment)
        return found

    async def reset(self) -> None:
        await self._call("POST", "/_reset")

    async def wait_for(self, count: int, timeout: float, path_class: str = "ok") -> bool:
        """Until `count` webhooks arrived at `path_class`; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (await self.stats())[path_class]["count"] >= count:
                return True
            await asyncio.sleep(0.05)
        return False


async def start_receiver(logs: Path) -> Receiver:
    """A receiver process on a free port, ready to answer."""
    port = free_port()
    script = str(SCRIPTS / "bench_receiver.py")
    process = start_process([sys.executable, script, "--port", str(port)], log=logs / "rx.log")
    await wait_http(f"http://127.0.0.1:{port}/_stats", process)
    return Receiver(port, process)


@dataclass
class Tidings:
    """How to start `tidings` processes on one database."""

    database_url: str
    workdir: Path
    extra_env: dict[str, str] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
        env.update(
            TIDINGS_DATABASE_URL=self.database_url,
            TIDINGS_SECRET_KEY=SECRET_KEY,
            TIDINGS_ALLOWED_NETWORKS="127.0.0.0/8",
            TIDINGS_LOG_LEVEL="warning",
            **self.extra_env,
        )
        return env

    def start_worker(self, name: str = "worker") -> subprocess.Popen[bytes]:
        """`tidings worker` (delivers as soon as it is up)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        return start_process(
            [TIDINGS, "worker"], log=self.workdir / f"{name}.log", env=self.env(), cwd=self.workdir
        )

    async def start_server(
        self, command: str, processes: int = 1
    ) -> tuple[subprocess.Popen[bytes], str]:
        """`tidings serve` or `tidings api` (with `processes`), answering `/healthz`;
        (process, base URL)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        more = ["--processes", str(processes)] if processes > 1 else []
        return await start_server(
            [TIDINGS, command, *more],
            log=self.workdir / f"{command}{processes if processes > 1 else ''}.log",
            env=self.env(),
            cwd=self.workdir,
        )


async def start_server(
    args: Sequence[str], *, log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """`args --port <free port>` started, once it answers `/healthz`: (process, base URL). A
    server that does not come up (or whose wait is cancelled) is stopped."""
    port = free_port()
    process = start_process([*args, "--port", str(port)], log=log, env=env, cwd=cwd)
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_http(base + "/healthz", process)
    except BaseException:
        stop_process(process)
        raise
    return process, base


async def start_servers(
    *starting: Awaitable[tuple[subprocess.Popen[bytes], str]],
) -> list[tuple[subprocess.Popen[bytes], str]]:
    """Servers started together, their start-ups overlapping (none is being measured yet):
    (process, base URL) each, in order. If one fails, the others are stopped too."""
    tasks = [asyncio.ensure_future(start) for start in starting]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()  # a server still starting is stopped by `start_server`
        await asyncio.gather(*tasks, return_exceptions=True)
        for task in tasks:
            if not task.cancelled() and task.exception() is None:
                stop_process(task.result()[0])
        raise


# -- databases ------------------------------------------------------------------------------


@dataclass
class Database:
    """A benchmark database: a SQLite file, or a PostgreSQL database created and dropped here."""

    url: str
    pg_name: str | None = None

    @property
    def is_postgres(self) -> bool:
        return self.pg_name is not None

    async def migrate(self) -> None:
        await asyncio.to_thread(migrate.upgrade_to_head, self.url)

    async def drop(self) -> None:
        if self.pg_name is not None:
            await _pg_admin(f'DROP DATABASE IF EXISTS "{self.pg_name}" WITH (FORCE)')


async def _pg_admin(statement: str) -> None:
    connection = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


async def sqlite_database(path: Path) -> Database:
    """A fresh, migrated SQLite file."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    database = Database(f"sqlite+aiosqlite:///{path}")
    await database.migrate()
    return database


async def postgres_database(name: str) -> Database:
    """A fresh, migrated PostgreSQL database on 127.0.0.1:5432 (user postgres)."""
    await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await _pg_admin(f'CREATE DATABASE "{name}"')
    database = Database(f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}", pg_name=name)
    await database.migrate()
    return database


@dataclass(frozen=True)
class Sizes:
    """How big each measurement is: `--quick` (under a minute) or full (under 15 minutes)."""

    ceiling_requests: int
    drain_deliveries: int
    drain_cap_seconds: float
    e2e_seconds: float
    e2e_rate: int
    ingest_seconds: float
    ingest_turns: int  # the no-op route and the events route take turns, this many each
    ingest_on_postgres: bool
    fanout_runs: int
    matching_totals: tuple[int, ...]
    matching_changes: int
    memory_deliveries: int
    memory_seconds: float
    slow_per_endpoint: int


QUICK = Sizes(
    ceiling_requests=3_000,
    drain_deliveries=5_000,
    drain_cap_seconds=2,
    e2e_seconds=2,
    e2e_rate=500,
    ingest_seconds=1.0,
    ingest_turns=1,
    ingest_on_postgres=False,  # another `tidings api` start-up: it would not fit the minute
    fanout_runs=1,
    matching_totals=(1_000, 10_000),
    matching_changes=200,
    memory_deliveries=50_000,
    memory_seconds=1,
    slow_per_endpoint=300,
)
FULL = Sizes(
    ceiling_requests=30_000,
    drain_deliveries=50_000,
    drain_cap_seconds=45,
    e2e_seconds=30,
    e2e_rate=500,
    ingest_seconds=10,
    ingest_turns=3,
    ingest_on_postgres=True,
    fanout_runs=3,
    matching_totals=(1_000, 10_000, 100_000),
    matching_changes=2_000,
    memory_deliveries=1_000_000,
    memory_seconds=20,
    slow_per_endpoint=500,
)


@dataclass
class Bench:
    """What every section gets: the sizes, a work folder for files and logs, the receiver."""

    sizes: Sizes
    work: Path
    receiver: Receiver
    databases: list[Database] = field(default_factory=list)

    async def postgres(self, label: str) -> Database:
        database = await postgres_database(f"tidings_bench_{os.getpid()}_{label}")
        self.databases.append(database)
        return database

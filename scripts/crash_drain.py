"""Crash test: kill -9 Tidings during a drain, restart it, and count what arrived.

    python scripts/crash_drain.py                       # both scenarios, 20,000 events each
    python scripts/crash_drain.py --events 2000 --database sqlite

Scenarios (each in its own temporary directory and database):

- `sqlite`: one `tidings serve` process; it is killed with SIGKILL at set fractions of the drain
  and restarted on the same port. The publisher keeps publishing through the crashes, retrying a
  refused or unanswered request with the same idempotency key, as a client should.
- `postgres`: one `tidings api` and three `tidings worker` processes on a fresh database; the
  first worker is killed with SIGKILL again and again and restarted each time.

One endpoint subscribes to the event type, so every event is one delivery and one `webhook-id`.
The receiver holds each request a few milliseconds so that attempts really are in flight when the
kill lands. An event is *accepted* when the API answered 2xx; *lost* is accepted but never
received (must be 0); *duplicates* are receptions beyond the first of a `webhook-id`. At-least-once
allows duplicates, bounded by what the killed process had in flight: its worker concurrency per
kill.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import sqlalchemy as sa
from aiohttp import web
from sqlalchemy.ext.asyncio import create_async_engine

TIDINGS = str(Path(sys.executable).parent / "tidings")
PG_ADMIN_URL = os.environ.get(
    "TIDINGS_TEST_PG", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
SECRET_KEY = "crash-drain-secret-key-0123456789abcdef"
CONCURRENCY = 64  # TIDINGS_WORKER_CONCURRENCY: attempts in flight per worker process
LEASE_SECONDS = 10
EVENT_TYPE = "records.sync.completed"


@dataclass
class CountingReceiver:
    """A webhook receiver on 127.0.0.1 that counts receptions per `webhook-id`."""

    hold_seconds: float = 0.01
    port: int = 0
    seen: Counter[str] = field(default_factory=Counter)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def distinct(self) -> int:
        return len(self.seen)

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(self.hold_seconds)
        self.seen[request.headers.get("webhook-id", "?")] += 1
        return web.Response(text="ok")


@contextmanager
def receiver_in_thread(hold_seconds: float = 0.01) -> Iterator[CountingReceiver]:
    """Run a `CountingReceiver` on its own event loop in a background thread."""
    receiver = CountingReceiver(hold_seconds=hold_seconds)
    ready = threading.Event()
    stop = threading.Event()

    async def serve() -> None:
        app = web.Application()
        app.router.add_post("/hook", receiver.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        receiver.port = runner.addresses[0][1]
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        await runner.cleanup()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield receiver
    finally:
        stop.set()
        thread.join(10)


@dataclass
class Tidings:
    """`tidings` processes sharing one working directory, environment and database."""

    workdir: Path
    env: dict[str, str]
    logs: list[Path] = field(default_factory=list)

    @classmethod
    def create(cls, workdir: Path, database_url: str, **settings: str) -> Tidings:
        env = {key: value for key, value in os.environ.items() if not key.startswith("TIDINGS_")}
        env.update(
            TIDINGS_DATABASE_URL=database_url,
            TIDINGS_SECRET_KEY=SECRET_KEY,
            TIDINGS_ALLOWED_NETWORKS="127.0.0.0/8",
            TIDINGS_WORKER_CONCURRENCY=str(CONCURRENCY),
            TIDINGS_LEASE_SECONDS=str(LEASE_SECONDS),
            TIDINGS_POLL_SECONDS="0.5",
            TIDINGS_LOG_LEVEL="warning",
            **settings,
        )
        return cls(workdir=workdir, env=env)

    def run(self, *args: str) -> str:
        result = subprocess.run(
            [TIDINGS, *args], cwd=self.workdir, env=self.env, text=True, capture_output=True
        )
        if result.returncode != 0:
            raise RuntimeError(f"tidings {' '.join(args)} failed: {result.stderr}")
        return result.stdout

    def key(self, org: str, role: str) -> str:
        return self.run("keys", "create", "--org", org, "--role", role).strip().splitlines()[-1]

    def spawn(self, *args: str) -> subprocess.Popen[bytes]:
        log = self.workdir / f"{args[0]}-{len(self.logs)}.log"
        self.logs.append(log)
        with log.open("wb") as out:
            return subprocess.Popen(
                [TIDINGS, *args], cwd=self.workdir, env=self.env, stdout=out, stderr=out
            )

    def tracebacks(self) -> int:
        """How many tracebacks the processes logged; the first of each log goes to stderr."""
        found = 0
        for log in self.logs:
            text = log.read_text(errors="replace")
            if "Traceback" in text:
                start = text.index("Traceback")
                print(f"--- {log.name} ---\n{text[start : start + 3000]}", file=sys.stderr)
            found += text.count("Traceback")
        return found


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_healthy(base: str, process: subprocess.Popen[bytes], seconds: float = 30) -> None:
    """Until `/healthz` answers 200; raises when the process exits or time runs out."""
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(timeout=1) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"tidings exited with {process.returncode}")
            try:
                if (await client.get(base + "/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{base} not healthy within {seconds} s")


@dataclass
class Publishing:
    """What the publisher saw: accepted event ids and the refusals it retried."""

    accepted: set[str] = field(default_factory=set)
    refusals: Counter[str] = field(default_factory=Counter)


async def publish_all(
    base: str, key: str, count: int, *, concurrency: int = 32, seconds: float = 3600
) -> Publishing:
    """Publish `count` events, each retried with its idempotency key until the API accepts it."""
    result = Publishing()
    keys = asyncio.Queue[str]()
    for index in range(count):
        keys.put_nowait(f"crash-{index}")
    deadline = time.monotonic() + seconds
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=10, limits=limits) as http:

        async def publisher() -> None:
            while not keys.empty():
                idempotency_key = keys.get_nowait()
                while time.monotonic() < deadline:
                    if await _publish_one(http, idempotency_key, result):
                        break
                    await asyncio.sleep(0.1)

        await asyncio.gather(*(publisher() for _ in range(concurrency)))
    return result


async def _publish_one(http: httpx.AsyncClient, idempotency_key: str, result: Publishing) -> bool:
    body = {
        "type": EVENT_TYPE,
        "idempotency_key": idempotency_key,
        "data": {"connection_id": idempotency_key, "patient": "Patient/p1"},
    }
    try:
        response = await http.post("/v1/events", json=body)
    except httpx.TransportError as error:
        result.refusals[type(error).__name__] += 1
        return False
    if response.status_code in (200, 202):
        result.accepted.add(response.json()["id"])
        return True
    result.refusals[str(response.status_code)] += 1
    return False


@dataclass
class Victim:
    """A process the killer may SIGKILL, and how to bring it back."""

    process: subprocess.Popen[bytes]
    restart: Callable[[], Awaitable[subprocess.Popen[bytes]]]
    kills: int = 0

    async def kill_and_restart(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.kills += 1
        self.process = await self.restart()


async def kill_at(
    victim: Victim, receiver: CountingReceiver, thresholds: Sequence[int], stop: asyncio.Event
) -> None:
    """SIGKILL and restart `victim` each time the receiver has seen the next threshold."""
    for threshold in thresholds:
        while receiver.distinct() < threshold and not stop.is_set():
            await asyncio.sleep(0.02)
        if stop.is_set():
            return
        await victim.kill_and_restart()


async def queue_counts(database_url: str) -> dict[str, int]:
    """Deliveries by status, read straight from the database."""
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(
                sa.text("SELECT status, count(*) FROM delivery GROUP BY status")
            )
            return {status: count for status, count in rows.all()}
    finally:
        await engine.dispose()


async def settle(database_url: str, accepted: set[str], receiver: CountingReceiver) -> float:
    """Until every accepted event arrived and no delivery is pending or leased; seconds waited."""
    started = time.monotonic()
    deadline = started + 300
    while time.monotonic() < deadline:
        counts = await queue_counts(database_url)
        queued = counts.get("pending", 0) + counts.get("delivering", 0)
        if queued == 0 and accepted <= receiver.seen.keys():
            await asyncio.sleep(1)  # a resend already on the wire
            return time.monotonic() - started
        await asyncio.sleep(0.25)
    return time.monotonic() - started


@dataclass
class Result:
    """One row of the result table."""

    scenario: str
    accepted: int
    delivered: int
    lost: int
    duplicates: int
    kills: int
    bound: int
    seconds: float
    retried_publishes: int
    tracebacks: int

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.duplicates <= self.bound


def measure(
    scenario: str,
    publishing: Publishing,
    receiver: CountingReceiver,
    kills: int,
    seconds: float,
    tracebacks: int,
) -> Result:
    accepted = publishing.accepted
    received = {event_id for event_id in receiver.seen if event_id in accepted}
    return Result(
        scenario=scenario,
        accepted=len(accepted),
        delivered=len(received),
        lost=len(accepted - received),
        duplicates=sum(count - 1 for count in receiver.seen.values()),
        kills=kills,
        bound=CONCURRENCY * kills,
        seconds=seconds,
        retried_publishes=sum(publishing.refusals.values()),
        tracebacks=tracebacks,
    )


async def drain_with_kills(
    tidings: Tidings,
    base: str,
    victim: Victim,
    receiver: CountingReceiver,
    events: int,
    fractions: Sequence[float],
) -> tuple[Publishing, float]:
    """Register the endpoint, publish everything while `victim` is killed at `fractions`."""
    partner, source = tidings.key("acme", "partner"), tidings.key("acme", "source")
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        response = await http.post(
            "/v1/endpoints",
            json={"url": receiver.url, "event_types": [EVENT_TYPE]},
            headers={"Authorization": f"Bearer {partner}"},
        )
        response.raise_for_status()
    started = time.monotonic()
    stop = asyncio.Event()
    thresholds = [int(events * fraction) for fraction in fractions]
    killer = asyncio.create_task(kill_at(victim, receiver, thresholds, stop))
    publishing = await publish_all(base, source, events)
    await settle(tidings.env["TIDINGS_DATABASE_URL"], publishing.accepted, receiver)
    stop.set()
    await killer
    return publishing, time.monotonic() - started


async def sqlite_scenario(events: int, fractions: Sequence[float]) -> Result:
    """One `tidings serve` on SQLite, killed at each fraction of the drain."""
    with tempfile.TemporaryDirectory(prefix="tidings-crash-") as folder:
        workdir = Path(folder)
        tidings = Tidings.create(workdir, f"sqlite+aiosqlite:///{workdir / 'tidings.db'}")
        tidings.run("migrate")
        port = free_port()
        base = f"http://127.0.0.1:{port}"

        async def start_serve() -> subprocess.Popen[bytes]:
            process = tidings.spawn("serve", "--port", str(port))
            await wait_healthy(base, process)
            return process

        with receiver_in_thread() as receiver:
            victim = Victim(await start_serve(), start_serve)
            try:
                publishing, seconds = await drain_with_kills(
                    tidings, base, victim, receiver, events, fractions
                )
            finally:
                stop_processes([victim.process])
        return measure(
            "sqlite: serve, kill -9",
            publishing,
            receiver,
            victim.kills,
            seconds,
            tidings.tracebacks(),
        )


async def postgres_scenario(events: int, fractions: Sequence[float]) -> Result:
    """`tidings api` and three `tidings worker`s on PostgreSQL; one worker killed repeatedly."""
    name = f"tidings_crash_{uuid.uuid4().hex[:8]}"
    await admin_sql(f'CREATE DATABASE "{name}"')
    database_url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    try:
        with tempfile.TemporaryDirectory(prefix="tidings-crash-") as folder:
            tidings = Tidings.create(Path(folder), database_url)
            tidings.run("migrate")
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            api = tidings.spawn("api", "--port", str(port))
            await wait_healthy(base, api)

            async def start_worker() -> subprocess.Popen[bytes]:
                return tidings.spawn("worker")

            workers = [tidings.spawn("worker") for _ in range(2)]
            with receiver_in_thread() as receiver:
                victim = Victim(await start_worker(), start_worker)
                try:
                    publishing, seconds = await drain_with_kills(
                        tidings, base, victim, receiver, events, fractions
                    )
                finally:
                    stop_processes([api, *workers, victim.process])
            return measure(
                "postgres: api + 3 workers, one kill -9",
                publishing,
                receiver,
                victim.kills,
                seconds,
                tidings.tracebacks(),
            )
    finally:
        await admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def admin_sql(statement: str) -> None:
    engine = create_async_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.execute(sa.text(statement))
    finally:
        await engine.dispose()


def stop_processes(processes: Sequence[subprocess.Popen[bytes]]) -> None:
    """SIGTERM (a graceful stop), SIGKILL after 20 s."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def print_table(results: Sequence[Result]) -> None:
    header = (
        "| scenario | accepted | delivered | lost | duplicates | kills | bound (64 x kills) "
        "| seconds | publishes retried | tracebacks |"
    )
    print(header)
    print("|" + "---|" * header.count(" | ") + "---|")
    for r in results:
        print(
            f"| {r.scenario} | {r.accepted:,} | {r.delivered:,} | {r.lost} | {r.duplicates} "
            f"| {r.kills} | {r.bound} | {r.seconds:.1f} | {r.retried_publishes} | {r.tracebacks} |"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--database", choices=["sqlite", "postgres", "both"], default="both")
    args = parser.parse_args()
    results = []
    if args.database in ("sqlite", "both"):
        results.append(asyncio.run(sqlite_scenario(args.events, (0.2, 0.5, 0.8))))
    if args.database in ("postgres", "both"):
        fractions = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
        results.append(asyncio.run(postgres_scenario(args.events, fractions)))
    print_table(results)
    return 0 if all(result.ok for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())

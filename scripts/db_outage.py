"""Database outage: PostgreSQL stops and starts again while events are being published.

    python scripts/db_outage.py [--down-seconds 5] [--seconds 25]

NOT for the test suite: it stops the machine's PostgreSQL server, which breaks every other
database user meanwhile. It refuses to run while a pytest process is running (`--force` overrides).

`tidings serve` runs on a fresh PostgreSQL database with one endpoint; publishers post events
continuously (each retried with its idempotency key until it is accepted, as a client should).
After a few seconds the cluster is stopped (`pg_ctlcluster ... stop`), left down, then started
again; a plain `restart` follows later. The script prints what the API answered while the
database was down (503 with Retry-After expected; a 2xx would be an event acknowledged but not
stored), and whether every accepted event was stored and delivered once the database was back.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from crash_drain import (
    EVENT_TYPE,
    PG_ADMIN_URL,
    CountingReceiver,
    Tidings,
    admin_sql,
    free_port,
    queue_counts,
    receiver_in_thread,
    stop_processes,
    wait_healthy,
)
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine


def cluster(action: str) -> float:
    """Run `pg_ctlcluster <version> main <action>`; the seconds it took."""
    version = sorted(path.name for path in Path("/etc/postgresql").iterdir())[-1]
    started = time.monotonic()
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action], check=True
    )
    return time.monotonic() - started


@dataclass
class Window:
    """A span of monotonic time during which the database was down."""

    name: str
    start: float
    end: float = float("inf")

    def holds(self, moment: float) -> bool:
        return self.start <= moment <= self.end


@dataclass
class Answers:
    """Every answer the publishers got, with when it arrived."""

    accepted: set[str] = field(default_factory=set)
    log: list[tuple[float, str]] = field(default_factory=list)  # (arrival, status or error)
    retry_after: Counter[str] = field(default_factory=Counter)

    def during(self, window: Window) -> Counter[str]:
        return Counter(status for moment, status in self.log if window.holds(moment))


async def publish_until(base: str, key: str, deadline: float, answers: Answers) -> None:
    """One publisher: a new event each time the last one was accepted, until `deadline`."""
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=10) as http:
        while time.monotonic() < deadline:
            idempotency_key = uuid.uuid4().hex
            while not await publish_once(http, idempotency_key, answers):
                await asyncio.sleep(0.2)


async def publish_once(http: httpx.AsyncClient, idempotency_key: str, answers: Answers) -> bool:
    body = {
        "type": EVENT_TYPE,
        "idempotency_key": idempotency_key,
        "data": {"connection_id": idempotency_key, "patient": "Patient/p1"},
    }
    try:
        response = await http.post("/v1/events", json=body)
    except httpx.TransportError as error:
        answers.log.append((time.monotonic(), type(error).__name__))
        return False
    answers.log.append((time.monotonic(), str(response.status_code)))
    if response.status_code == 503:
        answers.retry_after[response.headers.get("Retry-After", "none")] += 1
    if response.status_code in (200, 202):
        answers.accepted.add(response.json()["id"])
        return True
    return False


async def outages(down_seconds: float, windows: list[Window]) -> None:
    """A stop, `down_seconds` down, a start; later a plain restart.

    The first window is exactly while the server was down (from `stop` returning to `start`
    being called), so no 2xx may fall in it; the restart window is the whole command, part of
    which the server is still or already up.
    """
    await asyncio.sleep(5)
    await asyncio.to_thread(cluster, "stop")
    windows.append(Window("stopped (stop returned .. start called)", time.monotonic()))
    await asyncio.sleep(down_seconds)
    windows[-1].end = time.monotonic()
    await asyncio.to_thread(cluster, "start")
    await asyncio.sleep(5)
    windows.append(Window("during `pg_ctlcluster restart`", time.monotonic()))
    await asyncio.to_thread(cluster, "restart")
    windows[-1].end = time.monotonic()


async def stored_ids(database_url: str) -> set[str]:
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(text("SELECT id FROM event"))
            return {row[0] for row in rows.all()}
    finally:
        await engine.dispose()


async def wait_delivered(
    database_url: str, accepted: set[str], receiver: CountingReceiver, seconds: float = 120
) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        counts = await queue_counts(database_url)
        if not counts.get("pending") and not counts.get("delivering"):
            if accepted <= receiver.seen.keys():
                return
        await asyncio.sleep(0.5)


async def run(down_seconds: float, seconds: float) -> bool:
    name = f"tidings_outage_{uuid.uuid4().hex[:8]}"
    await admin_sql(f'CREATE DATABASE "{name}"')
    database_url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    try:
        with tempfile.TemporaryDirectory(prefix="tidings-outage-") as folder:
            tidings = Tidings.create(Path(folder), database_url)
            tidings.run("migrate")
            partner, source = tidings.key("acme", "partner"), tidings.key("acme", "source")
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            server = tidings.spawn("serve", "--port", str(port))
            with receiver_in_thread(hold_seconds=0) as receiver:
                try:
                    await wait_healthy(base, server)
                    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
                        endpoint = {"url": receiver.url, "event_types": [EVENT_TYPE]}
                        auth = {"Authorization": f"Bearer {partner}"}
                        created = await http.post("/v1/endpoints", json=endpoint, headers=auth)
                        created.raise_for_status()
                    answers, windows = Answers(), list[Window]()
                    deadline = time.monotonic() + seconds
                    await asyncio.gather(
                        outages(down_seconds, windows),
                        *(publish_until(base, source, deadline, answers) for _ in range(8)),
                    )
                    await wait_delivered(database_url, answers.accepted, receiver)
                    stored = await stored_ids(database_url)
                    status = await queue_counts(database_url)
                    alive = server.poll() is None
                finally:
                    stop_processes([server])
            return report(answers, windows, stored, receiver, status, alive, tidings.tracebacks())
    finally:
        await admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def report(
    answers: Answers,
    windows: list[Window],
    stored: set[str],
    receiver: CountingReceiver,
    queue: dict[str, int],
    alive: bool,
    tracebacks: int,
) -> bool:
    """Print the findings; whether they hold up."""
    ok = alive
    print("| window | seconds | answers in the window | 2xx in the window |")
    print("|---|---|---|---|")
    for window in windows:
        during = answers.during(window)
        acknowledged = during["200"] + during["202"]
        if window.name.startswith("stopped"):
            ok = ok and acknowledged == 0
        ok = ok and not any(status.startswith("5") and status != "503" for status in during)
        summary = ", ".join(f"{status}: {count}" for status, count in sorted(during.items()))
        print(f"| {window.name} | {window.end - window.start:.1f} | {summary} | {acknowledged} |")
    lost = answers.accepted - receiver.seen.keys()
    unstored = answers.accepted - stored
    duplicates = sum(receiver.seen.values()) - len(receiver.seen)
    ok = ok and not lost and not unstored
    print()
    print(f"answers overall: {dict(sorted(Counter(s for _, s in answers.log).items()))}")
    print(f"Retry-After on 503: {dict(answers.retry_after)}")
    print(
        f"accepted: {len(answers.accepted)}, stored: {len(stored)}, accepted but not stored: "
        f"{len(unstored)}, delivered: {len(answers.accepted & receiver.seen.keys())}, "
        f"lost: {len(lost)}, duplicates: {duplicates}"
    )
    print(f"deliveries by status afterwards: {queue}")
    print(f"server still running: {alive}; tracebacks in its log: {tracebacks}")
    print("RESULT:", "ok" if ok else "FAILED")
    return ok


def others_are_testing() -> bool:
    found = subprocess.run(["pgrep", "-f", "pytest"], capture_output=True, text=True)
    return bool(found.stdout.strip())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--down-seconds", type=float, default=5)
    parser.add_argument("--seconds", type=float, default=25, help="how long to publish")
    parser.add_argument("--force", action="store_true", help="run even while pytest runs")
    args = parser.parse_args()
    if others_are_testing() and not args.force:
        print(
            "pytest is running: stopping PostgreSQL now would break it; try later", file=sys.stderr
        )
        return 3
    return 0 if asyncio.run(run(args.down_seconds, args.seconds)) else 1


if __name__ == "__main__":
    sys.exit(main())

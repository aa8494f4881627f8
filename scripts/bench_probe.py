"""Focused probes behind the per-change numbers in docs/performance.md that `bench.py` does not
print. Run from the repository root with the project's virtualenv:

    .venv/bin/python scripts/bench_probe.py drain                       # SQLite, 1 worker
    .venv/bin/python scripts/bench_probe.py drain --postgres --workers 2 --deliveries 50000
    .venv/bin/python scripts/bench_probe.py e2e                         # `serve` on SQLite
    .venv/bin/python scripts/bench_probe.py e2e --postgres --seconds 20 # `api` + `worker`
    .venv/bin/python scripts/bench_probe.py e2e --postgres --serve-processes 2
    .venv/bin/python scripts/bench_probe.py sender                      # no database
    .venv/bin/python scripts/bench_probe.py queue --postgres --deliveries 50000
    .venv/bin/python scripts/bench_probe.py queue --postgres --ordered --deliveries 2000
    .venv/bin/python scripts/bench_probe.py queue --postgres --idle-ordered 2000
    .venv/bin/python scripts/bench_probe.py bundles --seconds 6         # `api` on SQLite
    .venv/bin/python scripts/bench_probe.py bundles --postgres --pushes 8
    .venv/bin/python scripts/bench_probe.py events --seconds 6          # `api` on SQLite
    .venv/bin/python scripts/bench_probe.py commit --seconds 6          # no HTTP, SQLite
    .venv/bin/python scripts/bench_probe.py route --requests 4000       # no server, SQLite

drain: `tidings worker` processes drain N pending deliveries to 10 endpoints of the fast
receiver, held until the workers have started, then released at once; prints the rate from the
first arrival to the last success and the workers' CPU time per delivery from the release (from
/proc: every thread; start-up excluded).

e2e: events at 500/s through `POST /v1/events`, after the same 1 s warm-up as `bench.py`;
prints p50/p95/p99 from acceptance to arrival and of the `POST` itself, overall and per second.
On PostgreSQL, `--serve-processes N` serves them with `tidings serve --processes N` (processes
that accept and deliver) instead of `tidings api` beside `tidings worker`. Served by `tidings
serve`, it also prints the workers' claims from `/metrics`, by whether they found deliveries.

sender: the `Sender` alone, in this process, posting the ceiling's signed requests to 10 paths
of the fast receiver with 64, 128, 256 and 512 requests in flight (or `--in-flight N`, two
rounds); prints the rate and this process's CPU time per request.

queue: the worker's two database steps alone, one after the other, over N pending deliveries:
claims of 256 (`claim_due_deliveries`) and the record of their successes (`record_attempts`),
each in its own transaction, no HTTP. Prints each step's wall time per delivery and, on
PostgreSQL, the server's CPU time per delivery (every `postgres` process in /proc, so the
server must run on this machine and be otherwise idle). With `--ordered`, each claim can only
lease each endpoint's oldest delivery: 10 a claim. With `--idle-ordered N`, N more ordered
endpoints exist that receive nothing: what they cost the claims of everyone else.

bundles: `bench.py`'s ingest of 500-change FHIR history Bundles alone, for `--seconds`, with
`--pushes` at a time (default: as `bench.py`, 2 on SQLite and 4 on PostgreSQL), into
`tidings api`; prints the rate and the API process's CPU time per change.

events: `bench.py`'s ingest of single events through `POST /v1/events` alone (32 clients at a
time), for `--seconds`, into `tidings api`; prints the rate and the API's CPU time per event.

commit: what `POST /v1/events` does after parsing, alone: the same events from 16 publishers
at a time (the rounds of about 16 that `bench.py`'s 32 clients make through HTTP) handed to an
`EventCommitter` in this process, with the SQLite checkpointer the API runs, for `--seconds`;
prints the rate, the mean commit round and this process's CPU time per event (every thread),
and on PostgreSQL the server's. No HTTP and no other process on the loop: the store's share of
the events route, steadier than `events` on a noisy machine.

route: `POST /v1/events` called in this process through ASGI, with no server and no client
(no Hypercorn, no sockets), 16 requests at a time, in turns with `bench.py`'s no-op Quart route
(`bench_noop.py`), 5 rounds of `--requests` each, after the garbage-collector tuning the CLI
applies; prints each round's CPU time of the event loop's thread per request (the thread whose
time bounds the rate), and twice with the store left out (the route up to
`EventCommitter.store`, which answers at once): on Tidings' `SingleTaskConnection` and on
Quart's own `ASGIHTTPConnection`. What the route costs beyond Quart's own work, and what the
connection saves, steadier than `events` on a noisy machine.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from ipaddress import ip_network
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiohttp
import bench_api
import bench_noop
from bench_delivery import drain_held, run_closed, signed_requests
from bench_env import (
    QUICK,
    Bench,
    Database,
    Receiver,
    Tidings,
    cpu_seconds,
    postgres_database,
    settled,
    sqlite_database,
    start_receiver,
    stop_process,
)
from bench_report import percentile
from bench_seed import (
    EndpointSpec,
    bench_engine,
    hold_deliveries,
    release_deliveries,
    seed_deliveries,
    seed_endpoints,
)
from prometheus_client.parser import text_string_to_metric_families
from quart.asgi import ASGIHTTPConnection
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from app.delivery.sender import Sender
from app.domain import ids
from app.domain.catalog import load_catalog
from app.domain.matching import CriteriaCache
from app.domain.models import DeliveryStatus, Event
from app.domain.retry import AttemptOutcome
from app.factory import create_app
from app.processes import WORKER_GC_YOUNG_THRESHOLD, tune_garbage_collector
from app.store import deliveries as queue
from app.store import outbox
from app.store.db import make_engine, make_session_factory, transaction
from app.store.deliveries import AttemptRecord, ClaimedDelivery
from app.store.group_commit import EventCommitter
from app.store.sqlite_checkpoints import checkpointer_for

RATE = 500
COMMIT_PUBLISHERS = 16


async def held_queue(
    args: argparse.Namespace, work: Path, receiver: Receiver, name: str
) -> tuple[Database, AsyncEngine]:
    """A database with `args.deliveries` pending deliveries to 10 endpoints of the receiver
    (ordered ones with `--ordered`), held (due in a day; vacuumed on PostgreSQL), and an
    engine on it. With `--idle-ordered N`, N more ordered endpoints that receive nothing."""
    database = await _database(args, work, f"probe_{name}")
    engine = bench_engine(database)
    urls = [receiver.url(f"/ok/{name}{n}") for n in range(10)]
    specs = [EndpointSpec(name, url, ("encounter.*",), ordered=args.ordered) for url in urls]
    await seed_deliveries(engine, name, await seed_endpoints(engine, specs), args.deliveries)
    idle = [EndpointSpec(name, urls[0], ("idle.*",), ordered=True)] * args.idle_ordered
    await seed_endpoints(engine, idle)
    await hold_deliveries(engine)
    return database, engine


async def drain(args: argparse.Namespace, work: Path, receiver: Receiver) -> None:
    database, engine = await held_queue(args, work, receiver, "drain")
    await engine.dispose()
    tidings = Tidings(database.url, work / "drain")
    workers = [tidings.start_worker(f"worker{n}") for n in range(args.workers)]
    try:
        drained = await drain_held(receiver, database, workers, args.deliveries, cap=120)
    finally:
        for worker in workers:
            stop_process(worker)
        await _drop(database)
    kind = "PostgreSQL" if database.pg_name else "SQLite"
    print(
        f"drain {kind}, {args.workers} worker(s): {drained.done:,} in {drained.seconds:.2f} s = "
        f"{drained.rate:,.0f}/s; worker CPU {drained.cpu_per_delivery * 1e6:.0f} µs per delivery"
    )


async def end_to_end(args: argparse.Namespace, work: Path, receiver: Receiver) -> None:
    database = await _database(args, work, "probe_e2e")
    engine = bench_engine(database)
    spec = EndpointSpec("e2e", receiver.url("/ok/e2e"), (bench_api.FLOW_TYPE,))
    await seed_endpoints(engine, [spec])
    await engine.dispose()
    key = await bench_api.source_key(database.url, "e2e")
    tidings = Tidings(database.url, work / "e2e")
    processes: list[subprocess.Popen[bytes]] = []
    split = args.postgres and not args.serve_processes
    try:
        if split:
            processes.append(tidings.start_worker())
        server, base = await tidings.start_server(
            "api" if split else "serve", processes=args.serve_processes or 1
        )
        processes.append(server)
        sent = await _open_loop(base, key, args.seconds, receiver)
        await receiver.wait_for(len(sent), timeout=args.seconds + 10)
        arrivals = await receiver.arrivals()
        claims = None if split else await _claims(base)
    finally:
        for process in processes:
            stop_process(process)
        await _drop(database)
    origin = min(started for started, _ in sent.values())
    rows = [
        (started - origin, (arrivals[event_id] - started) * 1000, accept_ms)
        for event_id, (started, accept_ms) in sent.items()
        if event_id in arrivals
    ]
    setup = "SQLite, serve"
    if split:
        setup = "PostgreSQL, api + worker"
    elif args.postgres:
        setup = f"PostgreSQL, serve --processes {args.serve_processes}"
    print(f"e2e {setup}, {RATE}/s for {args.seconds:g} s: {len(rows):,} of {len(sent):,} arrived")
    print(_line("all", rows))
    if claims is not None:
        print(f"  worker claims (warm-up included): {claims}")
    for second in range(int(args.seconds)):
        print(_line(f"t={second:>3} s", [r for r in rows if second <= r[0] < second + 1]))


async def _claims(base: str) -> str:
    """The worker claims `/metrics` counts, by what they found, summed over the processes."""
    async with aiohttp.ClientSession() as session, session.get(base + "/metrics") as response:
        text = await response.text()
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "tidings_worker_claims_total":
                found[sample.labels["found"]] = sample.value
    return ", ".join(f"{count:,.0f} found {what}" for what, count in sorted(found.items()))


async def _open_loop(
    base: str, key: str, seconds: float, receiver: Receiver
) -> dict[str, tuple[float, float]]:
    """Event id -> (sent at, POST milliseconds), for `seconds` at `RATE` after the warm-up."""
    sent: dict[str, tuple[float, float]] = {}
    connector = aiohttp.TCPConnector(limit=256)
    headers = bench_api.headers_for(key)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        await receiver.reset()
        warm = await bench_api.warm_up(session, base, RATE)
        await receiver.wait_for(warm, timeout=30)
        await receiver.reset()

        async def publish(number: int) -> None:
            started = time.time()
            body = bench_api.flow_event(number)
            async with session.post(base + "/v1/events", json=body) as response:
                answer = await response.json()
            if response.status == 202:
                sent[answer["id"]] = (started, (time.time() - started) * 1000)

        tasks = [
            asyncio.create_task(publish(number))
            async for number in bench_api.paced(RATE, int(RATE * seconds))
        ]
        await asyncio.gather(*tasks)
    return sent


QUEUE_BATCH = 256


async def queue_steps(args: argparse.Namespace, work: Path, receiver: Receiver) -> None:
    database, engine = await held_queue(args, work, receiver, "queue")  # as before a drain
    await release_deliveries(engine)
    sessions = make_session_factory(engine)
    spent = {"claim": [0.0, 0.0], "record": [0.0, 0.0]}  # wall, server CPU (seconds)
    done = 0
    try:
        while True:
            now = datetime.now(UTC)
            with _timed(spent["claim"]):
                async with transaction(sessions) as session:
                    claimed = await queue.claim_due_deliveries(
                        session, now=now, limit=QUEUE_BATCH, lease_seconds=300
                    )
            if not claimed:
                break
            records = [_success(item, now) for item in claimed]
            with _timed(spent["record"]):
                async with transaction(sessions) as session:
                    await queue.record_attempts(session, records)
            done += len(claimed)
    finally:
        await engine.dispose()
        await _drop(database)
    kind = "PostgreSQL" if database.pg_name else "SQLite"
    print(f"queue steps, {kind}, {done:,} deliveries in claims of {QUEUE_BATCH}:")
    for step, (wall, cpu) in spent.items():
        server = f", server CPU {cpu / done * 1e6:5.1f} µs" if database.pg_name else ""
        print(f"  {step:6}: wall {wall / done * 1e6:5.1f} µs{server} per delivery")


@contextmanager
def _timed(spent: list[float]) -> Iterator[None]:
    """Add the block's wall time and the PostgreSQL server's CPU time to `spent`."""
    wall, cpu = time.perf_counter(), postgres_cpu_seconds()
    yield
    spent[0] += time.perf_counter() - wall
    spent[1] += postgres_cpu_seconds() - cpu


def _success(claimed: ClaimedDelivery, now: datetime) -> AttemptRecord:
    return AttemptRecord(
        delivery_id=claimed.id,
        endpoint_id=claimed.endpoint.id,
        attempted_at=now,
        outcome=AttemptOutcome(status=200, duration_ms=1, response_excerpt="ok"),
        status=DeliveryStatus.SUCCEEDED,
        next_attempt_at=None,
        lease_expires_at=claimed.lease_expires_at,
    )


def postgres_cpu_seconds() -> float:
    """CPU time of every `postgres` process on this machine so far (user + system)."""
    ticks = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if Path(f"/proc/{entry}/comm").read_text().strip() != "postgres":
                continue
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


SENDER_IN_FLIGHT = (64, 128, 256, 512)


async def sender(args: argparse.Namespace, work: Path, receiver: Receiver) -> None:
    tune_garbage_collector(WORKER_GC_YOUNG_THRESHOLD)  # as `tidings worker` does
    requests = [
        dataclasses.replace(request, url=receiver.url(f"/ok/s{number % 10}"))
        for number, request in enumerate(signed_requests("http://unused", args.requests))
    ]
    allowed = (ip_network("127.0.0.0/8"),)
    for _ in range(2):
        for in_flight in args.in_flight or SENDER_IN_FLIGHT:
            async with Sender(allowed_networks=allowed, max_connections=in_flight) as client:

                async def send(index: int) -> None:
                    outcome = await client.send(requests[index])
                    assert outcome.status == 200, outcome

                await run_closed(min(2_000, len(requests)), in_flight, send)  # connections up
                cpu_before = time.process_time()
                rate = await run_closed(len(requests), in_flight, send)
                cpu = (time.process_time() - cpu_before) / len(requests)
            print(
                f"sender, {in_flight:3d} in flight: {rate:7,.0f} req/s, "
                f"{cpu * 1e6:4.0f} µs CPU per request"
            )


async def bundles(args: argparse.Namespace, work: Path, receiver: Receiver) -> None:
    pushes = args.pushes or (
        bench_api.POSTGRES_PUSHES if args.postgres else bench_api.SQLITE_PUSHES
    )

    async def push(base: str, key: str) -> tuple[float, int]:
        return await bench_api.bundle_rate(base, key, args.seconds, pushes)

    changes, errors, cpu = await _ingest(args, work, receiver, "bundles", push)
    print(
        f"bundles {_kind(args)}, {pushes} at a time for {args.seconds:g} s: {changes:,.0f} "
        f"changes/s, {errors} errors; API CPU {cpu * 1e6:.0f} µs per change"
    )


async def events(args: argparse.Namespace, work: Path, receiver: Receiver) -> None:
    async def publish(base: str, key: str) -> tuple[float, int]:
        return await bench_api.event_rate(base, key, args.seconds)

    rate, errors, cpu = await _ingest(args, work, receiver, "events", publish)
    print(
        f"events {_kind(args)}, {bench_api.CLIENT_CONCURRENCY} at a time for {args.seconds:g} s: "
        f"{rate:,.0f} events/s, {errors} errors; API CPU {cpu * 1e6:.0f} µs per event"
    )


async def commit(args: argparse.Namespace, work: Path, receiver: Receiver) -> None:
    database = await _database(args, work, "probe_commit")
    await bench_api.ingest_api(Bench(QUICK, work, receiver), database)  # its organization
    engine = make_engine(database.url)
    checkpointer = checkpointer_for(database.url)
    if checkpointer is not None:
        checkpointer.start()
    committer = _Counted(
        make_session_factory(engine),
        load_catalog(Settings().catalog_paths),
        CriteriaCache(),
        lambda: datetime.now(UTC),
    )
    try:
        await _publish_for(committer, 1.0)  # warm-up: caches, prepared statements
        committer.rounds.clear()
        wall, cpu, server = time.perf_counter(), time.process_time(), postgres_cpu_seconds()
        stored = await _publish_for(committer, args.seconds)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        server = postgres_cpu_seconds() - server
    finally:
        if checkpointer is not None:
            checkpointer.stop()
        await engine.dispose()
        await _drop(database)
    rounds = committer.rounds
    server_part = f", server CPU {server / stored * 1e6:.0f} µs" if database.pg_name else ""
    print(
        f"commit {_kind(args)}, {COMMIT_PUBLISHERS} at a time for {args.seconds:g} s: "
        f"{stored / wall:,.0f} events/s, rounds of {sum(rounds) / len(rounds):.1f}; "
        f"CPU {cpu / stored * 1e6:.0f} µs{server_part} per event"
    )


class _Counted(EventCommitter):
    """An `EventCommitter` that keeps the size of every commit round."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.rounds: list[int] = []

    async def _commit(self, round_: list[Any]) -> None:
        self.rounds.append(len(round_))
        await super()._commit(round_)


async def _publish_for(committer: EventCommitter, seconds: float) -> int:
    """`bench.py`'s flow events into the committer from `COMMIT_PUBLISHERS` publishers for
    `seconds`; how many were stored."""
    deadline = time.perf_counter() + seconds
    numbers = itertools.count()

    async def publisher() -> int:
        stored = 0
        while time.perf_counter() < deadline:
            body = bench_api.flow_event(next(numbers))
            event = Event(
                id=ids.new_id("evt"),
                organization_id="ingest",  # `bench_api.ingest_api`'s organization
                type=body["type"],
                occurred_at=datetime.now(UTC),
                data=body["data"],
                source="api",
            )
            if await committer.store(outbox.NewEvent(event)) is not None:
                raise RuntimeError(f"event {event.id} was taken for a duplicate")
            stored += 1
        return stored

    lanes = [publisher() for _ in range(COMMIT_PUBLISHERS)]
    return sum(await asyncio.gather(*lanes))


ROUTE_CONCURRENCY = 16


async def route(args: argparse.Namespace, work: Path, receiver: Receiver) -> None:
    database = await _database(args, work, "probe_route")
    _, key = await bench_api.ingest_api(Bench(QUICK, work, receiver), database)
    settings = Settings(database_url=database.url, secret_key="probe-" * 8)
    apps = {"no-op": bench_noop.build_app(), "events": create_app(settings)}
    apps["events, store left out"] = create_app(settings)
    apps["  on Quart's connection"] = create_app(settings)
    apps["  on Quart's connection"].asgi_http_class = ASGIHTTPConnection
    for name in ("events, store left out", "  on Quart's connection"):
        apps[name].extensions["tidings"].event_committer = _AnswersAtOnce()
    for app in apps.values():
        await app.startup()
    try:
        tune_garbage_collector()
        numbers = itertools.count()
        for app in apps.values():  # warm-up: caches, the key, prepared statements
            await _call_route(app, key, numbers, 500)
        seconds: dict[str, list[float]] = {name: [] for name in apps}
        for _ in range(5):
            for name, app in apps.items():
                seconds[name].append(await _call_route(app, key, numbers, args.requests))
    finally:
        for app in apps.values():
            await app.shutdown()
        await _drop(database)
    print(
        f"route {_kind(args)}, {ROUTE_CONCURRENCY} at a time, 5 rounds of {args.requests:,}: "
        "CPU of the event loop's thread per request"
    )
    noop = sorted(seconds["no-op"])[2]
    for name, rounds in seconds.items():
        median = sorted(rounds)[2]
        each = " / ".join(f"{value * 1e6:.0f}" for value in rounds)
        print(f"  {name:24s} {each} µs; median {median / noop:.2f} times the no-op route's")


class _AnswersAtOnce:
    """Stands in for the `EventCommitter`: every event is new, nothing is stored."""

    async def store(self, item: outbox.NewEvent) -> None:
        return None


async def _call_route(app: Any, key: str, numbers: Iterator[int], count: int) -> float:
    """`count` flow events POSTed to `app` through ASGI, `ROUTE_CONCURRENCY` at a time; the
    CPU seconds of this thread (the event loop's) per request."""
    headers = [
        (b"authorization", f"Bearer {key}".encode()),
        (b"content-type", b"application/json"),
        (b"host", b"probe"),
    ]
    bodies = [json.dumps(bench_api.flow_event(next(numbers))).encode() for _ in range(count)]

    async def post(body: bytes) -> None:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/v1/events",
            "raw_path": b"/v1/events",
            "query_string": b"",
            "root_path": "",
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
            "client": ("127.0.0.1", 40000),
            "server": ("127.0.0.1", 8080),
            "extensions": {},
        }
        messages = [{"type": "http.request", "body": body, "more_body": False}]
        statuses: list[int] = []

        async def receive() -> dict[str, Any]:
            if messages:
                return messages.pop()
            await asyncio.Event().wait()  # the client never goes away
            raise AssertionError("unreachable")

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        await app(scope, receive, send)
        if statuses != [202]:
            raise RuntimeError(f"POST /v1/events answered {statuses}")

    slots = asyncio.Semaphore(ROUTE_CONCURRENCY)

    async def limited(body: bytes) -> None:
        async with slots:
            await post(body)

    started = time.thread_time()
    await asyncio.gather(*(limited(body) for body in bodies))
    return (time.thread_time() - started) / count


async def _ingest(
    args: argparse.Namespace,
    work: Path,
    receiver: Receiver,
    name: str,
    load: Callable[[str, str], Awaitable[tuple[float, int]]],
) -> tuple[float, int, float]:
    """`load` (base URL, source key -> rate, errors) against `tidings api` on `bench.py`'s
    ingest organization: the rate, the errors, and the API's CPU seconds per item."""
    database = await _database(args, work, f"probe_{name}")
    tidings, key = await bench_api.ingest_api(Bench(QUICK, work, receiver), database)
    server, base = await tidings.start_server("api", args.api_processes)
    try:
        await settled([server])
        cpu_before = cpu_seconds(server.pid)
        rate, errors = await load(base, key)
        cpu = cpu_seconds(server.pid) - cpu_before
    finally:
        stop_process(server)
        await _drop(database)
    return rate, errors, cpu / (rate * args.seconds) if rate else float("nan")


def _kind(args: argparse.Namespace) -> str:
    return "PostgreSQL" if args.postgres else "SQLite"


def _line(label: str, rows: list[tuple[float, float, float]]) -> str:
    if not rows:
        return f"  {label}: nothing arrived"
    e2e = [row[1] for row in rows]
    accept = [row[2] for row in rows]
    return (
        f"  {label}: e2e p50 {percentile(e2e, 0.5):6.1f} p95 {percentile(e2e, 0.95):6.1f} "
        f"p99 {percentile(e2e, 0.99):6.1f} ms | POST p50 {percentile(accept, 0.5):5.1f} "
        f"p99 {percentile(accept, 0.99):6.1f} ms"
    )


async def _database(args: argparse.Namespace, work: Path, name: str) -> Database:
    if args.postgres:
        return await postgres_database(name)
    return await sqlite_database(work / f"{name}.db")


async def _drop(database: Database) -> None:
    if database.pg_name:
        await database.drop()


async def _run(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="tidings-probe-"))
    receiver = await start_receiver(work)
    try:
        probes = {
            "drain": drain,
            "e2e": end_to_end,
            "sender": sender,
            "queue": queue_steps,
            "bundles": bundles,
            "events": events,
            "commit": commit,
            "route": route,
        }
        await probes[args.probe](args, work, receiver)
    finally:
        stop_process(receiver.process)
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    """Run one probe and print its result."""
    parser = argparse.ArgumentParser(description="Tidings probes (see the module docstring).")
    parser.add_argument(
        "probe",
        choices=["drain", "e2e", "sender", "queue", "bundles", "events", "commit", "route"],
    )
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL instead of SQLite")
    parser.add_argument("--workers", type=int, default=1, help="drain: worker processes")
    parser.add_argument(
        "--api-processes", type=int, default=1, help="bundles, events: `tidings api --processes`"
    )
    parser.add_argument(
        "--serve-processes",
        type=int,
        default=0,
        help="e2e on PostgreSQL: `tidings serve --processes N` instead of api + worker",
    )
    parser.add_argument("--deliveries", type=int, default=20_000, help="drain, queue: length")
    parser.add_argument(
        "--ordered", action="store_true", help="drain, queue: the endpoints deliver in order"
    )
    parser.add_argument(
        "--idle-ordered",
        type=int,
        default=0,
        help="drain, queue: this many more ordered endpoints, with nothing to deliver",
    )
    parser.add_argument(
        "--seconds", type=float, default=10, help="e2e, bundles, events, commit: measured seconds"
    )
    parser.add_argument("--pushes", type=int, default=0, help="bundles: pushes at a time")
    parser.add_argument("--requests", type=int, default=20_000, help="sender, route: per round")
    parser.add_argument(
        "--in-flight", type=int, action="append", help="sender: only these (repeatable)"
    )
    args = parser.parse_args()
    if args.serve_processes and not (args.postgres and args.probe == "e2e"):
        parser.error("--serve-processes is for `e2e --postgres`: on SQLite one process delivers")
    asyncio.run(_run(args))


if __name__ == "__main__":
    main()

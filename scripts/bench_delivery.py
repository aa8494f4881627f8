"""Delivery measurements: the HTTP ceiling, queue drain, worker memory, slow receivers."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from ipaddress import ip_network

import aiohttp
from bench_env import (
    SECRET_KEY,
    Bench,
    Database,
    Receiver,
    Tidings,
    cpu_seconds,
    settled,
    sqlite_database,
    stop_process,
)
from bench_report import Measurement
from bench_seed import (
    EndpointSpec,
    bench_engine,
    count_by_status,
    encounter,
    hold_deliveries,
    peak_rss_mb,
    release_deliveries,
    seed_deliveries,
    seed_endpoints,
    wait_succeeded,
)

from app.delivery import attempts
from app.delivery.sender import OutboundRequest, Sender
from app.domain import payloads, secrets, signing
from app.domain.catalog import load_catalog
from app.domain.event_types import EventType
from app.domain.models import DeliveryStatus, Endpoint, Event
from app.domain.retry import RetryPolicy
from app.store import deliveries as queue
from app.store.db import make_session_factory

CONCURRENCY = 64  # requests in flight for the ceiling clients
DRAIN_ENDPOINTS = 10
DRAIN_TARGET = 5_000.0
CEILING_SHARE = 0.4


async def run_closed(count: int, concurrency: int, send: Callable[[int], Awaitable[None]]) -> float:
    """Call `send(0..count-1)` with `concurrency` in flight; the rate in calls per second."""
    next_index = iter(range(count))

    async def lane() -> None:
        for index in next_index:
            await send(index)

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return count / (time.perf_counter() - started)


def signed_requests(url: str, count: int) -> list[OutboundRequest]:
    """What the worker would send: envelope bodies of an Encounter, Standard Webhooks signed."""
    secret = secrets.generate_signing_secret()
    now = datetime.now(UTC)
    event_type, endpoint = _encounter_type(), _endpoint_stub()
    requests = []
    for number in range(count):
        event = Event(
            id=f"evt_bench{number:08d}",
            organization_id="bench",
            type="encounter.updated",
            occurred_at=now,
            data=encounter(number),
        )
        body = payloads.build_payload(
            event, endpoint, event_type, public_url="http://x", message_id="m"
        ).body
        headers = signing.standard_webhooks_headers([secret], event.id, int(now.timestamp()), body)
        requests.append(
            OutboundRequest(
                url=url, body=body, headers={**headers, "Content-Type": "application/json"}
            )
        )
    return requests


def _encounter_type() -> EventType:
    found = load_catalog(()).get("encounter.updated")
    assert found is not None
    return found


def _endpoint_stub() -> Endpoint:
    return Endpoint(id="ep_x", organization_id="bench", url="http://x", event_types=("*",))


async def ceiling(bench: Bench) -> list[Measurement]:
    """Raw aiohttp and the Tidings `Sender`, same signed requests, same receiver, no database.

    Two alternating rounds each, the best kept: the machine is shared, so a burst of someone
    else's load should not decide the ratio.
    """
    count = bench.sizes.ceiling_requests
    requests = signed_requests(bench.receiver.url("/ok/ceiling"), count)
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    allowed = (ip_network("127.0.0.0/8"),)
    raw_rates, sender_rates = [], []
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        Sender(allowed_networks=allowed, max_connections=CONCURRENCY) as sender,
    ):

        async def raw(index: int) -> None:
            await raw_post(session, requests[index])

        async def tidings(index: int) -> None:
            outcome = await sender.send(requests[index])
            assert outcome.status == 200, outcome

        for _ in range(2):
            raw_rates.append(await run_closed(count, CONCURRENCY, raw))
            sender_rates.append(await run_closed(count, CONCURRENCY, tidings))
    best_raw, best_sender = max(raw_rates), max(sender_rates)
    rounds = f"rounds {', '.join(f'{r:.0f}' for r in raw_rates)}"
    return [
        Measurement("ceiling: aiohttp raw", best_raw, "req/s", note=f"64 in flight; {rounds}"),
        Measurement(
            "ceiling: tidings Sender",
            best_sender,
            "req/s",
            ratio=best_sender / best_raw,
            ratio_of="aiohttp raw",
            note=f"rounds {', '.join(f'{r:.0f}' for r in sender_rates)}",
        ),
    ]


async def raw_post(session: aiohttp.ClientSession, request: OutboundRequest) -> None:
    """One request of the raw client: aiohttp with nothing of Tidings around it."""
    async with session.post(request.url, data=request.body, headers=request.headers) as response:
        await response.read()


async def raw_rate(requests: Sequence[OutboundRequest]) -> float:
    """One round of the raw client over `requests` on fresh connections (opened first): the
    ceiling again, measured right next to what it judges."""
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def raw(index: int) -> None:
            await raw_post(session, requests[index])

        await run_closed(min(len(requests), 4 * CONCURRENCY), CONCURRENCY, raw)
        return await run_closed(len(requests), CONCURRENCY, raw)


async def attempt_cpu(database: Database) -> Measurement:
    """CPU per attempt outside HTTP: decrypt the secret, build the payload, sign (µs/attempt)."""
    engine = bench_engine(database)
    sessions = make_session_factory(engine)
    now = datetime.now(UTC)
    async with sessions() as session, session.begin():
        claimed = await queue.claim_due_deliveries(session, now=now, limit=100, lease_seconds=60)
        await session.rollback()
    await engine.dispose()
    context = attempts.AttemptContext(
        catalog=load_catalog(()),
        secret_box=secrets.SecretBox(SECRET_KEY),
        public_url="http://127.0.0.1:8080",
        policy=RetryPolicy((5, 300)),
        default_timeout=5,
    )
    rounds = 20
    started = time.perf_counter()
    for _ in range(rounds):
        for item in claimed:
            attempts.build_request(item, context, now)
    micros = (time.perf_counter() - started) / (rounds * len(claimed)) * 1e6
    return Measurement(
        "attempt build+sign (CPU)",
        micros,
        "µs/attempt",
        note="decrypt secret + payload JSON + HMAC, per attempt",
    )


async def drain_held(
    receiver: Receiver,
    database: Database,
    processes: Sequence[subprocess.Popen[bytes]],
    count: int,
    cap: float,
    ceiling_requests: Sequence[OutboundRequest] = (),
) -> Drained:
    """Release the held queue to worker `processes` once they have settled, and time it from
    the first arrival until all `count` succeeded, or until `cap` seconds (then the rate is
    over the deliveries done so far). Workers started together reach the queue together, and
    their start-up is not measured. With `ceiling_requests`, a round of the raw client runs
    just before the release (the workers idle): this machine's speed drifts within a run, so
    the ratio is taken to the ceiling measured next to the drain."""
    await settled(processes)
    ceiling = await raw_rate(ceiling_requests) if ceiling_requests else None
    await receiver.reset()
    engine = bench_engine(database)
    try:
        cpu_before = sum(cpu_seconds(process.pid) for process in processes)
        await release_deliveries(engine)
        if not await receiver.wait_for(1, timeout=30):
            raise RuntimeError(f"no delivery arrived from {len(processes)} worker(s) within 30 s")
        first = (await receiver.stats())["ok"]["first"]
        seen, done = await wait_succeeded(engine, count, since=first, cap=cap, processes=processes)
        cpu = sum(cpu_seconds(process.pid) for process in processes) - cpu_before
    finally:
        await engine.dispose()
    return Drained(done, count, seen - first, cpu, ceiling)


@dataclass(frozen=True)
class Drained:
    """How far a drain got: `done` of `count` deliveries succeeded in `seconds`."""

    done: int
    count: int
    seconds: float
    cpu_seconds: float
    ceiling: float | None = None  # the raw client's rate just before the release

    @property
    def rate(self) -> float:
        return self.done / self.seconds

    @property
    def cpu_per_delivery(self) -> float:
        """The workers' CPU seconds per delivery done (every thread, release to last)."""
        return self.cpu_seconds / max(1, self.done)

    @property
    def note(self) -> str:
        cpu = f"workers' CPU {self.cpu_per_delivery * 1e6:.0f} µs per delivery"
        if self.ceiling is not None:
            cpu += f"; ceiling just before {self.ceiling:,.0f} req/s"
        if self.done >= self.count:
            return f"all {self.count:,} in {self.seconds:.1f} s; {cpu}"
        return f"capped: {self.done:,} of {self.count:,} in {self.seconds:.1f} s; {cpu}"


async def _seeded(bench: Bench, database: Database, count: int) -> None:
    """`count` deliveries to `DRAIN_ENDPOINTS` endpoints of the receiver, due now."""
    engine = bench_engine(database)
    specs = [
        EndpointSpec("drain", bench.receiver.url(f"/ok/drain{n}"), ("encounter.*",))
        for n in range(DRAIN_ENDPOINTS)
    ]
    endpoint_ids = await seed_endpoints(engine, specs)
    await seed_deliveries(engine, "drain", endpoint_ids, count)
    await engine.dispose()


async def _hold(database: Database) -> None:
    engine = bench_engine(database)
    await hold_deliveries(engine)
    await engine.dispose()


def _drain_row(name: str, drained: Drained, *, goal: float | None) -> Measurement:
    """A drain's row: judged by its share of the ceiling, and by `goal` deliveries/s where the
    issue sets one (SQLite; for PostgreSQL it sets only the share)."""
    ceiling, rate, note = drained.ceiling, drained.rate, drained.note
    return Measurement(
        name,
        rate,
        "deliveries/s",
        goal=goal,
        ratio=rate / ceiling if ceiling else None,
        ratio_of="aiohttp raw just before",
        ratio_goal=CEILING_SHARE,
        note=note,
    )


async def drain(bench: Bench) -> list[Measurement]:
    """N deliveries to 10 endpoints: SQLite with one worker, PostgreSQL with 1, 2 and 4. Each
    run starts on a held queue, released once its workers have settled and a round of the raw
    client has measured the ceiling next to it; the PostgreSQL runs add workers to those of
    the run before."""
    count, cap = bench.sizes.drain_deliveries, bench.sizes.drain_cap_seconds
    ceiling_requests = signed_requests(
        bench.receiver.url("/ok/ceiling"), bench.sizes.ceiling_requests
    )
    rows = []
    sqlite = await sqlite_database(bench.work / "drain.db")
    await _seeded(bench, sqlite, count)
    rows.append(await attempt_cpu(sqlite))  # claims (and gives back) due deliveries
    await _hold(sqlite)
    worker = Tidings(sqlite.url, bench.work / "drain-sqlite").start_worker()
    try:
        drained = await drain_held(bench.receiver, sqlite, [worker], count, cap, ceiling_requests)
    finally:
        stop_process(worker)
    rows.append(_drain_row(f"drain {count:,} SQLite, 1 worker", drained, goal=DRAIN_TARGET))
    postgres = await bench.postgres("drain")
    await _seeded(bench, postgres, count)
    tidings = Tidings(postgres.url, bench.work / "drain-postgres")
    workers: list[subprocess.Popen[bytes]] = []
    try:
        for total in (1, 2, 4):
            await _hold(postgres)
            workers += [tidings.start_worker(f"worker{n}") for n in range(len(workers), total)]
            drained = await drain_held(
                bench.receiver, postgres, workers, count, cap, ceiling_requests
            )
            name = f"drain {count:,} PostgreSQL, {total} worker{'s' if total > 1 else ''}"
            rows.append(_drain_row(name, drained, goal=None))
    finally:
        for worker in workers:
            stop_process(worker)
    return rows


async def memory(bench: Bench) -> list[Measurement]:
    """Peak RSS of `tidings worker` with a deep queue, and its delivery rate meanwhile."""
    count = bench.sizes.memory_deliveries
    database = await sqlite_database(bench.work / "memory.db")
    engine = bench_engine(database)
    specs = [
        EndpointSpec("memory", bench.receiver.url(f"/ok/mem{n}"), ("encounter.*",))
        for n in range(100)
    ]
    started = time.perf_counter()
    await seed_deliveries(engine, "memory", await seed_endpoints(engine, specs), count)
    seeded = time.perf_counter() - started
    await bench.receiver.reset()
    process = Tidings(database.url, bench.work / "memory").start_worker()
    peak = 0.0
    try:
        deadline = time.monotonic() + bench.sizes.memory_seconds + 3
        while time.monotonic() < deadline:
            peak = max(peak, peak_rss_mb(process.pid) or 0.0)
            await asyncio.sleep(0.2)
    finally:
        stats = (await bench.receiver.stats())["ok"]
        stop_process(process)
    done = await count_by_status(engine, DeliveryStatus.SUCCEEDED)
    await engine.dispose()
    rate = stats["count"] / max(1e-9, (stats["last"] or 0) - (stats["first"] or 0))
    return [
        Measurement(
            f"worker peak RSS, {count:,} queued",
            peak,
            "MB",
            goal=300,
            higher_is_better=False,
            note=f"seeded in {seeded:.0f} s",
        ),
        Measurement(
            f"deliver rate, {count:,} queued (SQLite)",
            rate,
            "deliveries/s",
            goal=DRAIN_TARGET,
            note=f"{done:,} succeeded in the window",
        ),
    ]


SLOW_ENDPOINTS = 20
SLOW_HANGING = 2  # 10 %


async def slow_receivers(bench: Bench) -> list[Measurement]:
    """Healthy-endpoint throughput with 10 % of endpoints hanging, against none hanging: two
    sets of 20 endpoints in one held queue, released to one worker a set at a time."""
    per_endpoint = bench.sizes.slow_per_endpoint
    database = await sqlite_database(bench.work / "slow.db")
    engine = bench_engine(database)
    sets: dict[str, list[str]] = {}
    for label, hangs in (("base", 0), ("hang", SLOW_HANGING)):
        specs = [
            EndpointSpec(
                "slow",
                bench.receiver.url(f"/{'hang' if n < hangs else 'ok'}/{label}{n}"),
                ("encounter.*",),
            )
            for n in range(SLOW_ENDPOINTS)
        ]
        sets[label] = await seed_endpoints(engine, specs)
        await seed_deliveries(engine, "slow", sets[label], SLOW_ENDPOINTS * per_endpoint)
    await hold_deliveries(engine)
    await engine.dispose()
    process = Tidings(database.url, bench.work / "slow").start_worker()
    try:
        await settled([process])
        baseline = await _healthy_rate(bench, database, sets["base"], SLOW_ENDPOINTS * per_endpoint)
        healthy = (SLOW_ENDPOINTS - SLOW_HANGING) * per_endpoint
        hanging = await _healthy_rate(bench, database, sets["hang"], healthy)
    finally:
        stop_process(process, grace=1)
    return [
        Measurement(
            "slow receivers: none hanging",
            baseline,
            "deliveries/s",
            note=f"{SLOW_ENDPOINTS} endpoints x {per_endpoint}",
        ),
        Measurement(
            "slow receivers: 10 % hanging",
            hanging,
            "deliveries/s",
            ratio=hanging / baseline,
            ratio_of="none hanging",
            ratio_goal=0.8,
            note=f"{SLOW_HANGING} of {SLOW_ENDPOINTS} endpoints hang until the 5 s timeout",
        ),
    ]


async def _healthy_rate(
    bench: Bench, database: Database, endpoint_ids: list[str], healthy: int
) -> float:
    """Release the deliveries to `endpoint_ids`; deliveries/s at the receiver's `/ok` paths
    until `healthy` have arrived there."""
    await bench.receiver.reset()
    engine = bench_engine(database)
    try:
        await release_deliveries(engine, endpoint_ids)
    finally:
        await engine.dispose()
    if not await bench.receiver.wait_for(healthy, timeout=300):
        raise RuntimeError("slow receivers: healthy deliveries did not finish within 300 s")
    stats = (await bench.receiver.stats())["ok"]
    return healthy / max(1e-9, float(stats["last"]) - float(stats["first"]))

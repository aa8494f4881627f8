"""API measurements: end-to-end latency, fan-out, and ingest against a no-op Quart route."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import orjson
from bench_env import (
    SCRIPTS,
    Bench,
    Database,
    Tidings,
    settled,
    sqlite_database,
    start_server,
    start_servers,
    stop_process,
)
from bench_report import Measurement, median, percentile
from bench_seed import EndpointSpec, bench_engine, encounter, seed_endpoints

from app.domain.models import Role
from app.store.admin import create_api_key

FLOW_TYPE = "patient_flow.completed"
FANOUT_ENDPOINTS = 1_000
BUNDLE_CHANGES = 500
CLIENT_CONCURRENCY = 32
# Bundle pushes at a time, by database (docs/performance.md has the measurements): on SQLite
# 4 were no faster than 2; on PostgreSQL, where the API waits on another process, 4 beat 2.
SQLITE_PUSHES = 2
POSTGRES_PUSHES = 4
MAX_IN_FLIGHT = 200
API_PROCESSES = 2  # the second ingest setup: `tidings api --processes 2`, one per core
WARM_UP_SECONDS = 1.0
WARM_UP_LOOP_SECONDS = 0.5  # a closed loop's calls before its clock starts
BUNDLE_RATE_BOUND = 40_000  # changes/s: Bundle bodies are made ahead for this rate
# Numbers every Bundle push of a run, so that each carries changes never pushed before, also
# into a database an earlier setup of the run pushed into (changes already stored are only
# counted as duplicates, at a fraction of the cost of storing them).
_BUNDLE_NUMBERS = itertools.count()
# When the first change of the run happened; each later change a millisecond after the one
# before, as a `_history` read returns them (see `history_bundle`).
_FIRST_CHANGE_AT = datetime(2025, 6, 1, 12, tzinfo=UTC)


def flow_event(number: int) -> dict[str, Any]:
    """A `patient_flow.completed` event body for `POST /v1/events`."""
    return {
        "type": FLOW_TYPE,
        "data": {
            "id": f"flow_{number}",
            "patient": f"Patient/p{number % 1000}",
            "status": "completed",
            "completed_at": "2025-06-01T12:00:00Z",
        },
    }


def history_bundle(first: int, count: int = BUNDLE_CHANGES) -> dict[str, Any]:
    """A FHIR history Bundle of `count` Encounter updates (distinct resources and versions),
    each at its own `lastUpdated`, later by a millisecond for each number, as a FHIR server's
    history of changes runs. (With one instant for every change, the events of every push
    went to the same places all over the (organization, occurred_at) index: up to one page of
    that index written per event at each commit, an artefact no real history makes.)"""
    entries = []
    for number in range(first, first + count):
        resource = encounter(number)
        changed_at = _FIRST_CHANGE_AT + timedelta(milliseconds=number)
        last_updated = changed_at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        resource["meta"] = {**resource["meta"], "lastUpdated": last_updated}
        entries.append(
            {
                "fullUrl": f"Encounter/{resource['id']}",
                "resource": resource,
                "request": {"method": "PUT", "url": f"Encounter/{resource['id']}"},
                "response": {"status": "200 OK"},
            }
        )
    return {"resourceType": "Bundle", "type": "history", "entry": entries}


def headers_for(key: str, content_type: str = "application/json") -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "Content-Type": content_type}


async def source_key(database_url: str, organization: str) -> str:
    key, _ = await create_api_key(database_url, organization, Role.SOURCE, None)
    return key


async def end_to_end(bench: Bench) -> list[Measurement]:
    """Open-loop events through `tidings serve` on SQLite (accepting and delivering share one
    process and one core), then through `tidings api` + `tidings worker` on PostgreSQL (a core
    each: the worker is woken by LISTEN/NOTIFY, not by a poll tick); then one event fanned out
    to 1,000 endpoints through `serve`. Both setups start together and are measured one at a
    time, the other idle."""
    rx = bench.receiver
    serve_database = await sqlite_database(bench.work / "serve.db")
    engine = bench_engine(serve_database)
    await seed_endpoints(engine, [EndpointSpec("e2e", rx.url("/ok/e2e"), (FLOW_TYPE,))])
    await seed_endpoints(
        engine,
        [EndpointSpec("fan", rx.url(f"/ok/fan{n}"), (FLOW_TYPE,)) for n in range(FANOUT_ENDPOINTS)],
    )
    await engine.dispose()
    serve_key = await source_key(serve_database.url, "e2e")
    fan_key = await source_key(serve_database.url, "fan")
    split_database = await bench.postgres("e2e")
    engine = bench_engine(split_database)
    await seed_endpoints(engine, [EndpointSpec("e2e", rx.url("/ok/e2e"), (FLOW_TYPE,))])
    await engine.dispose()
    split_key = await source_key(split_database.url, "e2e")
    split = Tidings(split_database.url, bench.work / "split")
    processes = [split.start_worker()]
    try:
        (serve, serve_base), (api, split_base) = await start_servers(
            Tidings(serve_database.url, bench.work / "serve").start_server("serve"),
            split.start_server("api"),
        )
        processes += [serve, api]
        await settled(processes)
        rows = await _latency(bench, serve_base, serve_key, "SQLite, serve")
        fanout = await _fanout(bench, serve_base, fan_key)
        stop_process(serve)
        rows += await _latency(bench, split_base, split_key, "PostgreSQL, api + worker")
    finally:
        for process in processes:
            stop_process(process)
    return [*rows, fanout]


async def _latency(bench: Bench, base: str, key: str, setup: str) -> list[Measurement]:
    rate, seconds = bench.sizes.e2e_rate, bench.sizes.e2e_seconds
    sent: dict[str, float] = {}
    accept_ms: list[float] = []
    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=connector, headers=headers_for(key)) as session:

        async def publish(number: int) -> None:
            started = time.time()
            async with session.post(base + "/v1/events", json=flow_event(number)) as response:
                body = await response.json()
            accept_ms.append((time.time() - started) * 1000)
            if response.status == 202:
                sent[body["id"]] = started

        await bench.receiver.reset()
        warm = await warm_up(session, base, rate)
        if not await bench.receiver.wait_for(warm, timeout=30):
            raise RuntimeError(f"{setup}: the warm-up events did not all arrive within 30 s")
        await bench.receiver.reset()
        tasks: set[asyncio.Task[None]] = set()
        shed = 0
        origin = time.perf_counter()
        async for number in paced(rate, int(rate * seconds)):
            if len(tasks) >= MAX_IN_FLIGHT:  # the server fell behind: do not queue forever
                shed += 1
                continue
            task = asyncio.create_task(publish(number))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        offered = (number + 1 - shed) / (time.perf_counter() - origin)
        await asyncio.gather(*tasks)
    await bench.receiver.wait_for(len(sent), timeout=bench.sizes.e2e_seconds + 10)
    arrivals = await bench.receiver.arrivals()
    latencies = [(arrivals[i] - t) * 1000 for i, t in sent.items() if i in arrivals]
    missing = len(sent) - len(latencies)
    note = (
        f"after {WARM_UP_SECONDS:g} s of warm-up: sent {offered:.0f}/s of {rate}/s "
        f"({shed:,} shed at {MAX_IN_FLIGHT} in flight), {len(sent):,} accepted, "
        f"{missing} not arrived"
    )
    rows = [
        Measurement(
            f"e2e p{q} (accept -> arrival), {setup}",
            percentile(latencies, q / 100),
            "ms",
            goal=50 if q == 99 else None,
            higher_is_better=False,
            note=note,
        )
        for q in (50, 95, 99)
    ]
    rows.append(
        Measurement(
            f"e2e p99 of POST /v1/events, {setup}",
            percentile(accept_ms, 0.99),
            "ms",
            note="202 response time under the same load",
        )
    )
    return rows


async def warm_up(session: aiohttp.ClientSession, base: str, rate: int) -> int:
    """`WARM_UP_SECONDS` of the same open loop, not measured (as the ingest loops warm up):
    the first events pay for connections and first-use compilation in every process. The
    number of events sent."""
    tasks = [
        asyncio.create_task(_post(session, base, flow_event(-1 - number)))
        async for number in paced(rate, int(rate * WARM_UP_SECONDS))
    ]
    await asyncio.gather(*tasks)
    return len(tasks)


async def paced(rate: float, count: int) -> AsyncIterator[int]:
    """0 to `count - 1`, each when its turn comes in an open loop of `rate` per second."""
    origin = time.perf_counter()
    for number in range(count):
        delay = origin + number / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        yield number


async def _post(session: aiohttp.ClientSession, base: str, body: dict[str, Any]) -> None:
    async with session.post(base + "/v1/events", json=body) as response:
        if response.status != 202:
            raise RuntimeError(f"warm-up event refused: {response.status} {await response.text()}")


async def _fanout(bench: Bench, base: str, key: str) -> Measurement:
    spans = []
    async with aiohttp.ClientSession(headers=headers_for(key)) as session:
        for run in range(bench.sizes.fanout_runs):
            await bench.receiver.reset()
            started = time.time()
            async with session.post(base + "/v1/events", json=flow_event(run)) as response:
                assert response.status == 202, await response.text()
            if not await bench.receiver.wait_for(FANOUT_ENDPOINTS, timeout=60):
                raise RuntimeError("fan-out did not reach every endpoint within 60 s")
            spans.append((await bench.receiver.stats())["ok"]["last"] - started)
    return Measurement(
        f"fan-out 1 event -> {FANOUT_ENDPOINTS:,} endpoints",
        median(spans),
        "s",
        goal=1.0,
        higher_is_better=False,
        note=f"publish -> last arrival, median of {len(spans)}",
        extra={"runs_s": spans},
    )


async def _closed_loop(
    seconds: float, concurrency: int, call: Callable[[int], Awaitable[int]]
) -> tuple[float, int]:
    """Calls in a closed loop for `seconds` (after a short warm-up); (units/s, errors)."""
    warm_until = time.perf_counter() + WARM_UP_LOOP_SECONDS
    while time.perf_counter() < warm_until:
        await call(0)
    units, errors, counter = 0, 0, iter(range(1, 10**9))
    stop_at = time.perf_counter() + seconds

    async def lane() -> None:
        nonlocal units, errors
        while time.perf_counter() < stop_at:
            done = await call(next(counter))
            units, errors = units + max(done, 0), errors + (done < 0)

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return units / (time.perf_counter() - started), errors


async def event_rate(base: str, key: str, seconds: float) -> tuple[float, int]:
    connector = aiohttp.TCPConnector(limit=CLIENT_CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector, headers=headers_for(key)) as session:

        async def publish(number: int) -> int:
            async with session.post(base + "/v1/events", json=flow_event(number)) as response:
                await response.read()
                return 1 if response.status in (200, 202) else -1

        return await _closed_loop(seconds, CLIENT_CONCURRENCY, publish)


async def _start_noop(bench: Bench, processes: int = 1) -> tuple[subprocess.Popen[bytes], str]:
    """The no-op Quart app on Hypercorn (`bench_noop.py`), in `processes` processes served
    as `tidings api --processes` serves: (process, base URL)."""
    script = str(SCRIPTS / "bench_noop.py")
    return await start_server(
        [sys.executable, script, "--processes", str(processes)],
        log=bench.work / f"noop{processes}.log",
    )


async def bundle_rate(base: str, key: str, seconds: float, pushes: int) -> tuple[float, int]:
    """500-change history Bundles pushed `pushes` at a time for `seconds`: (changes/s, errors).

    The bodies are made before the clock starts, enough for `BUNDLE_RATE_BOUND` changes a
    second (then one at a time): making and encoding one costs the client's only thread 4-6
    ms, during which it neither sends nor reads, and made on demand they held the PostgreSQL
    row about a fifth under what the API takes (docs/performance.md)."""
    made = iter([_bundle_body() for _ in range(_bodies_for(seconds))])
    headers = headers_for(key, "application/fhir+json")
    async with aiohttp.ClientSession(headers=headers) as session:

        async def push(_: int) -> int:
            body = next(made, None) or _bundle_body()
            async with session.post(base + "/v1/ingest/fhir", data=body) as response:
                answer = await response.read()
                if response.status != 202 or json.loads(answer)["duplicates"]:
                    return -1  # an error, or changes already stored: not what is measured
                return BUNDLE_CHANGES

        return await _closed_loop(seconds, pushes, push)


def _bundle_body() -> bytes:
    return orjson.dumps(history_bundle(next(_BUNDLE_NUMBERS) * BUNDLE_CHANGES))


def _bodies_for(seconds: float) -> int:
    """How many Bundles `BUNDLE_RATE_BOUND` changes a second take for `seconds` and the
    closed loop's warm-up."""
    return math.ceil(BUNDLE_RATE_BOUND * (seconds + WARM_UP_LOOP_SECONDS) / BUNDLE_CHANGES)


async def ingest_api(bench: Bench, database: Database) -> tuple[Tidings, str]:
    """`tidings api` to start on `database`, whose `ingest` organization has one endpoint for
    the flow events and one for Encounter changes: (how to start it, source key)."""
    engine = bench_engine(database)
    await seed_endpoints(
        engine,
        [
            EndpointSpec("ingest", bench.receiver.url("/ok/ingest-flow"), (FLOW_TYPE,)),
            EndpointSpec("ingest", bench.receiver.url("/ok/ingest-enc"), ("encounter.*",)),
        ],
    )
    await engine.dispose()
    label = "api-postgres" if database.is_postgres else "api"
    return Tidings(database.url, bench.work / label), await source_key(database.url, "ingest")


async def ingest(bench: Bench) -> list[Measurement]:
    """Single events (against a no-op Quart route) and 500-change history Bundles on SQLite,
    through one API process, then through `API_PROCESSES` (`tidings api --processes`, against
    the no-op route served the same way). In full mode, events and Bundles on PostgreSQL too:
    its events beside the no-op rate measured in turns with SQLite's; its inserts run in the
    database's own process, and 4 pushes at a time keep the API busy while it waits. Each
    setup's servers start together and are measured one at a time, the others idle; the no-op
    route and the SQLite events take turns (full mode: 3 each)."""
    sqlite = await sqlite_database(bench.work / "ingest.db")
    apis = [await ingest_api(bench, sqlite)]
    if bench.sizes.ingest_on_postgres:
        apis.append(await ingest_api(bench, await bench.postgres("ingest")))
    rows = await _ingest_setup(bench, apis, 1)
    several = [
        (Tidings(tidings.database_url, tidings.workdir.with_name(f"{tidings.workdir.name}-n")), key)
        for tidings, key in apis
    ]
    return rows + await _ingest_setup(bench, several, API_PROCESSES)


async def _ingest_setup(
    bench: Bench, apis: list[tuple[Tidings, str]], processes: int
) -> list[Measurement]:
    """The ingest rows for `apis` (SQLite first), each `tidings api --processes processes`."""
    seconds = bench.sizes.ingest_seconds
    started = await start_servers(
        _start_noop(bench, processes),
        *(tidings.start_server("api", processes) for tidings, _ in apis),
    )
    processes_started = [process for process, _ in started]
    served = "" if processes == 1 else f", {processes} processes"
    try:
        await settled(processes_started)
        (noop_process, noop_base), (_, base), *postgres = started
        key = apis[0][1]
        noop, events, event_errors = await _routes_in_turns(
            noop_base, base, key, seconds, bench.sizes.ingest_turns
        )
        stop_process(noop_process)
        pushes = SQLITE_PUSHES * processes
        changes, bundle_errors = await bundle_rate(base, key, max(seconds, 2), pushes)
        command = "`tidings api`" if processes == 1 else f"`tidings api --processes {processes}`"

        def client(database: str) -> str:
            return f"{CLIENT_CONCURRENCY} concurrent, {command} on {database}, 1 delivery each"

        rows = [
            Measurement(
                f"ingest: no-op Quart route{served}",
                noop,
                "req/s",
                note=f"same client, Hypercorn; {bench.sizes.ingest_turns} turns with the events",
            ),
            Measurement(
                f"ingest: POST /v1/events{served}",
                events,
                "events/s",
                goal=2_500,
                ratio=events / noop,
                ratio_of=f"no-op Quart{served}",
                ratio_goal=0.8,
                note=f"{client('SQLite')}; {event_errors} errors",
            ),
            _bundle_row(f"SQLite{served}", changes, pushes, bundle_errors, command),
        ]
        for (_, postgres_base), (_, postgres_key) in zip(postgres, apis[1:], strict=True):
            events, event_errors = await event_rate(postgres_base, postgres_key, seconds)
            rows.append(
                Measurement(
                    f"ingest: POST /v1/events, PostgreSQL{served}",
                    events,
                    "events/s",
                    goal=2_500,
                    ratio=events / noop,
                    ratio_of=f"no-op Quart{served}",
                    note=f"{client('PostgreSQL')}; {event_errors} errors; "
                    "the no-op route as measured beside SQLite",
                )
            )
            pushes = POSTGRES_PUSHES * processes
            changes, bundle_errors = await bundle_rate(postgres_base, postgres_key, seconds, pushes)
            rows.append(_bundle_row(f"PostgreSQL{served}", changes, pushes, bundle_errors, command))
    finally:
        for process in processes_started:
            stop_process(process)
    return rows


async def _routes_in_turns(
    noop_base: str, base: str, key: str, seconds: float, turns: int
) -> tuple[float, float, int]:
    """The no-op route and `POST /v1/events` for `seconds` each, in `turns` alternating turns,
    so that a machine that slows down or speeds up during the section moves both alike:
    (no-op req/s, events/s, event errors), each rate the mean of its turns."""
    noop_rates, event_rates, errors = [], [], 0
    for _ in range(turns):
        noop, _ = await event_rate(noop_base, "none", seconds / turns)
        events, event_errors = await event_rate(base, key, seconds / turns)
        noop_rates.append(noop)
        event_rates.append(events)
        errors += event_errors
    return sum(noop_rates) / turns, sum(event_rates) / turns, errors


def _bundle_row(
    database: str, changes: float, pushes: int, errors: int, command: str
) -> Measurement:
    return Measurement(
        f"ingest: FHIR Bundles of {BUNDLE_CHANGES}, {database}",
        changes,
        "changes/s",
        goal=20_000,
        note=f"{pushes} concurrent pushes, {command}; {errors} errors "
        "(a push not answered 202, or one with changes already stored)",
    )

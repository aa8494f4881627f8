"""Matching: per-change cost of finding an event's endpoints as non-matching endpoints grow.

One organization (`target`) keeps 100 endpoints with mixed filters (exact, `prefix.*`, `*`,
account-limited, FHIR criteria, other types). The total grows (1k, 10k, 100k) with endpoints
that must not cost anything: 10 % in `target` subscribed to other types, the rest in other
organizations (100 each, the same mix). Each change is timed twice, in-process on SQLite:

- matching as the ingest path does it: `CANDIDATES.candidates_at` (cached per process,
  checked against the organization's `endpoints_version`) + `accepting_endpoints`. On the
  ingest path the version comes back with the event's INSERT; here it is read first, in the
  same transaction, and that read is timed on its own and given in the note;
- `insert_event_with_deliveries` in a transaction that is rolled back: the event's INSERT,
  matching and the deliveries' INSERT, all of it.
"""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime

from bench_env import Bench, sqlite_database
from bench_report import Measurement, median, percentile
from bench_seed import EndpointSpec, bench_engine, encounter, seed_endpoints

from app.domain import ids, matching
from app.domain.catalog import load_catalog
from app.domain.models import Event
from app.store import candidates, outbox
from app.store.db import SessionFactory, make_session_factory

TARGET = "target"
PER_ORGANIZATION = 100
CHANGE_TYPE = "encounter.updated"
OTHER_TYPES = ("observation.created", "patient.*", "records.sync.completed", "task.deleted")


def mixed_endpoint(number: int, organization: str, url: str) -> EndpointSpec:
    """The `number`th endpoint of the mix: 9 in 10 are candidates for an Encounter update."""
    kind = number % 10
    if kind in (0, 1, 2):
        return EndpointSpec(organization, url, (CHANGE_TYPE,))
    if kind in (3, 4):
        return EndpointSpec(organization, url, ("encounter.*", "patient.*"))
    if kind == 5:
        return EndpointSpec(organization, url, ("*",))
    if kind == 6:
        return EndpointSpec(organization, url, (CHANGE_TYPE,), account_id=f"acc-{number % 5}")
    if kind == 7:
        return EndpointSpec(organization, url, (CHANGE_TYPE,), filter="Encounter?status=finished")
    if kind == 8:
        criteria = f"Encounter?subject=Patient/pat-{number % 50}&class=AMB"
        return EndpointSpec(organization, url, ("encounter.*",), filter=criteria)
    return EndpointSpec(organization, url, ("patient_flow.completed",))


def layout(total: int, start: int, url: str) -> list[EndpointSpec]:
    """Endpoints number `start` to `total - 1` of the layout described above."""
    specs = []
    for number in range(start, total):
        if number < PER_ORGANIZATION:
            specs.append(mixed_endpoint(number, TARGET, url))
        elif number % 10 == 0:
            types = (OTHER_TYPES[number % len(OTHER_TYPES)],)
            specs.append(EndpointSpec(TARGET, url, types))
        else:
            organization = f"org-{number // PER_ORGANIZATION}"
            specs.append(mixed_endpoint(number, organization, url))
    return specs


def changes(count: int, rng: random.Random) -> list[Event]:
    """Encounter updates in `target`, with varied status, subject and account."""
    now = datetime.now(UTC)
    events = []
    for _ in range(count):
        status = rng.choice(("finished", "in-progress"))
        events.append(
            Event(
                id=ids.new_id("evt"),
                organization_id=TARGET,
                type=CHANGE_TYPE,
                occurred_at=now,
                data=encounter(rng.randrange(10_000), status),
                account_id=rng.choice((None, "acc-1", "acc-2")),
            )
        )
    return events


async def _time_matching(sessions: SessionFactory, events: list[Event]) -> dict[str, list[float]]:
    cache = matching.CriteriaCache()
    catalog = load_catalog(())
    timings: dict[str, list[float]] = {
        "version": [], "match": [], "insert": [], "candidates": [], "hits": []
    }  # fmt: skip
    for event in events:
        focus = outbox.focus_resource_of(event)
        async with sessions() as session:
            await session.connection()  # matching runs inside the transaction that stores
            started = time.perf_counter()
            version = await candidates.endpoints_version(session, TARGET)
            read = time.perf_counter()
            found = await candidates.CANDIDATES.candidates_at(session, TARGET, event.type, version)
            hits = matching.accepting_endpoints(found, event, focus, cache)
            timings["match"].append((time.perf_counter() - read) * 1000)
            timings["version"].append((read - started) * 1000)
            timings["candidates"].append(len(found))
            timings["hits"].append(len(hits))
            await session.rollback()
            transaction = await session.begin()
            started = time.perf_counter()
            await outbox.insert_event_with_deliveries(
                session,
                event,
                catalog=catalog,
                criteria_cache=cache,
                focus_resource=focus,
                now=event.occurred_at,
            )
            timings["insert"].append((time.perf_counter() - started) * 1000)
            await transaction.rollback()
    return timings


async def match(bench: Bench) -> list[Measurement]:
    """Per-change matching p99 at each total endpoint count."""
    database = await sqlite_database(bench.work / "matching.db")
    engine = bench_engine(database)
    sessions = make_session_factory(engine)
    url = "https://hooks.partner.example/tidings"
    rng = random.Random(7)
    rows: list[Measurement] = []
    seeded = 0
    first_p99: float | None = None
    for total in bench.sizes.matching_totals:
        await seed_endpoints(engine, layout(total, seeded, url))
        seeded = total
        events = changes(bench.sizes.matching_changes, rng)
        await _time_matching(sessions, events[:20])  # warm caches and the pool
        timings = await _time_matching(sessions, events)
        p99 = percentile(timings["match"], 0.99)
        first_p99 = first_p99 or p99
        note = (
            f"{median(timings['candidates']):.0f} candidates, {median(timings['hits']):.0f} "
            f"accept; p50 {median(timings['match']):.2f} ms; the version read (not on the "
            f"ingest path) p50 {median(timings['version']):.2f}, "
            f"p99 {percentile(timings['version'], 0.99):.2f} ms"
        )
        rows.append(
            Measurement(
                f"matching p99, {total:,} endpoints",
                p99,
                "ms/change",
                goal=1.0,
                higher_is_better=False,
                ratio=p99 / first_p99,
                ratio_of=f"{bench.sizes.matching_totals[0]:,}",
                note=note,
            )
        )
        rows.append(
            Measurement(
                f"insert_event_with_deliveries p99, {total:,}",
                percentile(timings["insert"], 0.99),
                "ms/change",
                higher_is_better=False,
                note="rolled back; includes the inserts",
            )
        )
    await engine.dispose()
    return rows

"""Benchmark rows: endpoints, events and pending deliveries written with bulk `INSERT`s through
SQLAlchemy Core on the app's own engine (WAL and foreign keys on SQLite), so seeding 1,000,000
deliveries takes seconds, not the API's hours; and the queue polls the benchmark waits on.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from bench_env import SECRET_KEY, Database
from sqlalchemy.ext.asyncio import AsyncEngine

from app.delivery import wakeups
from app.domain import ids, secrets
from app.domain.models import DeliveryStatus
from app.store.db import make_engine, make_session_factory, transaction
from app.store.ordered_queues import move_all_on
from app.store.tables import (
    DeliveryRow,
    EndpointEventType,
    EndpointRow,
    EndpointSecret,
    EventRow,
    Organization,
    new_version,
)
from app.store.types import UTCDateTime

CHUNK = 5000


def table(model: Any) -> sa.Table:
    """The Core table of a SQLModel class."""
    found: sa.Table = model.__table__
    return found


# -- seeding --------------------------------------------------------------------------------


@dataclass(frozen=True)
class EndpointSpec:
    """One endpoint to seed."""

    organization_id: str
    url: str
    event_types: tuple[str, ...]
    account_id: str | None = None
    filter: str | None = None
    ordered: bool = False


def encounter(number: int, status: str = "finished", account: str = "") -> dict[str, Any]:
    """A small FHIR Encounter, the event data of the delivery benchmarks (~400 bytes)."""
    return {
        "resourceType": "Encounter",
        "id": f"enc-{number}",
        "meta": {"versionId": "2", "lastUpdated": "2025-06-01T12:00:00Z"},
        "status": status,
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": f"Patient/pat-{number % 1000}"},
        "period": {"start": "2025-06-01T11:00:00Z", "end": "2025-06-01T12:00:00Z"},
        "serviceProvider": {"reference": f"Organization/{account or 'org-1'}"},
    }


def chunks(rows: Sequence[dict[str, Any]], size: int = CHUNK) -> Iterator[Sequence[dict[str, Any]]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


async def insert_rows(engine: AsyncEngine, model: Any, rows: Sequence[dict[str, Any]]) -> None:
    """Bulk insert, one transaction per chunk."""
    for chunk in chunks(rows):
        async with engine.begin() as connection:
            await connection.execute(sa.insert(table(model)), list(chunk))


async def ensure_organizations(engine: AsyncEngine, organization_ids: set[str]) -> None:
    async with engine.begin() as connection:
        known = set((await connection.execute(sa.select(table(Organization).c.id))).scalars())
    now = datetime.now(UTC)
    rows = [{"id": o, "name": o, "created_at": now} for o in sorted(organization_ids - known)]
    if rows:
        await insert_rows(engine, Organization, rows)


async def seed_endpoints(engine: AsyncEngine, specs: Sequence[EndpointSpec]) -> list[str]:
    """Endpoints with one live `whsec_` secret each and their event-type index rows; their ids."""
    await ensure_organizations(engine, {spec.organization_id for spec in specs})
    now = datetime.now(UTC)
    box = secrets.SecretBox(SECRET_KEY)
    secret = box.encrypt(secrets.generate_signing_secret())
    endpoint_ids = [ids.new_id("ep") for _ in specs]
    endpoints, patterns, signing = [], [], []
    for endpoint_id, spec in zip(endpoint_ids, specs, strict=True):
        endpoints.append(_endpoint_row(endpoint_id, spec, now))
        patterns += [
            {"endpoint_id": endpoint_id, "pattern": p, "organization_id": spec.organization_id}
            for p in spec.event_types
        ]
        signing.append(
            {
                "id": ids.new_id("sec"),
                "endpoint_id": endpoint_id,
                "secret": secret,
                "created_at": now,
                "expires_at": None,
            }
        )
    await insert_rows(engine, EndpointRow, endpoints)
    await insert_rows(engine, EndpointEventType, patterns)
    await insert_rows(engine, EndpointSecret, signing)
    async with engine.begin() as connection:  # as `endpoints.endpoints_changed` does
        organizations = table(Organization)
        await connection.execute(
            sa.update(organizations)
            .where(organizations.c.id.in_({spec.organization_id for spec in specs}))
            .values(endpoints_version=new_version())
        )
    return endpoint_ids


def _endpoint_row(endpoint_id: str, spec: EndpointSpec, now: datetime) -> dict[str, Any]:
    return {
        "id": endpoint_id,
        "organization_id": spec.organization_id,
        "account_id": spec.account_id,
        "url": spec.url,
        "url_credentials": None,
        "description": "",
        "filter": spec.filter,
        "event_types": list(spec.event_types),
        "payload_format": None,
        "content": "full-resource",
        "signature_scheme": "standard-webhooks",
        "signature_header": None,
        "headers": {},
        "active": True,
        "disabled_reason": None,
        "disabled_at": None,
        "timeout_seconds": None,
        "rate_limit": None,
        "ordered": spec.ordered,
        "metadata": {},
        "created_at": now,
        "updated_at": now,
        "deleted_at": None,
        "max_attempts": None,
        "fhir_version": None,
        "fhir_resource": None,
        "fhir_status": None,
        "fhirpath_criteria": None,
        "events_since_start": 0,
        "heartbeat_seconds": None,
        "last_notified_at": None,
    }


async def seed_deliveries(
    engine: AsyncEngine, organization_id: str, endpoint_ids: Sequence[str], count: int
) -> None:
    """`count` pending deliveries, due now: events of `encounter.updated`, one per endpoint each
    (round robin), so every endpoint gets count / len(endpoint_ids). Each event occurred a
    microsecond after the one before."""
    now = datetime.now(UTC)
    per_event = len(endpoint_ids)
    event_ids = [ids.new_id("evt") for _ in range(-(-count // per_event))]
    occurred = [now + timedelta(microseconds=number) for number in range(len(event_ids))]
    events = [
        {
            "id": event_id,
            "organization_id": organization_id,
            "account_id": None,
            "type": "encounter.updated",
            "occurred_at": occurred[number],
            "received_at": now,
            "focus": None,
            "data": encounter(number),
            "source": "bench",
            "idempotency_key": None,
            "change_key": None,
        }
        for number, event_id in enumerate(event_ids)
    ]
    await insert_rows(engine, EventRow, events)
    deliveries = [
        {
            "id": ids.new_id("dlv"),
            "event_id": event_ids[n // per_event],
            "endpoint_id": endpoint_ids[n % per_event],
            "organization_id": organization_id,
            "status": DeliveryStatus.PENDING.value,
            "attempt_count": 0,
            "next_attempt_at": now,
            "lease_expires_at": None,
            "occurred_at": occurred[n // per_event],
            "created_at": now,
            "updated_at": now,
            "event_number": None,
        }
        for n in range(count)
    ]
    await insert_rows(engine, DeliveryRow, deliveries)


HELD_FOR = timedelta(days=1)


async def hold_deliveries(engine: AsyncEngine) -> None:
    """Every delivery pending again but not due for a day, the attempt log empty: workers can
    start and settle on the held queue, then `release_deliveries` makes it due all at once. An
    ordered endpoint's deliveries wait for their turn, but for its first, due in a day. On
    PostgreSQL the tables are vacuumed too, so each run starts from the same state rather than
    from the dead rows of the runs before it (autovacuum may not have caught up yet)."""
    delivery, endpoint = table(DeliveryRow), table(EndpointRow)
    ordered = sa.select(endpoint.c.ordered).where(endpoint.c.id == delivery.c.endpoint_id)
    later = datetime.now(UTC) + HELD_FOR
    async with engine.begin() as connection:
        await connection.execute(sa.text("DELETE FROM attempt"))
        await connection.execute(
            sa.update(delivery).values(
                status=DeliveryStatus.PENDING.value,
                attempt_count=0,
                next_attempt_at=sa.case(
                    (ordered.scalar_subquery() == sa.true(), sa.null()),
                    else_=sa.bindparam("later", later, type_=UTCDateTime()),
                ),
                lease_expires_at=None,
            )
        )
    async with transaction(make_session_factory(engine)) as session:
        await move_all_on(session, later)
    if engine.dialect.name == "postgresql":
        async with engine.connect() as connection:
            autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
            await autocommit.execute(sa.text("VACUUM ANALYZE delivery, attempt"))


async def release_deliveries(
    engine: AsyncEngine, endpoint_ids: Sequence[str] | None = None
) -> None:
    """Every pending delivery (to `endpoint_ids`, when given) due now. On PostgreSQL the
    workers' NOTIFY channel wakes them at the commit, as `POST /v1/events` does; on SQLite the
    worker sees it at its next poll."""
    delivery = table(DeliveryRow)
    release = sa.update(delivery).where(
        delivery.c.status == DeliveryStatus.PENDING.value, delivery.c.next_attempt_at.is_not(None)
    )
    if endpoint_ids is not None:
        release = release.where(delivery.c.endpoint_id.in_(endpoint_ids))
    async with engine.begin() as connection:
        await connection.execute(release.values(next_attempt_at=datetime.now(UTC)))
        if engine.dialect.name == "postgresql":
            await connection.execute(sa.text(f"NOTIFY {wakeups.CHANNEL}"))


async def count_by_status(engine: AsyncEngine, status: DeliveryStatus) -> int:
    delivery = table(DeliveryRow)
    query = sa.select(sa.func.count()).where(delivery.c.status == status.value)
    async with engine.connect() as connection:
        return int((await connection.execute(query)).scalar_one())


async def wait_succeeded(
    engine: AsyncEngine,
    count: int,
    *,
    since: float,
    cap: float,
    processes: Sequence[subprocess.Popen[bytes]],
) -> tuple[float, int]:
    """Until `count` deliveries succeeded or `cap` seconds after `since` (wall clock) passed:
    (when it was seen, how many had succeeded).

    Raises RuntimeError when one of `processes` (the workers) exits meanwhile.
    """
    while True:
        if any(process.poll() is not None for process in processes):
            raise RuntimeError(f"a worker exited: {processes[0].args!r}")
        done = await count_by_status(engine, DeliveryStatus.SUCCEEDED)
        if done >= count or time.time() >= since + cap:
            return time.time(), done
        await asyncio.sleep(0.05)


def bench_engine(database: Database) -> AsyncEngine:
    """An engine of the app's own kind for seeding and polling."""
    return make_engine(database.url)


def peak_rss_mb(pid: int) -> float | None:
    """VmHWM (peak resident set) of a live process, in MB (Linux)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None

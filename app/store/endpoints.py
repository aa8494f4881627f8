"""Endpoints, their signing secrets and their event-type index."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.domain import ids
from app.domain.models import ContentLevel, Endpoint, PayloadFormat, SignatureScheme
from app.store.db import execute_core
from app.store.tables import (
    EndpointEventType,
    EndpointRow,
    EndpointSecret,
    Organization,
    new_version,
)


@dataclass(frozen=True)
class Scope:
    """Whose objects a query may see: one organization (and account), or all for admins."""

    organization_id: str | None
    account_id: str | None = None


@dataclass(frozen=True)
class StoredSecret:
    """An endpoint's secret, still encrypted, with its expiry during rotation."""

    id: str
    ciphertext: str
    created_at: datetime
    expires_at: datetime | None


# The endpoint columns for Core queries, labelled like the ORM attributes, so `to_endpoint`
# reads both: Core rows skip the ORM's per-object bookkeeping on hot paths (matching, claims).
ENDPOINT_COLUMNS = tuple(
    column.label("metadata_") if column.name == "metadata" else column
    for column in EndpointRow.__table__.columns  # type: ignore[attr-defined]
)


def to_endpoint(row: Any) -> Endpoint:
    """The domain view of an endpoint row (an ORM object or a Core row of ENDPOINT_COLUMNS)."""
    return Endpoint(
        id=row.id,
        organization_id=row.organization_id,
        account_id=row.account_id,
        url=row.url,
        event_types=tuple(row.event_types),
        filter=row.filter,
        payload_format=PayloadFormat(row.payload_format) if row.payload_format else None,
        content=ContentLevel(row.content),
        signature_scheme=SignatureScheme(row.signature_scheme),
        signature_header=row.signature_header,
        headers=dict(row.headers),
        active=row.active,
        timeout_seconds=row.timeout_seconds,
        rate_limit=row.rate_limit,
        ordered=row.ordered,
        max_attempts=row.max_attempts,
        fhir_version=row.fhir_version,
        fhirpath_criteria=row.fhirpath_criteria,
        description=row.description,
        metadata=dict(row.metadata_),
        has_credentials=row.url_credentials is not None,
        disabled_reason=row.disabled_reason,
        disabled_at=row.disabled_at,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


async def insert_endpoint(
    session: AsyncSession, values: dict[str, Any], secret_ciphertext: str, now: datetime
) -> Endpoint:
    """Store a new endpoint with its first secret and its event-type index rows."""
    row = EndpointRow(id=ids.new_id("ep"), created_at=now, updated_at=now, **values)
    session.add(row)
    await session.flush()
    session.add(
        EndpointSecret(
            id=ids.new_id("sec"), endpoint_id=row.id, secret=secret_ciphertext, created_at=now
        )
    )
    _add_patterns(session, row)
    await session.flush()
    await endpoints_changed(session, row.organization_id)
    return to_endpoint(row)


async def endpoints_changed(session: AsyncSession, organization_id: str) -> None:
    """Give the organization a new `endpoints_version`, in the transaction of the change, so
    every process's cached view of its endpoints (store/candidates.py) is read again.

    Every change to an endpoint that matching reads goes through this module and calls this.
    """
    await session.exec(
        sa.update(Organization)
        .where(col(Organization.id) == organization_id)
        .values(endpoints_version=new_version())
    )


async def select_endpoint_row(
    session: AsyncSession, scope: Scope, endpoint_id: str, *, for_update: bool = False
) -> EndpointRow | None:
    """The live endpoint with this id inside the scope, or None (also for other tenants)."""
    if not ids.looks_like_id(endpoint_id, "ep"):
        return None
    query = _scoped(select(EndpointRow), scope).where(EndpointRow.id == endpoint_id)
    if for_update:
        query = query.with_for_update()
    row: EndpointRow | None = (await session.exec(query)).first()
    return row


async def select_endpoint(session: AsyncSession, scope: Scope, endpoint_id: str) -> Endpoint | None:
    """The domain view of one endpoint inside the scope."""
    row = await select_endpoint_row(session, scope, endpoint_id)
    return to_endpoint(row) if row else None


async def select_endpoints_page(
    session: AsyncSession, scope: Scope, *, after: tuple[datetime, str] | None, limit: int
) -> list[Endpoint]:
    """A page of endpoints ordered by (created_at, id), starting after the given key."""
    query = _scoped(select(EndpointRow), scope)
    if after is not None:
        created, last_id = after
        query = query.where(
            sa.or_(
                col(EndpointRow.created_at) > created,
                sa.and_(col(EndpointRow.created_at) == created, col(EndpointRow.id) > last_id),
            )
        )
    query = query.order_by(col(EndpointRow.created_at), col(EndpointRow.id)).limit(limit)
    return [to_endpoint(row) for row in (await session.exec(query)).all()]


async def update_endpoint(
    session: AsyncSession, row: EndpointRow, changes: dict[str, Any], now: datetime
) -> Endpoint:
    """Apply changes to a loaded endpoint row; keep the event-type index in step."""
    for name, value in changes.items():
        setattr(row, name, value)
    row.updated_at = now
    session.add(row)
    if "event_types" in changes:
        await session.exec(
            sa.delete(EndpointEventType).where(col(EndpointEventType.endpoint_id) == row.id)
        )
        _add_patterns(session, row)
    await session.flush()
    await endpoints_changed(session, row.organization_id)
    return to_endpoint(row)


async def delete_endpoint(session: AsyncSession, row: EndpointRow, now: datetime) -> None:
    """Soft-delete: the endpoint disappears from the API and matching; its log stays."""
    row.deleted_at = now
    row.active = False
    row.updated_at = now
    session.add(row)
    await session.exec(
        sa.delete(EndpointEventType).where(col(EndpointEventType.endpoint_id) == row.id)
    )
    await session.flush()
    await endpoints_changed(session, row.organization_id)


def secret_is_live(now: Any) -> Any:
    """The condition on a secret that still signs at `now` (a moment or a bind parameter)."""
    return sa.or_(col(EndpointSecret.expires_at).is_(None), col(EndpointSecret.expires_at) > now)


NEWEST_SECRET_FIRST = (col(EndpointSecret.created_at).desc(), col(EndpointSecret.id).desc())


async def select_live_secrets(
    session: AsyncSession, endpoint_id: str, now: datetime
) -> list[StoredSecret]:
    """The endpoint's secrets that still sign, newest first."""
    query = (
        select(EndpointSecret)
        .where(EndpointSecret.endpoint_id == endpoint_id, secret_is_live(now))
        .order_by(*NEWEST_SECRET_FIRST)
    )
    rows = (await session.exec(query)).all()
    return [StoredSecret(r.id, r.secret, r.created_at, r.expires_at) for r in rows]


async def rotate_secret(
    session: AsyncSession,
    endpoint_id: str,
    new_ciphertext: str,
    *,
    now: datetime,
    old_expires_at: datetime,
) -> None:
    """Add a new current secret; every secret still live expires at `old_expires_at` at latest."""
    for secret in await select_live_secrets(session, endpoint_id, now):
        row = await session.get(EndpointSecret, secret.id)
        assert row is not None
        if row.expires_at is None or row.expires_at > old_expires_at:
            row.expires_at = old_expires_at
            session.add(row)
    session.add(
        EndpointSecret(
            id=ids.new_id("sec"), endpoint_id=endpoint_id, secret=new_ciphertext, created_at=now
        )
    )
    await session.flush()


def _scoped(query: Any, scope: Scope) -> Any:
    query = query.where(col(EndpointRow.deleted_at).is_(None))
    if scope.organization_id is not None:
        query = query.where(EndpointRow.organization_id == scope.organization_id)
    if scope.account_id is not None:
        query = query.where(EndpointRow.account_id == scope.account_id)
    return query


def _add_patterns(session: AsyncSession, row: EndpointRow) -> None:
    for pattern in dict.fromkeys(row.event_types):
        session.add(
            EndpointEventType(
                endpoint_id=row.id, pattern=pattern, organization_id=row.organization_id
            )
        )


async def disable_endpoint(
    session: AsyncSession, endpoint_id: str, reason: str, now: datetime
) -> bool:
    """Disable an active endpoint; False if it was already disabled or is gone."""
    result = await session.exec(
        sa.update(EndpointRow)
        .where(
            col(EndpointRow.id) == endpoint_id,
            col(EndpointRow.active).is_(True),
            col(EndpointRow.deleted_at).is_(None),
        )
        .values(active=False, disabled_reason=reason, disabled_at=now, updated_at=now)
        .returning(col(EndpointRow.organization_id))
    )
    return await _changed(session, result.scalars().all())


async def enable_endpoint(session: AsyncSession, endpoint_id: str, now: datetime) -> bool:
    """Enable a disabled endpoint; False if it was already active or is gone."""
    result = await session.exec(
        sa.update(EndpointRow)
        .where(
            col(EndpointRow.id) == endpoint_id,
            col(EndpointRow.active).is_(False),
            col(EndpointRow.deleted_at).is_(None),
        )
        .values(active=True, disabled_reason=None, disabled_at=None, updated_at=now)
        .returning(col(EndpointRow.organization_id))
    )
    return await _changed(session, result.scalars().all())


async def _changed(session: AsyncSession, organization_ids: Sequence[str]) -> bool:
    """After an UPDATE … RETURNING organization_id: bump each organization touched; whether
    any row changed."""
    for organization_id in set(organization_ids):
        await endpoints_changed(session, organization_id)
    return bool(organization_ids)


async def lock_endpoint(session: AsyncSession, scope: Scope, endpoint_id: str) -> None:
    """Lock the endpoint's row until the transaction ends (PostgreSQL: FOR UPDATE), before a
    change of its `ordered` flag: storing a delivery to it waits meanwhile (`ordered_among`).
    """
    query = sa.select(col(EndpointRow.id)).where(col(EndpointRow.id) == endpoint_id)
    await session.exec(_scoped(query, scope).with_for_update())


async def ordered_among(session: AsyncSession, endpoint_ids: Collection[str]) -> set[str]:
    """Which of the endpoints are ordered now, as deliveries to them are about to be stored.

    On PostgreSQL the rows are read under a FOR KEY SHARE lock, the one the deliveries'
    foreign key takes anyway. A change of `ordered` locks the endpoint FOR UPDATE first
    (`lock_endpoint`), so the two wait for each other: the deliveries are stored held
    exactly when the endpoint is ordered, and the change then holds or releases them.
    """
    if not endpoint_ids:
        return set()
    result = await execute_core(session, _ORDERED_AMONG, {"ids": list(endpoint_ids)})
    return {endpoint_id for endpoint_id, ordered in result.all() if ordered}


# Every row is locked, ordered or not (a row the WHERE left out would not be), and read as the
# change that held the lock left it.
_ORDERED_AMONG = (
    sa.select(col(EndpointRow.id), col(EndpointRow.ordered))
    .where(col(EndpointRow.id).in_(sa.bindparam("ids", expanding=True)))
    .with_for_update(read=True, key_share=True)
)

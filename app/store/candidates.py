"""Which endpoints may receive an organization's events of one type: read through the
(organization, pattern) index, and cached per process.

Every change to an organization's endpoints gives it a new random `endpoints_version` in the
same transaction (`endpoints.endpoints_changed`). A cached list is used only while the version
it was read with is still the organization's, so a cache hit costs one primary-key read (on
the ingest path none of its own: the event INSERT returns the version, `endpoints_version_of`)
and is never stale, whichever process made the change. The version is random rather than a
counter: no cache can mistake one database (or a database recreated from scratch) for another.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.domain import matching
from app.domain.models import Endpoint
from app.store.db import execute_core
from app.store.endpoints import ENDPOINT_COLUMNS, to_endpoint
from app.store.tables import EndpointEventType, EndpointRow, Organization


async def select_candidate_endpoints(
    session: AsyncSession, organization_id: str, event_type: str
) -> list[Endpoint]:
    """The organization's live endpoints whose `event_types` name `event_type` or a pattern of it.

    One query through the (organization, pattern) index: endpoints that subscribe to other
    types, and other organizations' endpoints, are never read.
    """
    subscribed = (
        select(EndpointEventType.endpoint_id)
        .where(EndpointEventType.organization_id == organization_id)
        .where(col(EndpointEventType.pattern).in_(matching.subscription_patterns(event_type)))
    )
    query = (
        sa.select(*ENDPOINT_COLUMNS)
        .where(col(EndpointRow.id).in_(subscribed))
        .where(col(EndpointRow.organization_id) == organization_id)
        .where(col(EndpointRow.active).is_(True))
        .where(col(EndpointRow.deleted_at).is_(None))
        .order_by(col(EndpointRow.id))
    )
    rows = (await session.exec(query)).all()  # type: ignore[call-overload]
    return [to_endpoint(row) for row in rows]


_VERSION_QUERY = sa.select(col(Organization.endpoints_version)).where(
    col(Organization.id) == sa.bindparam("organization_id")
)


def endpoints_version_of(organization_id: sa.Column[Any]) -> Any:
    """The `endpoints_version` of the organization that `organization_id` (a column of the
    row being inserted) names, as a scalar subquery for the INSERT's RETURNING: the event
    INSERT returns it with each new row, and matching needs no statement of its own.
    Spelled out because SQLAlchemy does not correlate a subquery in RETURNING to the
    inserted table (it would add that table to the subquery's FROM)."""
    organizations = Organization.__table__  # type: ignore[attr-defined]
    return sa.literal_column(
        f"(SELECT {organizations.name}.{organizations.c.endpoints_version.name}"
        f" FROM {organizations.name}"
        f" WHERE {organizations.name}.{organizations.c.id.name}"
        f" = {organization_id.table.name}.{organization_id.name})",
        type_=sa.String(),
    )


async def endpoints_version(session: AsyncSession, organization_id: str) -> str | None:
    """The organization's current `endpoints_version` (None when there is no such
    organization, and so no endpoints), read on its own (see `endpoints_version_of`)."""
    result = await execute_core(session, _VERSION_QUERY, {"organization_id": organization_id})
    version: str | None = result.scalar_one_or_none()
    return version


class CandidateCache:
    """Candidate endpoints by (organization, event type), least recently used evicted."""

    def __init__(self, max_entries: int = 4096) -> None:
        self._max_entries = max_entries
        self._entries: OrderedDict[tuple[str, str], tuple[str, tuple[Endpoint, ...]]] = (
            OrderedDict()
        )

    async def candidates_at(
        self, session: AsyncSession, organization_id: str, event_type: str, version: str | None
    ) -> tuple[Endpoint, ...]:
        """What `select_candidate_endpoints` would return, as seen by this transaction, given
        the organization's `endpoints_version` as this transaction read it (the event INSERT
        returns it, `endpoints_version_of`; elsewhere `endpoints_version` reads it)."""
        if version is None:
            return ()
        key = (organization_id, event_type)
        cached = self._entries.get(key)
        if cached is not None and cached[0] == version:
            self._entries.move_to_end(key)
            return cached[1]
        found = tuple(await select_candidate_endpoints(session, organization_id, event_type))
        self._entries[key] = (version, found)
        self._entries.move_to_end(key)
        if len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
        return found


# One per process: every session of the process may use it, since each lookup is checked
# against the version its own transaction sees.
CANDIDATES = CandidateCache()

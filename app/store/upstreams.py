"""Upstream FHIR servers: registration, the poll schedule, and the cursor.

A poller claims an upstream by moving its `next_poll_at` forward by a lease in one conditional
UPDATE, so two worker processes never poll the same server at once (and a crashed poller's
claim runs out). The cursor moves only inside the transaction that stores the events it
covers, and never backwards.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.domain import ids
from app.store.tables import UpstreamServer


async def insert_upstream(
    session: AsyncSession,
    *,
    organization_id: str,
    base_url: str,
    auth_kind: str,
    auth_secret: str | None,
    poll_seconds: int,
    cursor: str | None,
    now: datetime,
) -> UpstreamServer:
    """Register an upstream, due for its first poll now."""
    row = UpstreamServer(
        id=ids.new_id("ups"),
        organization_id=organization_id,
        base_url=base_url,
        auth_kind=auth_kind,
        auth_secret=auth_secret,
        poll_seconds=poll_seconds,
        cursor=cursor,
        next_poll_at=now,
        created_at=now,
    )
    session.add(row)
    await session.flush()
    return row


async def select_upstreams(session: AsyncSession) -> list[UpstreamServer]:
    """Every registered upstream, oldest first."""
    query = select(UpstreamServer).order_by(col(UpstreamServer.created_at), col(UpstreamServer.id))
    return list((await session.exec(query)).all())


async def select_upstream(
    session: AsyncSession, upstream_id: str, *, for_update: bool = False
) -> UpstreamServer | None:
    """One upstream by id."""
    query = select(UpstreamServer).where(UpstreamServer.id == upstream_id)
    if for_update:
        query = query.with_for_update()
    return (await session.exec(query)).first()


async def delete_upstream(session: AsyncSession, upstream_id: str) -> bool:
    """Forget an upstream (its events stay); False when there was none."""
    result = await session.exec(
        sa.delete(UpstreamServer).where(col(UpstreamServer.id) == upstream_id)
    )
    return bool(result.rowcount)


async def select_due_upstream_ids(session: AsyncSession, now: datetime, limit: int) -> list[str]:
    """Active upstreams whose next poll is due, most overdue first."""
    query = (
        select(UpstreamServer.id)
        .where(col(UpstreamServer.active).is_(True))
        .where(col(UpstreamServer.next_poll_at) <= now)
        .order_by(col(UpstreamServer.next_poll_at), col(UpstreamServer.id))
        .limit(limit)
    )
    return list((await session.exec(query)).all())


async def claim_upstream(
    session: AsyncSession, upstream_id: str, *, now: datetime, lease_until: datetime
) -> UpstreamServer | None:
    """Take the upstream for one poll if it is still due; None when another poller has it."""
    claimed = await session.exec(
        sa.update(UpstreamServer)
        .where(col(UpstreamServer.id) == upstream_id)
        .where(col(UpstreamServer.active).is_(True))
        .where(col(UpstreamServer.next_poll_at) <= now)
        .values(next_poll_at=lease_until)
    )
    if not claimed.rowcount:
        return None
    return await select_upstream(session, upstream_id)


async def record_poll_success(
    session: AsyncSession,
    upstream_id: str,
    *,
    cursor: str | None,
    polled_from: str | None,
    now: datetime,
    next_poll_at: datetime,
) -> None:
    """A finished poll that read from the cursor `polled_from`: the new cursor (if given), no
    error, the next poll time. The cursor moves only if it is still `polled_from`: a poll that
    outlived its lease finds another poller's newer cursor there, and leaves it."""
    row = await select_upstream(session, upstream_id, for_update=True)
    if row is None:
        return  # deleted while it was being polled; its events are stored all the same
    if cursor is not None and row.cursor == polled_from:
        row.cursor = cursor
    row.last_polled_at, row.last_error, row.failures = now, None, 0
    row.next_poll_at = next_poll_at
    session.add(row)
    await session.flush()


async def record_poll_failure(
    session: AsyncSession,
    upstream_id: str,
    *,
    error: str,
    failures: int,
    now: datetime,
    next_poll_at: datetime,
) -> None:
    """A failed poll: the error, the failure count, the (backed-off) next poll time."""
    await session.exec(
        sa.update(UpstreamServer)
        .where(col(UpstreamServer.id) == upstream_id)
        .values(
            last_polled_at=now,
            last_error=error[:1000],
            failures=failures,
            next_poll_at=next_poll_at,
        )
    )

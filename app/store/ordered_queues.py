"""The queues of ordered endpoints: one delivery scheduled at a time, in the order of the events.

A delivery to an ordered endpoint is stored *held*: pending, with no `next_attempt_at`, and so
in no due walk. The endpoint's queue *moves on* when nothing of it is scheduled (due, waiting
for a retry, or in flight): its earliest held delivery (by `occurred_at`, then id) becomes due.
That happens in the transaction that makes the endpoint idle or gives it work, never in a claim:

- storing deliveries held to it (`outbox`), which moves an idle endpoint's queue on at once;
- recording a delivery's final outcome (the worker), which moves its endpoint's queue on;
- switching `ordered` on, and recovering failures, which hold deliveries.

So what moving on costs grows with the endpoints that change, not with the number of ordered
endpoints: a claim, which once moved every ordered endpoint's queue on, does nothing for them.
Each of these reads the flags under a lock that a change of `ordered` waits for, and marks the
ordered endpoints; their queues move on together at the end of the transaction (`flush`).
`move_all_on` does it for every ordered endpoint, when a worker starts and once a minute after
(`maintenance.move_ordered_queues_on`): for the queues that an earlier version left held.

Moving on is at most three statements. On PostgreSQL the endpoints' queues are locked first
(their rows of `ordered_queue`, made as needed, in id order), so that two transactions cannot
each schedule a different delivery of one endpoint: the second waits, and then, in a snapshot
taken after the first committed, finds a delivery scheduled. The heads are read next, then
updated by id. (One UPDATE with the lookup inside left the plan to statistics, which may
predate the queue.)
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlmodel.ext.asyncio.session import AsyncSession

from app.domain.models import DeliveryStatus
from app.store.db import before_commit, execute_core, fetch_all
from app.store.tables import DeliveryRow, EndpointRow, OrderedQueueRow
from app.store.types import UTCDateTime

_delivery: sa.Table = DeliveryRow.__table__  # type: ignore[attr-defined]
_endpoint: sa.Table = EndpointRow.__table__  # type: ignore[attr-defined]
_PENDING = DeliveryStatus.PENDING.value


async def move_on(session: AsyncSession, endpoint_ids: Collection[str], now: datetime) -> None:
    """Move on the queues of the ordered endpoints `endpoint_ids` at the end of the session's
    transaction (`flush`): where none of an endpoint's deliveries is scheduled then, its
    earliest held one becomes due. The caller has read that they are ordered under a lock that
    keeps the flag from changing until it commits (`endpoints.ordered_among`, or its own FOR
    UPDATE)."""
    if not endpoint_ids:
        return
    marked = session.info.setdefault(_MARKED, _Marked())
    marked.endpoint_ids.update(endpoint_ids)
    marked.now = max(marked.now or now, now)
    before_commit(session, _MARKED, flush)


async def flush(session: AsyncSession) -> None:
    """Move on now the queues `move_on` marked in this transaction (which `db.transaction` does
    just before it commits), all locked at once, in id order: a transaction that locked one
    queue and then another, in separate statements, could deadlock with one that locked the
    same two in id order."""
    marked = session.info.pop(_MARKED, None)
    if marked is not None and marked.now is not None:
        await _move_on(session, marked.endpoint_ids, marked.now, skip_locked=False)


@dataclass
class _Marked:
    endpoint_ids: set[str] = field(default_factory=set)
    now: datetime | None = None


_MARKED = "tidings.ordered_queues"


async def move_all_on(session: AsyncSession, now: datetime) -> None:
    """`move_on` for every active ordered endpoint, now, skipping those another transaction
    holds (it is moving them on)."""
    ordered = [endpoint_id for (endpoint_id,) in await fetch_all(session, _ACTIVE_ORDERED)]
    await _move_on(session, ordered, now, skip_locked=True)


async def _move_on(
    session: AsyncSession, endpoint_ids: Collection[str], now: datetime, *, skip_locked: bool
) -> None:
    """Lock the endpoints' queues, then make due the earliest held delivery of each that has
    none scheduled."""
    if not endpoint_ids:
        return
    locked = await _lock_queues(session, sorted(endpoint_ids), skip_locked=skip_locked)
    if not locked:
        return
    found = await fetch_all(session, _NEXT_IN_ORDER, {"endpoints": locked})
    heads = [head for (head,) in found if head is not None]
    if heads:
        await execute_core(session, _SCHEDULE_HELD, {"ids": heads, "now": now})


async def _lock_queues(session: AsyncSession, wanted: list[str], *, skip_locked: bool) -> list[str]:
    """Lock the queues of the endpoints `wanted` (in id order), making their rows of
    `ordered_queue` as needed; those locked. Not the endpoints' own rows: a transaction that
    changes an endpoint locks its row first, and may then store events that move other queues
    on.

    On PostgreSQL, one statement waits for other holders, in id order: an INSERT that updates
    the row it finds, and so locks it. Skipping the queues others hold takes two. On SQLite,
    where one transaction writes at a time, nothing needs locking."""
    if session.get_bind().dialect.name != "postgresql":
        return wanted
    if skip_locked:
        await execute_core(session, _ADD_QUEUES, {"ids": wanted})
    locking = _LOCK_FREE_QUEUES if skip_locked else _TAKE_QUEUES
    return [endpoint_id for (endpoint_id,) in await fetch_all(session, locking, {"ids": wanted})]


_queue: sa.Table = OrderedQueueRow.__table__  # type: ignore[attr-defined]
_ACTIVE_ORDERED = sa.select(_endpoint.c.id).where(
    _endpoint.c.ordered == sa.true(), _endpoint.c.active == sa.true()
)
# PostgreSQL: the endpoints in `:ids`, an array, in its order.
_IDS = sa.bindparam("ids", type_=postgresql.ARRAY(sa.String()))
_WANTED = sa.select(sa.func.unnest(_IDS).label("endpoint_id"))
_ADD_QUEUES = (
    postgresql.insert(_queue).from_select(["endpoint_id"], _WANTED).on_conflict_do_nothing()
)


def _take_queues() -> Any:
    insert = postgresql.insert(_queue).from_select(["endpoint_id"], _WANTED)
    return insert.on_conflict_do_update(
        index_elements=[_queue.c.endpoint_id],
        set_={"endpoint_id": insert.excluded.endpoint_id},
    ).returning(_queue.c.endpoint_id)


_TAKE_QUEUES = _take_queues()
_LOCK_FREE_QUEUES = (
    sa.select(_queue.c.endpoint_id)
    .where(_queue.c.endpoint_id == sa.any_(_IDS))
    .order_by(_queue.c.endpoint_id)
    .with_for_update(skip_locked=True)
)


def held(table: sa.FromClause) -> tuple[Any, ...]:
    """The rows of `table` (the deliveries) that are held: `tables.HELD`, the predicate of
    `ix_delivery_held`, as SQLite needs it to use that index (a literal, not a parameter)."""
    return (
        table.c.status == sa.literal_column(f"'{_PENDING}'"),
        table.c.next_attempt_at.is_(None),
    )


def scheduled(table: sa.FromClause) -> Any:
    """The rows of `table` (the deliveries) that are scheduled: `tables.SCHEDULED`, the
    predicate of `ix_delivery_scheduled`. Nothing else may serve this lookup, whatever the
    statistics say: `ix_delivery_due` needs a status, which finished deliveries never match
    here anyway."""
    return table.c.next_attempt_at.is_not(None)


def _next_in_order() -> Any:
    """The held delivery each of the endpoints in `:endpoints` is to send next, where none of
    its deliveries is scheduled (None where it has none held)."""
    held_ = _delivery.alias("held")
    live = _delivery.alias("live")
    head = (
        sa.select(held_.c.id)
        .where(held_.c.endpoint_id == _endpoint.c.id, *held(held_))
        .order_by(held_.c.occurred_at, held_.c.id)
        .limit(1)
        .correlate(_endpoint)
        .scalar_subquery()
    )
    # NOT EXISTS, not a subquery with LIMIT 1: given a LIMIT, PostgreSQL may expect a scan of
    # the table to find a row soon, and scan all of it when there is none.
    busy = sa.exists().where(live.c.endpoint_id == _endpoint.c.id, scheduled(live))
    return sa.select(head).where(
        _endpoint.c.id.in_(sa.bindparam("endpoints", expanding=True)), sa.not_(busy)
    )


_NEXT_IN_ORDER = _next_in_order()
_SCHEDULE_HELD = (
    sa.update(_delivery)
    .where(_delivery.c.id.in_(sa.bindparam("ids", expanding=True)), *held(_delivery))
    .values(
        next_attempt_at=sa.bindparam("now", type_=UTCDateTime()),
        updated_at=sa.bindparam("now", type_=UTCDateTime()),
    )
)

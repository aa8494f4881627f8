"""Timed work the scheduler runs: auto-disable of endpoints that only fail, and a check of the
ordered endpoints' queues."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from app.delivery import operational
from app.domain.catalog import Catalog
from app.domain.retry import should_disable
from app.store import deliveries, ordered_queues
from app.store.db import SessionFactory, transaction

log = logging.getLogger("tidings.maintenance")


async def disable_failing_endpoints(
    sessions: SessionFactory, *, catalog: Catalog, now: datetime, disable_after: int
) -> list[str]:
    """Disable every endpoint whose attempts have all failed for `disable_after` seconds."""
    disabled: list[str] = []
    async with transaction(sessions) as session:
        cutoff = now - timedelta(seconds=disable_after)
        for (
            organization_id,
            endpoint_id,
            first_failure,
        ) in await deliveries.select_failing_endpoints(session, cutoff=cutoff):
            if not should_disable(first_failure, None, now, disable_after):
                continue
            reason = f"every attempt failed since {first_failure.isoformat()}"
            if await operational.disable_endpoint(
                session, organization_id, endpoint_id, reason, catalog=catalog, now=now
            ):
                log.warning("disabled endpoint %s: %s", endpoint_id, reason)
                disabled.append(endpoint_id)
    return disabled


async def move_ordered_queues_on(sessions: SessionFactory, *, now: datetime) -> None:
    """Move on the queue of every ordered endpoint that has nothing scheduled. The transactions
    that change a queue move it on themselves (`ordered_queues`); this finds the queues an
    earlier version of Tidings left held (it moved them on in each claim), and any that
    something unforeseen left so."""
    async with transaction(sessions) as session:
        await ordered_queues.move_all_on(session, now)

"""Tidings' own events: `delivery.failed`, `endpoint.disabled`, `endpoint.enabled`.

They go through the same outbox as every other event, so they are durable and are sent to the
organization's endpoints that subscribe to them, with the same retries and signatures.
"""

from __future__ import annotations

from datetime import datetime

from sqlmodel.ext.asyncio.session import AsyncSession

from app.delivery import notifications
from app.domain.catalog import Catalog
from app.domain.matching import OPERATIONAL_EVENT_TYPES
from app.domain.retry import Verdict
from app.store import endpoints, outbox, subscriptions
from app.store.deliveries import AttemptRecord, ClaimedDelivery

# The verdicts that end a delivery in failure, reported as `delivery.failed`.
REPORTED = frozenset({Verdict.FAILED, Verdict.ABORTED, Verdict.DISABLE_ENDPOINT})


async def after_attempt(
    session: AsyncSession,
    claimed: ClaimedDelivery,
    record: AttemptRecord,
    verdict: Verdict,
    *,
    catalog: Catalog,
    now: datetime,
    report: bool = True,
) -> None:
    """Raise the operational events an attempt's verdict calls for; move Subscription status.

    `report=False` (the attempt's claim had lost its lease, so the delivery is another
    claim's now) leaves out `delivery.failed`: the delivery has not ended.
    """
    await notifications.after_attempt(session, claimed, record, verdict, now)
    if verdict is Verdict.DISABLE_ENDPOINT:
        reason = f"the endpoint answered {record.outcome.result} (410 Gone)"
        await disable_endpoint(
            session,
            claimed.endpoint.organization_id,
            claimed.endpoint.id,
            reason,
            catalog=catalog,
            now=now,
        )
    if report and verdict in REPORTED and claimed.event.type not in OPERATIONAL_EVENT_TYPES:
        await outbox.insert_operational_event(
            session,
            claimed.endpoint.organization_id,
            "delivery.failed",
            {
                "delivery_id": claimed.id,
                "endpoint_id": claimed.endpoint.id,
                "event_id": claimed.event.id,
                "event_type": claimed.event.type,
                "attempts": claimed.attempt_count + 1,
            },
            catalog=catalog,
            now=now,
        )


async def disable_endpoint(
    session: AsyncSession,
    organization_id: str,
    endpoint_id: str,
    reason: str,
    *,
    catalog: Catalog,
    now: datetime,
) -> bool:
    """Disable a live endpoint and tell the organization; False if it was not active."""
    if not await endpoints.disable_endpoint(session, endpoint_id, reason, now):
        return False
    await subscriptions.mark_off(session, endpoint_id, reason, now)
    await outbox.insert_operational_event(
        session,
        organization_id,
        "endpoint.disabled",
        {
            "endpoint_id": endpoint_id,
            "reason": reason,
            "disabled_at": now.isoformat(),
        },
        catalog=catalog,
        now=now,
    )
    return True

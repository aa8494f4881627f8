"""The FHIRPath criteria of FHIR Subscriptions (Medplum's fhir-path-criteria-expression).

Endpoint matching (`app.domain.matching`) checks tenant, event type and search criteria; a
Subscription may add a FHIRPath expression over `%current` and `%previous`. `%previous` is the
version of the resource Tidings stored last before this one (the resource's earlier event), so
"status became finished" works across pushes; it is empty when Tidings never saw one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.domain.models import Event, JSONObject
from app.fhir.fhirpath import FhirPathError, compile_expression
from app.store.tables import EndpointRow, EventRow

_PREVIOUS_CANDIDATES = 10


async def keep_fhirpath_matches(
    session: AsyncSession,
    event: Event,
    focus_resource: JSONObject | None,
    endpoint_ids: Sequence[str],
) -> list[str]:
    """`endpoint_ids` without the Subscriptions whose FHIRPath criteria do not hold."""
    if not endpoint_ids:
        return []
    rows = (
        await session.exec(
            select(EndpointRow.id, EndpointRow.fhirpath_criteria)
            .where(col(EndpointRow.id).in_(list(endpoint_ids)))
            .where(col(EndpointRow.fhirpath_criteria).is_not(None))
        )
    ).all()
    if not rows:
        return list(endpoint_ids)
    previous = await _previous_version(session, event, focus_resource)
    refused = {
        endpoint_id
        for endpoint_id, text in rows
        if text is not None and not _holds(text, focus_resource, previous)
    }
    return [endpoint_id for endpoint_id in endpoint_ids if endpoint_id not in refused]


def _holds(text: str, current: JSONObject | None, previous: JSONObject | None) -> bool:
    subject = current if current is not None else previous
    if subject is None:
        return False
    try:
        expression = compile_expression(text)
    except FhirPathError:
        return False
    return expression.is_true(subject, previous=previous, current=current)


async def _previous_version(
    session: AsyncSession, event: Event, current: JSONObject | None
) -> JSONObject | None:
    """The latest stored version of the focus resource before `current`, if Tidings has one."""
    if current is None:
        return None
    reference = f"{current.get('resourceType')}/{current.get('id')}"
    rows = (
        await session.exec(
            select(EventRow.data)
            .where(EventRow.organization_id == event.organization_id)
            .where(EventRow.focus == reference)
            .where(EventRow.id != event.id)
            .where(col(EventRow.occurred_at) <= event.occurred_at)
            # Events received in the same instant are told apart by their ids, which one
            # process makes in increasing order: otherwise PostgreSQL may return ties in any
            # order, and an older version would pass for the previous one.
            .order_by(
                col(EventRow.occurred_at).desc(),
                col(EventRow.received_at).desc(),
                col(EventRow.id).desc(),
            )
            .limit(_PREVIOUS_CANDIDATES)
        )
    ).all()
    for data in rows:
        if _version(data) != _version(current) and data.get("resourceType") is not None:
            return dict(data)
    return None


def _version(resource: Mapping[str, Any]) -> Any:
    meta = resource.get("meta")
    return meta.get("versionId") if isinstance(meta, dict) else resource

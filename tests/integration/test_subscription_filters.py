"""`%previous` in a Subscription's FHIRPath criteria is the version of the resource stored just
before this one, also when several versions were received in the same instant (as with a
coarse clock, or the tests' fake one) and the database sorts them by a full scan."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from app.domain import ids
from app.domain.models import Event
from app.store import outbox
from app.store.db import make_engine, make_session_factory, transaction
from app.store.subscription_filters import keep_fhirpath_matches
from tests.integration.outbox_helpers import stored_endpoint

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
BECAME_FINISHED = "%previous.status != 'finished' and %current.status = 'finished'"


def version(number: int, status: str) -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "id": "enc-1",
        "meta": {"versionId": str(number)},
        "status": status,
    }


async def test_previous_is_the_version_stored_just_before_in_the_same_instant(
    database_url: str,
) -> None:
    engine = make_engine(database_url)
    sessions = make_session_factory(engine)
    async with transaction(sessions) as session:
        endpoint_id = await stored_endpoint(session, "acme", NOW, fhirpath_criteria=BECAME_FINISHED)
    versions = [version(1, "in-progress"), version(2, "finished"), version(3, "finished")]
    kept = []
    for resource in versions:  # as pushes one after the other: stored, then matched
        event = Event(
            id=ids.new_id("evt"),
            organization_id="acme",
            account_id=None,
            type="encounter.updated",
            occurred_at=NOW,
            data=resource,
            focus="Encounter/enc-1",
            source="fhir-push",
        )
        async with transaction(sessions) as session:
            await outbox.insert_event_for_endpoints(session, event, [], NOW)
        async with transaction(sessions) as session:
            if engine.dialect.name == "postgresql":  # ties sorted, not read off an index
                await session.exec(sa.text("SET LOCAL enable_indexscan = off"))  # type: ignore[call-overload]
                await session.exec(sa.text("SET LOCAL enable_bitmapscan = off"))  # type: ignore[call-overload]
            kept.append(await keep_fhirpath_matches(session, event, resource, [endpoint_id]))
    await engine.dispose()
    assert kept == [[], [endpoint_id], []], "only version 2 made it finished"

"""`POST /v1/ingest/fhir`: FHIR changes pushed in by a source (SPEC section 6.2).

All events and deliveries of one push are stored in one transaction: a push is taken whole or
not at all. With `TIDINGS_INGEST_SECRET` set, the body must carry Medplum's `X-Signature`.
"""

from __future__ import annotations

from typing import Any

from quart import Blueprint, request

from app.api.context import require_role, services
from app.api.problems import ApiError
from app.api.requests import parse_json
from app.domain.models import Role
from app.ingest import change_events, fhir_push
from app.store.db import transaction

blueprint = Blueprint("ingest", __name__, url_prefix="/v1/ingest")
PUSHERS = (Role.SOURCE,)
FHIR_MEDIA_TYPES = ("application/fhir+json", "application/json")


@blueprint.post("/fhir")
async def ingest_fhir() -> tuple[dict[str, Any], int]:
    """Turn a pushed resource, Bundle or notification into events: 202 with what was stored.

    `duplicates` counts events not stored again because their change was already stored.
    """
    principal = require_role(*PUSHERS)
    raw = await request.get_data(as_text=False)
    assert isinstance(raw, bytes)
    _check_signature(raw)
    _check_media_type()
    changes = fhir_push.parse_push(parse_json(raw), dict(request.headers.items()))
    async with transaction(services().sessions) as session:
        result = await change_events.ingest_changes(
            session,
            changes,
            catalog=services().catalog,
            criteria_cache=services().criteria_cache,
            organization_id=principal.organization_id,
            account_id=principal.account_id,
            now=services().clock(),
        )
    if result.event_ids:
        services().wake_worker()
    body = {"changes": result.changes, "events": result.event_ids, "duplicates": result.duplicates}
    return body, 202


def _check_signature(raw: bytes) -> None:
    secret = services().ingest_secret
    if secret is None:
        return
    signature = request.headers.get(fhir_push.SIGNATURE_HEADER)
    if not fhir_push.signature_matches(raw, secret, signature):
        detail = f"{fhir_push.SIGNATURE_HEADER} is missing or is not the body's HMAC-SHA256"
        raise ApiError(401, "Unauthorized", detail)


def _check_media_type() -> None:
    if request.mimetype not in FHIR_MEDIA_TYPES:
        raise ApiError(
            415,
            "Unsupported media type",
            f"expected Content-Type application/fhir+json, got {request.mimetype or 'none'!r}",
        )

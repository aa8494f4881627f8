"""`GET /fhir/AuditEvent`: every delivery attempt of the caller's organization, as AuditEvent.

Search parameters:
- `entity`: `Subscription/<id>` or `Endpoint/<id>` (absolute URLs too), or the focus reference
  of the event (`Patient/p1`);
- `date`: the attempt time, with the FHIR prefixes `eq` (default), `ne`, `gt`, `ge`, `lt`, `le`,
  `sa`, `eb`; repeat it for a range (`date=ge2025-06-01&date=lt2025-06-02`);
- `outcome`: `0`, `4` or `8`;
- `_count` (1..200, default 50), and `next` links to page on.
"""

from __future__ import annotations

from datetime import timedelta

from quart import Blueprint, Response, request

from app.api import pagination
from app.api.context import require_role, scope_of, services
from app.api.fhir_outcomes import fhir_response
from app.api.fhir_subscriptions import parse_count, url_with
from app.domain.errors import Problem, ValidationFailed
from app.domain.models import Role
from app.fhir.audit import AuditOutcome, audit_event_for_attempt, endpoint_reference
from app.fhir.search_dates import parse_date_range
from app.fhir.subscriptions import fhir_id, tidings_id
from app.store import audit_log
from app.store.db import transaction

blueprint = Blueprint("fhir_audit", __name__, url_prefix="/fhir/AuditEvent")
READERS = (Role.PARTNER, Role.READER)
PARAMETERS = frozenset({"entity", "date", "outcome", "_count", "_cursor", "_format"})
OUTCOMES = ("0", "4", "8")
PREFIXES = ("eq", "ne", "gt", "ge", "lt", "le", "sa", "eb")


@blueprint.get("")
async def search_audit_events() -> Response:
    """A searchset Bundle of AuditEvents, one per delivery attempt, oldest first."""
    principal = require_role(*READERS)
    wanted = _filter()
    count = parse_count(request.args.get("_count"), default=50)
    async with transaction(services().sessions) as session:
        rows = await audit_log.select_audited_attempts(
            session,
            scope_of(principal),
            wanted,
            after=pagination.decode_cursor(request.args.get("_cursor")),
            limit=count + 1,
        )
    page = rows[:count]
    base = services().public_url.rstrip("/")
    entries = [
        {
            "fullUrl": f"{base}/fhir/AuditEvent/{fhir_id(row.id)}",
            "resource": _audit_event(row),
            "search": {"mode": "match"},
        }
        for row in page
    ]
    links = [{"relation": "self", "url": url_with()}]
    if len(rows) > count:
        cursor = pagination.encode_cursor(page[-1].attempted_at, page[-1].id)
        links.append({"relation": "next", "url": url_with(_cursor=cursor)})
    bundle = {"resourceType": "Bundle", "type": "searchset", "link": links, "entry": entries}
    return fhir_response(bundle)


def _audit_event(row: audit_log.AuditedAttempt) -> dict[str, object]:
    outcome: AuditOutcome = row.outcome  # type: ignore[assignment]
    return audit_event_for_attempt(
        attempt_id=row.id,
        recorded=row.attempted_at,
        started=row.attempted_at - timedelta(milliseconds=row.duration_ms),
        outcome_code=outcome,
        outcome_desc=f"Delivery {row.delivery_id}: the attempt got {row.result}",
        focus_reference=row.focus,
        endpoint_reference=endpoint_reference(row.endpoint_id, is_subscription=row.is_subscription),
        endpoint_url=row.endpoint_url,
        base_url=services().public_url,
    )


def _filter() -> audit_log.AuditFilter:
    unknown = sorted(set(request.args) - PARAMETERS)
    if unknown:
        raise ValidationFailed([Problem(name, "unknown search parameter") for name in unknown])
    outcome = request.args.get("outcome")
    if outcome is not None and outcome not in OUTCOMES:
        raise ValidationFailed([Problem("outcome", "one of 0, 4 or 8")])
    endpoint_id, subscriptions_only, focus = _entity(request.args.get("entity"))
    dates = tuple(
        condition for text in request.args.getlist("date") for condition in _date_conditions(text)
    )
    return audit_log.AuditFilter(endpoint_id, subscriptions_only, focus, dates, outcome)


def _entity(text: str | None) -> tuple[str | None, bool, str | None]:
    """(endpoint id, Subscriptions only, focus reference) an `entity` value stands for."""
    if not text:
        return None, False, None
    reference = "/".join(text.rstrip("/").split("/")[-2:]) if "://" in text else text
    kind, _, resource_id = reference.partition("/")
    if kind in ("Subscription", "Endpoint") and resource_id:
        return tidings_id(resource_id), kind == "Subscription", None
    return None, False, reference


def _date_conditions(text: str) -> tuple[tuple[audit_log.DateBound, ...], ...]:
    """The conditions (all must hold; the bounds of one are alternatives) of one `date`."""
    prefix = text[:2] if text[:2] in PREFIXES else "eq"
    value = text[2:] if text[:2] in PREFIXES else text
    try:
        start, end = parse_date_range(value)
    except ValueError as error:
        raise ValidationFailed([Problem("date", str(error))]) from None
    after_start, before_end = (">=", start), ("<", end)
    conditions: dict[str, tuple[tuple[audit_log.DateBound, ...], ...]] = {
        "eq": ((after_start,), (before_end,)),
        "ne": ((("<", start), (">=", end)),),
        "gt": (((">=", end),),),
        "sa": (((">=", end),),),
        "ge": ((after_start,),),
        "lt": ((("<", start),),),
        "eb": ((("<", start),),),
        "le": ((before_end,),),
    }
    return conditions[prefix]

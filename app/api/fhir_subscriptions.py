"""`/fhir/Subscription`: FHIR Subscriptions, each the face of an endpoint (SPEC section 7).

Status workflow: a topic-based Subscription is stored `requested` and its handshake is queued in
the same transaction; the worker delivers it, and its first 2xx makes the Subscription `active`
(used-up retries make it `error`). An R4 criteria-based Subscription has no handshake in R4 and
is `active` at once. `off` (submitted, or after a 410 or auto-disable) stops deliveries;
submitting `requested` again re-activates through a new handshake. Event numbers are kept.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from quart import Blueprint, Response, request
from sqlmodel.ext.asyncio.session import AsyncSession

from app.api import pagination
from app.api.context import require_role, scope_of, services
from app.api.fhir_metadata import topic_canonicals
from app.api.fhir_outcomes import fhir_response
from app.api.fhir_subscription_input import AcceptedSubscription, accepted_subscription
from app.api.problems import ApiError
from app.api.requests import json_body
from app.domain import secrets
from app.domain.errors import NotFound, Problem, ValidationFailed
from app.domain.models import Principal, Role, SignatureScheme
from app.fhir.subscriptions import (
    SubscriptionError,
    fhir_id,
    parse_subscription,
    render_subscription,
    tidings_id,
)
from app.store import endpoints, subscriptions, tenants
from app.store.db import transaction
from app.store.endpoints import Scope
from app.store.tables import EndpointRow

blueprint = Blueprint("fhir_subscriptions", __name__, url_prefix="/fhir/Subscription")
WRITERS = (Role.PARTNER,)
READERS = (Role.PARTNER, Role.READER)
SEARCH_PARAMETERS = frozenset({"status", "url", "_count", "_cursor", "_format"})
STATUSES = ("requested", "active", "error", "off")


def rendered(row: EndpointRow) -> dict[str, Any]:
    """The Subscription resource of an endpoint row, with its server-owned elements."""
    status, error = subscriptions.shown_status(row)
    return render_subscription(
        row.fhir_resource or {},
        id=row.id,
        status=status,
        version_id=str(int(row.updated_at.timestamp() * 1000)),
        last_updated=row.updated_at,
        error=error,
    )


def subscription_url(endpoint_id: str) -> str:
    """The Subscription's absolute URL under Tidings' public base."""
    return f"{services().public_url.rstrip('/')}/fhir/Subscription/{fhir_id(endpoint_id)}"


async def subscription_row(
    session: AsyncSession, principal: Principal, subscription_id: str, *, for_update: bool = False
) -> EndpointRow:
    """The caller's Subscription with this FHIR id; 404 otherwise (also for other tenants)."""
    row = await subscriptions.select_subscription_row(
        session, scope_of(principal), tidings_id(subscription_id), for_update=for_update
    )
    if row is None:
        raise NotFound(f"no Subscription {subscription_id!r}")
    return row


@blueprint.post("")
async def create_subscription() -> Response:
    """Create a Subscription: 201 with the resource, `requested` until its handshake succeeds."""
    principal = require_role(*WRITERS)
    accepted = await accepted_subscription(await json_body())
    if accepted.spec.keeps_secret or accepted.keeps_credentials:
        raise ValidationFailed(
            [Problem("Subscription", "a new Subscription cannot keep masked values")]
        )
    values = _owned(accepted, principal)
    now = services().clock()
    secret = accepted.spec.secret or secrets.generate_signing_secret()
    async with transaction(services().sessions) as session:
        await tenants.ensure_organization(session, principal.organization_id, now)
        if principal.account_id:
            await tenants.ensure_account(
                session, principal.organization_id, principal.account_id, now
            )
        endpoint = await endpoints.insert_endpoint(
            session, values, services().secret_box.encrypt(secret), now
        )
        row = await subscription_row(session, principal, endpoint.id)
        await _activate(session, row, accepted, now)
        shown = rendered(row)
    services().wake_worker()
    return fhir_response(shown, 201, {"Location": subscription_url(row.id)})


@blueprint.get("/<subscription_id>")
async def read_subscription(subscription_id: str) -> Response:
    """One Subscription, with its current status (and error text, R4 shapes)."""
    principal = require_role(*READERS)
    async with transaction(services().sessions) as session:
        row = await subscription_row(session, principal, subscription_id)
        return fhir_response(rendered(row))


@blueprint.put("/<subscription_id>")
async def update_subscription(subscription_id: str) -> Response:
    """Replace a Subscription; `requested` re-activates it (new handshake), `off` stops it."""
    principal = require_role(*WRITERS)
    resource = await json_body()
    if isinstance(resource, dict) and resource.get("id") not in (None, subscription_id):
        raise ApiError(400, "Id mismatch", "the resource id must be the id in the URL")
    accepted = await accepted_subscription(resource)
    now = services().clock()
    async with transaction(services().sessions) as session:
        row = await subscription_row(session, principal, subscription_id, for_update=True)
        before = (row.url, subscriptions.shown_status(row)[0])
        changes = await _changes(session, row, accepted, now)
        await endpoints.update_endpoint(session, row, changes, now)
        if accepted.spec.status == "off" or before != (row.url, "active"):
            await _activate(session, row, accepted, now)
        shown = rendered(row)
    services().wake_worker()
    return fhir_response(shown)


@blueprint.delete("/<subscription_id>")
async def delete_subscription(subscription_id: str) -> Response:
    """Delete a Subscription: no more notifications; its attempt log stays."""
    principal = require_role(*WRITERS)
    async with transaction(services().sessions) as session:
        row = await subscription_row(session, principal, subscription_id)
        await endpoints.delete_endpoint(session, row, services().clock())
    return Response(status=204)


@blueprint.get("")
async def search_subscriptions() -> Response:
    """A searchset Bundle of the caller's Subscriptions, by `status` and endpoint `url`."""
    principal = require_role(*READERS)
    count, status = _search_parameters()
    async with transaction(services().sessions) as session:
        rows = await subscriptions.select_subscriptions_page(
            session,
            scope_of(principal),
            status=status,
            url=request.args.get("url"),
            after=pagination.decode_cursor(request.args.get("_cursor")),
            limit=count + 1,
        )
    page = rows[:count]
    entries = [
        {"fullUrl": subscription_url(r.id), "resource": rendered(r), "search": {"mode": "match"}}
        for r in page
    ]
    links = [{"relation": "self", "url": url_with()}]
    if len(rows) > count:
        cursor = pagination.encode_cursor(page[-1].created_at, page[-1].id)
        links.append({"relation": "next", "url": url_with(_cursor=cursor)})
    return fhir_response(
        {"resourceType": "Bundle", "type": "searchset", "link": links, "entry": entries}
    )


def _search_parameters() -> tuple[int, str | None]:
    unknown = sorted(set(request.args) - SEARCH_PARAMETERS)
    if unknown:
        raise ValidationFailed([Problem(name, "unknown search parameter") for name in unknown])
    status = request.args.get("status")
    if status is not None and status not in STATUSES:
        raise ValidationFailed([Problem("status", f"one of {', '.join(STATUSES)}")])
    return parse_count(request.args.get("_count"), default=50), status


def parse_count(text: str | None, *, default: int, most: int = 200) -> int:
    """`_count` as a page size between 1 and `most`."""
    if text is None:
        return default
    if not text.isdigit() or not 1 <= int(text) <= most:
        raise ValidationFailed([Problem("_count", f"a whole number from 1 to {most}")])
    return int(text)


def url_with(**replaced: str) -> str:
    """This request's URL under the public base, with some query parameters replaced."""
    pairs = [(k, v) for k, v in request.args.items(multi=True) if k not in replaced]
    pairs += list(replaced.items())
    base = services().public_url.rstrip("/") + request.path
    return f"{base}?{urlencode(pairs)}" if pairs else base


def _owned(accepted: AcceptedSubscription, principal: Principal) -> dict[str, Any]:
    values = dict(accepted.values)
    values.update(
        organization_id=principal.organization_id,
        account_id=principal.account_id,
        url_credentials=_encrypted(accepted.credentials),
        metadata_={},
    )
    return values


async def _changes(
    session: AsyncSession, row: EndpointRow, accepted: AcceptedSubscription, now: Any
) -> dict[str, Any]:
    """The endpoint columns to change; secrets and credentials are replaced when sent anew."""
    changes = dict(accepted.values)
    for kept in ("active", "fhir_status"):
        changes.pop(kept)
    if not accepted.keeps_credentials:
        changes["url_credentials"] = _encrypted(accepted.credentials)
    await _replace_secret(session, row, accepted, now)
    return changes


async def _replace_secret(
    session: AsyncSession, row: EndpointRow, accepted: AcceptedSubscription, now: Any
) -> None:
    """A new Medplum secret, or a switch of scheme, replaces the signing secret at once."""
    spec = accepted.spec
    if spec.keeps_secret:
        return
    was_medplum = row.signature_scheme == SignatureScheme.MEDPLUM.value
    if spec.secret is None and not was_medplum:
        return
    value = spec.secret or secrets.generate_signing_secret()
    await endpoints.rotate_secret(
        session, row.id, services().secret_box.encrypt(value), now=now, old_expires_at=now
    )


async def _activate(
    session: AsyncSession, row: EndpointRow, accepted: AcceptedSubscription, now: Any
) -> None:
    """Apply the submitted status: off; active at once (R4 criteria); or a new handshake."""
    if accepted.spec.status == "off":
        await endpoints.update_endpoint(
            session,
            row,
            {
                "active": False,
                "fhir_status": "off",
                "fhir_error": None,
                "disabled_at": now,
                "disabled_reason": "the Subscription was turned off",
            },
            now,
        )
        return
    await endpoints.update_endpoint(
        session,
        row,
        {"active": True, "disabled_at": None, "disabled_reason": None, "last_notified_at": now},
        now,
    )
    await _start(session, row, topic_based=accepted.is_topic_based, now=now)


async def _start(session: AsyncSession, row: EndpointRow, *, topic_based: bool, now: Any) -> None:
    """A Subscription that is (again) on: a new handshake if topic-based, else active at once."""
    if topic_based:
        await subscriptions.request_handshake(session, row, now)
    else:
        await subscriptions.set_status(session, row.id, "active", None, now)
    await session.refresh(row)


async def restart_after_enable(
    session: AsyncSession, scope: Scope, endpoint_id: str, now: Any
) -> None:
    """The endpoint was just enabled (`POST /v1/endpoints/{id}/enable`): its Subscription, if it
    is one, starts again as when re-requested, instead of showing `off`. Whether it is
    topic-based is read from the stored resource; if that no longer reads (the catalog
    changed), it is made active at once."""
    row = await endpoints.select_endpoint_row(session, scope, endpoint_id)
    if row is None or row.fhir_version is None:
        return
    try:
        spec = parse_subscription(row.fhir_resource, topics=topic_canonicals())
    except SubscriptionError:
        await _start(session, row, topic_based=False, now=now)
        return
    await _start(session, row, topic_based=spec.is_topic_based, now=now)


def _encrypted(credentials: str | None) -> str | None:
    return services().secret_box.encrypt(credentials) if credentials else None

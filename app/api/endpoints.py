"""`/v1/endpoints`: partners register, read, change and remove their receivers."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from quart import Blueprint, Response
from quart_schema import document_querystring, document_request, document_response

from app.api import endpoint_validation as checks
from app.api.context import owner_of, require_role, scope_of, services
from app.api.endpoint_schemas import (
    EndpointCreated,
    EndpointIn,
    EndpointOut,
    EndpointPage,
    EndpointPatch,
    ListQuery,
    RotateIn,
    SecretOut,
    endpoint_out,
)
from app.api.pagination import decode_cursor, encode_cursor
from app.api.requests import body_as, query_as
from app.domain import endpoint_rules, secrets
from app.domain.errors import NotFound, Problem, ValidationFailed
from app.domain.models import Endpoint, Principal, Role, SignatureScheme
from app.store import deliveries, tenants
from app.store import endpoints as store
from app.store.db import transaction
from app.store.tables import EndpointRow

blueprint = Blueprint("endpoints", __name__, url_prefix="/v1/endpoints")
WRITERS = (Role.PARTNER,)
READERS = (Role.PARTNER, Role.READER)


@blueprint.post("")
@document_request(EndpointIn)
@document_response(EndpointCreated, 201)
async def create_endpoint() -> tuple[dict[str, Any], int]:
    """Register an endpoint; the answer carries its signing secret."""
    principal = require_role(*WRITERS)
    body = await body_as(EndpointIn)
    values = body.model_dump(exclude={"account", "organization", "secret"})
    checks.raise_if_any(checks.settings_problems(values, services()))
    parsed = await checks.checked_url(body.url, services())
    organization_id, account_id = owner_of(principal, body.organization, body.account)
    secret_value, public_key = _new_secret(body.signature_scheme, body.secret, "/secret")
    values.update(
        url=parsed.url,
        url_credentials=_encrypted(parsed.credentials),
        organization_id=organization_id,
        account_id=account_id,
        metadata_=values.pop("metadata"),
    )
    now = services().clock()
    async with transaction(services().sessions) as session:
        await tenants.ensure_organization(session, organization_id, now)
        if account_id:
            await tenants.ensure_account(session, organization_id, account_id, now)
        endpoint = await store.insert_endpoint(
            session, values, services().secret_box.encrypt(secret_value), now
        )
    shown = _shown(endpoint)
    shown.update(secret=None if public_key else secret_value, public_key=public_key)
    return shown, 201


@blueprint.get("")
@document_querystring(ListQuery)
@document_response(EndpointPage)
async def list_endpoints() -> dict[str, Any]:
    """The caller's endpoints, oldest first, `limit` at a time."""
    principal = require_role(*READERS)
    query = query_as(ListQuery)
    after = decode_cursor(query.cursor)
    async with transaction(services().sessions) as session:
        page = await store.select_endpoints_page(
            session, scope_of(principal), after=after, limit=query.limit + 1
        )
    more = len(page) > query.limit
    page = page[: query.limit]
    last = page[-1] if more else None
    cursor = encode_cursor(last.created_at, last.id) if last and last.created_at else None
    return {"data": [_shown(endpoint) for endpoint in page], "next_cursor": cursor}


@blueprint.get("/<endpoint_id>")
@document_response(EndpointOut)
async def read_endpoint(endpoint_id: str) -> dict[str, Any]:
    """One endpoint."""
    principal = require_role(*READERS)
    async with transaction(services().sessions) as session:
        endpoint = await store.select_endpoint(session, scope_of(principal), endpoint_id)
    if endpoint is None:
        raise NotFound(f"no endpoint {endpoint_id!r}")
    return _shown(endpoint)


@blueprint.patch("/<endpoint_id>")
@document_request(EndpointPatch)
@document_response(EndpointOut)
async def update_endpoint(endpoint_id: str) -> dict[str, Any]:
    """Change an endpoint; only the fields sent change."""
    principal = require_role(*WRITERS)
    changes = (await body_as(EndpointPatch)).model_dump(exclude_unset=True)
    checks.raise_if_any(checks.settings_problems(changes, services()))
    if "url" in changes:
        parsed = await checks.checked_url(changes["url"] or "", services())
        changes.update(url=parsed.url, url_credentials=_encrypted(parsed.credentials))
    if "metadata" in changes:
        changes["metadata_"] = changes.pop("metadata") or {}
    async with transaction(services().sessions) as session:
        if "ordered" in changes:  # no delivery to it is stored meanwhile (`ordered_among`)
            await store.lock_endpoint(session, scope_of(principal), endpoint_id)
        row = await _row(session, principal, endpoint_id)
        _check_scheme_change(row, changes.get("signature_scheme"))
        now = services().clock()
        was_ordered = row.ordered
        endpoint = await store.update_endpoint(session, row, changes, now)
        if endpoint.ordered and not was_ordered:  # what is pending goes in order from now on
            await deliveries.hold_pending(session, endpoint.id, now=now)
        elif was_ordered and not endpoint.ordered:  # and what was held need not wait any more
            await deliveries.release_held(session, endpoint.id, now=now)
    if endpoint.ordered != was_ordered:
        services().wake_worker()
    return _shown(endpoint)


@blueprint.delete("/<endpoint_id>")
async def delete_endpoint(endpoint_id: str) -> Response:
    """Remove an endpoint: no more deliveries; its attempt log stays readable by operators."""
    principal = require_role(*WRITERS)
    async with transaction(services().sessions) as session:
        row = await _row(session, principal, endpoint_id)
        await store.delete_endpoint(session, row, services().clock())
    return Response(status=204)


@blueprint.get("/<endpoint_id>/secret")
@document_response(SecretOut)
async def read_secret(endpoint_id: str) -> dict[str, Any]:
    """The current signing secret (for ed25519, the public key to verify with)."""
    principal = require_role(*WRITERS)
    now = services().clock()
    async with transaction(services().sessions) as session:
        row = await _row(session, principal, endpoint_id)
        live = await store.select_live_secrets(session, row.id, now)
    current = services().secret_box.decrypt(live[0].ciphertext)
    previous = [s.expires_at for s in live[1:] if s.expires_at]
    return _secret_view(SignatureScheme(row.signature_scheme), current) | {
        "previous_expires_at": max(previous).isoformat() if previous else None
    }


@blueprint.post("/<endpoint_id>/secret/rotate")
@document_request(RotateIn)
@document_response(SecretOut)
async def rotate_secret(endpoint_id: str) -> dict[str, Any]:
    """A new secret signs from now on; the old ones keep signing for `grace_seconds`."""
    principal = require_role(*WRITERS)
    body = await body_as(RotateIn, allow_empty=True)
    now = services().clock()
    async with transaction(services().sessions) as session:
        row = await _row(session, principal, endpoint_id, for_update=True)
        scheme = SignatureScheme(row.signature_scheme)
        value, _ = _new_secret(scheme, body.secret, "/secret")
        await store.rotate_secret(
            session,
            row.id,
            services().secret_box.encrypt(value),
            now=now,
            old_expires_at=now + timedelta(seconds=body.grace_seconds),
        )
    expires = (now + timedelta(seconds=body.grace_seconds)).isoformat()
    return _secret_view(scheme, value) | {"previous_expires_at": expires}


async def _row(
    session: Any, principal: Principal, endpoint_id: str, for_update: bool = False
) -> EndpointRow:
    row = await store.select_endpoint_row(
        session, scope_of(principal), endpoint_id, for_update=for_update
    )
    if row is None:
        raise NotFound(f"no endpoint {endpoint_id!r}")
    return row


def _new_secret(scheme: SignatureScheme, given: str | None, pointer: str) -> tuple[str, str | None]:
    """(value to store, public key to show) for a new secret of this scheme."""
    if scheme is SignatureScheme.ED25519:
        if given is not None:
            raise ValidationFailed([Problem(pointer, "ed25519 keys are generated by Tidings")])
        private, public = secrets.generate_ed25519_keypair()
        return private, public
    if given is None:
        return secrets.generate_signing_secret(), None
    try:
        secrets.decode_signing_secret(given)
    except ValueError as error:
        raise ValidationFailed([Problem(pointer, str(error))]) from None
    return given, None


def _check_scheme_change(row: EndpointRow, scheme: SignatureScheme | None) -> None:
    if scheme is None:
        return
    was_ed25519 = row.signature_scheme == SignatureScheme.ED25519.value
    if was_ed25519 != (scheme is SignatureScheme.ED25519):
        raise ValidationFailed(
            [
                Problem(
                    "/signature_scheme",
                    "cannot switch between HMAC and ed25519 schemes: create a new endpoint instead",
                )
            ]
        )


def _secret_view(scheme: SignatureScheme, value: str) -> dict[str, Any]:
    if scheme is SignatureScheme.ED25519:
        return {"secret": None, "public_key": secrets.ed25519_public_key(value)}
    return {"secret": value, "public_key": None}


def _encrypted(credentials: str | None) -> str | None:
    return services().secret_box.encrypt(credentials) if credentials else None


def _shown(endpoint: Endpoint) -> dict[str, Any]:
    return endpoint_out(
        endpoint, endpoint_rules.redacted_url(endpoint.url, endpoint.has_credentials)
    )

"""`/v1/upstreams`: admins register the FHIR servers Tidings polls (SPEC section 6.3).

Credentials are encrypted at rest and never shown again; the status fields (cursor, last poll,
last error, failures) tell an operator how the watcher is doing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from quart import Blueprint, Response
from quart_schema import document_request, document_response

from app.api.context import require_role, services
from app.api.requests import body_as
from app.domain.errors import NotFound
from app.domain.models import Role
from app.ingest import upstream_config as config
from app.ingest import upstream_registry as registry
from app.store import upstreams as store
from app.store.db import transaction
from app.store.tables import UpstreamServer

blueprint = Blueprint("upstreams", __name__, url_prefix="/v1/upstreams")
_STRICT = ConfigDict(extra="forbid")


class AuthIn(BaseModel):
    """How to sign in: `none`, `bearer` (token), `basic` (username, password) or `smart`
    (client_id, client_secret, token_url, scope: SMART Backend Services, client_secret_post)."""

    model_config = _STRICT

    kind: Literal["none", "bearer", "basic", "smart"] = "none"
    token: str | None = Field(default=None, max_length=4096)
    username: str | None = Field(default=None, max_length=200)
    password: str | None = Field(default=None, max_length=1000)
    client_id: str | None = Field(default=None, max_length=200)
    client_secret: str | None = Field(default=None, max_length=1000)
    token_url: str | None = Field(default=None, max_length=2048)
    scope: str | None = Field(default=None, max_length=1000)


class UpstreamIn(BaseModel):
    """A FHIR server to poll for one organization."""

    model_config = _STRICT

    organization: str = Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_-]*$")
    base_url: str = Field(max_length=2048, description="the FHIR base, e.g. https://x/fhir")
    auth: AuthIn = Field(default_factory=AuthIn)
    poll_seconds: int = Field(default=config.DEFAULT_POLL_SECONDS, ge=1, le=86400)
    since: datetime | None = Field(
        default=None, description="start from this instant instead of now (with a time zone)"
    )


class UpstreamOut(BaseModel):
    """A registered upstream and how its polling goes; never its credentials."""

    id: str
    organization: str
    base_url: str
    auth: dict[str, str]
    poll_seconds: int
    active: bool
    cursor: str | None
    last_polled_at: datetime | None
    last_error: str | None
    failures: int
    next_poll_at: datetime | None
    created_at: datetime


@blueprint.post("")
@document_request(UpstreamIn)
@document_response(UpstreamOut, 201)
async def create_upstream() -> tuple[dict[str, Any], int]:
    """Register an upstream FHIR server; it is polled from now on (or from `since`)."""
    require_role(Role.ADMIN)
    body = await body_as(UpstreamIn)
    found = services()
    row = await registry.register_upstream(
        found.sessions, _registration(body), _checks(), found.clock()
    )
    return shown(row), 201


def _registration(body: UpstreamIn) -> registry.Registration:
    auth = body.auth.model_dump() | {"kind": config.AuthKind(body.auth.kind)}
    return registry.Registration(
        organization_id=body.organization,
        base_url=body.base_url,
        auth=config.UpstreamAuth(**auth),
        poll_seconds=body.poll_seconds,
        since=body.since,
    )


def _checks() -> registry.Checks:
    found = services()
    return registry.Checks(
        secret_box=found.secret_box,
        resolve=found.resolve,
        allowed_networks=found.allowed_networks,
        require_https=found.require_https,
    )


@blueprint.get("")
async def list_upstreams() -> dict[str, Any]:
    """Every registered upstream, oldest first."""
    require_role(Role.ADMIN)
    async with transaction(services().sessions) as session:
        rows = await store.select_upstreams(session)
    return {"data": [shown(row) for row in rows]}


@blueprint.get("/<upstream_id>")
@document_response(UpstreamOut)
async def read_upstream(upstream_id: str) -> dict[str, Any]:
    """One upstream and its polling status."""
    require_role(Role.ADMIN)
    async with transaction(services().sessions) as session:
        row = await store.select_upstream(session, upstream_id)
    if row is None:
        raise NotFound(f"no upstream {upstream_id!r}")
    return shown(row)


@blueprint.delete("/<upstream_id>")
async def delete_upstream(upstream_id: str) -> Response:
    """Stop polling an upstream and forget its credentials; its events stay."""
    require_role(Role.ADMIN)
    async with transaction(services().sessions) as session:
        if not await store.delete_upstream(session, upstream_id):
            raise NotFound(f"no upstream {upstream_id!r}")
    return Response(status=204)


def shown(row: UpstreamServer) -> dict[str, Any]:
    """The public view of an upstream: everything but the credentials."""
    return UpstreamOut(
        id=row.id,
        organization=row.organization_id,
        base_url=row.base_url,
        auth={"kind": row.auth_kind},
        poll_seconds=row.poll_seconds,
        active=row.active,
        cursor=row.cursor,
        last_polled_at=row.last_polled_at,
        last_error=row.last_error,
        failures=row.failures,
        next_poll_at=row.next_poll_at,
        created_at=row.created_at,
    ).model_dump(mode="json")

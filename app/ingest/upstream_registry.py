"""Registering an upstream FHIR server: one implementation for the API and the CLI."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from app.domain.addresses import IPNetwork, Resolver
from app.domain.errors import Problem, ValidationFailed
from app.domain.secrets import SecretBox
from app.ingest.upstream_config import (
    UpstreamAuth,
    checked_registration,
    format_instant,
    seal_auth,
)
from app.store import tenants
from app.store import upstreams as store
from app.store.db import SessionFactory, make_engine, make_session_factory, transaction
from app.store.tables import UpstreamServer


@dataclass(frozen=True)
class Registration:
    """What an admin asks for: whose events, which server, how to sign in, how often."""

    organization_id: str
    base_url: str
    auth: UpstreamAuth
    poll_seconds: int
    since: datetime | None = None


@dataclass(frozen=True)
class Checks:
    """What a registration is checked and sealed with."""

    secret_box: SecretBox
    resolve: Resolver
    allowed_networks: Sequence[IPNetwork]
    require_https: bool


async def register_upstream(
    sessions: SessionFactory, registration: Registration, checks: Checks, now: datetime
) -> UpstreamServer:
    """Check and store a registration (creating the organization if new).

    The cursor starts at `since`, else now: registering never replays the server's history.

    Raises:
        ValidationFailed: with pointers `/base_url`, `/auth/...` or `/since`.
    """
    if registration.since is not None and registration.since.tzinfo is None:
        raise ValidationFailed([Problem("/since", "the instant needs a time zone")])
    base_url = await checked_registration(
        registration.base_url,
        registration.auth,
        resolve=checks.resolve,
        allowed=checks.allowed_networks,
        require_https=checks.require_https,
    )
    async with transaction(sessions) as session:
        await tenants.ensure_organization(session, registration.organization_id, now)
        return await store.insert_upstream(
            session,
            organization_id=registration.organization_id,
            base_url=base_url,
            auth_kind=registration.auth.kind.value,
            auth_secret=seal_auth(registration.auth, checks.secret_box),
            poll_seconds=registration.poll_seconds,
            cursor=format_instant(registration.since or now),
            now=now,
        )


async def register_in_database(
    database_url: str, registration: Registration, checks: Checks, now: datetime
) -> UpstreamServer:
    """`register_upstream` on its own engine (the `tidings upstreams add` command)."""
    engine = make_engine(database_url)
    try:
        return await register_upstream(make_session_factory(engine), registration, checks, now)
    finally:
        await engine.dispose()


async def upstreams_in_database(database_url: str) -> list[UpstreamServer]:
    """Every registered upstream (the `tidings upstreams list` command)."""
    engine = make_engine(database_url)
    try:
        async with transaction(make_session_factory(engine)) as session:
            return await store.select_upstreams(session)
    finally:
        await engine.dispose()

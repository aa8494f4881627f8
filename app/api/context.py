"""What a request handler may reach: the wired services and the caller."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from itsdangerous import URLSafeSerializer
from quart import current_app, g

from app.api.principal_cache import PrincipalCache
from app.api.rate_limit import KeyRateLimiter
from app.domain.addresses import IPNetwork, Resolver
from app.domain.catalog import Catalog
from app.domain.errors import Forbidden, Problem, ValidationFailed
from app.domain.matching import CriteriaCache
from app.domain.models import Principal, Role
from app.domain.secrets import SecretBox
from app.store.db import SessionFactory
from app.store.endpoints import Scope
from app.store.group_commit import EventCommitter


@dataclass
class Services:
    """Everything the API needs, wired once by `factory.create_app`."""

    sessions: SessionFactory
    secret_box: SecretBox
    cursor_signer: URLSafeSerializer
    resolve: Resolver
    catalog: Catalog
    event_committer: EventCommitter
    clock: Callable[[], datetime]
    public_url: str
    require_https: bool
    allowed_networks: tuple[IPNetwork, ...]
    rate_limiter: KeyRateLimiter = field(default_factory=lambda: KeyRateLimiter(0))
    principal_cache: PrincipalCache = field(default_factory=lambda: PrincipalCache())
    wake_worker: Callable[[], None] = lambda: None
    criteria_cache: CriteriaCache = field(default_factory=CriteriaCache)
    ingest_secret: str | None = None


def services() -> Services:
    """The services of the running app."""
    found: Services = current_app.extensions["tidings"]
    return found


def caller() -> Principal:
    """The authenticated caller of this request."""
    found: Principal = g.principal
    return found


def require_role(*roles: Role) -> Principal:
    """The caller, if its role is one of `roles` (admins always pass)."""
    principal = caller()
    if principal.role is not Role.ADMIN and principal.role not in roles:
        raise Forbidden(f"a {principal.role.value} key may not do this")
    return principal


def scope_of(principal: Principal) -> Scope:
    """What the caller may see: admins everything, others their organization (and account)."""
    if principal.is_admin:
        return Scope(organization_id=None)
    return Scope(organization_id=principal.organization_id, account_id=principal.account_id)


def owner_of(
    principal: Principal, organization: str | None, account: str | None
) -> tuple[str, str | None]:
    """(organization, account) an object is created for: the key's own, unless an admin
    names another organization; an account key may not name another account."""
    if organization is not None and not principal.is_admin:
        raise ValidationFailed(
            [Problem("/organization", "only admin keys may choose the organization")]
        )
    if principal.account_id is not None and account not in (None, principal.account_id):
        raise ValidationFailed([Problem("/account", "this key is limited to its own account")])
    return organization or principal.organization_id, account or principal.account_id

"""Bearer-key authentication for `/v1` and `/fhir`."""

from __future__ import annotations

from datetime import datetime

from quart import g, request

from app.api.context import services
from app.api.problems import ApiError
from app.domain import secrets
from app.domain.models import Principal
from app.store import tenants
from app.store.db import SessionFactory, transaction

PROTECTED_PREFIXES = ("/v1/", "/fhir/")
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="tidings"'}


async def authenticate() -> None:
    """Resolve the bearer key into `g.principal`; 401 when missing, unknown or revoked."""
    if not request.path.startswith(PROTECTED_PREFIXES) and request.path not in ("/v1", "/fhir"):
        return
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise ApiError(401, "Unauthorized", "send Authorization: Bearer <api key>", _CHALLENGE)
    found = services()
    now = found.clock()
    key_hash = secrets.hash_api_key(key.strip())
    principal = await found.principal_cache.resolve(
        key_hash, now, lambda: _principal(found.sessions, key_hash, now)
    )
    if principal is None:
        raise ApiError(401, "Unauthorized", "the API key is unknown or revoked", _CHALLENGE)
    found.rate_limiter.check(principal.key_id, now)
    g.principal = principal


async def _principal(sessions: SessionFactory, key_hash: str, now: datetime) -> Principal | None:
    """The key's caller from the database (marking the key used), or None."""
    async with transaction(sessions) as session:
        principal = await tenants.select_principal(session, key_hash)
        if principal is not None:
            await tenants.update_key_last_used(session, principal.key_id, now)
    return principal

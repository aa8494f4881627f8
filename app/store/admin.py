"""Operator actions run by the `tidings` command straight against the database."""

from __future__ import annotations

from datetime import UTC, datetime

from app.domain import secrets
from app.domain.models import Role
from app.store import tenants
from app.store.db import make_engine, make_session_factory, transaction


async def create_api_key(
    database_url: str, organization_id: str, role: Role, account_id: str | None
) -> tuple[str, str]:
    """Create (organization, account and) key; return (the key, its id). Only the hash is kept."""
    engine = make_engine(database_url)
    now = datetime.now(UTC)
    key = secrets.generate_api_key()
    try:
        async with transaction(make_session_factory(engine)) as session:
            await tenants.ensure_organization(session, organization_id, now)
            if account_id:
                await tenants.ensure_account(session, organization_id, account_id, now)
            key_id = await tenants.insert_api_key(
                session,
                key_hash=secrets.hash_api_key(key),
                role=role,
                organization_id=organization_id,
                account_id=account_id,
                now=now,
            )
    finally:
        await engine.dispose()
    return key, key_id


async def revoke_api_key(database_url: str, key_id: str) -> bool:
    """Revoke a key by id; False if there is no such live key."""
    engine = make_engine(database_url)
    try:
        async with transaction(make_session_factory(engine)) as session:
            return await tenants.revoke_api_key(session, key_id, datetime.now(UTC))
    finally:
        await engine.dispose()

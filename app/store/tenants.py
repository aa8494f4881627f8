"""Organizations, accounts and API keys."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.domain import ids
from app.domain.models import Principal, Role
from app.store.db import insert_ignoring_conflicts
from app.store.tables import Account, ApiKey, Organization


async def ensure_organization(session: AsyncSession, organization_id: str, now: datetime) -> None:
    """Create the organization if it does not exist yet (when another transaction creates it
    at the same time, its row is kept and this one does nothing)."""
    if await session.get(Organization, organization_id) is None:
        row = {"id": organization_id, "name": organization_id, "created_at": now}
        await _insert_if_absent(session, Organization, row)


async def ensure_account(
    session: AsyncSession, organization_id: str, account_id: str, now: datetime
) -> None:
    """Create the account inside its organization if it does not exist yet (as above)."""
    if await session.get(Account, (organization_id, account_id)) is None:
        row = {"organization_id": organization_id, "id": account_id, "created_at": now}
        await _insert_if_absent(session, Account, row)


async def _insert_if_absent(session: AsyncSession, table: Any, row: dict[str, Any]) -> None:
    connection = await session.connection()
    await connection.execute(insert_ignoring_conflicts(connection.dialect.name, table), row)


async def insert_api_key(
    session: AsyncSession,
    *,
    key_hash: str,
    role: Role,
    organization_id: str,
    account_id: str | None,
    now: datetime,
) -> str:
    """Store a new key's hash; return the key's id."""
    key_id = ids.new_id("key")
    session.add(
        ApiKey(
            id=key_id,
            key_hash=key_hash,
            role=role.value,
            organization_id=organization_id,
            account_id=account_id,
            created_at=now,
        )
    )
    await session.flush()
    return key_id


async def select_principal(session: AsyncSession, key_hash: str) -> Principal | None:
    """The live key with this hash, as the caller it stands for."""
    row = (
        await session.exec(
            select(ApiKey).where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))  # type: ignore[union-attr]
        )
    ).first()
    if row is None:
        return None
    return Principal(
        key_id=row.id,
        role=Role(row.role),
        organization_id=row.organization_id,
        account_id=row.account_id,
    )


async def update_key_last_used(session: AsyncSession, key_id: str, now: datetime) -> None:
    """Remember when a key was last seen (coarse: callers throttle how often)."""
    row = await session.get(ApiKey, key_id)
    if row is not None:
        row.last_used_at = now
        session.add(row)


async def revoke_api_key(session: AsyncSession, key_id: str, now: datetime) -> bool:
    """Revoke a key; False if there is no such live key."""
    row = await session.get(ApiKey, key_id)
    if row is None or row.revoked_at is not None:
        return False
    row.revoked_at = now
    session.add(row)
    return True

"""Organizations and accounts created on first use, also by two transactions at once (two API
processes, or two connections of one PostgreSQL pool): neither fails, one row each."""

from __future__ import annotations

import asyncio

from sqlmodel import select

from app.store import tenants
from app.store.db import SessionFactory, make_engine, make_session_factory, transaction
from app.store.tables import Account, Organization
from tests.conftest import FakeClock


async def _ensure_both(sessions: SessionFactory, clock: FakeClock) -> None:
    async with transaction(sessions) as session:
        await tenants.ensure_organization(session, "newco", clock())
        await tenants.ensure_account(session, "newco", "north", clock())


async def test_two_transactions_creating_the_same_tenant_at_once_both_commit(
    database_url: str, clock: FakeClock
) -> None:
    engines = [make_engine(database_url) for _ in range(2)]
    first, second = (make_session_factory(engine) for engine in engines)
    try:
        async with transaction(first) as session:
            await tenants.ensure_organization(session, "newco", clock())
            await tenants.ensure_account(session, "newco", "north", clock())
            racing = asyncio.ensure_future(_ensure_both(second, clock))
            await asyncio.sleep(0.3)
            # It found no row (this one is not committed) and waits to insert its own.
            assert not racing.done()
        await asyncio.wait_for(racing, 10)  # committed, not a unique-key error
        async with transaction(first) as session:
            organizations = (await session.exec(select(Organization.id))).all()
            accounts = (await session.exec(select(Account.id))).all()
        assert (organizations, accounts) == (["newco"], ["north"])
    finally:
        for engine in engines:
            await engine.dispose()


async def test_an_existing_tenant_is_left_as_it_was(database_url: str, clock: FakeClock) -> None:
    engine = make_engine(database_url)
    sessions = make_session_factory(engine)
    try:
        await _ensure_both(sessions, clock)
        async with transaction(sessions) as session:
            created = await session.get(Organization, "newco")
        clock.advance(60)
        await _ensure_both(sessions, clock)
        async with transaction(sessions) as session:
            again = await session.get(Organization, "newco")
        assert created is not None and again is not None
        assert (again.created_at, again.endpoints_version) == (
            created.created_at,
            created.endpoints_version,
        )
    finally:
        await engine.dispose()

"""The key cache: requests that miss together share one lookup."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from app.api.principal_cache import KEY_CACHE_SECONDS, PrincipalCache
from app.domain.models import Principal, Role

NOW = datetime(2026, 1, 1, tzinfo=UTC)
ACME = Principal(key_id="key_1", organization_id="acme", account_id=None, role=Role.SOURCE)


class Lookups:
    """A key lookup that counts its calls and answers when released."""

    def __init__(self, answer: Principal | Exception | None) -> None:
        self.answer = answer
        self.calls = 0
        self.release = asyncio.Event()

    async def __call__(self) -> Principal | None:
        self.calls += 1
        await self.release.wait()
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


async def test_concurrent_misses_share_one_lookup_then_hit_the_cache() -> None:
    cache, lookup = PrincipalCache(), Lookups(ACME)
    waiting = [asyncio.ensure_future(cache.resolve("h", NOW, lookup)) for _ in range(5)]
    await asyncio.sleep(0)
    lookup.release.set()
    assert await asyncio.gather(*waiting) == [ACME] * 5
    assert await cache.resolve("h", NOW + timedelta(seconds=1), lookup) == ACME
    assert lookup.calls == 1


async def test_the_entry_expires_after_the_cache_period() -> None:
    cache, lookup = PrincipalCache(), Lookups(ACME)
    lookup.release.set()
    await cache.resolve("h", NOW, lookup)
    await cache.resolve("h", NOW + timedelta(seconds=KEY_CACHE_SECONDS), lookup)
    assert lookup.calls == 2


async def test_an_unknown_key_is_not_cached() -> None:
    cache, lookup = PrincipalCache(), Lookups(None)
    lookup.release.set()
    assert await cache.resolve("h", NOW, lookup) is None
    assert await cache.resolve("h", NOW, lookup) is None
    assert lookup.calls == 2


async def test_a_failed_lookup_fails_every_waiter_and_is_not_remembered() -> None:
    cache, lookup = PrincipalCache(), Lookups(OSError("database down"))
    waiting = [asyncio.ensure_future(cache.resolve("h", NOW, lookup)) for _ in range(3)]
    await asyncio.sleep(0)
    lookup.release.set()
    outcomes = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(outcome, OSError) for outcome in outcomes)
    lookup.answer = ACME
    assert await cache.resolve("h", NOW, lookup) == ACME
    assert lookup.calls == 2


async def test_a_request_that_goes_away_does_not_cancel_the_shared_lookup() -> None:
    cache, lookup = PrincipalCache(), Lookups(ACME)
    first = asyncio.ensure_future(cache.resolve("h", NOW, lookup))
    second = asyncio.ensure_future(cache.resolve("h", NOW, lookup))
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    lookup.release.set()
    assert await second == ACME
    assert lookup.calls == 1

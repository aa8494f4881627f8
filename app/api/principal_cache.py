"""Recently seen API keys, so most requests need no key lookup in the database."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from app.domain.models import Principal

# A revoked key stops working within this long in every process (each caches what it saw).
KEY_CACHE_SECONDS = 5

Lookup = Callable[[], Awaitable[Principal | None]]


class PrincipalCache:
    """Recently seen keys (by hash), so most requests need no key lookup in the database."""

    def __init__(self, seconds: float = KEY_CACHE_SECONDS) -> None:
        self._ttl = timedelta(seconds=seconds)
        self._seen: dict[str, tuple[Principal, datetime]] = {}
        self._looking_up: dict[str, asyncio.Task[Principal | None]] = {}

    def get(self, key_hash: str, now: datetime) -> Principal | None:
        """The cached caller, if seen within the cache period."""
        found = self._seen.get(key_hash)
        if found is None or found[1] <= now:
            return None
        return found[0]

    def put(self, key_hash: str, principal: Principal, now: datetime) -> None:
        """Remember a caller until the cache period ends."""
        if len(self._seen) > 50_000:
            self._seen = {k: v for k, v in self._seen.items() if v[1] > now}
        self._seen[key_hash] = (principal, now + self._ttl)

    async def resolve(self, key_hash: str, now: datetime, lookup: Lookup) -> Principal | None:
        """The cached caller, else the result of `lookup` (cached when found).

        Requests that miss together share ONE lookup: when a busy key's entry expires, its
        concurrent requests would otherwise each query (and update) the key row at once.
        """
        principal = self.get(key_hash, now)
        if principal is not None:
            return principal
        task = self._looking_up.get(key_hash)
        if task is None:
            task = asyncio.ensure_future(self._look_up(key_hash, now, lookup))
            self._looking_up[key_hash] = task
        # A request that goes away must not cancel the lookup the others are waiting for.
        return await asyncio.shield(task)

    async def _look_up(self, key_hash: str, now: datetime, lookup: Lookup) -> Principal | None:
        try:
            principal = await lookup()
        finally:
            del self._looking_up[key_hash]
        if principal is not None:
            self.put(key_hash, principal, now)
        return principal

"""Recently seen API keys, so most requests need no key lookup in the database."""

from __future__ import annotations

from datetime import datetime, timedelta

from app.domain.models import Principal

# A revoked key stops working within this long in every process (each caches what it saw).
KEY_CACHE_SECONDS = 5


class PrincipalCache:
    """Recently seen keys (by hash), so most requests need no key lookup in the database."""

    def __init__(self, seconds: float = KEY_CACHE_SECONDS) -> None:
        self._ttl = timedelta(seconds=seconds)
        self._seen: dict[str, tuple[Principal, datetime]] = {}

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

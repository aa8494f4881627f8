"""Per-endpoint limits inside one worker: attempts in flight and requests per second.

An endpoint may have `MAX_IN_FLIGHT_PER_ENDPOINT` attempts in flight; a timeout or a slow
answer drops its cap to `SLOW_IN_FLIGHT_PER_ENDPOINT`, and every quick answer doubles it back.
An endpoint that hangs therefore holds two of the worker's slots, not sixty-four, once its first
attempt has timed out, and the healthy endpoints keep the rest (no head-of-line blocking
between endpoints). Endpoints at their cap are left out of the next claim.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta

from app.domain.retry import AttemptError, AttemptOutcome
from app.store.deliveries import ClaimedDelivery

MAX_IN_FLIGHT_PER_ENDPOINT = 64
SLOW_IN_FLIGHT_PER_ENDPOINT = 2
# An answer this slow (or a timeout) drops the endpoint's cap to SLOW_IN_FLIGHT_PER_ENDPOINT.
SLOW_ANSWER_MS = 1_000
_BUSY_RETRY = timedelta(milliseconds=250)


class EndpointLimits:
    """Admits claimed deliveries an endpoint can take now; the rest go back with a due time."""

    def __init__(
        self,
        max_in_flight: int = MAX_IN_FLIGHT_PER_ENDPOINT,
        slow_in_flight: int = SLOW_IN_FLIGHT_PER_ENDPOINT,
    ) -> None:
        self._max_in_flight = max_in_flight
        self._slow_in_flight = min(slow_in_flight, max_in_flight)
        self._in_flight: Counter[str] = Counter()
        self._caps: dict[str, int] = {}
        self._sent_in_second: dict[str, tuple[int, int]] = {}

    def cap(self, endpoint_id: str) -> int:
        """How many attempts to this endpoint may be in flight now."""
        return self._caps.get(endpoint_id, self._max_in_flight)

    def full(self) -> list[str]:
        """The endpoints at their cap: a claim need not fetch their deliveries."""
        return [e for e, count in self._in_flight.items() if count >= self.cap(e)]

    def admit(
        self, claimed: Sequence[ClaimedDelivery], now: datetime
    ) -> tuple[list[ClaimedDelivery], dict[datetime, list[ClaimedDelivery]]]:
        """(admitted now, deferred by the time they may go)."""
        admitted: list[ClaimedDelivery] = []
        deferred: dict[datetime, list[ClaimedDelivery]] = {}
        for item in claimed:
            retry_at = self._refusal(item, now)
            if retry_at is None:
                self._in_flight[item.endpoint.id] += 1
                admitted.append(item)
            else:
                deferred.setdefault(retry_at, []).append(item)
        return admitted, deferred

    def finished(self, endpoint_id: str, outcome: AttemptOutcome | None = None) -> None:
        """An attempt to this endpoint is over (`outcome` is None when nothing was sent)."""
        self._in_flight[endpoint_id] -= 1
        if self._in_flight[endpoint_id] <= 0:
            del self._in_flight[endpoint_id]
        if outcome is None:
            return
        if outcome.error is AttemptError.TIMEOUT or outcome.duration_ms >= SLOW_ANSWER_MS:
            self._caps[endpoint_id] = self._slow_in_flight
        elif endpoint_id in self._caps:
            doubled = 2 * self._caps[endpoint_id]
            if doubled >= self._max_in_flight:
                del self._caps[endpoint_id]
            else:
                self._caps[endpoint_id] = doubled

    def _refusal(self, item: ClaimedDelivery, now: datetime) -> datetime | None:
        endpoint = item.endpoint
        if self._in_flight[endpoint.id] >= self.cap(endpoint.id):
            return now + _BUSY_RETRY
        if endpoint.rate_limit is None:
            return None
        second = int(now.timestamp())
        window, count = self._sent_in_second.get(endpoint.id, (second, 0))
        if window != second:
            window, count = second, 0
        if count >= endpoint.rate_limit:
            return datetime.fromtimestamp(second + 1, tz=now.tzinfo)
        self._sent_in_second[endpoint.id] = (window, count + 1)
        return None

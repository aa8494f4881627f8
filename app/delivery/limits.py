"""Per-endpoint limits inside one worker: attempts in flight and requests per second."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta

from app.store.deliveries import ClaimedDelivery

MAX_IN_FLIGHT_PER_ENDPOINT = 16
_BUSY_RETRY = timedelta(milliseconds=250)


class EndpointLimits:
    """Admits claimed deliveries an endpoint can take now; the rest go back with a due time."""

    def __init__(self, max_in_flight: int = MAX_IN_FLIGHT_PER_ENDPOINT) -> None:
        self._max_in_flight = max_in_flight
        self._in_flight: Counter[str] = Counter()
        self._sent_in_second: dict[str, tuple[int, int]] = {}

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

    def finished(self, endpoint_id: str) -> None:
        """An attempt to this endpoint is over."""
        self._in_flight[endpoint_id] -= 1
        if self._in_flight[endpoint_id] <= 0:
            del self._in_flight[endpoint_id]

    def _refusal(self, item: ClaimedDelivery, now: datetime) -> datetime | None:
        endpoint = item.endpoint
        if self._in_flight[endpoint.id] >= self._max_in_flight:
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

"""Per-key request rate limiting: a fixed one-second window per API key, in this process."""

from __future__ import annotations

import math
from datetime import datetime

from app.api.problems import ApiError


class KeyRateLimiter:
    """At most `per_second` requests per key and second; 0 turns the limit off."""

    def __init__(self, per_second: int) -> None:
        self._per_second = per_second
        self._windows: dict[str, tuple[int, int]] = {}

    def check(self, key_id: str, now: datetime) -> None:
        """Count one request; 429 with Retry-After when the key is over its limit."""
        if self._per_second <= 0:
            return
        second = math.floor(now.timestamp())
        window, count = self._windows.get(key_id, (second, 0))
        if window != second:
            window, count = second, 0
        if count >= self._per_second:
            raise ApiError(
                429,
                "Too many requests",
                f"this key may make {self._per_second} requests per second",
                {"Retry-After": "1"},
            )
        self._windows[key_id] = (window, count + 1)
        if len(self._windows) > 100_000:
            self._forget_before(second)

    def _forget_before(self, second: int) -> None:
        self._windows = {key: value for key, value in self._windows.items() if value[0] >= second}

"""Object identifiers: a type prefix and a random, URL-safe, sortable-enough body."""

from __future__ import annotations

import re
import secrets
import time

_ID_PATTERN = re.compile(r"^[a-z]{2,4}_[0-9A-Za-z]{10,40}$")
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


class _Sequence:
    """Milliseconds plus a counter within the millisecond: ids of one process sort in order."""

    def __init__(self) -> None:
        self.millis = 0
        self.counter = 0

    def next(self) -> tuple[int, int]:
        millis = int(time.time() * 1000)
        if millis <= self.millis:
            self.counter += 1
            if self.counter >= len(_ALPHABET) ** 3:
                self.millis, self.counter = self.millis + 1, 0
        else:
            self.millis, self.counter = millis, 0
        return self.millis, self.counter


_sequence = _Sequence()


def new_id(prefix: str) -> str:
    """A new id like `ep_2Vx...`: time first, so ids made by one process sort in creation order
    (byte order), then 11 random characters."""
    millis, counter = _sequence.next()
    # 8 characters of time, 3 of counter, then 64 random bits (one read of the system's
    # random source) as 11 base-62 characters: one number of 22 base-62 digits.
    number = ((millis * _BASE**3 + counter) * _BASE**11) + int.from_bytes(secrets.token_bytes(8))
    return f"{prefix}_{_encode(number, 22)}"


def looks_like_id(value: str, prefix: str) -> bool:
    """Whether `value` has the shape of an id of this kind (cheap check before any query)."""
    return value.startswith(prefix + "_") and bool(_ID_PATTERN.match(value))


_BASE = len(_ALPHABET)
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]  # every two-digit base-62 number


def _encode(number: int, width: int) -> str:
    """`number` as `width` base-62 digits (even `width`), two digits per step."""
    pairs = []
    for _ in range(width // 2):
        number, remainder = divmod(number, len(_PAIRS))
        pairs.append(_PAIRS[remainder])
    return "".join(reversed(pairs))

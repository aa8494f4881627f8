"""Object identifiers: a type prefix and a random, URL-safe, sortable-enough body."""

from __future__ import annotations

import os
import re
import threading
import time

_ID_PATTERN = re.compile(r"^[a-z]{2,4}_[0-9A-Za-z]{10,40}$")
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


class _Sequence:
    """Milliseconds plus a counter within the millisecond: ids of one process sort in order."""

    def __init__(self) -> None:
        self.millis = 0
        self.counter = 0

    def next(self) -> tuple[int, int]:
        return self.after(int(time.time() * 1000))

    def take(self, count: int) -> list[tuple[int, int]]:
        """The next `count` places, with one reading of the clock."""
        millis = int(time.time() * 1000)
        return [self.after(millis) for _ in range(count)]

    def after(self, millis: int) -> tuple[int, int]:
        """The next place, the clock reading `millis`."""
        if millis <= self.millis:
            self.counter += 1
            if self.counter >= len(_ALPHABET) ** 3:
                self.millis, self.counter = self.millis + 1, 0
        else:
            self.millis, self.counter = millis, 0
        return self.millis, self.counter


_sequence = _Sequence()


class _RandomPool:
    """Bytes of the system's random source, read `size` at a time and handed out in order.

    `os.urandom` lets go of the GIL for its system call, and taking the GIL back waits on
    whichever thread got it (under load, the aiosqlite thread): one call for 512 ids, not one
    for each. A forked child starts with an empty pool, never its parent's bytes.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._bytes = b""
        self._at = 0

    def take(self, count: int) -> bytes:
        """The next `count` bytes, never handed out before."""
        with self._lock:
            if self._at + count > len(self._bytes):
                self._bytes, self._at = os.urandom(max(count, self._size)), 0
            at = self._at
            self._at = at + count
            return self._bytes[at : at + count]

    def forget(self) -> None:
        """Drop the bytes not yet handed out."""
        self._bytes, self._at = b"", 0


_random = _RandomPool(4096)
os.register_at_fork(after_in_child=_random.forget)


def new_id(prefix: str) -> str:
    """A new id like `ep_2Vx...`: time first, so ids made by one process sort in creation order
    (byte order), then 11 random characters."""
    millis, counter = _sequence.next()
    return f"{prefix}_{_body(millis, counter, int.from_bytes(_random.take(8)))}"


def new_ids(prefix: str, count: int) -> list[str]:
    """`count` new ids, as `new_id` would make them one after the other, with one reading of
    the clock for them all (1.0 µs an id, against 2.0 µs)."""
    random_bytes = _random.take(8 * count)
    return [
        f"{prefix}_{_body(millis, counter, int.from_bytes(random_bytes[at : at + 8]))}"
        for at, (millis, counter) in zip(range(0, 8 * count, 8), _sequence.take(count), strict=True)
    ]


def looks_like_id(value: str, prefix: str) -> bool:
    """Whether `value` has the shape of an id of this kind (cheap check before any query)."""
    return value.startswith(prefix + "_") and bool(_ID_PATTERN.match(value))


_BASE = len(_ALPHABET)
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]  # every two-digit base-62 number
_P2, _P4, _P10 = _BASE**2, _BASE**4, _BASE**10
_last_millis: tuple[int, str] = (-1, "")


def _body(millis: int, counter: int, random_bits: int) -> str:
    """The 22 base-62 digits of `((millis * 62**3 + counter) * 62**11) + random_bits`: 8 of
    time, 3 of counter, then 64 random bits as 11 digits (one number of 22 digits).

    Built from the three parts, which fit their digits (`counter < 62**3`,
    `random_bits < 2**64 < 62**11`): the time's digits once per millisecond, the rest with
    small divisions (0.7 µs, against 2.3 µs for 11 divisions of the whole number).
    """
    global _last_millis
    cached, time_digits = _last_millis
    if cached != millis:
        time_digits = _encode(millis, 8)
        _last_millis = (millis, time_digits)
    head, rest = divmod(random_bits, _P10)
    high, low = divmod(rest, _P4)  # 6 digits and 4 digits
    top, middle = divmod(high, _P4)  # 2 digits and 4 digits
    return "".join(
        (
            time_digits,
            _ALPHABET[counter // _P2],
            _PAIRS[counter % _P2],
            _ALPHABET[head],
            _PAIRS[top],
            _PAIRS[middle // _P2],
            _PAIRS[middle % _P2],
            _PAIRS[low // _P2],
            _PAIRS[low % _P2],
        )
    )


def _encode(number: int, width: int) -> str:
    """`number` as `width` base-62 digits (even `width`), two digits per step."""
    pairs = []
    for _ in range(width // 2):
        number, remainder = divmod(number, len(_PAIRS))
        pairs.append(_PAIRS[remainder])
    return "".join(reversed(pairs))

"""Object ids: shape, uniqueness, creation order within a process, and the encoding."""

from __future__ import annotations

import pytest

from app.domain import ids


def test_ids_have_the_documented_shape_and_are_distinct() -> None:
    made = [ids.new_id("dlv") for _ in range(20_000)]
    assert len(set(made)) == len(made)
    for value in made[:100]:
        assert ids.looks_like_id(value, "dlv")
        assert len(value) == len("dlv_") + 22
    assert not ids.looks_like_id(made[0], "evt")


def test_ids_of_one_process_sort_in_creation_order() -> None:
    made = [ids.new_id("att") for _ in range(20_000)]  # many within one millisecond
    assert made == sorted(made)


def test_the_counter_carries_into_the_next_millisecond(monkeypatch: pytest.MonkeyPatch) -> None:
    sequence = ids._Sequence()
    monkeypatch.setattr(ids.time, "time", lambda: 1.0)
    first = sequence.next()
    sequence.counter = len(ids._ALPHABET) ** 3 - 1
    assert sequence.next() == (first[0] + 1, 0)


@pytest.mark.parametrize("number", [0, 1, 61, 62, 3843, 3844, 62**22 - 1, 2**64 + 12345])
def test_encoding_is_base62_with_leading_zeros(number: int) -> None:
    encoded = ids._encode(number, 22)
    assert len(encoded) == 22
    assert sum(ids._ALPHABET.index(c) * 62**i for i, c in enumerate(reversed(encoded))) == number

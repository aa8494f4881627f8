"""Object ids: shape, uniqueness, creation order within a process, and the encoding."""

from __future__ import annotations

import random

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


@pytest.mark.parametrize(
    ("millis", "counter", "random_bits"),
    [
        (0, 0, 0),
        (1, 1, 1),
        (1_764_745_123_456, 0, 2**64 - 1),
        (1_764_745_123_456, 62**3 - 1, 62**10),
        (62**8 - 1, 3844, 62**10 - 1),
        (62**8 + 5, 61, 2**63),  # past 8 digits of time: only the lowest 8 are kept
    ],
)
def test_the_body_is_the_22_digits_of_the_whole_number(
    millis: int, counter: int, random_bits: int
) -> None:
    whole = ((millis * 62**3 + counter) * 62**11) + random_bits
    assert ids._body(millis, counter, random_bits) == ids._encode(whole, 22)


def test_the_body_matches_the_whole_number_for_random_parts() -> None:
    rng = random.Random(7)
    for _ in range(5_000):
        millis, counter = rng.randrange(62**9), rng.randrange(62**3)
        random_bits = rng.getrandbits(64)
        whole = ((millis * 62**3 + counter) * 62**11) + random_bits
        assert ids._body(millis, counter, random_bits) == ids._encode(whole, 22)


def test_ids_made_together_are_new_ids_in_creation_order() -> None:
    before = ids.new_id("dlv")
    made = ids.new_ids("dlv", 5_000)
    after = ids.new_id("dlv")
    assert len(set(made)) == len(made)
    assert [before, *made, after] == sorted([before, *made, after])
    assert all(ids.looks_like_id(value, "dlv") and len(value) == 26 for value in made)
    assert ids.new_ids("dlv", 0) == []


def test_ids_made_together_carry_the_counter(monkeypatch: pytest.MonkeyPatch) -> None:
    sequence = ids._Sequence()
    monkeypatch.setattr(ids.time, "time", lambda: 1.0)
    sequence.millis, sequence.counter = 1000, len(ids._ALPHABET) ** 3 - 2
    assert sequence.take(3) == [(1000, len(ids._ALPHABET) ** 3 - 1), (1001, 0), (1001, 1)]


def test_random_bytes_are_read_from_the_system_a_pool_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reads: list[int] = []

    def urandom(size: int) -> bytes:
        reads.append(size)
        return bytes(random.getrandbits(8) for _ in range(size))

    monkeypatch.setattr(ids.os, "urandom", urandom)
    pool = ids._RandomPool(64)
    taken = [pool.take(8) for _ in range(16)] + [pool.take(100)]
    assert reads == [64, 64, 100]  # one read a pool; a larger request reads what it needs
    assert b"".join(taken[:8]) != b"".join(taken[8:16])  # no byte handed out twice
    assert [len(part) for part in taken] == [8] * 16 + [100]


def test_ids_made_on_many_threads_at_once_are_all_distinct() -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=8) as pool:
        batches = list(pool.map(lambda _: [ids.new_id("evt") for _ in range(2_000)], range(8)))
    made = [value for batch in batches for value in batch]
    assert len(set(made)) == len(made)
    randoms = [value[-11:] for value in made]  # the 64 random bits, 11 digits
    assert len(set(randoms)) == len(randoms)


def test_a_forked_child_never_reuses_the_parents_random_bytes() -> None:
    import os

    ids.new_id("evt")  # the parent's pool holds unused bytes
    parents_next = ids._random._bytes[ids._random._at : ids._random._at + 8]
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # the child reports what it would hand out next, then leaves
        os.write(writer, ids._random.take(8))
        os._exit(0)
    os.close(writer)
    childs_next = os.read(reader, 8)
    os.waitpid(child, 0)
    os.close(reader)
    assert len(childs_next) == 8
    assert childs_next != parents_next

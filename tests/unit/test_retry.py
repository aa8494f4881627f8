from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from app.domain.retry import (
    AttemptError,
    AttemptOutcome,
    Decision,
    RetryPolicy,
    Verdict,
    parse_retry_after,
    should_disable,
)

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
SVIX = RetryPolicy((5, 300, 1800, 7200, 18000, 36000, 36000))
EXACT = RetryPolicy((5, 300, 1800), jitter=0.0)


def at(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


def status(code: int, **fields: object) -> AttemptOutcome:
    return AttemptOutcome(status=code, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("attempt", "outcome", "expected"),
    [
        (1, status(200), Decision(Verdict.SUCCEEDED)),
        (1, status(204), Decision(Verdict.SUCCEEDED)),
        (1, status(200, abort=True), Decision(Verdict.SUCCEEDED)),
        (1, status(500), Decision(Verdict.RETRY, at(5))),
        (2, status(500), Decision(Verdict.RETRY, at(300))),
        (3, status(302), Decision(Verdict.RETRY, at(1800))),
        (1, status(199), Decision(Verdict.RETRY, at(5))),
        (1, status(404), Decision(Verdict.RETRY, at(5))),
        (1, AttemptOutcome(error=AttemptError.TIMEOUT), Decision(Verdict.RETRY, at(5))),
        (4, status(500), Decision(Verdict.FAILED)),
        (9, AttemptOutcome(error=AttemptError.RESET), Decision(Verdict.FAILED)),
        (1, status(410), Decision(Verdict.DISABLE_ENDPOINT)),
        (4, status(410), Decision(Verdict.DISABLE_ENDPOINT)),
        (1, status(500, abort=True), Decision(Verdict.ABORTED)),
        (4, status(500, abort=True), Decision(Verdict.ABORTED)),
        # Retry-After on 429/503 is clamped into [delay, 2 * delay]; 300 s is the delay here.
        (2, status(429, retry_after=0.0), Decision(Verdict.RETRY, at(300))),
        (2, status(429, retry_after=450.0), Decision(Verdict.RETRY, at(450))),
        (2, status(503, retry_after=450.0), Decision(Verdict.RETRY, at(450))),
        (2, status(429, retry_after=86400.0), Decision(Verdict.RETRY, at(600))),
        # ...and ignored on other statuses.
        (2, status(500, retry_after=450.0), Decision(Verdict.RETRY, at(300))),
        (4, status(429, retry_after=10.0), Decision(Verdict.FAILED)),
    ],
)
def test_decide(attempt: int, outcome: AttemptOutcome, expected: Decision) -> None:
    assert EXACT.decide(attempt, NOW, outcome, random.Random(1)) == expected


@pytest.mark.parametrize("attempt", range(1, 8))
def test_jitter_stays_within_twenty_percent(attempt: int) -> None:
    base = SVIX.schedule[attempt - 1]
    rng = random.Random(attempt)
    delays = [SVIX.delay(attempt, status(500), rng) for _ in range(200)]
    assert all(0.8 * base <= delay <= 1.2 * base for delay in delays)
    assert min(delays) < 0.9 * base and max(delays) > 1.1 * base


def test_the_same_seed_gives_the_same_decision() -> None:
    first = SVIX.decide(3, NOW, status(500), random.Random(42))
    again = SVIX.decide(3, NOW, status(500), random.Random(42))
    assert first == again and first.next_attempt_at != at(1800)


def test_retry_after_is_not_jittered() -> None:
    decision = SVIX.decide(2, NOW, status(429, retry_after=450.0), random.Random(7))
    assert decision == Decision(Verdict.RETRY, at(450))


def test_the_svix_schedule_allows_eight_attempts() -> None:
    assert SVIX.max_attempts == 8
    assert SVIX.decide(7, NOW, status(500), random.Random(0)).verdict is Verdict.RETRY
    assert SVIX.decide(8, NOW, status(500), random.Random(0)).verdict is Verdict.FAILED


def test_an_empty_schedule_makes_one_attempt() -> None:
    policy = RetryPolicy(())
    assert policy.decide(1, NOW, status(500), random.Random(0)) == Decision(Verdict.FAILED)


@pytest.mark.parametrize(
    ("schedule", "jitter", "message"),
    [((5, -1), 0.2, "negative"), ((5,), 1.0, "jitter"), ((5,), -0.1, "jitter")],
)
def test_bad_policies_are_refused(schedule: tuple[int, ...], jitter: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetryPolicy(schedule, jitter)


def test_attempts_count_from_one() -> None:
    with pytest.raises(ValueError, match="from 1"):
        SVIX.decide(0, NOW, status(500), random.Random(0))


@pytest.mark.parametrize(
    ("fields", "valid"),
    [
        ({"status": 200}, True),
        ({"error": AttemptError.TIMEOUT}, True),
        ({}, False),
        ({"status": 200, "error": AttemptError.TIMEOUT}, False),
    ],
)
def test_an_outcome_has_a_status_or_an_error(fields: dict[str, object], valid: bool) -> None:
    if valid:
        AttemptOutcome(**fields)  # type: ignore[arg-type]
    else:
        with pytest.raises(ValueError, match="either a status or an error"):
            AttemptOutcome(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("outcome", "result"),
    [(status(503), "503"), (AttemptOutcome(error=AttemptError.REFUSED_ADDRESS), "refused_address")],
)
def test_outcome_result(outcome: AttemptOutcome, result: str) -> None:
    assert outcome.result == result


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        (" 0 ", 0.0),
        ("Thu, 01 Jan 2026 12:02:00 GMT", 120.0),
        ("Thursday, 01-Jan-26 12:02:00 GMT", 120.0),  # RFC 850 form
        ("Thu Jan  1 12:02:00 2026", 120.0),  # asctime form
        ("Thu, 01 Jan 2026 11:00:00 GMT", 0.0),  # in the past
        ("-5", None),
        ("1.5", None),
        ("soon", None),
        ("", None),
        ("١٢", None),  # non-ASCII digits
    ],
)
def test_parse_retry_after(value: str, seconds: float | None) -> None:
    assert parse_retry_after(value, NOW) == seconds


DAY = 86400


@pytest.mark.parametrize(
    ("first_failure", "last_success", "now", "disable"),
    [
        (None, None, at(10 * DAY), False),
        (None, at(0), at(10 * DAY), False),
        (at(0), None, at(5 * DAY), True),
        (at(0), None, at(5 * DAY - 1), False),
        (at(0), at(-DAY), at(6 * DAY), True),
        (at(0), at(DAY), at(6 * DAY), False),  # a success ended that run of failures
        (at(0), at(0), at(6 * DAY), False),
    ],
)
def test_should_disable(
    first_failure: datetime | None, last_success: datetime | None, now: datetime, disable: bool
) -> None:
    assert should_disable(first_failure, last_success, now, 5 * DAY) is disable

"""What happens after a delivery attempt: the retry policy and the auto-disable rule.

Pure: the clock reading and the random source are arguments, so every decision can be
replayed exactly in a test.

Rules (SPEC section 8):
- 2xx succeeds; 3xx, 4xx, 5xx and transport errors fail.
- 410 Gone disables the endpoint at once.
- `webhook-delivery: abort-message` stops that message's retries.
- Otherwise the next attempt waits `schedule[attempt - 1]` seconds, ±`jitter`; once the
  schedule is used up the delivery has failed.
- On 429 and 503 a `Retry-After` is honoured, clamped to [delay, 2 * delay] (Svix's rule),
  without jitter: the receiver named a time.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

RETRY_AFTER_STATUSES = frozenset({429, 503})
GONE = 410


class AttemptError(enum.StrEnum):
    """Why an attempt got no usable HTTP response."""

    TIMEOUT = "timeout"
    DNS = "dns"
    REFUSED_ADDRESS = "refused_address"
    CONNECT = "connect"
    TLS = "tls"
    RESET = "reset"
    INVALID_RESPONSE = "invalid_response"
    INVALID_URL = "invalid_url"
    PAYLOAD = "payload"  # the request could not be built or signed; nothing was sent


@dataclass(frozen=True)
class AttemptOutcome:
    """What one attempt produced: an HTTP status, or the error that prevented one."""

    status: int | None = None
    error: AttemptError | None = None
    duration_ms: int = 0
    response_excerpt: str = ""
    retry_after: float | None = None
    abort: bool = False

    def __post_init__(self) -> None:
        if (self.status is None) == (self.error is None):
            raise ValueError("an attempt outcome has either a status or an error")

    @property
    def succeeded(self) -> bool:
        """A 2xx answer."""
        return self.status is not None and 200 <= self.status < 300

    @property
    def result(self) -> str:
        """The status code or error kind as one string, as attempt logs show it."""
        return str(self.status) if self.error is None else self.error.value


class Verdict(enum.StrEnum):
    """What to do with a delivery after an attempt."""

    SUCCEEDED = "succeeded"
    RETRY = "retry"
    FAILED = "failed"
    ABORTED = "aborted"
    DISABLE_ENDPOINT = "disable_endpoint"


@dataclass(frozen=True)
class Decision:
    """A verdict, with the next attempt's time when the verdict is RETRY."""

    verdict: Verdict
    next_attempt_at: datetime | None = None


@dataclass(frozen=True)
class RetryPolicy:
    """Seconds to wait before each retry, and the jitter applied to them.

    `schedule[i]` is the wait after attempt `i + 1`, so a schedule of n delays allows
    n + 1 attempts.
    """

    schedule: tuple[int, ...]
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if any(delay < 0 for delay in self.schedule):
            raise ValueError("retry delays must not be negative")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be at least 0 and below 1")

    @property
    def max_attempts(self) -> int:
        """The first attempt plus one per scheduled delay."""
        return len(self.schedule) + 1

    def decide(
        self, attempt: int, now: datetime, outcome: AttemptOutcome, rng: random.Random
    ) -> Decision:
        """Decide what follows attempt number `attempt` (1-based) made at `now`.

        Raises:
            ValueError: when `attempt` is below 1.
        """
        if attempt < 1:
            raise ValueError("attempts are counted from 1")
        if outcome.succeeded:
            return Decision(Verdict.SUCCEEDED)
        if outcome.status == GONE:
            return Decision(Verdict.DISABLE_ENDPOINT)
        if outcome.abort:
            return Decision(Verdict.ABORTED)
        if attempt > len(self.schedule):
            return Decision(Verdict.FAILED)
        delay = self.delay(attempt, outcome, rng)
        return Decision(Verdict.RETRY, now + timedelta(seconds=delay))

    def delay(self, attempt: int, outcome: AttemptOutcome, rng: random.Random) -> float:
        """Seconds to wait after failed attempt `attempt`, which the schedule must cover."""
        base = float(self.schedule[attempt - 1])
        if outcome.status in RETRY_AFTER_STATUSES and outcome.retry_after is not None:
            return min(max(outcome.retry_after, base), 2 * base)
        return base * rng.uniform(1 - self.jitter, 1 + self.jitter)


def parse_retry_after(value: str, now: datetime) -> float | None:
    """Seconds to wait from a `Retry-After` value: delay-seconds or an HTTP-date.

    A date in the past gives 0. Anything unreadable gives None.
    """
    text = value.strip()
    if text.isascii() and text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" means UTC with no stated zone
        when = when.replace(tzinfo=UTC)
    return max((when - now).total_seconds(), 0.0)


def should_disable(
    first_failure_at: datetime | None,
    last_success_at: datetime | None,
    now: datetime,
    disable_after_seconds: float,
) -> bool:
    """True when every attempt to an endpoint has failed for `disable_after_seconds`.

    Arguments:
        first_failure_at: the first failed attempt of the current run of failures, or
            None when the last attempt succeeded.
        last_success_at: the last successful attempt; a success at or after
            `first_failure_at` ends that run of failures.
    """
    if first_failure_at is None:
        return False
    if last_success_at is not None and last_success_at >= first_failure_at:
        return False
    return (now - first_failure_at).total_seconds() >= disable_after_seconds

"""Per-endpoint in-flight caps: a slow or hanging endpoint holds few slots; quick answers
win its slots back."""

from __future__ import annotations

from datetime import UTC, datetime

from app.delivery.limits import (
    MAX_IN_FLIGHT_PER_ENDPOINT,
    SLOW_ANSWER_MS,
    SLOW_IN_FLIGHT_PER_ENDPOINT,
    EndpointLimits,
)
from app.domain.models import Endpoint, Event
from app.domain.retry import AttemptError, AttemptOutcome
from app.store.deliveries import ClaimedDelivery

NOW = datetime(2026, 1, 1, tzinfo=UTC)
QUICK = AttemptOutcome(status=200, duration_ms=5)
SLOW = AttemptOutcome(status=200, duration_ms=SLOW_ANSWER_MS)
TIMED_OUT = AttemptOutcome(error=AttemptError.TIMEOUT, duration_ms=5_000)


def claimed(endpoint_id: str, number: int = 0, rate_limit: int | None = None) -> ClaimedDelivery:
    return ClaimedDelivery(
        id=f"dlv_{endpoint_id}_{number}",
        attempt_count=0,
        event=Event(id="evt_1", organization_id="org", type="ping", occurred_at=NOW, data={}),
        endpoint=Endpoint(
            id=endpoint_id, organization_id="org", url="https://r.example", rate_limit=rate_limit
        ),
        credentials=None,
        secrets=("s",),
    )


def admit(limits: EndpointLimits, endpoint_id: str, count: int) -> int:
    admitted, _ = limits.admit([claimed(endpoint_id, n) for n in range(count)], NOW)
    return len(admitted)


def test_an_endpoint_takes_up_to_the_cap_and_is_then_left_out_of_claims() -> None:
    limits = EndpointLimits()
    assert admit(limits, "ep_a", MAX_IN_FLIGHT_PER_ENDPOINT + 4) == MAX_IN_FLIGHT_PER_ENDPOINT
    assert limits.full() == ["ep_a"]
    limits.finished("ep_a", QUICK)
    assert limits.full() == []


def test_a_timeout_drops_the_cap_and_quick_answers_double_it_back() -> None:
    limits = EndpointLimits()
    admit(limits, "ep_a", 1)
    limits.finished("ep_a", TIMED_OUT)
    assert limits.cap("ep_a") == SLOW_IN_FLIGHT_PER_ENDPOINT
    caps = []
    while not caps or caps[-1] < MAX_IN_FLIGHT_PER_ENDPOINT:
        admit(limits, "ep_a", 1)
        limits.finished("ep_a", QUICK)
        caps.append(limits.cap("ep_a"))
    expected = [SLOW_IN_FLIGHT_PER_ENDPOINT * 2**n for n in range(1, len(caps))]
    assert caps == [*expected, MAX_IN_FLIGHT_PER_ENDPOINT]


def test_a_slow_answer_drops_the_cap_too() -> None:
    limits = EndpointLimits()
    admit(limits, "ep_a", 1)
    limits.finished("ep_a", SLOW)
    assert limits.cap("ep_a") == SLOW_IN_FLIGHT_PER_ENDPOINT


def test_a_hanging_endpoint_holds_few_slots_and_others_are_not_held_up() -> None:
    limits = EndpointLimits()
    admit(limits, "ep_hang", 1)
    limits.finished("ep_hang", TIMED_OUT)
    assert admit(limits, "ep_hang", 16) == SLOW_IN_FLIGHT_PER_ENDPOINT
    assert admit(limits, "ep_ok", 2 * MAX_IN_FLIGHT_PER_ENDPOINT) == MAX_IN_FLIGHT_PER_ENDPOINT
    assert sorted(limits.full()) == ["ep_hang", "ep_ok"]
    limits.finished("ep_ok", QUICK)
    assert limits.full() == ["ep_hang"]


def test_nothing_sent_leaves_the_cap_alone() -> None:
    limits = EndpointLimits()
    admit(limits, "ep_a", 1)
    limits.finished("ep_a", TIMED_OUT)
    admit(limits, "ep_a", 1)
    limits.finished("ep_a")
    assert limits.cap("ep_a") == SLOW_IN_FLIGHT_PER_ENDPOINT


def test_the_rate_limit_still_applies() -> None:
    limits = EndpointLimits()
    admitted, deferred = limits.admit([claimed("ep_r", n, rate_limit=3) for n in range(5)], NOW)
    assert len(admitted) == 3
    assert [len(items) for items in deferred.values()] == [2]

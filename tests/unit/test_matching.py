"""Which endpoints receive an event: tenant, account, event type patterns and FHIR filters."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from app.domain.catalog import Catalog, load_catalog
from app.domain.matching import (
    CriteriaCache,
    accepting_endpoints,
    accepts_event_type,
    endpoint_accepts,
    subscription_patterns,
    validate_event_type_filter,
)
from app.domain.models import Endpoint, Event

OBSERVATION = {
    "resourceType": "Observation",
    "id": "o1",
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
}


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog([])


def endpoint(**overrides: Any) -> Endpoint:
    fields: dict[str, Any] = {"id": "ep_1", "organization_id": "org_a", "url": "https://r.example"}
    return Endpoint(**(fields | overrides))


def event(**overrides: Any) -> Event:
    fields: dict[str, Any] = {
        "id": "evt_1",
        "organization_id": "org_a",
        "type": "observation.created",
        "occurred_at": datetime(2025, 6, 1, tzinfo=UTC),
        "data": OBSERVATION,
        "focus": "Observation/o1",
    }
    return Event(**(fields | overrides))


@pytest.mark.parametrize(
    ("event_type", "patterns"),
    [
        ("ping", ("ping",)),
        ("delivery.failed", ("delivery.failed", "delivery.*")),
        ("endpoint.disabled", ("endpoint.disabled", "endpoint.*")),
        ("user-delete-completed", ("user-delete-completed", "*")),
        ("encounter.created", ("encounter.created", "encounter.*", "*")),
        ("records.sync.failed", ("records.sync.failed", "records.*", "records.sync.*", "*")),
    ],
)
def test_subscription_patterns(event_type: str, patterns: tuple[str, ...]) -> None:
    assert subscription_patterns(event_type) == patterns


@pytest.mark.parametrize(
    ("filters", "event_type", "accepted"),
    [
        (("*",), "records.sync.failed", True),
        (("records.*",), "records.sync.failed", True),
        (("records.sync.*",), "records.sync.failed", True),
        (("records.sync.failed",), "records.sync.failed", True),
        (("records.sync.completed",), "records.sync.failed", False),
        (("records.sync.failed.*",), "records.sync.failed", False),
        (("record.*",), "records.sync.failed", False),
        (("encounter.*", "ping"), "ping", True),
        ((), "ping", False),
    ],
)
def test_accepts_event_type(filters: tuple[str, ...], event_type: str, accepted: bool) -> None:
    assert accepts_event_type(filters, event_type) is accepted


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("*", None),
        ("ping", None),
        ("records.*", None),
        ("records.sync.*", None),
        ("encounter.*", None),
        ("records.sync.failed", None),
        ("records.sync.exploded", "unknown event type"),
        ("nothing.*", "matches no event type"),
        ("records.sync.failed.*", "matches no event type"),
        ("records*", "not a valid pattern"),
        ("*.failed", "not a valid pattern"),
        ("records.**", "not a valid pattern"),
        (".*", "not a valid pattern"),
        ("", "not a valid"),
        ("records sync", "not a valid"),
    ],
)
def test_validate_event_type_filter(catalog: Catalog, value: str, reason: str | None) -> None:
    result = validate_event_type_filter(value, catalog)
    if reason is None:
        assert result is None
    else:
        assert result is not None and reason in result


def test_never_across_organizations() -> None:
    cache = CriteriaCache()
    assert not endpoint_accepts(endpoint(organization_id="org_b"), event(), OBSERVATION, cache)
    assert endpoint_accepts(endpoint(), event(), OBSERVATION, cache)


@pytest.mark.parametrize(
    ("endpoint_account", "event_account", "accepted"),
    [
        (None, None, True),
        (None, "acc_1", True),
        ("acc_1", "acc_1", True),
        ("acc_1", "acc_2", False),
        ("acc_1", None, False),
    ],
)
def test_account_rule(
    endpoint_account: str | None, event_account: str | None, accepted: bool
) -> None:
    result = endpoint_accepts(
        endpoint(account_id=endpoint_account),
        event(account_id=event_account),
        OBSERVATION,
        CriteriaCache(),
    )
    assert result is accepted


@pytest.mark.parametrize(
    ("event_types", "accepted"),
    [
        (("*",), True),
        (("observation.*",), True),
        (("observation.created",), True),
        (("observation.updated",), False),
        (("patient.*", "encounter.created"), False),
    ],
)
def test_event_type_filter(event_types: tuple[str, ...], accepted: bool) -> None:
    result = endpoint_accepts(
        endpoint(event_types=event_types), event(), OBSERVATION, CriteriaCache()
    )
    assert result is accepted


@pytest.mark.parametrize(
    ("criteria", "resource", "accepted"),
    [
        ("Observation?status=final", OBSERVATION, True),
        ("Observation?status=amended", OBSERVATION, False),
        ("status=final", OBSERVATION, True),
        ("Observation?code=http://loinc.org|8867-4", OBSERVATION, True),
        ("Observation?code=http://loinc.org|0000-0", OBSERVATION, False),
        # the filter is for another resource type than the focus
        ("Patient?active=true", OBSERVATION, False),
        # no focus resource (a delete without a body): the filter cannot be evaluated
        ("Observation?status=final", None, False),
        # a filter that does not parse never lets anything through
        ("Observation?nosuchparameter=1", OBSERVATION, False),
    ],
)
def test_fhir_filter_never_fails_open(
    criteria: str, resource: dict[str, Any] | None, accepted: bool
) -> None:
    result = endpoint_accepts(endpoint(filter=criteria), event(), resource, CriteriaCache())
    assert result is accepted


def test_criteria_cache_parses_once() -> None:
    cache = CriteriaCache()
    first = cache.get("Observation?status=final", "Observation")
    assert first is not None
    assert cache.get("Observation?status=final", "Observation") is first
    assert cache.get("Observation?nosuchparameter=1", "Observation") is None


def test_criteria_cache_evicts_least_recently_used() -> None:
    cache = CriteriaCache(max_size=2)
    final = cache.get("status=final", "Observation")
    amended = cache.get("status=amended", "Observation")
    assert cache.get("status=final", "Observation") is final
    cache.get("status=preliminary", "Observation")
    assert cache.get("status=final", "Observation") is final
    assert cache.get("status=amended", "Observation") is not amended


class CountingCache(CriteriaCache):
    def __init__(self) -> None:
        super().__init__()
        self.lookups: list[str] = []

    def get(self, text: str, resource_type: str) -> Any:
        self.lookups.append(text)
        return super().get(text, resource_type)


def test_accepting_endpoints_agrees_with_endpoint_accepts_and_evaluates_each_filter_once() -> None:
    final, amended = "Observation?status=final", "Observation?status=amended"
    endpoints = [
        endpoint(id=f"ep_{number}", **fields)
        for number, fields in enumerate(
            [
                {"filter": final},
                {"filter": final, "event_types": ("observation.*",)},
                {"filter": amended},
                {"filter": final, "account_id": "acc-9"},
                {"filter": None},
                {"filter": final, "organization_id": "org_b"},
                {"filter": amended, "event_types": ("patient.*",)},
                {"filter": final},
            ]
        )
    ]
    cache = CountingCache()
    accepted = accepting_endpoints(endpoints, event(), OBSERVATION, cache)
    one_by_one = [
        e for e in endpoints if endpoint_accepts(e, event(), OBSERVATION, CriteriaCache())
    ]
    assert accepted == one_by_one
    assert [e.id for e in accepted] == ["ep_0", "ep_1", "ep_4", "ep_7"]
    assert sorted(cache.lookups) == [amended, final]

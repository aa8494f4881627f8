"""Delivery attempts as AuditEvents, valid R4 (checked with the R4B models)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from fhir.resources.R4B.auditevent import AuditEvent

from app.fhir.audit import LIFECYCLE, audit_event_for_attempt, endpoint_reference

BASE = "https://tidings.example"
RECORDED = datetime(2025, 6, 1, 12, 0, 1, tzinfo=UTC)
STARTED = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def attempt(**overrides: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "attempt_id": "att_2Vx9abcdEFGH",
        "recorded": RECORDED,
        "outcome_code": "0",
        "outcome_desc": "Attempt 1 received status 200",
        "focus_reference": "Patient/pat-1",
        "endpoint_reference": endpoint_reference("ep_2Vx9abcdEFGH", is_subscription=True),
        "endpoint_url": "https://user:pw@hooks.example.org/in",
        "base_url": BASE,
        **overrides,
    }
    return audit_event_for_attempt(**arguments)


@pytest.mark.parametrize(
    ("outcome", "description"),
    [
        ("0", "Attempt 1 received status 200"),
        ("4", "Attempt 2 received status 503; retrying"),
        ("8", "Attempt 8 timed out; retries exhausted"),
    ],
)
def test_outcomes_are_valid_audit_events(outcome: str, description: str) -> None:
    event = attempt(outcome_code=outcome, outcome_desc=description, started=STARTED)
    AuditEvent.model_validate(event)
    assert (event["outcome"], event["outcomeDesc"]) == (outcome, description)
    assert event["period"] == {"start": "2025-06-01T12:00:00Z", "end": "2025-06-01T12:00:01Z"}


def test_type_agents_source_and_entities() -> None:
    event = attempt()
    assert event["id"] == "att-2Vx9abcdEFGH"
    assert event["type"]["system"] == LIFECYCLE and event["type"]["code"] == "transmit"
    assert event["recorded"] == "2025-06-01T12:00:01Z"
    publisher, receiver = event["agent"]
    assert publisher["requestor"] is True and receiver["requestor"] is False
    assert receiver["network"] == {"address": "https://hooks.example.org/in", "type": "5"}
    assert event["source"]["site"] == BASE
    assert [entity["what"]["reference"] for entity in event["entity"]] == [
        "Patient/pat-1",
        "Subscription/ep-2Vx9abcdEFGH",
    ]
    assert [entity["role"]["code"] for entity in event["entity"]] == ["4", "16"]
    assert "pw" not in repr(event)


def test_without_focus_only_the_endpoint_is_an_entity() -> None:
    event = attempt(
        focus_reference=None,
        endpoint_reference=endpoint_reference("ep_2Vx9abcdEFGH", is_subscription=False),
    )
    AuditEvent.model_validate(event)
    assert [entity["what"]["reference"] for entity in event["entity"]] == [
        "Endpoint/ep-2Vx9abcdEFGH"
    ]


def test_a_raw_tidings_id_in_the_reference_is_made_a_fhir_id() -> None:
    event = attempt(endpoint_reference="Subscription/ep_2Vx9abcdEFGH")
    assert event["entity"][1]["what"]["reference"] == "Subscription/ep-2Vx9abcdEFGH"

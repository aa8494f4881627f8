"""Delivery attempts as FHIR `AuditEvent`s (SPEC section 7: `GET /fhir/AuditEvent`).

Choices, each the most standard code that says what happened:

- `type`: ISO 21089 lifecycle `transmit` (`http://terminology.hl7.org/CodeSystem/iso-21089-lifecycle`),
  what Medplum records per attempt and the code the record-lifecycle vocabulary has for sending a
  record to another party. (DICOM 110106 "Export" is about media export; `rest` is a client's
  RESTful call to a FHIR server, neither fits a webhook.) `action` is `E` (execute).
- `outcome`: `0` success, `4` minor failure (will be retried), `8` serious failure (given up).
- agents (DICOM role ids): Tidings is the Source Role (110153) and the requestor; the receiving
  endpoint is the Destination Role (110152), named by its URL as a network address (type 5, URI).
- entities: the focus resource (object-role 4, Domain Resource) and the Subscription or Endpoint
  the attempt was for (object-role 16, Data Destination; Medplum uses 9 "Subscriber", which is the
  insurance subscriber role). Use `endpoint_reference()`: `Subscription/<id>` for an endpoint with
  a FHIR Subscription face, `Endpoint/<id>` (FHIR's resource for a technical endpoint) otherwise.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from app.fhir.messages import format_instant, strip_userinfo
from app.fhir.subscriptions import fhir_id

AuditOutcome = Literal["0", "4", "8"]

LIFECYCLE = "http://terminology.hl7.org/CodeSystem/iso-21089-lifecycle"
DICOM = "http://dicom.nema.org/resources/ontology/DCM"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
TRANSMIT = {"system": LIFECYCLE, "code": "transmit", "display": "Transmit Record Lifecycle Event"}


def endpoint_reference(endpoint_id: str, *, is_subscription: bool) -> str:
    """`Subscription/<id>` for an endpoint with a FHIR Subscription face, else `Endpoint/<id>`."""
    kind = "Subscription" if is_subscription else "Endpoint"
    return f"{kind}/{fhir_id(endpoint_id)}"


def audit_event_for_attempt(
    *,
    attempt_id: str,
    recorded: datetime,
    outcome_code: AuditOutcome,
    outcome_desc: str,
    focus_reference: str | None,
    endpoint_reference: str,
    endpoint_url: str,
    base_url: str,
    started: datetime | None = None,
) -> dict[str, Any]:
    """The R4 `AuditEvent` for one delivery attempt (`started` gives the attempt's period)."""
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": fhir_id(attempt_id),
        "type": TRANSMIT,
        "action": "E",
    }
    if started is not None:
        event["period"] = {"start": format_instant(started), "end": format_instant(recorded)}
    event["recorded"] = format_instant(recorded)
    event["outcome"] = outcome_code
    event["outcomeDesc"] = outcome_desc
    event["agent"] = [_publisher(base_url), _receiver(endpoint_url)]
    event["source"] = {
        "site": base_url.rstrip("/"),
        "observer": {"display": "Tidings"},
        "type": [{"system": SOURCE_TYPE, "code": "4", "display": "Application Server"}],
    }
    event["entity"] = _entities(focus_reference, endpoint_reference)
    return event


def _publisher(base_url: str) -> dict[str, Any]:
    return {
        "type": _concept(DICOM, "110153", "Source Role ID"),
        "who": {"display": "Tidings"},
        "requestor": True,
        "network": {"address": base_url.rstrip("/"), "type": "5"},
    }


def _receiver(endpoint_url: str) -> dict[str, Any]:
    return {
        "type": _concept(DICOM, "110152", "Destination Role ID"),
        "requestor": False,
        "network": {"address": strip_userinfo(endpoint_url), "type": "5"},
    }


def _entities(focus_reference: str | None, endpoint_reference: str) -> list[dict[str, Any]]:
    entities = []
    if focus_reference:
        entities.append(_entity(focus_reference, "4", "Domain Resource"))
    entities.append(_entity(_fhir_reference(endpoint_reference), "16", "Data Destination"))
    return entities


def _entity(reference: str, role: str, role_display: str) -> dict[str, Any]:
    return {
        "what": {"reference": reference},
        "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
        "role": {"system": OBJECT_ROLE, "code": role, "display": role_display},
    }


def _fhir_reference(reference: str) -> str:
    """`Type/id` with the id made a FHIR id (`Subscription/ep_x` becomes `Subscription/ep-x`)."""
    resource_type, slash, resource_id = reference.partition("/")
    return f"{resource_type}/{fhir_id(resource_id)}" if slash else reference


def _concept(system: str, code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}]}

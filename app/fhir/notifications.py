"""Subscription notification Bundles: what a FHIR Subscription's endpoint receives.

One shape per version (SPEC section 7; backport IG notifications and payloads pages):

- R4 and R4-backport: Bundle `history`, first entry a `Parameters` with the backport
  `subscription-status-r4` profile; every entry carries `request` and `response` (bdl-3/bdl-4).
- R4B: Bundle `history`, first entry a `SubscriptionStatus`; entries carry `request`/`response`.
- R5: Bundle `subscription-notification`, first entry a `SubscriptionStatus`; event entries carry
  `request` (allowed there), no `response`.

Content levels: `empty` sends the status entry alone, with event numbers but no focus and no
topic; `id-only` adds one entry per focus with `fullUrl` and `request` but no `resource`;
`full-resource` includes the resources it has.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from app.fhir.messages import format_instant
from app.fhir.subscriptions import ContentCode, FhirVersion, fhir_id

NotificationKind = Literal[
    "handshake", "heartbeat", "event-notification", "query-status", "query-event"
]

BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
R4_BUNDLE_PROFILE = BACKPORT + "backport-subscription-notification-r4"
R4_STATUS_PROFILE = BACKPORT + "backport-subscription-status-r4"

_REQUEST = {
    "create": ("POST", "{type}", "201"),
    "update": ("PUT", "{type}/{id}", "200"),
    "delete": ("DELETE", "{type}/{id}", "204"),
}


@dataclass(frozen=True)
class NotificationEvent:
    """One stored event of a Subscription: its number, time, focus and (maybe) the resource.

    `interaction` (create, update or delete) picks the entry's `request`; an unknown one is
    shown as an update. `additional_context` holds further references (e.g. the Patient).
    """

    number: int
    timestamp: datetime
    focus_reference: str | None
    resource: Mapping[str, Any] | None = None
    interaction: str | None = None
    additional_context: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Notice:
    version: FhirVersion
    subscription_id: str
    topic: str | None
    status: str
    kind: NotificationKind
    events_since_start: int
    events: Sequence[NotificationEvent]
    content: ContentCode
    fhir_base: str
    bundle_id: str
    timestamp: datetime
    error: str | None

    @property
    def subscription_url(self) -> str:
        return f"{self.fhir_base}/Subscription/{fhir_id(self.subscription_id)}"

    @property
    def status_id(self) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"tidings:{self.bundle_id}:status"))

    @property
    def is_r4(self) -> bool:
        return self.version in ("R4", "R4-backport")


def build_notification(
    version: FhirVersion,
    *,
    subscription_id: str,
    topic: str | None,
    status: str,
    kind: NotificationKind,
    events_since_start: int,
    events: Sequence[NotificationEvent],
    content: ContentCode,
    base_url: str,
    bundle_id: str,
    timestamp: datetime,
    error: str | None = None,
) -> dict[str, Any]:
    """A notification Bundle: handshake, heartbeat, event-notification or `$events` answer.

    `base_url` is Tidings' public URL (the FHIR base is `{base_url}/fhir`). Handshakes and
    heartbeats take no events. `events_since_start` is the Subscription's stored counter.
    """
    notice = _Notice(
        version=version,
        subscription_id=subscription_id,
        topic=topic,
        status=status,
        kind=kind,
        events_since_start=events_since_start,
        events=events if kind in ("event-notification", "query-event") else (),
        content=content,
        fhir_base=base_url.rstrip("/") + "/fhir",
        bundle_id=bundle_id,
        timestamp=timestamp,
        error=error,
    )
    entries = [_status_entry(notice), *_event_entries(notice)]
    bundle_type = "subscription-notification" if version == "R5" else "history"
    return _bundle(notice, bundle_type, entries)


def build_status_bundle(
    version: FhirVersion,
    *,
    subscription_id: str,
    topic: str | None,
    status: str,
    events_since_start: int,
    base_url: str,
    bundle_id: str,
    timestamp: datetime,
    error: str | None = None,
) -> dict[str, Any]:
    """The `$status` answer: a `searchset` Bundle holding one `query-status` status resource."""
    notice = _Notice(
        version=version,
        subscription_id=subscription_id,
        topic=topic,
        status=status,
        kind="query-status",
        events_since_start=events_since_start,
        events=(),
        content="full-resource",
        fhir_base=base_url.rstrip("/") + "/fhir",
        bundle_id=bundle_id,
        timestamp=timestamp,
        error=error,
    )
    entry = {
        "fullUrl": f"urn:uuid:{notice.status_id}",
        "resource": _status_resource(notice),
        "search": {"mode": "match"},
    }
    bundle = _bundle(notice, "searchset", [entry])
    bundle.pop("meta", None)
    return {**bundle, "total": 1}


def _bundle(notice: _Notice, bundle_type: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
    bundle: dict[str, Any] = {"resourceType": "Bundle", "id": notice.bundle_id}
    if notice.is_r4:
        bundle["meta"] = {"profile": [R4_BUNDLE_PROFILE]}
    bundle["type"] = bundle_type
    bundle["timestamp"] = format_instant(notice.timestamp)
    bundle["entry"] = entries
    return bundle


def _status_entry(notice: _Notice) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "fullUrl": f"urn:uuid:{notice.status_id}",
        "resource": _status_resource(notice),
    }
    if notice.version != "R5":
        entry["request"] = {"method": "GET", "url": f"{notice.subscription_url}/$status"}
        entry["response"] = {"status": "200"}
    return entry


def _status_resource(notice: _Notice) -> dict[str, Any]:
    return _status_parameters(notice) if notice.is_r4 else _subscription_status(notice)


def _shows_topic(notice: _Notice) -> bool:
    return notice.topic is not None and notice.content != "empty"


def _subscription_status(notice: _Notice) -> dict[str, Any]:
    """R4B/R5 `SubscriptionStatus` (counts are integer64, written as JSON strings)."""
    status: dict[str, Any] = {
        "resourceType": "SubscriptionStatus",
        "id": notice.status_id,
        "status": notice.status,
        "type": notice.kind,
        "eventsSinceSubscriptionStart": str(notice.events_since_start),
    }
    if notice.events:
        status["notificationEvent"] = [_status_event(notice, event) for event in notice.events]
    status["subscription"] = {"reference": notice.subscription_url}
    if _shows_topic(notice):
        status["topic"] = notice.topic
    if notice.error is not None:
        status["error"] = [{"text": notice.error}]
    return status


def _status_event(notice: _Notice, event: NotificationEvent) -> dict[str, Any]:
    item: dict[str, Any] = {
        "eventNumber": str(event.number),
        "timestamp": format_instant(event.timestamp),
    }
    if notice.content != "empty" and event.focus_reference is not None:
        item["focus"] = {"reference": event.focus_reference}
        if event.additional_context:
            item["additionalContext"] = [{"reference": r} for r in event.additional_context]
    return item


def _status_parameters(notice: _Notice) -> dict[str, Any]:
    """R4 backport `Parameters` (profile backport-subscription-status-r4)."""
    parameters: list[dict[str, Any]] = [
        {"name": "subscription", "valueReference": {"reference": notice.subscription_url}},
    ]
    if _shows_topic(notice):
        parameters.append({"name": "topic", "valueCanonical": notice.topic})
    parameters += [
        {"name": "status", "valueCode": notice.status},
        {"name": "type", "valueCode": notice.kind},
        {"name": "events-since-subscription-start", "valueString": str(notice.events_since_start)},
    ]
    parameters += [_parameter_event(notice, event) for event in notice.events]
    if notice.error is not None:
        parameters.append({"name": "error", "valueCodeableConcept": {"text": notice.error}})
    return {
        "resourceType": "Parameters",
        "id": notice.status_id,
        "meta": {"profile": [R4_STATUS_PROFILE]},
        "parameter": parameters,
    }


def _parameter_event(notice: _Notice, event: NotificationEvent) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [
        {"name": "event-number", "valueString": str(event.number)},
        {"name": "timestamp", "valueInstant": format_instant(event.timestamp)},
    ]
    if notice.content != "empty" and event.focus_reference is not None:
        parts.append({"name": "focus", "valueReference": {"reference": event.focus_reference}})
        parts += [
            {"name": "additional-context", "valueReference": {"reference": reference}}
            for reference in event.additional_context
        ]
    return {"name": "notification-event", "part": parts}


def _event_entries(notice: _Notice) -> list[dict[str, Any]]:
    """One entry per event focus; R5 keeps one entry per fullUrl (the latest event's)."""
    if notice.content == "empty":
        return []
    entries = [_event_entry(notice, event) for event in notice.events if event.focus_reference]
    if notice.version != "R5":
        return entries
    latest = {entry["fullUrl"]: entry for entry in entries}
    return list(latest.values())


def _event_entry(notice: _Notice, event: NotificationEvent) -> dict[str, Any]:
    reference = event.focus_reference or ""
    entry: dict[str, Any] = {"fullUrl": _full_url(notice.fhir_base, reference)}
    if _carries_resource(notice, event) and event.resource is not None:
        entry["resource"] = dict(event.resource)
    method, url, status = _REQUEST.get(event.interaction or "update", _REQUEST["update"])
    resource_type, resource_id = _split(reference)
    entry["request"] = {"method": method, "url": url.format(type=resource_type, id=resource_id)}
    if notice.version != "R5":
        entry["response"] = {"status": status}
    return entry


def _carries_resource(notice: _Notice, event: NotificationEvent) -> bool:
    """Full-resource content carries the resource, except on deletes (history has none)."""
    return notice.content == "full-resource" and event.interaction != "delete"


def _split(reference: str) -> tuple[str, str]:
    """(type, id) of a literal reference, relative or absolute, versioned or not."""
    parts = reference.split("/_history/", 1)[0].rstrip("/").split("/")
    return (parts[-2] if len(parts) > 1 else parts[-1]), parts[-1]


def _full_url(fhir_base: str, reference: str) -> str:
    """An absolute fullUrl: the reference itself when absolute, else under the FHIR base."""
    if "://" in reference or reference.startswith("urn:"):
        return reference
    return f"{fhir_base}/{reference}"

"""FHIR Subscription notifications: their bodies, their effect on status, and heartbeats.

Bodies (SPEC section 7):
- topic-based Subscriptions (R4 backport, R4B, R5) get the notification Bundle of their
  version: handshake, heartbeat or event-notification, numbered from the delivery's stored
  event number, at the Subscription's content level;
- R4 criteria-based Subscriptions get what R4 servers send: the bare resource when
  `channel.payload` is set, an empty body when it is not (R4 "just a notification"). Tidings
  POSTs in both cases (SPEC section 8: every attempt is a POST), as Medplum does, rather than
  R4's `PUT [endpoint]/[type]/[id]`;
- a Subscription carrying Medplum extensions gets Medplum's shape: the bare resource (`{}` for
  a delete) with `X-Medplum-Subscription`, `X-Medplum-Interaction` and, on deletes,
  `X-Medplum-Deleted-Resource`.

Status: a handshake's first 2xx makes a `requested` Subscription `active`; a handshake whose
retries are used up makes it `error`. A 410 or auto-disable makes it `off` (see
`operational.disable_endpoint`).
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

from sqlmodel.ext.asyncio.session import AsyncSession

from app.domain import payloads
from app.domain.models import Event
from app.domain.retry import Verdict
from app.domain.subscriptions import HANDSHAKE, HEARTBEAT, notification_event
from app.fhir.notifications import NotificationKind, build_notification
from app.fhir.subscriptions import FhirVersion, fhir_id, subscription_shape
from app.store import subscriptions
from app.store.db import SessionFactory, transaction
from app.store.deliveries import AttemptRecord, ClaimedDelivery
from app.store.subscriptions import SubscriptionFace

_MEDPLUM_PREFIXES = (
    "https://medplum.com/fhir/StructureDefinition",
    "https://www.medplum.com/fhir/StructureDefinition",
)
_BUNDLE_NAMESPACE = uuid.UUID("b6a3c2e4-5f0d-4d7e-9a55-3f6f2c1e8d40")
_KINDS: dict[str, NotificationKind] = {HANDSHAKE: "handshake", HEARTBEAT: "heartbeat"}
_INTERACTIONS = {"created": "create", "updated": "update", "deleted": "delete"}


def build_fhir_payload(
    claimed: ClaimedDelivery, *, public_url: str, now: datetime
) -> tuple[payloads.Payload, dict[str, str]]:
    """(body, extra headers) of a `fhir-notification` delivery to a Subscription.

    Raises ValueError when the endpoint has no Subscription face.
    """
    face = claimed.subscription
    if face is None:
        raise ValueError("fhir-notification payloads go to FHIR Subscriptions only")
    if subscription_shape(face.resource) == "R4":
        return _criteria_payload(claimed, face)
    bundle = _bundle(claimed, face, public_url=public_url, now=now)
    return _json(bundle, _mime_type(face)), {}


def _bundle(
    claimed: ClaimedDelivery, face: SubscriptionFace, *, public_url: str, now: datetime
) -> dict[str, Any]:
    kind = _KINDS.get(claimed.event.type, "event-notification")
    number = claimed.event_number
    events = [notification_event(claimed.event, number)] if number is not None else []
    return build_notification(
        _version(face),
        subscription_id=claimed.endpoint.id,
        topic=_topic(face.resource),
        status="requested" if kind == "handshake" else face.status,
        kind=kind,
        events_since_start=number if number is not None else face.events_since_start,
        events=events,
        content=claimed.endpoint.content.value,
        base_url=public_url,
        bundle_id=str(uuid.uuid5(_BUNDLE_NAMESPACE, claimed.id)),
        timestamp=now,
        error=face.error if face.status == "error" else None,
    )


def _version(face: SubscriptionFace) -> FhirVersion:
    return face.version  # type: ignore[return-value]


def _topic(resource: dict[str, Any]) -> str | None:
    value = resource.get("topic") if "topic" in resource else resource.get("criteria")
    if not isinstance(value, str) or "://" not in value:
        return None
    return value.split("|", 1)[0].strip()


def _mime_type(face: SubscriptionFace) -> str:
    channel = face.resource.get("channel") or {}
    value = face.resource.get("contentType") or channel.get("payload")
    return str(value) if value else payloads.FHIR_JSON


def _criteria_payload(
    claimed: ClaimedDelivery, face: SubscriptionFace
) -> tuple[payloads.Payload, dict[str, str]]:
    """The R4 criteria-based body: Medplum's shape, the bare resource, or nothing."""
    event = claimed.event
    interaction = _INTERACTIONS.get(event.type.rsplit(".", 1)[-1], "update")
    if is_medplum_style(face.resource):
        headers = {
            "X-Medplum-Subscription": fhir_id(claimed.endpoint.id),
            "X-Medplum-Interaction": interaction,
        }
        if interaction == "delete":
            headers["X-Medplum-Deleted-Resource"] = _reference(event)
            return _json({}, payloads.FHIR_JSON), headers
        return _json(event.data, payloads.FHIR_JSON), headers
    if claimed.endpoint.content.value == "full-resource" and event.type not in _KINDS:
        return _json(event.data, _mime_type(face)), {}
    return payloads.Payload(body=b"", content_type=_mime_type(face)), {}


def is_medplum_style(resource: dict[str, Any]) -> bool:
    """Whether a Subscription carries any of Medplum's extensions (secret, interactions...)."""
    urls = [ext.get("url") for ext in resource.get("extension") or [] if isinstance(ext, dict)]
    return any(isinstance(url, str) and url.startswith(_MEDPLUM_PREFIXES) for url in urls)


def _reference(event: Event) -> str:
    if event.focus:
        return event.focus
    return f"{event.data.get('resourceType')}/{event.data.get('id')}"


def _json(body: Any, content_type: str) -> payloads.Payload:
    text = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    return payloads.Payload(body=text.encode("utf-8"), content_type=content_type)


async def after_attempt(
    session: AsyncSession,
    claimed: ClaimedDelivery,
    record: AttemptRecord,
    verdict: Verdict,
    now: datetime,
) -> None:
    """Move a Subscription's status after an attempt of one of its notifications."""
    if claimed.subscription is None:
        return
    endpoint_id = claimed.endpoint.id
    if verdict is Verdict.SUCCEEDED:
        await subscriptions.touch_notified(session, endpoint_id, now)
        if claimed.event.type == HANDSHAKE:
            await subscriptions.set_status(
                session, endpoint_id, "active", None, now, when="requested"
            )
    elif claimed.event.type == HANDSHAKE and verdict in (Verdict.FAILED, Verdict.ABORTED):
        attempts = claimed.attempt_count + 1
        error = f"the handshake failed: attempt {attempts} got {record.outcome.result}"
        await subscriptions.set_status(session, endpoint_id, "error", error, now, when="requested")


async def queue_due_heartbeats(sessions: SessionFactory, *, now: datetime) -> list[str]:
    """Queue a heartbeat for each active Subscription whose `heartbeatPeriod` has passed.

    The Subscription counts as notified from now, so a heartbeat that waits for its retries
    is not joined by another each period. The ids of the Subscriptions.
    """
    async with transaction(sessions) as session:
        due = await subscriptions.select_due_heartbeats(session, now)
        for row in due:
            await subscriptions.queue_notice(session, row, HEARTBEAT, now)
            await subscriptions.touch_notified(session, row.id, now)
    return [row.id for row in due]

"""One attempt, step by step: build the request, sign it, and judge the outcome."""

from __future__ import annotations

import random
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from app.delivery import notifications
from app.delivery.sender import OutboundRequest
from app.domain import payloads, signing
from app.domain.catalog import Catalog
from app.domain.event_types import EventType
from app.domain.models import DeliveryStatus, PayloadFormat
from app.domain.retry import AttemptError, AttemptOutcome, RetryPolicy, Verdict
from app.domain.secrets import SecretBox
from app.store.deliveries import AttemptRecord, ClaimedDelivery
from app.store.tables import SCHEDULED_TRIGGER

_MESSAGE_NAMESPACE = uuid.UUID("6f1c8f38-2b3e-4c55-9d8e-0c1b5a7d9e21")


class UnsendableError(Exception):
    """The delivery cannot be turned into a request (no secret, unknown payload format)."""


class PayloadCache:
    """Recently built bodies by `payloads.body_key`, least recently used evicted: a fan-out
    to many endpoints builds (and encodes) each event's body once."""

    def __init__(self, max_entries: int = 1024) -> None:
        self._max_entries = max_entries
        self._bodies: OrderedDict[tuple[object, ...], payloads.Payload] = OrderedDict()

    def get_or_build(
        self, key: tuple[object, ...], build: Callable[[], payloads.Payload]
    ) -> payloads.Payload:
        """The cached body for `key`, else `build()` (then cached)."""
        found = self._bodies.get(key)
        if found is not None:
            self._bodies.move_to_end(key)
            return found
        built = self._bodies[key] = build()
        if len(self._bodies) > self._max_entries:
            self._bodies.popitem(last=False)
        return built


@dataclass(frozen=True)
class AttemptContext:
    """What every attempt needs besides the delivery itself."""

    catalog: Catalog
    secret_box: SecretBox
    public_url: str
    policy: RetryPolicy
    default_timeout: float
    bodies: PayloadCache = field(default_factory=PayloadCache)


def message_id_for(event_id: str) -> str:
    """A FHIR-safe id for the MessageHeader of an event, stable across retries."""
    return str(uuid.uuid5(_MESSAGE_NAMESPACE, event_id))


def build_request(
    claimed: ClaimedDelivery, context: AttemptContext, now: datetime
) -> OutboundRequest:
    """The signed request for one attempt of `claimed` made at `now`."""
    event_type = context.catalog.get(claimed.event.type)
    if event_type is None:
        raise UnsendableError(f"event type {claimed.event.type!r} is not in the catalog")
    if not claimed.secrets:
        raise UnsendableError("the endpoint has no live signing secret")
    try:
        payload, extra_headers = _payload(claimed, event_type, context, now)
        secrets = [context.secret_box.decrypt(secret) for secret in claimed.secrets]
        signature = signing.sign(
            claimed.endpoint.signature_scheme,
            secrets=secrets,
            message_id=claimed.event.id,
            timestamp=int(now.timestamp()),
            body=payload.body,
            header_name=claimed.endpoint.signature_header,
        )
    except ValueError as error:
        raise UnsendableError(str(error)) from error
    headers = {
        **claimed.endpoint.headers,
        **extra_headers,
        "Content-Type": payload.content_type,
        **signature,
    }
    return OutboundRequest(
        url=claimed.endpoint.url,
        body=payload.body,
        headers=headers,
        timeout=claimed.endpoint.timeout_seconds or context.default_timeout,
        basic_auth=_basic_auth(claimed.credentials, context.secret_box),
    )


def _payload(
    claimed: ClaimedDelivery, event_type: EventType, context: AttemptContext, now: datetime
) -> tuple[payloads.Payload, dict[str, str]]:
    """The body (and any headers that go with it): FHIR Subscriptions have their own builder."""
    if claimed.endpoint.payload_format is PayloadFormat.FHIR_NOTIFICATION:
        return notifications.build_fhir_payload(claimed, public_url=context.public_url, now=now)
    payload = context.bodies.get_or_build(
        payloads.body_key(claimed.event, claimed.endpoint, event_type),
        lambda: payloads.build_payload(
            claimed.event,
            claimed.endpoint,
            event_type,
            public_url=context.public_url,
            message_id=message_id_for(claimed.event.id),
        ),
    )
    return payload, {}


def unsendable_outcome(error: UnsendableError) -> AttemptOutcome:
    """The outcome recorded when nothing could be sent."""
    return AttemptOutcome(error=AttemptError.PAYLOAD, response_excerpt=str(error)[:4096])


def judge(
    claimed: ClaimedDelivery,
    outcome: AttemptOutcome,
    *,
    context: AttemptContext,
    now: datetime,
    rng: random.Random,
    trigger: str = SCHEDULED_TRIGGER,
) -> tuple[AttemptRecord, Verdict]:
    """What the delivery becomes after this attempt, and the policy's verdict."""
    attempt = claimed.attempt_count + 1
    decision = context.policy.decide(attempt, now, outcome, rng)
    verdict = decision.verdict
    if outcome.error is AttemptError.PAYLOAD:
        verdict = Verdict.FAILED
    if verdict is Verdict.RETRY and _over_endpoint_limit(claimed, attempt):
        verdict = Verdict.FAILED
    status = {
        Verdict.SUCCEEDED: DeliveryStatus.SUCCEEDED,
        Verdict.RETRY: DeliveryStatus.PENDING,
    }.get(verdict, DeliveryStatus.FAILED)
    record = AttemptRecord(
        delivery_id=claimed.id,
        endpoint_id=claimed.endpoint.id,
        attempted_at=now,
        outcome=outcome,
        status=status,
        next_attempt_at=decision.next_attempt_at if verdict is Verdict.RETRY else None,
        trigger=trigger,
        lease_expires_at=claimed.lease_expires_at,
    )
    return record, verdict


def _over_endpoint_limit(claimed: ClaimedDelivery, attempt: int) -> bool:
    limit = claimed.endpoint.max_attempts
    return limit is not None and attempt >= limit


def _basic_auth(credentials: str | None, box: SecretBox) -> tuple[str, str] | None:
    if not credentials:
        return None
    user, _, password = box.decrypt(credentials).partition(":")
    return user, password

"""FHIR `Subscription` resources in and out: parse what a client submits, render what we return.

Three shapes are accepted (SPEC section 7): the R4 criteria-based Subscription (`criteria` is a
search string), the R4 backport topic-based Subscription (`criteria` is a topic canonical, with
the backport IG's extensions) and the R5 Subscription. Medplum's extensions (secret, supported
interactions, FHIRPath criteria, max attempts) are honoured on all of them. Every problem found is
reported with a FHIRPath-like location, so the API can answer one OperationOutcome listing all.

Tidings ids (`ep_...`) are not FHIR ids (no `_` allowed): `fhir_id` and `tidings_id` convert.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from app.fhir.messages import format_instant
from app.fhir.subscription_fields import (
    BACKPORT_PROFILE,
    SECRET_URLS,
    ContentCode,
    FhirVersion,
    Issue,
    Shape,
    SubscriptionReader,
)

__all__ = [
    "MASKED_SECRET",
    "ContentCode",
    "FhirVersion",
    "SubscriptionError",
    "SubscriptionSpec",
    "fhir_id",
    "parse_subscription",
    "render_subscription",
    "subscription_shape",
    "tidings_id",
]

MASKED_SECRET = "********"
"""Stands for the secret in rendered Subscriptions; submitted back, it keeps the stored secret."""

_ID_UNSAFE = re.compile(r"[^A-Za-z0-9\-.]")
_TIDINGS_FHIR_ID = re.compile(r"^[a-z]{2,4}-[0-9A-Za-z]{10,40}$")
_URL = re.compile(r"^\s*[A-Za-z][A-Za-z0-9+.\-]*://")


class SubscriptionError(ValueError):
    """A Subscription Tidings cannot accept; `issues` holds (location, message) for each problem."""

    def __init__(self, issues: list[Issue]) -> None:
        self.issues = issues
        super().__init__("; ".join(f"{location}: {message}" for location, message in issues))


@dataclass(frozen=True)
class SubscriptionSpec:
    """What a submitted Subscription asks for, in Tidings' terms.

    `criteria` is the search string of a criteria-based Subscription, `topic` the canonical of a
    topic-based one (with `filters` as `Type?query` strings, all of which must match). `version`
    says which notification Bundles to send: R4 and R4-backport get the backport `Parameters`
    status, R4B (an R4-shaped Subscription asking for `fhirVersion=4.3`) and R5 get
    `SubscriptionStatus`. `interactions` is empty for topic-based Subscriptions (the topic
    decides). `keeps_secret` means the masked secret came back: keep the stored one.
    `resource` is the submitted resource as it may be stored (no id, secret masked).
    """

    version: FhirVersion
    status: str
    endpoint: str
    content: ContentCode
    criteria: str | None = None
    topic: str | None = None
    filters: tuple[str, ...] = ()
    headers: dict[str, str] = field(default_factory=dict)
    interactions: tuple[str, ...] = ()
    fhirpath: str | None = None
    heartbeat_seconds: int | None = None
    timeout_seconds: int | None = None
    max_count: int | None = None
    max_attempts: int | None = None
    secret: str | None = field(default=None, repr=False)
    keeps_secret: bool = False
    end: datetime | None = None
    reason: str | None = None
    payload_mime_type: str | None = None
    resource: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_topic_based(self) -> bool:
        """Whether a SubscriptionTopic, rather than search criteria, says what fires."""
        return self.topic is not None


def fhir_id(value: str) -> str:
    """A Tidings id as a FHIR id (`ep_2Vx` becomes `ep-2Vx`; FHIR ids allow no `_`)."""
    return _ID_UNSAFE.sub("-", value)[:64]


def tidings_id(value: str) -> str:
    """The Tidings id behind a FHIR id made by `fhir_id` (`ep-2Vx` becomes `ep_2Vx`)."""
    return value.replace("-", "_", 1) if _TIDINGS_FHIR_ID.match(value) else value


def subscription_shape(resource: Mapping[str, Any]) -> Shape:
    """Which shape `resource` has: R5 (`topic`), R4 backport (a topic in `criteria`), or R4."""
    if "topic" in resource or "channelType" in resource or "channel" not in resource:
        return "R5"
    profiles = (resource.get("meta") or {}).get("profile") or []
    criteria = resource.get("criteria")
    if BACKPORT_PROFILE in profiles or (isinstance(criteria, str) and _URL.match(criteria)):
        return "R4-backport"
    return "R4"


def parse_subscription(resource: Any, *, topics: Mapping[str, Collection[str]]) -> SubscriptionSpec:
    """The SubscriptionSpec a submitted Subscription resource asks for.

    `topics` maps each known SubscriptionTopic canonical to the resource types its triggers
    watch (empty for topics raised by published events). Raises SubscriptionError listing every
    problem found.
    """
    if not isinstance(resource, Mapping) or resource.get("resourceType") != "Subscription":
        raise SubscriptionError([("Subscription", "expected a Subscription resource")])
    reader = SubscriptionReader(resource, topics)
    spec = _read(reader, subscription_shape(resource))
    if reader.issues or spec is None:
        raise SubscriptionError(reader.issues)
    return spec


def _read(reader: SubscriptionReader, shape: Shape) -> SubscriptionSpec | None:
    """Read every part, so that all problems are reported; None when a required part is bad."""
    if reader.resource.get("modifierExtension"):
        reader.problem("Subscription.modifierExtension", "modifier extensions are not supported")
    channel = reader.channel_of(shape)
    criteria, topic, filters = reader.trigger_of(shape)
    secret, status = reader.secret(), reader.status()
    interactions = reader.interactions(topic_based=shape != "R4")
    fhirpath, max_attempts = reader.fhirpath(), reader.max_attempts()
    end, reason = reader.end(), reader.reason(shape)
    version = reader.version(shape, channel)
    if channel is None or status is None or version is None:
        return None
    return SubscriptionSpec(
        version=version,
        status=status,
        endpoint=channel.endpoint,
        content=channel.content,
        criteria=criteria,
        topic=topic,
        filters=filters,
        headers=channel.headers,
        interactions=interactions,
        fhirpath=fhirpath,
        heartbeat_seconds=channel.heartbeat,
        timeout_seconds=channel.timeout,
        max_count=channel.max_count,
        max_attempts=max_attempts,
        secret=None if secret == MASKED_SECRET else secret,
        keeps_secret=secret == MASKED_SECRET,
        end=end,
        reason=reason,
        payload_mime_type=channel.mime_type,
        resource=_stored_copy(reader.resource),
    )


def _stored_copy(resource: Mapping[str, Any]) -> dict[str, Any]:
    """The resource as stored: no id, version or server-owned error text, the secret masked."""
    stored = _masked(resource)
    stored.pop("id", None)
    stored.pop("error", None)
    meta = stored.pop("meta", None) or {}
    meta = {key: value for key, value in meta.items() if key not in ("versionId", "lastUpdated")}
    if meta:
        stored["meta"] = meta
    return stored


def _masked(resource: Mapping[str, Any]) -> dict[str, Any]:
    result = copy.deepcopy(dict(resource))
    for extension in result.get("extension") or []:
        if isinstance(extension, dict) and extension.get("url") in SECRET_URLS:
            extension["valueString"] = MASKED_SECRET
    return result


def render_subscription(
    source: SubscriptionSpec | Mapping[str, Any],
    *,
    id: str,
    status: str,
    version_id: str,
    last_updated: datetime,
    error: str | None = None,
) -> dict[str, Any]:
    """The Subscription as Tidings returns it: the submitted resource with server-owned elements.

    `source` is a spec or its stored `resource`. Sets `id` (made a FHIR id), `meta.versionId`
    and `lastUpdated`, `status`, and `error` when given (R4 shapes only: R5 Subscriptions have
    no `error`, `$status` reports it). The secret's value is masked.
    """
    resource = _masked(source.resource if isinstance(source, SubscriptionSpec) else source)
    meta = {**(resource.pop("meta", None) or {}), "versionId": version_id}
    meta["lastUpdated"] = format_instant(last_updated)
    rendered: dict[str, Any] = {"resourceType": "Subscription", "id": fhir_id(id), "meta": meta}
    skipped = ("resourceType", "id", "error", "status")
    rendered.update((key, value) for key, value in resource.items() if key not in skipped)
    rendered["status"] = status
    if error is not None and subscription_shape(resource) != "R5":
        rendered["error"] = error
    return rendered

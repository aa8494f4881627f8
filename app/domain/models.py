"""The nouns of Tidings as plain, frozen values: what flows between the layers.

The store turns its rows into these; matching, payload building, signing and the retry
policy work on these alone.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

JSONObject = dict[str, Any]


class Role(enum.StrEnum):
    """What an API key may do."""

    ADMIN = "admin"
    PARTNER = "partner"
    READER = "reader"
    SOURCE = "source"


class DeliveryStatus(enum.StrEnum):
    """Where one (event, endpoint) delivery stands."""

    PENDING = "pending"
    DELIVERING = "delivering"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        """Whether nothing more will be attempted unless someone asks (redelivery, recovery)."""
        return self not in (DeliveryStatus.PENDING, DeliveryStatus.DELIVERING)


class PayloadFormat(enum.StrEnum):
    """The body shapes an endpoint can ask for (SPEC section 9)."""

    ENVELOPE = "envelope"
    SIMPLE = "simple"
    MESSAGE_HEADER = "message-header"
    MESSAGE_BUNDLE = "message-bundle"
    FHIR_NOTIFICATION = "fhir-notification"


class ContentLevel(enum.StrEnum):
    """How much of the focus resource a payload carries."""

    FULL_RESOURCE = "full-resource"
    ID_ONLY = "id-only"
    EMPTY = "empty"


class SignatureScheme(enum.StrEnum):
    """How a delivery is signed (SPEC section 8)."""

    STANDARD_WEBHOOKS = "standard-webhooks"
    MEDPLUM = "medplum"
    TIMESTAMPED_HMAC = "timestamped-hmac"
    ED25519 = "ed25519"


class Interaction(enum.StrEnum):
    """A FHIR resource change."""

    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"


@dataclass(frozen=True)
class Principal:
    """The caller behind an API key."""

    key_id: str
    role: Role
    organization_id: str
    account_id: str | None = None

    @property
    def is_admin(self) -> bool:
        """Admins act across organizations."""
        return self.role is Role.ADMIN


@dataclass(frozen=True)
class Endpoint:
    """A partner's registered receiver, as matching and delivery see it."""

    id: str
    organization_id: str
    url: str
    event_types: tuple[str, ...] = ("*",)
    account_id: str | None = None
    filter: str | None = None
    payload_format: PayloadFormat | None = None
    content: ContentLevel = ContentLevel.FULL_RESOURCE
    signature_scheme: SignatureScheme = SignatureScheme.STANDARD_WEBHOOKS
    signature_header: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    active: bool = True
    timeout_seconds: float | None = None
    rate_limit: int | None = None
    ordered: bool = False
    max_attempts: int | None = None
    fhir_version: str | None = None
    fhirpath_criteria: str | None = None
    description: str = ""
    metadata: JSONObject = field(default_factory=dict)
    has_credentials: bool = False
    disabled_reason: str | None = None
    disabled_at: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True)
class ResourceChange:
    """One FHIR resource change: identified by (type, id, version, interaction)."""

    resource_type: str
    resource_id: str
    version_id: str | None
    interaction: Interaction
    resource: JSONObject | None
    previous: JSONObject | None = None

    @property
    def reference(self) -> str:
        """The literal reference `Type/id`."""
        return f"{self.resource_type}/{self.resource_id}"

    @property
    def dedup_key(self) -> str:
        """The same change seen twice has the same key."""
        version = self.version_id or ""
        return f"{self.resource_type}/{self.resource_id}/_history/{version}#{self.interaction}"


@dataclass(frozen=True)
class Event:
    """Something that happened in one organization, to be told to its partners."""

    id: str
    organization_id: str
    type: str
    occurred_at: datetime
    data: JSONObject
    account_id: str | None = None
    focus: str | None = None
    source: str | None = None
    idempotency_key: str | None = None

"""Request and response bodies of `/v1/endpoints`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.domain.models import ContentLevel, Endpoint, PayloadFormat, SignatureScheme

_STRICT = ConfigDict(extra="forbid")


class EndpointIn(BaseModel):
    """A new endpoint."""

    model_config = _STRICT

    url: str = Field(
        max_length=2048, description="Where Tidings POSTs; user:pass@ becomes Basic auth"
    )
    description: str = Field(default="", max_length=1000)
    event_types: list[str] = Field(
        default_factory=lambda: ["*"],
        min_length=1,
        max_length=200,
        description="exact names, `prefix.*`, or `*`",
    )
    filter: str | None = Field(
        default=None, max_length=2000, description="FHIR search criteria on the focus resource"
    )
    payload_format: PayloadFormat | None = None
    content: ContentLevel = ContentLevel.FULL_RESOURCE
    signature_scheme: SignatureScheme = SignatureScheme.STANDARD_WEBHOOKS
    signature_header: str | None = Field(
        default=None, max_length=100, description="header name for timestamped-hmac"
    )
    headers: dict[str, str] = Field(default_factory=dict)
    timeout_seconds: float | None = Field(default=None, gt=0, le=30)
    rate_limit: int | None = Field(default=None, ge=1, le=10000, description="requests per second")
    ordered: bool = False
    metadata: dict[str, Any] = Field(default_factory=dict)
    account: str | None = Field(default=None, max_length=64)
    organization: str | None = Field(
        default=None, max_length=64, description="admins only: the owning organization"
    )
    secret: str | None = Field(
        default=None, max_length=200, description="bring your own whsec_ secret (HMAC schemes)"
    )


class EndpointPatch(BaseModel):
    """Changes to an endpoint; absent fields stay as they are."""

    model_config = _STRICT

    url: str | None = Field(default=None, max_length=2048)
    description: str | None = Field(default=None, max_length=1000)
    event_types: list[str] | None = Field(default=None, min_length=1, max_length=200)
    filter: str | None = Field(default=None, max_length=2000)
    payload_format: PayloadFormat | None = None
    content: ContentLevel | None = None
    signature_scheme: SignatureScheme | None = None
    signature_header: str | None = Field(default=None, max_length=100)
    headers: dict[str, str] | None = None
    timeout_seconds: float | None = Field(default=None, gt=0, le=30)
    rate_limit: int | None = Field(default=None, ge=1, le=10000)
    ordered: bool | None = None
    metadata: dict[str, Any] | None = None


class EndpointOut(BaseModel):
    """An endpoint as partners see it: credentials in the URL are masked."""

    id: str
    organization: str
    account: str | None
    url: str
    description: str
    event_types: list[str]
    filter: str | None
    payload_format: PayloadFormat | None
    content: ContentLevel
    signature_scheme: SignatureScheme
    signature_header: str | None
    headers: dict[str, str]
    active: bool
    disabled_reason: str | None
    disabled_at: datetime | None
    timeout_seconds: float | None
    rate_limit: int | None
    ordered: bool
    metadata: dict[str, Any]
    created_at: datetime | None
    updated_at: datetime | None


class EndpointCreated(EndpointOut):
    """A new endpoint, with the secret to verify its signatures."""

    secret: str | None = Field(description="whsec_ secret for HMAC schemes")
    public_key: str | None = Field(description="whpk_ key for ed25519")


class EndpointPage(BaseModel):
    """One page of endpoints."""

    data: list[EndpointOut]
    next_cursor: str | None


class SecretOut(BaseModel):
    """The endpoint's current signing secret (or public key for ed25519)."""

    secret: str | None
    public_key: str | None
    previous_expires_at: datetime | None = None


class RotateIn(BaseModel):
    """A secret rotation."""

    model_config = _STRICT

    grace_seconds: int = Field(default=86400, ge=0, le=7 * 86400)
    secret: str | None = Field(default=None, max_length=200)


class ListQuery(BaseModel):
    """Paging parameters."""

    model_config = _STRICT

    limit: int = Field(default=50, ge=1, le=250)
    cursor: str | None = None


def endpoint_out(endpoint: Endpoint, redacted_url: str) -> dict[str, Any]:
    """The public fields of an endpoint."""
    return EndpointOut(
        id=endpoint.id,
        organization=endpoint.organization_id,
        account=endpoint.account_id,
        url=redacted_url,
        description=endpoint.description,
        event_types=list(endpoint.event_types),
        filter=endpoint.filter,
        payload_format=endpoint.payload_format,
        content=endpoint.content,
        signature_scheme=endpoint.signature_scheme,
        signature_header=endpoint.signature_header,
        headers=endpoint.headers,
        active=endpoint.active,
        disabled_reason=endpoint.disabled_reason,
        disabled_at=endpoint.disabled_at,
        timeout_seconds=endpoint.timeout_seconds,
        rate_limit=endpoint.rate_limit,
        ordered=endpoint.ordered,
        metadata=endpoint.metadata,
        created_at=endpoint.created_at,
        updated_at=endpoint.updated_at,
    ).model_dump(mode="json")

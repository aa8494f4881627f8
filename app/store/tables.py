"""SQLModel tables: the only place that knows how Tidings is laid out in the database."""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from app.store.types import UTCDateTime


def new_version() -> str:
    """A fresh random version token: never equal to one from another database or process."""
    return secrets.token_hex(8)


def _json_column(nullable: bool = False) -> Any:
    return sa.Column(sa.JSON(), nullable=nullable)


def _time_column(nullable: bool = False, index: bool = False) -> Any:
    return sa.Column(UTCDateTime(), nullable=nullable, index=index)


class Organization(SQLModel, table=True):
    """A tenant: a partner-facing platform customer."""

    __tablename__ = "organization"

    id: str = Field(primary_key=True, max_length=64)
    name: str = Field(max_length=200)
    created_at: datetime = Field(sa_column=_time_column())
    # A new random value in the transaction of every change to the organization's endpoints:
    # what per-process caches of its endpoints are checked against (see store/candidates.py).
    endpoints_version: str = Field(
        default_factory=new_version,
        sa_column=sa.Column(sa.String(32), nullable=False, default=new_version),
    )


class Account(SQLModel, table=True):
    """An optional sub-tenant inside an organization."""

    __tablename__ = "account"

    organization_id: str = Field(foreign_key="organization.id", primary_key=True, max_length=64)
    id: str = Field(primary_key=True, max_length=64)
    created_at: datetime = Field(sa_column=_time_column())


class ApiKey(SQLModel, table=True):
    """A bearer key, stored as its SHA-256 hash only."""

    __tablename__ = "api_key"

    id: str = Field(primary_key=True, max_length=40)
    key_hash: str = Field(unique=True, max_length=64)
    role: str = Field(max_length=16)
    organization_id: str = Field(foreign_key="organization.id", index=True, max_length=64)
    account_id: str | None = Field(default=None, max_length=64)
    created_at: datetime = Field(sa_column=_time_column())
    last_used_at: datetime | None = Field(default=None, sa_column=_time_column(nullable=True))
    revoked_at: datetime | None = Field(default=None, sa_column=_time_column(nullable=True))


class EndpointRow(SQLModel, table=True):
    """A registered receiver (and, later, the storage of a FHIR Subscription's face)."""

    __tablename__ = "endpoint"

    id: str = Field(primary_key=True, max_length=40)
    organization_id: str = Field(foreign_key="organization.id", index=True, max_length=64)
    account_id: str | None = Field(default=None, max_length=64)
    url: str = Field(max_length=2048)
    url_credentials: str | None = Field(default=None, max_length=4096)
    description: str = Field(default="", max_length=1000)
    event_types: list[str] = Field(sa_column=_json_column())
    filter: str | None = Field(default=None, max_length=2000)
    payload_format: str | None = Field(default=None, max_length=32)
    content: str = Field(default="full-resource", max_length=16)
    signature_scheme: str = Field(default="standard-webhooks", max_length=32)
    signature_header: str | None = Field(default=None, max_length=100)
    headers: dict[str, str] = Field(sa_column=_json_column())
    active: bool = Field(default=True)
    disabled_reason: str | None = Field(default=None, max_length=500)
    disabled_at: datetime | None = Field(default=None, sa_column=_time_column(nullable=True))
    timeout_seconds: float | None = Field(default=None)
    rate_limit: int | None = Field(default=None)
    ordered: bool = Field(default=False)
    metadata_: dict[str, Any] = Field(sa_column=sa.Column("metadata", sa.JSON(), nullable=False))
    created_at: datetime = Field(sa_column=_time_column())
    updated_at: datetime = Field(sa_column=_time_column())
    deleted_at: datetime | None = Field(default=None, sa_column=_time_column(nullable=True))
    max_attempts: int | None = Field(default=None)
    # The FHIR Subscription face of an endpoint (SPEC section 7); None for plain webhooks.
    fhir_version: str | None = Field(default=None, max_length=16)
    fhir_resource: dict[str, Any] | None = Field(
        default=None, sa_column=_json_column(nullable=True)
    )
    fhir_status: str | None = Field(default=None, max_length=16)
    fhirpath_criteria: str | None = Field(default=None, max_length=2000)
    events_since_start: int = Field(default=0)
    heartbeat_seconds: int | None = Field(default=None)
    last_notified_at: datetime | None = Field(default=None, sa_column=_time_column(nullable=True))
    fhir_error: str | None = Field(default=None, max_length=1000)


class EndpointSecret(SQLModel, table=True):
    """One signing secret of an endpoint, encrypted; rotated-out secrets expire."""

    __tablename__ = "endpoint_secret"

    id: str = Field(primary_key=True, max_length=40)
    endpoint_id: str = Field(foreign_key="endpoint.id", index=True, max_length=40)
    secret: str = Field(max_length=4096)
    created_at: datetime = Field(sa_column=_time_column())
    expires_at: datetime | None = Field(default=None, sa_column=_time_column(nullable=True))


class EndpointEventType(SQLModel, table=True):
    """The matching index: one row per event-type pattern an endpoint subscribes to."""

    __tablename__ = "endpoint_event_type"
    __table_args__ = (sa.Index("ix_endpoint_event_type_lookup", "organization_id", "pattern"),)

    endpoint_id: str = Field(foreign_key="endpoint.id", primary_key=True, max_length=40)
    pattern: str = Field(primary_key=True, max_length=200)
    organization_id: str = Field(max_length=64)


class OrderedQueueRow(SQLModel, table=True):
    """One row per ordered endpoint whose queue has moved on (PostgreSQL): what moving it on
    locks (`ordered_queues`), rather than the endpoint's own row. Transactions that change an
    endpoint lock its row early (enabling it, disabling it); locking that row to move the queue
    on, at the end of another transaction, could then deadlock with them."""

    __tablename__ = "ordered_queue"

    endpoint_id: str = Field(foreign_key="endpoint.id", primary_key=True, max_length=40)


class EventRow(SQLModel, table=True):
    """An accepted event: durable from the moment the API answers 2xx."""

    __tablename__ = "event"
    __table_args__ = (
        sa.UniqueConstraint("organization_id", "idempotency_key", name="uq_event_idempotency"),
        sa.UniqueConstraint("organization_id", "change_key", name="uq_event_change"),
        sa.Index("ix_event_org_occurred", "organization_id", "occurred_at"),
    )

    id: str = Field(primary_key=True, max_length=40)
    organization_id: str = Field(foreign_key="organization.id", max_length=64)
    account_id: str | None = Field(default=None, max_length=64)
    type: str = Field(max_length=200, index=True)
    occurred_at: datetime = Field(sa_column=_time_column())
    received_at: datetime = Field(sa_column=_time_column())
    focus: str | None = Field(default=None, max_length=300)
    data: dict[str, Any] = Field(sa_column=_json_column())
    source: str | None = Field(default=None, max_length=200)
    idempotency_key: str | None = Field(default=None, max_length=300)
    change_key: str | None = Field(default=None, max_length=400)


# The trigger of an attempt the retry schedule queued (the others are `manual`).
SCHEDULED_TRIGGER = "scheduled"
# The deliveries that are scheduled (due, or in flight), and those held for their turn, as the
# predicates of partial indexes (SQL: a query uses such an index only where it says as much).
SCHEDULED = "next_attempt_at IS NOT NULL"
HELD = "status = 'pending' AND next_attempt_at IS NULL"


class DeliveryRow(SQLModel, table=True):
    """One (event, endpoint) delivery: the queue is this table.

    `next_attempt_at` is set exactly while a delivery is scheduled: due then, or in flight.
    Finished deliveries have none, and neither have held ones: pending, waiting for an earlier
    delivery to their ordered endpoint to finish, and in no due walk (`ordered_queues`).
    """

    __tablename__ = "delivery"
    __table_args__ = (
        sa.CheckConstraint(
            "status IN ('pending', 'delivering') OR next_attempt_at IS NULL",
            name="ck_delivery_finished_unscheduled",
        ),
        # The scheduled deliveries alone, by when they fall due: the claims' walk.
        sa.Index(
            "ix_delivery_due",
            "status",
            "next_attempt_at",
            sqlite_where=sa.text(SCHEDULED),
            postgresql_where=sa.text(SCHEDULED),
        ),
        sa.Index("ix_delivery_lease", "status", "lease_expires_at"),
        # Whether an endpoint has a delivery scheduled (one of an ordered endpoint is at most).
        sa.Index(
            "ix_delivery_scheduled",
            "endpoint_id",
            sqlite_where=sa.text(SCHEDULED),
            postgresql_where=sa.text(SCHEDULED),
        ),
        # The held deliveries alone, each endpoint's in the order they are to be sent.
        sa.Index(
            "ix_delivery_held",
            "endpoint_id",
            "occurred_at",
            "id",
            sqlite_where=sa.text(HELD),
            postgresql_where=sa.text(HELD),
        ),
    )

    id: str = Field(primary_key=True, max_length=40)
    event_id: str = Field(foreign_key="event.id", index=True, max_length=40)
    endpoint_id: str = Field(foreign_key="endpoint.id", index=True, max_length=40)
    organization_id: str = Field(max_length=64, index=True)
    status: str = Field(max_length=16)
    attempt_count: int = Field(default=0)
    next_attempt_at: datetime | None = Field(default=None, sa_column=_time_column(nullable=True))
    lease_expires_at: datetime | None = Field(default=None, sa_column=_time_column(nullable=True))
    # The event's `occurred_at`: the order in which an ordered endpoint receives its events.
    occurred_at: datetime = Field(sa_column=_time_column())
    created_at: datetime = Field(sa_column=_time_column())
    updated_at: datetime = Field(sa_column=_time_column())
    event_number: int | None = Field(default=None)
    # What queued the next attempt: `scheduled`, or `manual` after a redeliver/recover/replay.
    next_trigger: str = Field(default=SCHEDULED_TRIGGER, max_length=16)


class AttemptRow(SQLModel, table=True):
    """One HTTP attempt of a delivery: the attempt log."""

    __tablename__ = "attempt"

    id: str = Field(primary_key=True, max_length=40)
    delivery_id: str = Field(foreign_key="delivery.id", index=True, max_length=40)
    endpoint_id: str = Field(max_length=40, index=True)
    attempted_at: datetime = Field(sa_column=_time_column())
    duration_ms: int = Field(default=0)
    status_code: int | None = Field(default=None)
    error_kind: str | None = Field(default=None, max_length=40)
    response_excerpt: str = Field(default="", max_length=8192)
    trigger: str = Field(default=SCHEDULED_TRIGGER, max_length=16)


class UpstreamServer(SQLModel, table=True):
    """A FHIR server Tidings polls for changes (`[base]/_history?_since=`)."""

    __tablename__ = "upstream_server"

    id: str = Field(primary_key=True, max_length=40)
    organization_id: str = Field(foreign_key="organization.id", index=True, max_length=64)
    base_url: str = Field(max_length=2048)
    auth_kind: str = Field(default="none", max_length=16)
    auth_secret: str | None = Field(default=None, max_length=8192)
    poll_seconds: int = Field(default=30)
    cursor: str | None = Field(default=None, max_length=64)
    active: bool = Field(default=True)
    last_polled_at: datetime | None = Field(default=None, sa_column=_time_column(nullable=True))
    last_error: str | None = Field(default=None, max_length=1000)
    failures: int = Field(default=0)
    next_poll_at: datetime | None = Field(default=None, sa_column=_time_column(nullable=True))
    created_at: datetime = Field(sa_column=_time_column())

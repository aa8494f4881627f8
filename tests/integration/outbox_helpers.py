"""Helpers for event tests: register endpoints, read back what the outbox stored."""

from __future__ import annotations

import importlib
import uuid
from collections import Counter
from typing import Any

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.api.context import Services
from app.domain.payloads import Payload, build_payload
from app.store import endpoints as endpoint_store
from app.store import outbox, tenants
from app.store.db import transaction
from app.store.endpoints import Scope
from app.store.tables import DeliveryRow, EventRow
from tests.integration.conftest import Api

RECEIVER = "http://127.0.0.1:9/hooks"


async def stored_endpoint(
    session: AsyncSession, organization_id: str, now: Any, **fields: Any
) -> str:
    """A plain endpoint for every event type (with `fields` set too), written straight through
    the store (its organization created if need be): its id."""
    await tenants.ensure_organization(session, organization_id, now)
    values = {
        "organization_id": organization_id,
        "url": RECEIVER,
        "event_types": ["*"],
        "headers": {},
        "metadata_": {},
        **fields,
    }
    endpoint = await endpoint_store.insert_endpoint(session, values, "ciphertext", now)
    return endpoint.id


def services_of(api: Api) -> Services:
    found: Services = api.app.extensions["tidings"]
    return found


async def register(api: Api, key: str, **fields: Any) -> str:
    """A new endpoint's id."""
    response = await api.call("POST", "/v1/endpoints", key, json={"url": RECEIVER, **fields})
    assert response.status_code == 201, await response.get_data(as_text=True)
    endpoint_id: str = (await response.get_json())["id"]
    return endpoint_id


async def deliveries_by_endpoint(api: Api) -> dict[str, list[str]]:
    """Every stored delivery, as endpoint id -> the types of the events it carries."""
    query = (
        select(DeliveryRow.endpoint_id, EventRow.type)
        .join(EventRow, col(EventRow.id) == col(DeliveryRow.event_id))
        .order_by(col(EventRow.occurred_at), col(EventRow.type))
    )
    async with transaction(services_of(api).sessions) as session:
        rows = (await session.exec(query)).all()
    found: dict[str, list[str]] = {}
    for endpoint_id, event_type in rows:
        found.setdefault(endpoint_id, []).append(event_type)
    return found


async def delivery_rows(api: Api) -> list[DeliveryRow]:
    async with transaction(services_of(api).sessions) as session:
        return list((await session.exec(select(DeliveryRow))).all())


async def stored_event_types(api: Api) -> Counter[str]:
    """How many events of each type the database holds, every organization."""
    async with transaction(services_of(api).sessions) as session:
        types = (await session.exec(select(EventRow.type))).all()
    return Counter(types)


def fhir_valid(body: dict[str, Any]) -> None:
    """Validate a FHIR body with fhir.resources (R4B models); raises when invalid."""
    resource_type = body["resourceType"]
    module = importlib.import_module(f"fhir.resources.R4B.{resource_type.lower()}")
    getattr(module, resource_type).model_validate(body)


async def payload_for(api: Api, event_id: str, endpoint_id: str) -> Payload:
    """The body the worker would send `endpoint_id` for `event_id`."""
    services = services_of(api)
    async with transaction(services.sessions) as session:
        event = await outbox.select_event(session, Scope(None), event_id)
        endpoint = await endpoint_store.select_endpoint(session, Scope(None), endpoint_id)
    assert event is not None and endpoint is not None
    event_type = services.catalog.get(event.type)
    assert event_type is not None
    return build_payload(
        event,
        endpoint,
        event_type,
        public_url=services.public_url,
        message_id=str(uuid.uuid5(uuid.NAMESPACE_URL, event.id)),
    )

"""`/v1/event-types`: the catalog partners choose from, with triggers, schema and example."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from quart import Blueprint
from quart_schema import document_querystring

from app.api.context import caller, services
from app.api.requests import query_as
from app.domain.errors import NotFound
from app.domain.event_types import EventType, Trigger
from app.domain.payloads import PUBLIC_URL_PLACEHOLDER

blueprint = Blueprint("event_types", __name__, url_prefix="/v1/event-types")


class EventTypeQuery(BaseModel):
    """Filters of the catalog listing."""

    model_config = ConfigDict(extra="forbid")

    prefix: str | None = Field(
        default=None, max_length=200, description="only names starting with this"
    )


@blueprint.get("")
@document_querystring(EventTypeQuery)
async def list_event_types() -> dict[str, Any]:
    """Every event type, by name; `prefix` keeps those whose names start with it."""
    caller()
    prefix = query_as(EventTypeQuery).prefix or ""
    catalog = services().catalog
    return {"data": [event_type_out(t) for t in catalog if t.name.startswith(prefix)]}


@blueprint.get("/<name>")
async def read_event_type(name: str) -> dict[str, Any]:
    """One event type."""
    caller()
    event_type = services().catalog.get(name)
    if event_type is None:
        raise NotFound(f"no event type {name!r}")
    return event_type_out(event_type)


def event_type_out(event_type: EventType) -> dict[str, Any]:
    """The public description of an event type, with `{public_url}` filled in."""
    coding = event_type.event_coding
    system = _expand(coding.system) if coding is not None and coding.system else None
    return {
        "name": event_type.name,
        "description": event_type.description,
        "payload_format": event_type.payload_format.value,
        "event_coding": None if coding is None else {"system": system, "code": coding.code},
        "triggers": [_trigger_out(trigger) for trigger in event_type.triggers],
        "focus": event_type.focus.text if event_type.focus is not None else None,
        "extensions": {_expand(rule.url): rule.value.text for rule in event_type.extensions},
        "data_schema": event_type.data_schema,
        "example": event_type.example,
    }


def _trigger_out(trigger: Trigger) -> dict[str, Any]:
    return {
        "resource": trigger.resource,
        "interactions": sorted(interaction.value for interaction in trigger.interactions),
        "criteria": trigger.criteria.text if trigger.criteria is not None else None,
        "previous_criteria": (
            trigger.previous_criteria.text if trigger.previous_criteria is not None else None
        ),
        "fhirpath": trigger.fhirpath.text if trigger.fhirpath is not None else None,
    }


def _expand(url: str) -> str:
    return url.replace(PUBLIC_URL_PLACEHOLDER, services().public_url)

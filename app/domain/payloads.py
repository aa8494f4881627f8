"""The body each endpoint receives for an event, in the format and content level it asked for.

Formats (SPEC section 9): `envelope`, `simple`, `message-header` and `message-bundle`. The
`fhir-notification` format needs the subscription's event numbers and is built with the FHIR
subscription notifications, not here. Content level `id-only` keeps only references and ids,
`empty` keeps nothing of the focus: no resource body leaves Tidings under either.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from app import __version__
from app.domain.event_types import EventType
from app.domain.models import ContentLevel, Endpoint, Event, JSONObject, PayloadFormat
from app.fhir.messages import (
    MessageSource,
    build_extension,
    build_message_bundle,
    build_message_header,
    format_instant,
)
from app.fhir.resource_types import is_resource_type

JSON = "application/json"
FHIR_JSON = "application/fhir+json"
PUBLIC_URL_PLACEHOLDER = "{public_url}"


class UnsupportedPayloadFormatError(ValueError):
    """The format is not built by `build_payload` (FHIR notifications have their own builder)."""


@dataclass(frozen=True)
class Payload:
    """A delivery body, as the exact bytes that are signed and sent."""

    body: bytes
    content_type: str


@dataclass(frozen=True)
class _Context:
    event: Event
    endpoint: Endpoint
    event_type: EventType
    public_url: str
    message_id: str

    @property
    def content(self) -> ContentLevel:
        return self.endpoint.content


def build_payload(
    event: Event,
    endpoint: Endpoint,
    event_type: EventType,
    *,
    public_url: str,
    message_id: str,
) -> Payload:
    """The body of `event` for `endpoint`: its format, else the event type's default format.

    `message_id` names the FHIR message (MessageHeader and Bundle ids): a FHIR id, a UUID
    preferably. `public_url` is Tidings' own base URL.
    """
    context = _Context(event, endpoint, event_type, public_url.rstrip("/"), message_id)
    payload_format = endpoint.payload_format or event_type.payload_format
    if payload_format is PayloadFormat.ENVELOPE:
        return _json(build_envelope(context.event, context.content), JSON)
    if payload_format is PayloadFormat.SIMPLE:
        return _json(build_simple(context.event, context.content), JSON)
    if payload_format is PayloadFormat.MESSAGE_HEADER:
        return _json(_message_header(context, focus=_focus_references(context)), FHIR_JSON)
    if payload_format is PayloadFormat.MESSAGE_BUNDLE:
        return _json(_message_bundle(context), FHIR_JSON)
    raise UnsupportedPayloadFormatError(f"{payload_format} payloads are built by the FHIR notifier")


def body_key(event: Event, endpoint: Endpoint, event_type: EventType) -> tuple[object, ...]:
    """Everything `build_payload` reads for `event` from the endpoint: two endpoints with equal
    keys get byte-identical bodies (for the same `public_url` and the event's own message id),
    so one body can serve every delivery of a fan-out."""
    payload_format = endpoint.payload_format or event_type.payload_format
    names_destination = payload_format in (
        PayloadFormat.MESSAGE_HEADER,
        PayloadFormat.MESSAGE_BUNDLE,
    )
    return (event.id, payload_format, endpoint.content, endpoint.url if names_destination else None)


def _json(body: JSONObject, content_type: str) -> Payload:
    text = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    return Payload(body=text.encode("utf-8"), content_type=content_type)


def build_envelope(event: Event, content: ContentLevel) -> JSONObject:
    """`{"id", "type", "timestamp", "data": {"object"}}`; `object` is cut to the content level."""
    content_object = _content_object(event, content)
    data = {} if content_object is None else {"object": content_object}
    return {
        "id": event.id,
        "type": event.type,
        "timestamp": format_instant(event.occurred_at),
        "data": data,
    }


def build_simple(event: Event, content: ContentLevel) -> JSONObject:
    """`{"id", "event", "payload"}`; `payload` is cut to the content level (`{}` when empty)."""
    content_object = _content_object(event, content)
    return {"id": event.id, "event": event.type, "payload": content_object or {}}


def _content_object(event: Event, content: ContentLevel) -> JSONObject | None:
    """The event data at `content` level: all of it, a `{resourceType, id}` stub, or nothing."""
    if content is ContentLevel.FULL_RESOURCE:
        return event.data
    if content is ContentLevel.ID_ONLY:
        return _stub(event)
    return None


def _stub(event: Event) -> JSONObject | None:
    reference = event.focus or _resource_reference(event.data)
    if reference is None or reference.count("/") != 1:
        return None
    resource_type, resource_id = reference.split("/")
    return {"resourceType": resource_type, "id": resource_id}


def _resource_reference(data: JSONObject) -> str | None:
    """`Type/id` when `data` is a FHIR resource with an id."""
    resource_type, resource_id = data.get("resourceType"), data.get("id")
    if isinstance(resource_type, str) and is_resource_type(resource_type):
        if isinstance(resource_id, str) and resource_id:
            return f"{resource_type}/{resource_id}"
    return None


def _focus_references(context: _Context) -> list[str]:
    if context.content is ContentLevel.EMPTY:
        return []
    reference = context.event.focus or _resource_reference(context.event.data)
    return [] if reference is None else [reference]


def _message_header(context: _Context, *, focus: list[str]) -> JSONObject:
    coding = context.event_type.event_coding
    system = coding.system if coding is not None and coding.system else None
    return build_message_header(
        message_id=context.message_id,
        event_system=_expand(system or f"{context.public_url}/fhir/CodeSystem/events", context),
        event_code=coding.code if coding is not None else context.event.type,
        source=MessageSource(endpoint=f"{context.public_url}/fhir", version=__version__),
        destination_endpoint=context.endpoint.url,
        focus=focus,
        extensions=_extensions(context),
    )


def _expand(url: str, context: _Context) -> str:
    return url.replace(PUBLIC_URL_PLACEHOLDER, context.public_url)


def _extensions(context: _Context) -> list[JSONObject]:
    if context.content is ContentLevel.EMPTY:
        return []
    extensions = []
    for rule in context.event_type.extensions:
        extension = build_extension(_expand(rule.url, context), rule.value_for(context.event.data))
        if extension is not None:
            extensions.append(extension)
    return extensions


def _message_bundle(context: _Context) -> JSONObject:
    """MessageHeader first; with full content and a resource body, the focus resource after it."""
    resource = _focus_resource(context)
    header_url = _header_full_url(context.message_id)
    if resource is None:
        header = _message_header(context, focus=_focus_references(context))
        resources: list[tuple[str, Any]] = []
    else:
        resource_url = _full_url(context.message_id, _resource_reference(resource) or "")
        header = _message_header(context, focus=[resource_url])
        resources = [(resource_url, resource)]
    return build_message_bundle(
        bundle_id=context.message_id,
        timestamp=context.event.occurred_at,
        header_full_url=header_url,
        header=header,
        resources=resources,
    )


def _focus_resource(context: _Context) -> JSONObject | None:
    """The event data when it is the focus resource itself and the content level allows it."""
    if context.content is not ContentLevel.FULL_RESOURCE:
        return None
    reference = _resource_reference(context.event.data)
    if reference is None or context.event.focus not in (None, reference):
        return None
    return context.event.data


def _header_full_url(message_id: str) -> str:
    try:
        return f"urn:uuid:{uuid.UUID(message_id)}"
    except ValueError:
        return _full_url(message_id, "MessageHeader")


def _full_url(message_id: str, name: str) -> str:
    """A stable `urn:uuid:` fullUrl for one entry of the message `message_id`."""
    return f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'tidings:{message_id}:{name}')}"

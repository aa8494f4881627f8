"""FHIR R4 messaging as plain dicts: MessageHeader, its extensions and the message Bundle.

These builders take plain arguments, not domain objects, so the FHIR shapes live in one place
and the domain decides what goes into them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

_ABSOLUTE_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://\S+$")


@dataclass(frozen=True)
class MessageSource:
    """`MessageHeader.source`: who sends the message."""

    endpoint: str
    name: str = "tidings"
    software: str = "Tidings"
    version: str | None = None


def format_instant(moment: datetime) -> str:
    """A FHIR `instant`: UTC, seconds or better, with `Z`. Naive times are taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    text = moment.astimezone(UTC).isoformat()
    return text.removesuffix("+00:00") + "Z"


def strip_userinfo(url: str) -> str:
    """The URL without `user:password@`, so credentials never travel inside a body."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=host))


def build_extension(url: str, value: Any) -> dict[str, Any] | None:
    """An `Extension` whose `value[x]` type fits `value`; None when nothing fits.

    A string that looks like an absolute URL becomes `valueUrl`, other strings `valueString`;
    a mapping with a `value` becomes `valueIdentifier`.
    """
    value_key, fhir_value = _typed_value(value)
    if value_key is None:
        return None
    return {"url": url, value_key: fhir_value}


def _typed_value(value: Any) -> tuple[str | None, Any]:
    if isinstance(value, bool):
        return "valueBoolean", value
    if isinstance(value, int):
        return "valueInteger", value
    if isinstance(value, float):
        return "valueDecimal", value
    if isinstance(value, str):
        if not value.strip():
            return None, None
        return ("valueUrl" if _ABSOLUTE_URL.match(value) else "valueString"), value
    if isinstance(value, Mapping) and isinstance(value.get("value"), str):
        identifier = {k: value[k] for k in ("system", "value") if isinstance(value.get(k), str)}
        return "valueIdentifier", identifier
    return None, None


def build_message_header(
    *,
    message_id: str,
    event_system: str,
    event_code: str,
    source: MessageSource,
    destination_endpoint: str | None = None,
    focus: Sequence[str] = (),
    extensions: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """An R4 `MessageHeader` announcing `event_code`, pointing at each `focus` reference."""
    header: dict[str, Any] = {"resourceType": "MessageHeader", "id": message_id}
    if extensions:
        header["extension"] = [dict(extension) for extension in extensions]
    header["eventCoding"] = {"system": event_system, "code": event_code}
    if destination_endpoint is not None:
        header["destination"] = [{"endpoint": strip_userinfo(destination_endpoint)}]
    header["source"] = _source(source)
    if focus:
        header["focus"] = [{"reference": reference} for reference in focus]
    return header


def _source(source: MessageSource) -> dict[str, Any]:
    result: dict[str, Any] = {"name": source.name, "software": source.software}
    if source.version is not None:
        result["version"] = source.version
    result["endpoint"] = source.endpoint
    return result


def build_message_bundle(
    *,
    bundle_id: str,
    timestamp: datetime,
    header_full_url: str,
    header: Mapping[str, Any],
    resources: Sequence[tuple[str, Mapping[str, Any]]] = (),
) -> dict[str, Any]:
    """A `Bundle` of type `message`: the MessageHeader first, then `(fullUrl, resource)` pairs."""
    entries = [{"fullUrl": header_full_url, "resource": dict(header)}]
    entries += [{"fullUrl": url, "resource": dict(resource)} for url, resource in resources]
    return {
        "resourceType": "Bundle",
        "id": bundle_id,
        "type": "message",
        "timestamp": format_instant(timestamp),
        "entry": entries,
    }

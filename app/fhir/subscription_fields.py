"""The elements of a submitted FHIR `Subscription`, read one by one with every problem kept.

`SubscriptionReader` knows where each shape keeps what (R4 `channel`, the backport IG's
extensions, R5's flat elements, Medplum's extensions) and reports each problem with a
FHIRPath-like location (`Subscription.channel.header[1]`). `app.fhir.subscriptions` assembles
the results into a `SubscriptionSpec`.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from app.fhir.fhirpath import compile_expression
from app.fhir.search import parse_criteria

FhirVersion = Literal["R4", "R4-backport", "R4B", "R5"]
ContentCode = Literal["empty", "id-only", "full-resource"]
Issue = tuple[str, str]
Shape = Literal["R4", "R4-backport", "R5"]

BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
BACKPORT_PROFILE = BACKPORT + "backport-subscription"
FILTER_CRITERIA = (BACKPORT + "backport-filter-criteria", BACKPORT + "backport-additional-criteria")
HEARTBEAT_PERIOD = BACKPORT + "backport-heartbeat-period"
TIMEOUT = BACKPORT + "backport-timeout"
MAX_COUNT = BACKPORT + "backport-max-count"
PAYLOAD_CONTENT = BACKPORT + "backport-payload-content"
CHANNEL_TYPE = BACKPORT + "backport-channel-type"

_MEDPLUM = (
    "https://medplum.com/fhir/StructureDefinition/",
    "https://www.medplum.com/fhir/StructureDefinition/",
)
SECRET_URLS = (
    *(base + "subscription-secret" for base in reversed(_MEDPLUM)),
    "https://www.medplum.com/fhir/StructureDefinition-subscriptionSecret",
)
INTERACTION_URLS = tuple(base + "subscription-supported-interaction" for base in _MEDPLUM)
FHIRPATH_URLS = tuple(base + "fhir-path-criteria-expression" for base in _MEDPLUM)
MAX_ATTEMPTS_URLS = tuple(base + "subscription-max-attempts" for base in _MEDPLUM)

CONTENT_CODES: tuple[ContentCode, ...] = ("empty", "id-only", "full-resource")
INTERACTIONS = ("create", "update", "delete")
_STATUSES = {"requested": "requested", "active": "requested", "off": "off"}
_MIME_TYPES = ("application/fhir+json", "application/json")
_FHIR_VERSIONS = {"4.0": "R4", "4.3": "R4B", "5.0": "R5"}  # by major.minor
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


@dataclass(frozen=True)
class Channel:
    """Where and how notifications go: endpoint, headers, MIME type, content level, limits."""

    endpoint: str
    headers: dict[str, str]
    mime_type: str | None
    content: ContentCode
    heartbeat: int | None = None
    timeout: int | None = None
    max_count: int | None = None


class SubscriptionReader:
    """Reads one submitted Subscription, collecting every problem instead of stopping at one."""

    def __init__(self, resource: Mapping[str, Any], topics: Mapping[str, Collection[str]]):
        self.resource = resource
        self.topics = topics
        self.issues: list[Issue] = []

    def problem(self, location: str, message: str) -> None:
        """Note a problem at `location`."""
        self.issues.append((location, message))

    # -- status, end, reason ---------------------------------------------------------------

    def status(self) -> str | None:
        """The requested status: `requested` (also for a submitted `active`) or `off`."""
        value = self.resource.get("status")
        if value not in _STATUSES:
            self.problem(
                "Subscription.status", f"a client may submit requested or off, not {value!r}"
            )
            return None
        return _STATUSES[value]

    def end(self) -> datetime | None:
        """`Subscription.end` as an aware datetime."""
        value = self.resource.get("end")
        if value is None:
            return None
        try:
            moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            moment = None
        if moment is None or moment.tzinfo is None:
            self.problem("Subscription.end", f"{value!r} is not a FHIR instant with a time zone")
            return None
        return moment

    def reason(self, shape: Shape) -> str | None:
        """`Subscription.reason`: required in the R4 shapes."""
        value = self.resource.get("reason")
        if value is None and shape != "R5":
            self.problem("Subscription.reason", "reason is required (R4 Subscription.reason 1..1)")
        elif value is not None and not isinstance(value, str):
            self.problem("Subscription.reason", "reason must be a string")
            return None
        return value

    def version(self, shape: Shape, channel: Channel | None) -> FhirVersion | None:
        """The notification version: the shape's, or R4B when the MIME type asks for 4.3."""
        asked = _mime_parameter(channel.mime_type or "" if channel else "", "fhirversion")
        version = _FHIR_VERSIONS.get((asked or "")[:3])
        if asked is not None and (version is None or (version == "R5") != (shape == "R5")):
            location = (
                "Subscription.contentType" if shape == "R5" else "Subscription.channel.payload"
            )
            self.problem(location, f"cannot send fhirVersion={asked} notifications here")
            return None
        return "R4B" if version == "R4B" else shape

    def channel_of(self, shape: Shape) -> Channel | None:
        """The channel: R5's flat elements, or the R4 `channel` element."""
        return self.r5_channel() if shape == "R5" else self.r4_channel(shape)

    def trigger_of(self, shape: Shape) -> tuple[str | None, str | None, tuple[str, ...]]:
        """(search criteria, topic canonical, filters as `Type?query`) of the Subscription."""
        if shape != "R5":
            return self.r4_criteria(shape)
        topic = self.topic(self.resource.get("topic"), "Subscription.topic")
        return None, topic, self.filter_by(self.topics.get(topic or "", ()))

    def secret(self) -> str | None:
        """The Medplum subscription-secret value (possibly MASKED_SECRET), if given."""
        return self.single_value(SECRET_URLS, "valueString")[1]

    # -- criteria and topics ---------------------------------------------------------------

    def r4_criteria(self, shape: Shape) -> tuple[str | None, str | None, tuple[str, ...]]:
        value = self.resource.get("criteria")
        if not isinstance(value, str) or not value.strip():
            self.problem("Subscription.criteria", "criteria is required")
            return None, None, ()
        if shape == "R4-backport":
            topic = self.topic(value, "Subscription.criteria")
            return None, topic, self.filter_criteria(self.topics.get(topic or "", ()))
        try:
            parse_criteria(value)
        except ValueError as error:
            self.problem("Subscription.criteria", str(error))
        return value.strip(), None, ()

    def topic(self, value: Any, location: str) -> str | None:
        if not isinstance(value, str) or not value.strip():
            self.problem(location, "a SubscriptionTopic canonical URL is required")
            return None
        canonical = value.strip().split("|", 1)[0]
        if canonical not in self.topics:
            self.problem(location, f"unknown SubscriptionTopic {canonical!r}")
            return None
        return canonical

    def filter_criteria(self, resource_types: Collection[str]) -> tuple[str, ...]:
        filters = []
        for location, extension in _extensions(
            self.resource.get("_criteria"), "Subscription.criteria"
        ):
            if extension.get("url") in FILTER_CRITERIA:
                text = self.typed(extension, "valueString", location)
                if text is not None:
                    filters.append(self.check_filter(text, resource_types, location))
        return tuple(item for item in filters if item is not None)

    def filter_by(self, resource_types: Collection[str]) -> tuple[str, ...]:
        filters = []
        for index, item in enumerate(_list(self.resource.get("filterBy"))):
            location = f"Subscription.filterBy[{index}]"
            text = self.filter_text(item, location)
            if text is not None:
                filters.append(self.check_filter(text, resource_types, location))
        return tuple(item for item in filters if item is not None)

    def filter_text(self, item: Any, location: str) -> str | None:
        if not isinstance(item, Mapping):
            self.problem(location, "filterBy entries are objects")
            return None
        parameter, value = item.get("filterParameter"), item.get("value")
        if not isinstance(parameter, str) or not isinstance(value, str):
            self.problem(location, "filterParameter and value are required strings")
            return None
        modifier, comparator = item.get("modifier"), item.get("comparator")
        name = f"{parameter}:{modifier}" if modifier else parameter
        prefix = comparator if comparator not in (None, "eq") else ""
        resource_type = str(item.get("resourceType") or "").rsplit("/", 1)[-1]
        query = f"{name}={prefix}{value}"
        return f"{resource_type}?{query}" if resource_type else query

    def check_filter(self, text: str, resource_types: Collection[str], location: str) -> str | None:
        """The filter as `Type?query`, checked against the topic's resource types."""
        named = text.split("?", 1)[0] if "?" in text else None
        if named is None and len(resource_types) != 1:
            self.problem(location, f"{text!r}: name the resource type (Type?{text})")
            return None
        chosen = named or next(iter(resource_types))
        if resource_types and chosen not in resource_types:
            self.problem(location, f"{text!r}: the topic has no trigger on {chosen}")
            return None
        query = text.split("?", 1)[1] if named is not None else text
        try:
            return parse_criteria(f"{chosen}?{query}").text
        except ValueError as error:
            self.problem(location, str(error))
            return None

    # -- channels --------------------------------------------------------------------------

    def r4_channel(self, shape: Shape) -> Channel | None:
        channel = self.resource.get("channel")
        if not isinstance(channel, Mapping):
            self.problem("Subscription.channel", "channel is required")
            return None
        at = "Subscription.channel"
        self.channel_type(channel.get("type"), f"{at}.type", channel.get("_type"))
        mime = self.mime_type(channel.get("payload"), f"{at}.payload", required=shape != "R4")
        content = self.backport_content(channel.get("_payload"))
        if content is None:
            content = "full-resource" if mime is not None and shape == "R4" else "empty"
            if shape == "R4-backport":
                self.problem(f"{at}.payload", "the backport-payload-content extension is required")
        return self.channel(
            channel.get("endpoint"),
            f"{at}.endpoint",
            self.header_lines(channel.get("header")),
            mime,
            content,
            heartbeat=self.channel_extension(channel, HEARTBEAT_PERIOD, "valueUnsignedInt"),
            timeout=self.channel_extension(channel, TIMEOUT, "valueUnsignedInt"),
            max_count=self.channel_extension(channel, MAX_COUNT, "valuePositiveInt"),
        )

    def r5_channel(self) -> Channel | None:
        channel_type = self.resource.get("channelType")
        code = channel_type.get("code") if isinstance(channel_type, Mapping) else None
        self.channel_type(code, "Subscription.channelType", None)
        content = self.resource.get("content", "id-only")
        if content not in CONTENT_CODES:
            self.problem(
                "Subscription.content", f"content must be one of {', '.join(CONTENT_CODES)}"
            )
            content = "id-only"
        return self.channel(
            self.resource.get("endpoint"),
            "Subscription.endpoint",
            self.parameters(),
            self.mime_type(
                self.resource.get("contentType"), "Subscription.contentType", required=False
            ),
            content,
            heartbeat=self.number(
                self.resource.get("heartbeatPeriod"), "Subscription.heartbeatPeriod", 0
            ),
            timeout=self.number(self.resource.get("timeout"), "Subscription.timeout", 1),
            max_count=self.number(self.resource.get("maxCount"), "Subscription.maxCount", 1),
        )

    def channel(
        self,
        endpoint: Any,
        location: str,
        headers: dict[str, str],
        mime: str | None,
        content: ContentCode,
        **limits: int | None,
    ) -> Channel | None:
        if not isinstance(endpoint, str) or not re.match(r"^https?://\S+$", endpoint.strip()):
            self.problem(location, "an http(s) endpoint URL is required for rest-hook")
            return None
        return Channel(endpoint.strip(), headers, mime, content, **limits)

    def channel_type(self, code: Any, location: str, primitive: Any) -> None:
        if any(ext.get("url") == CHANNEL_TYPE for _, ext in _extensions(primitive, location)):
            self.problem(location, "custom channel types are not supported; use rest-hook")
        elif code != "rest-hook":
            self.problem(location, f"only the rest-hook channel is supported, not {code!r}")

    def mime_type(self, value: Any, location: str, *, required: bool) -> str | None:
        if value is None:
            if required:
                self.problem(location, "the payload MIME type is required (application/fhir+json)")
            return None
        kind = str(value).split(";", 1)[0].strip().lower()
        if kind not in _MIME_TYPES:
            self.problem(
                location, f"Tidings sends JSON only: use application/fhir+json, not {value!r}"
            )
            return None
        return str(value)

    def backport_content(self, primitive: Any) -> ContentCode | None:
        for location, extension in _extensions(primitive, "Subscription.channel.payload"):
            if extension.get("url") == PAYLOAD_CONTENT:
                code = extension.get("valueCode")
                if code in CONTENT_CODES:
                    return code  # type: ignore[no-any-return]
                self.problem(location, f"payload content must be one of {', '.join(CONTENT_CODES)}")
        return None

    def channel_extension(self, channel: Mapping[str, Any], url: str, key: str) -> int | None:
        for location, extension in _extensions(channel, "Subscription.channel"):
            if extension.get("url") == url:
                least = 1 if key == "valuePositiveInt" or url == TIMEOUT else 0
                return self.number(extension.get(key), f"{location}.{key}", least)
        return None

    def number(self, value: Any, location: str, least: int) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            self.problem(location, f"expected a whole number of at least {least}, not {value!r}")
            return None
        return value

    # -- headers ---------------------------------------------------------------------------

    def header_lines(self, lines: Any) -> dict[str, str]:
        """R4 `channel.header` strings, split on the first colon (values may hold colons)."""
        headers: dict[str, str] = {}
        for index, line in enumerate(_list(lines)):
            location = f"Subscription.channel.header[{index}]"
            name, colon, value = line.partition(":") if isinstance(line, str) else ("", "", "")
            if not colon:
                self.problem(location, "expected a 'Name: value' string")
                continue
            self.header(headers, name.strip(), value.strip(), location)
        return headers

    def parameters(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        for index, item in enumerate(_list(self.resource.get("parameter"))):
            location = f"Subscription.parameter[{index}]"
            name = item.get("name") if isinstance(item, Mapping) else None
            value = item.get("value") if isinstance(item, Mapping) else None
            if not isinstance(name, str) or not isinstance(value, str):
                self.problem(location, "name and value are required strings")
                continue
            self.header(headers, name.strip(), value.strip(), location)
        return headers

    def header(self, headers: dict[str, str], name: str, value: str, location: str) -> None:
        if not _TOKEN.match(name):
            self.problem(location, f"{name!r} is not a valid HTTP header name")
        elif any(char in value for char in "\r\n\0"):
            self.problem(location, "header values may not contain line breaks")
        elif name.lower() in (known.lower() for known in headers):
            self.problem(location, f"header {name!r} is given twice")
        else:
            headers[name] = value

    # -- Medplum extensions ----------------------------------------------------------------

    def interactions(self, *, topic_based: bool) -> tuple[str, ...]:
        found = [
            (location, extension.get("valueCode"))
            for location, extension in _extensions(self.resource, "Subscription")
            if extension.get("url") in INTERACTION_URLS
        ]
        if found and topic_based:
            self.problem(
                found[0][0], "the topic defines the interactions of a topic-based Subscription"
            )
        for location, code in found:
            if code not in INTERACTIONS:
                self.problem(
                    f"{location}.valueCode", f"expected create, update or delete, not {code!r}"
                )
        chosen = {code for _, code in found}
        if topic_based:
            return ()
        return tuple(code for code in INTERACTIONS if code in chosen) or ("create", "update")

    def fhirpath(self) -> str | None:
        location, text = self.single_value(FHIRPATH_URLS, "valueString")
        if text is not None:
            try:
                compile_expression(text)
            except ValueError as error:
                self.problem(location, str(error))
                return None
        return text

    def max_attempts(self) -> int | None:
        for location, extension in _extensions(self.resource, "Subscription"):
            if extension.get("url") in MAX_ATTEMPTS_URLS:
                return self.number(extension.get("valueInteger"), f"{location}.valueInteger", 1)
        return None

    def single_value(self, urls: tuple[str, ...], key: str) -> tuple[str, str | None]:
        """(location, value) of an extension that may appear once; value None when absent."""
        found = [
            (loc, ext)
            for loc, ext in _extensions(self.resource, "Subscription")
            if ext.get("url") in urls
        ]
        if len(found) > 1:
            self.problem(found[1][0], "this extension may appear only once")
        if not found:
            return "Subscription", None
        return found[0][0], self.typed(found[0][1], key, found[0][0])

    def typed(self, extension: Mapping[str, Any], key: str, location: str) -> str | None:
        value = extension.get(key)
        if not isinstance(value, str) or not value.strip():
            self.problem(location, f"expected a non-empty {key}")
            return None
        return value


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [] if value is None else [value]


def _extensions(element: Any, location: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(location, extension) for each extension of `element` that is an object."""
    if isinstance(element, Mapping):
        for index, extension in enumerate(_list(element.get("extension"))):
            if isinstance(extension, Mapping):
                yield f"{location}.extension[{index}]", extension


def _mime_parameter(mime: str, name: str) -> str | None:
    for part in mime.split(";")[1:]:
        key, _, value = part.partition("=")
        if key.strip().lower() == name:
            return value.strip().strip('"')
    return None

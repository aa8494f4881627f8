"""The event catalog: every event type partners can subscribe to, loaded and checked at start-up.

`load_catalog` reads the shipped catalogs (`app/catalogs/`) and any extra files or folders, and
compiles each entry (search criteria, FHIRPath, JSON Schema) so that a broken catalog stops
start-up with one message naming the file, the entry and the reason.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from jsonschema import FormatChecker
from jsonschema.exceptions import SchemaError
from jsonschema.validators import Draft202012Validator, validator_for

from app.domain.catalog_files import CatalogEntry, CatalogError, catalog_files, read_entries
from app.domain.event_types import (
    EventCoding,
    EventType,
    Expression,
    ExtensionRule,
    SearchCriteria,
    Trigger,
    ValidationProblem,
)
from app.domain.models import Interaction, PayloadFormat, ResourceChange
from app.domain.schema_fast_path import FastValidator, fast_validator_for
from app.fhir.fhirpath import compile_expression
from app.fhir.resource_types import is_resource_type
from app.fhir.search import parse_criteria

__all__ = [
    "Catalog",
    "CatalogError",
    "EventCoding",
    "EventType",
    "ExtensionRule",
    "Trigger",
    "ValidationProblem",
    "load_catalog",
]

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*(\.[A-Za-z0-9][A-Za-z0-9_\-]*)*$")
_ENTRY_FIELDS = frozenset(
    {
        "name",
        "description",
        "payload_format",
        "event_coding",
        "triggers",
        "focus",
        "extensions",
        "data_schema",
        "example",
    }
)
_TRIGGER_FIELDS = frozenset(
    {"resource", "interactions", "criteria", "previous_criteria", "fhirpath"}
)
_URL = re.compile(r"^(\{public_url\}|[A-Za-z][A-Za-z0-9+.\-]*:)\S+$")


class Catalog:
    """The loaded event types, by name, with triggers indexed by resource type and interaction."""

    def __init__(self, event_types: Iterable[EventType]) -> None:
        self._types = {event_type.name: event_type for event_type in event_types}
        self._names = tuple(sorted(self._types))
        self._triggers: dict[tuple[str, Interaction], list[tuple[EventType, Trigger]]] = {}
        for name in self._names:
            self._index(self._types[name])
        self._needing_previous = frozenset(
            trigger.resource
            for event_type in self._types.values()
            for trigger in event_type.triggers
            if trigger.needs_previous
        )

    def _index(self, event_type: EventType) -> None:
        for trigger in event_type.triggers:
            for interaction in trigger.interactions:
                key = (trigger.resource, interaction)
                self._triggers.setdefault(key, []).append((event_type, trigger))

    def get(self, name: str) -> EventType | None:
        """The event type called `name`, if any."""
        return self._types.get(name)

    def names(self) -> tuple[str, ...]:
        """Every event type name, sorted."""
        return self._names

    def names_under(self, prefix: str) -> tuple[str, ...]:
        """The names that a `prefix.*` filter matches: those starting with `prefix.`."""
        start = prefix + "."
        first = bisect.bisect_left(self._names, start)
        last = first
        while last < len(self._names) and self._names[last].startswith(start):
            last += 1
        return self._names[first:last]

    def __iter__(self) -> Iterator[EventType]:
        return (self._types[name] for name in self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._types

    def types_for_change(self, change: ResourceChange) -> list[EventType]:
        """The event types, in name order, whose triggers fire for `change`."""
        fired: list[EventType] = []
        for event_type, trigger in self._triggers.get(
            (change.resource_type, change.interaction), []
        ):
            if (not fired or fired[-1] is not event_type) and trigger.matches(change):
                fired.append(event_type)
        return fired

    def needs_previous(self, resource_type: str) -> bool:
        """Whether any trigger on `resource_type` needs the previous version of the resource."""
        return resource_type in self._needing_previous


def load_catalog(paths: Sequence[Path] = ()) -> Catalog:
    """The shipped catalogs plus each extra file or folder of `.toml`/`.json` catalog files.

    Raises `CatalogError` naming the file, the entry and the reason for the first problem.
    """
    seen: dict[str, EventType] = {}
    origin: dict[str, Path] = {}
    for path in catalog_files(paths):
        for entry in read_entries(path):
            event_type = compile_entry(entry)
            if event_type.name in seen:
                reason = f"duplicate name, first defined in {origin[event_type.name]}"
                raise CatalogError(entry.path, entry.label, reason)
            seen[event_type.name] = event_type
            origin[event_type.name] = entry.path
    return Catalog(seen.values())


def compile_entry(entry: CatalogEntry) -> EventType:
    """The event type one raw catalog entry describes; `CatalogError` when it is not usable."""
    try:
        return _compile(entry.fields)
    except (ValueError, TypeError, SchemaError) as exc:
        reason = exc.message if isinstance(exc, SchemaError) else str(exc)
        raise CatalogError(entry.path, entry.label, reason) from exc


def _compile(fields: Mapping[str, Any]) -> EventType:
    _reject_unknown(fields, _ENTRY_FIELDS, "field")
    name = _name(fields.get("name"))
    schema = _optional(fields, "data_schema", dict)
    validator = _schema_validator(schema) if schema is not None else None
    event_type = EventType(
        name=name,
        description=_optional(fields, "description", str) or "",
        payload_format=_payload_format(fields.get("payload_format", PayloadFormat.ENVELOPE)),
        event_coding=_event_coding(fields.get("event_coding"), name),
        triggers=tuple(_triggers(fields.get("triggers", []))),
        focus=_expression(fields["focus"], "focus") if "focus" in fields else None,
        extensions=tuple(_extensions(fields.get("extensions", {}))),
        data_schema=schema,
        example=fields.get("example"),
        schema_validator=validator,
        fast_validator=_fast_validator(schema, validator),
    )
    _check_example(event_type)
    return event_type


def _reject_unknown(fields: Mapping[str, Any], known: frozenset[str], what: str) -> None:
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"unknown {what}(s): {', '.join(unknown)}")


def _optional(fields: Mapping[str, Any], key: str, kind: type) -> Any:
    value = fields.get(key)
    if value is not None and not isinstance(value, kind):
        raise ValueError(f"{key} must be a {'string' if kind is str else 'table (object)'}")
    return value


def _name(value: Any) -> str:
    if value is None:
        raise ValueError("missing name")
    if not isinstance(value, str) or not NAME_PATTERN.match(value):
        raise ValueError(f"invalid name {value!r}: use letters, digits, _ and -, joined by dots")
    return value


def _payload_format(value: Any) -> PayloadFormat:
    try:
        return PayloadFormat(value)
    except ValueError:
        known = ", ".join(f.value for f in PayloadFormat)
        raise ValueError(f"unknown payload_format {value!r} (known: {known})") from None


def _event_coding(value: Any, name: str) -> EventCoding | None:
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) - {"system", "code"}:
        raise ValueError("event_coding must be a table with system and code")
    system, code = value.get("system"), value.get("code", name)
    if not isinstance(code, str) or not code or (system is not None and not _is_url(system)):
        raise ValueError("event_coding needs a non-empty code and an absolute URL as system")
    return EventCoding(code=code, system=system)


def _is_url(value: Any) -> bool:
    return isinstance(value, str) and bool(_URL.match(value))


def _triggers(value: Any) -> Iterator[Trigger]:
    if not isinstance(value, list):
        raise ValueError("triggers must be a list of tables")
    for number, fields in enumerate(value):
        if not isinstance(fields, dict):
            raise ValueError(f"triggers[{number}] must be a table (object)")
        try:
            yield _trigger(fields)
        except ValueError as exc:
            raise ValueError(f"triggers[{number}]: {exc}") from exc


def _trigger(fields: Mapping[str, Any]) -> Trigger:
    _reject_unknown(fields, _TRIGGER_FIELDS, "field")
    resource = fields.get("resource")
    if resource is None:
        raise ValueError("missing resource")
    if not isinstance(resource, str) or not is_resource_type(resource):
        raise ValueError(f"unknown resource type {resource!r}")
    return Trigger(
        resource=resource,
        interactions=_interactions(fields.get("interactions", [i.value for i in Interaction])),
        criteria=_criteria(fields.get("criteria"), resource, "criteria"),
        previous_criteria=_criteria(fields.get("previous_criteria"), resource, "previous_criteria"),
        fhirpath=_expression(fields["fhirpath"], "fhirpath") if "fhirpath" in fields else None,
    )


def _interactions(value: Any) -> frozenset[Interaction]:
    if not isinstance(value, list) or not value:
        raise ValueError("interactions must be a non-empty list of create, update, delete")
    try:
        return frozenset(Interaction(item) for item in value)
    except ValueError:
        bad = [item for item in value if item not in [i.value for i in Interaction]]
        raise ValueError(
            f"unknown interaction {bad[0]!r} (known: create, update, delete)"
        ) from None


def _criteria(text: Any, resource: str, key: str) -> SearchCriteria | None:
    if text is None:
        return None
    if not isinstance(text, str):
        raise ValueError(f"{key} must be a string")
    try:
        criteria = parse_criteria(text, resource_type=resource)
    except ValueError as exc:
        raise ValueError(f"invalid {key} {text!r}: {exc}") from exc
    if criteria.resource_type != resource:
        raise ValueError(f"{key} {text!r} is for {criteria.resource_type}, not {resource}")
    return SearchCriteria(text, criteria)


def _expression(text: Any, key: str) -> Expression:
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{key} must be a non-empty FHIRPath string")
    try:
        return Expression(text, compile_expression(text))
    except ValueError as exc:
        raise ValueError(f"invalid FHIRPath in {key} {text!r}: {exc}") from exc


def _extensions(value: Any) -> Iterator[ExtensionRule]:
    if not isinstance(value, dict):
        raise ValueError("extensions must be a table of url = FHIRPath")
    for url, text in value.items():
        if not _is_url(url):
            raise ValueError(f"extension url {url!r} is not an absolute URL")
        yield ExtensionRule(url=url, value=_expression(text, f"extensions[{url!r}]"))


def _schema_validator(schema: dict[str, Any]) -> Any:
    cls = validator_for(schema, default=Draft202012Validator)
    cls.check_schema(schema)
    return cls(schema, format_checker=format_checker(cls.FORMAT_CHECKER))


# rfc3339-validator's pattern ends in `$`, which also matches before a final line break.
_RFC3339_FORMATS = ("date-time", "time")


def format_checker(drafts: FormatChecker) -> FormatChecker:
    """The draft's own format checks, except that `date-time` and `time` refuse a value that
    ends in a line break (`"2026-01-01T00:00:00Z\n"`), which the draft's check lets through."""
    checker = FormatChecker(formats=())
    checker.checkers = dict(drafts.checkers)
    for name in _RFC3339_FORMATS:
        if name in checker.checkers:
            check, raises = checker.checkers[name]
            checker.checkers[name] = (_without_line_end(check), raises)
    return checker


def _without_line_end(check: Callable[[object], bool]) -> Callable[[object], bool]:
    return lambda value: not (isinstance(value, str) and value.endswith("\n")) and check(value)


def _fast_validator(schema: dict[str, Any] | None, validator: Any) -> FastValidator | None:
    if schema is None:
        return None
    return fast_validator_for(schema, format_checker=validator.format_checker)


def _check_example(event_type: EventType) -> None:
    if event_type.example is None or event_type.schema_validator is None:
        return
    problems = event_type.validate_data(event_type.example)
    if problems:
        first = problems[0]
        raise ValueError(f"example does not match data_schema at {first.pointer!r}: {first.detail}")

"""An event type from the catalog, compiled: its triggers, focus, extensions and data schema.

Everything a catalog entry says is parsed once, at load; matching a resource change or checking
the data of a published event then costs no parsing.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from jsonschema.protocols import Validator

from app.domain.errors import Problem
from app.domain.models import Interaction, JSONObject, PayloadFormat, ResourceChange
from app.domain.schema_fast_path import FastValidator, fast_accepts
from app.fhir.fhirpath import FhirPathError, FhirPathExpression
from app.fhir.search import Criteria, CriteriaError

ValidationProblem = Problem
"""One field of published event data that breaks the type's `data_schema`."""


@dataclass(frozen=True)
class EventCoding:
    """`MessageHeader.eventCoding` for this type; a missing system means Tidings' own."""

    code: str
    system: str | None = None


@dataclass(frozen=True)
class Expression:
    """A FHIRPath expression with the text it came from."""

    text: str
    compiled: FhirPathExpression = field(repr=False, compare=False)

    def values(self, subject: JSONObject) -> list[Any]:
        """The expression's result over `subject`; empty when it cannot be evaluated."""
        try:
            return list(self.compiled.evaluate(subject))
        except FhirPathError:
            return []


@dataclass(frozen=True)
class SearchCriteria:
    """FHIR search criteria with the text they came from."""

    text: str
    compiled: Criteria = field(repr=False, compare=False)

    def matches(self, resource: JSONObject | None) -> bool:
        """True when `resource` is there and matches; never true when it cannot be decided."""
        if resource is None:
            return False
        try:
            return self.compiled.matches(resource)
        except CriteriaError:
            return False


@dataclass(frozen=True)
class Trigger:
    """A resource change that raises the event: type, interactions and optional conditions."""

    resource: str
    interactions: frozenset[Interaction]
    criteria: SearchCriteria | None = None
    previous_criteria: SearchCriteria | None = None
    fhirpath: Expression | None = None

    @property
    def needs_previous(self) -> bool:
        """Whether evaluating this trigger needs the resource's previous version."""
        uses_previous = self.fhirpath is not None and "%previous" in self.fhirpath.text
        return self.previous_criteria is not None or uses_previous

    def matches(self, change: ResourceChange) -> bool:
        """True when `change` fires this trigger; a condition that cannot be evaluated is false."""
        if change.resource_type != self.resource or change.interaction not in self.interactions:
            return False
        if self.criteria is not None and not self.criteria.matches(change.resource):
            return False
        if self.previous_criteria is not None and not self.previous_criteria.matches(
            change.previous
        ):
            return False
        return self.fhirpath is None or self._fhirpath_holds(change)

    def _fhirpath_holds(self, change: ResourceChange) -> bool:
        assert self.fhirpath is not None
        subject = change.resource if change.resource is not None else change.previous
        if subject is None:
            return False
        try:
            return self.fhirpath.compiled.is_true(
                subject, previous=change.previous, current=change.resource
            )
        except FhirPathError:
            return False


@dataclass(frozen=True)
class ExtensionRule:
    """A MessageHeader extension: its url and the FHIRPath giving its value from the event data.

    The url may start with `{public_url}`, replaced by Tidings' public URL when a payload is built.
    """

    url: str
    value: Expression

    def value_for(self, data: JSONObject) -> Any:
        """The first value of the expression over `data`, or None."""
        values = self.value.values(data)
        return values[0] if values else None


@dataclass(frozen=True, eq=False)
class EventType:
    """One kind of event partners can subscribe to."""

    name: str
    description: str = ""
    payload_format: PayloadFormat = PayloadFormat.ENVELOPE
    event_coding: EventCoding | None = None
    triggers: tuple[Trigger, ...] = ()
    focus: Expression | None = None
    extensions: tuple[ExtensionRule, ...] = ()
    data_schema: JSONObject | None = None
    example: Any = None
    schema_validator: Validator | None = field(default=None, repr=False)
    fast_validator: FastValidator | None = field(default=None, repr=False)
    """jsonschema-rs for `data_schema` when it is eligible: it may accept, never reject."""

    @property
    def needs_previous(self) -> bool:
        """Whether the ingest must fetch the previous version to evaluate the triggers."""
        return any(trigger.needs_previous for trigger in self.triggers)

    def focus_for_change(self, change: ResourceChange) -> str | None:
        """The focus reference of the event `change` raises: the resource itself by default."""
        if self.focus is None:
            return change.reference
        subject = change.resource if change.resource is not None else change.previous
        return None if subject is None else self._focus_over(subject)

    def focus_for_data(self, data: JSONObject) -> str | None:
        """The focus reference of a directly published event, from `focus` over its data."""
        return None if self.focus is None else self._focus_over(data)

    def _focus_over(self, subject: JSONObject) -> str | None:
        assert self.focus is not None
        for value in self.focus.values(subject):
            if isinstance(value, str) and value:
                return value
            if isinstance(value, Mapping) and isinstance(value.get("reference"), str):
                return str(value["reference"])
        return None

    def validate_data(self, data: Any, *, at: str = "") -> list[ValidationProblem]:
        """What is wrong with `data` under `data_schema`, as JSON pointers prefixed with `at`.

        `data` is JSON as Python's parsers produce it. The fast validator may only accept;
        whatever it rejects is checked again by Python's jsonschema, whose verdict and messages
        stand.
        """
        if self.schema_validator is None:
            return []
        if self.fast_validator is not None and fast_accepts(self.fast_validator, data):
            return []
        found: dict[str, str] = {}
        for error in self.schema_validator.iter_errors(data):
            for pointer in _error_pointers(error):
                found.setdefault(at + pointer, error.message)
        return [ValidationProblem(pointer, detail) for pointer, detail in sorted(found.items())]


def _error_pointers(error: Any) -> Iterator[str]:
    base = "".join(f"/{_escape(part)}" for part in error.absolute_path)
    if error.validator == "required" and isinstance(error.instance, Mapping):
        missing = [name for name in error.validator_value if name not in error.instance]
        for name in missing:
            if repr(name) in error.message:
                yield f"{base}/{_escape(name)}"
                return
    yield base


def _escape(part: object) -> str:
    return str(part).replace("~", "~0").replace("/", "~1")

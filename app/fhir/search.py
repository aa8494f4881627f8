"""FHIR R4 search criteria (`Patient?gender=female&birthdate=ge2000`) matched against one resource.

Catalog triggers and criteria-based Subscriptions select resource changes with a FHIR search
string (SPEC sections 5 and 7). Tidings evaluates it on the changed resource itself, with the
official R4 search parameter expressions. Anything it cannot evaluate faithfully (chains, `_has`,
composite parameters, unknown modifiers) is refused when the criteria are parsed: a criterion
silently ignored would send partners changes they did not ask for.

Several parameters, and a parameter repeated, must all match (AND); the comma-separated values of
one parameter are alternatives (OR).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from app.fhir.fhirpath import FhirPathExpression
from app.fhir.resource_types import is_resource_type
from app.fhir.search_dates import DateValue, parse_date_range
from app.fhir.search_definitions import SearchParameter, find_search_parameter
from app.fhir.search_values import (
    STRING_MODES,
    URI_MODES,
    SearchValue,
    StringValue,
    TokenTextValue,
    UriValue,
    parse_number_value,
    parse_quantity,
    parse_reference,
    parse_token,
    split_escaped,
    split_prefix,
    unescape,
)

MODIFIERS = {
    "token": {"", "missing", "not", "text"},
    "string": {"", "missing", "exact", "contains"},
    "reference": {"", "missing"},  # and `:Type`
    "uri": {"", "missing", "below", "above"},
    "date": {"", "missing"},
    "number": {"", "missing"},
    "quantity": {"", "missing"},
}
RESULT_PARAMETERS = frozenset(
    {
        "_sort", "_count", "_include", "_revinclude", "_summary", "_total", "_elements",
        "_contained", "_containedType", "_format", "_pretty",
    }
)  # fmt: skip
REFUSED_PARAMETERS = {
    "_filter": "_filter expressions are not supported",
    "_type": "_type only applies to searches across several resource types",
    "_list": "_list needs a server to read the List",
}


class CriteriaError(ValueError):
    """Search criteria Tidings cannot evaluate: the message names the parameter and the reason."""


@dataclass(frozen=True)
class Criterion:
    """One `name[:modifier]=value[,value]` of a search: any of its values may match."""

    parameter: SearchParameter
    expression: FhirPathExpression
    values: tuple[SearchValue, ...] = ()
    missing: bool | None = None
    negated: bool = False

    def matches(self, resource: dict[str, Any]) -> bool:
        """Whether the resource satisfies this criterion."""
        elements = self.expression.evaluate(resource)
        if self.missing is not None:
            return (not elements) == self.missing
        found = any(value.matches(element) for element in elements for value in self.values)
        return not found if self.negated else found


@dataclass(frozen=True)
class Criteria:
    """Parsed search criteria for one resource type; every criterion must match."""

    resource_type: str
    terms: tuple[Criterion, ...] = ()
    text: str = ""

    def matches(self, resource: dict[str, Any]) -> bool:
        """Whether `resource` is of this type and meets every criterion.

        Never fails open: a resource of another type, or one whose evaluation fails, is no match.
        """
        try:
            if resource.get("resourceType") != self.resource_type:
                return False
            return all(term.matches(resource) for term in self.terms)
        except Exception:
            return False


def parse_criteria(text: str, resource_type: str | None = None) -> Criteria:
    """Parse `Type?query`, `Type` alone, or just the query when `resource_type` is given.

    Raises CriteriaError for an unknown resource type or parameter, and for anything Tidings
    cannot evaluate (chains, `_has`, composite parameters, unsupported modifiers, bad values).
    """
    stripped = text.strip()
    if "?" in stripped:
        named_type, query = stripped.split("?", 1)
    elif "=" in stripped:
        named_type, query = "", stripped
    else:
        named_type, query = stripped, ""
    chosen = _resource_type(stripped, named_type, resource_type)
    terms = tuple(_parse_term(chosen, part) for part in query.split("&") if part)
    return Criteria(resource_type=chosen, terms=terms, text=stripped)


def _resource_type(text: str, named: str, given: str | None) -> str:
    """The resource type the criteria select: the one named in them, else the one given."""
    if named and given and named != given:
        raise CriteriaError(f"{text}: criteria are for {named}, not {given}")
    chosen = named or given
    if not chosen:
        raise CriteriaError(f"{text}: criteria must name a resource type (e.g. Patient?...)")
    if not is_resource_type(chosen):
        raise CriteriaError(f"{text}: unknown resource type {chosen!r}")
    return chosen


def _parse_term(resource_type: str, part: str) -> Criterion:
    """One `name[:modifier]=value` of the query, URL-decoded."""
    raw_name, equals, raw_value = part.partition("=")
    name, value = unquote(raw_name), unquote(raw_value)
    context = f"{resource_type}?{name}={value}"
    if not equals:
        raise CriteriaError(f"{resource_type}?{name}: expected name=value")
    code, _, modifier = name.partition(":")
    try:
        parameter = _search_parameter(resource_type, code, modifier)
        return _criterion(parameter, modifier, value)
    except ValueError as error:
        raise CriteriaError(f"{context}: {error}") from None


def _search_parameter(resource_type: str, code: str, modifier: str) -> SearchParameter:
    """The parameter named `code`, refusing what Tidings cannot evaluate."""
    if code.startswith("_has"):
        raise ValueError("reverse chaining (_has) is not supported")
    if "." in code or "." in modifier:
        raise ValueError("chained search parameters are not supported")
    if code in RESULT_PARAMETERS:
        raise ValueError(f"{code} shapes search results and cannot select a resource")
    if code in REFUSED_PARAMETERS:
        raise ValueError(REFUSED_PARAMETERS[code])
    parameter = find_search_parameter(resource_type, code)
    if parameter is None:
        raise ValueError(f"unknown search parameter {code!r} for {resource_type}")
    if parameter.unsupported is not None or parameter.expression is None:
        raise ValueError(f"search parameter {code!r} is not supported: {parameter.unsupported}")
    if modifier not in MODIFIERS[parameter.type] and not _is_type_modifier(parameter, modifier):
        raise ValueError(
            f"modifier ':{modifier}' is not supported for {parameter.type} parameter {code!r}"
        )
    return parameter


def _is_type_modifier(parameter: SearchParameter, modifier: str) -> bool:
    """Whether `modifier` is a `:Type` the reference parameter may point to."""
    return parameter.type == "reference" and modifier in parameter.target


def _criterion(parameter: SearchParameter, modifier: str, value: str) -> Criterion:
    """The criterion for one parameter, modifier and comma-separated value list."""
    assert parameter.expression is not None  # _search_parameter refused the rest
    if not value:
        raise ValueError("no value given")
    if modifier == "missing":
        if value not in ("true", "false"):
            raise ValueError(f":missing takes true or false, not {value!r}")
        return Criterion(parameter, parameter.expression, missing=value == "true")
    parse = _value_parser(parameter, modifier)
    alternatives = split_escaped(value, ",")
    if not all(alternatives):
        raise ValueError("empty value in the comma-separated list")
    values = tuple(parse(alternative) for alternative in alternatives)
    return Criterion(parameter, parameter.expression, values=values, negated=modifier == "not")


def _value_parser(parameter: SearchParameter, modifier: str) -> Callable[[str], SearchValue]:
    """How to parse one (still escaped) value of this parameter type under this modifier."""
    match parameter.type:
        case "token":
            if modifier == "text":
                return lambda text: TokenTextValue(unescape(text))
            return parse_token
        case "string":
            return lambda text: StringValue(unescape(text), STRING_MODES[modifier])
        case "uri":
            return lambda text: UriValue(unescape(text), URI_MODES[modifier])
        case "reference":
            types = (modifier,) if modifier else parameter.target
            return lambda text: parse_reference(unescape(text), types)
        case "date":
            return lambda text: _parse_date_value(unescape(text))
        case "number":
            return lambda text: parse_number_value(unescape(text))
        case "quantity":
            return parse_quantity
    raise ValueError(f"{parameter.type} search parameters are not supported")


def _parse_date_value(text: str) -> DateValue:
    """`[prefix]date`."""
    prefix, date = split_prefix(text)
    return DateValue(prefix=prefix, searched=parse_date_range(date))

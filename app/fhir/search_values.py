"""Search values: the text after `=` in a criterion, parsed once, and how it matches an element.

Each value class answers one question, `matches(element)`, for one element the parameter's
FHIRPath expression found in a resource. Parsers raise ValueError with the reason; the criteria
parser adds which parameter it was.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, Protocol

from app.fhir.resource_types import is_resource_type

PREFIXES = frozenset({"eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"})
NUMBER_PATTERN = re.compile(r"[+-]?\d+(\.\d+)?([eE][+-]?\d+)?")
RESOURCE_ID_PATTERN = re.compile(r"[A-Za-z0-9\-.]{1,64}")
LITERAL_REFERENCE = re.compile(
    r"(?:^|/)(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$"
)
# The parts of a HumanName or an Address that a string search looks into.
STRING_PARTS = (
    "text", "family", "given", "prefix", "suffix",
    "line", "city", "district", "state", "postalCode", "country",
)  # fmt: skip

StringMode = Literal["starts", "exact", "contains"]
UriMode = Literal["exact", "below", "above"]
STRING_MODES: dict[str, StringMode] = {"": "starts", "exact": "exact", "contains": "contains"}
URI_MODES: dict[str, UriMode] = {"": "exact", "below": "below", "above": "above"}


class SearchValue(Protocol):
    """One parsed value of a criterion (the values of `a=x,y` are OR'ed)."""

    def matches(self, element: Any) -> bool:
        """Whether one element found in the resource satisfies this value."""


def split_escaped(text: str, separator: str) -> list[str]:
    r"""Split on `separator` unless escaped with a backslash; the parts keep their escapes."""
    parts, current, escaped = [], [], False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            current.append(char)
            escaped = True
        elif char == separator:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if escaped:
        raise ValueError(f"{text!r} ends with a lone backslash")
    parts.append("".join(current))
    return parts


def unescape(text: str) -> str:
    r"""The value as meant: `\,` `\|` `\$` `\\` stand for `,` `|` `$` `\`."""
    return re.sub(r"\\(.)", r"\1", text)


def split_prefix(text: str) -> tuple[str, str]:
    """`ge2000` -> (`ge`, `2000`); no prefix means `eq`."""
    if text[:2] in PREFIXES:
        return text[:2], text[2:]
    return "eq", text


def folded(text: str) -> str:
    """Text for case- and accent-insensitive comparison (`Zoë` and `ZOE` fold alike)."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(char for char in decomposed if not unicodedata.combining(char)).casefold()


@dataclass(frozen=True)
class TokenValue:
    """`code`, `system|code`, `|code` (no system) or `system|` (any code in the system)."""

    system: str | None  # None: any system; "": no system
    code: str | None  # None: any code

    def matches(self, element: Any) -> bool:
        """Match a code, boolean, string, Coding, CodeableConcept, Identifier or ContactPoint."""
        if isinstance(element, bool):
            return self.code == ("true" if element else "false")
        if isinstance(element, str):
            return self.code == element  # a bare code's system is implied by its element
        if not isinstance(element, dict):
            return False
        if "coding" in element:
            return any(self.matches(coding) for coding in element["coding"] or [])
        code = element.get("code") if "code" in element else element.get("value")
        if self.code is not None and code != self.code:
            return False
        return self.system is None or element.get("system", "") == self.system


def parse_token(text: str) -> TokenValue:
    """Parse a token search value."""
    parts = [unescape(part) for part in split_escaped(text, "|")]
    if len(parts) == 1:
        return TokenValue(system=None, code=parts[0])
    if len(parts) > 2:
        raise ValueError(f"{text!r} has more than one '|' (expected system|code)")
    system, code = parts
    if not system and not code:
        raise ValueError("'|' alone names neither a system nor a code")
    return TokenValue(system=system, code=code or None)


def token_texts(element: Any) -> list[str]:
    """The human-readable texts a `:text` token search looks at."""
    if not isinstance(element, dict):
        return []
    texts: list[Any] = [element.get("text"), element.get("display")]
    texts += [coding.get("display") for coding in element.get("coding") or []]
    texts.append((element.get("type") or {}).get("text"))
    return [text for text in texts if isinstance(text, str)]


@dataclass(frozen=True)
class TokenTextValue:
    """`:text`: the start of a CodeableConcept's text or a Coding's display, any case or accent."""

    text: str

    def matches(self, element: Any) -> bool:
        """Whether any text of the element starts with the searched text."""
        return any(folded(text).startswith(folded(self.text)) for text in token_texts(element))


def string_parts(element: Any) -> list[str]:
    """The strings a string search looks into: the string itself, or each part of a name or
    address (and a name's given names followed by its family name)."""
    if isinstance(element, str):
        return [element]
    if not isinstance(element, dict):
        return []
    parts: list[Any] = []
    for key in STRING_PARTS:
        value = element.get(key)
        parts += value if isinstance(value, list) else [value]
    given, family = element.get("given"), element.get("family")
    if isinstance(given, list) and isinstance(family, str):
        parts.append(" ".join([*(name for name in given if isinstance(name, str)), family]))
    return [part for part in parts if isinstance(part, str)]


@dataclass(frozen=True)
class StringValue:
    """A string search: starts-with by default, `:exact` or `:contains`."""

    text: str
    mode: StringMode = "starts"

    def matches(self, element: Any) -> bool:
        """Whether any part of the element matches the searched text."""
        parts = string_parts(element)
        if self.mode == "exact":
            return self.text in parts
        searched = folded(self.text)
        if self.mode == "contains":
            return any(searched in folded(part) for part in parts)
        return any(folded(part).startswith(searched) for part in parts)


@dataclass(frozen=True)
class UriValue:
    """A uri search: exact, or `:below` / `:above` on path segments."""

    uri: str
    mode: UriMode = "exact"

    def matches(self, element: Any) -> bool:
        """Whether a uri, url or canonical element matches."""
        if not isinstance(element, str):
            return False
        if element == self.uri:
            return True
        if self.mode == "below":
            return element.startswith(self.uri.rstrip("/") + "/")
        if self.mode == "above":
            return self.uri.startswith(element.rstrip("/") + "/")
        return False


def parse_number(text: str) -> Decimal:
    """A FHIR decimal search value; ValueError if it is not one."""
    if not NUMBER_PATTERN.fullmatch(text):
        raise ValueError(f"{text!r} is not a number")
    return Decimal(text)


def as_decimal(element: Any) -> Decimal | None:
    """A numeric element as a Decimal; None if it is not a number."""
    if isinstance(element, bool) or not isinstance(element, int | float | Decimal):
        return None
    try:
        return Decimal(str(element))
    except InvalidOperation:
        return None


@dataclass(frozen=True)
class NumberValue:
    """A number search: `eq` means within the precision the number was written with."""

    prefix: str
    number: Decimal
    half_unit: Decimal  # `100` means [99.5, 100.5), `100.0` means [99.95, 100.05)

    def matches(self, element: Any) -> bool:
        """Whether a numeric element satisfies the prefix and number."""
        value = as_decimal(element)
        return value is not None and self.compare(value)

    def compare(self, value: Decimal) -> bool:
        """Whether `value` satisfies the prefix against the searched number."""
        within = self.number - self.half_unit <= value < self.number + self.half_unit
        match self.prefix:
            case "eq":
                return within
            case "ne":
                return not within
            case "gt" | "sa":
                return value > self.number
            case "lt" | "eb":
                return value < self.number
            case "ge":
                return value >= self.number
            case "le":
                return value <= self.number
        return within or abs(value - self.number) <= abs(self.number) / 10  # ap


def parse_number_value(text: str) -> NumberValue:
    """`[prefix]number`."""
    prefix, digits = split_prefix(text)
    number = parse_number(digits)
    exponent = number.as_tuple().exponent
    assert isinstance(exponent, int)  # a finite number, as parse_number checked
    return NumberValue(prefix=prefix, number=number, half_unit=Decimal(5).scaleb(exponent - 1))


@dataclass(frozen=True)
class QuantityValue:
    """`[prefix]number|system|code`, `[prefix]number||code` (code or unit), `[prefix]number`."""

    number: NumberValue
    system: str | None
    code: str | None

    def matches(self, element: Any) -> bool:
        """Whether a Quantity element has the number and, where given, the system and code."""
        if not isinstance(element, dict) or not self.number.matches(element.get("value")):
            return False
        if self.system is not None:
            return element.get("system") == self.system and element.get("code") == self.code
        if self.code is not None:
            return self.code in (element.get("code"), element.get("unit"))
        return True


def parse_quantity(text: str) -> QuantityValue:
    """Parse a quantity search value (no unit conversion: units must match as written)."""
    parts = [unescape(part) for part in split_escaped(text, "|")]
    if len(parts) not in (1, 3):
        raise ValueError(f"{text!r} is not number, number|system|code or number||code")
    number = parse_number_value(parts[0])
    if len(parts) == 1:
        return QuantityValue(number=number, system=None, code=None)
    system, code = parts[1] or None, parts[2] or None
    if code is None:
        raise ValueError(f"{text!r} names no unit code after the second '|'")
    return QuantityValue(number=number, system=system, code=code)


@dataclass(frozen=True)
class ReferenceValue:
    """A reference search: the referenced resource's id and the types it may have, or a URL."""

    types: tuple[str, ...]
    id: str | None
    url: str | None = None

    def matches(self, element: Any) -> bool:
        """Whether a Reference (by its literal `reference`) or a canonical element matches."""
        if isinstance(element, str):
            return self.url is not None and element.split("|")[0] == self.url
        if not isinstance(element, dict) or not isinstance(element.get("reference"), str):
            return False
        reference = element["reference"]
        if reference == self.url:
            return True
        literal = LITERAL_REFERENCE.search(reference)
        if literal is None or self.id is None:
            return False
        return literal["id"] == self.id and literal["type"] in self.types


def parse_reference(text: str, types: tuple[str, ...]) -> ReferenceValue:
    """`Type/id`, `id` or an absolute URL (also matched by its trailing `Type/id`).

    `types` are the types the reference may have: the `:Type` modifier's, else the parameter's
    targets; a bare id matches a reference to any of them.
    """
    if "://" in text or text.startswith("urn:"):
        literal = LITERAL_REFERENCE.search(text)
        if literal is None or not is_resource_type(literal["type"]):
            return ReferenceValue(types=(), id=None, url=text)
        return ReferenceValue(types=(literal["type"],), id=literal["id"], url=text)
    literal = LITERAL_REFERENCE.fullmatch(text)
    if literal is not None:
        resource_type, resource_id = literal["type"], literal["id"]
        if not is_resource_type(resource_type):
            raise ValueError(f"{resource_type!r} is not a FHIR R4 resource type")
        if resource_type not in types:
            allowed = ", ".join(types)
            raise ValueError(f"a {resource_type} cannot be referenced here (allowed: {allowed})")
        return ReferenceValue(types=(resource_type,), id=resource_id)
    if not RESOURCE_ID_PATTERN.fullmatch(text):
        raise ValueError(f"{text!r} is neither Type/id, a resource id nor an absolute URL")
    return ReferenceValue(types=types, id=text)

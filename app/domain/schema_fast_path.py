"""An accept-only fast path for event data: jsonschema-rs first, Python's jsonschema the authority.

Python's `jsonschema` costs about 19 µs for a valid event, `jsonschema-rs` well under 1 µs. The
two libraries do not agree on every keyword (regular expression dialects, formats, float
arithmetic, numbers beyond 64 bits), so jsonschema-rs is only ever allowed to *accept*: when it
says valid, the data is valid; when it says invalid, or cannot read the data, Python decides and
writes the problems. And it is only built for a schema whose every keyword is one on which
jsonschema-rs is known never to be looser than Python (`fast_path_eligible`), with Python's own
format checks in place of its own (`fast_validator_for`). `tests/unit/test_schema_fast_path.py`
holds the differential test behind the keyword list, `tests/unit/test_schema_fast_path_formats.py`
the one behind the formats.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import jsonschema_rs
from jsonschema import FormatChecker

FastValidator = jsonschema_rs.Validator

DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"

# Integers beyond 64 bits are compared with floats as floats by jsonschema-rs (Python compares
# exactly): `{"maximum": 1.8446744073709552e19}` accepts 2**64 + 1 there. A bound (or a number
# in `const`/`enum`) no larger than 2**53 in magnitude sits far from where that rounding shows.
SAFE_NUMBER = 2**53

_ANNOTATIONS = frozenset(
    "title description examples default $comment deprecated readOnly writeOnly".split()
)
_ONE_SCHEMA = frozenset({"additionalProperties", "items", "not"})
_SCHEMA_BY_NAME = frozenset({"properties", "$defs"})
_SCHEMA_LIST = frozenset({"prefixItems", "allOf", "anyOf", "oneOf"})
# Both read a Python bool as a boolean only (not an integer or a number, and `True != 1` in
# `const`/`enum`), and 1.0 and -0.0 as integers, as 2020-12 says.
_PLAIN_VALUES = frozenset(
    """type required enum const minimum maximum exclusiveMinimum exclusiveMaximum
    minLength maxLength minItems maxItems minProperties maxProperties""".split()
)
_ROOT_ONLY = frozenset({"$schema", "$id"})  # nested, they would start a new resource
FAST_PATH_KEYWORDS = (
    _ANNOTATIONS | _ONE_SCHEMA | _SCHEMA_BY_NAME | _SCHEMA_LIST | _PLAIN_VALUES | _ROOT_ONLY
) | {"$ref", "format", "pattern"}
"""Every keyword an eligible schema may use, some only as `fast_path_eligible` says."""

# A "plain" `pattern`: ASCII literals, escaped metacharacters and classes of those (no negation,
# no \d \w \s, no `.` outside a class, no groups or alternation), each with at most one greedy
# quantifier, between an optional `^` and `$`. Python's `re` and jsonschema-rs's engine read
# such a pattern as the same regular language, except that Python's `$` also matches before a
# final newline: Python then accepts more, which is the safe side. The differential tests check
# it over random plain patterns and the shipped catalog's patterns.
_CHAR = r"[A-Za-z0-9 _/:@,;=%!'\"<>]"
_ESCAPE = r"\\[.\-^$*+?()\[\]{}|\\]"
_RANGE = r"(?:[a-z]-[a-z]|[A-Z]-[A-Z]|[0-9]-[0-9])"
_CLASS = rf"\[(?:{_RANGE}|{_CHAR}|\.|{_ESCAPE})+\]"  # `.` is a literal in a class
_QUANTIFIER = r"(?:[?*+]|\{[0-9]{1,3}(?:,[0-9]{0,3})?\})"
PLAIN_PATTERN = re.compile(rf"\^?(?:(?:{_CHAR}|-|{_ESCAPE}|{_CLASS}){_QUANTIFIER}?)*\$?")

_DEF_NAME = re.compile(r"[A-Za-z0-9_.\-]+")


def fast_path_eligible(schema: Mapping[str, Any]) -> bool:
    """Whether jsonschema-rs may accept data for `schema` without asking Python's jsonschema.

    True only when the schema is draft 2020-12 (its `$schema`, or none) and every keyword in it,
    at any depth, is one on which jsonschema-rs never accepts what Python refuses:

    - structure: type, properties, required, additionalProperties, items, prefixItems, enum,
      const, the numeric bounds, the length/count bounds, allOf, anyOf, oneOf, not;
    - `$ref` to `#/$defs/<name>` of this schema, and `$defs`;
    - annotations (title, description, examples, default, $comment, deprecated, readOnly,
      writeOnly), and `$schema`/`$id` at the root;
    - `format`: jsonschema-rs checks a format Python checks with Python's own function
      (`fast_validator_for`), and the formats only it knows with its own checks, so it may
      refuse a string Python accepts, never the other way round; such a string goes to
      Python, which decides;
    - `pattern` when it is plain (`PLAIN_PATTERN`).

    Numbers in keywords must lie within ±2**53. Anything else (`multipleOf`, `uniqueItems`,
    `patternProperties`, `propertyNames`, `contains`, `if`, `dependentSchemas`, `unevaluated*`,
    remote or dynamic references, unknown keywords, other drafts) leaves Python alone.
    """
    if schema.get("$schema", DRAFT_2020_12) != DRAFT_2020_12:
        return False
    definitions = schema.get("$defs")
    names = definitions if isinstance(definitions, Mapping) else {}
    rules = _Rules(
        local_refs=frozenset(f"#/$defs/{name}" for name in names if _DEF_NAME.fullmatch(name))
    )
    return rules.schema_agrees(schema, root=True)


def fast_validator_for(
    schema: dict[str, Any], *, format_checker: FormatChecker
) -> FastValidator | None:
    """A jsonschema-rs validator for `schema` when it is eligible and builds, else None.

    It checks every format `format_checker` (Python's) checks with Python's own function, so
    the two agree on those exactly: jsonschema-rs's own `date-time`, for one, accepts a leap
    second and the year 0000, which Python's refuses (`test_schema_fast_path_formats.py`). A
    call back into Python costs about 1 µs, against 20 for Python's whole validation."""
    if not fast_path_eligible(schema):
        return None
    python_checks = {name: _python_check(format_checker, name) for name in format_checker.checkers}
    try:
        return jsonschema_rs.Draft202012Validator(
            schema, validate_formats=True, formats=python_checks, offline=True
        )
    except (ValueError, jsonschema_rs.ReferencingError):
        return None  # jsonschema-rs cannot read it: Python alone decides


def _python_check(format_checker: FormatChecker, name: str) -> Callable[[str], bool]:
    return lambda text: format_checker.conforms(text, name)


def fast_accepts(validator: FastValidator, data: Any) -> bool:
    """True when jsonschema-rs finds `data` valid; False when invalid or not readable by it.

    `data` is JSON as Python's parsers produce it (dict, list, str, int, float, bool, None).
    Values jsonschema-rs cannot read, such as a string with a lone surrogate or a TOML date,
    raise ValueError there and are left to Python.
    """
    try:
        return validator.is_valid(data)
    except ValueError:
        return False


class _Rules:
    """The eligibility walk over one schema, with what it needs from the root."""

    def __init__(self, *, local_refs: frozenset[str]) -> None:
        self.local_refs = local_refs

    def schema_agrees(self, node: Any, *, root: bool = False) -> bool:
        if isinstance(node, bool):
            return True
        if not isinstance(node, Mapping):
            return False
        return all(self.keyword_agrees(key, value, root=root) for key, value in node.items())

    def keyword_agrees(self, key: str, value: Any, *, root: bool) -> bool:
        if key in _ANNOTATIONS:
            return True
        if key in _ROOT_ONLY:
            return root
        if key in _ONE_SCHEMA:
            return self.schema_agrees(value)
        if key in _SCHEMA_BY_NAME:
            return isinstance(value, Mapping) and all(map(self.schema_agrees, value.values()))
        if key in _SCHEMA_LIST:
            return isinstance(value, list) and all(map(self.schema_agrees, value))
        if key in _PLAIN_VALUES:
            return _numbers_are_safe(value)
        if key == "$ref":
            return isinstance(value, str) and value in self.local_refs
        if key == "format":
            return isinstance(value, str)
        if key == "pattern":
            return isinstance(value, str) and PLAIN_PATTERN.fullmatch(value) is not None
        return False


def _numbers_are_safe(value: Any) -> bool:
    if isinstance(value, bool):
        return True
    if isinstance(value, int | float):
        return abs(value) <= SAFE_NUMBER
    if isinstance(value, list):
        return all(map(_numbers_are_safe, value))
    if isinstance(value, Mapping):
        return all(map(_numbers_are_safe, value.values()))
    return True

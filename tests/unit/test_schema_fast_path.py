"""The accept-only jsonschema-rs fast path: which schemas may use it, and that it never lets
through data Python's jsonschema refuses (a differential test over the shipped catalog and
hand-written schemas that use every allowed keyword)."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from app.domain.catalog import compile_entry, load_catalog
from app.domain.catalog_files import CatalogEntry
from app.domain.event_types import EventType
from app.domain.schema_fast_path import (
    DRAFT_2020_12,
    FAST_PATH_KEYWORDS,
    PLAIN_PATTERN,
    fast_accepts,
    fast_path_eligible,
    fast_validator_for,
)

CHECKER = Draft202012Validator.FORMAT_CHECKER  # the catalog's


def eligible(schema: dict[str, Any]) -> bool:
    return fast_path_eligible(schema)


def nested(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` deep inside an otherwise eligible one: properties.x.items.allOf[0]."""
    return {"type": "object", "properties": {"x": {"items": {"allOf": [schema]}}}}


INELIGIBLE = {
    "pattern with \\S": {"pattern": "^https?://\\S+$"},
    "pattern with \\d": {"pattern": "^\\d+$"},
    "pattern with a group": {"pattern": "^(a|b)$"},
    "pattern with a negated class": {"pattern": "^[^/]+$"},
    "pattern with a wildcard": {"pattern": "^a.b$"},
    "patternProperties": {"patternProperties": {"^a": {"type": "string"}}},
    "propertyNames": {"propertyNames": {"maxLength": 3}},
    "multipleOf": {"multipleOf": 0.1},
    "uniqueItems": {"uniqueItems": True},
    "dependentSchemas": {"dependentSchemas": {"a": {"required": ["b"]}}},
    "dependentRequired": {"dependentRequired": {"a": ["b"]}},
    "unevaluatedProperties": {"unevaluatedProperties": False},
    "unevaluatedItems": {"unevaluatedItems": False},
    "remote $ref": {"$ref": "https://example.org/schema.json"},
    "$ref to the root": {"$ref": "#"},
    "$ref to a missing $defs entry": {"$ref": "#/$defs/nowhere"},
    "$dynamicRef": {"$dynamicRef": "#node"},
    "$anchor": {"$anchor": "node"},
    "if/then/else": {"if": {"type": "string"}, "then": {"minLength": 1}, "else": True},
    "contains": {"contains": {"type": "string"}},
    "unknown keyword": {"x-colour": "red"},
    "float bound beyond 2**53": {"maximum": 1.8446744073709552e19},
    "integer bound beyond 2**53": {"minimum": -(2**60)},
    "const beyond 2**53": {"const": 10**300},
    "enum number beyond 2**53": {"enum": [1, [1e300]]},
}


@pytest.mark.parametrize("schema", INELIGIBLE.values(), ids=INELIGIBLE.keys())
def test_a_keyword_the_libraries_may_disagree_on_leaves_python_alone(
    schema: dict[str, Any],
) -> None:
    assert not eligible(schema)
    assert not eligible(nested(schema))
    assert fast_validator_for(nested(schema), format_checker=CHECKER) is None


@pytest.mark.parametrize(
    "draft",
    ["http://json-schema.org/draft-07/schema#", "https://json-schema.org/draft/2019-09/schema"],
)
def test_another_draft_leaves_python_alone(draft: str) -> None:
    assert not eligible({"$schema": draft, "type": "object"})


def test_schema_and_id_only_at_the_root() -> None:
    root = {"$schema": DRAFT_2020_12, "$id": "https://example.org/outer"}
    assert eligible(root)
    assert not eligible(nested({"$schema": DRAFT_2020_12}))
    assert not eligible(nested({"$id": "https://example.org/inner"}))


def test_a_format_is_eligible_whoever_checks_it() -> None:
    assert "date-time" in CHECKER.checkers  # rfc3339-validator is installed
    assert "uri" not in CHECKER.checkers  # it would need rfc3987 or rfc3986-validator
    for name in ("date-time", "email", "uri", "x-partner-id"):
        assert eligible({"format": name})
    assert not eligible({"format": 7})


@pytest.mark.parametrize(
    ("format_name", "text", "fast", "python"),
    [
        ("email", "ada@example.org", True, True),
        ("email", "ada@@example.org", True, True),  # Python's check (an `@`), in both
        ("email", "ada", False, False),
        ("date-time", "2025-06-01T12:00:00Z", True, True),
        ("date-time", "2025-06-30T23:59:60Z", False, False),  # jsonschema-rs's own accepts it
        ("date-time", "nope", False, False),
        ("uri", "not a uri", False, True),  # jsonschema-rs checks it, Python does not
        ("x-partner-id", "anything", True, True),  # a format neither knows
    ],
)
def test_formats_are_checked_by_python_in_both_and_python_decides_what_rs_refuses(
    format_name: str, text: str, fast: bool, python: bool
) -> None:
    schema = {"type": "object", "properties": {"x": {"type": "string", "format": format_name}}}
    event_type = compiled("formatted", schema, None)
    assert event_type.fast_validator is not None
    assert fast_accepts(event_type.fast_validator, {"x": text}) is fast
    problems = event_type.validate_data({"x": text}, at="/data")
    assert [problem.pointer for problem in problems] == ([] if python else ["/data/x"])


@pytest.mark.parametrize(
    ("pattern", "plain"),
    [
        ("^Patient/[A-Za-z0-9\\-.]{1,64}$", True),
        ("^[A-Za-z0-9\\-.]{1,64}$", True),
        ("ord_[a-z0-9]{2,8}", True),
        ("^a\\.b+c?d*$", True),
        ("", True),
        ("^https?://\\S+$", False),
        ("^a.b$", False),
        ("^(ab)+$", False),
        ("a|b", False),
        ("[^a]", False),
        ("[a-]", False),
        ("[a--b]", False),
        ("[a&&b]", False),
        ("[[:alpha:]]", False),
        ("(?i)a", False),
        ("a+?", False),
        ("a{,3}", False),
        ("\\bword\\b", False),
        ("^é$", False),
        ("a$b", False),
    ],
)
def test_plain_patterns(pattern: str, plain: bool) -> None:
    assert (PLAIN_PATTERN.fullmatch(pattern) is not None) is plain


# Hand-written eligible schemas that, together, use every keyword of the allow-list.
ORDER = {
    "$schema": DRAFT_2020_12,
    "$id": "https://tidings.example/schemas/order",
    "title": "An order",
    "description": "Every structural keyword at least once.",
    "$comment": "annotations are ignored by both libraries",
    "type": "object",
    "required": ["id", "lines"],
    "additionalProperties": False,
    "minProperties": 2,
    "maxProperties": 10,
    "properties": {
        "id": {"type": "string", "minLength": 1, "maxLength": 12, "pattern": "^ord_[a-z0-9]{2,8}$"},
        "lines": {"type": "array", "minItems": 1, "maxItems": 3, "items": {"$ref": "#/$defs/line"}},
        "total": {"type": "number", "minimum": 0, "exclusiveMaximum": 1000.5},
        "status": {"enum": ["open", "paid", 3, None, True]},
        "kind": {"const": "order", "deprecated": True},
        "contact": {"type": "string", "format": "email", "readOnly": True},
        "note": {"type": ["string", "null"], "writeOnly": True, "default": None, "examples": ["x"]},
        "point": {
            "type": "array",
            "prefixItems": [{"type": "integer"}, {"type": "integer"}],
            "items": False,
        },
        "ref": {
            "anyOf": [
                {"type": "integer", "exclusiveMinimum": -1, "maximum": 99},
                {"type": "string"},
            ]
        },
        "flag": {"oneOf": [{"type": "boolean"}, {"type": "integer"}]},
        "tags": {"type": "array", "items": {"allOf": [{"type": "string"}, {"not": {"const": ""}}]}},
    },
    "$defs": {
        "line": {
            "type": "object",
            "required": ["sku", "qty"],
            "properties": {
                "sku": {"type": "string"},
                "qty": {"type": "integer", "minimum": 1, "maximum": 99},
            },
        }
    },
}
ORDER_EXAMPLE = {
    "id": "ord_a1",
    "lines": [{"sku": "x", "qty": 2}],
    "total": 12.5,
    "status": "open",
    "kind": "order",
    "contact": "ada@example.org",
    "point": [1, 2],
    "ref": 7,
    "flag": True,
    "tags": ["a"],
}
TREE = {
    "$ref": "#/$defs/node",
    "$defs": {
        "node": {
            "type": "object",
            "required": ["name"],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string"},
                "children": {"type": "array", "items": {"$ref": "#/$defs/node"}},
            },
        }
    },
}
NUMBERS = {
    "type": "object",
    "properties": {
        "i": {"type": "integer", "minimum": -3, "maximum": 3},
        "n": {"type": "number", "exclusiveMinimum": -0.5, "exclusiveMaximum": 2.5},
        "c": {"const": 1},
        "e": {"enum": [0, 1.5, False, [1], {"a": 1}]},
        "b": {"type": "boolean"},
    },
}
BOOLEAN_SCHEMAS = {
    "properties": {"a": True, "b": False},
    "additionalProperties": {"type": "string"},
}
HAND_WRITTEN = {
    "order": (ORDER, ORDER_EXAMPLE),
    "tree": (TREE, {"name": "a", "children": [{"name": "b", "children": []}]}),
    "numbers": (NUMBERS, {"i": 0, "n": 1.0, "c": 1, "e": [1], "b": False}),
    "boolean-schemas": (BOOLEAN_SCHEMAS, {"a": 1, "x": "y"}),
}


def compiled(name: str, schema: dict[str, Any], example: Any) -> EventType:
    fields = {"name": name, "data_schema": schema, "example": example}
    return compile_entry(CatalogEntry(Path("test.json"), name, fields))


def keywords(schema: Any) -> Iterator[str]:
    if isinstance(schema, list):
        for item in schema:
            yield from keywords(item)
    elif isinstance(schema, dict):
        for key, value in schema.items():
            yield key
            if key in {"properties", "$defs"}:
                yield from keywords(list(value.values()))
            elif key not in {"enum", "const", "default", "examples"}:
                yield from keywords(value)


def test_hand_written_schemas_are_eligible_and_use_every_allowed_keyword() -> None:
    used: set[str] = set()
    for schema, _ in HAND_WRITTEN.values():
        assert eligible(schema)
        used |= set(keywords(schema))
    assert used == FAST_PATH_KEYWORDS


def test_shipped_types_on_the_fast_path() -> None:
    with_schema = [event_type for event_type in load_catalog([]) if event_type.data_schema]
    fast = {event_type.name for event_type in with_schema if event_type.fast_validator}
    # data-export-completed's download_url pattern uses \S, whose meaning differs
    assert {event_type.name for event_type in with_schema} - fast == {"data-export-completed"}


# --- the differential test ------------------------------------------------------------------

SHIPPED = [event_type for event_type in load_catalog([]) if event_type.fast_validator]
SCHEMAS = SHIPPED + [compiled(name, *schema) for name, schema in HAND_WRITTEN.items()]

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
# ASCII the patterns use, and look-alikes: Unicode digits, whitespace and case-folding letters.
PATTERN_ALPHABET = "aZz09-._/ \t\r\x0b\x0c\x1c\x85\xa0\u2028\u0661\u00e9K\u212a\u017f"
TRICKY_NUMBERS = [True, False, 0, 1, -1, 1.0, -0.0, 0.5, 99, 100, 2**53 + 1, 2**64 + 1, 1e300]
TRICKY_OTHERS = [-(2**70), "", "\n", " ", "é", "\U0001f600", None, [], {}]
TRICKY = st.sampled_from([*TRICKY_NUMBERS, *TRICKY_OTHERS])


def property_names(schema: Any) -> list[str]:
    """Every property name a schema mentions, to build near-valid objects with."""
    names: list[str] = []
    if isinstance(schema, dict):
        names += list(schema.get("properties", {})) + list(schema.get("required", []))
        for key, value in schema.items():
            if key not in {"enum", "const", "default", "examples"}:
                names += property_names(value)
    elif isinstance(schema, list):
        for item in schema:
            names += property_names(item)
    return names


def changes(value: Any, names: list[str]) -> st.SearchStrategy[Any]:
    """Values a little or a lot unlike `value`."""
    options: list[st.SearchStrategy[Any]] = [JSON_VALUES, TRICKY]
    key = st.sampled_from(names) if names else st.text(max_size=4)
    if isinstance(value, str):
        options.append(st.sampled_from([value + "\n", value[:-1], value + "x", " " + value]))
    elif isinstance(value, bool):
        options.append(st.just(int(value)))
    elif isinstance(value, int | float):
        options.append(st.sampled_from([value + 1, value - 1, -value, float(value), value + 0.5]))
    elif isinstance(value, dict) and value:
        options.append(st.sampled_from(sorted(value)).map(lambda k: _without(value, k)))
    elif isinstance(value, list) and value:
        options.append(st.sampled_from([value[1:], [*value, value[0]], [*value, *value]]))
    if isinstance(value, dict):
        options.append(st.builds(lambda k, v: {**value, k: v}, key, JSON_VALUES | TRICKY))
    return st.one_of(options)


def _without(value: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in value.items() if k != key}


@st.composite
def near(draw: st.DrawFn, value: Any, names: list[str]) -> Any:
    """`value` with one part, at a random depth, changed."""
    parts = list(value.items()) if isinstance(value, dict) else []
    parts += list(enumerate(value)) if isinstance(value, list) else []
    if parts and draw(st.booleans()):
        key, part = draw(st.sampled_from(parts))
        changed = dict(value) if isinstance(value, dict) else list(value)
        changed[key] = draw(near(part, names))
        return changed
    return draw(changes(value, names))


def values_for(event_type: EventType) -> st.SearchStrategy[Any]:
    names = property_names(event_type.data_schema)
    if event_type.example is None:
        return JSON_VALUES | st.dictionaries(st.sampled_from(names or ["a"]), JSON_VALUES | TRICKY)
    twice_changed = near(event_type.example, names).flatmap(lambda value: near(value, names))
    return st.one_of(
        st.just(event_type.example), near(event_type.example, names), twice_changed, JSON_VALUES
    )


def strings_end_in_newline(value: Any) -> bool:
    """Python's `$` matches before a final newline, jsonschema-rs's does not."""
    if isinstance(value, str):
        return value.endswith("\n")
    children = value.values() if isinstance(value, dict) else value
    return isinstance(value, dict | list) and any(map(strings_end_in_newline, children))


@pytest.mark.parametrize("event_type", SCHEMAS, ids=[t.name for t in SCHEMAS])
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_the_fast_path_never_accepts_what_python_refuses(
    event_type: EventType, data: st.DataObject
) -> None:
    value = data.draw(values_for(event_type), label="data")
    assert event_type.fast_validator is not None and event_type.schema_validator is not None
    fast = fast_accepts(event_type.fast_validator, value)
    python = event_type.schema_validator.is_valid(value)
    assert python or not fast, "jsonschema-rs accepted what Python refuses"
    # The other way round is safe (Python decides), and only seen for the `$` difference.
    assert fast == python or strings_end_in_newline(value)
    python_only = dataclasses.replace(event_type, fast_validator=None)
    assert event_type.validate_data(value, at="/data") == python_only.validate_data(
        value, at="/data"
    )


@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_a_plain_pattern_means_the_same_to_both(data: st.DataObject) -> None:
    pattern = data.draw(st.from_regex(PLAIN_PATTERN, fullmatch=True), label="pattern")
    try:
        compiled_pattern = re.compile(pattern)
    except re.error:
        assume(False)  # Python's jsonschema refuses such a schema (e.g. `[z-a]`)
    fast = fast_validator_for({"pattern": pattern}, format_checker=CHECKER)
    assert fast is not None
    near_matches = st.from_regex(compiled_pattern).map(lambda text: text[:40])
    texts = st.lists(near_matches | st.text(PATTERN_ALPHABET, max_size=8), max_size=8)
    for text in data.draw(texts, label="texts"):
        for string in (text, text + "\n", "\n" + text):
            python = compiled_pattern.search(string) is not None
            assert python or not fast_accepts(fast, string), "jsonschema-rs accepted more"
            assert fast_accepts(fast, string) == python or string.endswith("\n")


# --- edge cases, and what validate_data answers ---------------------------------------------


@pytest.mark.parametrize(
    ("schema", "value", "valid"),
    [
        ({"type": "integer"}, True, False),
        ({"type": "number"}, False, False),
        ({"type": "boolean"}, 1, False),
        ({"type": "integer"}, 1.0, True),
        ({"type": "integer"}, -0.0, True),
        ({"type": "integer"}, 1.5, False),
        ({"type": "integer"}, 2**70, True),
        ({"const": 1}, True, False),
        ({"const": 1}, 1.0, True),
        ({"enum": [0]}, False, False),
        ({"const": [1]}, [True], False),
        ({"const": {"a": 0}}, {"a": False}, False),
        ({"minimum": 1}, True, True),  # a boolean is no number: bounds do not apply
        ({"maximum": 0.5}, 2**64 + 1, False),
        ({"minimum": -0.5}, -(2**64 + 1), False),
        ({"maximum": 2**53}, 2**53 + 1, False),
        ({"maximum": 2**53}, float(2**53), True),
        ({"exclusiveMaximum": 2**53}, float(2**53), False),
        ({"maxLength": 1}, "\U0001f600", True),
        ({"minLength": 2}, "é", False),
        ({"pattern": "^[a-z]{2}$"}, "ab", True),
        ({"pattern": "^[a-z]{2}$"}, "a\u0661", False),
    ],
)
def test_both_libraries_agree_on(schema: dict[str, Any], value: Any, valid: bool) -> None:
    fast = fast_validator_for(schema, format_checker=CHECKER)
    assert fast is not None
    assert fast_accepts(fast, value) is valid
    assert Draft202012Validator(schema, format_checker=CHECKER).is_valid(value) is valid


NAME_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z]+$"},
        "tag": {"type": "string"},
        "score": {"type": "number"},
    },
}


@pytest.mark.parametrize(
    ("data", "pointers"),
    [
        ({"name": "ada"}, []),
        ({"name": "ada\n"}, []),  # Python's `$`: jsonschema-rs refuses, Python accepts
        ({"score": math.nan}, []),  # jsonschema-rs refuses NaN, Python accepts
        ({"tag": "\ud800"}, []),  # a lone surrogate jsonschema-rs cannot read
        ({"name": "ada\ud800"}, ["/data/name"]),
        ({"name": datetime(2025, 6, 1, tzinfo=UTC)}, ["/data/name"]),  # a TOML date
        ({"name": 7, "score": "high"}, ["/data/name", "/data/score"]),
        ([], ["/data"]),
    ],
)
def test_python_decides_whatever_the_fast_path_does_not_accept(
    data: Any, pointers: list[str]
) -> None:
    event_type = compiled("named", NAME_SCHEMA, None)
    assert event_type.fast_validator is not None
    problems = event_type.validate_data(data, at="/data")
    assert [problem.pointer for problem in problems] == pointers
    python_only = dataclasses.replace(event_type, fast_validator=None)
    assert problems == python_only.validate_data(data, at="/data")

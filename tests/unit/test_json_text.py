"""JSON from outside: what Python's parser takes but Tidings cannot store or send on."""

from __future__ import annotations

import json

import pytest

from app.domain import json_text


def test_ordinary_json_parses() -> None:
    text = '{"a": [1, 2.5, -3e2, null, true, "x\\u00e9"], "b": {"c": "\\u0001"}}'
    assert json_text.parse(text) == json.loads(text)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('{"a": NaN}', "NaN"),
        ("[1, Infinity]", "Infinity"),
        ('{"a": {"b": [-Infinity]}}', "-Infinity"),
        ('{"a": "x\\u0000y"}', "NUL"),
        ('{"x\\u0000": 1}', "NUL"),
        ('[["\\u0000"]]', "NUL"),
    ],
)
def test_values_that_cannot_be_stored_are_refused(text: str, named: str) -> None:
    with pytest.raises(json_text.UnacceptableJSONError, match=named):
        json_text.parse(text)


def test_an_escaped_backslash_before_u0000_is_not_a_nul() -> None:
    assert json_text.parse('{"a": "\\\\u0000"}') == {"a": "\\u0000"}


def test_syntax_errors_stay_json_decode_errors() -> None:
    with pytest.raises(json.JSONDecodeError):
        json_text.parse('{"a": }')

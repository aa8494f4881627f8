"""The nesting depth that `parse_json` refuses bodies by: a scalar or an empty container is 1."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.api.requests import _depth

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=3),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=3), children, max_size=4)
    ),
    max_leaves=40,
)


def depth_by_definition(value: Any) -> int:
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return 1 + max((depth_by_definition(child) for child in value), default=0)
    return 1


@pytest.mark.parametrize(
    ("value", "depth"),
    [
        (1, 1),
        ("text", 1),
        ({}, 1),
        ([], 1),
        ({"a": 1}, 2),
        ([[]], 2),
        ([[1]], 3),
        ({"a": [1, {"b": {}}], "c": 2}, 4),
        ({"a": [1, {"b": {"c": None}}]}, 5),
    ],
)
def test_depth_of_examples(value: Any, depth: int) -> None:
    assert _depth(value) == depth


@given(JSON_VALUES)
def test_depth_matches_its_definition(value: Any) -> None:
    assert _depth(value) == depth_by_definition(value)


def test_a_very_deep_value_is_measured_without_recursion() -> None:
    value: Any = 1
    for _ in range(50_000):
        value = [value]
    assert _depth(value) == 50_001

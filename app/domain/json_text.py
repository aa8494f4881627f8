"""JSON text from outside (request bodies, upstream FHIR servers), as Tidings accepts it.

Python's parser also reads `NaN`, `Infinity` and `-Infinity`, which JSON does not have: a
partner's parser would refuse the payload and PostgreSQL the event. PostgreSQL text cannot
hold NUL either. Both are refused here, at the edge, before anything is stored.
"""

from __future__ import annotations

import json
from typing import Any


class UnacceptableJSONError(ValueError):
    """Valid for Python's parser, but not JSON Tidings can store and send on."""


def parse(text: str) -> Any:
    """The value of `text`.

    Raises:
        json.JSONDecodeError: when `text` is not JSON (a ValueError, with line and column).
        UnacceptableJSONError: for `NaN`, `Infinity`, or a NUL character in a string.
        RecursionError: when it is nested deeper than Python's parser can go.
    """
    value = _DECODER.decode(text)
    if "\\u0000" in text and _contains_nul(value):
        raise UnacceptableJSONError("NUL characters (\\u0000) are not accepted")
    return value


def _refuse_constant(name: str) -> Any:
    raise UnacceptableJSONError(f"{name} is not a JSON value")


# Built once: `json.loads` with any option builds a new decoder on every call.
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


def _contains_nul(value: Any) -> bool:
    stack = [value]
    while stack:
        current = stack.pop()
        if isinstance(current, str):
            if "\x00" in current:
                return True
        elif isinstance(current, dict):
            stack.extend(current.keys())
            stack.extend(current.values())
        elif isinstance(current, list):
            stack.extend(current)
    return False

"""Formats on the fast path: jsonschema-rs's own checks are looser than Python's in corners (found
by these generators), so the fast validator checks every format Python checks with Python's own
function, and then the two agree exactly. Strings are generated near each format's grammar
(valid values in several spellings, with parts out of range, missing, doubled, padded or written
in non-ASCII digits) and as arbitrary text."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime

import jsonschema_rs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from app.domain.catalog import format_checker
from app.domain.schema_fast_path import fast_accepts, fast_validator_for

CHECKER = format_checker(Draft202012Validator.FORMAT_CHECKER)  # the catalog's

_LEAP_SECOND = re.compile(r"^\d{4}-\d\d-\d\d[Tt]\d\d:\d\d:60", re.ASCII)
_YEAR_ZERO = re.compile(r"^0000-")
_ONE_DIGIT_SECOND_EMPTY_FRACTION = re.compile(r"^\d{4}-\d\d-\d\d[Tt]\d\d:\d\d:\d\.(?!\d)", re.ASCII)

# Where jsonschema-rs's own checks accept what Python refuses, found with these generators.
RS_LOOSER: dict[str, Callable[[str], bool]] = {
    # rfc3339-validator refuses every second 60 and the year 0000; jsonschema-rs accepts a leap
    # second at 23:59:60 UTC (on any date), the year 0000, and a one-digit second followed by
    # an empty fraction (`00:00:1.Z`).
    "date-time": lambda text: bool(
        _LEAP_SECOND.match(text)
        or _YEAR_ZERO.match(text)
        or _ONE_DIGIT_SECOND_EMPTY_FRACTION.match(text)
    ),
    # date.fromisoformat has no year 0; jsonschema-rs accepts 0000-01-01.
    "date": lambda text: bool(_YEAR_ZERO.match(text)),
}
RS_LOOSER_EXAMPLES = [
    ("date-time", "2025-06-30T23:59:60Z"),
    ("date-time", "2025-06-01t23:59:60z"),
    ("date-time", "2025-06-30T23:59:60+00:00"),
    ("date-time", "0000-01-01T00:00:00Z"),
    ("date-time", "2000-01-01T00:00:1.Z"),
    ("date-time", "2000-01-01T00:00:1.+01:00"),
    ("date", "0000-01-01"),
]

# Arabic-Indic, extended Arabic-Indic, Devanagari, fullwidth and double-struck digits
NON_ASCII_DIGITS = "\u0663\u06f5\u0969\uff15\U0001d7d8"
WHITESPACE = [" ", "\n", "\t", "\r\n", "\xa0", "\u2028"]
OFFSETS = ["Z", "z", "+00:00", "-00:00", "+05:30", "-12:00", "+23:59"]
# Per field of an RFC 3339 date-time: values out of range, too short, too long, missing or
# spelled another way. Day 29, 30 and 31 are out of range in some months only.
ODD = {
    "year": ["0000", "999", "12025", "+2025", ""],
    "month": ["00", "13", "1", "001", ""],
    "day": ["00", "29", "30", "31", "32", "1", ""],
    "separator": [" ", "_", "TT", ""],
    "hour": ["24", "25", "1", ""],
    "minute": ["60", "1", ""],
    "second": ["60", "61", "1", ""],
    "fraction": [".", ",5", ".5.", ".1234567890123"],
    "offset": ["+24:00", "-24:00", "+00:60", "+0100", "+01", "", "ZZ", "UTC", "Z+01:00"],
}
LEAP_SECOND = {"hour": "23", "minute": "59", "second": "60"}
DATE_FIELDS = ["year", "month", "day"]


@st.composite
def date_time_fields(draw: st.DrawFn, odd: list[str]) -> dict[str, str]:
    """A valid date-time from `st.datetimes`, spelled one of the ways RFC 3339 allows (`T`/`t`,
    `Z`/`z` or an offset, 0 to 12 fraction digits), then perhaps one or two `odd` fields changed
    (or the time made `23:59:60`).
    """
    moment: datetime = draw(st.datetimes())
    digits = draw(st.integers(0, 12))
    fraction = f"{moment.microsecond:06d}000000"[:digits]
    fields = {
        "year": f"{moment.year:04d}",
        "month": f"{moment.month:02d}",
        "day": f"{moment.day:02d}",
        "separator": draw(st.sampled_from("Tt")),
        "hour": f"{moment.hour:02d}",
        "minute": f"{moment.minute:02d}",
        "second": f"{moment.second:02d}",
        "fraction": "." + fraction if fraction else "",
        "offset": draw(st.sampled_from(OFFSETS)),
    }
    for name in draw(st.lists(st.sampled_from(odd), max_size=2, unique=True)):
        fields |= LEAP_SECOND if name == "leap-second" else {name: draw(st.sampled_from(ODD[name]))}
    return fields


DATES = date_time_fields(DATE_FIELDS).map(lambda f: f"{f['year']}-{f['month']}-{f['day']}")
DATETIMES = date_time_fields([*ODD, "leap-second"]).map(
    lambda f: (
        f"{f['year']}-{f['month']}-{f['day']}{f['separator']}"
        f"{f['hour']}:{f['minute']}:{f['second']}{f['fraction']}{f['offset']}"
    )
)


@st.composite
def damaged(draw: st.DrawFn, texts: st.SearchStrategy[str]) -> str:
    """A string from `texts` with a digit made non-ASCII, or whitespace before or after."""
    text = draw(texts)
    digits = [index for index, char in enumerate(text) if char.isdigit()]
    if digits and draw(st.booleans()):
        index = draw(st.sampled_from(digits))
        return text[:index] + draw(st.sampled_from(NON_ASCII_DIGITS)) + text[index + 1 :]
    space = draw(st.sampled_from(WHITESPACE))
    return draw(st.sampled_from([space + text, text + space, space + text + space]))


LOCAL_PARTS = st.sampled_from(["a", "a.b", "a+tag", '"a b"', '"a@b"', "a..b", ".a", "é", "", "@"])
DOMAINS = st.sampled_from(
    ["example.org", "b", "[127.0.0.1]", "[IPv6:::1]", "[300.0.0.1]", "-x.org", "é.fr", "", "@"]
)
EMAILS = st.one_of(
    st.emails().map(str),
    st.builds(
        lambda local, at, domain: f"{local}{at}{domain}",
        LOCAL_PARTS,
        st.sampled_from(["@", "@@", ""]),
        DOMAINS,
    ),
)
NEAR = {"date-time": DATETIMES, "date": DATES, "email": EMAILS}


def verdicts(format_name: str, text: str) -> tuple[bool, bool, bool]:
    """(the fast validator, jsonschema-rs's own check, Python) accept `text` under
    `{"type": "string", "format": format_name}`."""
    schema = {"type": "string", "format": format_name}
    fast = fast_validator_for(schema, format_checker=CHECKER)
    assert fast is not None
    own = jsonschema_rs.Draft202012Validator(schema, validate_formats=True).is_valid(text)
    python = Draft202012Validator(schema, format_checker=CHECKER).is_valid(text)
    return fast_accepts(fast, text), own, python


@pytest.mark.parametrize("format_name", sorted(NEAR))
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_the_fast_path_checks_formats_exactly_as_python(
    format_name: str, data: st.DataObject
) -> None:
    assert format_name in CHECKER.checkers
    near = NEAR[format_name]
    text = data.draw(st.one_of(near, damaged(near), st.text(max_size=30)), label="text")
    fast, own, python = verdicts(format_name, text)
    assert fast == python
    looser = RS_LOOSER.get(format_name, lambda _: False)
    assert python or not own or looser(text), "a new corner where jsonschema-rs is looser"


@pytest.mark.parametrize(("format_name", "text"), RS_LOOSER_EXAMPLES)
def test_where_jsonschema_rs_is_looser_python_decides(format_name: str, text: str) -> None:
    assert verdicts(format_name, text) == (False, True, False)

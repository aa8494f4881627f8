"""FHIR date search: every date is a range, and prefixes compare ranges (FHIR R4 search 3.1.1.4.2).

`2000` means all of the year 2000, `2000-03-04T10:00:00Z` one second. Ranges are half-open
`[start, end)` in UTC. A time with no timezone is read as UTC (FHIR leaves that to the server).
A Period is the range from its start to its end, open-ended where either is missing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

EARLIEST = datetime.min.replace(tzinfo=UTC)
LATEST = datetime.max.replace(tzinfo=UTC)
# `ap` widens the searched range by a tenth of its length, and by at least this much.
APPROXIMATE_MINIMUM = timedelta(days=1)

DATE_PATTERN = re.compile(
    r"(?P<year>\d{4})(?:-(?P<month>\d{2})(?:-(?P<day>\d{2})"
    r"(?:T(?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?P<fraction>\.\d+)?)?"
    r"(?P<zone>Z|[+-]\d{2}:\d{2})?)?)?)?"
)

DateRange = tuple[datetime, datetime]


def _zone(text: str | None) -> timezone:
    """`Z`, `+02:00` or `-05:30` as a timezone; no zone means UTC."""
    if text is None or text == "Z":
        return UTC
    sign = -1 if text[0] == "-" else 1
    hours, minutes = int(text[1:3]), int(text[4:6])
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def _add_months(moment: datetime, months: int) -> datetime:
    """`moment` moved on by whole months (only ever called on the first of a month)."""
    index = moment.month - 1 + months
    return moment.replace(year=moment.year + index // 12, month=index % 12 + 1)


def _extent(parts: dict[str, str | None]) -> timedelta | int:
    """How long the given precision lasts: months as an int, anything shorter as a timedelta."""
    if parts["month"] is None:
        return 12
    if parts["day"] is None:
        return 1
    if parts["hour"] is None:
        return timedelta(days=1)
    if parts["second"] is None:
        return timedelta(minutes=1)
    fraction = parts["fraction"]
    if fraction is None:
        return timedelta(seconds=1)
    return timedelta(microseconds=max(1, 10 ** (6 - min(len(fraction) - 1, 6))))


def _start(parts: dict[str, str | None]) -> datetime:
    """The first instant of the parsed date, in UTC."""
    fraction = (parts["fraction"] or ".0")[1:7].ljust(6, "0")
    return datetime(
        int(parts["year"] or 0),
        int(parts["month"] or 1),
        int(parts["day"] or 1),
        int(parts["hour"] or 0),
        int(parts["minute"] or 0),
        int(parts["second"] or 0),
        int(fraction),
        tzinfo=_zone(parts["zone"]),
    ).astimezone(UTC)


def parse_date_range(text: str) -> DateRange:
    """The range a FHIR date, dateTime or instant stands for; ValueError if it is not one."""
    match = DATE_PATTERN.fullmatch(text.replace(" ", "+"))  # `+` decoded from a URL as space
    if match is None:
        raise ValueError(f"{text!r} is not a FHIR date (expected YYYY[-MM[-DD[Thh:mm[:ss]]]])")
    parts = match.groupdict()
    try:
        start = _start(parts)
    except (OverflowError, ValueError):
        raise ValueError(f"{text!r} is not a valid date") from None
    extent = _extent(parts)
    try:
        end = _add_months(start, extent) if isinstance(extent, int) else start + extent
    except (OverflowError, ValueError):
        end = LATEST
    return start, end


def element_range(element: Any) -> DateRange | None:
    """The range of a date, dateTime, instant or Period element; None if it holds no date."""
    if isinstance(element, str):
        return parse_date_range(element)
    if not isinstance(element, dict):
        return None
    start, end = element.get("start"), element.get("end")
    if start is None and end is None:
        return None
    low = parse_date_range(start)[0] if isinstance(start, str) else EARLIEST
    high = parse_date_range(end)[1] if isinstance(end, str) else LATEST
    return low, high


def _contains(searched: DateRange, target: DateRange) -> bool:
    return searched[0] <= target[0] and target[1] <= searched[1]


def _approximately(searched: DateRange, target: DateRange) -> bool:
    margin = max((searched[1] - searched[0]) / 10, APPROXIMATE_MINIMUM)
    low = searched[0] - margin if searched[0] - EARLIEST > margin else EARLIEST
    high = searched[1] + margin if LATEST - searched[1] > margin else LATEST
    return target[0] < high and target[1] > low


def compare_ranges(prefix: str, searched: DateRange, target: DateRange) -> bool:
    """Whether `target` (a resource's date) satisfies `prefix` against the searched range."""
    if prefix == "eq":
        return _contains(searched, target)
    if prefix == "ne":
        return not _contains(searched, target)
    if prefix == "gt":
        return target[1] > searched[1]
    if prefix == "lt":
        return target[0] < searched[0]
    if prefix == "ge":
        return target[1] > searched[1] or _contains(searched, target)
    if prefix == "le":
        return target[0] < searched[0] or _contains(searched, target)
    if prefix == "sa":
        return target[0] >= searched[1]
    if prefix == "eb":
        return target[1] <= searched[0]
    return _approximately(searched, target)


@dataclass(frozen=True)
class DateValue:
    """A date search value: a prefix and the range it searches."""

    prefix: str
    searched: DateRange

    def matches(self, element: Any) -> bool:
        """Whether one date, dateTime, instant or Period element satisfies this value."""
        target = element_range(element)
        return target is not None and compare_ranges(self.prefix, self.searched, target)

"""Which endpoints receive an event: tenant, account, event type filter and FHIR filter.

Endpoint `event_types` hold exact names, `prefix.*` patterns or `*`. `subscription_patterns`
turns an event type into every filter value that matches it, so the store can look endpoints
up by those values and never scan the endpoints that do not match.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Collection, Iterable
from functools import lru_cache

from app.domain.catalog import NAME_PATTERN, Catalog
from app.domain.models import Endpoint, Event, JSONObject
from app.fhir.search import Criteria, CriteriaError, parse_criteria

WILDCARD = "*"
# Tidings' own events reach only endpoints that name them (or their prefix): a `*` endpoint
# that fails must not be sent news of its own failures.
# Subscription handshakes and heartbeats go to one Subscription each, never through `*`.
OPERATIONAL_EVENT_TYPES = frozenset(
    {
        "ping",
        "endpoint.disabled",
        "endpoint.enabled",
        "delivery.failed",
        "subscription.handshake",
        "subscription.heartbeat",
    }
)
_PREFIX_PATTERN = re.compile(NAME_PATTERN.pattern.removesuffix("$") + r"\.\*$")


@lru_cache(maxsize=4096)
def subscription_patterns(event_type: str) -> tuple[str, ...]:
    """Every `event_types` filter value that matches `event_type`.

    `records.sync.failed` is matched by itself, `records.*`, `records.sync.*` and `*`;
    operational events are not matched by `*`.
    """
    parts = event_type.split(".")
    prefixes = tuple(".".join(parts[:end]) + ".*" for end in range(1, len(parts)))
    if event_type in OPERATIONAL_EVENT_TYPES:
        return (event_type, *prefixes)
    return (event_type, *prefixes, WILDCARD)


def validate_event_type_filter(value: str, catalog: Catalog) -> str | None:
    """Why `value` is not a usable `event_types` filter value, or None when it is."""
    if value == WILDCARD:
        return None
    if "*" in value:
        if not _PREFIX_PATTERN.match(value):
            return f"{value!r} is not a valid pattern: use an exact name, 'prefix.*' or '*'"
        if not catalog.names_under(value[:-2]):
            return f"{value!r} matches no event type in the catalog"
        return None
    if not NAME_PATTERN.match(value):
        return f"{value!r} is not a valid event type name"
    if value not in catalog:
        return f"unknown event type {value!r}"
    return None


@lru_cache(maxsize=4096)
def _subscription_pattern_set(event_type: str) -> frozenset[str]:
    return frozenset(subscription_patterns(event_type))


def accepts_event_type(filters: Collection[str], event_type: str) -> bool:
    """True when any of an endpoint's `event_types` filter values matches `event_type`."""
    return not _subscription_pattern_set(event_type).isdisjoint(filters)


class CriteriaCache:
    """Parsed endpoint filter criteria, by (text, resource type), least recently used evicted.

    Criteria that do not parse are remembered as None, so a bad filter is parsed only once.
    """

    def __init__(self, max_size: int = 4096) -> None:
        self._max_size = max_size
        self._parsed: OrderedDict[tuple[str, str], Criteria | None] = OrderedDict()

    def get(self, text: str, resource_type: str) -> Criteria | None:
        """The parsed criteria, or None when `text` is not valid for `resource_type`."""
        key = (text, resource_type)
        if key in self._parsed:
            self._parsed.move_to_end(key)
            return self._parsed[key]
        criteria = _parse(text, resource_type)
        self._parsed[key] = criteria
        if len(self._parsed) > self._max_size:
            self._parsed.popitem(last=False)
        return criteria


def _parse(text: str, resource_type: str) -> Criteria | None:
    try:
        criteria = parse_criteria(text, resource_type=resource_type)
    except CriteriaError:
        return None
    return criteria if criteria.resource_type == resource_type else None


def accepting_endpoints(
    endpoints: Iterable[Endpoint],
    event: Event,
    focus_resource: JSONObject | None,
    criteria_cache: CriteriaCache,
) -> list[Endpoint]:
    """The endpoints that accept `event` (`endpoint_accepts`), each distinct FHIR filter
    evaluated once: partners often share filters, and evaluation is the costly part."""
    filter_verdicts: dict[str, bool] = {}
    return [
        endpoint
        for endpoint in endpoints
        if endpoint_accepts(endpoint, event, focus_resource, criteria_cache, filter_verdicts)
    ]


def endpoint_accepts(
    endpoint: Endpoint,
    event: Event,
    focus_resource: JSONObject | None,
    criteria_cache: CriteriaCache,
    filter_verdicts: dict[str, bool] | None = None,
) -> bool:
    """True when `endpoint` should receive `event`.

    Never across organizations; an endpoint bound to an account receives only that account's
    events; the event type must match a filter value; and a FHIR `filter` must match the focus
    resource. A filter that cannot be evaluated (no resource, bad criteria) rejects the event.
    `filter_verdicts` remembers each filter's verdict for this one event.
    """
    if endpoint.organization_id != event.organization_id:
        return False
    if endpoint.account_id is not None and endpoint.account_id != event.account_id:
        return False
    if not accepts_event_type(endpoint.event_types, event.type):
        return False
    if endpoint.filter is None:
        return True
    verdicts = {} if filter_verdicts is None else filter_verdicts
    if endpoint.filter not in verdicts:
        verdicts[endpoint.filter] = _filter_matches(endpoint.filter, focus_resource, criteria_cache)
    return verdicts[endpoint.filter]


def _filter_matches(text: str, resource: JSONObject | None, cache: CriteriaCache) -> bool:
    resource_type = resource.get("resourceType") if resource is not None else None
    if resource is None or not isinstance(resource_type, str):
        return False
    criteria = cache.get(text, resource_type)
    if criteria is None:
        return False
    try:
        return criteria.matches(resource)
    except CriteriaError:
        return False

"""Checking an endpoint registration: every problem at once, each with its field pointer."""

from __future__ import annotations

from typing import Any

from app.api.context import Services
from app.domain import addresses, endpoint_rules, matching
from app.domain.errors import Problem, ValidationFailed
from app.fhir import search


async def checked_url(url: str, services: Services) -> endpoint_rules.EndpointUrl:
    """The parsed URL if its shape and every address it resolves to are acceptable."""
    try:
        parsed = endpoint_rules.parse_endpoint_url(url, require_https=services.require_https)
    except endpoint_rules.InvalidUrl as error:
        raise ValidationFailed([Problem("/url", str(error))]) from None
    try:
        resolved = await services.resolve(parsed.host, parsed.port)
    except OSError:
        raise ValidationFailed(
            [Problem("/url", f"the host {parsed.host!r} does not resolve")]
        ) from None
    for address in resolved:
        reason = addresses.forbidden_reason(address, services.allowed_networks)
        if reason:
            detail = (
                f"{parsed.host} resolves to {address}, {reason}; refused (TIDINGS_ALLOWED_NETWORKS)"
            )
            raise ValidationFailed([Problem("/url", detail)])
    return parsed


def settings_problems(values: dict[str, Any], services: Services) -> list[Problem]:
    """Problems with the non-URL fields of a registration or an update."""
    problems: list[Problem] = []
    for name, header_reason in endpoint_rules.header_problems(values.get("headers") or {}):
        problems.append(Problem(f"/headers/{name}" if name else "/headers", header_reason))
    for index, pattern in enumerate(values.get("event_types") or []):
        pattern_reason = matching.validate_event_type_filter(pattern, services.catalog)
        if pattern_reason:
            problems.append(Problem(f"/event_types/{index}", pattern_reason))
    if values.get("filter"):
        try:
            search.parse_criteria(values["filter"])
        except search.CriteriaError as error:
            problems.append(Problem("/filter", str(error)))
    return problems


def raise_if_any(problems: list[Problem]) -> None:
    """Refuse the request with all problems found."""
    if problems:
        raise ValidationFailed(problems)

"""A submitted FHIR Subscription checked like any endpoint registration, problems as FHIRPath.

The resource is parsed by `app.fhir.subscriptions` and mapped to endpoint columns by
`app.domain.subscriptions.endpoint_values`; then the endpoint checks of `/v1/endpoints` run on
it: URL shape and every address it resolves to, and the custom headers. Unlike plain
endpoints, a Subscription may send `Authorization` through `channel.header` (that is how FHIR
clients hand over the receiver's token), but not together with credentials in the URL, which
Tidings turns into Basic auth.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from app.api import endpoint_validation as checks
from app.api.context import services
from app.api.fhir_metadata import topic_canonicals
from app.domain import endpoint_rules
from app.domain.errors import Problem, ValidationFailed
from app.domain.subscriptions import endpoint_values
from app.fhir.subscriptions import (
    SubscriptionError,
    SubscriptionSpec,
    parse_subscription,
    subscription_shape,
)


@dataclass(frozen=True)
class AcceptedSubscription:
    """A Subscription that passed every check: what it asks for and the endpoint columns.

    `credentials` are the URL's `user:password` (None when it has none); `keeps_credentials`
    means the URL came back with the masked credentials Tidings shows, so keep the stored ones.
    """

    spec: SubscriptionSpec
    values: dict[str, Any]
    credentials: str | None
    keeps_credentials: bool

    @property
    def is_topic_based(self) -> bool:
        """Whether a handshake activates it (topic-based), or it is active at once (R4)."""
        return self.spec.is_topic_based


async def accepted_subscription(resource: Any) -> AcceptedSubscription:
    """Check a submitted Subscription; ValidationFailed lists every problem with its FHIRPath."""
    try:
        spec = parse_subscription(resource, topics=topic_canonicals())
        values = endpoint_values(spec, services().catalog)
    except SubscriptionError as error:
        raise ValidationFailed([Problem(loc, message) for loc, message in error.issues]) from None
    shape = subscription_shape(spec.resource)
    header_at = "Subscription.parameter" if shape == "R5" else "Subscription.channel.header"
    problems = [
        Problem(header_at, f"{name}: {reason}" if name else reason)
        for name, reason in endpoint_rules.header_problems(spec.headers, allow_authorization=True)
    ]
    checks.raise_if_any(problems)
    parsed = await _checked_url(spec.endpoint, _endpoint_location(shape))
    if parsed.has_credentials and any(name.lower() == "authorization" for name in spec.headers):
        message = "credentials in the endpoint URL and an Authorization header cannot go together"
        raise ValidationFailed([Problem(header_at, message)])
    shown = endpoint_rules.redacted_url(parsed.url, parsed.has_credentials)
    values.update(url=parsed.url, fhir_resource=_with_endpoint(spec.resource, shown))
    masked = parsed.username == endpoint_rules.REDACTED == parsed.password
    return AcceptedSubscription(spec, values, parsed.credentials, masked)


async def _checked_url(url: str, location: str) -> endpoint_rules.EndpointUrl:
    try:
        return await checks.checked_url(url, services())
    except ValidationFailed as error:
        raise ValidationFailed([Problem(location, p.detail) for p in error.problems]) from None


def _endpoint_location(shape: str) -> str:
    return "Subscription.endpoint" if shape == "R5" else "Subscription.channel.endpoint"


def _with_endpoint(resource: dict[str, Any], url: str) -> dict[str, Any]:
    """The resource as stored: its endpoint without credentials (they are kept encrypted)."""
    stored = copy.deepcopy(resource)
    if subscription_shape(stored) == "R5":
        stored["endpoint"] = url
    else:
        stored["channel"]["endpoint"] = url
    return stored

"""What an upstream FHIR server registration holds: its base URL and how to sign in to it.

The credentials (`UpstreamAuth`) are kept as one JSON document encrypted by the `SecretBox`;
only the kind is stored in the clear. Base URLs (and SMART token URLs) obey the same address
rule as endpoint URLs (SPEC section 10): no loopback, private, link-local or metadata
addresses unless inside `TIDINGS_ALLOWED_NETWORKS`. This module speaks no HTTP, so the API may
use it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from urllib.parse import urlsplit

from app.domain import addresses, endpoint_rules
from app.domain.addresses import IPNetwork, Resolver
from app.domain.errors import Problem, ValidationFailed
from app.domain.secrets import SecretBox

DEFAULT_POLL_SECONDS = 30


class AuthKind(StrEnum):
    """How Tidings signs in to an upstream FHIR server."""

    NONE = "none"
    BEARER = "bearer"
    BASIC = "basic"
    SMART = "smart"  # SMART Backend Services, client credentials with a client secret


_REQUIRED = {
    AuthKind.NONE: (),
    AuthKind.BEARER: ("token",),
    AuthKind.BASIC: ("username", "password"),
    AuthKind.SMART: ("client_id", "client_secret", "token_url"),
}


@dataclass(frozen=True)
class UpstreamAuth:
    """The credentials for one upstream; which fields count depends on `kind`."""

    kind: AuthKind = AuthKind.NONE
    token: str | None = None
    username: str | None = None
    password: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    token_url: str | None = None
    scope: str | None = None

    def problems(self) -> list[Problem]:
        """Missing fields for this kind, and fields another kind would use, at `/auth/...`."""
        required = _REQUIRED[self.kind]
        found: list[Problem] = []
        for name in (field.name for field in dataclasses.fields(self) if field.name != "kind"):
            value = getattr(self, name)
            if name in required and not value:
                found.append(Problem(f"/auth/{name}", f"required for {self.kind.value} auth"))
            elif value is not None and name not in required and name != "scope":
                found.append(Problem(f"/auth/{name}", f"not used by {self.kind.value} auth"))
        if self.scope is not None and self.kind is not AuthKind.SMART:
            found.append(Problem("/auth/scope", f"not used by {self.kind.value} auth"))
        return found


def seal_auth(auth: UpstreamAuth, box: SecretBox) -> str | None:
    """The credentials encrypted for storage; None when there are none."""
    if auth.kind is AuthKind.NONE:
        return None
    values = {key: value for key, value in dataclasses.asdict(auth).items() if value is not None}
    return box.encrypt(json.dumps(values))


def open_auth(kind: str, sealed: str | None, box: SecretBox) -> UpstreamAuth:
    """The credentials stored by `seal_auth`.

    Raises:
        SecretDecryptionError: when they were sealed under another secret key.
    """
    if sealed is None or AuthKind(kind) is AuthKind.NONE:
        return UpstreamAuth()
    values = json.loads(box.decrypt(sealed))
    values["kind"] = AuthKind(values.get("kind", kind))
    return UpstreamAuth(**values)


def base_url_shape(text: str, *, require_https: bool) -> endpoint_rules.EndpointUrl:
    """A base URL without credentials, query or fragment, and without the trailing slash.

    Raises:
        endpoint_rules.InvalidUrl: saying what is wrong.
    """
    parsed = endpoint_rules.parse_endpoint_url(text, require_https=require_https)
    if parsed.has_credentials:
        raise endpoint_rules.InvalidUrl("put credentials in auth, not in the URL")
    if urlsplit(parsed.url).query:
        raise endpoint_rules.InvalidUrl("a FHIR base URL has no ?query")
    return dataclasses.replace(parsed, url=parsed.url.rstrip("/"))


async def forbidden_address(
    url: str, resolve: Resolver, allowed: Sequence[IPNetwork]
) -> str | None:
    """Why Tidings may not connect to `url`'s host, or None when every address is fine."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        resolved = await resolve(host, port)
    except OSError:
        return f"the host {host!r} does not resolve"
    for address in resolved:
        reason = addresses.forbidden_reason(address, allowed)
        if reason:
            return f"{host} resolves to {address}, {reason}; refused (TIDINGS_ALLOWED_NETWORKS)"
    return None


async def checked_registration(
    base_url: str,
    auth: UpstreamAuth,
    *,
    resolve: Resolver,
    allowed: Sequence[IPNetwork],
    require_https: bool,
) -> str:
    """The normalized base URL, once it and the credentials pass; else every problem at once.

    Raises:
        ValidationFailed: with pointers `/base_url` and `/auth/...`.
    """
    problems = auth.problems()
    normalized = await _checked_url(
        base_url, "/base_url", problems, resolve, allowed, require_https
    )
    if auth.kind is AuthKind.SMART and auth.token_url:
        await _checked_url(auth.token_url, "/auth/token_url", problems, resolve, allowed, False)
    if problems:
        raise ValidationFailed(problems)
    return normalized


async def _checked_url(
    url: str,
    pointer: str,
    problems: list[Problem],
    resolve: Resolver,
    allowed: Sequence[IPNetwork],
    require_https: bool,
) -> str:
    try:
        parsed = base_url_shape(url, require_https=require_https)
    except endpoint_rules.InvalidUrl as error:
        problems.append(Problem(pointer, str(error)))
        return url
    reason = await forbidden_address(parsed.url, resolve, allowed)
    if reason:
        problems.append(Problem(pointer, reason))
    return parsed.url


def format_instant(moment: datetime) -> str:
    """A FHIR instant in UTC with milliseconds; truncation only moves it earlier, which is safe
    for `_since` (inclusive) and absorbed by de-duplication."""
    text = moment.astimezone(UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")

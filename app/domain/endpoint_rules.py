"""What a registered endpoint may look like: URL, credentials and custom headers.

The address check (loopback, private, metadata...) needs DNS and lives with the resolver;
these rules are the part that can be judged from the text alone.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit

MAX_HEADERS = 20
MAX_HEADER_VALUE = 1000
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "expect",
}
_RESERVED = {"content-type", "user-agent", "authorization", "x-signature", "x-tidings-signature"}
_RESERVED_PREFIXES = ("webhook-", "svix-", "x-medplum-")
REDACTED = "****"


@dataclass(frozen=True)
class EndpointUrl:
    """An endpoint URL split into what is shown and the credentials that are kept encrypted."""

    url: str
    host: str
    port: int
    username: str | None = None
    password: str | None = None

    @property
    def has_credentials(self) -> bool:
        """Whether the URL carried `user:password@`."""
        return self.username is not None

    @property
    def credentials(self) -> str | None:
        """`user:password`, the form stored encrypted."""
        if self.username is None:
            return None
        return f"{self.username}:{self.password or ''}"


class InvalidUrl(ValueError):
    """The endpoint URL cannot be used; the message says why."""


def parse_endpoint_url(text: str, *, require_https: bool) -> EndpointUrl:
    """Check an endpoint URL's shape and take any credentials out of it."""
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError as error:
        raise InvalidUrl(f"not a valid URL: {error}") from None
    _check_scheme(parts, require_https)
    host = parts.hostname
    if not host:
        raise InvalidUrl("the URL has no host")
    if parts.fragment:
        raise InvalidUrl("the URL must not have a #fragment")
    _check_host(host)
    default_port = 443 if parts.scheme == "https" else 80
    return EndpointUrl(
        url=urlunsplit(_without_credentials(parts)),
        host=host,
        port=port or default_port,
        username=unquote(parts.username) if parts.username is not None else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


def redacted_url(url: str, has_credentials: bool) -> str:
    """The URL as shown to callers: credentials replaced by a mask."""
    if not has_credentials:
        return url
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{REDACTED}:{REDACTED}@{parts.netloc}"))


def _check_scheme(parts: SplitResult, require_https: bool) -> None:
    if parts.scheme not in ("http", "https"):
        raise InvalidUrl(f"the scheme must be https or http, not {parts.scheme or 'missing'!r}")
    if require_https and parts.scheme != "https":
        raise InvalidUrl("only https:// URLs are accepted here (TIDINGS_REQUIRE_HTTPS)")


def _check_host(host: str) -> None:
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    labels = host.rstrip(".").split(".")
    if any(not label or len(label) > 63 for label in labels) or len(host) > 253:
        raise InvalidUrl(f"{host!r} is not a valid host name")
    if not all(re.fullmatch(r"[A-Za-z0-9_-]+", label) for label in labels):
        raise InvalidUrl(f"{host!r} is not a valid host name")


def _without_credentials(parts: SplitResult) -> SplitResult:
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return parts._replace(netloc=netloc)


def header_problems(
    headers: dict[str, str], *, allow_authorization: bool = False
) -> list[tuple[str, str]]:
    """(header name, reason) for every custom header that may not be sent.

    `allow_authorization` admits `Authorization`: a FHIR Subscription's `channel.header` is
    the standard way to hand the receiver's bearer token over (the request is still signed by
    Tidings' own headers). Plain endpoints put credentials in the URL instead (Basic auth).
    """
    problems: list[tuple[str, str]] = []
    if len(headers) > MAX_HEADERS:
        problems.append(("", f"at most {MAX_HEADERS} custom headers"))
    for name, value in headers.items():
        allowed = {"authorization"} if allow_authorization else set()
        reason = _header_problem(name, value, allowed)
        if reason:
            problems.append((name, reason))
    return problems


def _header_problem(name: str, value: str, allowed: set[str]) -> str | None:
    lowered = name.lower()
    if not _TOKEN.match(name):
        return "not a valid header name"
    if lowered in _HOP_BY_HOP:
        return "hop-by-hop and connection headers are set by Tidings"
    reserved = lowered in _RESERVED or lowered.startswith(_RESERVED_PREFIXES)
    if reserved and lowered not in allowed:
        return "would override a signature, content or authentication header set by Tidings"
    if "\r" in value or "\n" in value or "\0" in value:
        return "header values may not contain line breaks"
    if len(value) > MAX_HEADER_VALUE:
        return f"header values are limited to {MAX_HEADER_VALUE} characters"
    return None

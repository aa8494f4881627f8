"""The sender: the only code that speaks outbound HTTP (SPEC section 8).

`Sender.send` makes one delivery attempt, a `POST`, and turns whatever happens into an
`AttemptOutcome`; no transport exception leaves this module.

Transport: `http1.Http1Client`, a POST-only HTTP/1.1 client on asyncio and httptools,
chosen by measurement. On one machine httpx moved about 1,200 requests/s, httpx over
aiohttp about 3,700/s and aiohttp about 13,600/s; on another, aiohttp cost 88-118 µs of CPU
a request and `Http1Client` 37-43 µs (docs/performance.md). It
connects only to the addresses `transport.permitted_addresses` returns, so the address
checked is the address connected to. The choice stays behind `Sender`: callers see
`OutboundRequest`, `AttemptOutcome` and nothing of the client.

Per attempt:
- no redirects (a 3xx is the outcome), no cookies, no proxy from the environment;
- one total timeout, from waiting for a connection through the last byte read;
- at most 4 KiB of the response is read; a longer body closes the connection instead of
  being drained, so a huge or endless body costs nothing;
- connections are pooled across attempts and endpoints (one client).
"""

from __future__ import annotations

import base64
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType

from yarl import URL

import app
from app.delivery import dns, transport
from app.delivery.http1 import (
    ConnectFailedError,
    Http1Client,
    InvalidHeaderError,
    InvalidResponseError,
    Origin,
)
from app.domain import retry
from app.domain.addresses import IPAddress, IPNetwork, Resolver
from app.domain.retry import AttemptError, AttemptOutcome

EXCERPT_BYTES = 4096
DEFAULT_USER_AGENT = f"Tidings/{app.__version__}"

Clock = Callable[[], datetime]


@dataclass(frozen=True)
class OutboundRequest:
    """One attempt to make: where, what, and how long to wait at most.

    Arguments:
        headers: the signature, content type and endpoint headers, sent as given.
        timeout: seconds for the whole attempt; None uses the sender's default.
        basic_auth: (user, password) for Basic auth. Credentials inside `url` are
            used when this is None, and are never sent as part of the URL.
    """

    url: str
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout: float | None = None
    basic_auth: tuple[str, str] | None = None


class Sender:
    """Sends delivery attempts over one pooled HTTP client.

    Arguments:
        timeout: default seconds per attempt, connect to last byte.
        allowed_networks: networks that may be reached although private.
        resolver: resolves (host, port) to addresses, `dns.resolve` by default; tests
            inject one. Its answers pass the SSRF check like any other.
        max_connections: attempts in flight at most; more wait for a free connection.
        clock: reads the time to turn a `Retry-After` date into seconds.
        tls: the TLS context for https endpoints; the system's trusted CAs by default.
    """

    def __init__(
        self,
        *,
        timeout: float = 5.0,
        allowed_networks: Sequence[IPNetwork] = (),
        user_agent: str = DEFAULT_USER_AGENT,
        resolver: Resolver | None = None,
        max_connections: int = 100,
        clock: Clock | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._timeout = timeout
        self._allowed = tuple(allowed_networks)
        self._user_agent = user_agent
        self._resolver = resolver or dns.resolve
        self._clock = clock or _utcnow
        self._client = Http1Client(
            self._permitted_addresses,
            max_connections=max_connections,
            body_limit=EXCERPT_BYTES,
            tls=tls,
        )
        self._passed_hosts: set[str] = set()

    async def __aenter__(self) -> Sender:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close pooled connections. The sender may be used again afterwards."""
        await self._client.aclose()

    async def send(self, request: OutboundRequest) -> AttemptOutcome:
        """Make one attempt and report its outcome; transport errors become outcomes."""
        started = time.perf_counter()
        try:
            return await self._exchange(request, started)
        except (OSError, TimeoutError, ValueError, InvalidResponseError) as exc:
            return AttemptOutcome(error=attempt_error(exc), duration_ms=_millis_since(started))

    async def _exchange(self, request: OutboundRequest, started: float) -> AttemptOutcome:
        origin, target, headers = self._split(request)
        response = await self._client.post(
            origin, target, headers, request.body, request.timeout or self._timeout
        )
        retry_after = response.header_values("retry-after")
        return AttemptOutcome(
            status=response.status,
            duration_ms=_millis_since(started),
            response_excerpt=excerpt_text(response.body),
            retry_after=None
            if not retry_after
            else retry.parse_retry_after(retry_after[0], self._clock()),
            abort=any(
                value.strip().lower() == "abort-message"
                for value in response.header_values("webhook-delivery")
            ),
        )

    def _split(self, request: OutboundRequest) -> tuple[Origin, str, dict[str, str]]:
        """Where to connect, the request target, and the headers to send (Basic auth and the
        user agent added).

        Raises:
            ValueError: when the URL cannot be used.
            transport.RefusedAddressError: when its host is a refused IP literal.
        """
        url, headers = _split_credentials(request)
        if url.scheme not in ("http", "https") or not url.raw_host:
            raise ValueError(f"not an http(s) URL: {request.url!r}")
        host = url.raw_host
        self._check_literal_host(host)
        if "User-Agent" not in headers:
            headers = {"User-Agent": self._user_agent, **headers}
        port = url.port
        assert port is not None  # http and https have a default port
        return Origin(url.scheme, host, port), url.raw_path_qs or "/", headers

    async def _permitted_addresses(self, host: str, port: int) -> list[IPAddress]:
        return await transport.permitted_addresses(self._resolver, host, port, self._allowed)

    def _check_literal_host(self, host: str) -> None:
        """`transport.check_literal_host`, remembering the hosts that passed (the networks
        allowed never change for a sender)."""
        if host in self._passed_hosts:
            return
        transport.check_literal_host(host, self._allowed)
        if len(self._passed_hosts) >= 4096:
            self._passed_hosts.clear()
        self._passed_hosts.add(host)


ExceptionKinds = type[BaseException] | tuple[type[BaseException], ...]
_ERROR_KINDS: tuple[tuple[ExceptionKinds, AttemptError], ...] = (
    (TimeoutError, AttemptError.TIMEOUT),
    (transport.RefusedAddressError, AttemptError.REFUSED_ADDRESS),
    (transport.UnresolvedHostError, AttemptError.DNS),
    (ssl.SSLError, AttemptError.TLS),  # before OSError and ValueError: it is both
    (ConnectFailedError, AttemptError.CONNECT),
    (InvalidResponseError, AttemptError.INVALID_RESPONSE),
    (InvalidHeaderError, AttemptError.PAYLOAD),
    (ValueError, AttemptError.INVALID_URL),
    (OSError, AttemptError.RESET),  # the connection failed after it was made
)


def attempt_error(exc: BaseException) -> AttemptError:
    """The error kind an attempt records for a transport exception."""
    for kinds, error in _ERROR_KINDS:
        if isinstance(exc, kinds):
            return error
    return AttemptError.CONNECT


def _split_credentials(request: OutboundRequest) -> tuple[URL, dict[str, str]]:
    """The URL without user info, and the headers with Basic auth added if any."""
    url = URL(request.url)
    credentials = request.basic_auth
    if credentials is None and url.user is not None:
        credentials = (url.user, url.password or "")
    if credentials is None:
        return url, dict(request.headers)
    return url.with_user(None), {**request.headers, "Authorization": basic_auth(*credentials)}


def basic_auth(user: str, password: str) -> str:
    """An `Authorization` value for HTTP Basic auth, UTF-8 encoded (RFC 7617).

    Raises:
        ValueError: when the user name contains a colon, which Basic auth cannot carry.
    """
    if ":" in user:
        raise ValueError("a Basic auth user name cannot contain ':'")
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def excerpt_text(raw: bytes) -> str:
    """Response bytes as text for the attempt log: at most 4 KiB of UTF-8, no NULs.

    Invalid UTF-8 becomes U+FFFD; NUL too, since PostgreSQL text cannot hold it.
    """
    text = raw.decode("utf-8", errors="replace").replace("\x00", "\ufffd")
    encoded = text.encode()
    if len(encoded) <= EXCERPT_BYTES:
        return text
    return encoded[:EXCERPT_BYTES].decode("utf-8", errors="ignore")


def _millis_since(started: float) -> int:
    return round((time.perf_counter() - started) * 1000)


def _utcnow() -> datetime:
    return datetime.now(UTC)

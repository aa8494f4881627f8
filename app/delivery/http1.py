"""The sender's HTTP/1.1 client: POSTs over pooled keep-alive connections, on asyncio and
httptools (llhttp, the parser Node.js and uvicorn use).

Why not a general client: a webhook attempt needs little of HTTP (one POST at a time per
connection, a status, two headers, the first 4 KiB of the body), and in the drain the client
was the largest part of the worker's CPU. Measured on one machine (`bench_probe.py sender`):
aiohttp's client cost 88-118 µs of CPU per request, this one 37-43 (docs/performance.md).
What it leaves out is what the sender never uses: redirects, cookies, proxies, compression,
request streaming.

- It connects only to the addresses `addresses(host, port)` returns, in order, until one
  accepts. The sender's function applies the SSRF rule there, so the address judged is the
  address connected to. The URL's host name is kept for `Host`, SNI and the certificate check.
- Idle connections are pooled by (scheme, host, port) and the most recently used one is taken
  first. A connection the peer closed (even if the loop has not seen it yet), one idle for
  `KEEPALIVE_SECONDS`, or one whose response did not end cleanly is never used again.
- At most `max_connections` exchanges are in flight; the rest wait, inside their timeout. At
  most as many connections are kept idle, in all: beyond that, a connection is closed when
  its exchange ends, so the sockets held stay bounded however many hosts are sent to.
- One timeout covers a whole exchange, from waiting for a slot through the last byte read.
- The body is read up to `body_limit` bytes. A longer body closes the connection instead of
  being drained, so a huge or endless body costs nothing. A response framed by neither
  Content-Length nor chunked encoding ends when the peer closes.
- Response headers (with any chunk framing and trailers) beyond `MAX_HEADER_BYTES` make the
  response invalid: the memory a response can take is bounded. Trailers are not headers
  (RFC 9110 6.5.1): they are not read into the response.
- A failed or timed-out exchange aborts its connection: an unsent request is dropped, not
  left waiting for a receiver that stopped reading.
"""

from __future__ import annotations

import asyncio
import re
import select
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import httptools

from app.domain.addresses import IPAddress

# Shorter than the 5 s after which Node.js, uvicorn and Apache close an idle connection, so a
# connection is not reused just as the receiver closes it.
KEEPALIVE_SECONDS = 4.0
MAX_HEADER_BYTES = 64 * 1024
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_SET_BY_CLIENT = frozenset({"host", "content-length", "transfer-encoding", "connection"})

# The addresses the client may connect to for (host, port), in the order to try them.
AddressSource = Callable[[str, int], Awaitable[Sequence[IPAddress]]]


class ConnectFailedError(OSError):
    """No address of the host accepted a connection."""


class InvalidHeaderError(ValueError):
    """A request header that cannot be sent (not a token, or a line break in its value)."""


class InvalidResponseError(Exception):
    """The peer answered something that is not an HTTP/1.1 response."""


class _Stop(Exception):
    """Raised in a parser callback to stop parsing: the exchange is over, the rest is unread."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a connection goes: `scheme` is http or https; `host` as in the URL (IDNA-encoded,
    an IPv6 literal without brackets)."""

    scheme: str
    host: str
    port: int

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Response:
    """What an exchange produced: the status, the headers (names lowercased, in order), and the
    body up to the client's limit."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header_values(self, name: str) -> list[str]:
        """Every value of header `name` (lowercase), in order."""
        return [value for key, value in self.headers if key == name]


class Http1Client:
    """A pool of HTTP/1.1 connections that makes POSTs; see the module docstring."""

    def __init__(
        self,
        addresses: AddressSource,
        *,
        max_connections: int = 100,
        body_limit: int = 4096,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._addresses = addresses
        self._slots = asyncio.Semaphore(max_connections)
        self._body_limit = body_limit
        self._tls = tls
        self._idle: dict[Origin, list[_Connection]] = {}
        self._idle_count = 0
        self._max_idle = max_connections
        self._sweep: asyncio.TimerHandle | None = None
        self._generation = 0  # bumped by aclose: exchanges begun before it are not pooled

    async def post(
        self,
        origin: Origin,
        target: str,
        headers: Mapping[str, str],
        body: bytes,
        timeout: float,
    ) -> Response:
        """POST `body` to `target` (path and query) at `origin` and read the response.

        Raises:
            TimeoutError: the exchange took longer than `timeout` seconds.
            InvalidHeaderError: a header name or value that cannot be sent.
            ConnectFailedError: no address accepted a connection.
            ssl.SSLError: the TLS handshake failed (a certificate check included).
            InvalidResponseError: the answer is not HTTP/1.1.
            ConnectionError: the peer closed or reset the connection before the response ended.
            OSError: whatever `addresses` raised.
        """
        request = _request_bytes(origin, target, headers, body)
        generation = self._generation
        async with asyncio.timeout(timeout), self._slots:
            connection = self._pooled(origin) or await self._connect(origin)
            try:
                response, reusable = await connection.exchange(request, self._body_limit)
            except BaseException:
                connection.close()
                raise
        if reusable and connection.is_open and generation == self._generation:
            self._keep(origin, connection)
        else:
            connection.close()
        return response

    async def aclose(self) -> None:
        """Close every idle connection. The client may be used again afterwards."""
        idle, self._idle = self._idle, {}
        self._idle_count = 0
        self._generation += 1
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for connections in idle.values():
            for connection in connections:
                connection.close()

    def _pooled(self, origin: Origin) -> _Connection | None:
        connections = self._idle.get(origin)
        if connections is None:
            return None
        too_old = time.monotonic() - KEEPALIVE_SECONDS
        while connections:
            connection = connections.pop()
            self._idle_count -= 1
            if connection.is_open and connection.idle_since > too_old and connection.quiet():
                return connection
            connection.close()
        del self._idle[origin]
        return None

    def _keep(self, origin: Origin, connection: _Connection) -> None:
        if self._idle_count >= self._max_idle:
            connection.close()
            return
        connection.idle_since = time.monotonic()
        self._idle.setdefault(origin, []).append(connection)
        self._idle_count += 1
        if self._sweep is None:
            loop = asyncio.get_running_loop()
            self._sweep = loop.call_later(KEEPALIVE_SECONDS, self._close_stale)

    def _close_stale(self) -> None:
        """Close the idle connections past their keep-alive, every `KEEPALIVE_SECONDS` while
        any are idle, so hosts no longer sent to do not keep sockets open."""
        self._sweep = None
        too_old = time.monotonic() - KEEPALIVE_SECONDS
        for origin, connections in list(self._idle.items()):
            fresh = [c for c in connections if c.is_open and c.idle_since > too_old]
            self._idle_count -= len(connections) - len(fresh)
            for connection in connections:
                if not (connection.is_open and connection.idle_since > too_old):
                    connection.close()
            if fresh:
                self._idle[origin] = fresh
            else:
                del self._idle[origin]
        if self._idle:
            oldest = min(c.idle_since for cs in self._idle.values() for c in cs)
            delay = max(oldest + KEEPALIVE_SECONDS - time.monotonic(), 0.0) + 0.01
            self._sweep = asyncio.get_running_loop().call_later(delay, self._close_stale)

    async def _connect(self, origin: Origin) -> _Connection:
        loop = asyncio.get_running_loop()
        tls = None
        if origin.scheme == "https":
            if self._tls is None:
                self._tls = ssl.create_default_context()
            tls = self._tls
        failure: OSError | None = None
        for address in await self._addresses(origin.host, origin.port):
            try:
                _, connection = await loop.create_connection(
                    _Connection,
                    str(address),
                    origin.port,
                    ssl=tls,
                    server_hostname=origin.host if tls else None,
                )
            except ssl.SSLError:
                raise
            except OSError as error:
                failure = error
                continue
            return connection
        raise ConnectFailedError(f"cannot connect to {origin.host_header}: {failure}")


def _request_bytes(origin: Origin, target: str, headers: Mapping[str, str], body: bytes) -> bytes:
    lines = [f"POST {target} HTTP/1.1\r\nHost: {origin.host_header}\r\n"]
    for name, value in headers.items():
        if name.lower() in _SET_BY_CLIENT:
            continue
        if not _TOKEN.fullmatch(name) or "\r" in value or "\n" in value or "\0" in value:
            raise InvalidHeaderError(f"header {name!r} cannot be sent")
        lines.append(f"{name}: {value}\r\n")
    lines.append(f"Content-Length: {len(body)}\r\n\r\n")
    try:
        return "".join(lines).encode() + body
    except UnicodeEncodeError as error:  # a lone surrogate
        raise InvalidHeaderError(f"the request head cannot be encoded: {error}") from None


class _Connection(asyncio.Protocol):
    """One connection: its socket, its parser, and the exchange in progress, if any."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._answer: asyncio.Future[tuple[Response, bool]] | None = None
        self._body_limit = 0
        self._status = 0
        self._headers: list[tuple[str, str]] = []
        self._header_bytes = 0
        self._headers_done = False
        self._until_close = False
        self._body = bytearray()
        self._framing_bytes = 0
        self.is_open = True
        self.idle_since = 0.0

    async def exchange(self, request: bytes, body_limit: int) -> tuple[Response, bool]:
        """Send `request`, wait for its response: (response, whether the connection may be
        used again)."""
        assert self._transport is not None and self._answer is None
        self._answer = asyncio.get_running_loop().create_future()
        self._body_limit = body_limit
        self._framing_bytes = 0
        self._start_response()
        self._transport.write(request)
        try:
            return await self._answer
        finally:
            self._answer = None

    def close(self) -> None:
        """Close at once: abort(), not close(), which would wait (forever, if the peer stops
        reading) for an unsent request to drain."""
        self.is_open = False
        if self._transport is not None:
            self._transport.abort()

    def quiet(self) -> bool:
        """Whether an idle connection has nothing to read: a FIN or stray bytes the loop has
        not processed yet make it unusable."""
        assert self._transport is not None
        if self._transport.is_closing():
            return False
        sock = self._transport.get_extra_info("socket")
        if sock is None:
            return True
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        return not poller.poll(0)

    def _start_response(self) -> None:
        self._status = 0
        self._headers = []
        self._header_bytes = 0
        self._headers_done = False
        self._until_close = False
        self._body = bytearray()

    def _finish(self, reusable: bool) -> None:
        answer = self._answer
        if answer is not None and not answer.done():
            response = Response(self._status, self._headers, bytes(self._body))
            assert self._transport is not None
            unsent = self._transport.get_write_buffer_size()  # answered before it was all sent
            answer.set_result((response, reusable and self.is_open and not unsent))

    def _fail(self, error: BaseException) -> None:
        answer = self._answer
        if answer is not None and not answer.done():
            answer.set_exception(error)

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        if self._answer is None or self._answer.done():
            self.close()  # nothing was asked: the peer is out of step
            return
        self._framing_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(InvalidResponseError("the receiver switched protocols"))
            self.close()
        except httptools.HttpParserError as error:
            cause = error.__context__ or error
            self._fail(InvalidResponseError(f"not an HTTP/1.1 response: {cause}"))
            self.close()
        else:
            # httptools buffers a header line until it ends, before on_header can count it:
            # bound what is not body (status lines, headers, chunk framing, trailers) here.
            answer = self._answer
            if answer is not None and not answer.done() and self._framing_bytes > MAX_HEADER_BYTES:
                self._fail(InvalidResponseError(f"response headers over {MAX_HEADER_BYTES} bytes"))
                self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.is_open = False
        if exc is None and self._headers_done and self._until_close:
            self._finish(reusable=False)  # a body that ends when the connection does (cleanly)
        else:
            self._fail(
                exc or ConnectionResetError("the receiver closed the connection mid-response")
            )

    def _ends_at_close(self) -> bool:
        """Whether the body is delimited by the close (RFC 9112 6.3), as llhttp reads it."""
        if self._status < 200 or self._status in (204, 304):
            return False
        codings = [v for name, v in self._headers if name == "transfer-encoding"]
        if codings:
            return codings[-1].rsplit(",", 1)[-1].strip().lower() != "chunked"
        return not any(name == "content-length" for name, _ in self._headers)

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self._answer is None or self._answer.done():
            self.close()  # a second response to one request: the peer is out of step
            raise _Stop  # and parse none of it into the response already handed over

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 32  # a header's objects cost too
        if self._header_bytes > MAX_HEADER_BYTES:
            raise InvalidResponseError(f"response headers over {MAX_HEADER_BYTES} bytes")
        if self._headers_done or self._answer is None or self._answer.done():
            return  # a trailer, not merged into the header section (RFC 9110 6.5.1)
        self._headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        self._headers_done = True
        self._until_close = self._ends_at_close()

    def on_body(self, body: bytes) -> None:
        if self._answer is None or self._answer.done():
            return
        self._framing_bytes -= len(body)
        room = self._body_limit - len(self._body)
        if len(body) <= room:
            self._body += body
            return
        self._body += body[:room]
        self._finish(reusable=False)  # the rest is not read: the connection closes
        self.close()
        raise _Stop

    def on_message_complete(self) -> None:
        if self._status < 200:  # an interim answer (100 Continue): the real one follows
            self._start_response()
            return
        self._finish(reusable=self._parser.should_keep_alive())

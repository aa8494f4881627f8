"""The sender against real receivers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from ipaddress import ip_address

import pytest
import trustme
from aiohttp import web

import app
from app.delivery import http1
from app.delivery.http1 import Origin
from app.delivery.sender import OutboundRequest, Sender
from app.domain.addresses import IPAddress, IPNetwork, parse_networks
from app.domain.retry import AttemptError, AttemptOutcome

LOOPBACK = parse_networks("127.0.0.0/8")
HUGE_BYTES = 64 * 1024 * 1024
BODY = b'{"type": "ping"}'


@dataclass
class Seen:
    """One request as the receiver saw it."""

    path: str
    headers: dict[str, str]
    body: bytes
    peer: tuple[str, int]


@dataclass
class Receiver:
    """A live HTTP receiver and what it saw."""

    port: int
    seen: list[Seen] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    huge_bytes_written: int = 0

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def receiver_routes(receiver: Receiver) -> dict[str, Handler]:
    async def ok(request: web.Request) -> web.StreamResponse:
        return web.Response(text="ok")

    async def error(request: web.Request) -> web.StreamResponse:
        return web.Response(status=500, text="boom")

    async def gone(request: web.Request) -> web.StreamResponse:
        return web.Response(status=410, text="gone")

    async def throttled(request: web.Request) -> web.StreamResponse:
        return web.Response(status=429, headers={"Retry-After": "120"})

    async def unavailable_until(request: web.Request) -> web.StreamResponse:
        return web.Response(status=503, headers={"Retry-After": "Thu, 01 Jan 2026 12:10:00 GMT"})

    async def abort(request: web.Request) -> web.StreamResponse:
        return web.Response(status=400, headers={"webhook-delivery": "abort-message"})

    async def hang(request: web.Request) -> web.StreamResponse:
        await receiver.release.wait()
        return web.Response(text="late")

    async def slow_body(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "100"})
        await response.prepare(request)
        await response.write(b"x" * 10)
        await receiver.release.wait()
        return response

    async def redirect(request: web.Request) -> web.StreamResponse:
        return web.Response(status=302, headers={"Location": "/ok"})

    async def in_pieces(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()  # chunked
        await response.prepare(request)
        for piece in (b"accepted", b", queued", b" as 42"):
            await response.write(piece)
            await asyncio.sleep(0.02)
        return response

    async def huge(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        chunk = b"\xe2\x82\xac" * 21846  # euro signs, so a 4 KiB cut splits one
        try:
            while receiver.huge_bytes_written < HUGE_BYTES:
                await response.write(chunk)
                receiver.huge_bytes_written += len(chunk)
        except ConnectionError:
            pass
        return response

    return {
        "/ok": ok,
        "/error": error,
        "/gone": gone,
        "/throttled": throttled,
        "/unavailable": unavailable_until,
        "/abort": abort,
        "/hang": hang,
        "/slow-body": slow_body,
        "/redirect": redirect,
        "/huge": huge,
        "/in-pieces": in_pieces,
    }


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver(port=0)
    routes = receiver_routes(receiver)

    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else ("", 0)
        headers = dict(request.headers)
        receiver.seen.append(Seen(request.path, headers, await request.read(), peer[:2]))
        return await routes[request.path](request) if request.path in routes else web.Response()

    application = web.Application(middlewares=[record])
    runner = web.AppRunner(application, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    receiver.port = runner.addresses[0][1]
    yield receiver
    receiver.release.set()
    await runner.cleanup()


@pytest.fixture
async def sender() -> AsyncIterator[Sender]:
    async with Sender(timeout=2.0, allowed_networks=LOOPBACK) as sender:
        yield sender


@pytest.mark.parametrize(
    ("path", "status", "excerpt", "retry_after", "abort"),
    [
        ("/ok", 200, "ok", None, False),
        ("/error", 500, "boom", None, False),
        ("/gone", 410, "gone", None, False),
        ("/throttled", 429, "", 120.0, False),
        ("/unavailable", 503, "", 600.0, False),
        ("/abort", 400, "", None, True),
        ("/redirect", 302, "", None, False),
    ],
)
async def test_statuses_become_outcomes(
    receiver: Receiver,
    path: str,
    status: int,
    excerpt: str,
    retry_after: float | None,
    abort: bool,
) -> None:
    clock = lambda: datetime(2026, 1, 1, 12, 0, tzinfo=UTC)  # noqa: E731
    async with Sender(allowed_networks=LOOPBACK, clock=clock) as sender:
        outcome = await sender.send(OutboundRequest(url=receiver.url(path), body=BODY))
    assert (outcome.status, outcome.error) == (status, None)
    assert outcome.response_excerpt == excerpt
    assert (outcome.retry_after, outcome.abort) == (retry_after, abort)
    assert outcome.duration_ms >= 0


async def test_a_redirect_is_not_followed(receiver: Receiver, sender: Sender) -> None:
    outcome = await sender.send(OutboundRequest(url=receiver.url("/redirect"), body=BODY))
    assert outcome.status == 302
    assert [seen.path for seen in receiver.seen] == ["/redirect"]


async def test_the_request_carries_body_headers_and_user_agent(
    receiver: Receiver, sender: Sender
) -> None:
    headers = {
        "Content-Type": "application/fhir+json",
        "webhook-id": "evt_1",
        "X-Partner-Token": "abc",
    }
    request = OutboundRequest(url=receiver.url("/echo?x=1"), body=BODY, headers=headers)
    assert (await sender.send(request)).status == 200
    [seen] = receiver.seen
    assert seen.body == BODY
    assert {name: seen.headers[name] for name in headers} == headers
    assert seen.headers["User-Agent"] == f"Tidings/{app.__version__}"
    assert "Authorization" not in seen.headers


@pytest.mark.parametrize(
    ("url", "basic_auth", "expected"),
    [
        ("http://127.0.0.1:{port}/echo", ("bot", "s3cr:et"), "bot:s3cr:et"),
        ("http://bot:pw@127.0.0.1:{port}/echo", None, "bot:pw"),
        ("http://ignored:x@127.0.0.1:{port}/echo", ("bot", "pw"), "bot:pw"),
    ],
)
async def test_basic_auth_reaches_the_receiver(
    receiver: Receiver, sender: Sender, url: str, basic_auth: tuple[str, str] | None, expected: str
) -> None:
    request = OutboundRequest(url.format(port=receiver.port), BODY, basic_auth=basic_auth)
    assert (await sender.send(request)).status == 200
    [seen] = receiver.seen
    assert seen.headers["Authorization"] == "Basic " + base64.b64encode(expected.encode()).decode()


async def test_connections_are_reused(receiver: Receiver, sender: Sender) -> None:
    for _ in range(3):
        assert (await sender.send(OutboundRequest(receiver.url("/ok"), BODY))).status == 200
    assert len({seen.peer for seen in receiver.seen}) == 1


@pytest.mark.parametrize("path", ["/hang", "/slow-body"])
async def test_the_timeout_covers_the_whole_exchange(
    receiver: Receiver, sender: Sender, path: str
) -> None:
    outcome = await sender.send(OutboundRequest(receiver.url(path), BODY, timeout=0.3))
    assert (outcome.status, outcome.error) == (None, AttemptError.TIMEOUT)
    assert 250 <= outcome.duration_ms < 2000


async def test_a_huge_body_is_cut_at_4_kib_without_reading_it_all(
    receiver: Receiver, sender: Sender
) -> None:
    outcome = await sender.send(OutboundRequest(receiver.url("/huge"), BODY))
    assert outcome.status == 200
    assert 4090 < len(outcome.response_excerpt.encode()) <= 4096
    assert set(outcome.response_excerpt) == {"€"}
    assert receiver.huge_bytes_written < HUGE_BYTES
    assert (await sender.send(OutboundRequest(receiver.url("/ok"), BODY))).status == 200


async def test_a_body_sent_in_pieces_is_read_to_its_end(receiver: Receiver, sender: Sender) -> None:
    outcome = await sender.send(OutboundRequest(receiver.url("/in-pieces"), BODY))
    assert (outcome.status, outcome.response_excerpt) == (200, "accepted, queued as 42")


# SSRF: the address connected to is the address checked.


def resolving_to(*found: str) -> Callable[[str, int], Awaitable[Sequence[IPAddress]]]:
    async def resolve(host: str, port: int) -> Sequence[IPAddress]:
        return [ip_address(address) for address in found]

    return resolve


@pytest.mark.parametrize(
    ("host", "allowed", "status", "error"),
    [
        ("127.0.0.1", (), None, AttemptError.REFUSED_ADDRESS),
        ("localhost", (), None, AttemptError.REFUSED_ADDRESS),
        ("[::ffff:127.0.0.1]", (), None, AttemptError.REFUSED_ADDRESS),
        ("2130706433", LOOPBACK, None, AttemptError.REFUSED_ADDRESS),  # 127.0.0.1 as a number
        ("127.0.0.1", LOOPBACK, 200, None),
        ("localhost", LOOPBACK, 200, None),
    ],
)
async def test_loopback_needs_an_allowed_network(
    receiver: Receiver,
    host: str,
    allowed: tuple[IPNetwork, ...],
    status: int | None,
    error: AttemptError | None,
) -> None:
    async with Sender(allowed_networks=allowed) as sender:
        outcome = await sender.send(OutboundRequest(receiver.url("/ok", host), BODY))
    assert (outcome.status, outcome.error) == (status, error)
    assert len(receiver.seen) == (1 if status else 0)


async def test_a_public_name_resolving_to_metadata_is_refused_at_connect(
    receiver: Receiver,
) -> None:
    resolve = resolving_to("169.254.169.254")
    async with Sender(allowed_networks=LOOPBACK, resolver=resolve) as sender:
        outcome = await sender.send(OutboundRequest("http://hooks.example.com/x", BODY))
    assert outcome.error is AttemptError.REFUSED_ADDRESS


async def test_only_permitted_addresses_of_a_name_are_dialled(receiver: Receiver) -> None:
    resolve = resolving_to("10.0.0.1", "127.0.0.1")
    async with Sender(allowed_networks=LOOPBACK, resolver=resolve) as sender:
        outcome = await sender.send(OutboundRequest(receiver.url("/ok", "partner.example"), BODY))
    assert outcome.status == 200
    [seen] = receiver.seen
    assert seen.headers["Host"] == f"partner.example:{receiver.port}"


async def test_a_rebinding_name_is_checked_on_every_connection(receiver: Receiver) -> None:
    answers = iter(["127.0.0.1", "169.254.169.254"])

    async def rebinding(host: str, port: int) -> Sequence[IPAddress]:
        return [ip_address(next(answers))]

    async with Sender(allowed_networks=LOOPBACK, resolver=rebinding) as sender:
        first = await sender.send(OutboundRequest(receiver.url("/ok", "rebind.example"), BODY))
        await sender.aclose()  # drop the pooled connection and the DNS cache
        second = await sender.send(OutboundRequest(receiver.url("/ok", "rebind.example"), BODY))
    assert (first.status, second.error) == (200, AttemptError.REFUSED_ADDRESS)


# Transport failures become error kinds.


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_a_refused_connection_is_a_connect_error(sender: Sender) -> None:
    outcome = await sender.send(OutboundRequest(f"http://127.0.0.1:{unused_port()}/", BODY))
    assert outcome.error is AttemptError.CONNECT


async def test_a_name_that_does_not_resolve_is_a_dns_error() -> None:
    async def nowhere(host: str, port: int) -> Sequence[IPAddress]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    async with Sender(resolver=nowhere) as sender:
        outcome = await sender.send(OutboundRequest("http://nowhere.example/", BODY))
    assert outcome.error is AttemptError.DNS


@pytest.mark.parametrize("url", ["ftp://example.com/x", "http://", "not a url", "http://[::1/"])
async def test_unusable_urls_are_invalid_url_errors(sender: Sender, url: str) -> None:
    outcome = await sender.send(OutboundRequest(url, BODY))
    assert outcome.error is AttemptError.INVALID_URL


async def raw_server(answer: Callable[[asyncio.StreamWriter], None]) -> asyncio.Server:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        answer(writer)
        writer.close()
        try:
            await writer.wait_closed()
        except ConnectionError:
            pass

    return await asyncio.start_server(serve, "127.0.0.1", 0)


@asynccontextmanager
async def raw_port(answer: Callable[[asyncio.StreamWriter], None]) -> AsyncIterator[int]:
    """The port of a `raw_server` answering with `answer`, closed on leaving."""
    server = await raw_server(answer)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def answer_of(
    sender: Sender, answer: Callable[[asyncio.StreamWriter], None]
) -> AttemptOutcome:
    """The outcome of one attempt to a `raw_server` answering with `answer`."""
    async with raw_port(answer) as port:
        return await sender.send(OutboundRequest(f"http://127.0.0.1:{port}/", BODY))


def reset(writer: asyncio.StreamWriter) -> None:
    writer.get_extra_info("socket").setsockopt(
        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
    )


def garbage(writer: asyncio.StreamWriter) -> None:
    writer.write(b"NOT HTTP AT ALL\r\n\r\n")


@pytest.mark.parametrize(
    ("answer", "error"),
    [(reset, AttemptError.RESET), (garbage, AttemptError.INVALID_RESPONSE)],
)
async def test_broken_peers(
    sender: Sender, answer: Callable[[asyncio.StreamWriter], None], error: AttemptError
) -> None:
    outcome = await answer_of(sender, answer)
    assert (outcome.status, outcome.error) == (None, error)


# HTTP/1.1 as the sender's own client speaks it (`app/delivery/http1.py`).


def answering(response: bytes) -> Callable[[asyncio.StreamWriter], None]:
    def answer(writer: asyncio.StreamWriter) -> None:
        writer.write(response)

    return answer


@pytest.mark.parametrize(
    ("response", "status", "excerpt", "error"),
    [
        (b"HTTP/1.1 200 OK\r\n\r\nread until the close", 200, "read until the close", None),
        (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
            201,
            "ok",
            None,
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\ncut short", None, "", AttemptError.RESET),
        (
            b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * 70_000 + b"\r\n\r\n",
            None,
            "",
            AttemptError.INVALID_RESPONSE,
        ),
        (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
            None,
            "",
            AttemptError.INVALID_RESPONSE,
        ),
    ],
    ids=["until-close", "interim-100", "cut-short", "endless-headers", "upgrade"],
)
async def test_answers_at_the_edges_of_http_1_1(
    sender: Sender, response: bytes, status: int | None, excerpt: str, error: AttemptError | None
) -> None:
    outcome = await answer_of(sender, answering(response))
    assert (outcome.status, outcome.response_excerpt, outcome.error) == (status, excerpt, error)


@dataclass
class KeepAliveServer:
    """A raw HTTP/1.1 server that answers every request on a connection with `response`
    (200 `ok` by default) and counts connections opened and closed by the client."""

    response: bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    opened: int = 0
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.opened += 1
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
                writer.write(self.response)
                if b"Connection: close" in self.response:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            self.closed.set()
        writer.close()

    async def close(self) -> None:
        for writer in self.writers:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, ssl.SSLError):
                pass


@asynccontextmanager
async def keep_alive_server(
    server: KeepAliveServer, tls: ssl.SSLContext | None = None
) -> AsyncIterator[int]:
    listening = await asyncio.start_server(server.serve, "127.0.0.1", 0, ssl=tls)
    try:
        yield listening.sockets[0].getsockname()[1]
    finally:
        listening.close()
        await server.close()
        await listening.wait_closed()


async def test_connection_close_is_honoured(sender: Sender) -> None:
    server = KeepAliveServer(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
    async with keep_alive_server(server) as port:
        for _ in range(3):
            assert (
                await sender.send(OutboundRequest(f"http://127.0.0.1:{port}/", BODY))
            ).status == 200
    assert server.opened == 3


async def test_a_connection_closed_while_idle_is_not_used_again(sender: Sender) -> None:
    answer = answering(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    async with raw_port(answer) as port:  # answers once per connection, then closes it
        for _ in range(3):
            outcome = await sender.send(OutboundRequest(f"http://127.0.0.1:{port}/", BODY))
            assert (outcome.status, outcome.error) == (200, None)
            await asyncio.sleep(0.05)  # the close reaches the client


async def test_idle_connections_close_after_the_keep_alive(
    sender: Sender, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http1, "KEEPALIVE_SECONDS", 0.1)
    server = KeepAliveServer()
    async with keep_alive_server(server) as port:
        assert (await sender.send(OutboundRequest(f"http://127.0.0.1:{port}/", BODY))).status == 200
        await asyncio.wait_for(server.closed.wait(), timeout=2)
        assert (await sender.send(OutboundRequest(f"http://127.0.0.1:{port}/", BODY))).status == 200
    assert server.opened == 2


async def test_at_most_max_connections_attempts_are_in_flight(receiver: Receiver) -> None:
    async with Sender(allowed_networks=LOOPBACK, max_connections=2) as sender:
        outcomes = await asyncio.gather(
            *(
                sender.send(OutboundRequest(receiver.url("/hang"), BODY, timeout=0.3))
                for _ in range(3)
            )
        )
    assert {outcome.error for outcome in outcomes} == {AttemptError.TIMEOUT}
    assert len(receiver.seen) == 2


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("X-Partner", "a\r\nX-Injected: 1"),
        ("Bad Name", "x"),
        ("X-Nul", "a\0b"),
        ("X-Surrogate", "\udc80"),
    ],
)
async def test_a_header_that_cannot_be_sent_sends_nothing(
    receiver: Receiver, sender: Sender, name: str, value: str
) -> None:
    request = OutboundRequest(receiver.url("/ok"), BODY, headers={name: value})
    outcome = await sender.send(request)
    assert (outcome.status, outcome.error) == (None, AttemptError.PAYLOAD)
    assert receiver.seen == []


@pytest.mark.parametrize(
    ("origin", "header"),
    [
        (Origin("http", "example.com", 80), "example.com"),
        (Origin("https", "example.com", 443), "example.com"),
        (Origin("https", "example.com", 80), "example.com:80"),
        (Origin("http", "::1", 8080), "[::1]:8080"),
    ],
)
def test_the_host_header_names_the_origin(origin: Origin, header: str) -> None:
    assert origin.host_header == header


# TLS: the certificate is checked against the URL's host name, not the address dialled.


@pytest.fixture(scope="module")
def authority() -> trustme.CA:
    return trustme.CA()


def server_tls(authority: trustme.CA, *names: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert(*names).configure_cert(context)
    return context


def trusting(authority: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    authority.configure_trust(context)
    return context


@pytest.mark.parametrize(
    ("certified", "trusted", "status", "error"),
    [
        ("partner.example", True, 200, None),
        ("partner.example", False, None, AttemptError.TLS),
        ("other.example", True, None, AttemptError.TLS),
    ],
)
async def test_https_checks_the_certificate_against_the_host_name(
    authority: trustme.CA,
    certified: str,
    trusted: bool,
    status: int | None,
    error: AttemptError | None,
) -> None:
    server = KeepAliveServer()
    tls = trusting(authority) if trusted else None
    resolve = resolving_to("127.0.0.1")
    async with (
        keep_alive_server(server, server_tls(authority, certified)) as port,
        Sender(allowed_networks=LOOPBACK, resolver=resolve, tls=tls) as sender,
    ):
        outcome = await sender.send(OutboundRequest(f"https://partner.example:{port}/", BODY))
    assert (outcome.status, outcome.error) == (status, error)


# How a response ends, and what a hostile receiver cannot make the client hold.


def cut_by_reset(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\n\r\npartial")
    reset(writer)


def unsolicited_second_response(writer: asyncio.StreamWriter) -> None:
    writer.write(
        b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n"
        b"HTTP/1.1 400 No\r\nWebhook-Delivery: abort-message\r\n\r\n"
    )


@pytest.mark.parametrize(
    ("answer", "status", "error"),
    [
        (cut_by_reset, None, AttemptError.RESET),
        (answering(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nabc"), 200, None),
        (unsolicited_second_response, 503, None),
    ],
    ids=["until-close-cut-by-reset", "until-close-non-chunked-coding", "unsolicited-response"],
)
async def test_how_a_response_ends(
    sender: Sender,
    answer: Callable[[asyncio.StreamWriter], None],
    status: int | None,
    error: AttemptError | None,
) -> None:
    outcome = await answer_of(sender, answer)
    assert (outcome.status, outcome.error, outcome.abort) == (status, error, False)


async def test_an_endless_header_line_is_cut_at_the_cap(sender: Sender) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nX-Pad: ")
        try:
            for _ in range(256):  # 16 MiB of one header value, never ended
                writer.write(b"a" * 65536)
                await writer.drain()
        except ConnectionError:
            pass
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        outcome = await sender.send(OutboundRequest(f"http://127.0.0.1:{port}/", BODY, timeout=5))
    finally:
        server.close()
        await server.wait_closed()
    assert outcome.error is AttemptError.INVALID_RESPONSE
    assert outcome.duration_ms < 1000


async def test_a_timed_out_request_closes_its_socket_though_unsent(sender: Sender) -> None:
    def open_files() -> int:
        return len(os.listdir("/proc/self/fd"))

    accepted: list[asyncio.StreamWriter] = []

    async def never_reads(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(never_reads, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    before = open_files()
    try:
        request = OutboundRequest(f"http://127.0.0.1:{port}/", b"x" * 32_000_000, timeout=0.2)
        assert (await sender.send(request)).error is AttemptError.TIMEOUT
        await asyncio.sleep(0.1)
        assert open_files() - before == len(accepted) == 1  # the server's end only
    finally:
        for writer in accepted:
            writer.transport.abort()
        server.close()
        await server.wait_closed()


async def test_a_pooled_connection_the_peer_just_closed_is_not_used(sender: Sender) -> None:
    answer = answering(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    async with raw_port(answer) as port:  # closes after one answer, without saying so
        for _ in range(4):  # back to back: the FIN may not have been processed yet
            outcome = await sender.send(OutboundRequest(f"http://127.0.0.1:{port}/", BODY))
            assert (outcome.status, outcome.error) == (200, None)


async def test_idle_connections_are_capped_in_all() -> None:
    servers = [KeepAliveServer() for _ in range(3)]
    async with (
        keep_alive_server(servers[0]) as first,
        keep_alive_server(servers[1]) as second,
        keep_alive_server(servers[2]) as third,
        Sender(allowed_networks=LOOPBACK, max_connections=2) as sender,
    ):
        for port in (first, second, third):  # three hosts, one after the other
            assert (
                await sender.send(OutboundRequest(f"http://127.0.0.1:{port}/", BODY))
            ).status == 200
        await asyncio.wait_for(servers[2].closed.wait(), timeout=2)  # the third is not kept
        assert not servers[0].closed.is_set() and not servers[1].closed.is_set()
        assert (
            await sender.send(OutboundRequest(f"http://127.0.0.1:{first}/", BODY))
        ).status == 200
    assert [server.opened for server in servers] == [1, 1, 1]

"""`SingleTaskConnection`: a request whose body's length is known, in its own task; every
edge of the ASGI conversation (a body in pieces, no body, a client gone before or after it, a
body too slow or too long, a response nobody reads), driven message by message as Hypercorn
drives it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from quart import Quart, request

from app.api.connection import SingleTaskConnection
from tests.integration.conftest import Api

Message = dict[str, Any]
EVENT = {
    "type": "patient_flow.completed",
    "data": {
        "id": "flow_1",
        "patient": "Patient/123",
        "status": "completed",
        "completed_at": "2026-01-01T11:00:00Z",
    },
}


def scope(
    path: str, headers: dict[str, str], method: str = "POST", http_version: str = "1.1"
) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": http_version,
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(name.lower().encode(), value.encode()) for name, value in headers.items()],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
        "extensions": {},
    }


def receiving(*messages: Message) -> Callable[[], Awaitable[Message]]:
    """ASGI `receive`: these messages, then nothing more, ever (a client that stalls)."""
    queue: list[Message] = list(messages)

    async def receive() -> Message:
        if queue:
            return queue.pop(0)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    return receive


def chunk(body: bytes, more: bool = False) -> Message:
    return {"type": "http.request", "body": body, "more_body": more}


class Sent(list[Message]):
    """ASGI `send`: what the app answered."""

    async def __call__(self, message: Message) -> None:
        self.append(message)

    @property
    def status(self) -> int | None:
        starts = [message["status"] for message in self if message["type"] == "http.response.start"]
        return starts[0] if starts else None

    @property
    def body(self) -> bytes:
        return b"".join(message.get("body", b"") for message in self if "body" in message)


def echo_app() -> tuple[Quart, list[asyncio.Task[Any] | None]]:
    """A Quart app on `SingleTaskConnection` whose `/echo` answers its body and notes the task
    it ran in."""
    app = Quart("connection-test")
    app.asgi_http_class = SingleTaskConnection
    app.config["MAX_CONTENT_LENGTH"] = 100
    handled_in: list[asyncio.Task[Any] | None] = []

    @app.route("/echo", methods=["GET", "POST"])
    async def echo() -> str | bytes:
        handled_in.append(asyncio.current_task())
        return await request.get_data()

    return app, handled_in


async def test_a_body_in_pieces_is_handled_in_the_requests_own_task() -> None:
    app, handled_in = echo_app()
    sent = Sent()
    receive = receiving(chunk(b"hello, ", more=True), chunk(b"world"))
    await app(scope("/echo", {"Content-Length": "12"}), receive, sent)  # type: ignore[arg-type]
    assert (sent.status, sent.body) == (200, b"hello, world")
    assert handled_in == [asyncio.current_task()]


async def test_a_body_without_a_length_goes_quarts_way() -> None:
    app, handled_in = echo_app()
    sent = Sent()
    receive = receiving(chunk(b"chunked ", more=True), chunk(b"body"))
    headers = {"Transfer-Encoding": "chunked"}
    await app(scope("/echo", headers), receive, sent)  # type: ignore[arg-type]
    assert (sent.status, sent.body) == (200, b"chunked body")
    assert handled_in != [asyncio.current_task()]  # Quart's handler task


async def test_a_request_without_a_body_on_http_1_is_handled_in_the_requests_own_task() -> None:
    app, handled_in = echo_app()
    sent = Sent()
    await app(scope("/echo", {}, method="GET"), receiving(chunk(b"")), sent)  # type: ignore[arg-type]
    assert (sent.status, sent.body) == (200, b"")
    assert handled_in == [asyncio.current_task()]


async def test_a_body_without_a_length_on_http_2_goes_quarts_way() -> None:
    app, handled_in = echo_app()
    sent = Sent()
    receive = receiving(chunk(b"data ", more=True), chunk(b"frames"))
    await app(scope("/echo", {}, http_version="2"), receive, sent)  # type: ignore[arg-type]
    assert (sent.status, sent.body) == (200, b"data frames")
    assert handled_in != [asyncio.current_task()]


async def test_a_body_announced_too_long_is_413_quarts_way() -> None:
    app, handled_in = echo_app()
    sent = Sent()
    receive = receiving(chunk(b"x" * 101))
    await app(scope("/echo", {"Content-Length": "101"}), receive, sent)  # type: ignore[arg-type]
    assert sent.status == 413
    assert handled_in != [asyncio.current_task()]


async def test_a_client_gone_before_its_body_arrived_runs_nothing_and_hears_nothing() -> None:
    app, handled_in = echo_app()
    sent = Sent()
    receive = receiving(chunk(b"hel", more=True), {"type": "http.disconnect"})
    await app(scope("/echo", {"Content-Length": "5"}), receive, sent)  # type: ignore[arg-type]
    assert (sent, handled_in) == ([], [])


async def test_a_response_nobody_reads_ends_at_the_response_timeout() -> None:
    app, _ = echo_app()
    app.config["RESPONSE_TIMEOUT"] = 0.05
    started: list[Message] = []

    async def stalled_send(message: Message) -> None:
        started.append(message)
        await asyncio.Event().wait()

    receive = receiving(chunk(b"hello"))
    call = app(scope("/echo", {"Content-Length": "5"}), receive, stalled_send)  # type: ignore[arg-type]
    await asyncio.wait_for(call, timeout=2)
    assert [message["type"] for message in started] == ["http.response.start"]


async def publish_over_asgi(api: Api, key: str, receive: Callable[[], Awaitable[Message]]) -> Sent:
    body = json.dumps(EVENT).encode()
    headers = {
        "Authorization": f"Bearer {key}",
        "Content-Type": "application/json",
        "Content-Length": str(len(body)),
    }
    sent = Sent()
    await api.app(scope("/v1/events", headers), receive, sent)  # type: ignore[arg-type]
    return sent


async def published_types(api: Api) -> list[str]:
    partner = await api.key("acme")
    page = await (await api.call("GET", "/v1/events", partner)).get_json()
    return [event["type"] for event in page["data"]]


async def test_an_event_whose_client_left_after_sending_it_is_stored(api: Api) -> None:
    source = await api.key("acme", "source")
    body = json.dumps(EVENT).encode()
    sent = await publish_over_asgi(api, source, receiving(chunk(body), {"type": "http.disconnect"}))
    assert sent.status == 202
    assert await published_types(api) == ["patient_flow.completed"]


async def test_an_event_body_slower_than_the_body_timeout_is_408_and_stores_nothing(
    api: Api,
) -> None:
    api.app.config["BODY_TIMEOUT"] = 0.05
    source = await api.key("acme", "source")
    body = json.dumps(EVENT).encode()
    sent = await publish_over_asgi(api, source, receiving(chunk(body[:10], more=True)))
    assert sent.status == 408
    assert json.loads(sent.body)["status"] == 408
    assert await published_types(api) == []

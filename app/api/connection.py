"""One HTTP request through Quart in one task.

Quart's `ASGIHTTPConnection` runs every request as two tasks, one that receives the body and
watches for the client going away and one that runs the handler; it waits for the first of
them, cancels the other, and sends the response under `asyncio.wait_for`, which on Python 3.11
is one task more. `SingleTaskConnection` does the same work in the request's own task when the
length of the request's body is known before it arrives and Quart accepts it: a
`Content-Length` of at most `MAX_CONTENT_LENGTH` (what API clients send with a body), or, on
HTTP/1.x, neither `Content-Length` nor `Transfer-Encoding`, which means no body (RFC 9112,
section 6.3: a GET). It receives the body (under `BODY_TIMEOUT`), runs the handler, and sends
the response under `RESPONSE_TIMEOUT` with `asyncio.timeout`, which schedules a timer and no
task. Every other request (a chunked body, one announced too long, one on HTTP/2 without a
length) goes Quart's way, in its two tasks, and is answered by the same `handle_request`.

What differs: once the whole body has arrived, a client that goes away no longer cancels the
handler half-way; it runs to its end and its response goes nowhere, as if the client had gone
after it. An accepted event is then stored (or refused) whole, and the client's retry with its
idempotency key finds it.
"""

from __future__ import annotations

import asyncio
from typing import cast

from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable
from quart.asgi import ASGIHTTPConnection
from quart.debug import traceback_response
from quart.wrappers import Request, Response

HTTP_1 = ("1.0", "1.1")


class SingleTaskConnection(ASGIHTTPConnection):
    """Quart's HTTP connection, in one task for a request whose body's length is known."""

    async def __call__(self, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        request = self._create_request_from_scope(send)
        if not self._body_of_acceptable_known_length(request):
            await super().__call__(receive, send)
            return
        if not await self._received_body(request, receive):
            return  # the client went away before the body arrived: no one to answer
        await self.handle_request(request, send)

    async def handle_request(self, request: Request, send: ASGISendCallable) -> None:
        """Quart's, with the response sent under `asyncio.timeout` instead of `wait_for`."""
        try:
            response = await self.app.handle_request(request)
        except Exception as error:  # propagated: in debug and testing only, as Quart
            if not (self.app.debug or self.app.testing):
                raise
            response = await traceback_response(error)
        timeout = self.app.config["RESPONSE_TIMEOUT"]
        if isinstance(response, Response) and response.timeout is not Ellipsis:
            timeout = cast(float | None, response.timeout)
        try:
            async with asyncio.timeout(timeout):
                await self._send_response(send, response)
        except TimeoutError:
            pass  # as Quart: the client reads too slowly; the server closes the connection

    def _body_of_acceptable_known_length(self, request: Request) -> bool:
        length = request.content_length
        if length is None:  # on HTTP/1.x, no body; on HTTP/2 and 3, one of unknown length
            return request.http_version in HTTP_1 and "Transfer-Encoding" not in request.headers
        limit = self.app.config["MAX_CONTENT_LENGTH"]
        return limit is None or length <= limit

    async def _received_body(self, request: Request, receive: ASGIReceiveCallable) -> bool:
        """Receive the whole body into `request.body`; False when the client went away first.
        A body that takes longer than `BODY_TIMEOUT` is left incomplete and the handler gets
        no more time to read it (a 408, as Quart answers)."""
        try:
            async with asyncio.timeout(self.app.config["BODY_TIMEOUT"]):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return False
                    if message["type"] == "http.request":
                        request.body.append(message.get("body", b""))
                        if not message.get("more_body", False):
                            request.body.set_complete()
                            return True
        except TimeoutError:
            request.body_timeout = 0
            return True

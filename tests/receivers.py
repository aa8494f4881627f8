"""Real HTTP receivers on 127.0.0.1 whose answers a test scripts, path by path."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

from aiohttp import web

T = TypeVar("T")


@dataclass
class Received:
    """One request as the receiver saw it."""

    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Answer:
    """What to answer: a status with headers, or hang until released, or reset the connection."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False
    reset: bool = False


@dataclass
class ScriptedReceiver:
    """Answers each path from its script (the last answer repeats), recording every request."""

    port: int = 0
    received: list[Received] = field(default_factory=list)
    scripts: dict[str, list[Answer]] = field(default_factory=dict)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def script(self, path: str, *answers: Answer | int) -> str:
        self.scripts[path] = [a if isinstance(a, Answer) else Answer(status=a) for a in answers]
        return self.url(path)

    def at(self, path: str) -> list[Received]:
        return [item for item in self.received if item.path == path]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.received.append(Received(request.path, dict(request.headers), await request.read()))
        script = self.scripts.get(request.path, [Answer()])
        answer = script.pop(0) if len(script) > 1 else script[0]
        if answer.hang:
            await self.release.wait()
        if answer.reset and request.transport is not None:
            request.transport.abort()
            return web.Response(status=500)
        return web.Response(status=answer.status, headers=answer.headers, text="answer")


@asynccontextmanager
async def running_receiver() -> AsyncIterator[ScriptedReceiver]:
    """Start a receiver on an ephemeral loopback port; stop it afterwards."""
    receiver = ScriptedReceiver()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None
    receiver.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield receiver
    finally:
        receiver.release.set()
        await runner.cleanup()


@contextmanager
def in_thread(serving: Callable[[], AbstractAsyncContextManager[T]]) -> Iterator[T]:
    """Run an async server context on its own loop in a background thread, for tests that run
    processes (which need the server to answer while the test blocks)."""
    loop = asyncio.new_event_loop()
    ready: Future[T] = Future()
    stop = threading.Event()

    async def serve() -> None:
        async with serving() as server:
            ready.set_result(server)
            while not stop.is_set():
                await asyncio.sleep(0.05)

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    try:
        yield ready.result(timeout=10)
    finally:
        stop.set()
        thread.join(timeout=10)
        loop.close()


@contextmanager
def receiver_in_thread() -> Iterator[ScriptedReceiver]:
    """A receiver in a background thread."""
    with in_thread(running_receiver) as receiver:
        yield receiver

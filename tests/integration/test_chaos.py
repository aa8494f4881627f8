"""Chaos receivers: whatever a receiver does, every delivery ends `succeeded` or `failed` with its
whole attempt log, and nothing stays leased.

A real receiver on loopback answers each request with a behaviour drawn from a seeded random
generator: 200, 500, a hang past the timeout, a connection reset, a body trickled slowly (within
or past the timeout), 429 with `Retry-After`, a redirect. The worker runs with a compressed retry
schedule, driven by hand with the fake clock.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest
import sqlalchemy as sa
from aiohttp import web

from app.delivery.worker import Worker
from app.runtime import build_runtime
from app.store.db import is_unavailable, make_engine, make_session_factory, transaction
from tests.integration.conftest import Api

SCHEDULE = (1, 2, 3)
TIMEOUT = 0.3
MAX_ATTEMPTS = len(SCHEDULE) + 1
ENDPOINTS, EVENTS = 6, 6
Handler = Callable[["ChaosReceiver", web.Request], Awaitable[web.StreamResponse]]


@dataclass
class ChaosReceiver:
    """Answers every request with a behaviour drawn from `rng`, and counts what it did."""

    rng: random.Random
    port: int = 0
    done: Counter[str] = field(default_factory=Counter)
    paths: Counter[str] = field(default_factory=Counter)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self.paths[request.path] += 1
        name = self.rng.choice(sorted(self.behaviours))
        self.done[name] += 1
        return await self.behaviours[name](self, request)

    async def ok(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="thanks")

    async def error(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=500, text="boom")

    async def hang(self, request: web.Request) -> web.StreamResponse:
        await self._wait(TIMEOUT * 10)
        return web.Response(text="too late")

    async def reset(self, request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.abort()
        return web.Response(status=500)

    async def slow_body(self, request: web.Request) -> web.StreamResponse:
        return await self._trickle(request, chunks=3, pause=TIMEOUT / 10)

    async def endless_body(self, request: web.Request) -> web.StreamResponse:
        return await self._trickle(request, chunks=20, pause=TIMEOUT / 4)

    async def busy(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=429, headers={"Retry-After": "2"}, text="slow down")

    async def redirect(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=307, headers={"Location": self.url("/elsewhere")})

    async def _trickle(self, request: web.Request, chunks: int, pause: float) -> web.StreamResponse:
        response = web.StreamResponse(status=200)
        await response.prepare(request)
        try:
            for _ in range(chunks):
                await response.write(b"x" * 10)
                await self._wait(pause)
            await response.write_eof()
        except ConnectionError:
            pass  # the sender gave up first
        return response

    async def _wait(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self.release.wait(), seconds)
        except TimeoutError:
            pass

    behaviours: ClassVar[dict[str, Handler]] = {
        "ok": ok,
        "error": error,
        "hang": hang,
        "reset": reset,
        "slow_body": slow_body,
        "endless_body": endless_body,
        "busy": busy,
        "redirect": redirect,
    }


@pytest.fixture
async def chaos() -> AsyncIterator[ChaosReceiver]:
    receiver = ChaosReceiver(rng=random.Random(20240611))
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    receiver.port = runner.addresses[0][1]
    try:
        yield receiver
    finally:
        receiver.release.set()
        await runner.cleanup()


@pytest.fixture
async def worker(api: Api) -> AsyncIterator[Worker]:
    settings = dataclasses.replace(api.settings, retry_schedule=SCHEDULE, delivery_timeout=TIMEOUT)
    services = api.app.extensions["tidings"]
    runtime = build_runtime(
        settings, sessions=services.sessions, catalog=services.catalog, clock=api.clock
    )
    runtime.worker._rng = random.Random(3)
    yield runtime.worker
    await runtime.sender.aclose()


async def rows(api: Api, statement: str) -> list[Any]:
    async with transaction(api.app.extensions["tidings"].sessions) as session:
        return list((await session.exec(sa.text(statement))).all())


async def publish_to_chaos(api: Api, chaos: ChaosReceiver) -> None:
    partner, source = await api.key("acme"), await api.key("acme", "source")
    for index in range(ENDPOINTS):
        body = {"url": chaos.url(f"/hook/{index}"), "event_types": ["records.*"]}
        response = await api.call("POST", "/v1/endpoints", partner, json=body)
        assert response.status_code == 201
    for index in range(EVENTS):
        data = {"connection_id": f"c{index}", "patient": "Patient/p1"}
        event = {"type": "records.sync.completed", "data": data}
        response = await api.call("POST", "/v1/events", source, json=event)
        assert response.status_code == 202


async def test_every_delivery_ends_with_its_attempt_log(
    api: Api, chaos: ChaosReceiver, worker: Worker
) -> None:
    await publish_to_chaos(api, chaos)
    for _ in range(3 * MAX_ATTEMPTS):
        await worker.run_once()
        api.clock.advance(2 * max(SCHEDULE) + 1)  # past jitter and a honoured Retry-After
    deliveries = await rows(
        api, "SELECT id, status, attempt_count, lease_expires_at, next_attempt_at FROM delivery"
    )
    assert len(deliveries) == ENDPOINTS * EVENTS
    assert {status for _, status, *_ in deliveries} == {"succeeded", "failed"}, "none left over"
    assert all(lease is None for *_, lease, _ in deliveries), "nothing stays leased"
    attempts = await rows(
        api,
        "SELECT delivery_id, status_code, error_kind FROM attempt "
        "ORDER BY delivery_id, attempted_at, id",
    )
    log: dict[str, list[tuple[int | None, str | None]]] = {}
    for delivery_id, status_code, error_kind in attempts:
        log.setdefault(delivery_id, []).append((status_code, error_kind))
    for delivery_id, status, attempt_count, _, next_attempt_at in deliveries:
        explain(status, attempt_count, next_attempt_at, log.get(delivery_id, []))
    assert chaos.paths["/elsewhere"] == 0, "redirects are not followed"
    assert set(chaos.done) == set(ChaosReceiver.behaviours), (
        f"not every behaviour ran: {chaos.done}"
    )
    kinds = {error for attempts in log.values() for _, error in attempts}
    assert {"timeout", "reset"} <= kinds, kinds


def explain(
    status: str,
    attempt_count: int,
    next_attempt_at: Any,
    attempts: list[tuple[int | None, str | None]],
) -> None:
    """The attempt log accounts for the delivery's final state."""
    assert attempt_count == len(attempts) >= 1
    assert next_attempt_at is None, "a finished delivery is not scheduled"
    *earlier, (last_code, _) = attempts
    assert all(not succeeded(code) for code, _ in earlier), "nothing is retried after a success"
    for code, error in attempts:
        assert (code is None) != (error is None), "an attempt has a status code or an error"
    if status == "succeeded":
        assert succeeded(last_code)
    else:
        assert not succeeded(last_code) and attempt_count == MAX_ATTEMPTS


def succeeded(code: int | None) -> bool:
    return code is not None and 200 <= code < 300


# --- database faults ---------------------------------------------------------------------------


class ServerShuttingDown(Exception):
    """What asyncpg raises while PostgreSQL shuts down or starts up (SQLSTATE 57P03)."""

    sqlstate = "57P03"


@pytest.mark.parametrize(
    ("sqlstate", "unavailable"), [("57P03", True), ("08006", True), ("23505", False)]
)
def test_a_server_shutting_down_counts_as_unavailable(sqlstate: str, unavailable: bool) -> None:
    orig = ServerShuttingDown()
    orig.sqlstate = sqlstate
    assert is_unavailable(sa.exc.DBAPIError("SELECT 1", None, orig)) is unavailable


async def test_the_worker_outlives_a_database_outage(api: Api, chaos: ChaosReceiver) -> None:
    settings = dataclasses.replace(api.settings, poll_seconds=0.05)
    services = api.app.extensions["tidings"]
    runtime = build_runtime(
        settings, sessions=services.sessions, catalog=services.catalog, clock=api.clock
    )
    down = make_engine("postgresql+asyncpg://postgres@127.0.0.1:9/tidings")
    runtime.worker._sessions = make_session_factory(down)  # the database is unreachable
    task = asyncio.create_task(runtime.worker.run())
    await publish_to_chaos(api, chaos)
    await asyncio.sleep(0.3)  # several failed claims
    assert not task.done(), "the worker is still running"
    runtime.worker._sessions = services.sessions  # the database is back
    for _ in range(100):
        if chaos.paths:
            break
        await asyncio.sleep(0.05)
    runtime.worker.stop()
    await task
    await runtime.sender.aclose()
    await down.dispose()
    assert chaos.paths, "deliveries resumed once the database was back"

"""Per-key rate limits, and 503 (never 2xx) while the database is unreachable."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import pytest
from quart.typing import TestClientProtocol as Client

from app.api.rate_limit import KeyRateLimiter
from app.config import Settings
from app.factory import create_app
from tests.conftest import SECRET_KEY, FakeClock
from tests.integration.conftest import Api


async def test_a_key_over_its_rate_limit_gets_429_with_retry_after(api: Api) -> None:
    api.app.extensions["tidings"].rate_limiter = KeyRateLimiter(3)
    busy, calm = await api.key("acme"), await api.key("acme")
    statuses = [(await api.call("GET", "/v1/endpoints", busy)).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    refused = await api.call("GET", "/v1/endpoints", busy)
    assert refused.headers["Retry-After"] == "1"
    assert refused.content_type == "application/problem+json"
    assert (await api.call("GET", "/v1/endpoints", calm)).status_code == 200, "limits are per key"
    api.clock.advance(1)
    assert (await api.call("GET", "/v1/endpoints", busy)).status_code == 200


@pytest.fixture
async def unreachable() -> AsyncIterator[Client]:
    settings = dataclasses.replace(
        Settings(secret_key=SECRET_KEY),
        database_url="postgresql+asyncpg://postgres@127.0.0.1:9/tidings",
    )
    app = create_app(settings, clock=FakeClock())
    async with app.test_app() as test_app:
        yield test_app.test_client()


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/endpoints"),
        ("POST", "/v1/events"),
        ("POST", "/v1/ingest/fhir"),
        ("GET", "/readyz"),
    ],
)
async def test_a_database_outage_answers_503(unreachable: Client, method: str, path: str) -> None:
    response = await unreachable.open(
        path,
        method=method,
        json={"type": "ping", "data": {}},
        headers={"Authorization": "Bearer tdk_anything"},
    )
    assert response.status_code == 503
    if path != "/readyz":
        assert response.headers["Retry-After"] == "5"
        assert "nothing was stored" in (await response.get_json())["detail"]


async def test_liveness_does_not_need_the_database(unreachable: Client) -> None:
    assert (await unreachable.get("/healthz")).status_code == 200

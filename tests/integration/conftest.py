"""The app under test, with a fake clock, a fake DNS and helpers to make keys."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from quart import Quart
from quart.typing import TestClientProtocol

from app.config import Settings
from app.domain.models import Role
from app.factory import create_app
from app.store.admin import create_api_key
from tests.conftest import FakeClock

# Names the fake DNS knows; anything else does not resolve.
FAKE_DNS = {
    "hooks.partner.test": "93.184.216.34",
    "receiver.local.test": "127.0.0.1",
    "internal.partner.test": "10.1.2.3",
    "metadata.partner.test": "169.254.169.254",
    "v6.partner.test": "2606:2800:220:1::1",
    "mapped.partner.test": "::ffff:127.0.0.1",
}


async def fake_resolve(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    if host not in FAKE_DNS:
        raise OSError(f"{host} does not resolve")
    return [ipaddress.ip_address(FAKE_DNS[host])]


@dataclass
class Api:
    """A test client with a key per (organization, role)."""

    app: Quart
    client: TestClientProtocol
    settings: Settings
    clock: FakeClock

    async def key(self, org: str, role: str = "partner", account: str | None = None) -> str:
        key, _ = await create_api_key(self.settings.database_url, org, Role(role), account)
        return key

    async def call(
        self, method: str, path: str, key: str | None, json: Any = None, **kwargs: Any
    ) -> Any:
        """The request as HTTP clients send it: a body with its `Content-Length` (the path
        that `SingleTaskConnection` takes; Quart's test client announces no length)."""
        headers = dict(kwargs.pop("headers", {}))
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        if json is not None:
            kwargs["data"] = self.app.json.dumps(json)
            headers.setdefault("Content-Type", "application/json")
        body = kwargs.get("data")
        if isinstance(body, str | bytes):
            raw = body.encode() if isinstance(body, str) else body
            headers.setdefault("Content-Length", str(len(raw)))
        return await self.client.open(path, method=method, headers=headers, **kwargs)


@pytest.fixture
async def api(settings: Settings, clock: FakeClock) -> AsyncIterator[Api]:
    app = create_app(settings, clock=clock, resolve=fake_resolve)
    async with app.test_app() as test_app:
        yield Api(app=app, client=test_app.test_client(), settings=settings, clock=clock)


# The worker harness's fixture, for every integration test (it needs `Api` from above).
from tests.integration.delivery_harness import delivering  # noqa: E402, F401

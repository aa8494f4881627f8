"""A worker driven by hand with the fake clock, against real receivers on loopback."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa

from app.delivery.worker import Worker
from app.runtime import build_runtime
from app.store.db import transaction
from tests.integration.conftest import Api
from tests.receivers import ScriptedReceiver, running_receiver


@dataclass
class Delivering:
    """The API, a receiver, and a worker that runs only when told to."""

    api: Api
    receiver: ScriptedReceiver
    worker: Worker
    partner: str
    source: str

    async def endpoint(self, path: str, *answers: Any, **fields: Any) -> dict[str, Any]:
        url = self.receiver.script(path, *answers) if answers else self.receiver.url(path)
        response = await self.api.call(
            "POST", "/v1/endpoints", self.partner, json={"url": url, **fields}
        )
        assert response.status_code == 201, await response.get_data(as_text=True)
        body: dict[str, Any] = await response.get_json()
        return body

    async def publish(
        self,
        event_type: str = "records.sync.completed",
        data: dict[str, Any] | None = None,
        **fields: Any,
    ) -> str:
        body = {"type": event_type, "data": data if data is not None else SYNC_DATA, **fields}
        response = await self.api.call("POST", "/v1/events", self.source, json=body)
        assert response.status_code in (200, 202), await response.get_data(as_text=True)
        event_id: str = (await response.get_json())["id"]
        return event_id

    async def deliveries(self, endpoint_id: str) -> list[dict[str, Any]]:
        response = await self.api.call(
            "GET", f"/v1/deliveries?endpoint_id={endpoint_id}", self.partner
        )
        body: dict[str, Any] = await response.get_json()
        return list(body["data"])

    async def sql(self, statement: str, **params: Any) -> list[Any]:
        async with transaction(self.api.app.extensions["tidings"].sessions) as session:
            return list((await session.exec(sa.text(statement), params=params)).all())

    async def drain(self, rounds: int = 10) -> int:
        total = 0
        for _ in range(rounds):
            sent = await self.worker.run_once()
            total += sent
            if not sent:
                break
        return total


SYNC_DATA: dict[str, Any] = {
    "connection_id": "conn_1",
    "patient": "Patient/p1",
    "resources_added": 3,
}


@pytest.fixture
async def delivering(api: Api) -> AsyncIterator[Delivering]:
    services = api.app.extensions["tidings"]
    runtime = build_runtime(
        api.settings, sessions=services.sessions, catalog=services.catalog, clock=api.clock
    )
    runtime.worker._rng = random.Random(7)
    async with running_receiver() as receiver:
        yield Delivering(
            api=api,
            receiver=receiver,
            worker=runtime.worker,
            partner=await api.key("acme"),
            source=await api.key("acme", "source"),
        )
    await runtime.sender.aclose()

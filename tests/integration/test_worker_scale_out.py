"""Several workers on one PostgreSQL share the queue without sending anything twice."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest

from app.runtime import build_runtime
from tests.integration.delivery_harness import Delivering

pytestmark = pytest.mark.postgres


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_three_workers_share_the_queue_without_double_sends(delivering: Delivering) -> None:
    await delivering.endpoint("/shared")
    await delivering.endpoint("/other", event_types=["records.*"])
    published = [await delivering.publish(idempotency_key=f"k{index}") for index in range(60)]
    services = delivering.api.app.extensions["tidings"]
    runtimes = [
        build_runtime(
            delivering.api.settings,
            sessions=services.sessions,
            catalog=services.catalog,
            clock=delivering.api.clock,
        )
        for _ in range(3)
    ]
    for index, runtime in enumerate(runtimes):
        runtime.worker._rng = random.Random(index)
        runtime.worker._settings = type(runtime.worker._settings)(batch_size=7)

    async def drain(worker: object) -> int:
        sent = 0
        while True:
            count = await worker.run_once()  # type: ignore[attr-defined]
            sent += count
            if count == 0:
                return sent

    counts = await asyncio.gather(*(drain(runtime.worker) for runtime in runtimes))
    for runtime in runtimes:
        await runtime.sender.aclose()
    assert sum(counts) == 120
    assert sum(1 for count in counts if count > 0) >= 2, f"the work was not shared: {counts}"
    for path in ("/shared", "/other"):
        seen = Counter(r.headers["webhook-id"] for r in delivering.receiver.at(path))
        assert sorted(seen) == sorted(published)
        assert set(seen.values()) == {1}

"""kill -9 during a drain: after a restart every accepted event arrives, and the duplicates are
bounded by what the killed process had in flight. (scripts/crash_drain.py is the 20,000-event,
PostgreSQL and multi-kill version.)"""

from __future__ import annotations

import signal
import sqlite3
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from tests.acceptance.conftest import Tidings, stop
from tests.acceptance.test_delivery import eventually
from tests.receivers import ScriptedReceiver, receiver_in_thread

pytestmark = pytest.mark.acceptance

EVENTS = 1000
CONCURRENCY = 16


def test_a_killed_server_loses_nothing(tidings: Tidings, tmp_path: Path) -> None:
    tidings.env.update(
        TIDINGS_WORKER_CONCURRENCY=str(CONCURRENCY),
        TIDINGS_LEASE_SECONDS="2",
        TIDINGS_POLL_SECONDS="0.2",
        TIDINGS_LOG_LEVEL="warning",
    )
    partner, source = tidings.key("acme"), tidings.key("acme", "source")
    with receiver_in_thread() as receiver:
        accepted = publish_without_delivering(tidings, partner, source, receiver)
        server, _ = tidings.start("serve")
        eventually(lambda: len(receiver.received) >= EVENTS // 3, seconds=20)
        server.send_signal(signal.SIGKILL)  # mid-drain, attempts in flight
        server.communicate(timeout=10)  # reaps it and closes its pipe
        assert 0 < len(receiver.received) < EVENTS, "the kill landed during the drain"
        server, _ = tidings.start("serve")
        try:
            eventually(lambda: queue(tmp_path) == {"succeeded": EVENTS}, seconds=30)
        finally:
            output = stop(server)
    seen = Counter(item.headers["webhook-id"] for item in receiver.received)
    assert accepted <= seen.keys(), f"lost: {len(accepted - seen.keys())}"
    duplicates = sum(seen.values()) - len(seen)
    assert duplicates <= CONCURRENCY, f"{duplicates} duplicates from one kill"
    assert "Traceback" not in output, output


def publish_without_delivering(
    tidings: Tidings, partner: str, source: str, receiver: ScriptedReceiver
) -> set[str]:
    """Register an endpoint and publish every event through `tidings api` (no worker)."""
    api, base = tidings.start("api")
    try:
        with httpx.Client(base_url=base, timeout=10) as http:
            endpoint = {"url": receiver.url("/hook"), "event_types": ["records.*"]}
            response = http.post("/v1/endpoints", json=endpoint, headers=bearer(partner))
            assert response.status_code == 201, response.text
            with ThreadPoolExecutor(max_workers=8) as pool:
                return set(pool.map(lambda index: publish(http, source, index), range(EVENTS)))
    finally:
        stop(api)


def publish(http: httpx.Client, key: str, index: int) -> str:
    data = {"connection_id": f"c{index}", "patient": "Patient/p1"}
    event = {"type": "records.sync.completed", "data": data}
    response = http.post("/v1/events", json=event, headers=bearer(key))
    assert response.status_code == 202, response.text
    event_id: str = response.json()["id"]
    return event_id


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def queue(workdir: Path) -> dict[str, int]:
    """Deliveries by status, read from the SQLite file the server uses."""
    with closing(sqlite3.connect(workdir / "tidings.db", timeout=5)) as connection:
        rows = connection.execute("SELECT status, count(*) FROM delivery GROUP BY status")
        return dict(rows.fetchall())

"""`tidings api` plus two `tidings worker` processes on one PostgreSQL: every event delivered
exactly once, and new events wake the workers at once through LISTEN/NOTIFY."""

from __future__ import annotations

import subprocess
import time
from collections import Counter

import httpx
import pytest

from tests.acceptance.conftest import TIDINGS, Tidings, stop
from tests.acceptance.test_delivery import eventually
from tests.receivers import receiver_in_thread

pytestmark = [pytest.mark.acceptance, pytest.mark.postgres]


def test_workers_share_postgres_without_double_sends(
    tidings: Tidings, empty_postgres_url: str
) -> None:
    # A long poll interval: only NOTIFY can make the first delivery fast.
    tidings.env.update(TIDINGS_DATABASE_URL=empty_postgres_url, TIDINGS_POLL_SECONDS="30")
    tidings.run("migrate")
    partner = tidings.key("acme")
    source = tidings.key("acme", "source")
    with receiver_in_thread() as receiver:
        api, base = tidings.start("api")
        workers = [_start_worker(tidings) for _ in range(2)]
        try:
            time.sleep(1.5)  # the workers are listening
            partner_http = httpx.Client(
                base_url=base, headers={"Authorization": f"Bearer {partner}"}
            )
            source_http = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {source}"})
            with partner_http, source_http:
                partner_http.post(
                    "/v1/endpoints", json={"url": receiver.url("/hook")}
                ).raise_for_status()
                started = time.monotonic()
                first = _publish(source_http, "first")
                eventually(lambda: receiver.at("/hook"), seconds=5)
                woke_in = time.monotonic() - started
                ids = [first] + [_publish(source_http, f"k{index}") for index in range(150)]
                eventually(lambda: len(receiver.at("/hook")) >= len(ids), seconds=60)
                time.sleep(0.5)
        finally:
            outputs = [stop(process) for process in (*workers, api)]
    assert woke_in < 3, f"the first delivery took {woke_in:.1f} s: no NOTIFY wake-up"
    seen = Counter(item.headers["webhook-id"] for item in receiver.at("/hook"))
    assert sorted(seen) == sorted(ids)
    assert set(seen.values()) == {1}, "an event was delivered twice"
    tracebacks = [
        output[output.index("Traceback") :] for output in outputs if "Traceback" in output
    ]
    assert not tracebacks, tracebacks[0]


def _start_worker(tidings: Tidings) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [TIDINGS, "worker"],
        cwd=tidings.workdir,
        env=tidings.env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _publish(client: httpx.Client, key: str) -> str:
    response = client.post(
        "/v1/events",
        json={
            "type": "records.sync.completed",
            "idempotency_key": key,
            "data": {"connection_id": "c1", "patient": "Patient/p1"},
        },
    )
    response.raise_for_status()
    event_id: str = response.json()["id"]
    return event_id

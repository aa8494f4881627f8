"""`tidings redeliver` against a running `tidings serve`, with a real receiver on loopback."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.acceptance.conftest import Tidings, stop
from tests.receivers import ScriptedReceiver, receiver_in_thread

pytestmark = pytest.mark.acceptance
SYNC_DATA = {"connection_id": "conn_1", "patient": "Patient/p1"}


def eventually(check: Callable[[], bool], what: str, seconds: float = 20) -> None:
    """Poll `check` until it holds; fail after `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {seconds} s: {what}")


def webhook_ids(receiver: ScriptedReceiver, path: str) -> Counter[str]:
    return Counter(
        {k.lower(): v for k, v in item.headers.items()}["webhook-id"] for item in receiver.at(path)
    )


class Api:
    """The running server, as one organization's partner and source see it."""

    def __init__(self, base: str, partner: str, source: str) -> None:
        self.base = base
        self.partner = {"Authorization": f"Bearer {partner}"}
        self.source = {"Authorization": f"Bearer {source}"}

    def register(self, url: str) -> str:
        response = httpx.post(
            f"{self.base}/v1/endpoints",
            headers=self.partner,
            json={"url": url, "event_types": ["records.*"]},
        )
        assert response.status_code == 201, response.text
        endpoint_id: str = response.json()["id"]
        return endpoint_id

    def publish(self, key: str) -> str:
        response = httpx.post(
            f"{self.base}/v1/events",
            headers=self.source,
            json={"type": "records.sync.completed", "data": SYNC_DATA, "idempotency_key": key},
        )
        assert response.status_code == 202, response.text
        event_id: str = response.json()["id"]
        return event_id

    def deliveries(self, endpoint_id: str) -> list[dict[str, Any]]:
        response = httpx.get(
            f"{self.base}/v1/deliveries",
            headers=self.partner,
            params={"endpoint_id": endpoint_id},
        )
        assert response.status_code == 200, response.text
        found: list[dict[str, Any]] = response.json()["data"]
        return found

    def statuses(self, endpoint_id: str) -> list[str]:
        return [delivery["status"] for delivery in self.deliveries(endpoint_id)]


def test_redeliver_failed_deliveries_then_find_nothing_left(tidings: Tidings) -> None:
    tidings.env.update(TIDINGS_RETRY_SCHEDULE="1", TIDINGS_ALLOWED_NETWORKS="127.0.0.0/8")
    admin = tidings.key("ops", "admin")
    partner, source = tidings.key("acme", "partner"), tidings.key("acme", "source")
    with receiver_in_thread() as receiver:
        process, base = tidings.start("serve")
        try:
            api = Api(base, partner, source)
            endpoint_id = api.register(receiver.script("/flaky", 500))
            events = [api.publish(f"sync-{index}") for index in range(3)]
            eventually(lambda: api.statuses(endpoint_id) == ["failed"] * 3, "all failed")
            failed = api.deliveries(endpoint_id)
            assert webhook_ids(receiver, "/flaky") == {event: 2 for event in events}

            command = ("redeliver", "--url", base, "--key", admin, "--endpoint", endpoint_id)
            dry = tidings.run(*command, "--dry-run")
            assert "dry run: 3 deliveries would be redelivered" in dry.stdout
            assert all(delivery["id"] in dry.stdout for delivery in failed)
            assert api.deliveries(endpoint_id) == failed, "a dry run changes nothing"

            receiver.script("/flaky", 200)
            tidings.env["TIDINGS_API_KEY"] = admin
            result = tidings.run(
                "redeliver", "--url", base, "--status", "failed", "--endpoint", endpoint_id
            )
            assert "matched 3, queued 3, skipped 0, errors 0" in result.stdout
            eventually(lambda: api.statuses(endpoint_id) == ["succeeded"] * 3, "redelivered")
            assert webhook_ids(receiver, "/flaky") == {event: 3 for event in events}

            again = tidings.run(*command)
            assert "nothing to redeliver" in again.stdout
            assert "matched 0, queued 0, skipped 0, errors 0" in again.stdout
            assert len(receiver.at("/flaky")) == 9
        finally:
            stop(process)


def test_a_refused_key_or_unreachable_server_is_exit_1(tidings: Tidings) -> None:
    process, base = tidings.start("api")
    try:
        refused = tidings.run("redeliver", "--url", base, "--key", "tdk_wrong", check=False)
    finally:
        stop(process)
    assert refused.returncode == 1
    assert "401" in refused.stderr
    gone = tidings.run("redeliver", "--url", base, "--key", "tdk_any", check=False)
    assert gone.returncode == 1 and "cannot reach" in gone.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "TIDINGS_API_KEY"),
        (("--key", "k", "--since", "last week"), "--since"),
        (("--key", "k", "--until", "2026-13-01"), "--until"),
        (("--key", "k", "--since", "2026-02-01", "--until", "2026-01-01"), "--until"),
        (("--key", "k", "--status", "delivering"), "--status"),
        (("--key", "k", "--org", "Not An Org"), "--org"),
    ],
)
def test_usage_errors_are_exit_2(tidings: Tidings, args: tuple[str, ...], message: str) -> None:
    result = tidings.run("redeliver", "--url", "http://127.0.0.1:9", *args, check=False)
    assert result.returncode == 2
    assert message in result.stderr

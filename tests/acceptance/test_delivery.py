"""The whole delivery story through the real `tidings serve` process and a real receiver:
signed deliveries, retries to success, exhaustion, auto-disable and redelivery."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import standardwebhooks

from tests.acceptance.conftest import Tidings, stop
from tests.receivers import Answer, ScriptedReceiver, receiver_in_thread

pytestmark = pytest.mark.acceptance

ENCOUNTER = {
    "resourceType": "Encounter",
    "id": "enc-1",
    "meta": {"versionId": "1"},
    "status": "finished",
    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
    "subject": {"reference": "Patient/p1"},
}


def eventually(check: Callable[[], Any], seconds: float = 20) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds} s: {check.__doc__ or check}")
        time.sleep(0.1)


class Client:
    def __init__(self, base: str, key: str) -> None:
        self.http = httpx.Client(
            base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=10
        )

    def __call__(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, path, **kwargs)
        assert response.status_code < 300, response.text
        return response.json() if response.content else None


def test_deliveries_end_to_end(tidings: Tidings) -> None:
    # Retries due after ~1 s are picked up on the 1 s poll: three attempts take up to ~4.5 s,
    # so auto-disable (8 s of failures) comes after exhaustion.
    tidings.env.update(TIDINGS_RETRY_SCHEDULE="1,1", TIDINGS_DISABLE_AFTER="8")
    partner_key, source_key = tidings.key("acme"), tidings.key("acme", "source")
    with receiver_in_thread() as receiver:
        process, base = tidings.start("serve")
        partner, source = Client(base, partner_key), Client(base, source_key)
        try:
            run_story(partner, source, receiver)
        except AssertionError as failure:
            raise AssertionError(f"{failure}\n--- tidings output ---\n{stop(process)}") from None
        finally:
            partner.http.close()
            source.http.close()
        output = stop(process)
    assert "Traceback" not in output, output


def run_story(partner: Client, source: Client, receiver: ScriptedReceiver) -> None:
    ok = partner("POST", "/v1/endpoints", json={"url": receiver.script("/ok", 200)})
    flaky = partner(
        "POST",
        "/v1/endpoints",
        json={"url": receiver.script("/flaky", 500, 200), "event_types": ["records.*"]},
    )
    down = partner(
        "POST",
        "/v1/endpoints",
        json={"url": receiver.script("/down", Answer(status=503)), "event_types": ["records.*"]},
    )
    encounters = partner(
        "POST",
        "/v1/endpoints",
        json={
            "url": receiver.script("/fhir", 200),
            "event_types": ["encounter.*"],
            "filter": "Encounter?status=finished",
        },
    )

    event = source(
        "POST",
        "/v1/events",
        json={
            "type": "records.sync.completed",
            "data": {"connection_id": "c1", "patient": "Patient/p1", "resources_added": 2},
        },
    )
    pushed = source(
        "POST", "/v1/ingest/fhir", json=ENCOUNTER, headers={"Content-Type": "application/fhir+json"}
    )
    assert len(pushed["events"]) == 1

    eventually(lambda: len(receiver.at("/ok")) == 2 and receiver.at("/fhir"))
    for received in receiver.at("/ok") + receiver.at("/fhir"):
        standardwebhooks.Webhook(
            ok["secret"] if received.path == "/ok" else encounters["secret"]
        ).verify(received.body, received.headers)

    # Retries to success, with the same webhook-id.
    [flaky_delivery] = eventually(lambda: _with_status(partner, flaky["id"], "succeeded"))
    log = partner("GET", f"/v1/deliveries/{flaky_delivery['id']}")
    assert [a["status_code"] for a in log["attempts"]] == [500, 200]
    assert {r.headers["webhook-id"] for r in receiver.at("/flaky")} == {event["id"]}

    # Exhaustion to failed, then auto-disable after TIDINGS_DISABLE_AFTER of failures only.
    [failed] = eventually(lambda: _with_status(partner, down["id"], "failed"))
    assert [
        a["status_code"] for a in partner("GET", f"/v1/deliveries/{failed['id']}")["attempts"]
    ] == [503, 503, 503]
    disabled = eventually(
        lambda: (
            not partner("GET", f"/v1/endpoints/{down['id']}")["active"]
            and partner("GET", f"/v1/endpoints/{down['id']}")
        )
    )
    assert "failed" in disabled["disabled_reason"]

    # Redelivery after the receiver recovers: enabled again, one more attempt, same id.
    receiver.script("/down", 200)
    partner("POST", f"/v1/endpoints/{down['id']}/enable", json={})
    partner("POST", f"/v1/deliveries/{failed['id']}/redeliver")
    eventually(lambda: _with_status(partner, down["id"], "succeeded"))
    log = partner("GET", f"/v1/deliveries/{failed['id']}")
    assert [a["status_code"] for a in log["attempts"]] == [503, 503, 503, 200]
    assert {r.headers["webhook-id"] for r in receiver.at("/down")} == {event["id"]}


def _with_status(partner: Client, endpoint_id: str, status: str) -> list[dict[str, Any]]:
    page = partner("GET", f"/v1/deliveries?endpoint_id={endpoint_id}")
    found = [item for item in page["data"] if item["status"] == status]
    return found if found and len(found) == len(page["data"]) else []


def test_metrics_count_attempts_and_claims(tidings: Tidings) -> None:
    partner_key, source_key = tidings.key("acme"), tidings.key("acme", "source")
    with receiver_in_thread() as receiver:
        process, base = tidings.start("serve")
        partner, source = Client(base, partner_key), Client(base, source_key)
        try:
            partner("POST", "/v1/endpoints", json={"url": receiver.script("/m", 200)})
            source(
                "POST",
                "/v1/events",
                json={
                    "type": "records.sync.completed",
                    "data": {"connection_id": "c1", "patient": "Patient/p1"},
                },
            )
            eventually(lambda: receiver.at("/m"))
            text = eventually(lambda: _metric_line(base, _SUCCEEDED))
            claims = _metric_line(base, _CLAIMS_THAT_FOUND_WORK)
        finally:
            partner.http.close()
            source.http.close()
            stop(process)
    assert text.endswith(" 1.0")
    assert claims, "no tidings_worker_claims_total sample for claims that found deliveries"
    assert float(claims.rsplit(" ", 1)[1]) >= 1, claims


_SUCCEEDED = 'tidings_delivery_attempts_total{verdict="succeeded"}'
_CLAIMS_THAT_FOUND_WORK = 'tidings_worker_claims_total{found="deliveries"}'


def _metric_line(base: str, sample: str) -> str:
    body = httpx.get(f"{base}/metrics").text
    lines = [line for line in body.splitlines() if line.startswith(sample)]
    return lines[0] if lines else ""

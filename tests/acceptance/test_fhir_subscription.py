"""A FHIR client's story through `tidings serve`: an R4 backport Subscription, its handshake,
numbered notifications of changes pulled from an upstream FHIR server, a missed event fetched
with `$events`, and every attempt found as an AuditEvent."""

from __future__ import annotations

import importlib
import json
from typing import Any

import pytest

from tests.acceptance.conftest import Tidings, stop
from tests.acceptance.test_delivery import Client, eventually
from tests.fhir_server import FhirServer, fhir_server_in_thread
from tests.receivers import ScriptedReceiver, receiver_in_thread

pytestmark = pytest.mark.acceptance

BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
FHIR_JSON = "application/fhir+json"


def r4_valid(resource: dict[str, Any]) -> None:
    """R4 payloads validated with the R4B models, the closest fhir.resources has."""
    name = resource["resourceType"]
    module = importlib.import_module(f"fhir.resources.R4B.{name.lower()}")
    getattr(module, name).model_validate(resource)


def status_of(bundle: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = {"numbers": []}
    for parameter in bundle["entry"][0]["resource"]["parameter"]:
        if parameter["name"] == "notification-event":
            found["numbers"] += [
                p["valueString"] for p in parameter["part"] if p["name"] == "event-number"
            ]
        else:
            found[parameter["name"]] = next(
                v for k, v in parameter.items() if k.startswith("value")
            )
    return found


def subscription(topic: str, url: str) -> dict[str, Any]:
    return {
        "resourceType": "Subscription",
        "meta": {"profile": [BACKPORT + "backport-subscription"]},
        "status": "requested",
        "reason": "finished encounters",
        "criteria": topic,
        "_criteria": {
            "extension": [
                {
                    "url": BACKPORT + "backport-filter-criteria",
                    "valueString": "Encounter?status=finished",
                }
            ]
        },
        "channel": {
            "type": "rest-hook",
            "endpoint": url,
            "payload": FHIR_JSON,
            "_payload": {
                "extension": [
                    {"url": BACKPORT + "backport-payload-content", "valueCode": "full-resource"}
                ]
            },
            "header": ["Authorization: Bearer receiver-token"],
        },
    }


def test_a_backport_subscription_end_to_end(tidings: Tidings) -> None:
    tidings.env.update(TIDINGS_RETRY_SCHEDULE="600")
    partner_key = tidings.key("acme")
    with fhir_server_in_thread() as upstream, receiver_in_thread() as receiver:
        tidings.run(
            "upstreams",
            "add",
            "--org",
            "acme",
            "--base-url",
            upstream.base_url,
            "--poll-seconds",
            "1",
        )
        process, base = tidings.start("serve")
        partner = Client(base, partner_key)
        try:
            run_story(partner, base, upstream, receiver)
        except AssertionError as failure:
            raise AssertionError(f"{failure}\n--- tidings output ---\n{stop(process)}") from None
        finally:
            partner.http.close()
        output = stop(process)
    assert "Traceback" not in output, output


def run_story(partner: Client, base: str, upstream: FhirServer, receiver: ScriptedReceiver) -> None:
    url = receiver.script("/fhir-client", 200, 200, 500, 200)
    topic = partner("GET", "/fhir/SubscriptionTopic/encounter.updated")["url"]
    created = partner(
        "POST", "/fhir/Subscription", content=json.dumps(subscription(topic, url)),
        headers={"Content-Type": FHIR_JSON},
    )  # fmt: skip
    assert created["status"] == "requested"
    path = f"/fhir/Subscription/{created['id']}"

    def received(count: int) -> Any:
        return lambda: len(receiver.at("/fhir-client")) >= count

    eventually(received(1))
    eventually(lambda: partner("GET", path)["status"] == "active")
    ambulatory = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"}
    upstream.create(
        {"resourceType": "Encounter", "id": "enc-1", "status": "in-progress", "class": ambulatory}
    )
    upstream.update("Encounter", "enc-1", status="finished")
    eventually(received(2))
    upstream.update("Encounter", "enc-1", status="in-progress")  # does not match the filter
    upstream.update("Encounter", "enc-1", status="finished", priority={"text": "second"})
    eventually(received(3))  # answered 500: missed by the client for now
    upstream.update("Encounter", "enc-1", status="finished", priority={"text": "third"})
    eventually(received(4))

    bodies = [json.loads(item.body) for item in receiver.at("/fhir-client")]
    for bundle in bodies:
        r4_valid(bundle)
    assert [status_of(b)["type"] for b in bodies] == ["handshake"] + ["event-notification"] * 3
    assert [status_of(b)["numbers"] for b in bodies] == [[], ["1"], ["2"], ["3"]]
    assert all(
        r.headers["Authorization"] == "Bearer receiver-token" for r in receiver.at("/fhir-client")
    )
    got = [
        status_of(b)["numbers"][0]
        for b, answered in zip(bodies[1:], (200, 500, 200), strict=True)
        if answered == 200
    ]
    assert got == ["1", "3"], "the client sees a gap at 2"

    status = partner("GET", path + "/$status")
    r4_valid(status)
    assert status_of(status)["events-since-subscription-start"] == "3"
    missed = partner(
        "GET", path + "/$events", params={"eventsSinceNumber": "2", "eventsUntilNumber": "2"}
    )
    r4_valid(missed)
    assert status_of(missed)["numbers"] == ["2"]
    assert missed["entry"][1]["resource"]["priority"]["text"] == "second"

    audit = partner("GET", "/fhir/AuditEvent", params={"entity": f"Subscription/{created['id']}"})
    r4_valid(audit)
    assert [e["resource"]["outcome"] for e in audit["entry"]] == ["0", "0", "4", "0"]
    failed = partner("GET", "/fhir/AuditEvent", params={"outcome": "4"})
    assert len(failed["entry"]) == 1

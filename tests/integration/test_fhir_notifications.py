"""Subscriptions through the worker: handshake, status, notifications, numbering, heartbeats."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import pytest
import standardwebhooks

from app.delivery import notifications
from app.factory import create_app
from app.fhir.subscriptions import tidings_id
from app.runtime import build_runtime
from tests.integration.conftest import Api, fake_resolve
from tests.integration.delivery_harness import Delivering
from tests.integration.fhir_helpers import (
    MEDPLUM,
    backport,
    create,
    encounter,
    fhir,
    fhir_valid,
    push,
    r4,
    r5,
)
from tests.receivers import Answer

pytestmark = pytest.mark.usefixtures("delivering")


def bodies(delivering: Delivering, path: str) -> list[dict[str, Any]]:
    return [json.loads(item.body) for item in delivering.receiver.at(path)]


def status_of(bundle: dict[str, Any]) -> dict[str, Any]:
    """The R4 backport status Parameters as {name: value} (notification-event parts listed)."""
    found: dict[str, Any] = {"events": []}
    for parameter in bundle["entry"][0]["resource"]["parameter"]:
        if parameter["name"] == "notification-event":
            parts = {
                p["name"]: next(v for k, v in p.items() if k.startswith("value"))
                for p in parameter["part"]
            }
            found["events"].append(parts)
        else:
            found[parameter["name"]] = next(
                v for k, v in parameter.items() if k.startswith("value")
            )
    return found


async def subscription(delivering: Delivering, fhir_id: str) -> dict[str, Any]:
    response = await fhir(
        delivering.api, "GET", f"/fhir/Subscription/{fhir_id}", delivering.partner
    )
    body: dict[str, Any] = await response.get_json()
    return body


async def test_handshake_activates_and_events_are_numbered(delivering: Delivering) -> None:
    url = delivering.receiver.url("/bp")
    created = await create(
        delivering.api,
        delivering.partner,
        backport(
            url, filters=("Encounter?status=finished",), headers=("Authorization: Bearer tok:en",)
        ),
    )
    assert created["status"] == "requested"
    assert await delivering.worker.run_once() == 1
    [handshake] = bodies(delivering, "/bp")
    fhir_valid(handshake)
    assert status_of(handshake)["type"] == "handshake"
    assert status_of(handshake)["events-since-subscription-start"] == "0"
    assert (await subscription(delivering, created["id"]))["status"] == "active"
    for version, state in ((1, "finished"), (2, "in-progress"), (3, "finished"), (4, "finished")):
        await push(
            delivering.api, delivering.source, encounter(version=version, status=state), "update"
        )
    await delivering.drain()
    received = delivering.receiver.at("/bp")
    assert received[1].headers["Authorization"] == "Bearer tok:en", "split on the first colon"
    numbers = []
    for item in bodies(delivering, "/bp")[1:]:
        fhir_valid(item)
        status = status_of(item)
        assert status["type"] == "event-notification" and status["status"] == "active"
        numbers.append(status["events"][0]["event-number"])
        assert item["entry"][1]["resource"]["status"] == "finished"
    assert sorted(numbers) == ["1", "2", "3"], "the in-progress version does not match the filter"
    endpoint = await (
        await delivering.api.call(
            "GET", "/v1/endpoints/" + created["id"].replace("-", "_", 1), delivering.partner
        )
    ).get_json()
    secret = (
        await (
            await delivering.api.call(
                "GET", f"/v1/endpoints/{endpoint['id']}/secret", delivering.partner
            )
        ).get_json()
    )["secret"]
    headers = {k.lower(): v for k, v in received[1].headers.items()}
    standardwebhooks.Webhook(secret).verify(received[1].body, headers)


async def test_numbering_survives_a_restart(delivering: Delivering) -> None:
    created = await create(
        delivering.api,
        delivering.partner,
        backport(delivering.receiver.url("/n"), content="id-only"),
    )
    await delivering.drain()
    await push(delivering.api, delivering.source, encounter(version=1), "update")
    await delivering.drain()
    api = delivering.api
    restarted = create_app(api.settings, clock=api.clock, resolve=fake_resolve)
    async with restarted.test_app() as test_app:
        second = Api(
            app=restarted, client=test_app.test_client(), settings=api.settings, clock=api.clock
        )
        services = restarted.extensions["tidings"]
        runtime = build_runtime(
            second.settings, sessions=services.sessions, catalog=services.catalog, clock=api.clock
        )
        for version in (2, 3):
            await push(second, delivering.source, encounter(version=version), "update")
        while await runtime.worker.run_once():
            pass
        await runtime.sender.aclose()
        path = f"/fhir/Subscription/{created['id']}"
        status = await (await fhir(second, "GET", path + "/$status", delivering.partner)).get_json()
        fhir_valid(status)
        assert status_of(status)["events-since-subscription-start"] == "3"
        events = await (
            await fhir(
                second,
                "GET",
                path + "/$events?eventsSinceNumber=2&eventsUntilNumber=3",
                delivering.partner,
            )
        ).get_json()
        fhir_valid(events)
        assert [e["event-number"] for e in status_of(events)["events"]] == ["2", "3"]
        assert all("resource" not in entry for entry in events["entry"][1:]), "id-only"
        everything = await (
            await fhir(second, "GET", path + "/$events", delivering.partner)
        ).get_json()
        assert [e["event-number"] for e in status_of(everything)["events"]] == ["1", "2", "3"]
    numbers = [status_of(b)["events"][0]["event-number"] for b in bodies(delivering, "/n")[1:]]
    assert numbers == ["1", "2", "3"]


async def test_r5_notifications_are_valid_r5(delivering: Delivering) -> None:
    created = await create(delivering.api, delivering.partner, r5(delivering.receiver.url("/r5")))
    await delivering.drain()
    await push(delivering.api, delivering.source, encounter(), "update")
    await delivering.drain()
    handshake, event = bodies(delivering, "/r5")
    for bundle in (handshake, event):
        fhir_valid(bundle, "R5")
        assert bundle["type"] == "subscription-notification"
    assert event["entry"][0]["resource"]["notificationEvent"][0]["eventNumber"] == "1"
    assert delivering.receiver.at("/r5")[1].headers["X-Partner"] == "p: 1"
    status = await (
        await fhir(
            delivering.api, "GET", f"/fhir/Subscription/{created['id']}/$status", delivering.partner
        )
    ).get_json()
    fhir_valid(status, "R5")


async def test_a_failing_handshake_puts_the_subscription_in_error(delivering: Delivering) -> None:
    resource = backport(delivering.receiver.script("/down", 500))
    resource["extension"] = [{"url": MEDPLUM + "subscription-max-attempts", "valueInteger": 2}]
    created = await create(delivering.api, delivering.partner, resource)
    await delivering.worker.run_once()
    assert (await subscription(delivering, created["id"]))["status"] == "requested"
    delivering.api.clock.advance(10)
    await delivering.worker.run_once()
    shown = await subscription(delivering, created["id"])
    assert shown["status"] == "error" and "500" in shown["error"]
    status = await (
        await fhir(
            delivering.api, "GET", f"/fhir/Subscription/{created['id']}/$status", delivering.partner
        )
    ).get_json()
    assert status_of(status)["status"] == "error"


async def test_gone_turns_the_subscription_off(delivering: Delivering) -> None:
    created = await create(
        delivering.api, delivering.partner, backport(delivering.receiver.script("/gone", 410))
    )
    await delivering.worker.run_once()
    shown = await subscription(delivering, created["id"])
    assert shown["status"] == "off" and "410" in shown["error"]
    found = await (
        await fhir(delivering.api, "GET", "/fhir/Subscription?status=off", delivering.partner)
    ).get_json()
    assert [e["resource"]["id"] for e in found["entry"]] == [created["id"]]


async def test_heartbeats_follow_the_period(delivering: Delivering) -> None:
    created = await create(
        delivering.api, delivering.partner, backport(delivering.receiver.url("/hb"), heartbeat=60)
    )
    await delivering.drain()
    sessions = delivering.api.app.extensions["tidings"].sessions
    delivering.api.clock.advance(30)
    assert await notifications.queue_due_heartbeats(sessions, now=delivering.api.clock()) == []
    delivering.api.clock.advance(31)
    due = await notifications.queue_due_heartbeats(sessions, now=delivering.api.clock())
    assert [item.replace("_", "-", 1) for item in due] == [created["id"]]
    await delivering.drain()
    heartbeat = bodies(delivering, "/hb")[-1]
    fhir_valid(heartbeat)
    assert status_of(heartbeat)["type"] == "heartbeat"
    assert await notifications.queue_due_heartbeats(sessions, now=delivering.api.clock()) == []


async def test_r4_criteria_posts_the_bare_resource_or_nothing(delivering: Delivering) -> None:
    await create(
        delivering.api,
        delivering.partner,
        r4(delivering.receiver.url("/full"), payload="application/fhir+json"),
    )
    await create(delivering.api, delivering.partner, r4(delivering.receiver.url("/ping")))
    await push(delivering.api, delivering.source, encounter(), "update")
    await push(
        delivering.api, delivering.source, encounter(version=2, status="in-progress"), "update"
    )
    await delivering.drain()
    [full] = delivering.receiver.at("/full")
    assert json.loads(full.body) == encounter()
    [ping] = delivering.receiver.at("/ping")
    assert ping.body == b""


async def test_medplum_style_delivery_is_signed_with_x_signature(delivering: Delivering) -> None:
    resource = r4(
        delivering.receiver.url("/medplum"),
        criteria="Encounter",
        extension=[
            {"url": MEDPLUM + "subscription-secret", "valueString": "s3cret"},
            {"url": MEDPLUM + "subscription-supported-interaction", "valueCode": "update"},
            {"url": MEDPLUM + "subscription-supported-interaction", "valueCode": "delete"},
            {
                "url": MEDPLUM + "fhir-path-criteria-expression",
                "valueString": "%previous.status != 'finished' and %current.status = 'finished'",
            },
        ],
    )
    created = await create(delivering.api, delivering.partner, resource)
    await push(
        delivering.api, delivering.source, encounter(version=1, status="in-progress"), "update"
    )
    await push(delivering.api, delivering.source, encounter(version=2, status="finished"), "update")
    await push(delivering.api, delivering.source, encounter(version=3, status="finished"), "update")
    await push(delivering.api, delivering.source, encounter(version=4, status="finished"), "delete")
    await delivering.drain()
    received = delivering.receiver.at("/medplum")
    assert [r.headers["X-Medplum-Interaction"] for r in received] == ["update"], (
        "only the change to finished"
    )
    [update] = received
    assert json.loads(update.body)["meta"]["versionId"] == "2"
    assert update.headers["X-Medplum-Subscription"] == created["id"]
    expected = hmac.new(b"s3cret", update.body, hashlib.sha256).hexdigest()
    assert update.headers["X-Signature"] == expected


async def test_medplum_delete_sends_an_empty_object(delivering: Delivering) -> None:
    resource = r4(
        delivering.receiver.url("/deleted"),
        criteria="Encounter",
        extension=[
            {"url": MEDPLUM + "subscription-secret", "valueString": "s3cret"},
            {"url": MEDPLUM + "subscription-supported-interaction", "valueCode": "delete"},
        ],
    )
    await create(delivering.api, delivering.partner, resource)
    await push(delivering.api, delivering.source, encounter(version=2), "delete")
    await delivering.drain()
    [deleted] = delivering.receiver.at("/deleted")
    assert deleted.body == b"{}"
    assert deleted.headers["X-Medplum-Deleted-Resource"] == "Encounter/enc-1"
    assert deleted.headers["X-Signature"] == hmac.new(b"s3cret", b"{}", hashlib.sha256).hexdigest()


async def test_re_requesting_an_errored_subscription_shakes_hands_again(
    delivering: Delivering,
) -> None:
    url = delivering.receiver.script("/again", Answer(status=410), 200)
    created = await create(delivering.api, delivering.partner, backport(url))
    await delivering.worker.run_once()
    assert (await subscription(delivering, created["id"]))["status"] == "off"
    again = {**created, "status": "requested"}
    response = await fhir(
        delivering.api, "PUT", f"/fhir/Subscription/{created['id']}", delivering.partner, again
    )
    assert (await response.get_json())["status"] == "requested"
    await delivering.drain()
    shown = await subscription(delivering, created["id"])
    assert shown["status"] == "active" and "error" not in shown


async def test_enabling_a_disabled_subscription_s_endpoint_starts_it_again(
    delivering: Delivering,
) -> None:
    """Through `POST /v1/endpoints/{id}/enable`, as through a PUT with `requested`: a
    topic-based Subscription shakes hands again and is active, not left showing `off`."""
    url = delivering.receiver.script("/enabled", Answer(status=410), 200)
    created = await create(delivering.api, delivering.partner, backport(url))
    await delivering.worker.run_once()
    assert (await subscription(delivering, created["id"]))["status"] == "off"
    endpoint_id = tidings_id(created["id"])
    response = await delivering.api.call(
        "POST", f"/v1/endpoints/{endpoint_id}/enable", delivering.partner
    )
    assert response.status_code == 200, await response.get_data(as_text=True)
    assert (await subscription(delivering, created["id"]))["status"] == "requested"
    await delivering.drain()
    shown = await subscription(delivering, created["id"])
    assert shown["status"] == "active" and "error" not in shown
    assert len(delivering.receiver.at("/enabled")) == 2, "the handshake that got 410, and anew"

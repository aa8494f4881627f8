"""`POST /v1/ingest/fhir`: FHIR changes in, exactly the right events out, to the right endpoints."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from app.config import Settings
from app.factory import create_app
from app.store import outbox
from app.store.db import transaction
from app.store.tables import EndpointRow
from tests.conftest import FakeClock
from tests.integration.conftest import Api, fake_resolve
from tests.integration.outbox_helpers import (
    deliveries_by_endpoint,
    delivery_rows,
    fhir_valid,
    payload_for,
    register,
    services_of,
    stored_event_types,
)

CLINIC_CATALOG = """
[[event_types]]
name = "encounter.finished"
description = "An encounter moved to finished."
payload_format = "message-header"

[[event_types.triggers]]
resource = "Encounter"
interactions = ["update"]
criteria = "status=finished"
previous_criteria = "status:not=finished"
"""
INGEST_SECRET = "medplum-subscription-secret-0123"
FHIR_JSON = {"Content-Type": "application/fhir+json"}
BASE = "https://fhir.example.org/fhir"
AMBULATORY = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"}
HEART_RATE = {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]}


def at(minute: int) -> str:
    return f"2026-01-01T10:0{minute}:00Z"


def meta(version: int, minute: int) -> dict[str, str]:
    return {"versionId": str(version), "lastUpdated": at(minute)}


def patient(version: int, minute: int, **fields: Any) -> dict[str, Any]:
    name = [{"family": "Chalmers", "given": ["Peter"]}]
    return {
        "resourceType": "Patient",
        "id": "p1",
        "meta": meta(version, minute),
        "active": True,
        "name": name,
        "gender": "male",
        "birthDate": "1974-12-25",
        **fields,
    }


def encounter(version: int, minute: int, status: str) -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "id": "e1",
        "meta": meta(version, minute),
        "status": status,
        "class": AMBULATORY,
        "subject": {"reference": "Patient/p1"},
    }


def observation(version: int, minute: int, status: str, beats: int) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": "o1",
        "meta": meta(version, minute),
        "status": status,
        "code": HEART_RATE,
        "subject": {"reference": "Patient/p1"},
        "encounter": {"reference": "Encounter/e1"},
        "valueQuantity": {
            "value": beats,
            "unit": "beats/minute",
            "system": "http://unitsofmeasure.org",
            "code": "/min",
        },
    }


def history_entry(resource: dict[str, Any]) -> dict[str, Any]:
    version = resource["meta"]["versionId"]
    reference = f"{resource['resourceType']}/{resource['id']}"
    method, url = ("POST", resource["resourceType"]) if version == "1" else ("PUT", reference)
    return {
        "fullUrl": f"{BASE}/{reference}",
        "resource": resource,
        "request": {"method": method, "url": url},
        "response": {
            "status": "201" if version == "1" else "200",
            "etag": f'W/"{version}"',
            "lastModified": resource["meta"]["lastUpdated"],
        },
    }


def deleted_entry(reference: str, version: int, minute: int) -> dict[str, Any]:
    return {
        "fullUrl": f"{BASE}/{reference}",
        "request": {"method": "DELETE", "url": reference},
        "response": {"status": "410", "etag": f'W/"{version}"', "lastModified": at(minute)},
    }


OBSERVATION_FINAL = observation(2, 5, "final", 74)
# As `[base]/_history` answers: newest first.
HISTORY = {
    "resourceType": "Bundle",
    "type": "history",
    "entry": [
        deleted_entry("Observation/o1", 3, 7),
        history_entry(patient(2, 6, telecom=[{"system": "phone", "value": "555-0100"}])),
        history_entry(OBSERVATION_FINAL),
        history_entry(encounter(2, 4, "finished")),
        history_entry(observation(1, 3, "preliminary", 72)),
        history_entry(encounter(1, 2, "in-progress")),
        history_entry(patient(1, 1)),
    ],
}
EVERY_EVENT = [
    "patient.created",
    "encounter.created",
    "observation.created",
    "encounter.finished",
    "encounter.updated",
    "observation.updated",
    "patient.updated",
    "observation.deleted",
]


async def make_api(settings: Settings, clock: FakeClock) -> AsyncIterator[Api]:
    app = create_app(settings, clock=clock, resolve=fake_resolve)
    async with app.test_app() as test_app:
        yield Api(app=app, client=test_app.test_client(), settings=settings, clock=clock)


@pytest.fixture
async def clinic(settings: Settings, clock: FakeClock, tmp_path: Path) -> AsyncIterator[Api]:
    """The app with an extra catalog: `encounter.finished` uses the previous version."""
    path = tmp_path / "clinic.toml"
    path.write_text(CLINIC_CATALOG)
    async for api in make_api(dataclasses.replace(settings, catalog_paths=(path,)), clock):
        yield api


@pytest.fixture
async def signed(settings: Settings, clock: FakeClock) -> AsyncIterator[Api]:
    """The app with TIDINGS_INGEST_SECRET set."""
    async for api in make_api(dataclasses.replace(settings, ingest_secret=INGEST_SECRET), clock):
        yield api


async def push(api: Api, key: str, body: Any, headers: dict[str, str] | None = None) -> Any:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await api.call(
        "POST", "/v1/ingest/fhir", key, data=data, headers={**FHIR_JSON, **(headers or {})}
    )


async def pushed(api: Api, key: str, body: Any, headers: dict[str, str] | None = None) -> Any:
    response = await push(api, key, body, headers)
    assert response.status_code == 202, await response.get_data(as_text=True)
    return await response.get_json()


async def disable(api: Api, endpoint_id: str) -> None:
    async with transaction(services_of(api).sessions) as session:
        row = await session.get(EndpointRow, endpoint_id)
        assert row is not None
        row.active = False
        session.add(row)


async def clinic_endpoints(api: Api) -> tuple[dict[str, list[str]], list[str]]:
    """Endpoints of org `clinic` with the events each must get, and those that must get none."""
    partner = await api.key("clinic")
    observations = ["observation.created", "observation.updated", "observation.deleted"]
    expected = {
        await register(api, partner, event_types=["*"]): EVERY_EVENT,
        await register(api, partner, event_types=["encounter.*"]): [
            "encounter.created",
            "encounter.finished",
            "encounter.updated",
        ],
        await register(api, partner, event_types=["patient.created"]): ["patient.created"],
        await register(
            api, partner, event_types=["encounter.updated"], filter="Encounter?status=finished"
        ): ["encounter.updated"],
        await register(
            api, partner, event_types=["observation.*"], payload_format="message-bundle"
        ): observations,
        await register(
            api, partner, event_types=["observation.*"], filter="Observation?status=final"
        ): observations[1:],
        await register(api, partner, event_types=["encounter.finished"]): ["encounter.finished"],
        await register(
            api,
            partner,
            event_types=["encounter.created"],
            content="id-only",
            payload_format="message-bundle",
        ): ["encounter.created"],
    }
    nothing = [
        await register(api, partner, event_types=["*"], account="acc-1"),
        await register(api, partner, event_types=["condition.*", "patient.deleted"]),
        await register(api, await api.key("other-clinic"), event_types=["*"]),
        await register(api, partner, event_types=["*"]),
        await register(api, partner, event_types=["*"]),
    ]
    await disable(api, nothing[-1])
    assert (await api.call("DELETE", f"/v1/endpoints/{nothing[-2]}", partner)).status_code == 204
    return expected, nothing


async def test_a_history_bundle_makes_exactly_the_expected_events_and_deliveries(
    clinic: Api,
) -> None:
    expected, nothing = await clinic_endpoints(clinic)
    source = await clinic.key("clinic", "source")
    answer = await pushed(clinic, source, HISTORY)
    assert answer["changes"] == 7 and answer["duplicates"] == 0
    assert len(answer["events"]) == len(EVERY_EVENT)
    assert await stored_event_types(clinic) == Counter(EVERY_EVENT)
    delivered = await deliveries_by_endpoint(clinic)
    assert delivered == expected
    assert not set(nothing) & set(delivered)
    for row in await delivery_rows(clinic):
        payload = await payload_for(clinic, row.event_id, row.endpoint_id)
        body = json.loads(payload.body)
        if payload.content_type == "application/fhir+json":
            fhir_valid(body)
        elif "object" in body["data"]:
            fhir_valid(body["data"]["object"])


async def test_events_carry_the_resource_and_deletes_the_last_version(clinic: Api) -> None:
    source, partner = await clinic.key("clinic", "source"), await clinic.key("clinic")
    await pushed(clinic, source, HISTORY)
    listed = await (await clinic.call("GET", "/v1/events?limit=250", partner)).get_json()
    by_type = {item["type"]: item for item in listed["data"]}
    newest_first = [(item["occurred_at"], item["type"]) for item in listed["data"]]
    assert newest_first == sorted(newest_first, key=lambda pair: pair[0], reverse=True)
    assert [event_type for _, event_type in sorted(newest_first)] == EVERY_EVENT
    deleted = by_type["observation.deleted"]
    assert deleted["data"] == OBSERVATION_FINAL
    assert deleted["focus"] == "Observation/o1"
    assert deleted["occurred_at"] == "2026-01-01T10:07:00+00:00"
    assert by_type["encounter.finished"]["data"]["status"] == "finished"
    assert by_type["patient.created"]["source"] == "fhir-push"


async def test_the_same_changes_again_make_no_new_events(clinic: Api) -> None:
    source = await clinic.key("clinic", "source")
    await register(clinic, await clinic.key("clinic"), event_types=["*"])
    await pushed(clinic, source, HISTORY)
    before = len(await delivery_rows(clinic))
    again = await pushed(clinic, source, HISTORY)
    assert again == {"changes": 7, "events": [], "duplicates": len(EVERY_EVENT)}
    assert len(await delivery_rows(clinic)) == before
    assert await stored_event_types(clinic) == Counter(EVERY_EVENT)


async def test_a_change_twice_in_one_bundle_makes_one_event(api: Api) -> None:
    source = await api.key("acme", "source")
    entry = history_entry(patient(3, 1))
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [entry, entry]}
    answer = await pushed(api, source, bundle)
    assert (answer["changes"], len(answer["events"]), answer["duplicates"]) == (2, 1, 1)
    assert await stored_event_types(api) == {"patient.updated": 1}


async def test_changes_without_a_version_are_never_taken_for_duplicates(api: Api) -> None:
    source = await api.key("acme", "source")
    resource = {"resourceType": "Patient", "id": "p1", "active": True}
    for _ in range(2):
        await pushed(api, source, resource)
    assert await stored_event_types(api) == {"patient.updated": 2}


async def test_medplum_pushes_a_resource_and_a_delete(api: Api) -> None:
    source = await api.key("acme", "source")
    create = {"X-Medplum-Interaction": "create", "X-Medplum-Subscription": "sub-1"}
    await pushed(api, source, patient(1, 1), create)
    delete = {"X-Medplum-Interaction": "delete", "X-Medplum-Deleted-Resource": "Patient/p1"}
    answer = await pushed(api, source, b"{}", delete)
    assert len(answer["events"]) == 1
    listed = await (await api.call("GET", "/v1/events", await api.key("acme"))).get_json()
    newest = listed["data"][0]
    assert (newest["type"], newest["data"]) == (
        "patient.deleted",
        {"resourceType": "Patient", "id": "p1"},
    )
    assert await stored_event_types(api) == {"patient.created": 1, "patient.deleted": 1}


async def test_an_id_only_notification_raises_events_without_a_body(api: Api) -> None:
    source = await api.key("acme", "source")
    status = {
        "resource": {
            "resourceType": "Parameters",
            "parameter": [
                {"name": "subscription", "valueReference": {"reference": "Subscription/s1"}},
                {"name": "type", "valueCode": "event-notification"},
            ],
        },
        "request": {"method": "GET", "url": f"{BASE}/Subscription/s1/$status"},
    }
    item = {"fullUrl": f"{BASE}/Encounter/e9", "request": {"method": "PUT", "url": "Encounter/e9"}}
    notification = {"resourceType": "Bundle", "type": "history", "entry": [status, item]}
    answer = await pushed(api, source, notification)
    assert answer["changes"] == 1
    assert await stored_event_types(api) == {"encounter.updated": 1}


async def test_an_account_key_pushes_into_its_account(api: Api) -> None:
    partner = await api.key("acme")
    mine = await register(api, partner, event_types=["patient.*"], account="acc-1")
    other = await register(api, partner, event_types=["patient.*"], account="acc-2")
    await pushed(api, await api.key("acme", "source", account="acc-1"), patient(1, 1))
    delivered = await deliveries_by_endpoint(api)
    assert delivered == {mine: ["patient.created"]}
    assert other not in delivered


def bundle_with_a_bad_entry() -> dict[str, Any]:
    entries = [history_entry(patient(1, 1)), history_entry(encounter(1, 2, "planned"))]
    entries += [history_entry(observation(1, 3, "final", 70))]
    entries += [{"resource": {"resourceType": "Observation", "status": "final"}}]
    entries += [history_entry(patient(2, 4))]
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


@pytest.mark.parametrize(
    ("body", "pointer", "words"),
    [
        (bundle_with_a_bad_entry(), "/entry/3/resource/id", "needs an id"),
        ({"resourceType": "Starship", "id": "s1"}, "/resourceType", "'Starship'"),
        ({"hello": "world"}, "/resourceType", "not a FHIR resource"),
        ([{"resourceType": "Patient"}], "", "JSON object"),
        ({"resourceType": "Bundle", "type": "document", "entry": []}, "/type", "'document'"),
    ],
)
async def test_refused_pushes_store_nothing(api: Api, body: Any, pointer: str, words: str) -> None:
    source, partner = await api.key("acme", "source"), await api.key("acme")
    await register(api, partner)
    response = await push(api, source, body)
    assert response.status_code == 422
    problem = await response.get_json()
    assert problem["errors"][0]["pointer"] == pointer
    assert words in problem["errors"][0]["detail"]
    if pointer.startswith("/entry/"):
        assert "/entry/3" in problem["detail"] and "refused" in problem["detail"]
    assert await stored_event_types(api) == {}
    listed = await (await api.call("GET", "/v1/events", partner)).get_json()
    assert listed["data"] == []


@pytest.mark.parametrize(
    ("data", "content_type", "status"),
    [
        (b'{"resourceType": "Patient", ', "application/fhir+json", 400),
        (b'{"a": ' * 100 + b"1" + b"}" * 100, "application/fhir+json", 400),
        (b"", "application/fhir+json", 400),
        (b'{"resourceType": "Patient", "id": "p"}', "text/plain", 415),
        (b'{"resourceType": "Patient", "id": "p"}', "application/problem+json", 415),
    ],
)
async def test_unreadable_pushes_store_nothing(
    api: Api, data: bytes, content_type: str, status: int
) -> None:
    source = await api.key("acme", "source")
    headers = {"Content-Type": content_type}
    response = await api.call("POST", "/v1/ingest/fhir", source, data=data, headers=headers)
    assert response.status_code == status
    assert response.content_type == "application/problem+json"
    assert await stored_event_types(api) == {}


async def test_plain_json_is_accepted_too(api: Api) -> None:
    source = await api.key("acme", "source")
    headers = {"Content-Type": "application/json; charset=utf-8"}
    data = json.dumps(patient(1, 1)).encode()
    response = await api.call("POST", "/v1/ingest/fhir", source, data=data, headers=headers)
    assert response.status_code == 202


async def test_an_oversized_push_is_a_413(api: Api) -> None:
    source = await api.key("acme", "source")
    api.app.config["MAX_CONTENT_LENGTH"] = 2048
    try:
        response = await push(api, source, patient(1, 1, text={"div": "x" * 5000}))
    finally:
        api.app.config["MAX_CONTENT_LENGTH"] = 1024 * 1024
    assert response.status_code == 413
    assert await stored_event_types(api) == {}


async def test_only_sources_and_admins_push(api: Api) -> None:
    for role in ("partner", "reader"):
        response = await push(api, await api.key("acme", role), patient(1, 1))
        assert response.status_code == 403
    assert (await push(api, await api.key("ops", "admin"), patient(1, 1))).status_code == 202


def signature(body: bytes, secret: str = INGEST_SECRET) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


async def test_with_an_ingest_secret_pushes_must_be_signed(signed: Api) -> None:
    source = await signed.key("acme", "source")
    body = json.dumps(patient(1, 1)).encode()
    missing = await push(signed, source, body)
    wrong = await push(signed, source, body, {"X-Signature": signature(body, "not-the-secret")})
    tampered = await push(signed, source, body + b" ", {"X-Signature": signature(body)})
    for response in (missing, wrong, tampered):
        assert response.status_code == 401
        assert response.content_type == "application/problem+json"
    assert await stored_event_types(signed) == {}
    good = await push(signed, source, body, {"X-Signature": signature(body)})
    assert good.status_code == 202


async def test_a_failure_mid_push_stores_nothing_of_it(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = await api.key("acme", "source")
    await register(api, await api.key("acme"))
    real = outbox._deliveries_for
    calls = 0

    async def fails_the_second_time(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("the disk is full")
        return await real(*args, **kwargs)

    monkeypatch.setattr(outbox, "_deliveries_for", fails_the_second_time)
    try:
        response = await push(api, source, HISTORY)
        assert response.status_code == 500
    except RuntimeError:
        pass
    monkeypatch.undo()
    assert calls == 2
    assert await stored_event_types(api) == {}
    assert await delivery_rows(api) == []

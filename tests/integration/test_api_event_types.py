"""`/v1/event-types`: the catalog, readable by every role."""

from __future__ import annotations

import pytest

from tests.integration.conftest import Api


@pytest.mark.parametrize("role", ["partner", "reader", "source", "admin"])
async def test_every_role_reads_the_catalog(api: Api, role: str) -> None:
    response = await api.call("GET", "/v1/event-types", await api.key("acme", role))
    assert response.status_code == 200
    names = [item["name"] for item in (await response.get_json())["data"]]
    assert names == sorted(names)
    assert {"encounter.created", "user-delete-completed", "patient_flow.completed"} <= set(names)


async def test_prefix_filters_the_list(api: Api) -> None:
    key = await api.key("acme")
    body = await (await api.call("GET", "/v1/event-types?prefix=records.", key)).get_json()
    assert [item["name"] for item in body["data"]] == [
        "records.sync.completed",
        "records.sync.failed",
    ]


async def test_a_resource_event_type_shows_its_trigger(api: Api) -> None:
    key = await api.key("acme", "reader")
    body = await (await api.call("GET", "/v1/event-types/encounter.updated", key)).get_json()
    assert body["payload_format"] == "envelope"
    assert body["triggers"] == [
        {
            "resource": "Encounter",
            "interactions": ["update"],
            "criteria": None,
            "previous_criteria": None,
            "fhirpath": None,
        }
    ]


async def test_an_identity_event_type_shows_schema_example_and_extensions(api: Api) -> None:
    key = await api.key("acme")
    response = await api.call("GET", "/v1/event-types/user-delete-completed", key)
    body = await response.get_json()
    assert body["payload_format"] == "message-header"
    assert body["focus"] == "'Person/' + person_id"
    assert body["data_schema"]["required"] == ["person_id", "external_identifier"]
    assert body["example"]["external_identifier"]["value"] == "u-12345"
    public_url = api.settings.public_url
    assert body["event_coding"]["system"] == f"{public_url}/fhir/CodeSystem/events"
    assert body["extensions"] == {
        f"{public_url}/fhir/StructureDefinition/external-identifier": "external_identifier"
    }


async def test_unknown_names_and_parameters(api: Api) -> None:
    key = await api.key("acme")
    missing = await api.call("GET", "/v1/event-types/no.such.thing", key)
    assert missing.status_code == 404
    assert missing.content_type == "application/problem+json"
    bad = await api.call("GET", "/v1/event-types?colour=red", key)
    assert bad.status_code == 422
    assert (await api.call("GET", "/v1/event-types", None)).status_code == 401

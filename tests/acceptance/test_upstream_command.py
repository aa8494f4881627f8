"""`tidings upstreams add` and `tidings serve`: a change on a FHIR server reaches a receiver."""

from __future__ import annotations

import json

import pytest

from tests.acceptance.conftest import Tidings, stop
from tests.acceptance.test_delivery import Client, eventually
from tests.fhir_server import ServerAuth, fhir_server_in_thread
from tests.receivers import receiver_in_thread

pytestmark = pytest.mark.acceptance


def test_a_change_upstream_is_delivered(tidings: Tidings) -> None:
    partner_key = tidings.key("acme")
    with fhir_server_in_thread() as fhir, receiver_in_thread() as receiver:
        fhir.auth = ServerAuth("bearer", token="upstream-token")
        added = tidings.run(
            "upstreams", "add", "--org", "acme", "--base-url", fhir.base_url,
            "--auth", "bearer", "--token", "upstream-token", "--poll-seconds", "1",
        )  # fmt: skip
        upstream_id = added.stdout.strip().splitlines()[-1]
        assert upstream_id.startswith("ups_")
        listed = tidings.run("upstreams", "list").stdout
        assert upstream_id in listed and "auth=bearer" in listed
        assert "upstream-token" not in listed
        process, base = tidings.start("serve")
        partner = Client(base, partner_key)
        try:
            partner("POST", "/v1/endpoints", json={"url": receiver.script("/hook", 200)})
            fhir.create({"resourceType": "Patient", "id": "p1", "active": True})

            def delivered() -> bool:
                """the patient.created event reached the receiver"""
                return bool(receiver.at("/hook"))

            eventually(delivered, seconds=20)
        except AssertionError as failure:
            raise AssertionError(f"{failure}\n--- tidings output ---\n{stop(process)}") from None
        finally:
            partner.http.close()
        output = stop(process)
    body = json.loads(receiver.at("/hook")[0].body)
    assert body["type"] == "patient.created"
    assert body["data"]["object"]["id"] == "p1"
    assert "Traceback" not in output, output


def test_a_bad_upstream_is_refused_naming_the_flag(tidings: Tidings) -> None:
    result = tidings.run(
        "upstreams", "add", "--org", "acme", "--base-url", "ftp://fhir.example",
        "--auth", "bearer", check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--base-url: the scheme must be https or http" in result.stderr
    assert "--token: required for bearer auth" in result.stderr
    assert "ups_" not in tidings.run("upstreams", "list").stdout

"""`/v1/upstreams`: admin only, checked registrations, secrets never shown."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlmodel import select

from app.domain.secrets import SecretBox
from app.ingest.upstream_config import AuthKind, open_auth
from app.store.db import transaction
from app.store.tables import UpstreamServer
from tests.conftest import SECRET_KEY
from tests.integration.conftest import Api

BASE = "http://receiver.local.test:8080/fhir"
BASIC_MISSING = ["/auth/username", "/auth/password", "/auth/token"]
SMART_MISSING = ["/auth/client_id", "/auth/client_secret", "/auth/token_url"]
PRIVATE = "https://internal.partner.test/t"
SMART = {
    "kind": "smart",
    "client_id": "tidings",
    "client_secret": "very-secret-client",
    "token_url": "https://hooks.partner.test/token",
    "scope": "system/*.read",
}


async def stored(api: Api) -> list[UpstreamServer]:
    async with transaction(api.app.extensions["tidings"].sessions) as session:
        return list((await session.exec(select(UpstreamServer))).all())


async def test_register_read_list_delete(api: Api) -> None:
    admin = await api.key("ops", "admin")
    body = {"organization": "acme", "base_url": BASE + "/", "auth": SMART, "poll_seconds": 5}
    created = await api.call("POST", "/v1/upstreams", admin, json=body)
    assert created.status_code == 201
    shown = await created.get_json()
    assert shown["base_url"] == BASE  # the trailing slash is dropped
    assert shown["auth"] == {"kind": "smart"}
    assert shown["poll_seconds"] == 5 and shown["failures"] == 0
    assert shown["cursor"].endswith("Z") and shown["last_polled_at"] is None
    one = await api.call("GET", f"/v1/upstreams/{shown['id']}", admin)
    assert await one.get_json() == shown
    listed = await (await api.call("GET", "/v1/upstreams", admin)).get_json()
    assert listed == {"data": [shown]}
    for response in (created, one):
        assert "very-secret-client" not in await response.get_data(as_text=True)
    assert (await api.call("DELETE", f"/v1/upstreams/{shown['id']}", admin)).status_code == 204
    assert (await api.call("GET", f"/v1/upstreams/{shown['id']}", admin)).status_code == 404
    assert (await api.call("DELETE", f"/v1/upstreams/{shown['id']}", admin)).status_code == 404


async def test_credentials_are_encrypted_at_rest(api: Api) -> None:
    admin = await api.key("ops", "admin")
    body = {"organization": "acme", "base_url": BASE, "auth": {"kind": "bearer", "token": "t0k"}}
    assert (await api.call("POST", "/v1/upstreams", admin, json=body)).status_code == 201
    (row,) = await stored(api)
    assert row.auth_kind == "bearer" and row.auth_secret and "t0k" not in row.auth_secret
    auth = open_auth(row.auth_kind, row.auth_secret, SecretBox(SECRET_KEY))
    assert auth.kind is AuthKind.BEARER and auth.token == "t0k"


@pytest.mark.parametrize("role", ["partner", "reader", "source"])
async def test_only_admins(api: Api, role: str) -> None:
    key = await api.key("acme", role)
    body = {"organization": "acme", "base_url": BASE}
    assert (await api.call("POST", "/v1/upstreams", key, json=body)).status_code == 403
    assert (await api.call("GET", "/v1/upstreams", key)).status_code == 403
    assert (await api.call("GET", "/v1/upstreams/ups_x", key)).status_code == 403
    assert (await api.call("DELETE", "/v1/upstreams/ups_x", key)).status_code == 403
    assert await stored(api) == []


@pytest.mark.parametrize(
    ("change", "pointers", "says"),
    [
        ({"base_url": "ftp://fhir.example/r4"}, ["/base_url"], "scheme"),
        ({"base_url": "https://u:p@hooks.partner.test/fhir"}, ["/base_url"], "credentials"),
        ({"base_url": "https://hooks.partner.test/fhir?x=1"}, ["/base_url"], "query"),
        ({"base_url": "https://internal.partner.test/fhir"}, ["/base_url"], "10.1.2.3"),
        ({"base_url": "https://metadata.partner.test/"}, ["/base_url"], "169.254.169.254"),
        ({"base_url": "https://nowhere.test/fhir"}, ["/base_url"], "does not resolve"),
        ({"poll_seconds": 0}, ["/poll_seconds"], "greater than or equal to 1"),
        ({"organization": "Not An Id"}, ["/organization"], "pattern"),
        ({"auth": {"kind": "bearer"}}, ["/auth/token"], "required for bearer"),
        ({"auth": {"kind": "basic", "token": "x"}}, BASIC_MISSING, "required"),
        ({"auth": {"kind": "smart"}}, SMART_MISSING, "required"),
        ({"auth": SMART | {"token_url": PRIVATE}}, ["/auth/token_url"], "10.1.2.3"),
        ({"auth": {"kind": "oauth"}}, ["/auth/kind"], "'none', 'bearer', 'basic' or 'smart'"),
        ({"since": "2026-01-01T00:00:00"}, ["/since"], "time zone"),
        ({"colour": "blue"}, ["/colour"], "unknown field"),
    ],
)
async def test_bad_registrations_are_refused_with_pointers(
    api: Api, change: dict[str, Any], pointers: list[str], says: str
) -> None:
    admin = await api.key("ops", "admin")
    body = {"organization": "acme", "base_url": BASE} | change
    response = await api.call("POST", "/v1/upstreams", admin, json=body)
    assert response.status_code == 422
    problem = await response.get_json()
    assert sorted(error["pointer"] for error in problem["errors"]) == sorted(pointers)
    assert says in json.dumps(problem)
    assert await stored(api) == []


async def test_unknown_id_is_404(api: Api) -> None:
    admin = await api.key("ops", "admin")
    response = await api.call("GET", "/v1/upstreams/ups_nope", admin)
    assert response.status_code == 404
    assert response.content_type == "application/problem+json"

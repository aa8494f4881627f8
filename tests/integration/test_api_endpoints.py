"""`/v1/endpoints`: registration, reading, changes, secrets, and every refusal."""

from __future__ import annotations

import ipaddress
from datetime import timedelta
from typing import Any

import pytest

from app.api.principal_cache import KEY_CACHE_SECONDS
from app.domain import secrets
from app.store.admin import revoke_api_key
from app.store.db import transaction
from app.store.tenants import select_principal
from tests.integration.conftest import Api

RECEIVER = "http://127.0.0.1:9/hooks"


async def create(api: Api, key: str, **fields: Any) -> Any:
    body = {"url": RECEIVER, **fields}
    return await api.call("POST", "/v1/endpoints", key, json=body)


async def count_endpoints(api: Api, key: str) -> int:
    response = await api.call("GET", "/v1/endpoints?limit=250", key)
    return len((await response.get_json())["data"])


async def test_register_returns_a_standard_webhooks_secret(api: Api) -> None:
    key = await api.key("acme")
    response = await create(
        api, key, description="EHR sync", event_types=["*"], metadata={"team": "ops"}
    )
    assert response.status_code == 201
    body = await response.get_json()
    assert body["id"].startswith("ep_")
    assert body["secret"].startswith("whsec_")
    assert body["organization"] == "acme"
    assert body["metadata"] == {"team": "ops"}
    assert body["signature_scheme"] == "standard-webhooks"
    read = await (await api.call("GET", f"/v1/endpoints/{body['id']}", key)).get_json()
    assert "secret" not in read
    assert read["url"] == RECEIVER


async def test_list_is_paginated_with_signed_cursors(api: Api) -> None:
    key = await api.key("acme")
    created = [(await (await create(api, key)).get_json())["id"] for _ in range(5)]
    seen: list[str] = []
    path = "/v1/endpoints?limit=2"
    while path:
        page = await (await api.call("GET", path, key)).get_json()
        seen += [item["id"] for item in page["data"]]
        path = f"/v1/endpoints?limit=2&cursor={page['next_cursor']}" if page["next_cursor"] else ""
    assert seen == created


async def test_a_tampered_cursor_is_a_400(api: Api) -> None:
    key = await api.key("acme")
    for _ in range(3):
        await create(api, key)
    page = await (await api.call("GET", "/v1/endpoints?limit=1", key)).get_json()
    tampered = page["next_cursor"][:-2] + ("AA" if not page["next_cursor"].endswith("AA") else "BB")
    response = await api.call("GET", f"/v1/endpoints?cursor={tampered}", key)
    assert response.status_code == 400
    assert response.content_type == "application/problem+json"


@pytest.mark.parametrize("query", ["limit=0", "limit=1000", "limit=abc", "colour=blue"])
async def test_bad_list_parameters_are_422(api: Api, query: str) -> None:
    key = await api.key("acme")
    response = await api.call("GET", f"/v1/endpoints?{query}", key)
    assert response.status_code == 422
    body = await response.get_json()
    assert body["errors"][0]["pointer"].startswith("query:/")


async def test_update_changes_only_what_is_sent(api: Api) -> None:
    key = await api.key("acme")
    endpoint = await (await create(api, key, description="before", ordered=True)).get_json()
    response = await api.call(
        "PATCH",
        f"/v1/endpoints/{endpoint['id']}",
        key,
        json={"description": "after", "event_types": ["ping"]},
    )
    assert response.status_code == 200
    body = await response.get_json()
    assert (body["description"], body["event_types"], body["ordered"]) == ("after", ["ping"], True)


async def test_delete_removes_the_endpoint(api: Api) -> None:
    key = await api.key("acme")
    endpoint = await (await create(api, key)).get_json()
    assert (await api.call("DELETE", f"/v1/endpoints/{endpoint['id']}", key)).status_code == 204
    assert (await api.call("GET", f"/v1/endpoints/{endpoint['id']}", key)).status_code == 404
    assert (await api.call("DELETE", f"/v1/endpoints/{endpoint['id']}", key)).status_code == 404
    assert await count_endpoints(api, key) == 0


async def test_rotation_keeps_the_old_secret_through_the_grace_period(api: Api) -> None:
    key = await api.key("acme")
    endpoint = await (await create(api, key)).get_json()
    path = f"/v1/endpoints/{endpoint['id']}"
    rotated = await (
        await api.call("POST", f"{path}/secret/rotate", key, json={"grace_seconds": 600})
    ).get_json()
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != endpoint["secret"]
    current = await (await api.call("GET", f"{path}/secret", key)).get_json()
    assert current["secret"] == rotated["secret"]
    assert current["previous_expires_at"] is not None
    api.clock.advance(601)
    later = await (await api.call("GET", f"{path}/secret", key)).get_json()
    assert later["previous_expires_at"] is None


async def test_rotation_without_a_body_uses_the_default_grace(api: Api) -> None:
    key = await api.key("acme")
    endpoint = await (await create(api, key)).get_json()
    response = await api.call("POST", f"/v1/endpoints/{endpoint['id']}/secret/rotate", key)
    assert response.status_code == 200
    expected = api.clock.now + timedelta(days=1)
    assert (await response.get_json())["previous_expires_at"] == expected.isoformat()


async def test_bring_your_own_secret_is_checked(api: Api) -> None:
    key = await api.key("acme")
    good = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    assert (await (await create(api, key, secret=good)).get_json())["secret"] == good
    response = await create(api, key, secret="not-a-secret")
    assert response.status_code == 422
    assert (await response.get_json())["errors"][0]["pointer"] == "/secret"


async def test_ed25519_endpoints_show_a_public_key_only(api: Api) -> None:
    key = await api.key("acme")
    body = await (await create(api, key, signature_scheme="ed25519")).get_json()
    assert body["secret"] is None
    assert body["public_key"].startswith("whpk_")
    secret = await (await api.call("GET", f"/v1/endpoints/{body['id']}/secret", key)).get_json()
    assert secret == {"secret": None, "public_key": body["public_key"], "previous_expires_at": None}


async def test_credentials_in_the_url_are_kept_but_never_shown(api: Api) -> None:
    key = await api.key("acme")
    body = await (
        await create(api, key, url="http://bot:s3cr3t-pw@127.0.0.1:9/fhir/Bot/1/$execute")
    ).get_json()
    assert body["url"] == "http://****:****@127.0.0.1:9/fhir/Bot/1/$execute"
    listed = await (await api.call("GET", "/v1/endpoints", key)).get_json()
    assert "s3cr3t" not in str(listed)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://127.0.0.1/x", "scheme"),
        ("127.0.0.1/hooks", "scheme"),
        ("http:///nohost", "no host"),
        ("http://127.0.0.1:99999/", "valid URL"),
        ("http://bad_host!.test/", "valid host name"),
        ("http://127.0.0.1/#frag", "fragment"),
        ("http://nowhere.invalid/", "does not resolve"),
        ("http://10.1.2.3/", "10.1.2.3"),
        ("http://internal.partner.test/", "10.1.2.3"),
        ("http://169.254.169.254/latest/meta-data", "169.254.169.254"),
        ("http://metadata.partner.test/", "169.254.169.254"),
        ("http://[fe80::1]/", "fe80::1"),
        ("http://[fd00::1]/", "fd00::1"),
        ("http://192.168.1.10/", "192.168.1.10"),
    ],
)
async def test_bad_urls_are_refused_and_nothing_is_stored(api: Api, url: str, reason: str) -> None:
    key = await api.key("acme")
    response = await create(api, key, url=url)
    assert response.status_code == 422
    body = await response.get_json()
    assert body["errors"][0]["pointer"] == "/url"
    assert reason in body["errors"][0]["detail"]
    assert await count_endpoints(api, key) == 0


async def test_loopback_is_refused_unless_allowed(api: Api) -> None:
    key = await api.key("acme")
    api.app.extensions["tidings"].allowed_networks = ()
    for url in (
        "http://127.0.0.1/",
        "http://receiver.local.test/",
        "http://[::1]/",
        "http://mapped.partner.test/",
        "http://[::ffff:127.0.0.1]/",
    ):
        response = await create(api, key, url=url)
        assert response.status_code == 422, url
    api.app.extensions["tidings"].allowed_networks = (ipaddress.ip_network("127.0.0.0/8"),)
    assert (await create(api, key, url="http://receiver.local.test/")).status_code == 201


async def test_https_can_be_required(api: Api) -> None:
    key = await api.key("acme")
    api.app.extensions["tidings"].require_https = True
    response = await create(api, key, url="http://hooks.partner.test/")
    assert response.status_code == 422
    assert "https" in (await response.get_json())["errors"][0]["detail"]
    assert (await create(api, key, url="https://hooks.partner.test/")).status_code == 201


@pytest.mark.parametrize(
    ("headers", "pointer"),
    [
        ({"Connection": "close"}, "/headers/Connection"),
        ({"Transfer-Encoding": "chunked"}, "/headers/Transfer-Encoding"),
        ({"webhook-signature": "v1,forged"}, "/headers/webhook-signature"),
        ({"Content-Type": "text/plain"}, "/headers/Content-Type"),
        ({"Authorization": "Bearer x"}, "/headers/Authorization"),
        ({"X-Ok": "line\r\nbreak"}, "/headers/X-Ok"),
        ({"Bad Name": "x"}, "/headers/Bad Name"),
    ],
)
async def test_unsafe_custom_headers_are_refused(
    api: Api, headers: dict[str, str], pointer: str
) -> None:
    key = await api.key("acme")
    response = await create(api, key, headers=headers)
    assert response.status_code == 422
    assert (await response.get_json())["errors"][0]["pointer"] == pointer
    assert await count_endpoints(api, key) == 0


async def test_safe_custom_headers_are_kept(api: Api) -> None:
    key = await api.key("acme")
    body = await (await create(api, key, headers={"X-Partner-Tenant": "42"})).get_json()
    assert body["headers"] == {"X-Partner-Tenant": "42"}


@pytest.mark.parametrize(
    ("fields", "pointer"),
    [
        ({"colour": "blue"}, "/colour"),
        ({"event_types": []}, "/event_types"),
        ({"timeout_seconds": 0}, "/timeout_seconds"),
        ({"timeout_seconds": 31}, "/timeout_seconds"),
        ({"rate_limit": 0}, "/rate_limit"),
        ({"content": "everything"}, "/content"),
        ({"payload_format": "xml"}, "/payload_format"),
        ({"signature_scheme": "md5"}, "/signature_scheme"),
        ({"organization": "other"}, "/organization"),
        ({"url": 42}, "/url"),
    ],
)
async def test_invalid_fields_are_422_with_a_pointer(
    api: Api, fields: dict[str, Any], pointer: str
) -> None:
    key = await api.key("acme")
    response = await create(api, key, **fields)
    assert response.status_code == 422
    body = await response.get_json()
    assert response.content_type == "application/problem+json"
    assert pointer in [error["pointer"] for error in body["errors"]]
    assert await count_endpoints(api, key) == 0


async def test_malformed_json_is_a_400(api: Api) -> None:
    key = await api.key("acme")
    response = await api.call(
        "POST", "/v1/endpoints", key, data=b'{"url": ', headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert "line 1" in (await response.get_json())["detail"]
    assert await count_endpoints(api, key) == 0


async def test_deeply_nested_json_is_a_400(api: Api) -> None:
    key = await api.key("acme")
    body = '{"url": "http://127.0.0.1/", "metadata": ' + '{"a": ' * 200 + "1" + "}" * 201
    response = await api.call(
        "POST",
        "/v1/endpoints",
        key,
        data=body.encode(),
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert await count_endpoints(api, key) == 0


async def test_a_body_that_is_not_an_object_is_a_422(api: Api) -> None:
    key = await api.key("acme")
    response = await api.call("POST", "/v1/endpoints", key, json=["http://127.0.0.1/"])
    assert response.status_code == 422


async def test_wrong_content_type_is_a_415(api: Api) -> None:
    key = await api.key("acme")
    response = await api.call(
        "POST",
        "/v1/endpoints",
        key,
        data=b"url=http://127.0.0.1/",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 415
    assert await count_endpoints(api, key) == 0


async def test_an_oversized_body_is_a_413(api: Api) -> None:
    key = await api.key("acme")
    api.app.config["MAX_CONTENT_LENGTH"] = 2048
    body = {"url": RECEIVER, "description": "x" * 999, "metadata": {"blob": "y" * 5000}}
    response = await api.call("POST", "/v1/endpoints", key, json=body)
    assert response.status_code == 413
    assert response.content_type == "application/problem+json"
    api.app.config["MAX_CONTENT_LENGTH"] = 1024 * 1024
    assert await count_endpoints(api, key) == 0


@pytest.mark.parametrize("endpoint_id", ["nope", "ep_doesnotexist000000", "../../etc", "ep_%00"])
async def test_unknown_ids_are_404(api: Api, endpoint_id: str) -> None:
    key = await api.key("acme")
    response = await api.call("GET", f"/v1/endpoints/{endpoint_id}", key)
    assert response.status_code == 404
    assert response.content_type == "application/problem+json"


@pytest.mark.parametrize(
    ("header", "status"),
    [(None, 401), ("Bearer", 401), ("Basic abc", 401), ("Bearer tdk_unknown", 401)],
)
async def test_requests_without_a_valid_key_are_401(
    api: Api, header: str | None, status: int
) -> None:
    headers = {"Authorization": header} if header else {}
    response = await api.client.get("/v1/endpoints", headers=headers)
    assert response.status_code == status
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    ("role", "method", "path", "allowed"),
    [
        ("reader", "GET", "/v1/endpoints", True),
        ("reader", "POST", "/v1/endpoints", False),
        ("source", "GET", "/v1/endpoints", False),
        ("source", "POST", "/v1/endpoints", False),
        ("admin", "POST", "/v1/endpoints", True),
    ],
)
async def test_roles_limit_what_a_key_may_do(
    api: Api, role: str, method: str, path: str, allowed: bool
) -> None:
    key = await api.key("acme", role)
    response = await api.call(
        method, path, key, json={"url": RECEIVER} if method == "POST" else None
    )
    assert (response.status_code < 400) is allowed
    if not allowed:
        assert response.status_code == 403


async def test_account_keys_see_only_their_account(api: Api) -> None:
    north = await api.key("acme", account="north")
    south = await api.key("acme", account="south")
    org_wide = await api.key("acme")
    endpoint = await (await create(api, north)).get_json()
    assert endpoint["account"] == "north"
    assert (await api.call("GET", f"/v1/endpoints/{endpoint['id']}", south)).status_code == 404
    assert (await api.call("GET", f"/v1/endpoints/{endpoint['id']}", org_wide)).status_code == 200
    response = await create(api, north, account="south")
    assert response.status_code == 422


async def test_revoked_keys_stop_working(api: Api) -> None:
    key = await api.key("acme")
    assert (await api.call("GET", "/v1/endpoints", key)).status_code == 200
    async with transaction(api.app.extensions["tidings"].sessions) as session:
        principal = await select_principal(session, secrets.hash_api_key(key))
    assert principal is not None
    assert await revoke_api_key(api.settings.database_url, principal.key_id)
    api.clock.advance(KEY_CACHE_SECONDS)  # each process may trust a key it saw this long
    assert (await api.call("GET", "/v1/endpoints", key)).status_code == 401


async def test_nul_characters_are_refused(api: Api) -> None:
    key = await api.key("acme")
    response = await api.call(
        "POST",
        "/v1/endpoints",
        key,
        data=b'{"url": "http://127.0.0.1/", "description": "a\\u0000b"}',
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert await count_endpoints(api, key) == 0


@pytest.mark.parametrize(
    ("fields", "pointer", "fragment"),
    [
        ({"event_types": ["no.such.event"]}, "/event_types/0", "unknown event type"),
        ({"event_types": ["ping", "nothing.*"]}, "/event_types/1", "matches no event type"),
        ({"event_types": ["bad pattern*"]}, "/event_types/0", "not a valid pattern"),
        ({"filter": "Patient?unknownparam=1"}, "/filter", "unknownparam"),
        ({"filter": "Patient?name.family=x"}, "/filter", "Patient"),
        ({"filter": "Nonsense?x=1"}, "/filter", "Nonsense"),
    ],
)
async def test_event_types_and_filters_are_checked(
    api: Api, fields: dict[str, Any], pointer: str, fragment: str
) -> None:
    key = await api.key("acme")
    response = await create(api, key, **fields)
    assert response.status_code == 422
    [error] = (await response.get_json())["errors"]
    assert error["pointer"] == pointer
    assert fragment in error["detail"]
    assert await count_endpoints(api, key) == 0


async def test_catalog_patterns_and_fhir_filters_are_accepted(api: Api) -> None:
    key = await api.key("acme")
    response = await create(
        api,
        key,
        event_types=["encounter.*", "records.sync.failed"],
        filter="Encounter?status=finished&subject=Patient/p1",
    )
    assert response.status_code == 201
    body = await response.get_json()
    assert body["event_types"] == ["encounter.*", "records.sync.failed"]


async def test_an_escaped_backslash_before_u0000_is_not_a_nul(api: Api) -> None:
    key = await api.key("acme")
    body = b'{"url": "http://127.0.0.1:9/", "description": "path C:\\\\u0000dir"}'
    response = await api.call(
        "POST", "/v1/endpoints", key, data=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 201
    assert (await response.get_json())["description"] == "path C:\\u0000dir"

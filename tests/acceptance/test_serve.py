"""`tidings` as a newcomer runs it: keys, serve, register an endpoint, docs, bad settings."""

from __future__ import annotations

import sqlite3

import httpx
import pytest

from tests.acceptance.conftest import Tidings, stop

pytestmark = pytest.mark.acceptance


def test_register_an_endpoint_against_a_running_server(tidings: Tidings) -> None:
    key = tidings.key("acme", "partner")
    assert key.startswith("tdk_")
    process, base = tidings.start("serve")
    try:
        headers = {"Authorization": f"Bearer {key}"}
        created = httpx.post(
            f"{base}/v1/endpoints",
            headers=headers,
            json={"url": "http://user:pw-secret@127.0.0.1:9/hook"},
        )
        assert created.status_code == 201, created.text
        body = created.json()
        assert body["secret"].startswith("whsec_")
        listed = httpx.get(f"{base}/v1/endpoints", headers=headers).json()
        assert [item["id"] for item in listed["data"]] == [body["id"]]
        assert httpx.get(f"{base}/readyz").json() == {"status": "ready"}
        spec = httpx.get(f"{base}/openapi.json").json()
        assert "/v1/endpoints" in spec["paths"]
        assert httpx.get(f"{base}/docs").status_code == 200
    finally:
        output = stop(process)
    assert "pw-secret" not in output and body["secret"] not in output
    raw = (tidings.workdir / "tidings.db").read_bytes()
    for suffix in ("-wal", "-shm"):
        path = tidings.workdir / f"tidings.db{suffix}"
        raw += path.read_bytes() if path.exists() else b""
    secret_body = body["secret"].removeprefix("whsec_").encode()
    assert secret_body not in raw and b"pw-secret" not in raw and key.encode() not in raw
    rows = (
        sqlite3.connect(tidings.workdir / "tidings.db")
        .execute("select count(*) from endpoint_secret")
        .fetchone()
    )
    assert rows == (1,)


def test_a_bad_setting_stops_start_up_with_one_line(tidings: Tidings) -> None:
    tidings.env["TIDINGS_RETRY_SCHEDULE"] = "5,soon"
    result = tidings.run("serve", "--port", "1", check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [lines[0]] and "TIDINGS_RETRY_SCHEDULE" in lines[0]


def test_a_secret_key_is_generated_on_first_run(tidings: Tidings) -> None:
    del tidings.env["TIDINGS_SECRET_KEY"]
    result = tidings.run("migrate")
    assert "TIDINGS_SECRET_KEY is not set" in result.stderr
    assert (tidings.workdir / ".tidings-secret").exists()


def test_keys_can_be_revoked(tidings: Tidings) -> None:
    result = tidings.run("keys", "create", "--org", "acme", "--role", "reader")
    key_id = result.stdout.split()[3]
    assert key_id.startswith("key_")
    assert tidings.run("keys", "revoke", key_id).returncode == 0
    assert tidings.run("keys", "revoke", key_id, check=False).returncode == 1


@pytest.mark.parametrize("org", ["Acme Corp", "a/b", "", "x" * 65])
def test_bad_organization_ids_are_refused(tidings: Tidings, org: str) -> None:
    result = tidings.run("keys", "create", "--org", org, "--role", "partner", check=False)
    assert result.returncode == 2
    assert "--org" in result.stderr


def test_a_broken_catalog_stops_start_up_naming_file_entry_and_reason(tidings: Tidings) -> None:
    catalog = tidings.workdir / "broken.toml"
    catalog.write_text('[[event_types]]\nname = "lab.result"\npayload_format = "telegram"\n')
    tidings.env["TIDINGS_CATALOG_PATHS"] = str(catalog)
    for command in ("serve", "worker"):
        args = (command, "--port", "1") if command == "serve" else (command,)
        result = tidings.run(*args, check=False)
        assert result.returncode == 2
        [line] = result.stderr.strip().splitlines()[-1:]
        assert str(catalog) in line and "lab.result" in line and "telegram" in line
        assert "Traceback" not in result.stderr

"""Secrets stay secret: none in the database in clear, none in the logs, compared in constant time.

The flow registers endpoints with signing secrets (generated and brought along, HMAC and ed25519)
and credentials in the URL, rotates a secret, registers an upstream with a bearer token, publishes,
delivers, pings, and then reads back every column of every table (and, on SQLite, the raw database
and WAL files) looking for any secret, credential or API key in clear.
"""

from __future__ import annotations

import ast
import base64
import inspect
import logging
import random
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from app.domain import secrets
from app.ingest import fhir_push
from app.runtime import build_runtime
from app.store.db import transaction
from tests.conftest import SECRET_KEY
from tests.integration.conftest import Api
from tests.receivers import running_receiver

BROUGHT_SECRET = "whsec_" + base64.b64encode(b"partner-chosen-secret-32-bytes!!").decode()
URL_PASSWORD = "pa55-in-the-url-Zq8"
UPSTREAM_TOKEN = "upstream-bearer-token-Hk3v"


@dataclass
class Secrets:
    """Everything that must never be readable at rest or in a log."""

    values: set[str] = field(default_factory=set)

    def add(self, *values: str) -> None:
        for value in values:
            self.values.add(value)
            if value.startswith("whsec_"):
                self.values.add(value.removeprefix("whsec_"))  # the key material itself

    def found_in(self, text: str) -> list[str]:
        return sorted(value for value in self.values if value in text)


async def run_the_flow(api: Api) -> Secrets:
    """Register, rotate, publish and deliver; every secret seen on the way."""
    found = Secrets()
    partner, source, admin = (
        await api.key("acme"),
        await api.key("acme", "source"),
        await api.key("ops", "admin"),
    )
    found.add(partner, source, admin, SECRET_KEY, URL_PASSWORD, UPSTREAM_TOKEN, BROUGHT_SECRET)
    services = api.app.extensions["tidings"]
    runtime = build_runtime(
        api.settings, sessions=services.sessions, catalog=services.catalog, clock=api.clock
    )
    runtime.worker._rng = random.Random(1)
    async with running_receiver() as receiver:
        hook = receiver.url("/hook").replace("http://", f"http://bot:{URL_PASSWORD}@")
        bodies = [
            {"url": hook},
            {"url": receiver.url("/own"), "secret": BROUGHT_SECRET},
            {"url": receiver.url("/ed"), "signature_scheme": "ed25519"},
            {"url": receiver.url("/medplum"), "signature_scheme": "medplum"},
        ]
        endpoints = [await created(api, partner, body) for body in bodies]
        found.add(*(endpoint["secret"] for endpoint in endpoints if endpoint["secret"]))
        for endpoint in endpoints:
            path = f"/v1/endpoints/{endpoint['id']}/secret/rotate"
            rotated = await api.call("POST", path, partner, json={})
            assert rotated.status_code == 200, await rotated.get_data(as_text=True)
            found.add(*filter(None, [(await rotated.get_json()).get("secret")]))
        found.add(*await ed25519_private_keys(api))
        data = {"connection_id": "c1", "patient": "Patient/p1"}
        event = {"type": "records.sync.completed", "data": data}
        assert (await api.call("POST", "/v1/events", source, json=event)).status_code == 202
        assert await runtime.worker.run_once() == len(endpoints)
        [delivered] = [r for r in receiver.at("/hook") if r.headers.get("Authorization")][:1]
        assert URL_PASSWORD in base64.b64decode(delivered.headers["Authorization"][6:]).decode()
    await runtime.sender.aclose()
    upstream = {
        "organization": "acme",
        "base_url": "https://hooks.partner.test/fhir",
        "auth": {"kind": "bearer", "token": UPSTREAM_TOKEN},
    }
    response = await api.call("POST", "/v1/upstreams", admin, json=upstream)
    assert response.status_code == 201, await response.get_data(as_text=True)
    return found


async def created(api: Api, key: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await api.call("POST", "/v1/endpoints", key, json=body)
    assert response.status_code == 201, await response.get_data(as_text=True)
    endpoint: dict[str, Any] = await response.get_json()
    return endpoint


async def ed25519_private_keys(api: Api) -> list[str]:
    """The ed25519 signing keys, decrypted the way the worker does: they must not be stored so."""
    box = secrets.SecretBox(SECRET_KEY)
    rows = await dump(api, "endpoint_secret")
    return [box.decrypt(str(row["secret"])) for row in rows]


async def dump(api: Api, table: str) -> list[dict[str, Any]]:
    async with transaction(api.app.extensions["tidings"].sessions) as session:
        result = await session.exec(sa.text(f'SELECT * FROM "{table}"'))
        return [dict(row._mapping) for row in result.all()]


async def every_table(api: Api) -> list[str]:
    engine = api.app.extensions["tidings"].sessions.kw["bind"]
    async with engine.connect() as connection:
        names: list[str] = await connection.run_sync(
            lambda sync: sa.inspect(sync).get_table_names()
        )
    return names


async def test_no_secret_is_stored_in_clear(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    found = await run_the_flow(api)
    tables = await every_table(api)
    assert {"endpoint", "endpoint_secret", "api_key", "attempt", "upstream_server"} <= set(tables)
    for table in tables:
        for row in await dump(api, table):
            text = " ".join(repr(value) for value in row.values())
            assert found.found_in(text) == [], f"{table} holds a secret in clear"
    if api.settings.is_sqlite:
        database = Path(api.settings.database_url.split("///", 1)[1])
        for path in database.parent.glob(database.name + "*"):  # the file, -wal and -shm
            raw = path.read_bytes().decode("latin-1")
            assert found.found_in(raw) == [], f"{path.name} holds a secret in clear"
    logged = "\n".join(logged_text(record) for record in caplog.records)
    assert caplog.records, "the flow logged nothing at DEBUG: the check would prove nothing"
    assert found.found_in(logged) == [], "a secret was logged"


def logged_text(record: logging.LogRecord) -> str:
    return " ".join([record.getMessage(), repr(record.args), record.exc_text or ""])


async def test_api_keys_are_stored_as_hashes(api: Api) -> None:
    key = await api.key("acme")
    [row] = await dump(api, "api_key")
    assert row["key_hash"] == secrets.hash_api_key(key) and key not in repr(row)


# --- constant-time comparisons ---------------------------------------------------------------


def calls_in(function: Any) -> set[str]:
    """Dotted names of everything `function` calls."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    return {ast.unparse(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}


def test_secrets_are_compared_in_constant_time() -> None:
    assert "hmac.compare_digest" in calls_in(secrets.keys_equal)
    assert "secrets.keys_equal" in calls_in(fhir_push.signature_matches)


SECRET_NAMES = ("secret", "signature", "token", "password", "api_key", "key_hash", "digest")
# `==` on a secret-looking name that is safe, and why.
REVIEWED = {
    "ApiKey.key_hash == key_hash": "an indexed SQL lookup of the SHA-256 of a 256-bit random key",
    "kept[0] == row.auth_secret": "a cache check between two ciphertexts read from the database",
}


def test_no_secret_is_compared_with_equals() -> None:
    """`==` on a secret leaks, through timing, where it differs; `keys_equal` does not."""
    offenders = []
    for path in sorted(Path(secrets.__file__).parents[1].rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare) and secret_compared_with_equals(node):
                offenders.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    assert offenders == [], "compare secrets with secrets.keys_equal (or review and list here)"


def secret_compared_with_equals(node: ast.Compare) -> bool:
    if (
        not any(isinstance(op, ast.Eq | ast.NotEq) for op in node.ops)
        or ast.unparse(node) in REVIEWED
    ):
        return False
    operands = [ast.unparse(operand) for operand in [node.left, *node.comparators]]
    if any(public_constant(operand) for operand in operands):
        return False  # `secret == MASKED_SECRET`: timing reveals only what is public already
    names = [operand.lower() for operand in operands]
    return any(
        word in name and "scheme" not in name and not name.endswith("_id")
        for name in names
        for word in SECRET_NAMES
    )


def public_constant(operand: str) -> bool:
    """A literal, or a module constant such as `_TOKEN_VERSION` or `SignatureScheme.ED25519`."""
    last = operand.rsplit(".", 1)[-1]
    return operand[:1] in "\"'0123456789" or last.lstrip("_").isupper()

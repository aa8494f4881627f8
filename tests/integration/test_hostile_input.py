"""Hostile input: whatever a client sends, the API never answers 5xx, and a refusal stores nothing.

- schemathesis drives every operation of `/openapi.json` in-process (ASGI), valid and invalid
  data alike, with a valid key of the role the operation needs;
- hypothesis throws malformed FHIR pushes (broken Bundles, wrong types, huge strings, deep
  nesting, bytes that are not JSON) and malformed events at the ingest routes and counts the
  stored events before and after each refusal;
- a name that resolved to a public address at registration and resolves to loopback at send time
  (DNS rebinding) is refused at connect time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
from collections import Counter
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import hypothesis.strategies as st
import pytest
import schemathesis
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from quart.typing import TestClientProtocol as Client
from schemathesis.python.asgi import shutdown_lifespans

from app.config import Settings
from app.domain.models import Role
from app.factory import create_app
from app.runtime import build_runtime
from app.store.admin import create_api_key
from app.store.db import SessionFactory, transaction
from tests.conftest import FakeClock
from tests.integration.conftest import Api, fake_resolve
from tests.receivers import running_receiver

T = TypeVar("T")
HYPOTHESIS = settings(
    max_examples=120,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on a fresh loop of this (loop-less) thread."""
    return asyncio.run(coroutine)


# --- schemathesis over the whole OpenAPI document -------------------------------------------


@SQLITE_ONLY
def test_no_operation_answers_a_server_error(settings: Settings) -> None:
    keys = {role: run_sync(key_for(settings, role)) for role in ("partner", "source", "admin")}
    app = create_app(settings, clock=FakeClock(), resolve=fake_resolve)
    api_schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    try:
        operations = [result.ok() for result in api_schema.get_all_operations()]
        assert len(operations) >= 30, "the OpenAPI document lists every route"
        statuses = {mode: Counter[int]() for mode in schemathesis.GenerationMode}
        for operation in operations:
            key = keys[role_for(operation.method, operation.path)]
            for mode in schemathesis.GenerationMode:
                answer_without_server_errors(operation.as_strategy(mode), key, statuses[mode])
    finally:
        shutdown_lifespans()  # the app's lifespan, started by schemathesis, ends with the test
    valid = statuses[schemathesis.GenerationMode.POSITIVE]
    assert valid[401] == 0, "valid cases carry a valid key (invalid ones may drop it)"
    seen = valid.keys() | statuses[schemathesis.GenerationMode.NEGATIVE].keys()
    assert {200, 400, 404, 422} <= seen, f"the fuzzer did not get far: {statuses}"


def answer_without_server_errors(
    cases: st.SearchStrategy[schemathesis.Case], key: str, statuses: Counter[int]
) -> None:
    """Send generated cases of one operation with a valid key: none may answer 5xx."""

    @given(case=cases)
    @settings(
        max_examples=12, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    def call(case: schemathesis.Case) -> None:
        response = case.call(headers={"Authorization": f"Bearer {key}"})
        statuses[response.status_code] += 1
        label = f"{case.method} {case.formatted_path}"
        assert response.status_code < 500, f"{label}: {response.status_code} {response.text}"

    call()


async def key_for(settings: Settings, role: str) -> str:
    key, _ = await create_api_key(settings.database_url, "acme", Role(role), None)
    return key


def role_for(method: str, path: str) -> str:
    """The role whose key the operation needs, so the fuzzer gets past authorization."""
    if path.startswith("/v1/upstreams"):
        return "admin"
    if path.startswith("/v1/ingest") or (method.upper() == "POST" and path == "/v1/events"):
        return "source"
    return "partner"


# --- hypothesis against the two ingest routes ------------------------------------------------


@dataclass
class SyncApi:
    """The app on a private event loop, called from a synchronous hypothesis test."""

    loop: asyncio.AbstractEventLoop
    client: Client
    sessions: SessionFactory
    key: str

    def post(self, path: str, body: bytes, content_type: str, **headers: str) -> int:
        all_headers = {
            "Authorization": f"Bearer {self.key}",
            "Content-Type": content_type,
            **headers,
        }
        response = self.loop.run_until_complete(
            self.client.post(path, data=body, headers=all_headers)
        )
        return response.status_code

    def stored_events(self) -> int:
        return self.loop.run_until_complete(self._count())

    async def _count(self) -> int:
        async with transaction(self.sessions) as session:
            count: int = (await session.exec(sa.text("SELECT count(*) FROM event"))).one()[0]
            return count


@pytest.fixture
def sync_api(settings: Settings) -> Iterator[SyncApi]:
    loop = asyncio.new_event_loop()
    app = create_app(settings, clock=FakeClock(), resolve=fake_resolve)
    test_app = app.test_app()
    loop.run_until_complete(test_app.startup())
    try:
        yield SyncApi(
            loop=loop,
            client=test_app.test_client(),
            sessions=app.extensions["tidings"].sessions,
            key=loop.run_until_complete(key_for(settings, "source")),
        )
    finally:
        loop.run_until_complete(test_app.shutdown())
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
resource_types = st.sampled_from(
    ["Patient", "Encounter", "Observation", "Bundle", "Subscription", "", "patient", "Nope"]
)
resources = st.fixed_dictionaries(
    {"resourceType": resource_types | json_values},
    optional={
        "id": st.text(max_size=70) | json_values,
        "meta": st.fixed_dictionaries(
            {}, optional={"versionId": st.text(max_size=5) | json_values, "lastUpdated": st.text()}
        )
        | json_values,
        "status": st.sampled_from(["finished", "in-progress"]) | json_values,
        "subject": st.fixed_dictionaries({"reference": st.text(max_size=30)}) | json_values,
    },
)
requests = st.fixed_dictionaries(
    {},
    optional={
        "method": st.sampled_from(["PUT", "POST", "DELETE", "PATCH", "GET"]) | json_values,
        "url": st.sampled_from(["Patient/p1", "Patient/p1/_history/2", "Encounter/e1", "/", ""])
        | st.text(max_size=40)
        | json_values,
    },
)
entries = st.fixed_dictionaries(
    {},
    optional={
        "fullUrl": st.text(max_size=40) | json_values,
        "resource": resources | json_values,
        "request": requests | json_values,
        "response": st.fixed_dictionaries({}, optional={"etag": st.text(), "status": st.text()})
        | json_values,
    },
)
bundles = st.fixed_dictionaries(
    {
        "resourceType": st.just("Bundle"),
        "type": st.sampled_from(
            ["transaction", "batch", "history", "collection", "subscription-notification"]
        )
        | json_values,
        "entry": st.lists(entries, max_size=5) | json_values,
    }
)


def deep(depth: int) -> bytes:
    return ("[" * depth + "]" * depth).encode()


def huge_resource(size: int) -> bytes:
    return json.dumps(
        {"resourceType": "Patient", "id": "p1", "name": [{"text": "x" * size}]}
    ).encode()


fhir_bodies = st.one_of(
    (bundles | resources | json_values).map(lambda value: json.dumps(value).encode()),
    st.binary(max_size=200),
    st.integers(min_value=60, max_value=100_000).map(deep),
    st.sampled_from([10_000, 1_100_000, 3_000_000]).map(huge_resource),
    st.just(b'{"resourceType": "Patient", "id": "p\\u0000"}'),
)
content_types = st.sampled_from(
    ["application/fhir+json", "application/json", "text/plain", "application/xml"]
)


@given(body=fhir_bodies, content_type=content_types, deleted=st.sampled_from(["", "Patient/p9"]))
@HYPOTHESIS
def test_fuzzed_fhir_pushes_never_fail_the_server(
    sync_api: SyncApi, body: bytes, content_type: str, deleted: str
) -> None:
    before = sync_api.stored_events()
    extra = {"X-Medplum-Deleted-Resource": deleted} if deleted else {}
    status = sync_api.post("/v1/ingest/fhir", body, content_type, **extra)
    assert status < 500
    if status >= 300:
        assert sync_api.stored_events() == before, f"a {status} refusal stored events"


events = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["records.sync.completed", "encounter.finished", "nope"])
        | json_values,
        "data": json_values
        | st.fixed_dictionaries(
            {"connection_id": st.text(max_size=10) | json_values, "patient": json_values}
        ),
    },
    optional={
        "focus": json_values,
        "account": json_values,
        "organization": st.sampled_from(["acme", "other"]) | json_values,
        "idempotency_key": json_values,
        "occurred_at": st.sampled_from(["2024-01-01T00:00:00Z", "2024-01-01", "yesterday"]),
        "surprise": json_values,
    },
)


@given(body=events | json_values, content_type=content_types)
@HYPOTHESIS
def test_fuzzed_events_never_fail_the_server(
    sync_api: SyncApi, body: Any, content_type: str
) -> None:
    before = sync_api.stored_events()
    status = sync_api.post("/v1/events", json.dumps(body).encode(), content_type)
    assert status < 500
    if status >= 300:
        assert sync_api.stored_events() == before, f"a {status} refusal stored events"


# --- DNS rebinding: checked again at connect time --------------------------------------------


async def test_a_name_that_turns_to_loopback_after_registration_is_refused(api: Api) -> None:
    answers = {"rebind.partner.test": "93.184.216.34"}

    async def rebinding(
        host: str, port: int
    ) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        if host in answers:
            return [ipaddress.ip_address(answers[host])]
        return await fake_resolve(host, port)

    strict = dataclasses.replace(api.settings, allowed_networks=())
    services = api.app.extensions["tidings"]
    services.resolve = rebinding
    runtime = build_runtime(
        strict,
        sessions=services.sessions,
        catalog=services.catalog,
        clock=api.clock,
        resolve=rebinding,
    )
    partner, source = await api.key("acme"), await api.key("acme", "source")
    async with running_receiver() as receiver:
        url = f"http://rebind.partner.test:{receiver.port}/hook"
        created = await api.call("POST", "/v1/endpoints", partner, json={"url": url})
        assert created.status_code == 201, await created.get_data(as_text=True)
        answers["rebind.partner.test"] = "127.0.0.1"  # the attacker's DNS changes its answer
        data = {"connection_id": "c1", "patient": "Patient/p1"}
        event = {"type": "records.sync.completed", "data": data}
        assert (await api.call("POST", "/v1/events", source, json=event)).status_code == 202
        assert await runtime.worker.run_once() == 1
        await runtime.sender.aclose()
        assert receiver.received == [], "nothing reaches the loopback receiver"
    endpoint_id = (await created.get_json())["id"]
    listed = await api.call("GET", f"/v1/deliveries?endpoint_id={endpoint_id}", partner)
    [delivery] = (await listed.get_json())["data"]
    detail = await (await api.call("GET", f"/v1/deliveries/{delivery['id']}", partner)).get_json()
    [attempt] = detail["attempts"]
    assert attempt["error"] == "refused_address"
    assert detail["status"] == "pending", "refused like any connection failure, and retried"

"""The upstream watcher against a real FHIR server on loopback, on SQLite and PostgreSQL.

The fake FHIR server and Tidings share the fake clock, so `meta.lastUpdated` and the cursor
are exact; the watcher is driven by `run_once()`, never by the scheduler.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import col, select

from app.config import Settings
from app.domain.matching import CriteriaCache
from app.factory import create_app
from app.ingest import upstream
from app.ingest.upstream import UpstreamWatcher
from app.ingest.upstream_config import format_instant
from app.store import upstreams as upstream_store
from app.store.db import transaction
from app.store.tables import EventRow, UpstreamServer
from tests.conftest import FakeClock
from tests.fhir_server import FhirServer, ServerAuth, running_fhir_server
from tests.integration.conftest import Api, fake_resolve

POLL = 30
PREVIOUS_CATALOG = """
[[event_types]]
name = "observation.finalized"
[[event_types.triggers]]
resource = "Observation"
interactions = ["update"]
fhirpath = "%previous.status != 'final' and %current.status = 'final'"
"""


@dataclass
class Watch:
    """A FHIR server, the app, and a way to make (and remake) the watcher."""

    api: Api
    server: FhirServer
    http: httpx.AsyncClient
    admin: str

    @property
    def clock(self) -> FakeClock:
        return self.api.clock

    def watcher(self, page_size: int = 2) -> UpstreamWatcher:
        services = self.api.app.extensions["tidings"]
        return UpstreamWatcher(
            sessions=services.sessions,
            client=self.http,
            catalog=services.catalog,
            criteria_cache=CriteriaCache(),
            secret_box=services.secret_box,
            clock=self.clock,
            resolve=fake_resolve,
            allowed_networks=self.api.settings.allowed_networks,
            page_size=page_size,
        )

    async def register(self, auth: dict[str, Any] | None = None, **extra: Any) -> str:
        body = {"organization": "acme", "base_url": self.server.base_url, **extra}
        if auth is not None:
            body["auth"] = auth
        response = await self.api.call("POST", "/v1/upstreams", self.admin, json=body)
        assert response.status_code == 201, await response.get_data(as_text=True)
        upstream_id: str = (await response.get_json())["id"]
        return upstream_id

    async def row(self, upstream_id: str) -> UpstreamServer:
        async with transaction(self.api.app.extensions["tidings"].sessions) as session:
            row = await upstream_store.select_upstream(session, upstream_id)
        assert row is not None
        return row

    async def events(self) -> list[tuple[str, str]]:
        """(type, Type/id/_history/version) of every stored event, in occurrence order."""
        query = select(EventRow).order_by(col(EventRow.occurred_at))
        async with transaction(self.api.app.extensions["tidings"].sessions) as session:
            rows = (await session.exec(query)).all()
        return [(row.type, _version_ref(row.data)) for row in rows]

    async def poll_after(self, seconds: float, watcher: UpstreamWatcher | None = None) -> int:
        self.clock.advance(seconds)
        return await (watcher or self.watcher()).run_once()


def _version_ref(data: dict[str, Any]) -> str:
    version = (data.get("meta") or {}).get("versionId", "?")
    return f"{data['resourceType']}/{data['id']}/{version}"


@pytest.fixture
async def watch(api: Api) -> AsyncIterator[Watch]:
    async with running_fhir_server(api.clock) as server, httpx.AsyncClient(timeout=5) as http:
        yield Watch(api=api, server=server, http=http, admin=await api.key("ops", "admin"))


def make_changes(server: FhirServer, clock: FakeClock) -> None:
    """Six changes over Patient, Encounter and Observation, one second apart."""
    steps = [
        lambda: server.create({"resourceType": "Patient", "id": "p1", "active": True}),
        lambda: server.create({"resourceType": "Encounter", "id": "e1", "status": "planned"}),
        lambda: server.update("Patient", "p1", active=False),
        lambda: server.create(
            {"resourceType": "Observation", "id": "o1", "status": "preliminary", "code": {}}
        ),
        lambda: server.delete("Encounter", "e1"),
        lambda: server.update("Observation", "o1", status="final"),
    ]
    for step in steps:
        clock.advance(1)
        step()


EXPECTED = [
    ("patient.created", "Patient/p1/1"),
    ("encounter.created", "Encounter/e1/1"),
    ("patient.updated", "Patient/p1/2"),
    ("observation.created", "Observation/o1/1"),
    ("encounter.deleted", "Encounter/e1/1"),  # the deleted version is unknown: last seen body
    ("observation.updated", "Observation/o1/2"),
]


async def test_changes_across_pages_make_each_event_once(watch: Watch) -> None:
    upstream_id = await watch.register(poll_seconds=POLL)
    make_changes(watch.server, watch.clock)
    assert await watch.watcher().run_once() == 1
    assert await watch.events() == EXPECTED
    assert len(watch.server.requests_to("/fhir")) >= 3  # 6 changes, 2 a page
    row = await watch.row(upstream_id)
    assert row.cursor == format_instant(watch.clock.now)  # the newest change
    assert row.failures == 0 and row.last_error is None
    assert await watch.watcher().run_once() == 0  # not due before poll_seconds
    assert await watch.poll_after(POLL) == 1
    assert await watch.events() == EXPECTED  # the boundary change came back and was absorbed


async def test_history_before_registration_is_not_replayed(watch: Watch) -> None:
    watch.server.create({"resourceType": "Patient", "id": "old"})
    watch.clock.advance(1)
    await watch.register()
    watch.clock.advance(1)
    watch.server.create({"resourceType": "Patient", "id": "new"})
    await watch.watcher().run_once()
    assert await watch.events() == [("patient.created", "Patient/new/1")]


async def test_since_replays_from_the_given_instant(watch: Watch) -> None:
    start = watch.clock.now
    watch.server.create({"resourceType": "Patient", "id": "old"})
    watch.clock.advance(5)
    await watch.register(since=start.isoformat())
    await watch.watcher().run_once()
    assert await watch.events() == [("patient.created", "Patient/old/1")]


async def test_resume_after_restart_loses_and_doubles_nothing(watch: Watch) -> None:
    await watch.register(poll_seconds=POLL)
    watch.clock.advance(1)
    watch.server.create({"resourceType": "Patient", "id": "p1"})
    await watch.watcher().run_once()
    watch.clock.advance(1)
    watch.server.update("Patient", "p1", active=True)
    watch.clock.advance(1)
    watch.server.create({"resourceType": "Encounter", "id": "e1", "status": "planned"})
    async with httpx.AsyncClient(timeout=5) as fresh_http:  # a new process: new client, watcher
        watch.http = fresh_http
        assert await watch.poll_after(POLL) == 1
    assert await watch.events() == [
        ("patient.created", "Patient/p1/1"),
        ("patient.updated", "Patient/p1/2"),
        ("encounter.created", "Encounter/e1/1"),
    ]


async def test_a_crash_before_commit_stores_nothing_and_moves_no_cursor(
    watch: Watch, monkeypatch: pytest.MonkeyPatch
) -> None:
    upstream_id = await watch.register(poll_seconds=POLL)
    cursor = (await watch.row(upstream_id)).cursor
    watch.clock.advance(1)
    watch.server.create({"resourceType": "Patient", "id": "p1"})

    async def crash(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the process died here")

    with monkeypatch.context() as patched:
        patched.setattr(upstream_store, "record_poll_success", crash)
        assert await watch.watcher().run_once() == 1
    assert await watch.events() == []
    row = await watch.row(upstream_id)
    assert row.cursor == cursor and row.failures == 1
    assert row.last_error == "internal error: RuntimeError"
    assert await watch.poll_after(2 * POLL) == 1
    assert await watch.events() == [("patient.created", "Patient/p1/1")]


async def test_a_poll_that_outlived_its_lease_leaves_the_newer_cursor(watch: Watch) -> None:
    upstream_id = await watch.register(poll_seconds=POLL)
    await watch.watcher().run_once()  # the first poll sets the cursor to now
    slow = await watch.row(upstream_id)  # what a poll that then hung read from
    slow_read_at = watch.clock.now
    watch.clock.advance(1)
    watch.server.create({"resourceType": "Patient", "id": "p1"})
    assert await watch.poll_after(POLL) == 1  # another poller, past the hung poll's lease
    newer = (await watch.row(upstream_id)).cursor
    assert newer is not None and newer > (slow.cursor or "")
    async with transaction(watch.api.app.extensions["tidings"].sessions) as session:
        await upstream_store.record_poll_success(
            session,
            upstream_id,
            cursor=format_instant(slow_read_at + timedelta(milliseconds=500)),
            polled_from=slow.cursor,
            now=watch.clock.now,
            next_poll_at=watch.clock.now + timedelta(seconds=POLL),
        )
    assert (await watch.row(upstream_id)).cursor == newer, "the cursor moved backwards"
    assert await watch.poll_after(POLL) == 1
    assert await watch.events() == [("patient.created", "Patient/p1/1")]


async def test_a_change_at_the_cursor_boundary_is_not_doubled(watch: Watch) -> None:
    upstream_id = await watch.register(poll_seconds=POLL)
    watch.clock.advance(1)
    watch.server.create({"resourceType": "Patient", "id": "p1"})
    await watch.watcher().run_once()
    boundary = (await watch.row(upstream_id)).cursor
    watch.server.create({"resourceType": "Patient", "id": "p2"})  # same instant as p1
    assert await watch.poll_after(POLL) == 1
    last = watch.server.requests_to("/_history")[-1]
    assert last.query["_since"] == boundary
    assert await watch.events() == [
        ("patient.created", "Patient/p1/1"),
        ("patient.created", "Patient/p2/1"),
    ]


async def test_an_empty_poll_moves_the_cursor_to_the_server_time(watch: Watch) -> None:
    upstream_id = await watch.register(poll_seconds=POLL)
    await watch.poll_after(POLL)
    row = await watch.row(upstream_id)
    assert row.cursor == format_instant(watch.clock.now)
    assert row.last_polled_at == watch.clock.now


@pytest.fixture
async def previous_watch(
    settings: Settings, clock: FakeClock, tmp_path: Path
) -> AsyncIterator[Watch]:
    catalog = tmp_path / "finalized.toml"
    catalog.write_text(PREVIOUS_CATALOG)
    custom = Settings(**{**vars(settings), "catalog_paths": (catalog,)})
    app = create_app(custom, clock=clock, resolve=fake_resolve)
    async with (
        app.test_app() as test_app,
        running_fhir_server(clock) as server,
        httpx.AsyncClient(timeout=5) as http,
    ):
        api = Api(app=app, client=test_app.test_client(), settings=custom, clock=clock)
        yield Watch(api=api, server=server, http=http, admin=await api.key("ops", "admin"))


async def test_previous_version_is_fetched_for_previous_triggers(previous_watch: Watch) -> None:
    watch, server = previous_watch, previous_watch.server
    server.create({"resourceType": "Observation", "id": "o1", "status": "preliminary"})
    server.create({"resourceType": "Observation", "id": "o2", "status": "final"})
    watch.clock.advance(1)
    await watch.register(poll_seconds=POLL)
    watch.clock.advance(1)
    server.update("Observation", "o1", status="final")  # preliminary -> final: fires
    server.update("Observation", "o2", status="final")  # final -> final: does not
    await watch.watcher().run_once()
    finalized = [event for event in await watch.events() if event[0] == "observation.finalized"]
    assert finalized == [("observation.finalized", "Observation/o1/2")]
    assert server.requests_to("/Observation/o1/_history/1")
    watch.clock.advance(1)
    server.update("Observation", "o1", note=[{"text": "later"}])  # final -> final again
    await watch.poll_after(POLL)
    assert [e for e in await watch.events() if e[0] == "observation.finalized"] == finalized


async def test_a_missing_previous_version_is_tolerated(previous_watch: Watch) -> None:
    watch, server = previous_watch, previous_watch.server
    server.create({"resourceType": "Observation", "id": "o1", "status": "preliminary"})
    server.prune("Observation", "o1", 1)
    watch.clock.advance(1)
    await watch.register()
    watch.clock.advance(1)
    server.update("Observation", "o1", status="final")
    await watch.watcher().run_once()
    assert await watch.events() == [("observation.updated", "Observation/o1/2")]


async def test_bearer_auth(watch: Watch) -> None:
    watch.server.auth = ServerAuth("bearer", token="s3cret-token")
    upstream_id = await watch.register({"kind": "bearer", "token": "s3cret-token"})
    watch.clock.advance(1)
    watch.server.create({"resourceType": "Patient", "id": "p1"})
    await watch.watcher().run_once()
    assert await watch.events() == [("patient.created", "Patient/p1/1")]
    assert watch.server.seen[-1].headers["Authorization"] == "Bearer s3cret-token"
    assert (await watch.row(upstream_id)).failures == 0


async def test_wrong_basic_credentials_are_a_failure(watch: Watch) -> None:
    watch.server.auth = ServerAuth("basic", username="tidings", password="right")
    wrong = await watch.register({"kind": "basic", "username": "tidings", "password": "wrong"})
    right = await watch.register({"kind": "basic", "username": "tidings", "password": "right"})
    watch.clock.advance(1)
    watch.server.create({"resourceType": "Patient", "id": "p1"})
    assert await watch.watcher().run_once() == 2
    assert (
        await watch.row(wrong)
    ).last_error == f"GET {watch.server.base_url}/_history answered 401"
    assert (await watch.row(right)).failures == 0
    assert await watch.events() == [("patient.created", "Patient/p1/1")]


async def test_smart_token_is_cached_expires_and_is_refreshed_on_401(watch: Watch) -> None:
    server = watch.server
    server.auth = ServerAuth("smart", client_id="tidings", client_secret="cs", lifetime=600)
    smart = {
        "kind": "smart",
        "client_id": "tidings",
        "client_secret": "cs",
        "token_url": server.token_url,
        "scope": "system/*.read",
    }
    upstream_id = await watch.register(smart, poll_seconds=POLL)
    watcher = watch.watcher()
    await watch.poll_after(1, watcher)
    await watch.poll_after(POLL, watcher)
    assert len(server.token_requests) == 1  # cached between polls
    assert server.token_requests[0] == {
        "grant_type": "client_credentials",
        "client_id": "tidings",
        "client_secret": "cs",
        "scope": "system/*.read",
    }
    server.revoke_tokens()
    server.create({"resourceType": "Patient", "id": "p1"})
    await watch.poll_after(POLL, watcher)
    assert len(server.token_requests) == 2  # the 401 fetched a new one, once
    assert await watch.events() == [("patient.created", "Patient/p1/1")]
    await watch.poll_after(600, watcher)
    assert len(server.token_requests) == 3  # expired
    assert (await watch.row(upstream_id)).failures == 0


@pytest.mark.parametrize("failure", ["500", "429", "not json", "hang"])
async def test_upstream_failure_backs_off_then_recovers(watch: Watch, failure: str) -> None:
    upstream_id = await watch.register(poll_seconds=POLL)
    cursor = (await watch.row(upstream_id)).cursor
    watch.clock.advance(1)
    watch.server.create({"resourceType": "Patient", "id": "p1"})
    broken, usual = _break(watch.server, failure), watch.http
    async with httpx.AsyncClient(timeout=0.3) as http:
        watch.http = http
        assert await watch.watcher().run_once() == 1
        first = await watch.row(upstream_id)
        assert first.failures == 1 and first.cursor == cursor and first.last_error
        assert first.next_poll_at == watch.clock.now + timedelta(seconds=2 * POLL)
        assert await watch.poll_after(POLL) == 0  # backing off
        assert await watch.poll_after(POLL) == 1
        second = await watch.row(upstream_id)
        assert second.failures == 2
        assert second.next_poll_at == watch.clock.now + timedelta(seconds=4 * POLL)
    assert await watch.events() == []
    broken.undo()
    watch.http = usual
    assert await watch.poll_after(4 * POLL) == 1
    recovered = await watch.row(upstream_id)
    assert recovered.failures == 0 and recovered.last_error is None
    assert await watch.events() == [("patient.created", "Patient/p1/1")]


@dataclass
class _Breakage:
    server: FhirServer
    failure: str

    def undo(self) -> None:
        self.server.fail_status, self.server.hang = None, False
        self.server.release.set()


def _break(server: FhirServer, failure: str) -> _Breakage:
    if failure in ("500", "429"):
        server.fail_status = int(failure)
    elif failure == "hang":
        server.hang = True
    else:
        server.fail_status = 200  # a 200 whose body is not JSON
    return _Breakage(server, failure)


@pytest.mark.parametrize(
    ("value", "named"), [(float("nan"), "NaN"), (float("inf"), "Infinity"), ("a\x00b", "NUL")]
)
async def test_an_upstream_answer_that_cannot_be_stored_is_a_failure(
    watch: Watch, value: object, named: str
) -> None:
    upstream_id = await watch.register(poll_seconds=POLL)
    cursor = (await watch.row(upstream_id)).cursor
    watch.clock.advance(1)
    watch.server.create({"resourceType": "Patient", "id": "p1", "gender": value})
    assert await watch.watcher().run_once() == 1
    row = await watch.row(upstream_id)
    assert row.failures == 1 and row.cursor == cursor
    assert row.last_error is not None and named in row.last_error
    assert await watch.events() == []


def test_backoff_doubles_and_is_capped() -> None:
    assert [upstream.backoff_seconds(30, n) for n in (1, 2, 3, 7, 50)] == [
        60,
        120,
        240,
        3600,
        3600,
    ]

"""A small FHIR server on 127.0.0.1 for the upstream watcher's tests.

The test changes resources through the Python API (`create`, `update`, `delete`); the server
answers what Tidings asks over HTTP, the way HAPI does:

- `GET [base]/_history?_since=&_count=`: a `history` Bundle, newest first, each entry with
  `fullUrl`, `resource` (none for deletes), `request` and `response` (status, `W/"n"` etag,
  `lastModified`); more pages through `next` links with opaque page tokens
  (`[base]?_getpages=...&_getpagesoffset=...`), served from a snapshot like HAPI's paging;
- `GET [base]/Type/id/_history/vid`: one version (410 for a deleted one, 404 for none);
- `POST /token`: a SMART Backend Services token endpoint (client credentials, secret posted).

Switches: `auth` (bearer, basic or smart), `fail_status` (answer every FHIR request with it),
`hang` (answer nothing until released).
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from tests.receivers import in_thread

Clock = Callable[[], datetime]
FHIR_JSON = "application/fhir+json"
_STATUS = {"POST": "201 Created", "PUT": "200 OK", "DELETE": "204 No Content"}


def instant(moment: datetime) -> str:
    """A FHIR instant as HAPI writes it: milliseconds and an offset."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Version:
    """One entry of the server's history."""

    resource_type: str
    resource_id: str
    number: int
    method: str
    resource: dict[str, Any] | None
    at: datetime


@dataclass
class ServerAuth:
    """What the server demands: nothing, a bearer token, basic credentials or a SMART token."""

    kind: str = "none"
    token: str = ""
    username: str = ""
    password: str = ""
    client_id: str = ""
    client_secret: str = ""
    lifetime: int = 300


@dataclass
class Seen:
    """One request as the server saw it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]


@dataclass
class FhirServer:
    """Resources with versions, a history, and the HTTP face described above."""

    clock: Clock = field(default=lambda: datetime.now(UTC))
    port: int = 0
    auth: ServerAuth = field(default_factory=ServerAuth)
    fail_status: int | None = None
    hang: bool = False
    history: list[Version] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    token_requests: list[dict[str, str]] = field(default_factory=list)
    issued: set[str] = field(default_factory=set)
    pruned: set[tuple[str, str, int]] = field(default_factory=set)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    _pages: dict[str, list[Version]] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/fhir"

    @property
    def token_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    # The Python API the test drives.

    def create(self, resource: dict[str, Any]) -> dict[str, Any]:
        resource = dict(resource)
        resource.setdefault("id", uuid.uuid4().hex[:12])
        return self._record(resource, "POST", 1)

    def update(self, resource_type: str, resource_id: str, **changes: Any) -> dict[str, Any]:
        current = self.current(resource_type, resource_id)
        assert current is not None and current.resource is not None, "no such live resource"
        resource = {**current.resource, **changes}
        return self._record(resource, "PUT", current.number + 1)

    def delete(self, resource_type: str, resource_id: str) -> None:
        current = self.current(resource_type, resource_id)
        assert current is not None and current.resource is not None, "no such live resource"
        self.history.append(
            Version(resource_type, resource_id, current.number + 1, "DELETE", None, self.clock())
        )

    def current(self, resource_type: str, resource_id: str) -> Version | None:
        found = [
            v
            for v in self.history
            if (v.resource_type, v.resource_id) == (resource_type, resource_id)
        ]
        return found[-1] if found else None

    def prune(self, resource_type: str, resource_id: str, number: int) -> None:
        """Make one old version unreadable (404), as servers that expunge history do."""
        self.pruned.add((resource_type, resource_id, number))

    def revoke_tokens(self) -> None:
        self.issued.clear()

    def requests_to(self, path_part: str) -> list[Seen]:
        return [item for item in self.seen if path_part in item.path]

    def _record(self, resource: dict[str, Any], method: str, number: int) -> dict[str, Any]:
        now = self.clock()
        resource["meta"] = {
            **resource.get("meta", {}),
            "versionId": str(number),
            "lastUpdated": instant(now),
        }
        self.history.append(
            Version(resource["resourceType"], resource["id"], number, method, resource, now)
        )
        return resource

    # HTTP.

    @web.middleware
    async def guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.seen.append(
            Seen(request.method, request.path, dict(request.query), dict(request.headers))
        )
        if request.path == "/token":
            return await handler(request)
        if self.hang:
            await self.release.wait()
        if self.fail_status is not None:
            return web.Response(status=self.fail_status, text="failing on purpose")
        if not self._authorized(request.headers.get("Authorization", "")):
            return _outcome(401, "login", "not authorized")
        return await handler(request)

    def _authorized(self, header: str) -> bool:
        auth = self.auth
        if auth.kind == "bearer":
            return header == f"Bearer {auth.token}"
        if auth.kind == "basic":
            pair = base64.b64encode(f"{auth.username}:{auth.password}".encode()).decode()
            return header == f"Basic {pair}"
        if auth.kind == "smart":
            return header.removeprefix("Bearer ") in self.issued
        return True

    async def token(self, request: web.Request) -> web.Response:
        form = {key: str(value) for key, value in (await request.post()).items()}
        self.token_requests.append(form)
        if (
            form.get("grant_type") != "client_credentials"
            or form.get("client_id") != self.auth.client_id
            or form.get("client_secret") != self.auth.client_secret
        ):
            return web.json_response({"error": "invalid_client"}, status=401)
        token = f"smart-{len(self.token_requests)}"
        self.issued.add(token)
        body = {"access_token": token, "token_type": "bearer", "expires_in": self.auth.lifetime}
        return web.json_response(body | {"scope": form.get("scope", "")})

    async def history_search(self, request: web.Request) -> web.Response:
        since = request.query.get("_since")
        count = int(request.query.get("_count", "20"))
        moment = datetime.fromisoformat(since.replace("Z", "+00:00")) if since else None
        matches = [v for v in reversed(self.history) if moment is None or v.at >= moment]
        token = uuid.uuid4().hex
        self._pages[token] = matches
        return self._page(token, 0, count)

    async def get_pages(self, request: web.Request) -> web.Response:
        token = request.query.get("_getpages", "")
        if token not in self._pages:
            return _outcome(410, "not-found", "the search has expired")
        offset = int(request.query.get("_getpagesoffset", "0"))
        return self._page(token, offset, int(request.query.get("_count", "20")))

    def _page(self, token: str, offset: int, count: int) -> web.Response:
        matches = self._pages[token]
        links = [{"relation": "self", "url": f"{self.base_url}/_history"}]
        if offset + count < len(matches):
            query = f"_getpages={token}&_getpagesoffset={offset + count}&_count={count}"
            links.append({"relation": "next", "url": f"{self.base_url}?{query}"})
        bundle = {
            "resourceType": "Bundle",
            "id": uuid.uuid4().hex,
            "meta": {"lastUpdated": instant(self.clock())},
            "type": "history",
            "total": len(matches),
            "link": links,
            "entry": [self._entry(v) for v in matches[offset : offset + count]],
        }
        return web.json_response(bundle, content_type=FHIR_JSON)

    def _entry(self, version: Version) -> dict[str, Any]:
        reference = f"{version.resource_type}/{version.resource_id}"
        entry: dict[str, Any] = {"fullUrl": f"{self.base_url}/{reference}"}
        if version.resource is not None:
            entry["resource"] = version.resource
        url = version.resource_type if version.method == "POST" else reference
        entry["request"] = {"method": version.method, "url": url}
        entry["response"] = {
            "status": _STATUS[version.method],
            "etag": f'W/"{version.number}"',
            "lastModified": instant(version.at),
        }
        return entry

    async def read_version(self, request: web.Request) -> web.Response:
        info = request.match_info
        for version in self.history:
            if (version.resource_type, version.resource_id, version.number) in self.pruned:
                continue
            if (version.resource_type, version.resource_id, str(version.number)) == (
                info["type"],
                info["id"],
                info["vid"],
            ):
                if version.resource is None:
                    return _outcome(410, "deleted", "this version is a deletion")
                return web.json_response(version.resource, content_type=FHIR_JSON)
        return _outcome(404, "not-found", "no such version")


def _outcome(status: int, code: str, text: str) -> web.Response:
    body = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": text}],
    }
    return web.json_response(body, status=status, content_type=FHIR_JSON)


@asynccontextmanager
async def running_fhir_server(clock: Clock | None = None) -> AsyncIterator[FhirServer]:
    """Start a FHIR server on an ephemeral loopback port; stop it afterwards."""
    server = FhirServer(clock=clock) if clock is not None else FhirServer()
    app = web.Application(middlewares=[server.guard])
    app.router.add_post("/token", server.token)
    app.router.add_get("/fhir/_history", server.history_search)
    app.router.add_get("/fhir", server.get_pages)
    app.router.add_get("/fhir/{type}/{id}/_history/{vid}", server.read_version)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    assert site._server is not None
    server.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield server
    finally:
        server.release.set()
        await runner.cleanup()


@contextmanager
def fhir_server_in_thread() -> Iterator[FhirServer]:
    """A FHIR server (real clock) on its own loop in a background thread, for process tests."""
    with in_thread(running_fhir_server) as server:
        yield server

"""Reading an upstream FHIR server: `_history` pages and single earlier versions.

Every failure of the server or the network becomes an `UpstreamError` with a message fit for
`last_error`. `next` links are followed only on the server's own origin, so an upstream cannot
steer Tidings to another host.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from app.domain import json_text
from app.domain.errors import ValidationFailed
from app.domain.models import JSONObject
from app.ingest.fhir_push import PushedChange, bundle_changes, parse_instant
from app.ingest.upstream_auth import Authorizer, UpstreamError

MAX_PAGES = 1000
ACCEPT = "application/fhir+json, application/json;q=0.9"


@dataclass(frozen=True)
class HistoryRead:
    """The changes `_history` listed (oldest first) and the server's time of the query."""

    changes: list[PushedChange]
    server_time: datetime | None


class FhirReader:
    """GETs against one upstream's base URL, signed in by its `Authorizer`."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        base_url: str,
        authorizer: Authorizer,
        *,
        page_size: int,
    ) -> None:
        self._client = client
        self._base = base_url.rstrip("/")
        self._authorizer = authorizer
        self._page_size = page_size

    async def history(self, since: str) -> HistoryRead:
        """Every change at or after `since` (`_history` is inclusive), across all pages.

        Raises:
            UpstreamError: when a page cannot be read or an entry is not a usable change.
        """
        url: str | None = f"{self._base}/_history"
        params: dict[str, str] | None = {"_since": since, "_count": str(self._page_size)}
        entries: list[Any] = []
        server_time: datetime | None = None
        for _ in range(MAX_PAGES):
            if url is None:
                return HistoryRead(_changes(entries), server_time)
            bundle, response = await self._bundle(url, params)
            page = bundle.get("entry") or []
            if not isinstance(page, list):
                raise UpstreamError(f"GET {_path(url)}: Bundle.entry is not a list")
            entries.extend(page)
            server_time = server_time or _bundle_time(bundle, response)
            url, params = self._next_link(bundle), None
        raise UpstreamError(f"_history has more than {MAX_PAGES} pages; not following further")

    async def version(
        self, resource_type: str, resource_id: str, version: str
    ) -> JSONObject | None:
        """One version of a resource; None when the server has no such version (404, 410).

        Raises:
            UpstreamError: for any other failure.
        """
        url = f"{self._base}/{resource_type}/{resource_id}/_history/{version}"
        response = await self._get(url, None)
        if response.status_code in (404, 410):
            return None
        body = _json_object(response, url)
        if body.get("resourceType") != resource_type:
            raise UpstreamError(f"GET {_path(url)}: not a {resource_type}")
        return body

    async def _bundle(
        self, url: str, params: dict[str, str] | None
    ) -> tuple[JSONObject, httpx.Response]:
        response = await self._get(url, params)
        body = _json_object(response, url)
        if body.get("resourceType") != "Bundle":
            raise UpstreamError(f"GET {_path(url)}: the answer is not a Bundle")
        return body, response

    async def _get(self, url: str, params: dict[str, str] | None) -> httpx.Response:
        response = await self._send(url, params)
        if response.status_code == 401 and self._authorizer.can_refresh:
            self._authorizer.forget()
            response = await self._send(url, params)
        return response

    async def _send(self, url: str, params: dict[str, str] | None) -> httpx.Response:
        headers = {"Accept": ACCEPT, **await self._authorizer.headers(self._client)}
        try:
            return await self._client.get(url, params=params, headers=headers)
        except httpx.HTTPError as error:
            detail = str(error) or "no answer"
            raise UpstreamError(f"GET {_path(url)}: {type(error).__name__}: {detail}") from None

    def _next_link(self, bundle: JSONObject) -> str | None:
        for link in bundle.get("link") or []:
            if isinstance(link, dict) and link.get("relation") == "next":
                url = link.get("url")
                if not isinstance(url, str) or not url:
                    raise UpstreamError("the Bundle's next link has no url")
                if _origin(url) != _origin(self._base):
                    raise UpstreamError(f"the next link leaves the server: {_origin(url)}")
                return url
        return None


def _changes(entries: list[Any]) -> list[PushedChange]:
    try:
        return bundle_changes({"resourceType": "Bundle", "type": "history", "entry": entries})
    except ValidationFailed as error:
        raise UpstreamError(f"_history holds an unusable entry: {error.detail}") from None


def _json_object(response: httpx.Response, url: str) -> JSONObject:
    if response.status_code != 200:
        raise UpstreamError(f"GET {_path(url)} answered {response.status_code}")
    try:
        body = json_text.parse(response.text)
    except json_text.UnacceptableJSONError as error:
        raise UpstreamError(f"GET {_path(url)}: the answer is not usable JSON ({error})") from None
    except (ValueError, RecursionError):
        raise UpstreamError(f"GET {_path(url)}: the answer is not JSON") from None
    if not isinstance(body, dict):
        raise UpstreamError(f"GET {_path(url)}: the answer is not a JSON object")
    return body


def _bundle_time(bundle: JSONObject, response: httpx.Response) -> datetime | None:
    """When the server ran the query: `Bundle.meta.lastUpdated`, else the `Date` header."""
    meta = bundle.get("meta")
    moment = parse_instant(meta.get("lastUpdated")) if isinstance(meta, dict) else None
    if moment is not None:
        return moment
    try:
        return parsedate_to_datetime(response.headers.get("Date", ""))
    except (TypeError, ValueError):
        return None


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def _path(url: str) -> str:
    """The URL without its query (page tokens are noise in `last_error`)."""
    return url.split("?", 1)[0]

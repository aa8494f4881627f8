"""Signing in to an upstream FHIR server: bearer, basic, or SMART Backend Services.

SMART tokens come from the client-credentials grant (`client_secret_post`: the client id and
secret in the form body) and are kept until shortly before they expire; a 401 from the FHIR
server drops the kept token so the next request fetches a fresh one.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import datetime, timedelta

import httpx

from app.ingest.upstream_config import AuthKind, UpstreamAuth

EXPIRY_MARGIN = timedelta(seconds=30)
DEFAULT_TOKEN_SECONDS = 300


class UpstreamError(Exception):
    """The upstream server could not be read; the message says why (and holds no secret)."""


class Authorizer:
    """The `Authorization` header for one upstream, with the SMART access token cached."""

    def __init__(self, auth: UpstreamAuth, clock: Callable[[], datetime]) -> None:
        self.auth = auth
        self._clock = clock
        self._token: str | None = None
        self._expires_at: datetime | None = None

    @property
    def can_refresh(self) -> bool:
        """Whether a 401 may be cured by asking for a new token."""
        return self.auth.kind is AuthKind.SMART

    def forget(self) -> None:
        """Drop the cached token (the server refused it)."""
        self._token = self._expires_at = None

    async def headers(self, client: httpx.AsyncClient) -> dict[str, str]:
        """The headers that sign a request in; may fetch a SMART token first."""
        auth = self.auth
        if auth.kind is AuthKind.BEARER:
            return {"Authorization": f"Bearer {auth.token}"}
        if auth.kind is AuthKind.BASIC:
            pair = f"{auth.username}:{auth.password}".encode()
            return {"Authorization": "Basic " + base64.b64encode(pair).decode()}
        if auth.kind is AuthKind.SMART:
            return {"Authorization": f"Bearer {await self._smart_token(client)}"}
        return {}

    async def _smart_token(self, client: httpx.AsyncClient) -> str:
        now = self._clock()
        if self._token is not None and self._expires_at is not None and now < self._expires_at:
            return self._token
        token, lifetime = await request_token(client, self.auth)
        self._token = token
        self._expires_at = now + max(timedelta(seconds=lifetime) - EXPIRY_MARGIN, timedelta(0))
        return token


async def request_token(client: httpx.AsyncClient, auth: UpstreamAuth) -> tuple[str, int]:
    """(access token, seconds it lives) from the SMART token endpoint.

    Raises:
        UpstreamError: when the endpoint cannot be reached or refuses.
    """
    form = {
        "grant_type": "client_credentials",
        "client_id": auth.client_id or "",
        "client_secret": auth.client_secret or "",
    }
    if auth.scope:
        form["scope"] = auth.scope
    try:
        response = await client.post(str(auth.token_url), data=form)
    except httpx.HTTPError as error:
        raise UpstreamError(f"token endpoint: {type(error).__name__}: {error}") from None
    if response.status_code != 200:
        raise UpstreamError(f"token endpoint answered {response.status_code}")
    try:
        body = response.json()
        token = body["access_token"]
    except (ValueError, KeyError, TypeError):
        raise UpstreamError("token endpoint: no access_token in its answer") from None
    lifetime = body.get("expires_in", DEFAULT_TOKEN_SECONDS)
    if not isinstance(token, str) or not token:
        raise UpstreamError("token endpoint: the access_token is not a string")
    return token, lifetime if isinstance(lifetime, int) and lifetime > 0 else DEFAULT_TOKEN_SECONDS

"""The upstream watcher (SPEC section 6.3): poll `[base]/_history?_since=` and raise events.

One poll of one upstream:

1. claim it (a lease on `next_poll_at`, so one poller at a time across processes);
2. read every `_history` page since the cursor, oldest change first;
3. fetch `[base]/Type/id/_history/(n-1)` for updates whose catalog triggers use `%previous`;
4. store the events, their deliveries and the new cursor in one transaction.

The cursor is the newest `meta.lastUpdated` seen (the server's query time when nothing
changed). `_since` is inclusive, so the changes at the cursor come back on the next poll; the
change-key de-duplication of `ingest_changes` absorbs them. A crash before the commit loses
nothing (the cursor did not move) and a re-poll doubles nothing.

A new upstream starts at the moment it is registered (or a `since` given then), so registering
does not replay the server's whole history. Failures (network, 5xx, 429, 401, bad JSON) store
nothing, keep the cursor, and back off: `poll_seconds * 2^failures`, at most an hour.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

import httpx

from app.domain.addresses import IPNetwork, Resolver
from app.domain.catalog import Catalog
from app.domain.matching import CriteriaCache
from app.domain.models import Interaction
from app.domain.secrets import SecretBox, SecretDecryptionError
from app.ingest.change_events import ingest_changes
from app.ingest.fhir_push import PushedChange, parse_instant
from app.ingest.upstream_auth import Authorizer, UpstreamError
from app.ingest.upstream_config import (
    AuthKind,
    forbidden_address,
    format_instant,
    open_auth,
)
from app.ingest.upstream_reader import FhirReader, HistoryRead
from app.store import upstreams as store
from app.store.db import SessionFactory, transaction
from app.store.tables import UpstreamServer

log = logging.getLogger("tidings.upstream")
LEASE = timedelta(minutes=5)
MAX_BACKOFF_SECONDS = 3600
DUE_BATCH = 20
PAGE_SIZE = 100
TIMEOUT_SECONDS = 30.0


def new_upstream_client(timeout: float = TIMEOUT_SECONDS) -> httpx.AsyncClient:
    """The HTTP client the watcher polls with: no redirects, a bound on every request."""
    return httpx.AsyncClient(
        timeout=timeout, follow_redirects=False, headers={"User-Agent": "tidings"}
    )


def backoff_seconds(poll_seconds: int, failures: int) -> int:
    """How long to wait after `failures` failed polls in a row: doubling, capped at an hour."""
    return int(min(poll_seconds * 2 ** min(failures, 32), MAX_BACKOFF_SECONDS))


def next_cursor(current: str | None, read: HistoryRead) -> str | None:
    """The newest change time seen, else the server's query time; never earlier than `current`."""
    moments = [item.moment for item in read.changes if item.moment is not None]
    newest = max(moments) if moments else read.server_time
    if newest is None:
        return current
    known = parse_instant(current)
    if known is not None and newest <= known:
        return current
    return format_instant(newest)


@dataclasses.dataclass
class UpstreamWatcher:
    """Polls every due upstream once per `run_once()`; the scheduler calls it every second."""

    sessions: SessionFactory
    client: httpx.AsyncClient
    catalog: Catalog
    criteria_cache: CriteriaCache
    secret_box: SecretBox
    clock: Callable[[], datetime]
    resolve: Resolver
    allowed_networks: Sequence[IPNetwork]
    on_events: Callable[[], None] = lambda: None
    page_size: int = PAGE_SIZE
    _authorizers: dict[str, tuple[str | None, Authorizer]] = dataclasses.field(default_factory=dict)

    async def run_once(self) -> int:
        """Poll every upstream that is due now; how many were polled."""
        async with transaction(self.sessions) as session:
            due = await store.select_due_upstream_ids(session, self.clock(), DUE_BATCH)
        polled = await asyncio.gather(*(self.poll(upstream_id) for upstream_id in due))
        return sum(polled)

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self.client.aclose()

    async def poll(self, upstream_id: str) -> bool:
        """Poll one upstream if it is still due and no one else has it; whether it was polled."""
        now = self.clock()
        async with transaction(self.sessions) as session:
            row = await store.claim_upstream(session, upstream_id, now=now, lease_until=now + LEASE)
        if row is None:
            return False
        try:
            await self._poll(row, now)
        except UpstreamError as error:
            await self._record_failure(row, str(error))
        except Exception as error:  # a bug or the database: keep polling the others
            log.exception("polling upstream %s failed", row.id)
            await self._record_failure(row, f"internal error: {type(error).__name__}")
        return True

    async def _poll(self, row: UpstreamServer, started: datetime) -> None:
        cursor = row.cursor
        changes: list[PushedChange] = []
        if cursor is None:
            cursor = format_instant(started)  # never polled: start from now, replay nothing
        else:
            reader = await self._reader(row)
            read = await reader.history(cursor)
            changes = await self._with_previous(reader, read.changes)
            cursor = next_cursor(cursor, read)
        async with transaction(self.sessions) as session:
            result = await ingest_changes(
                session,
                changes,
                catalog=self.catalog,
                criteria_cache=self.criteria_cache,
                organization_id=row.organization_id,
                account_id=None,
                now=self.clock(),
            )
            await store.record_poll_success(
                session,
                row.id,
                cursor=cursor,
                polled_from=row.cursor,
                now=self.clock(),
                next_poll_at=started + timedelta(seconds=row.poll_seconds),
            )
        if result.event_ids:
            self.on_events()

    async def _reader(self, row: UpstreamServer) -> FhirReader:
        authorizer = self._authorizer(row)
        urls = [row.base_url]
        if authorizer.auth.kind is AuthKind.SMART and authorizer.auth.token_url:
            urls.append(authorizer.auth.token_url)
        for url in urls:
            reason = await forbidden_address(url, self.resolve, self.allowed_networks)
            if reason:
                raise UpstreamError(reason)
        return FhirReader(self.client, row.base_url, authorizer, page_size=self.page_size)

    def _authorizer(self, row: UpstreamServer) -> Authorizer:
        """The upstream's authorizer, kept between polls so SMART tokens are reused."""
        kept = self._authorizers.get(row.id)
        if kept is not None and kept[0] == row.auth_secret:
            return kept[1]
        try:
            auth = open_auth(row.auth_kind, row.auth_secret, self.secret_box)
        except SecretDecryptionError:
            raise UpstreamError(
                "the credentials cannot be decrypted (was TIDINGS_SECRET_KEY changed?)"
            ) from None
        authorizer = Authorizer(auth, self.clock)
        self._authorizers[row.id] = (row.auth_secret, authorizer)
        return authorizer

    async def _with_previous(
        self, reader: FhirReader, changes: list[PushedChange]
    ) -> list[PushedChange]:
        """Each update that a `%previous` trigger needs gets the version before it."""
        completed = []
        for item in changes:
            change, version = item.change, item.change.version_id
            if (
                change.interaction is Interaction.UPDATE
                and change.previous is None
                and version is not None
                and version.isdigit()
                and int(version) > 1
                and self.catalog.needs_previous(change.resource_type)
            ):
                earlier = await reader.version(
                    change.resource_type, change.resource_id, str(int(version) - 1)
                )
                change = dataclasses.replace(change, previous=earlier)
            completed.append(PushedChange(change, item.moment))
        return completed

    async def _record_failure(self, row: UpstreamServer, error: str) -> None:
        now = self.clock()
        failures = row.failures + 1
        delay = backoff_seconds(row.poll_seconds, failures)
        log.warning("upstream %s: %s (retry in %s s)", row.id, error, delay)
        async with transaction(self.sessions) as session:
            await store.record_poll_failure(
                session,
                row.id,
                error=error,
                failures=failures,
                now=now,
                next_poll_at=now + timedelta(seconds=delay),
            )

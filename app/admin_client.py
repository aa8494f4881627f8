"""Redelivery over the HTTP API, as `tidings redeliver` does it against any deployment.

The list comes first: every matching delivery id is collected before the first redelivery,
so deliveries that change status while we work never shift the pages under us. Then each one
gets `POST /v1/deliveries/{id}/redeliver`, the same route (and rule) partners use.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self, TextIO

import httpx
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from app import __version__

PAGE_SIZE = 250
REDELIVERABLE = ("pending", "failed", "succeeded", "cancelled")


class AdminApiError(Exception):
    """The API could not be reached, or refused a request the command cannot go on without."""


def parse_moment(text: str) -> datetime:
    """An ISO 8601 time as an aware datetime; a time without an offset is taken as UTC."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is not an ISO 8601 time (e.g. 2026-01-31 or 2026-01-31T12:00:00Z)"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class DeliverySelection:
    """Which deliveries to redeliver: the filters of `GET /v1/deliveries`."""

    status: str = "failed"
    endpoint_id: str | None = None
    organization: str | None = None
    event_type: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def params(self) -> dict[str, str]:
        """The selection as query parameters."""
        values = {
            "status": self.status,
            "endpoint_id": self.endpoint_id,
            "organization": self.organization,
            "event_type": self.event_type,
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
        }
        return {name: value for name, value in values.items() if value is not None}


class Outcome(enum.StrEnum):
    """What one redeliver call came to."""

    QUEUED = "queued"
    SKIPPED = "skipped"  # an attempt was in flight (409)
    ERROR = "error"


@dataclass
class RedeliverySummary:
    """The counts the command ends with, and the reasons for any errors."""

    matched: int = 0
    queued: int = 0
    skipped: int = 0
    errors: int = 0
    problems: list[str] = field(default_factory=list)

    def count(self, delivery_id: str, outcome: Outcome, reason: str) -> None:
        """Add one redeliver call's outcome."""
        if outcome is Outcome.QUEUED:
            self.queued += 1
        elif outcome is Outcome.SKIPPED:
            self.skipped += 1
        else:
            self.errors += 1
            self.problems.append(f"{delivery_id}: {reason}")

    def line(self) -> str:
        """One line for the end of the run."""
        return (
            f"matched {self.matched}, queued {self.queued}, "
            f"skipped {self.skipped}, errors {self.errors}"
        )


class AdminClient:
    """A synchronous client for the admin routes of one Tidings deployment."""

    def __init__(
        self,
        base_url: str,
        key: str,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {key}", "User-Agent": f"tidings/{__version__}"},
            timeout=timeout,
            transport=transport,
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def delivery_pages(self, selection: DeliverySelection) -> Iterator[list[dict[str, Any]]]:
        """The matching deliveries, one page at a time, oldest first."""
        params = {**selection.params(), "limit": str(PAGE_SIZE)}
        while True:
            body = self._json(self._request("GET", "/v1/deliveries", params=params), 200)
            yield list(body["data"])
            if not body.get("next_cursor"):
                return
            params["cursor"] = body["next_cursor"]

    def redeliver(self, delivery_id: str) -> tuple[Outcome, str]:
        """Ask for one more attempt of a delivery now; never raises."""
        try:
            response = self._request("POST", f"/v1/deliveries/{delivery_id}/redeliver")
        except AdminApiError as error:
            return Outcome.ERROR, str(error)
        if response.status_code == 202:
            return Outcome.QUEUED, "queued"
        if response.status_code == 409:
            return Outcome.SKIPPED, "an attempt is in flight"
        return Outcome.ERROR, _problem_text(response)

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.HTTPError as error:
            raise AdminApiError(f"cannot reach {self._http.base_url}: {error}") from None

    @staticmethod
    def _json(response: httpx.Response, expected: int) -> dict[str, Any]:
        if response.status_code != expected:
            raise AdminApiError(
                f"{response.request.method} {response.request.url.path}: {_problem_text(response)}"
            )
        body: dict[str, Any] = response.json()
        return body


def _problem_text(response: httpx.Response) -> str:
    """A problem+json answer as one line: status, title, detail, field errors."""
    try:
        problem = response.json()
    except ValueError:
        return f"{response.status_code} {response.reason_phrase}"
    if not isinstance(problem, dict):
        return f"{response.status_code} {response.reason_phrase}"
    text = f"{response.status_code} {problem.get('title') or response.reason_phrase}"
    if problem.get("detail"):
        text += f": {problem['detail']}"
    for item in problem.get("errors") or []:
        text += f"; {item.get('pointer')}: {item.get('detail')}"
    return text


def collect_deliveries(
    client: AdminClient, selection: DeliverySelection, on_page: Callable[[int], None]
) -> list[dict[str, Any]]:
    """Every matching delivery, before anything changes; `on_page` hears each page's size."""
    found: dict[str, dict[str, Any]] = {}
    for page in client.delivery_pages(selection):
        for delivery in page:
            found.setdefault(delivery["id"], delivery)
        on_page(len(page))
    return list(found.values())


def redeliver_all(
    client: AdminClient, delivery_ids: list[str], on_each: Callable[[], None]
) -> RedeliverySummary:
    """Redeliver each delivery in turn; `on_each` hears every call's end."""
    summary = RedeliverySummary(matched=len(delivery_ids))
    for delivery_id in delivery_ids:
        outcome, reason = client.redeliver(delivery_id)
        summary.count(delivery_id, outcome, reason)
        on_each()
    return summary


def run_redelivery(
    client: AdminClient,
    selection: DeliverySelection,
    *,
    dry_run: bool,
    out: TextIO,
    console: Console,
) -> RedeliverySummary:
    """List, then (unless a dry run) redeliver, with a progress bar on `console`.

    Raises AdminApiError when the list cannot be read; errors of single redeliveries are
    counted in the summary instead.
    """
    with _progress(console) as progress:
        listing = progress.add_task("listing deliveries", total=None)
        found = collect_deliveries(client, selection, lambda size: progress.advance(listing, size))
        progress.update(listing, total=len(found), completed=len(found))
        if dry_run or not found:
            return _listed(found, out)
        sending = progress.add_task("redelivering", total=len(found))
        return redeliver_all(
            client, [item["id"] for item in found], lambda: progress.advance(sending)
        )


def _progress(console: Console) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def _listed(found: list[dict[str, Any]], out: TextIO) -> RedeliverySummary:
    """A dry run's answer: what would be redelivered, one delivery a line."""
    for item in found:
        print(
            f"{item['id']}  {item['status']:<10} {item['endpoint_id']}  "
            f"{item['event_type']}  {item['created_at']}",
            file=out,
        )
    return RedeliverySummary(matched=len(found))

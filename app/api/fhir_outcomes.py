"""`/fhir` speaks FHIR: `application/fhir+json` resources, and errors as OperationOutcome.

The app's error handlers (`problems.py`) decide every error's status and wording once; under
`/fhir` their problem+json answer is re-dressed as an OperationOutcome with the same status and
headers. Each problem becomes an issue: its pointer is the issue's `expression` when it is a
FHIRPath location (`Subscription.channel.endpoint`), else part of the diagnostics.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from quart import Quart, Response, request

FHIR_JSON = "application/fhir+json"
FHIR_PREFIX = "/fhir"
ISSUE_CODES = {
    400: "structure",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    409: "conflict",
    413: "too-long",
    415: "not-supported",
    422: "invalid",
    429: "throttled",
    503: "transient",
}
_KEPT_HEADERS = ("WWW-Authenticate", "Retry-After", "Allow")
Handler = Callable[[Any], Awaitable[Any]]


def fhir_response(
    resource: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A FHIR resource as an `application/fhir+json` response."""
    response = Response(json.dumps(resource), status=status, content_type=FHIR_JSON)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def operation_outcome(status: int, issues: list[tuple[str, str | None]]) -> dict[str, Any]:
    """An OperationOutcome with one error issue per (diagnostics, FHIRPath expression)."""
    code = ISSUE_CODES.get(status, "exception" if status >= 500 else "processing")
    severity = "fatal" if status >= 500 else "error"
    entries = []
    for diagnostics, expression in issues:
        issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics}
        if expression:
            issue["expression"] = [expression]
        entries.append(issue)
    return {"resourceType": "OperationOutcome", "issue": entries}


def install_operation_outcomes(app: Quart) -> None:
    """Answer errors under `/fhir` as OperationOutcome (call after the problem handlers)."""
    handlers = app.error_handler_spec[None][None]
    for kind, handler in list(handlers.items()):
        handlers[kind] = _for_fhir_paths(handler)  # type: ignore[arg-type]


def _for_fhir_paths(handler: Handler) -> Handler:
    async def handle(error: Any) -> Response:
        response: Response = await handler(error)
        if request.path != FHIR_PREFIX and not request.path.startswith(FHIR_PREFIX + "/"):
            return response
        return await _as_outcome(response)

    return handle


async def _as_outcome(problem: Response) -> Response:
    body = json.loads(await problem.get_data(as_text=True) or "{}")
    errors = body.get("errors") or []
    issues = [_issue(item.get("pointer", ""), item.get("detail", "")) for item in errors]
    if not issues:
        issues = [(str(body.get("detail") or body.get("title") or "error"), None)]
    headers = {name: problem.headers[name] for name in _KEPT_HEADERS if name in problem.headers}
    return fhir_response(
        operation_outcome(problem.status_code, issues), problem.status_code, headers
    )


def _issue(pointer: str, detail: str) -> tuple[str, str | None]:
    if pointer and not pointer.startswith(("/", "query:")):
        return detail, pointer
    return (f"{pointer}: {detail}" if pointer else detail), None

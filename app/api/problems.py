"""Errors as `application/problem+json` (RFC 9457), with field pointers for validation."""

from __future__ import annotations

import json
import logging
from typing import Any

from quart import Quart, Response
from werkzeug.exceptions import HTTPException

from app.domain.errors import Problem, TidingsError, ValidationFailed
from app.store import db

PROBLEM_JSON = "application/problem+json"
log = logging.getLogger("tidings.api")


class ApiError(TidingsError):
    """An HTTP-level refusal (malformed JSON, wrong content type, bad credentials)."""

    def __init__(
        self, status: int, title: str, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.headers = headers or {}


def problem_response(
    status: int,
    title: str,
    detail: str,
    problems: list[Problem] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """A problem+json response."""
    body: dict[str, Any] = {
        "type": f"urn:tidings:problem:{title.lower().replace(' ', '-')}",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if problems is not None:
        body["errors"] = [{"pointer": p.pointer, "detail": p.detail} for p in problems]
    response = Response(json.dumps(body), status=status, content_type=PROBLEM_JSON)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def register_problem_handlers(app: Quart) -> None:
    """Turn every error into problem+json."""
    app.register_error_handler(TidingsError, _tidings_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)


async def _tidings_error(error: TidingsError) -> Response:
    problems = error.problems if isinstance(error, ValidationFailed) else None
    headers = error.headers if isinstance(error, ApiError) else None
    return problem_response(error.status, error.title, error.detail, problems, headers)


async def _http_error(error: HTTPException) -> Response:
    status = error.code or 500
    title = error.name or "Error"
    detail = error.description or title
    if status == 413:
        detail = "the request body is larger than the limit (TIDINGS_MAX_BODY_BYTES)"
    return problem_response(status, title, detail)


async def _unexpected_error(error: Exception) -> Response:
    """503 while the database is unreachable (nothing was stored); 500 for anything else."""
    if db.is_unavailable(error):
        log.warning("database unavailable: %s", type(error).__name__)
        return problem_response(
            503,
            "Service unavailable",
            "the database is not reachable; nothing was stored, try again",
            headers={"Retry-After": "5"},
        )
    log.exception("unexpected error")
    return problem_response(500, "Internal server error", "an unexpected error happened")

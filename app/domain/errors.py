"""The errors Tidings raises about what a caller asked for.

TidingsError
 ├── ValidationFailed   422: one or more fields are wrong (with JSON pointers)
 ├── NotFound           404: no such object, or another organization's
 ├── Conflict           409: the request clashes with the current state
 └── Forbidden          403: the key's role may not do this
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a request, at a JSON pointer into its body or query."""

    pointer: str
    detail: str


class TidingsError(Exception):
    """Something the caller asked for cannot be done."""

    status = 400
    title = "Bad request"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class ValidationFailed(TidingsError):
    """The request is well-formed but some of its values are not acceptable."""

    status = 422
    title = "Validation failed"

    def __init__(self, problems: list[Problem], detail: str | None = None) -> None:
        super().__init__(detail or "; ".join(f"{p.pointer}: {p.detail}" for p in problems))
        self.problems = problems


class NotFound(TidingsError):
    """No such object in the caller's organization."""

    status = 404
    title = "Not found"


class Conflict(TidingsError):
    """The request clashes with the object's current state."""

    status = 409
    title = "Conflict"


class Forbidden(TidingsError):
    """The key's role does not allow this action."""

    status = 403
    title = "Forbidden"

"""Opaque, signed list cursors: a tampered cursor is a 400, never a different page."""

from __future__ import annotations

from datetime import datetime

from itsdangerous import BadSignature

from app.api.context import services
from app.api.problems import ApiError


def encode_cursor(created_at: datetime, last_id: str) -> str:
    """A cursor that resumes after (created_at, id)."""
    signer = services().cursor_signer
    return str(signer.dumps([created_at.isoformat(), last_id]))


def decode_cursor(cursor: str | None) -> tuple[datetime, str] | None:
    """The (created_at, id) a cursor stands for; 400 if it was not made by us."""
    if not cursor:
        return None
    try:
        created, last_id = services().cursor_signer.loads(cursor)
        return datetime.fromisoformat(created), str(last_id)
    except (BadSignature, ValueError, TypeError):
        raise ApiError(400, "Invalid cursor", "the cursor is not one this server issued") from None

"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import sqlalchemy as sa
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from quart import Blueprint, Response, current_app

from app.api.context import services
from app.store.db import transaction

blueprint = Blueprint("health", __name__)


@blueprint.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@blueprint.get("/readyz")
async def readyz() -> tuple[dict[str, str], int]:
    """The database answers; 503 while it does not."""
    try:
        async with transaction(services().sessions) as session:
            await session.exec(sa.select(sa.literal(1)))  # type: ignore[call-overload]
    except (OSError, sa.exc.SQLAlchemyError) as error:
        return {"status": "unavailable", "detail": type(error).__name__}, 503
    return {"status": "ready"}, 200


@blueprint.get("/metrics")
async def metrics() -> Response:
    """Prometheus text exposition of the delivery counters."""
    registry = current_app.extensions["tidings_metrics"]
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)

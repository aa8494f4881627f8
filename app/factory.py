"""create_app: the one place that wires the API (and, for `serve`, the runtime) together."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from itsdangerous import URLSafeSerializer
from prometheus_client import CollectorRegistry
from quart import Quart
from quart_schema import QuartSchema
from sqlalchemy.ext.asyncio import AsyncEngine

from app import __version__
from app.api import (
    auth,
    deliveries,
    endpoint_actions,
    endpoints,
    event_types,
    events,
    fhir_audit,
    fhir_metadata,
    fhir_subscription_ops,
    fhir_subscriptions,
    health,
    ingest,
    upstreams,
)
from app.api.connection import SingleTaskConnection
from app.api.context import Services
from app.api.fhir_outcomes import install_operation_outcomes
from app.api.problems import register_problem_handlers
from app.api.rate_limit import KeyRateLimiter
from app.config import Settings
from app.delivery import dns
from app.delivery.metrics import exposed_registry
from app.delivery.wakeups import PostgresWakeups
from app.domain.addresses import Resolver
from app.domain.catalog import load_catalog
from app.domain.matching import CriteriaCache
from app.domain.secrets import SecretBox
from app.runtime import Clock, Runtime, build_runtime, shut_down, utc_now, wake_workers
from app.store.db import make_engine, make_session_factory
from app.store.group_commit import EventCommitter
from app.store.sqlite_checkpoints import WalCheckpointer, checkpointer_for

BLUEPRINTS = (
    health.blueprint,
    endpoints.blueprint,
    endpoint_actions.blueprint,
    deliveries.blueprint,
    event_types.blueprint,
    events.blueprint,
    ingest.blueprint,
    upstreams.blueprint,
    fhir_metadata.blueprint,
    fhir_subscriptions.blueprint,
    fhir_subscription_ops.blueprint,
    fhir_audit.blueprint,
)


def create_app(
    settings: Settings,
    *,
    clock: Clock = utc_now,
    resolve: Resolver = dns.resolve,
    run_worker: bool = False,
) -> Quart:
    """A Tidings app for these settings; with `run_worker`, it delivers too."""
    if settings.secret_key is None:
        raise ValueError("create_app needs settings.secret_key (the CLI provides one)")
    app = Quart("tidings")
    app.asgi_http_class = SingleTaskConnection
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    engine = make_engine(settings.database_url)
    sessions = make_session_factory(engine)
    catalog = load_catalog(settings.catalog_paths)
    wakeups = None if settings.is_sqlite else PostgresWakeups(settings.database_url)
    registry = CollectorRegistry()
    runtime = (
        build_runtime(
            settings,
            sessions=sessions,
            catalog=catalog,
            clock=clock,
            resolve=resolve,
            wakeups=wakeups,
            registry=registry,
        )
        if run_worker
        else None
    )
    criteria_cache = CriteriaCache()
    services = Services(
        sessions=sessions,
        secret_box=SecretBox(settings.secret_key),
        cursor_signer=URLSafeSerializer(settings.secret_key, salt="tidings.cursor"),
        resolve=resolve,
        catalog=catalog,
        clock=clock,
        public_url=settings.public_url,
        require_https=settings.require_https,
        allowed_networks=settings.allowed_networks,
        wake_worker=_waker(runtime, wakeups),
        ingest_secret=settings.ingest_secret,
        rate_limiter=KeyRateLimiter(settings.api_rate_limit),
        criteria_cache=criteria_cache,
        event_committer=EventCommitter(sessions, catalog, criteria_cache, clock),
    )
    app.extensions["tidings"] = services
    app.extensions["tidings_runtime"] = runtime
    app.extensions["tidings_metrics"] = exposed_registry(registry)
    _install_api(app)
    _install_lifecycle(app, engine, runtime, wakeups, checkpointer_for(settings.database_url))
    return app


def _waker(runtime: Runtime | None, wakeups: PostgresWakeups | None) -> Callable[[], None]:
    worker = runtime.worker if runtime is not None else None
    return lambda: wake_workers(worker, wakeups)


def _install_lifecycle(
    app: Quart,
    engine: AsyncEngine,
    runtime: Runtime | None,
    wakeups: PostgresWakeups | None,
    checkpointer: WalCheckpointer | None,
) -> None:
    @app.before_serving
    async def start_delivering() -> None:
        if runtime is not None:
            await runtime.start()
        if checkpointer is not None:  # last: nothing after it can fail and leave it running
            checkpointer.start()

    @app.after_serving
    async def stop_delivering() -> None:
        await shut_down(runtime, wakeups, engine, checkpointer)


def _install_api(app: Quart) -> None:
    make_plain_response = app.make_response
    QuartSchema(
        app,
        info={"title": "Tidings", "version": __version__},
        security_schemes={"bearer": {"type": "http", "scheme": "bearer"}},
        security=[{"bearer": []}],
        redoc_ui_path=None,
        scalar_ui_path=None,
    )
    _convert_only_what_needs_it(app, make_plain_response)
    register_problem_handlers(app)
    install_operation_outcomes(app)
    app.before_request(auth.authenticate)
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)


def _convert_only_what_needs_it(app: Quart, make_plain_response: Any) -> None:
    """quart-schema converts every returned value through pydantic, building a TypeAdapter
    for each plain `dict` or `list` answered (about 20 µs a response). Such a value, returned
    alone or with a status, is already what Quart serializes: it skips the conversion. Models,
    dataclasses and answers with headers still go through quart-schema."""
    make_converted_response = app.make_response

    async def make_response(result: Any) -> Any:
        if _is_plain_json(result):
            return await make_plain_response(result)
        return await make_converted_response(result)

    app.make_response = make_response  # type: ignore[method-assign]


def _is_plain_json(result: Any) -> bool:
    """A `dict` or `list`, alone or with a status code (not with headers)."""
    if isinstance(result, tuple):
        if len(result) != 2 or type(result[1]) is not int:
            return False
        result = result[0]
    return type(result) in (dict, list)

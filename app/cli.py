"""The `tidings` command: the only reader of argv and of the environment."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from dotenv import load_dotenv

from app import __version__
from app.config import Settings, SettingsError, load_settings
from app.domain.catalog_files import CatalogError
from app.domain.models import Role
from app.processes import (
    WORKER_GC_YOUNG_THRESHOLD,
    allow_open_files,
    configure_logging,
    tune_garbage_collector,
    wait_for_shutdown_signal,
)

if TYPE_CHECKING:
    from app.admin_client import RedeliverySummary

log = logging.getLogger("tidings")
SLUG = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
MAX_PROCESSES = 64  # `tidings serve|api --processes`


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `tidings` subcommand; the exit status is the return value."""
    args = _parser().parse_args(argv)
    load_dotenv(Path.cwd() / ".env")
    try:
        # Client commands (redeliver) talk HTTP only: no local database or secret key needed.
        settings = load_settings(os.environ) if args.local else Settings()
    except SettingsError as error:
        print(f"tidings: {error}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    try:
        result: int = args.run(args, settings)
    except CatalogError as error:  # a broken catalog stops start-up with one clear line
        print(f"tidings: catalog: {error}", file=sys.stderr)
        return 2
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tidings", description="FHIR-aware webhook publisher")
    parser.add_argument("--version", action="version", version=f"tidings {__version__}")
    parser.set_defaults(local=True)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    for name, run, help_text in (
        ("serve", _serve, "API, delivery worker and scheduler in one process"),
        ("api", _serve_api_only, "only the API"),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("--host", default="127.0.0.1")
        command.add_argument("--port", type=int, default=8080)
        command.add_argument(
            "--processes",
            type=_process_count,
            default=1,
            metavar="N",
            help="processes sharing the port (default 1; one per core uses them all; "
            "several `serve` processes need PostgreSQL)",
        )
        command.set_defaults(run=run)
    commands.add_parser("worker", help="only the delivery worker and scheduler").set_defaults(
        run=_worker
    )
    commands.add_parser("migrate", help="apply database migrations").set_defaults(run=_migrate)
    _add_keys(commands)
    _add_redeliver(commands)
    _add_upstreams(commands)
    return parser


def _add_keys(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = commands.add_parser("keys", help="API keys").add_subparsers(
        required=True, metavar="ACTION"
    )
    create = keys.add_parser("create", help="create a key; prints it on the last line")
    create.add_argument("--org", required=True, type=_slug, help="organization id (created if new)")
    create.add_argument("--role", required=True, choices=[role.value for role in Role])
    create.add_argument(
        "--account", type=_slug, help="limit the key to one account of the organization"
    )
    create.set_defaults(run=_keys_create)
    revoke = keys.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")
    revoke.set_defaults(run=_keys_revoke)


def _add_redeliver(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from app.admin_client import REDELIVERABLE

    command = commands.add_parser(
        "redeliver",
        help="redeliver matching deliveries over the API (admin key)",
        description="List the matching deliveries first, then ask for one more attempt of each.",
    )
    command.add_argument(
        "--url", help="the Tidings API (default: $TIDINGS_PUBLIC_URL or http://127.0.0.1:8080)"
    )
    command.add_argument("--key", help="an admin API key (default: $TIDINGS_API_KEY)")
    command.add_argument("--endpoint", help="only deliveries to this endpoint id")
    command.add_argument("--org", type=_slug, help="only this organization (admin keys)")
    command.add_argument("--event-type", help="only events of this type")
    command.add_argument(
        "--status", choices=REDELIVERABLE, default="failed", help="default: failed"
    )
    command.add_argument("--since", type=_moment, help="created at or after (ISO 8601, UTC)")
    command.add_argument("--until", type=_moment, help="created before (ISO 8601, UTC)")
    command.add_argument(
        "--dry-run", action="store_true", help="list what would be redelivered, change nothing"
    )
    command.set_defaults(run=_redeliver, local=False)


def _add_upstreams(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    upstreams = commands.add_parser("upstreams", help="FHIR servers to poll").add_subparsers(
        required=True, metavar="ACTION"
    )
    add = upstreams.add_parser("add", help="poll a FHIR server's _history for an organization")
    add.add_argument("--org", required=True, type=_slug, help="organization id (created if new)")
    add.add_argument("--base-url", required=True, help="the FHIR base URL")
    add.add_argument("--auth", choices=["none", "bearer", "basic", "smart"], default="none")
    for flag, help_text in _UPSTREAM_AUTH_FLAGS.items():
        add.add_argument(flag, help=help_text)
    add.add_argument("--poll-seconds", type=_positive, default=30, help="default: 30")
    add.add_argument("--since", type=_moment, help="start from this instant, not from now")
    add.set_defaults(run=_upstreams_add)
    upstreams.add_parser("list", help="registered upstreams and their status").set_defaults(
        run=_upstreams_list
    )


_UPSTREAM_AUTH_FLAGS = {
    "--token": "bearer token",
    "--user": "basic auth user name",
    "--password": "basic auth password",
    "--client-id": "SMART backend services client id",
    "--client-secret": "SMART client secret (sent as client_secret_post)",
    "--token-url": "SMART token endpoint",
    "--scope": "SMART scope, e.g. system/*.read",
}
_UPSTREAM_POINTERS = {
    "/base_url": "--base-url",
    "/since": "--since",
    "/auth/username": "--user",
    **{f"/auth/{flag[2:].replace('-', '_')}": flag for flag in _UPSTREAM_AUTH_FLAGS},
}


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of seconds >= 1")
    return int(value)


def _process_count(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= MAX_PROCESSES:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a whole number of processes from 1 to {MAX_PROCESSES}"
        )
    return int(value)


def _upstreams_add(args: argparse.Namespace, settings: Settings) -> int:
    from app.delivery import dns
    from app.domain.errors import ValidationFailed
    from app.domain.secrets import SecretBox
    from app.ingest import upstream_config as config
    from app.ingest import upstream_registry as registry
    from app.store import migrate

    auth = config.UpstreamAuth(
        kind=config.AuthKind(args.auth),
        token=args.token,
        username=args.user,
        password=args.password,
        client_id=args.client_id,
        client_secret=args.client_secret,
        token_url=args.token_url,
        scope=args.scope,
    )
    registration = registry.Registration(
        args.org, args.base_url, auth, args.poll_seconds, args.since
    )
    assert settings.secret_key is not None
    checks = registry.Checks(
        SecretBox(settings.secret_key),
        dns.resolve,
        settings.allowed_networks,
        settings.require_https,
    )
    migrate.upgrade_to_head(settings.database_url)
    try:
        row = asyncio.run(
            registry.register_in_database(
                settings.database_url, registration, checks, datetime.now(UTC)
            )
        )
    except ValidationFailed as error:
        for problem in error.problems:
            flag = _UPSTREAM_POINTERS.get(problem.pointer, problem.pointer)
            print(f"tidings: {flag}: {problem.detail}", file=sys.stderr)
        return 2
    every = f"every {row.poll_seconds} s"
    print(f"watching {row.base_url} for organization {row.organization_id} {every}")
    print(row.id)
    return 0


def _upstreams_list(args: argparse.Namespace, settings: Settings) -> int:
    from app.ingest import upstream_registry as registry
    from app.store import migrate

    migrate.upgrade_to_head(settings.database_url)
    for row in asyncio.run(registry.upstreams_in_database(settings.database_url)):
        polled = row.last_polled_at.isoformat() if row.last_polled_at else "never"
        status = f"failing ({row.failures}): {row.last_error}" if row.failures else "ok"
        print(
            f"{row.id}  {row.organization_id}  {row.base_url}  auth={row.auth_kind}"
            f"  every {row.poll_seconds} s  cursor={row.cursor}  polled={polled}  {status}"
        )
    return 0


def _moment(value: str) -> datetime:
    from app.admin_client import parse_moment

    try:
        return parse_moment(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _slug(value: str) -> str:
    if not SLUG.fullmatch(value):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not an id: use 1-64 lower-case letters, digits, '-' or '_'"
        )
    return value


def _migrate(args: argparse.Namespace, settings: Settings) -> int:
    from app.store import migrate

    migrate.upgrade_to_head(settings.database_url)
    print("database is at the newest schema")
    return 0


def _keys_create(args: argparse.Namespace, settings: Settings) -> int:
    from app.store import migrate
    from app.store.admin import create_api_key

    migrate.upgrade_to_head(settings.database_url)
    key, key_id = asyncio.run(
        create_api_key(settings.database_url, args.org, Role(args.role), args.account)
    )
    print(
        f"created {args.role} key {key_id} for organization {args.org}"
        + (f", account {args.account}" if args.account else "")
    )
    print(key)
    return 0


def _keys_revoke(args: argparse.Namespace, settings: Settings) -> int:
    from app.store.admin import revoke_api_key

    if not asyncio.run(revoke_api_key(settings.database_url, args.key_id)):
        print(f"tidings: no live key {args.key_id!r}", file=sys.stderr)
        return 1
    print(f"revoked {args.key_id}")
    return 0


def _redeliver(args: argparse.Namespace, settings: Settings) -> int:
    from rich.console import Console

    from app import admin_client as admin

    key = args.key or os.environ.get("TIDINGS_API_KEY")
    if not key:
        print("tidings: redeliver needs an admin key: --key or TIDINGS_API_KEY", file=sys.stderr)
        return 2
    if args.since and args.until and args.until <= args.since:
        print("tidings: --until must be later than --since", file=sys.stderr)
        return 2
    selection = admin.DeliverySelection(
        status=args.status,
        endpoint_id=args.endpoint,
        organization=args.org,
        event_type=args.event_type,
        since=args.since,
        until=args.until,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per call would bury the bar
    console = Console(stderr=True)
    try:
        base_url = args.url or os.environ.get("TIDINGS_PUBLIC_URL") or settings.public_url
        with admin.AdminClient(base_url, key) as client:
            summary = admin.run_redelivery(
                client, selection, dry_run=args.dry_run, out=sys.stdout, console=console
            )
    except admin.AdminApiError as error:
        print(f"tidings: {error}", file=sys.stderr)
        return 1
    return _report_redelivery(summary, dry_run=args.dry_run)


def _report_redelivery(summary: RedeliverySummary, *, dry_run: bool) -> int:
    for problem in summary.problems:
        print(f"tidings: {problem}", file=sys.stderr)
    if dry_run:
        print(f"dry run: {summary.matched} deliveries would be redelivered")
    elif not summary.matched:
        print("nothing to redeliver")
    print(summary.line())
    return 1 if summary.errors else 0


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    from app.runtime import run_worker_process
    from app.store import migrate

    migrate.upgrade_to_head(settings.database_url)
    log.info("tidings %s worker started", __version__)
    allow_open_files(settings.worker_concurrency)
    tune_garbage_collector(WORKER_GC_YOUNG_THRESHOLD)
    asyncio.run(run_worker_process(settings, wait_for_shutdown_signal))
    return 0


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    return _run_server(args, settings, with_worker=True)


def _serve_api_only(args: argparse.Namespace, settings: Settings) -> int:
    return _run_server(args, settings, with_worker=False)


def _run_server(args: argparse.Namespace, settings: Settings, *, with_worker: bool) -> int:
    from app.server import ServerError, serve_http
    from app.store import migrate

    migrate.upgrade_to_head(settings.database_url)
    try:
        return serve_http(
            settings, args.host, args.port, with_worker=with_worker, processes=args.processes
        )
    except ServerError as error:
        print(f"tidings: {error}", file=sys.stderr)
        return 1

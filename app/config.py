"""Settings: one frozen value built once from the `TIDINGS_*` environment variables.

Only `cli`, `asgi` and `factory` read it; everything below them receives plain values.
"""

from __future__ import annotations

import dataclasses
import secrets
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from app.domain import addresses

PREFIX = "TIDINGS_"
DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./tidings.db"
DEFAULT_RETRY_SCHEDULE = (5, 300, 1800, 7200, 18000, 36000, 36000)
SECRET_FILE = Path(".tidings-secret")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

Network = addresses.IPNetwork


class SettingsError(ValueError):
    """A `TIDINGS_*` variable has a value Tidings cannot start with."""

    def __init__(self, variable: str, reason: str) -> None:
        super().__init__(f"{PREFIX}{variable}: {reason}")
        self.variable = PREFIX + variable


@dataclass(frozen=True)
class Settings:
    """Everything Tidings can be told at start-up (SPEC section 2)."""

    database_url: str = DEFAULT_DATABASE_URL
    secret_key: str | None = None
    public_url: str = "http://127.0.0.1:8080"
    allowed_networks: tuple[Network, ...] = ()
    require_https: bool = False
    retry_schedule: tuple[int, ...] = DEFAULT_RETRY_SCHEDULE
    delivery_timeout: float = 5.0
    disable_after: int = 432000
    catalog_paths: tuple[Path, ...] = ()
    log_level: str = "info"
    max_body_bytes: int = 1024 * 1024
    worker_batch_size: int = 256
    worker_concurrency: int = 512
    lease_seconds: int = 60
    poll_seconds: float = 1.0
    api_rate_limit: int = 0
    ingest_secret: str | None = None
    """Medplum-style `X-Signature` secret: when set, FHIR pushes must be signed with it."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Build settings from `TIDINGS_*` variables; SettingsError names the first bad one."""
        values: dict[str, object] = {}
        for field in dataclasses.fields(cls):
            raw = environ.get(PREFIX + field.name.upper())
            if raw is None or raw.strip() == "":
                continue
            values[field.name] = _parse(field.name, raw.strip())
        return cls(**values)  # type: ignore[arg-type]

    @property
    def is_sqlite(self) -> bool:
        """SQLite runs one worker process; PostgreSQL scales out."""
        return self.database_url.startswith("sqlite")


def load_settings(environ: Mapping[str, str], secret_file: Path = SECRET_FILE) -> Settings:
    """Settings from the environment; without TIDINGS_SECRET_KEY, one kept in `secret_file`."""
    settings = Settings.from_env(environ)
    if settings.secret_key is None:
        settings = dataclasses.replace(settings, secret_key=_secret_from_file(secret_file))
    return settings


def _secret_from_file(path: Path) -> str:
    if path.exists():
        return path.read_text().strip()
    value = secrets.token_urlsafe(48)
    path.write_text(value + "\n")
    path.chmod(0o600)
    print(
        f"tidings: warning: TIDINGS_SECRET_KEY is not set; generated one into {path.resolve()}"
        " (keep it: it decrypts the signing secrets)",
        file=sys.stderr,
    )
    return value


def _parse(name: str, raw: str) -> object:
    parser = _PARSERS.get(name, _parse_text)
    try:
        return parser(raw)
    except ValueError as error:
        raise SettingsError(name.upper(), str(error)) from None


def _parse_text(raw: str) -> str:
    return raw


def _parse_bool(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


def _parse_positive_float(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"expected a number of seconds, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"must be greater than 0, got {raw!r}")
    return value


def _parse_non_negative_int(raw: str) -> int:
    if not raw.isdigit():
        raise ValueError(f"expected a whole number >= 0, got {raw!r}")
    return int(raw)


def _parse_positive_int(raw: str) -> int:
    value = _parse_non_negative_int(raw)
    if value == 0:
        raise ValueError("must be greater than 0")
    return value


def _parse_schedule(raw: str) -> tuple[int, ...]:
    parts = [part.strip() for part in raw.split(",")]
    if not all(part.isdigit() for part in parts):
        raise ValueError(f"expected comma-separated whole seconds like '5,300,1800', got {raw!r}")
    return tuple(int(part) for part in parts)


def _parse_database_url(raw: str) -> str:
    if raw.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
        return raw
    if raw.startswith(("postgresql://", "postgres://")):
        return "postgresql+asyncpg://" + raw.split("://", 1)[1]
    raise ValueError("expected sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER@HOST/DB")


def _parse_public_url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"expected an absolute http(s) URL, got {raw!r}")
    return raw.rstrip("/")


def _parse_paths(raw: str) -> tuple[Path, ...]:
    paths = tuple(Path(part.strip()) for part in raw.split(",") if part.strip())
    for path in paths:
        if not path.exists():
            raise ValueError(f"{path} does not exist")
    return paths


def _parse_log_level(raw: str) -> str:
    if raw.lower() not in LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}, got {raw!r}")
    return raw.lower()


def _parse_ingest_secret(raw: str) -> str:
    if len(raw) < 16:
        raise ValueError("must be at least 16 characters (the upstream signs pushes with it)")
    return raw


def _parse_secret_key(raw: str) -> str:
    if len(raw) < 32:
        raise ValueError("must be at least 32 characters (try: openssl rand -base64 32)")
    return raw


_PARSERS = {
    "database_url": _parse_database_url,
    "secret_key": _parse_secret_key,
    "public_url": _parse_public_url,
    "allowed_networks": addresses.parse_networks,
    "require_https": _parse_bool,
    "retry_schedule": _parse_schedule,
    "delivery_timeout": _parse_positive_float,
    "disable_after": _parse_positive_int,
    "catalog_paths": _parse_paths,
    "log_level": _parse_log_level,
    "max_body_bytes": _parse_positive_int,
    "worker_batch_size": _parse_positive_int,
    "worker_concurrency": _parse_positive_int,
    "lease_seconds": _parse_positive_int,
    "poll_seconds": _parse_positive_float,
    "api_rate_limit": _parse_non_negative_int,
    "ingest_secret": _parse_ingest_secret,
}

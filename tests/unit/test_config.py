"""Settings from TIDINGS_* variables: defaults, parsing, and one clear line per bad value."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from app.config import Settings, SettingsError, load_settings


def test_defaults_match_the_spec() -> None:
    settings = Settings.from_env({})
    assert settings.database_url == "sqlite+aiosqlite:///./tidings.db"
    assert settings.public_url == "http://127.0.0.1:8080"
    assert settings.retry_schedule == (5, 300, 1800, 7200, 18000, 36000, 36000)
    assert settings.delivery_timeout == 5.0
    assert settings.disable_after == 432000
    assert settings.require_https is False
    assert settings.allowed_networks == ()
    assert settings.log_level == "info"


def test_values_are_parsed() -> None:
    settings = Settings.from_env(
        {
            "TIDINGS_DATABASE_URL": "postgresql://postgres@127.0.0.1/tidings",
            "TIDINGS_ALLOWED_NETWORKS": "127.0.0.0/8, ::1/128",
            "TIDINGS_REQUIRE_HTTPS": "true",
            "TIDINGS_RETRY_SCHEDULE": "1,2,3",
            "TIDINGS_DELIVERY_TIMEOUT": "2.5",
            "TIDINGS_PUBLIC_URL": "https://hooks.example.org/",
            "TIDINGS_LOG_LEVEL": "DEBUG",
        }
    )
    assert settings.database_url == "postgresql+asyncpg://postgres@127.0.0.1/tidings"
    assert settings.allowed_networks == (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    assert settings.require_https is True
    assert settings.retry_schedule == (1, 2, 3)
    assert settings.delivery_timeout == 2.5
    assert settings.public_url == "https://hooks.example.org"
    assert settings.log_level == "debug"


@pytest.mark.parametrize(
    ("variable", "value", "fragment"),
    [
        ("DATABASE_URL", "mysql://x", "sqlite+aiosqlite"),
        ("ALLOWED_NETWORKS", "127.0.0.0/33", "'127.0.0.0/33'"),
        ("ALLOWED_NETWORKS", "localhost", "'localhost'"),
        ("REQUIRE_HTTPS", "maybe", "true or false"),
        ("RETRY_SCHEDULE", "5,soon", "comma-separated"),
        ("DELIVERY_TIMEOUT", "-1", "greater than 0"),
        ("DELIVERY_TIMEOUT", "fast", "number of seconds"),
        ("DISABLE_AFTER", "0", "greater than 0"),
        ("PUBLIC_URL", "hooks.example.org", "absolute http(s) URL"),
        ("LOG_LEVEL", "loud", "one of debug"),
        ("INGEST_SECRET", "short", "at least 16"),
        ("SECRET_KEY", "short", "at least 32"),
        ("CATALOG_PATHS", "/no/such/catalog.toml", "does not exist"),
        ("MAX_BODY_BYTES", "1MB", "whole number"),
    ],
)
def test_a_bad_value_names_the_variable_and_the_reason(
    variable: str, value: str, fragment: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({f"TIDINGS_{variable}": value})
    message = str(caught.value)
    assert message.startswith(f"TIDINGS_{variable}: ")
    assert fragment in message
    assert "\n" not in message


def test_a_secret_key_is_generated_once_and_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret_file = tmp_path / ".tidings-secret"
    first = load_settings({}, secret_file)
    assert "warning" in capsys.readouterr().err
    second = load_settings({}, secret_file)
    assert first.secret_key == second.secret_key
    assert first.secret_key is not None and len(first.secret_key) >= 32
    assert secret_file.stat().st_mode & 0o777 == 0o600


def test_an_explicit_secret_key_wins(tmp_path: Path) -> None:
    key = "k" * 40
    settings = load_settings({"TIDINGS_SECRET_KEY": key}, tmp_path / ".tidings-secret")
    assert settings.secret_key == key
    assert not (tmp_path / ".tidings-secret").exists()

"""`tidings worker` and `serve` raise the soft limit on open files to what the sender's pool
may hold, as far as the hard limit allows, and say so when it does not."""

from __future__ import annotations

import logging
import resource
from collections.abc import Iterator

import pytest

from app import processes


@pytest.fixture
def soft_limit() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_soft_limit_is_raised_to_what_the_concurrency_needs(soft_limit: None) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 2 * 512 + processes.OTHER_OPEN_FILES
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.fail(f"this machine's hard limit ({hard}) is below {needed}: cannot check")
    resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard))
    processes.allow_open_files(512)
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (needed, hard)
    processes.allow_open_files(16)  # never lowered
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (needed, hard)


def test_a_hard_limit_too_low_is_used_and_reported(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    limits = {"now": (256, 1000)}
    monkeypatch.setattr(resource, "getrlimit", lambda _: limits["now"])
    monkeypatch.setattr(resource, "setrlimit", lambda _, value: limits.update(now=value))
    with caplog.at_level(logging.WARNING, logger=processes.log.name):
        processes.allow_open_files(512)
    assert limits["now"] == (1000, 1000)
    assert "TIDINGS_WORKER_CONCURRENCY=512 may need 1280" in caplog.text

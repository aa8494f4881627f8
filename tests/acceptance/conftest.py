"""Run the real `tidings` command as a process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

TIDINGS = str(Path(sys.executable).parent / "tidings")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Tidings:
    """A working directory and environment for `tidings` processes."""

    workdir: Path
    env: dict[str, str]

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [TIDINGS, *args],
            cwd=self.workdir,
            env=self.env,
            text=True,
            capture_output=True,
            timeout=60,
            check=check,
        )

    def key(self, org: str, role: str = "partner", account: str | None = None) -> str:
        extra = ["--account", account] if account else []
        result = self.run("keys", "create", "--org", org, "--role", role, *extra)
        return result.stdout.strip().splitlines()[-1]

    def start(self, *args: str) -> tuple[subprocess.Popen[str], str]:
        port = free_port()
        process = subprocess.Popen(
            [TIDINGS, *args, "--port", str(port)],
            cwd=self.workdir,
            env=self.env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(
                    f"tidings exited: {process.stdout.read() if process.stdout else ''}"
                )
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    return process, base
            except httpx.TransportError:
                time.sleep(0.1)
        process.kill()
        raise AssertionError("tidings did not start within 30 s")


@pytest.fixture
def tidings(tmp_path: Path) -> Iterator[Tidings]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("TIDINGS_")}
    env.update(
        TIDINGS_SECRET_KEY="acceptance-secret-key-0123456789abcdef",
        TIDINGS_ALLOWED_NETWORKS="127.0.0.0/8",
        TIDINGS_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'tidings.db'}",
    )
    yield Tidings(workdir=tmp_path, env=env)


def stop(process: subprocess.Popen[str]) -> str:
    process.terminate()
    try:
        output, _ = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    return output or ""

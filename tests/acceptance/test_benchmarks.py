"""The benchmark keeps working: `scripts/bench.py --quick` runs every section, as the README and
docs/performance.md tell people to, and writes a row with a number for each measurement; the
focused probes run too. The numbers themselves are not judged here (the machine is shared)."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = ("ceiling", "drain", "e2e", "ingest", "matching", "memory", "slow")


def run_script(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        text=True,
        capture_output=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.acceptance
@pytest.mark.postgres
def test_the_quick_benchmark_measures_every_section(tmp_path: Path) -> None:
    results = tmp_path / "bench.json"
    done = run_script("scripts/bench.py", "--quick", "--json", str(results), timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr

    report = json.loads(results.read_text())
    assert report["mode"] == "quick"
    rows = {row["name"]: row for row in report["results"]}
    for section in SECTIONS:
        assert f"[{section}: " in done.stderr, f"section {section} did not run"
    for name in (
        "ceiling: aiohttp raw",
        "drain 5,000 SQLite, 1 worker",
        "drain 5,000 PostgreSQL, 4 workers",
        "e2e p99 (accept -> arrival), SQLite, serve",
        "fan-out 1 event -> 1,000 endpoints",
        "ingest: POST /v1/events",
        "ingest: FHIR Bundles of 500, SQLite",
        "ingest: POST /v1/events, 2 processes",
        "ingest: FHIR Bundles of 500, SQLite, 2 processes",
        "matching p99, 10,000 endpoints",
        "worker peak RSS, 50,000 queued",
        "slow receivers: 10 % hanging",
    ):
        assert name in rows, f"no row {name!r} in {sorted(rows)}"
    for row in rows.values():
        assert math.isfinite(row["value"]) and row["value"] > 0, row
        assert all(count == "0" for count in re.findall(r"(\d+) errors", row["note"])), row
    assert re.search(r"^measurement +value +unit +target", done.stdout, re.MULTILINE), done.stdout


@pytest.mark.acceptance
@pytest.mark.postgres
@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_the_queue_probe_runs_with_ordered_and_idle_ordered_endpoints(database: str) -> None:
    flags = ["--postgres"] if database == "postgres" else []
    done = run_script(
        "scripts/bench_probe.py",
        "queue",
        *flags,
        "--ordered",
        "--deliveries",
        "200",
        "--idle-ordered",
        "20",
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "200 deliveries in claims of 256" in done.stdout, done.stdout
    assert "claim :" in done.stdout and "record:" in done.stdout


@pytest.mark.acceptance
@pytest.mark.parametrize(("probe", "unit"), [("bundles", "changes/s"), ("events", "events/s")])
def test_the_ingest_probes_run_without_errors(probe: str, unit: str) -> None:
    done = run_script("scripts/bench_probe.py", probe, "--seconds", "1", timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    found = re.search(
        rf"{probe} SQLite, .* ([\d,]+) {unit}, (\d+) errors; API CPU \d+ µs", done.stdout
    )
    assert found, done.stdout
    assert int(found.group(1).replace(",", "")) > 0 and found.group(2) == "0", done.stdout


@pytest.mark.acceptance
@pytest.mark.postgres
@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_the_commit_probe_stores_every_event_in_rounds(database: str) -> None:
    flags = ["--postgres"] if database == "postgres" else []
    done = run_script("scripts/bench_probe.py", "commit", *flags, "--seconds", "1", timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    kind = "PostgreSQL" if database == "postgres" else "SQLite"
    found = re.search(
        rf"commit {kind}, 16 at a time for 1 s: ([\d,]+) events/s, rounds of ([\d.]+); "
        r"CPU \d+ µs",
        done.stdout,
    )
    assert found, done.stdout
    assert int(found.group(1).replace(",", "")) > 0, done.stdout
    assert 1 <= float(found.group(2)) <= 16, done.stdout


@pytest.mark.acceptance
def test_the_route_probe_times_the_events_route_beside_the_no_op_route() -> None:
    done = run_script("scripts/bench_probe.py", "route", "--requests", "200", timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "route SQLite, 16 at a time, 5 rounds of 200" in done.stdout, done.stdout
    ratios = {}
    for name in ("no-op", "events", "events, store left out"):
        found = re.search(
            rf"^  {re.escape(name)} +(?:\d+ / ){{4}}\d+ µs; median ([\d.]+) times",
            done.stdout,
            re.MULTILINE,
        )
        assert found, done.stdout
        ratios[name] = float(found.group(1))
    assert ratios["no-op"] == 1.0 and ratios["events"] > 0, ratios

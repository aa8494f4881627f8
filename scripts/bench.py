"""Tidings performance benchmark: one command, a table on stdout, results as JSON.

Run from the repository root with the project's virtualenv:

    .venv/bin/python scripts/bench.py --quick          # under a minute
    .venv/bin/python scripts/bench.py                  # full, under 15 minutes
    .venv/bin/python scripts/bench.py --only drain,matching --json /tmp/b.json

It starts what it needs and stops it afterwards: a fast aiohttp receiver process on
127.0.0.1 (`bench_receiver.py`), `tidings worker`, `tidings serve` and `tidings api`
processes, a no-op Quart app (`bench_noop.py`), SQLite files in a work folder, and PostgreSQL
databases `tidings_bench_<pid>_*` on 127.0.0.1:5432 (user postgres), dropped at the end.

Sections (`--only` takes their names):

- ceiling    raw aiohttp and the Tidings Sender, same signed payloads, same receiver
- drain      N pending deliveries: SQLite with 1 worker, PostgreSQL with 1, 2 and 4 workers
- e2e        500 events/s through `tidings serve`, accept -> arrival p50/p95/p99; fan-out to 1,000
- ingest     single events against a no-op Quart route; 500-change FHIR history Bundles
- matching   per-change matching p99 at 1k, 10k (and 100k in full mode) endpoints
- memory     peak RSS of `tidings worker` with 100k (full: 1M) queued deliveries
- slow       healthy-endpoint throughput with 10 % of endpoints hanging

Every row carries the 1-minute load average when it was measured: the machine is shared, so
compare the ratios measured in the same run before the absolute numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import shutil
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_api
import bench_delivery
import bench_matching
from bench_env import FULL, QUICK, Bench, start_receiver, stop_process
from bench_report import Measurement, machine, render_table, write_json

Section = Callable[[Bench], Awaitable[list[Measurement]]]
SECTIONS: dict[str, Section] = {
    "ceiling": bench_delivery.ceiling,
    "drain": bench_delivery.drain,
    "e2e": bench_api.end_to_end,
    "ingest": bench_api.ingest,
    "matching": bench_matching.match,
    "memory": bench_delivery.memory,
    "slow": bench_delivery.slow_receivers,
}


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Tidings performance benchmark (see the module docstring)."
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    parser.add_argument(
        "--json", type=Path, default=Path("bench-results/bench.json"), help="results file"
    )
    parser.add_argument(
        "--only", default=",".join(SECTIONS), help=f"comma-separated: {', '.join(SECTIONS)}"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder and its logs")
    args = parser.parse_args(argv)
    unknown = set(args.only.split(",")) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    return args


async def _run(args: argparse.Namespace, work: Path) -> list[Measurement]:
    receiver = await start_receiver(work)
    bench = Bench(sizes=QUICK if args.quick else FULL, work=work, receiver=receiver)
    rows: list[Measurement] = []
    try:
        for name in args.only.split(","):
            started = time.perf_counter()
            try:
                found = await SECTIONS[name](bench)
            except Exception as error:  # a broken section must not hide the others' numbers
                traceback.print_exc()
                found = [Measurement(f"{name}: FAILED", float("nan"), "", note=repr(error))]
            rows += found
            print(f"[{name}: {time.perf_counter() - started:.1f} s]", file=sys.stderr)
            for row in found:
                print(f"  {row.name}: {row.value:.4g} {row.unit} {row.verdict}", file=sys.stderr)
    finally:
        stop_process(receiver.process)
        for database in bench.databases:
            await database.drop()
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen sections; print the table; write the JSON."""
    args = _arguments(argv)
    command = shlex.join(["python", "scripts/bench.py", *(argv or sys.argv[1:])])
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    work = args.json.resolve().parent / f"work-{stamp}"
    work.mkdir(parents=True, exist_ok=True)
    info = machine()
    started = time.perf_counter()
    try:
        rows = asyncio.run(_run(args, work))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    seconds = time.perf_counter() - started
    mode = "quick" if args.quick else "full"
    load = " ".join(f"{x:.2f}" for x in info["loadavg_start"])
    print(
        f"\nTidings benchmark ({mode}), {info['nproc']} CPUs, Python {info['python']}, "
        f"load at start {load}, {seconds:.0f} s"
    )
    print(render_table(rows))
    write_json(args.json, command=command, mode=mode, info=info, rows=rows, seconds=seconds)
    print(f"\nresults: {args.json}")
    return 1 if any(row.name.endswith(": FAILED") for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())

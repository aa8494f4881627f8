"""Benchmark measurements, their verdicts, the printed table and the JSON file."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Measurement:
    """One row of the table.

    `goal` is the target value and `higher_is_better` its direction; `ratio` compares with a
    baseline measured in the same run (the raw aiohttp ceiling, the no-op Quart route...).
    """

    name: str
    value: float
    unit: str
    goal: float | None = None
    higher_is_better: bool = True
    ratio: float | None = None
    ratio_of: str = ""
    ratio_goal: float | None = None
    note: str = ""
    load1: float = field(default_factory=lambda: os.getloadavg()[0])
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def target(self) -> str:
        parts = []
        if self.goal is not None:
            parts.append(f"{'>=' if self.higher_is_better else '<'} {_number(self.goal)}")
        if self.ratio_goal is not None:
            parts.append(f">= {self.ratio_goal:.0%} of {self.ratio_of}")
        return ", ".join(parts) or "-"

    @property
    def verdict(self) -> str:
        """`ok`, `MISS`, or `-` when there is no target."""
        checks = []
        if self.goal is not None:
            met = self.value >= self.goal if self.higher_is_better else self.value < self.goal
            checks.append(met)
        if self.ratio_goal is not None and self.ratio is not None:
            checks.append(self.ratio >= self.ratio_goal)
        if not checks:
            return "-"
        return "ok" if all(checks) else "MISS"

    def as_json(self) -> dict[str, Any]:
        return asdict(self) | {"target": self.target, "verdict": self.verdict}


def percentile(values: Sequence[float], fraction: float) -> float:
    """The `fraction` quantile (nearest rank) of `values`."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[index]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _number(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def render_table(rows: Sequence[Measurement]) -> str:
    """A fixed-width table: name, value, unit, target, ratio, verdict, load."""
    header = ("measurement", "value", "unit", "target", "ratio", "verdict", "load1")
    lines = [
        (
            row.name,
            _number(row.value),
            row.unit,
            row.target,
            "-" if row.ratio is None else f"{row.ratio:.0%} of {row.ratio_of}",
            row.verdict,
            f"{row.load1:.2f}",
        )
        for row in rows
    ]
    widths = [
        max(len(str(cell)) for cell in column) for column in zip(header, *lines, strict=False)
    ]
    out = []
    for number, cells in enumerate([header, *lines]):
        out.append("  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
        if number == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    memory_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory_kb = int(line.split()[1])
    return {
        "nproc": os.cpu_count(),
        "memory_gb": round(memory_kb / 1024 / 1024, 1),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "loadavg_start": os.getloadavg(),
    }


def write_json(
    path: Path,
    *,
    command: str,
    mode: str,
    info: dict[str, Any],
    rows: Sequence[Measurement],
    seconds: float,
) -> None:
    """The results file (its folder is created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "command": command,
        "mode": mode,
        "machine": info | {"loadavg_end": os.getloadavg()},
        "seconds": round(seconds, 1),
        "results": [row.as_json() for row in rows],
    }
    path.write_text(json.dumps(document, indent=2) + "\n")

"""Results of ``make bench``: ``bench/results/latest.json`` and a markdown table of the targets.

Each benchmark returns a dict; the runner stores it under the benchmark's name. ``TARGETS``
says which figure each target of issue 8 compares against what, so the table and the closing
note read the same numbers.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Target:
    name: str
    #: A readable statement of the target.
    text: str
    #: (results) -> (measured text, met?) or None when the figure is missing.
    check: Callable[[Mapping[str, Any]], tuple[str, bool] | None]


def _get(results: Mapping[str, Any], path: str) -> Any:
    node: Any = results
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _nochange(size: str) -> Target:
    def check(r: Mapping[str, Any]) -> tuple[str, bool] | None:
        row = _get(r, f"nochange.{size}")
        if not row:
            return None
        ok = row["requests"] <= 2 and row["bytes"] < 8192 and row["seconds"] <= 1.25 * row["floor_seconds"]
        return (f"{row['requests']} requests, {row['bytes']} B, {row['seconds'] * 1000:.0f} ms "
                f"(floor {row['floor_seconds'] * 1000:.0f} ms, {row['seconds'] / row['floor_seconds']:.2f}x)", ok)
    return Target(f"nochange {size}", "2 requests, < 8 KB, <= 1.25x floor", check)


def _vdirsyncer(kind: str, at_least: float, server: str) -> Target:
    """The no-change ratio of warm costs (start-up subtracted). When davbridge's warm cost is
    lost in its start-up's noise there is no such ratio; the figure then is the one with
    davbridge's sync timed inside its process (``nochange_ratio_sync_only``), and says so."""
    def check(r: Mapping[str, Any]) -> tuple[str, bool] | None:
        row = _get(r, f"vdirsyncer.{kind}")
        if not row or "error" in row:
            return None
        ratio, inside = row.get("nochange_ratio"), row.get("nochange_ratio_sync_only")
        one = row.get("onechange_ratio")
        one_text = f"; one change {one:.1f}x" if one is not None else ""
        if ratio is not None:
            return f"{ratio:.1f}x{one_text}", ratio >= at_least
        if inside is None:
            return "no ratio: davbridge's warm cost is within its start-up's noise", False
        return (f"{inside:.1f}x with davbridge's sync timed inside its process (its warm cost, "
                f"{row.get('davbridge_nochange_warm_s')} s, is within its start-up's noise){one_text}",
                inside >= at_least)
    return Target(f"vdirsyncer.{kind}.nochange_ratio", f"no-change >= {at_least:g}x faster than vdirsyncer ({server})",
                  check)


def _at_most(path: str, limit: float, unit: str, text: str) -> Target:
    def check(r: Mapping[str, Any]) -> tuple[str, bool] | None:
        value = _get(r, path)
        return None if value is None else (f"{value:.2f} {unit}", value < limit)
    return Target(path, text, check)


def _initial(r: Mapping[str, Any]) -> tuple[str, bool] | None:
    row = _get(r, "initial")
    if not row:
        return None
    return (f"{row['seconds']:.1f} s (floor {row['floor_seconds']:.1f} s, "
            f"{row['seconds'] / row['floor_seconds']:.2f}x)", row["seconds"] <= 1.5 * row["floor_seconds"])


def _mapping(r: Mapping[str, Any]) -> tuple[str, bool] | None:
    value = _get(r, "mapping.events_per_second")
    return None if value is None else (f"{value:,.0f} events/s", True)


TARGETS = [
    _nochange("100"), _nochange("1000"), _nochange("10000"),
    Target("initial", "5,000 each way, 20 ms RTT: <= 1.5x floor", _initial),
    _at_most("tick.seconds", 60, "s", "1,000 users, one tick: < 60 s"),
    _vdirsyncer("radicale", 3, "Radicale"),
    _vdirsyncer("cyrus", 10, "Cyrus"),
    Target("mapping", "events per second, Graph JSON -> iCalendar -> Graph JSON (no target)", _mapping),
    _at_most("memory.peak_mb", 256, "MB", "first sync of 50,000 events: peak RSS < 256 MB"),
    _at_most("cold_import.seconds", 1, "s", "import function_app: < 1 s"),
]


def machine() -> dict[str, Any]:
    import os

    return {"python": platform.python_version(), "cpus": os.cpu_count(), "system": platform.platform()}


def save(results: dict[str, Any], *, merge: bool) -> tuple[Path, Path]:
    """Write latest.json (merged into the previous one when only some benchmarks ran) and
    latest.md; return both paths."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "latest.json"
    if merge and path.exists():
        previous = json.loads(path.read_text())
        previous.update(results)
        results = previous
    results["meta"] = {"written_at": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine()}
    path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    md = RESULTS / "latest.md"
    md.write_text(table(results))
    return path, md


def table(results: Mapping[str, Any]) -> str:
    lines = ["| benchmark | target | measured | met |", "|---|---|---|---|"]
    for target in TARGETS:
        got = target.check(results)
        measured, met = got if got is not None else ("not run", False)
        mark = "yes" if got is not None and met else ("-" if got is None else "**no**")
        lines.append(f"| {target.name} | {target.text} | {measured} | {mark} |")
    return "\n".join(lines) + "\n"

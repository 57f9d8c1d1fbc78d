"""``make bench``: every benchmark of issue 8 on local servers; writes bench/results/latest.json
and latest.md (see ``bench/report.py``).

``python -m bench`` runs them all; ``--only nochange,mapping`` some (merged into latest.json);
``--quick`` smaller sizes, to check the benchmarks themselves work. ``--legacy`` also runs the
older figures (reconcile alone, the webhook burst).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from typing import Any

from bench import report

#: name -> module; each module has ``run(quick: bool) -> dict``.
BENCHMARKS = {
    "cold_import": "bench.cold_import",
    "mapping": "bench.mapping",
    "nochange": "bench.nochange",
    "tick": "bench.tick",
    "initial": "bench.initial",
    "vdirsyncer": "bench.vdirsyncer_cmp",
    "memory": "bench.memory",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--only", help="comma-separated benchmarks: " + ", ".join(BENCHMARKS))
    parser.add_argument("--quick", action="store_true", help="small sizes (checks the benchmarks run)")
    parser.add_argument("--legacy", action="store_true", help="also the older reconcile and webhook figures")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",")] if args.only else list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    results: dict[str, Any] = {}
    failed = []
    for name in names:
        started = time.perf_counter()
        print(f"== {name}", flush=True)
        try:
            module = importlib.import_module(BENCHMARKS[name])
            results[name] = module.run(quick=args.quick)
        except Exception as exc:  # one broken benchmark must not hide the others' figures
            failed.append(name)
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"   {name} failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        print(json.dumps(results[name], indent=1, default=str), flush=True)
        print(f"   ({time.perf_counter() - started:.1f} s)", flush=True)
    if args.legacy:
        from bench import legacy

        legacy.bench_reconcile()
        legacy.bench_webhook_burst()
    if args.quick:
        print("--quick: figures not saved")
    else:
        json_path, md_path = report.save(results, merge=bool(args.only))
        print(f"wrote {json_path} and {md_path}")
    print(report.table(results))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

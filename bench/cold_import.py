"""``cold_import``: time to import ``function_app`` in a fresh interpreter (what a cold start
of the Functions worker pays before the first trigger runs). Median of 5 processes."""

from __future__ import annotations

import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CODE = "import time; t = time.perf_counter(); import function_app; print(time.perf_counter() - t)"


def run(quick: bool = False) -> dict[str, Any]:
    runs = 3 if quick else 5
    times = [float(subprocess.run([sys.executable, "-c", CODE], cwd=ROOT, check=True, capture_output=True,
                                  text=True, timeout=60).stdout) for _ in range(runs)]
    return {"seconds": round(statistics.median(times), 3), "min": round(min(times), 3),
            "max": round(max(times), 3), "runs": runs}

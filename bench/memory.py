"""``memory``: peak RSS of the process running a user's first sync when the CalDAV calendar
holds 50,000 events (Radicale; Microsoft 365 empty), measured in a fresh process
(``davbridge sync``), as the worker would run it.

Every event lies inside the pairing's window (one an hour, the window set to 3,650 days ahead),
so the whole calendar is listed, read and mapped. The first-sync cap stays at its default
(5,000: upcoming events first), so 5,000 are copied and the rest wait for their next change,
as an admin would see it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.seed import seed_caldav
from bench.world import BenchWorld

N = 50_000
ROOT = Path(__file__).resolve().parent.parent
#: The child's own peak: ``VmHWM`` of /proc/self/status (the high-water mark of this process's
#: memory map). Not ``ru_maxrss``: Linux carries the PARENT's peak into it when the child is
#: spawned (vfork + exec records the old map's high-water mark), so after the tick benchmark
#: had grown this runner to 278 MB, every child reported at least that.
CHILD = ("import re, sys\nfrom sync_core.cli import main\nrc = main(['sync'])\n"
         "status = open('/proc/self/status').read()\n"
         "print('PEAK_KB', re.search(r'VmHWM:\\s+(\\d+) kB', status).group(1), 'RC', rc)\n")


def run(quick: bool = False) -> dict[str, Any]:
    n = 2_000 if quick else N
    with BenchWorld("radicale") as world:
        assert world.caldav is not None
        upn, calendar_url = world.add_user("memory", options=("--window-future-days", "3650"))
        start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
        t = time.perf_counter()
        seed_caldav(world.caldav, calendar_url, n, start=start, prefix="memory")
        seeded = time.perf_counter() - t
        if world.services is not None:
            world.services.close()  # the child process opens the state store itself
        t = time.perf_counter()
        # Radicale answers slowly on a 50,000-item collection (it reads every item for a
        # listing): the CalDAV timeout is raised for this run, as an admin would for such a server.
        env = {**os.environ, "CALDAV_TIMEOUT_SECONDS": "600"}
        child = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, capture_output=True, text=True,
                               timeout=1800, env=env)
        seconds = time.perf_counter() - t
        line = next((x for x in child.stdout.splitlines() if x.startswith("PEAK_KB")), None)
        if child.returncode != 0 or line is None:
            raise RuntimeError(f"the sync process failed ({child.returncode}): {child.stderr[-1500:]}")
        _, peak_kb, _, rc = line.split()
        summary = [x for x in child.stdout.splitlines() if upn in x]
    return {"events": n, "peak_mb": round(int(peak_kb) / 1024, 1), "seconds": round(seconds, 1),
            "sync_exit": int(rc), "summary": summary[-1] if summary else "", "seed_seconds": round(seeded, 1),
            "server": "radicale", "first_sync_cap": 5000}

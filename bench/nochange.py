"""``nochange``: one user, calendars of 100 / 1,000 / 10,000 events on both sides (Radicale and
the Graph stand-in), a sync with nothing changed, in a warm process (the previous no-change
sync already ran). Measured: HTTP requests and bytes per side (socket layer, ``bench.meter``),
wall time (median of 5), and the floor: a bare sync-collection REPORT with the same token plus
a bare delta GET with the same link, same servers, same run (median of 5).

Both calendars are seeded with the same events (same titles and times), so the first sync
pairs them by content instead of copying each one."""

from __future__ import annotations

import statistics
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.meter import metered
from bench.seed import seed_caldav, seed_graph
from bench.world import BenchWorld

SIZES = (100, 1000, 10000)
RUNS = 5


def measure(size: int, kind: str = "radicale") -> dict[str, Any]:
    with BenchWorld(kind) as world:
        upn, calendar_url = world.add_user("nochange")
        assert world.sim is not None and world.caldav is not None
        start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(days=1)
        t = time.perf_counter()
        seed_graph(world.sim, upn, size, start=start, prefix="bench")
        seed_caldav(world.caldav, calendar_url, size, start=start, prefix="bench")
        seeded = time.perf_counter() - t
        t = time.perf_counter()
        world.sync(upn)  # first sync: pairs the events
        first = time.perf_counter() - t
        world.sync(upn)  # warm: the process has its token, sessions and caches
        with metered() as meter:
            world.sync(upn)
        graph, caldav = meter.of(world.graph_port()), meter.of(world.caldav_port())
        times = []
        for _ in range(RUNS):
            t = time.perf_counter()
            world.sync(upn)
            times.append(time.perf_counter() - t)
        world.floor(upn, calendar_url)  # warm the floor's connections too
        floors = [world.floor(upn, calendar_url) for _ in range(RUNS)]
        return {
            "events_per_side": size,
            "requests": graph.requests + caldav.requests,
            "bytes": graph.bytes + caldav.bytes,
            "seconds": round(statistics.median(times), 4),
            "floor_seconds": round(statistics.median(floors), 4),
            "graph": {"requests": graph.requests, "bytes": graph.bytes},
            "caldav": {"requests": caldav.requests, "bytes": caldav.bytes},
            "seed_seconds": round(seeded, 1),
            "first_sync_seconds": round(first, 2),
            "server": kind,
        }


def run(quick: bool = False) -> dict[str, Any]:
    sizes = (100, 500) if quick else SIZES
    return {str(size): measure(size) for size in sizes}

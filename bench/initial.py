"""``initial``: the first sync of a user with 5,000 events on each side (10,000 writes), with a
20 ms round trip injected on both sides: the Graph stand-in waits 20 ms before each answer
(``set_latency``), and a proxy in front of Radicale waits 20 ms before forwarding each request
(``devtools.faultproxy.delay``).

The floor is what the protocols themselves cost for the same work, measured with bare HTTP on
the same servers and the same injected round trip, both sides at once:
- Graph: the 5,000 events read through calendarView delta (pages of 100), and 5,000 creates
  sent as ``$batch`` requests of 20 with 4 in flight (Graph's 20-per-batch and
  4-concurrent-per-mailbox rules);
- CalDAV: the 5,000 events read with one calendar-query REPORT returning their data, and 5,000
  PUTs with 4 in flight (CalDAV has no batch write: one round trip each).
The floor is the slower of the two sides.

Cyrus, not Radicale: Radicale checks a new resource's UID against every item of the calendar,
so 5,000 creates one by one cost O(n^2) there (1,000 take 46 s), for the floor as for
davbridge; Cyrus keeps indexes."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.seed import seed_caldav, seed_graph
from bench.world import BenchWorld
from devtools import faultproxy as fp

N = 5000
RTT = 0.020


def run(quick: bool = False) -> dict[str, Any]:
    n = 300 if quick else N
    with BenchWorld("cyrus") as world:
        assert world.sim is not None and world.caldav is not None
        with fp.FaultProxy(world.caldav.url) as proxy:
            # Every event is copied: the first-sync cap (default 5,000) is raised for the run.
            upn, calendar_url = world.add_user("initial", via=proxy.proxied,
                                               options=("--first-sync-cap", str(2 * n)))
            start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(days=1)
            t = time.perf_counter()
            seed_graph(world.sim, upn, n, start=start, prefix="graph")
            seed_caldav(world.caldav, calendar_url, n, start=start + timedelta(minutes=30), prefix="caldav")
            seeded = time.perf_counter() - t
            world.graph_latency = RTT
            world.sim.set_latency(RTT)
            proxy.set_faults(fp.delay(RTT, count=10**9))
            t = time.perf_counter()
            outcome = world.sync(upn)
            seconds = time.perf_counter() - t
            counts = outcome.pairings[0].applied.counts if outcome.pairings[0].applied else {}
            floor = _floor(world, proxy, n)
            world.sim.set_latency(0)
            proxy.clear()
    return {"events_per_side": n, "rtt_ms": RTT * 1000, "server": "cyrus", "seconds": round(seconds, 2),
            "floor_seconds": round(floor["seconds"], 2), "floor": floor, "counts": counts,
            "seed_seconds": round(seeded, 1)}


def _floor(world: BenchWorld, proxy: fp.FaultProxy, n: int) -> dict[str, Any]:
    from bench.floor import initial_floor

    return initial_floor(world, proxy, n)

"""Older figures (``python -m bench --legacy``): the pure reconcile step at scale, a small real
sync against Radicale + the Graph stand-in, and the webhook burst.

Prints figures only; ``make bench`` is where speed and memory are measured.
"""

from __future__ import annotations

import io
import os
import tempfile
import time
import tracemalloc
from contextlib import redirect_stdout
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sync_core.model import Event
from sync_core.reconcile import PairingRules, reconcile
from sync_core.sides.base import ChangeBatch, RemoteItem
from sync_core.state.base import ItemLink

N = 5000


def _events(n: int, prefix: str) -> list[Event]:
    t0 = datetime(2026, 12, 1, 8, tzinfo=UTC)
    return [Event(subject=f"{prefix} {i}", start=t0 + timedelta(hours=i), end=t0 + timedelta(hours=i, minutes=30),
                  timezone="UTC", uid=f"{prefix}-{i}") for i in range(n)]


def bench_reconcile() -> None:
    rules = PairingRules("bench")
    m = [RemoteItem(f"m{i}", "e", e, frozenset({e.uid or ""})) for i, e in enumerate(_events(N, "m"))]
    c = [RemoteItem(f"/c/{i}.ics", "e", e, frozenset({e.uid or ""})) for i, e in enumerate(_events(N, "c"))]
    tracemalloc.start()
    t = time.perf_counter()
    plan = reconcile(rules, [], ChangeBatch(changed=m), ChangeBatch(changed=c))
    first = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    links = [ItemLink("bench", e.uid or "", f"m{i}", "e", e.fingerprint(), f"/c/{i}.ics", "e", e.fingerprint())
             for i, e in enumerate(_events(N, "m"))]
    t = time.perf_counter()
    same = reconcile(rules, links, ChangeBatch(changed=m), ChangeBatch())
    echo = time.perf_counter() - t
    print(f"reconcile first sync {N}+{N} items: {first * 1000:.0f} ms, {len(plan.actions)} actions, "
          f"peak {peak / 2**20:.1f} MiB")
    print(f"reconcile {N} echoes of own writes: {echo * 1000:.0f} ms, {len(same.actions)} actions")


def bench_end_to_end(n: int = 200) -> None:
    from devtools.clients import CalDAVUserApp, GraphUserApp
    from devtools.graphsim import GraphSim
    from devtools.servers import start_radicale
    from sync_core import cli
    from sync_core.services import Services
    from sync_core.settings import Settings

    work = Path(tempfile.mkdtemp(prefix="davbridge-bench-"))
    sim = GraphSim(state_dir=work / "sim").start()
    server = start_radicale(work / "radicale")
    try:
        sim.register_app("t", "c", client_secret="s")
        sim.add_user("bench@contoso.test")
        os.environ.update(DAVBRIDGE_HOME=str(work / "home"), GRAPH_BASE_URL=sim.graph_url,
                          GRAPH_AUTHORITY_HOST=sim.authority_host, GRAPH_TENANT_ID="t", GRAPH_CLIENT_ID="c",
                          GRAPH_CA_BUNDLE=sim.ca_path, DAVBRIDGE_CALDAV_PASSWORD=server.password)
        services = Services(Settings.from_env())
        services.secrets.set("graph-client-secret", "s")
        services.close()
        with redirect_stdout(io.StringIO()):
            cli.main(["users", "add", "bench@contoso.test", "--caldav-url", server.url, "--caldav-user",
                      server.username, "--caldav-calendar", server.calendar_url])
        graph = GraphUserApp(sim.graph_url, sim.authority_host, "t", "c", "s", sim.ca_path)
        cal = CalDAVUserApp(server, server.calendar_url)
        base = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(days=1)
        for i in range(n // 2):
            s = base + timedelta(hours=i)
            graph.create("bench@contoso.test", f"G{i}", s.strftime("%Y-%m-%dT%H:%M:%S"),
                         (s + timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:%S"))
            cal.put(f"C{i}", s.strftime("%Y%m%dT%H%M%SZ"), (s + timedelta(minutes=30)).strftime("%Y%m%dT%H%M%SZ"))
        for label in ("first sync", "second sync (own writes echo)", "no-change sync"):
            sim.reset_request_log()
            t = time.perf_counter()
            with redirect_stdout(io.StringIO()):
                cli.main(["sync"])
            took = time.perf_counter() - t
            graph_calls = sum(1 for r in sim.request_log if "/v1.0/" in r["path"])
            print(f"end to end {n} events, {label}: {took:.2f} s, {graph_calls} Graph requests")
    finally:
        server.stop()
        sim.stop()


def bench_webhook_burst(edits: int = 500) -> None:
    """500 Graph notifications for one user through the Functions host stand-in on Azurite:
    the answer time Graph sees, the time inside the function, and the syncs they cause."""
    from devtools.runtime import AzureRuntime, slot
    from devtools.servers import start_azurite, start_radicale

    work = Path(tempfile.mkdtemp(prefix="davbridge-bench-rt-"))
    azurite = start_azurite(work / "azurite")
    radicale = start_radicale(work / "radicale")
    try:
        with AzureRuntime(azurite, radicale, work / "rt", users=("ada",)) as rt:
            ada = rt.upn("ada")
            rt.tick()
            events = [rt.graph.create(ada, f"Standup {i}", *slot(10 + i)) for i in range(10)]
            rt.settle()
            report = rt.burst(ada, events, edits=edits)
            f = report.summary()
            print(f"webhook burst of {f['notifications']} notifications for one user "
                  f"(delivered over {f['burst_seconds']} s, 16 at a time): answered in median "
                  f"{f['answer_median_ms']} ms, p99 {f['answer_p99_ms']} ms, max {f['answer_max_ms']} ms "
                  f"(inside the function: median {f['handler_median_ms']} ms, max {f['handler_max_ms']} ms); "
                  f"{f['syncs']} sync(s) of that user")
    finally:
        radicale.stop()
        azurite.stop()


if __name__ == "__main__":
    bench_reconcile()
    bench_end_to_end()
    bench_webhook_burst()

"""``tick``: one timer tick for many users in the Azure runtime shape, in steady state.

``devtools.runtime.AzureRuntime`` on local parts: the project's ``function_app`` in the local
Functions host stand-in (timer, queue worker with batchSize 16 on Azurite, webhooks), state in
Azure Tables on Azurite, the Graph stand-in in its own process and Radicale as the CalDAV
server. 1,000 enabled users (``--quick``: 50), each with 5 events in Microsoft 365 (written by
another app, as Outlook) and 5 on CalDAV (raw WebDAV PUTs, as a calendar app), through the
user-side clients of ``devtools/clients.py``, before the first tick.

The first tick (first syncs, subscription creation, the echo syncs the notifications of the
first copies cause) runs until the host is idle; then the measured one: a second tick with
nothing changed, from firing the timer until every queued sync ran and the host is idle
(``seconds``). A tick that still wrote something (a write of the first tick that failed and is
retried) is not steady: it is listed in ``ticks_not_steady`` and the next one is measured, at
most ``STEADY_ATTEMPTS`` ticks.

CalDAV server: Radicale, the server ``AzureRuntime`` and the end-to-end tests use. Each user
gets its own calendar (one directory) in one Radicale account; a steady-state sync costs it one
sync-collection REPORT on a 5-event calendar, a few milliseconds of its CPU, so it is not what
limits a tick (see ``cpu_seconds``). Cyrus would be the closer match to a production server
(C, several processes, keep-alive), but every calendar is an IMAP mailbox there, so making
1,000 of them is slower, and nothing here needs its strengths (big calendars). Radicale's
own limits (``max_connections`` 8, listen backlog 5) show in the FIRST tick: with up to 24 syncs
in flight some of its connections fail and those writes are retried by the next sync.

The host's thread pool is ``HOST_WORKERS`` (see there why not the default).

Counted during the measured tick, cheaply (no socket metering):

* Graph requests: the stand-in's own request log (``RemoteGraphSim.request_log``); CalDAV
  requests: Radicale's log (one line per request);
* Table, Queue, Graph and CalDAV requests of this process: a wrapper around
  ``requests``/``niquests`` ``Session.send`` (azure-core, the Graph client and the CalDAV client
  all send through them), by server port and operation, each with the time spent waiting for
  it, and by who sent it: the timer function (and its enqueue pool), the queue worker's syncs,
  the host's queue poller, this harness (``traffic``; ``per_sync`` divides the syncs' share);
* CPU seconds of every process (``/proc``): this one (host + app), Azurite, Radicale, the Graph
  stand-in, and of everything else on the machine; CPU of the syncs' own threads.

``--profile`` adds a cProfile (CPU clock) of the measured tick's syncs and timer (slow, skews
towards many small calls); ``--py-spy BINARY`` a sampling profile of this process (``--gil``:
where its one core goes) during the measured tick.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import logging
import os
import pstats
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from devtools.sendhook import watching_requests

USERS = 1000
QUICK_USERS = 50
EVENTS_PER_SIDE = 5
SEED_WORKERS = 8
#: The host's thread pool (``PYTHON_THREADPOOL_THREAD_COUNT``, at most 32 in Azure). The default,
#: ``min(32, cpu + 4)`` = 6 here, is shared by the queue worker (up to batchSize 16 +
#: newBatchThreshold 8 messages in flight) and the webhook: when every thread is a sync creating
#: a subscription, Graph's validation request to the webhook finds no thread, times out after
#: 10 s and the subscription is not created (see the report of ``--host-workers 0``).
HOST_WORKERS = 32

# -- counting HTTP requests by port and by who sent them ----------------------------------------


@dataclass
class _Row:
    requests: int = 0
    seconds: float = 0.0


@dataclass
class RequestCounter:
    """Requests (and the seconds spent in ``send``) per (role, service, operation)."""

    services: dict[int, str]  # port -> service name
    rows: dict[tuple[str, str, str], _Row] = field(default_factory=lambda: defaultdict(_Row))
    lock: threading.Lock = field(default_factory=threading.Lock)
    local: threading.local = field(default_factory=threading.local)
    enabled: bool = False

    def role(self) -> str:
        own = getattr(self.local, "role", None)
        if own:
            return str(own)
        name = threading.current_thread().name
        if name.startswith(("apply-", "read", "multiget")):
            return "sync-worker"  # the pools one sync runs its reads and writes in
        if name.startswith("funchost-queue"):
            return "queue-poller"
        if name.startswith("ThreadPoolExecutor"):
            return "timer-pool"  # the timer's enqueue pool (a no-change sync writes nothing in parallel)
        if name.startswith("funchost-worker"):
            return "host-other"
        return "harness"

    @contextlib.contextmanager
    def as_role(self, role: str) -> Iterator[None]:
        before = getattr(self.local, "role", None)
        self.local.role = role
        try:
            yield
        finally:
            self.local.role = before

    def record(self, method: str, url: str, seconds: float) -> None:
        if not self.enabled:
            return
        split = urlsplit(url)
        service = self.services.get(split.port or 0, f"port {split.port}")
        key = (self.role(), service, _operation(service, method, split.path, split.query))
        with self.lock:
            row = self.rows[key]
            row.requests += 1
            row.seconds += seconds

    def reset(self) -> None:
        with self.lock:
            self.rows.clear()

    def summary(self) -> dict[str, Any]:
        """{role: {service: {"requests", "seconds", "operations": {op: n}}}}."""
        out: dict[str, Any] = {}
        with self.lock:
            rows = dict(self.rows)
        for (role, service, op), row in sorted(rows.items()):
            node = out.setdefault(role, {}).setdefault(service, {"requests": 0, "seconds": 0.0, "operations": {}})
            node["requests"] += row.requests
            node["seconds"] = round(node["seconds"] + row.seconds, 3)
            node["operations"][op] = node["operations"].get(op, 0) + row.requests
        return out

    def total(self, service: str) -> int:
        with self.lock:
            return sum(r.requests for (_, s, _), r in self.rows.items() if s == service)


_KEYED = re.compile(r"^/[^/]+/([A-Za-z0-9]+)\((PartitionKey=.*)\)$")
_TABLE_KIND = re.compile(r"^rt[0-9a-f]{8}")


def _operation(service: str, method: str, path: str, query: str) -> str:
    """A readable name of one request: Table operation and table, queue operation, CalDAV or
    Graph method."""
    if service == "table":
        path = unquote(path)
        keyed = _KEYED.match(path)
        table = (keyed.group(1) if keyed else path.rsplit("/", 1)[-1].split("(")[0]) or "?"
        table = _TABLE_KIND.sub("", table)
        if path.endswith("$batch"):
            return "transaction"
        if method == "GET":
            return f"get {table}" if keyed else f"query {table}"
        names = {"PUT": "upsert", "MERGE": "merge", "PATCH": "merge", "DELETE": "delete", "POST": "insert"}
        return f"{names.get(method, method)} {table}"
    if service == "queue":
        if "comp=metadata" in query:
            return "properties"
        if method == "GET":
            return "receive"
        if method == "POST":
            return "send"
        if method == "DELETE":
            return "delete"
        return method.lower()
    if service == "graph":
        if "/oauth2/" in path:
            return "token"
        if "/delta" in path:
            return f"{method} delta"
        return f"{method} {re.sub(r'/users/[^/]+', '/users/{upn}', path)[:60]}"
    return method


# -- CPU time per thread and per process -----------------------------------------------------


class SyncProfiler:
    """CPU seconds (``time.thread_time``) of each wrapped call in its own thread; with
    ``detail``, also a ``cProfile`` of each (CPU clock), merged, summarised per library."""

    def __init__(self) -> None:
        self.enabled = False
        self.detail = False
        self.cpu: list[float] = []
        self.parts: list[float] = []
        self._profiles: list[cProfile.Profile] = []
        self._lock = threading.Lock()

    def reset(self, *, detail: bool) -> None:
        with self._lock:
            self.detail = detail
            self.cpu.clear()
            self.parts.clear()
            self._profiles.clear()

    def part(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Part of a profiled call that ran in a pool thread (the sync's concurrent side reads):
        its CPU and profile are added to the call's (counted as a call of its own only in
        ``parts``)."""
        if not self.enabled or not threading.current_thread().name.startswith("read"):
            return fn(*args, **kwargs)  # in the calling thread: already measured there
        return self.call(fn, *args, _part=True, **kwargs)

    def call(self, fn: Callable[..., Any], *args: Any, _part: bool = False, **kwargs: Any) -> Any:
        if not self.enabled:
            return fn(*args, **kwargs)
        profile = cProfile.Profile(time.thread_time) if self.detail else None
        started = time.thread_time()
        if profile is not None:
            profile.enable()
        try:
            return fn(*args, **kwargs)
        finally:
            if profile is not None:
                profile.disable()
            took = time.thread_time() - started
            with self._lock:
                (self.parts if _part else self.cpu).append(took)
                if profile is not None:
                    self._profiles.append(profile)

    def cpu_ms_per_call(self) -> float:
        """CPU per call, its parts in pool threads included."""
        return round(1000 * (sum(self.cpu) + sum(self.parts)) / max(1, len(self.cpu)), 1)

    def summary(self, top: int = 25) -> dict[str, Any]:
        if not self._profiles:
            return {}
        stats = pstats.Stats(self._profiles[0])
        for more in self._profiles[1:]:
            stats.add(more)
        raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
        calls = max(1, len(self.cpu))
        by_area: Counter[str] = Counter()
        rows = []
        for (filename, line, name), (_cc, ncalls, tottime, cumtime, _callers) in raw.items():
            by_area[_area(filename)] += tottime
            rows.append((tottime, cumtime, ncalls, f"{_area(filename)}:{Path(filename).name}:{line}({name})"))
        rows.sort(reverse=True)
        cumulative = sorted(((cum, name) for _t, cum, _n, name in rows if name.startswith("sync_core")),
                            reverse=True)
        total = sum(by_area.values())
        return {
            "profiled_calls": len(self.cpu),
            "cpu_ms_per_call": round(1000 * total / calls, 1),
            "cpu_ms_per_call_by_area": {a: round(1000 * t / calls, 2) for a, t in by_area.most_common(20)},
            "top_functions_self_ms_per_call": {n: round(1000 * t / calls, 2) for t, _c, _n, n in rows[:top]},
            "sync_core_cumulative_ms_per_call": {n: round(1000 * c / calls, 2) for c, n in cumulative[:top]},
        }


def _area(filename: str) -> str:
    """The library a code file belongs to: the package under site-packages, ``sync_core.<module>``,
    or the stdlib module."""
    parts = Path(filename).parts
    if "site-packages" in parts:
        rest = parts[parts.index("site-packages") + 1:]
        return rest[0].removesuffix(".py") if rest else filename
    for own in ("sync_core", "devtools", "bench"):
        if own in parts:
            return ".".join(parts[parts.index(own):][:2]).removesuffix(".py")
    if filename.startswith("<") or filename == "~":
        return "builtins"
    return Path(filename).stem  # a stdlib module



_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_group_cpu(pgid: int) -> float:
    """User + system CPU seconds of the live processes in process group ``pgid``."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
        if int(fields[2]) == pgid:  # fields[0] is state; pgrp is the 5th field of the line
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _CLOCK_TICKS


def machine_busy_cpu() -> float:
    """CPU seconds every core spent on something else than idling, since boot (/proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    return (sum(fields) - fields[3] - fields[4]) / _CLOCK_TICKS  # minus idle and iowait


def own_cpu() -> float:
    t = os.times()
    return t.user + t.system


# -- a sampling profile of this process (py-spy, when available) -------------------------------

#: Each GIL sample is put in the first of these its stack passes through (any of the markers; so
#: they add up to 100 %):
#: the phase of the tick ...
_PY_SPY_PHASES = (
    ("timer function (enqueue one message per user)", ("timer_tick",)),
    ("queue worker: the syncs", ("run_queued_sync", "sync_core/sides/")),  # side reads: in a pool
    ("host stand-in outside functions (queue polling, message delete, HTTP)", ("devtools/funchost.py",)),
)
#: ... and what the code does.
_PY_SPY_KINDS = (
    ("Azure Tables client (sync_core/state/tables.py and below)", ("sync_core/state/tables.py",)),
    ("Azure Queue client", ("sync_core/queue.py", "azure/storage/queue")),
    ("Graph side (sync_core/sides/graph*)", ("sync_core/sides/graph",)),
    ("CalDAV side (sync_core/sides/caldav*)", ("sync_core/sides/caldav",)),
    ("secrets (sync_core/secrets)", ("sync_core/secrets",)),
    ("other sync_core", ("sync_core/",)),
)


#: Costs that cut across both (a sample counts for each whose markers its stack holds).
_PY_SPY_ACROSS = (
    ("requests: environment lookups on every request (proxies, ~/.netrc: trust_env)",
     ("merge_environment_settings", "get_netrc_auth")),
    ("urllib3-future + h11 (niquests' urllib3 replacement, HTTP/1.1 in pure Python)", ("(urllib3/", "(h11/")),
    ("azure-core pipeline policies", ("(core/pipeline/policies/",)),
    ("azure (de)serialization", ("_serialization.py", "_deserialize.py", "_convert_to_entity")),
)
#: py-spy names files relative to their ``sys.path`` entry; first path part -> library.
_PY_SPY_LIBRARIES = {"core": "azure-core", "tables": "azure-data-tables", "queue": "azure-storage-queue",
                     "urllib3": "urllib3-future"}


def _py_spy_library(frame: str) -> str:
    path = _frame_file(frame)
    first = path.split("/", 1)[0]
    if first in ("sync_core", "devtools", "bench"):
        return ".".join(path.split("/")[:2]).removesuffix(".py")
    if "/" not in path:
        return path.removesuffix(".py") or "?"  # a stdlib module
    return _PY_SPY_LIBRARIES.get(first.split(" ", 1)[0], first)


def _classify(stack: str, table: tuple[tuple[str, tuple[str, ...]], ...]) -> str:
    for label, markers in table:
        if any(m in stack for m in markers):
            return label
    return "other (harness, idle bookkeeping)"


class PySpy:
    """``py-spy record --gil`` of this process while open (samples of the thread holding the
    GIL only: where this process spends its one core). ``binary`` None: does nothing."""

    def __init__(self, binary: str | None, out: Path, rate: int = 200) -> None:
        self.binary, self.out, self.rate = binary, out, rate
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PySpy:
        if self.binary:
            self._proc = subprocess.Popen(
                [self.binary, "record", "--gil", "--nonblocking", "--format", "raw", "--rate", str(self.rate),
                 "--output", str(self.out), "--pid", str(os.getpid())],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)  # attached
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is None:
            return
        self._proc.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        try:
            self._proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=10)

    def summary(self, top: int = 20) -> dict[str, Any]:
        if self._proc is None or not self.out.exists():
            return {}
        leaves: Counter[str] = Counter()
        areas: Counter[str] = Counter()
        phases: Counter[str] = Counter()
        kinds: Counter[str] = Counter()
        across: Counter[str] = Counter()
        inclusive: Counter[str] = Counter()
        total = 0
        for line in self.out.read_text("utf-8", "replace").splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not count_text.isdigit():
                continue
            count = int(count_text)
            total += count
            frames = [f for f in stack.split(";") if f]
            leaf = frames[-1] if frames else "?"
            leaves[_short_frame(leaf)] += count
            areas[_py_spy_library(leaf)] += count
            for label, markers in _PY_SPY_ACROSS:
                if any(m in stack for m in markers):
                    across[label] += count
            phases[_classify(stack, _PY_SPY_PHASES)] += count
            kinds[_classify(stack, _PY_SPY_KINDS)] += count
            for name in {_short_frame(f) for f in frames if "sync_core/" in f}:
                inclusive[name] += count
        if not total:
            return {}

        def pct(n: int) -> float:
            return round(100 * n / total, 1)

        return {
            "samples": total,
            "percent_by_phase": {k: pct(v) for k, v in phases.most_common()},
            "percent_by_kind": {k: pct(v) for k, v in kinds.most_common()},
            "percent_in": {k: pct(v) for k, v in across.most_common()},
            "percent_by_library_of_leaf": {k: pct(v) for k, v in areas.most_common(top)},
            "top_leaf_functions_percent": {k: pct(v) for k, v in leaves.most_common(top)},
            "sync_core_inclusive_percent": {k: pct(v) for k, v in inclusive.most_common(top)},
        }


def _frame_file(frame: str) -> str:
    """``function (path/file.py:12)`` -> ``path/file.py``."""
    inner = frame.rpartition(" (")[2].rstrip(")")
    return inner.rpartition(":")[0] or inner


def _short_frame(frame: str) -> str:
    name = frame.rpartition(" (")[0]
    return f"{_py_spy_library(frame)}:{Path(_frame_file(frame)).name}:{name or frame}"


# -- the benchmark -------------------------------------------------------------------------------


def _seed(rt: Any, editor_factory: Callable[[], Any], start: datetime) -> None:
    """5 events per user in Microsoft 365 (another app, as Outlook) and 5 on CalDAV (raw
    WebDAV PUTs, as a calendar app), ``SEED_WORKERS`` users at a time."""
    local = threading.local()
    fmt_graph, fmt_ical = "%Y-%m-%dT%H:%M:%S", "%Y%m%dT%H%M%SZ"

    def one(upn: str) -> None:
        app = getattr(local, "app", None)
        if app is None:
            app = local.app = editor_factory()
        for i in range(EVENTS_PER_SIDE):
            begin = start + timedelta(hours=2 * i)
            app.create(upn, f"Outlook {i}", begin.strftime(fmt_graph),
                       (begin + timedelta(minutes=30)).strftime(fmt_graph))
            begin += timedelta(hours=1)
            rt.calendars[upn].put(f"CalDAV {i}", begin.strftime(fmt_ical),
                                  (begin + timedelta(minutes=30)).strftime(fmt_ical))

    with ThreadPoolExecutor(SEED_WORKERS, thread_name_prefix="tick-seed") as pool:
        list(pool.map(one, list(rt.calendars)))


def _wait_syncs(rt: Any, wanted: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(rt.syncs) < wanted:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(rt.syncs)} of {wanted} syncs ran within {timeout:.0f} s")
        time.sleep(0.1)


def _fire_and_settle(rt: Any, wanted_syncs: int, timeout: float) -> dict[str, float]:
    """Fire the timer; wait (bounded) for ``wanted_syncs`` syncs and an idle host. Seconds
    until the timer function returned, the last sync finished, and the host was idle."""
    rt.syncs.clear()
    before = len(rt.host.invocations)
    started = time.monotonic()
    fire = ThreadPoolExecutor(1, thread_name_prefix="tick-fire")  # tick() itself has no timeout
    try:
        invocation = fire.submit(rt.host.tick, "sync_timer").result(timeout=timeout)
    finally:
        fire.shutdown(wait=False)
    if not invocation.ok:
        raise RuntimeError(f"the timer function failed: {invocation.error}")
    timer_done = time.monotonic()
    _wait_syncs(rt, wanted_syncs, timeout)
    rt.settle(timeout=max(60.0, timeout - (time.monotonic() - started)))
    idle = time.monotonic()
    workers = [i for i in rt.host.invocations[before:] if i.function == "sync_worker"]
    last = max((i.finished for i in workers), default=idle)
    return {"timer": timer_done - started, "last_sync": last - started, "idle": idle - started,
            "worker_invocations": len(workers),
            "worker_busy_seconds": sum(i.duration for i in workers),
            "failed_invocations": sum(1 for i in rt.host.invocations[before:] if not i.ok)}


#: The measured tick must write nothing; when the first tick left work behind (a write that
#: failed and is retried), the next tick is not "steady" and another one is measured instead.
STEADY_ATTEMPTS = 3


class _Warnings(logging.Handler):
    """Counts WARNING+ log records (by logger and message template) while installed."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[f"{record.name}: {str(record.msg)[:60]}"] += 1


def measure(users: int, host_workers: int | None = HOST_WORKERS, *, profile: bool = False,
            py_spy: str | None = None) -> dict[str, Any]:
    """The benchmark; ``profile``: also a CPU profile (cProfile, which slows the measured tick)
    of every sync and of the timer function of the measured tick; ``py_spy``: the path of a
    ``py-spy`` binary, to sample this process during the measured tick (little overhead)."""
    from devtools.clients import GraphUserApp
    from devtools.runtime import EDITOR_ID, EDITOR_SECRET, TENANT, AzureRuntime
    from devtools.servers import start_azurite, start_radicale
    from sync_core import handlers
    from sync_core.sides.caldav_side import CalDAVCalendar
    from sync_core.sides.graph_side import GraphCalendar

    work = Path(tempfile.mkdtemp(prefix="davbridge-bench-tick-"))
    azurite = radicale = None
    timeout = 120.0 + 2.0 * users  # every wait is bounded by this
    original_sync, original_timer = handlers.run_queued_sync, handlers.timer_tick
    side_classes: tuple[Any, ...] = (GraphCalendar, CalDAVCalendar)
    original_changes = [cls.changes for cls in side_classes]
    try:
        azurite = start_azurite(work / "azurite")
        radicale = start_radicale(work / "radicale")
        t0 = time.monotonic()
        rt = AzureRuntime(azurite, radicale, work / "rt", users=[f"u{n:04d}" for n in range(users)],
                          setup_workers=8, host_workers=host_workers)
        with rt:
            registered = time.monotonic() - t0
            sim = rt.sim
            start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(days=1)
            _seed(rt, lambda: GraphUserApp(sim.graph_url, sim.authority_host, TENANT, EDITOR_ID, EDITOR_SECRET,
                                           sim.ca_path), start)
            setup = time.monotonic() - t0
            ports = {urlsplit(azurite.table_url).port or 0: "table", urlsplit(azurite.queue_url).port or 0: "queue",
                     sim.port: "graph", urlsplit(radicale.url).port or 0: "caldav",
                     rt.host.port: "funchost"}
            counter = RequestCounter(ports)
            syncs_cpu, timer_cpu = SyncProfiler(), SyncProfiler()
            pgids = {"azurite": _pgid(azurite), "radicale": _pgid(radicale), "graphsim": _pgid(sim)}

            def worker(*args: Any, **kwargs: Any) -> Any:
                with counter.as_role("sync-worker"):
                    return syncs_cpu.call(original_sync, *args, **kwargs)

            def timer(*args: Any, **kwargs: Any) -> Any:
                with counter.as_role("timer"):
                    return timer_cpu.call(original_timer, *args, **kwargs)

            def cpu_now() -> dict[str, float]:
                return {"host": own_cpu(), **{k: process_group_cpu(v) for k, v in pgids.items()},
                        "machine": machine_busy_cpu()}

            handlers.run_queued_sync = worker  # type: ignore[assignment]
            handlers.timer_tick = timer  # type: ignore[assignment]
            for cls in side_classes:
                cls.changes = _as_part(syncs_cpu, cls.changes)
            warnings = _Warnings()
            with watching_requests(counter.record):
                first = _fire_and_settle(rt, users, timeout)
                first_syncs = len(rt.syncs)
                rt.settle(timeout=timeout)  # late notifications of the first copies
                subscriptions = len(sim.subscriptions())
                validations = sim.validation_log
                unsteady: list[dict[str, Any]] = []
                for _attempt in range(STEADY_ATTEMPTS):  # the measured tick: nothing changed
                    sim.reset_request_log()
                    radicale_log = radicale.log_path.stat().st_size
                    counter.reset()
                    syncs_cpu.reset(detail=profile)
                    timer_cpu.reset(detail=profile)
                    counter.enabled = syncs_cpu.enabled = timer_cpu.enabled = True
                    logging.getLogger().addHandler(warnings)
                    warnings.counts.clear()
                    load = os.getloadavg()[0]
                    spy = PySpy(py_spy, work / "py-spy.txt")
                    with spy:
                        cpu = cpu_now()
                        try:
                            steady = _fire_and_settle(rt, users, timeout)
                        finally:
                            cpu_after = cpu_now()
                        counter.enabled = syncs_cpu.enabled = timer_cpu.enabled = False
                        logging.getLogger().removeHandler(warnings)
                    syncs = list(rt.syncs)
                    graph_log = sim.request_log
                    caldav_log = _radicale_requests(radicale.log_path, radicale_log)
                    graph_api = [r for r in graph_log if "/v1.0/" in str(r.get("path", ""))]
                    graph_writes = sum(1 for r in graph_api if r.get("method") not in ("GET", None))
                    caldav_writes = sum(n for m, n in caldav_log.items() if m in ("PUT", "DELETE", "MOVE", "COPY"))
                    if graph_writes + caldav_writes == 0:
                        break
                    unsteady.append({"seconds": round(steady["idle"], 2), "graph_writes": graph_writes,
                                     "caldav_writes": caldav_writes, "syncs": len(syncs)})
            traffic = counter.summary()
        per_sync = traffic.get("sync-worker", {})
        n = max(1, len(syncs))
        cpu_used = {k: cpu_after[k] - cpu[k] for k in cpu}
        ours = sum(v for k, v in cpu_used.items() if k != "machine")
        return {
            "seconds": round(steady["idle"], 2),
            "users": users,
            "syncs": len(syncs),
            "sync_triggers": dict(Counter(t for _, t in syncs)),
            "graph_requests": len(graph_api),
            "caldav_requests": sum(caldav_log.values()),
            "table_requests": counter.total("table"),
            "queue_requests": counter.total("queue"),
            "setup_seconds": round(setup, 1),
            "first_tick_seconds": round(first["idle"], 1),
            "register_seconds": round(registered, 1),
            "first_tick_syncs": first_syncs,
            "subscriptions_after_first_tick": subscriptions,
            "failed_validations": sum(1 for v in validations if not v.get("ok")),
            "ticks_not_steady": unsteady,
            "writes": {"graph": graph_writes, "caldav": caldav_writes},
            "warnings": dict(warnings.counts.most_common(10)),
            "timer_function_seconds": round(steady["timer"], 2),
            "last_sync_seconds": round(steady["last_sync"], 2),
            "mean_sync_ms": round(1000 * steady["worker_busy_seconds"] / max(1, steady["worker_invocations"]), 1),
            "failed_invocations": steady["failed_invocations"],
            "per_sync": {svc: {"requests": round(v["requests"] / n, 2), "wait_ms": round(1000 * v["seconds"] / n, 1),
                               "operations": {op: round(k / n, 2) for op, k in sorted(v["operations"].items())}}
                         for svc, v in per_sync.items()},
            "traffic": traffic,
            "graph_by_kind": dict(Counter(_operation("graph", str(r.get("method")), str(r.get("path")), "")
                                          for r in graph_log)),
            "caldav_by_method": dict(caldav_log),
            "cpu_seconds": {k: round(v, 1) for k, v in cpu_used.items() if k != "machine"},
            "cpu_seconds_other_processes": round(max(0.0, cpu_used["machine"] - ours), 1),
            "load_average_before": round(load, 2),
            "sync_cpu_ms": syncs_cpu.cpu_ms_per_call(),  # worker thread + its side-reading threads
            "host_cpu_ms_per_sync": round(1000 * cpu_used["host"] / n, 1),
            "timer_cpu_seconds": round(sum(timer_cpu.cpu), 2),
            **({"profile": {"sync": syncs_cpu.summary(), "timer": timer_cpu.summary()}} if profile else {}),
            **({"py_spy": spy.summary()} if py_spy else {}),
            "caldav_server": "radicale",
            "host_workers": rt.host.max_workers,
            "cores": os.cpu_count(),
        }
    finally:
        handlers.run_queued_sync, handlers.timer_tick = original_sync, original_timer  # type: ignore[assignment]
        for cls, changes in zip(side_classes, original_changes, strict=True):
            cls.changes = changes
        if radicale is not None:
            radicale.stop()
        if azurite is not None:
            azurite.stop()
        shutil.rmtree(work, ignore_errors=True)  # ~200 MB for 1,000 users (Radicale, Azurite, logs)


def _as_part(profiler: SyncProfiler, method: Callable[..., Any]) -> Callable[..., Any]:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        return profiler.part(method, *args, **kwargs)

    return wrapped


def _pgid(server: Any) -> int:
    """The process group of a server started by ``devtools`` (its leader's pid)."""
    return int(server._proc.popen.pid)


_RADICALE_REQUEST = re.compile(r"\b([A-Z]{3,12}) request for ")


def _radicale_requests(log_path: Path, offset: int) -> Counter[str]:
    """Requests Radicale logged (``level = info``: one "<METHOD> request for ..." line each)
    after byte ``offset`` of its log."""
    with open(log_path, "rb") as fh:
        fh.seek(offset)
        text = fh.read().decode("utf-8", "replace")
    return Counter(m.group(1) for m in _RADICALE_REQUEST.finditer(text))


def run(quick: bool = False) -> dict[str, Any]:
    return measure(QUICK_USERS if quick else USERS)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.tick", description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=USERS)
    parser.add_argument("--host-workers", type=int, default=HOST_WORKERS,
                        help=f"the host's thread pool (default {HOST_WORKERS}; 0: the host's default, cpu + 4)")
    parser.add_argument("--profile", action="store_true",
                        help="also a CPU profile of the measured tick's syncs (cProfile: slows them down)")
    parser.add_argument("--py-spy", metavar="BINARY", help="sample this process with py-spy during the measured tick")
    args = parser.parse_args()
    print(json.dumps(measure(args.users, args.host_workers or None, profile=args.profile, py_spy=args.py_spy),
                     indent=1, default=str))

"""Issue 8: davbridge against vdirsyncer on the same CalDAV calendar (Radicale, Cyrus).

For each server kind: start the server, make a calendar and seed ``n`` events (``bench.seed``);
vdirsyncer pairs that calendar (``caldav`` storage, ``collections = null``, "a wins") with a
``filesystem`` folder; davbridge pairs it with a fresh, EMPTY Graph stand-in user and its own
first sync copies the n events there (checked: n events in the stand-in; the window and the
first-sync cap are set to cover them all). Both then sync once more untimed, so each is at rest.
Both tools then run as subprocesses (process start-up included), ``repeats`` rounds, and the
medians are compared:

* start-up alone: ``vdirsyncer --version``, ``davbridge --version``;
* no-change sync: nothing changed since the tool's last sync (checked from its output);
* one-change sync: one event edited on the CalDAV server (a PUT with a new SUMMARY) before the
  round's one-change syncs, so each tool copies exactly that edit (checked on both targets);
* after-change sync: the next sync (reported as ``*_afterchange_s``, not in a ratio): davbridge
  reads the echo of its own Graph write there, so it runs before the next round's no-change
  sync, which is then a true one.

The rounds interleave the tools (alternating which goes first) so that other load on the
machine hits both alike; the 1-minute load average before and after is in the result. Both
tools run with bytecode caching on (``PYTHONDONTWRITEBYTECODE`` is dropped from their
environment: the pip-installed vdirsyncer has .pyc files, the editable davbridge would otherwise
compile its sources in every process).

``ratio = (vdirsyncer time - its start-up) / (davbridge time - its start-up)``: the warm costs
compared. Each warm cost (``*_warm_s``) is the median over the rounds of a sync's time minus
the same round's start-up run (taken just before it), which stays steady when the machine's
load drifts; ``*_ratio_of_medians`` is the same formula on the plain medians. A ratio is None
when davbridge's warm cost is not positive (lost in the start-up's noise: on Cyrus it is a few
tens of ms). So each round also runs one more no-change davbridge sync in a fresh process timed
from inside, around ``cli.main`` after all imports (``davbridge_nochange_sync_only_s``), and
``nochange_ratio_sync_only`` divides vdirsyncer's warm cost by that. The issue's target:
davbridge's no-change sync at least 3x faster than vdirsyncer's on Radicale, 10x on Cyrus.

Both tools reach the CalDAV server through a counting TCP relay (``bench.tcpmeter``; a thread
hop on loopback, the same for both), so the bytes each moved in a no-change sync are reported
too; davbridge's Graph traffic is HTTPS to the in-process stand-in whose links name its own
port, so for it the Graph requests and the JSON body bytes the stand-in answered are counted
instead (``sim.request_log`` / ``sim.response_log``). ``meter=False`` connects both directly.

Also measured, as floors: one Depth-1 PROPFIND of getetag (what vdirsyncer lists with) and one
initial sync-collection REPORT (what a sync without a token costs the server), both in-process.
With ``profile=True`` one extra no-change davbridge sync runs under cProfile; its top entries
are in the result.

vdirsyncer comes from PyPI into its own venv ``.testrun/vdirsyncer`` (``ensure_vdirsyncer``,
idempotent; never into .venv). Run alone::

    .venv/bin/python -m bench.vdirsyncer_cmp --n 1000 [--servers radicale,cyrus] [--repeats 5]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.seed import edit_caldav_event, event_uid, seed_caldav
from bench.tcpmeter import TcpMeter

if TYPE_CHECKING:
    from devtools.graphsim import GraphSim
    from devtools.servers import CalDAVServer

REPO_ROOT = Path(__file__).resolve().parent.parent
VDIRSYNCER_VENV = REPO_ROOT / ".testrun" / "vdirsyncer"
VDIRSYNCER_SPEC = "vdirsyncer>=0.21,<0.22"
INSTALL_TIMEOUT = 600.0
#: Bounds for one subprocess: set-up steps that copy every event, and measured runs.
FIRST_SYNC_TIMEOUT = 1800.0
RUN_TIMEOUT = 300.0
#: The issue's targets: davbridge's no-change sync this many times faster (warm costs).
TARGETS = {"radicale": 3.0, "cyrus": 10.0}

TENANT, CLIENT = "bench-tenant", "bench-client"
_SECRET = uuid.uuid4().hex
TOOLS = ("vdirsyncer", "davbridge")


# ------------------------------------------------------------------------------ vdirsyncer venv


def ensure_vdirsyncer(venv: Path = VDIRSYNCER_VENV, spec: str = VDIRSYNCER_SPEC) -> Path:
    """vdirsyncer in its own venv (like checkov in devtools/install_test_deps.sh): installed from
    PyPI when the stamp file does not name ``spec`` or the installed one does not run (a venv
    moved from elsewhere keeps its old interpreter path); returns the ``vdirsyncer`` executable."""
    exe = venv / "bin" / "vdirsyncer"
    stamp = venv / ".installed"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        if stamp.read_text() == spec and subprocess.run(
                [str(exe), "--version"], capture_output=True, stdin=subprocess.DEVNULL, timeout=60).returncode == 0:
            return exe
    print(f"vdirsyncer_cmp: pip install '{spec}' into {venv}", file=sys.stderr)
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    for argv in ([sys.executable, "-m", "venv", str(venv)],
                 [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", spec],
                 [str(exe), "--version"]):
        done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=INSTALL_TIMEOUT)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {(done.stdout + done.stderr)[-2000:]}")
    stamp.write_text(spec)
    return exe


# ------------------------------------------------------------------------------ subprocesses


@dataclass
class Ran:
    seconds: float
    stdout: str
    stderr: str


def _run(argv: Sequence[str], *, env: dict[str, str], timeout: float, stdin: str | None = None,
         cwd: Path | None = None) -> Ran:
    """Run ``argv`` to completion (bounded), timed from spawn to exit; raises on a non-zero exit."""
    t = time.perf_counter()
    proc = subprocess.run(list(argv), env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL)
    took = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} ... exited {proc.returncode}\nstdout: {proc.stdout[-2000:]}\n"
                           f"stderr: {proc.stderr[-2000:]}")
    return Ran(took, proc.stdout, proc.stderr)


def _median(values: Sequence[float]) -> float:
    return round(statistics.median(values), 4)


def _ratio(other: float, other_startup: float, ours: float, ours_startup: float) -> float | None:
    denominator = ours - ours_startup
    if denominator <= 0:
        return None
    return round((other - other_startup) / denominator, 2)


# ------------------------------------------------------------------------------ the two tools


@dataclass
class Vdirsyncer:
    exe: Path
    workdir: Path
    calendar_url: str  # as the tool reaches it (through the meter, or direct)
    username: str
    password: str

    @property
    def config(self) -> Path:
        return self.workdir / "config"

    @property
    def local(self) -> Path:
        return self.workdir / "local"

    def env(self) -> dict[str, str]:
        env = _tool_env()
        env.update(LC_ALL="C.UTF-8", LANG="C.UTF-8", HOME=str(self.workdir))
        env.pop("VDIRSYNCER_CONFIG", None)
        return env

    def write_config(self) -> None:
        self.local.mkdir(parents=True, exist_ok=True)
        (self.workdir / "status").mkdir(exist_ok=True)
        self.config.write_text("\n".join([
            "[general]",
            f"status_path = {json.dumps(str(self.workdir / 'status') + '/')}",
            "",
            "[pair bench]",
            'a = "bench_caldav"',
            'b = "bench_local"',
            "collections = null",
            'conflict_resolution = "a wins"',
            "",
            "[storage bench_caldav]",
            'type = "caldav"',
            f"url = {json.dumps(self.calendar_url)}",
            f"username = {json.dumps(self.username)}",
            f"password = {json.dumps(self.password)}",
            'auth = "basic"',
            "",
            "[storage bench_local]",
            'type = "filesystem"',
            f"path = {json.dumps(str(self.local) + '/')}",
            'fileext = ".ics"',
            "",
        ]))

    def __call__(self, *args: str, timeout: float = RUN_TIMEOUT) -> Ran:
        return _run([str(self.exe), "-c", str(self.config), *args], env=self.env(), timeout=timeout)

    def version(self) -> Ran:
        return _run([str(self.exe), "--version"], env=self.env(), timeout=RUN_TIMEOUT)


@dataclass
class Davbridge:
    home: Path
    sim: GraphSim
    secret: str
    caldav_password: str
    exe: list[str] = field(default_factory=lambda: _davbridge_exe())

    def env(self) -> dict[str, str]:
        env = _tool_env()
        for var in ("DAVBRIDGE_STATE_URL", "DAVBRIDGE_SECRETS_URL", "DAVBRIDGE_QUEUE_URL", "DAVBRIDGE_WEBHOOK_URL",
                    "DAVBRIDGE_LIFECYCLE_URL", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SYNC_SCHEDULE"):
            env.pop(var, None)
        env.update(DAVBRIDGE_HOME=str(self.home), GRAPH_BASE_URL=self.sim.graph_url,
                   GRAPH_AUTHORITY_HOST=self.sim.authority_host, GRAPH_TENANT_ID=TENANT, GRAPH_CLIENT_ID=CLIENT,
                   GRAPH_CA_BUNDLE=self.sim.ca_path, DAVBRIDGE_CALDAV_PASSWORD=self.caldav_password)
        return env

    def __call__(self, *args: str, timeout: float = RUN_TIMEOUT, stdin: str | None = None) -> Ran:
        return _run([*self.exe, *args], env=self.env(), timeout=timeout, stdin=stdin, cwd=self.home)

    def sync(self, timeout: float = RUN_TIMEOUT) -> Ran:
        return self("sync", "--no-progress", timeout=timeout)

    def version(self) -> Ran:
        return self("--version")

    def sync_in_process(self) -> tuple[float, str]:
        """A sync in a fresh process, timed from inside: ``cli.main`` alone, after every import
        (the warm cost measured directly instead of as a difference); its seconds and output."""
        code = ("import contextlib, io, json, time\nfrom sync_core import cli\nout = io.StringIO()\n"
                "t = time.perf_counter()\nwith contextlib.redirect_stdout(out):\n"
                "    rc = cli.main(['sync', '--no-progress'])\n"
                "print(json.dumps({'rc': rc, 'seconds': time.perf_counter() - t, 'out': out.getvalue()}))\n")
        answer = json.loads(_run([sys.executable, "-c", code], env=self.env(), timeout=RUN_TIMEOUT,
                                 cwd=self.home).stdout.strip().splitlines()[-1])
        if answer["rc"] != 0:
            raise RuntimeError(f"davbridge sync failed: {answer['out'][-500:]}")
        return float(answer["seconds"]), str(answer["out"])

    def profile(self, out: Path) -> Ran:
        argv = [sys.executable, "-m", "cProfile", "-o", str(out), "-m", "sync_core", "sync", "--no-progress"]
        return _run(argv, env=self.env(), timeout=RUN_TIMEOUT, cwd=REPO_ROOT)


def _tool_env() -> dict[str, str]:
    """The environment both tools run in: ours, but with bytecode caching on (a session may set
    PYTHONDONTWRITEBYTECODE; then the editable davbridge would compile its sources in every
    process while the pip-installed vdirsyncer has its .pyc files)."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def _davbridge_exe() -> list[str]:
    script = Path(sys.executable).parent / "davbridge"
    return [str(script)] if script.exists() else [sys.executable, "-m", "sync_core"]


def _no_change(output: str) -> bool:
    """davbridge printed "no changes" for every pairing."""
    lines = [line for line in output.splitlines() if "]: " in line]
    return bool(lines) and all(line.endswith(": no changes") for line in lines)


# ------------------------------------------------------------------------------ floors


def _report_floors(server: CalDAVServer, calendar_url: str, repeats: int) -> dict[str, float]:
    """Median seconds of one Depth-1 PROPFIND (getetag) and one initial sync-collection REPORT."""
    import requests

    propfind = ('<?xml version="1.0" encoding="utf-8"?><propfind xmlns="DAV:"><prop><resourcetype/>'
                "<getcontenttype/><getetag/></prop></propfind>")
    report = ('<?xml version="1.0" encoding="utf-8"?><sync-collection xmlns="DAV:"><sync-token/>'
              "<sync-level>1</sync-level><prop><getetag/></prop></sync-collection>")
    out: dict[str, list[float]] = {"propfind_depth1_s": [], "sync_collection_initial_s": []}
    with requests.Session() as session:
        session.trust_env = False
        session.auth = server.auth
        for _ in range(repeats):
            for key, method, body, depth in (("propfind_depth1_s", "PROPFIND", propfind, "1"),
                                             ("sync_collection_initial_s", "REPORT", report, "0")):
                t = time.perf_counter()
                reply = session.request(method, calendar_url, data=body.encode(), timeout=RUN_TIMEOUT,
                                        headers={"Depth": depth, "Content-Type": "application/xml; charset=utf-8"})
                reply.content  # noqa: B018 - read the whole answer
                out[key].append(time.perf_counter() - t)
                if reply.status_code != 207:
                    raise RuntimeError(f"{method} {calendar_url} answered {reply.status_code}")
    return {k: _median(v) for k, v in out.items()}


# ------------------------------------------------------------------------------ profile


def _profile_top(path: Path, limit: int = 20) -> dict[str, Any]:
    """A cProfile dump summarised: seconds in imports and in the sync itself, and the top
    ``limit`` functions by cumulative time (all, and sync_core's own), and by own time."""
    stats = pstats.Stats(str(path))
    own: dict[str, float] = {}
    for (filename, _line, function), (_cc, _nc, _tt, cumulative, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if filename.endswith(("sync_core/cli.py", "sync_core/__main__.py")):
            own[f"{Path(filename).name}:{function}"] = cumulative
    out: dict[str, Any] = {
        "total_s": round(own.get("__main__.py:<module>", 0.0), 3),
        "import_cli_s": round(own.get("cli.py:<module>", 0.0), 3),
        "sync_s": round(own.get("cli.py:_sync", 0.0), 3),
    }
    for name, key, restriction in (("cumulative", "cumulative", ""), ("tottime", "tottime", ""),
                                   ("sync_core_cumulative", "cumulative", "sync_core/")):
        buf = io.StringIO()
        listing = pstats.Stats(str(path), stream=buf)
        listing.sort_stats(key)
        if restriction:
            listing.print_stats(restriction, limit)
        else:
            listing.print_stats(limit)
        lines = buf.getvalue().splitlines()
        start = next((i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls")), 0)
        out[name] = [_shorten(line) for line in lines[start:] if line.strip()]
    return out


def _shorten(line: str) -> str:
    for prefix in (str(REPO_ROOT) + "/", str(Path(sys.prefix)) + "/lib/python3.11/site-packages/",
                   sys.base_prefix + "/lib/python3.11/"):
        line = line.replace(prefix, "")
    return line


# ------------------------------------------------------------------------------ one server kind


@contextlib.contextmanager
def _maybe_meter(url: str, enabled: bool) -> Iterator[TcpMeter | None]:
    if not enabled:
        yield None
        return
    meter = TcpMeter.for_url(url)
    try:
        yield meter
    finally:
        meter.stop()


def _graph_subjects(sim: GraphSim, upn: str) -> list[str]:
    """Titles of the events in the stand-in user's primary calendar (white-box, through ``sim.store``)."""
    user = sim.store.find_user(upn)
    if user is None:
        raise KeyError(upn)
    calendar = user.calendars[user.default_calendar_id]
    return [str(e.fields.get("subject")) for e in sim.store.live_events(calendar)]


def _timed_graph(sim: GraphSim, call: Callable[[], Ran]) -> tuple[Ran, dict[str, int]]:
    sim.reset_request_log()
    sim.reset_response_log()
    ran = call()
    graph = [r for r in sim.request_log if "/v1.0/" in r["path"]]
    body_bytes = sum(len(json.dumps(r["body"], separators=(",", ":")))
                     for r in sim.response_log if "/v1.0/" in r["path"])
    return ran, {"requests": len(graph), "json_body_bytes": body_bytes,
                 "identity_requests": len(sim.request_log) - len(graph)}


def bench_server(kind: str, *, n: int, repeats: int, sim: GraphSim, vdirsyncer: Path, workdir: Path,
                 meter: bool = True, profile: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    from devtools.servers import start_caldav

    result: dict[str, Any] = {"n": n, "repeats": repeats, "metered": meter}
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(days=1)
    prefix = f"b{kind[:3]}{uuid.uuid4().hex[:6]}"  # Cyrus: UIDs are unique per user
    server = start_caldav(kind, workdir / kind)
    try:
        calendar_url = server.new_calendar("bench")
        t = time.perf_counter()
        hrefs = seed_caldav(server, calendar_url, n, start=start, prefix=prefix)
        result["seed_s"] = round(time.perf_counter() - t, 2)
        log(f"{kind}: seeded {n} events in {result['seed_s']} s")
        result.update(_report_floors(server, calendar_url, repeats))

        with _maybe_meter(server.url, meter) as m:
            via = m.rewrite if m is not None else (lambda u: u)
            # davbridge: a fresh stand-in user, paired with the calendar; its first sync copies the n events.
            upn = f"bench-{kind}-{uuid.uuid4().hex[:6]}@contoso.test"
            sim.add_user(upn)
            home = workdir / f"davbridge-{kind}"
            home.mkdir(parents=True)
            db = Davbridge(home, sim, secret=_SECRET, caldav_password=server.password)
            db("secrets", "set", "graph-client-secret", stdin=_SECRET)
            future_days = max(365, math.ceil(n / 24) + 30)
            db("users", "add", upn, "--caldav-url", via(server.url), "--caldav-user", server.username,
               "--caldav-calendar", via(calendar_url), "--window-future-days", str(future_days),
               "--first-sync-cap", str(n), "--all-events", timeout=FIRST_SYNC_TIMEOUT)
            first = db.sync(timeout=FIRST_SYNC_TIMEOUT)
            result["davbridge_first_sync_s"] = round(first.seconds, 2)
            log(f"{kind}: davbridge first sync {first.seconds:.1f} s: {first.stdout.strip()}")
            second = db.sync(timeout=FIRST_SYNC_TIMEOUT)
            result["davbridge_second_sync_s"] = round(second.seconds, 2)
            log(f"{kind}: davbridge second sync {second.seconds:.1f} s: {second.stdout.strip()}")
            copied = len(_graph_subjects(sim, upn))
            result["davbridge_graph_events"] = copied
            if copied != n:
                raise RuntimeError(f"davbridge copied {copied} of {n} events to the stand-in")

            # vdirsyncer: caldav <-> filesystem, the same calendar.
            vd = Vdirsyncer(vdirsyncer, workdir / f"vdirsyncer-{kind}", via(calendar_url), server.username,
                            server.password)
            vd.workdir.mkdir(parents=True)
            vd.write_config()
            discover = vd("discover", timeout=FIRST_SYNC_TIMEOUT)
            first_v = vd("sync", timeout=FIRST_SYNC_TIMEOUT)
            result["vdirsyncer_discover_s"] = round(discover.seconds, 2)
            result["vdirsyncer_first_sync_s"] = round(first_v.seconds, 2)
            local = len(list(vd.local.glob("*.ics")))
            log(f"{kind}: vdirsyncer discover {discover.seconds:.1f} s, first sync {first_v.seconds:.1f} s, "
                f"{local} files")
            if local != n:
                raise RuntimeError(f"vdirsyncer stored {local} of {n} events")

            # One untimed no-change round each: both are at rest afterwards.
            vd("sync")
            if not _no_change(db.sync().stdout):
                raise RuntimeError("davbridge is not at rest after its second sync")

            samples: dict[str, list[float]] = {f"{tool}_{what}_s": [] for what in ("nochange", "onechange", "startup",
                                                                                    "afterchange")
                                               for tool in TOOLS}
            samples["davbridge_nochange_sync_only_s"] = []
            traffic: dict[str, Any] = {}
            k = n // 2  # the event edited before each one-change sync

            def counted(key: str, call: Callable[[], Ran]) -> Ran:
                """Time ``call`` and keep the first run's traffic under ``key``."""
                if m is not None:
                    m.reset()
                if key.startswith("davbridge"):
                    ran, graph = _timed_graph(sim, call)
                    traffic.setdefault(f"{key}_graph", graph)
                else:
                    ran = call()
                if m is not None:
                    traffic.setdefault(f"{key}_caldav_bytes", m.reset())
                return ran

            sync_of: dict[str, Callable[[], Ran]] = {"vdirsyncer": lambda: vd("sync"), "davbridge": db.sync}
            version_of: dict[str, Callable[[], Ran]] = {"vdirsyncer": vd.version, "davbridge": db.version}

            def at_rest(tool: str) -> None:
                """One start-up run and one no-change sync of ``tool``, timed."""
                samples[f"{tool}_startup_s"].append(version_of[tool]().seconds)
                ran = counted(f"{tool}_nochange", sync_of[tool])
                if (tool == "vdirsyncer" and "Copying" in ran.stdout + ran.stderr) or (
                        tool == "davbridge" and not _no_change(ran.stdout)):
                    raise RuntimeError(f"{tool} changed something in a no-change sync: "
                                       f"{(ran.stdout + ran.stderr)[-500:]}")
                samples[f"{tool}_nochange_s"].append(ran.seconds)
                if tool == "davbridge":
                    seconds, output = db.sync_in_process()
                    if not _no_change(output):
                        raise RuntimeError(f"davbridge changed something in a no-change sync: {output[-500:]}")
                    samples["davbridge_nochange_sync_only_s"].append(seconds)

            def one_change(tool: str) -> None:
                """The sync of ``tool`` after one event was edited on the server, timed."""
                ran = counted(f"{tool}_onechange", sync_of[tool])
                if (tool == "vdirsyncer" and "Copying (updating)" not in ran.stdout + ran.stderr) or (
                        tool == "davbridge" and _no_change(ran.stdout)):
                    raise RuntimeError(f"{tool} did not copy the edit: {(ran.stdout + ran.stderr)[-500:]}")
                samples[f"{tool}_onechange_s"].append(ran.seconds)

            def after_change(tool: str) -> None:
                """The sync after a one-change sync, timed: davbridge reads the echo of its own Graph
                write there (its delta lists the updated event); so the next no-change sync is one."""
                ran = sync_of[tool]()
                if (tool == "vdirsyncer" and "Copying" in ran.stdout + ran.stderr) or (
                        tool == "davbridge" and not _no_change(ran.stdout)):
                    raise RuntimeError(f"{tool} changed something after its one-change sync: "
                                       f"{(ran.stdout + ran.stderr)[-500:]}")
                samples[f"{tool}_afterchange_s"].append(ran.seconds)

            load_before = os.getloadavg()
            for r in range(repeats):
                # Interleaved (and the order alternating), so that other load on the machine hits both
                # tools alike. One edit per round, seen by both tools; each is at rest again after
                # its after-change sync.
                order = TOOLS if r % 2 == 0 else TOOLS[::-1]
                for tool in order:
                    at_rest(tool)
                edit_caldav_event(server, hrefs[k], event_uid(prefix, k), f"{prefix} {k} edited {r}",
                                  start + timedelta(hours=k))
                for tool in order:
                    one_change(tool)
                for tool in order:
                    after_change(tool)
            load_after = os.getloadavg()
            result["load_average_1min"] = [round(load_before[0], 2), round(load_after[0], 2)]
            last = f"{prefix} {k} edited {repeats - 1}"
            if last not in _graph_subjects(sim, upn):
                raise RuntimeError("the last edit did not reach the stand-in")
            if not any(last in f.read_text() for f in vd.local.glob("*.ics")):
                raise RuntimeError("the last edit did not reach vdirsyncer's folder")

            if profile:
                prof = workdir / f"davbridge-{kind}-nochange.prof"
                ran = db.profile(prof)
                if not _no_change(ran.stdout):
                    raise RuntimeError(f"the profiled davbridge sync was not a no-change sync: {ran.stdout}")
                result["davbridge_nochange_profiled_s"] = round(ran.seconds, 3)
                result["davbridge_nochange_profile"] = _profile_top(prof)

        for key, values in samples.items():
            result[key] = _median(values)
        result["samples"] = {k: [round(x, 3) for x in v] for k, v in samples.items()}
        result.update(traffic)
        for what in ("nochange", "onechange"):
            # Warm cost per round (the sync minus the same round's start-up run, measured just
            # before it), then the median: steadier than the difference of two medians when the
            # machine's load drifts, which matters once davbridge's warm cost is a few tens of ms.
            for tool in TOOLS:
                paired = zip(samples[f"{tool}_{what}_s"], samples[f"{tool}_startup_s"], strict=True)
                result[f"{tool}_{what}_warm_s"] = _median([run - startup for run, startup in paired])
            result[f"{what}_ratio"] = _ratio(result[f"vdirsyncer_{what}_warm_s"], 0.0,
                                             result[f"davbridge_{what}_warm_s"], 0.0)
            result[f"{what}_ratio_of_medians"] = _ratio(
                result[f"vdirsyncer_{what}_s"], result["vdirsyncer_startup_s"],
                result[f"davbridge_{what}_s"], result["davbridge_startup_s"])
        result["nochange_ratio_sync_only"] = _ratio(result["vdirsyncer_nochange_warm_s"], 0.0,
                                                    result["davbridge_nochange_sync_only_s"], 0.0)
        target = TARGETS.get(kind)
        if target is not None:
            result["nochange_target_ratio"] = target
            ratio = result["nochange_ratio"]
            # None: davbridge's warm cost did not rise above its start-up's noise (no ratio to judge).
            result["nochange_meets_target"] = None if ratio is None else ratio >= target
        return result
    finally:
        server.stop()



def run(n: int = 5000, servers: tuple[str, ...] = ("radicale", "cyrus"), repeats: int = 5, *, quick: bool = False,
        meter: bool = True, profile: bool = True, keep: bool = False,
        log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Compare vdirsyncer and davbridge on each server kind; see the module docstring.
    ``quick`` (the ``python -m bench --quick`` check that the benchmark works): at most 200
    events and 2 repeats."""
    from devtools.graphsim import GraphSim

    if quick:
        n, repeats = min(n, 200), min(repeats, 2)
    say = log or (lambda text: print(f"vdirsyncer_cmp: {text}", file=sys.stderr, flush=True))
    vdirsyncer = ensure_vdirsyncer()
    workdir = Path(tempfile.mkdtemp(prefix="davbridge-bench-vdir-"))
    sim = GraphSim(state_dir=workdir / "sim").start()
    out: dict[str, Any] = {}
    try:
        sim.register_app(TENANT, CLIENT, client_secret=_SECRET)
        for kind in servers:
            out[kind] = bench_server(kind, n=n, repeats=repeats, sim=sim, vdirsyncer=vdirsyncer,
                                     workdir=workdir, meter=meter, profile=profile, log=say)
            summary = {k: v for k, v in out[kind].items() if k.endswith(("_s", "_ratio"))}
            say(f"{kind}: {json.dumps(summary)}")
    finally:
        sim.stop()
        if keep:
            say(f"work files kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.vdirsyncer_cmp", description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=5000, help="events in the calendar (default 5000)")
    parser.add_argument("--servers", default="radicale,cyrus", help="comma-separated: radicale,cyrus,xandikos")
    parser.add_argument("--repeats", type=int, default=5, help="runs per measurement; medians are reported")
    parser.add_argument("--no-meter", action="store_true", help="no counting relay between the tools and the server")
    parser.add_argument("--no-profile", action="store_true", help="skip the cProfile run of davbridge")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    servers = tuple(s.strip() for s in args.servers.split(",") if s.strip())
    result = run(args.n, servers, args.repeats, meter=not args.no_meter, profile=not args.no_profile, keep=args.keep)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

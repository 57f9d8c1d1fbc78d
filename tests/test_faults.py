"""Faults on both sides, end to end through the ``davbridge`` CLI (in-process).

The Graph stand-in injects faults itself (``devtools/graphsim/faults.py``); the CalDAV server
(Radicale, or the first server selected with ``--servers``) sits behind ``devtools.faultproxy``.
The CLI is run with short client timeouts and a small Graph retry budget, so a fault costs about
a second at most:

* the CalDAV timeout through ``CALDAV_TIMEOUT_SECONDS`` (a product setting);
* the Graph client's timeout and retry budget by wrapping ``sync_core.services.GraphClient``:
  there is no setting for them (see ``_fast_graph_client``).

What is checked on each side is read with independent clients (``devtools/clients.py``), never
through davbridge; the CalDAV client talks to the server directly, not through the proxy.
"""

from __future__ import annotations

import http.server
import io
import itertools
import os
import random
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import redirect_stdout
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import ServerPool, selected_caldav_kinds
from scenario_world import CLIENT_ID, SECRET, TENANT, day, graph_time, ical_time

from devtools import faultproxy as fp
from devtools.clients import CalDAVObject, CalDAVUserApp, GraphUserApp
from devtools.faultproxy import FaultProxy
from devtools.graphsim import GraphSim
from devtools.graphsim import faults as gf
from devtools.servers import CalDAVServer
from sync_core import cli
from sync_core.services import Services
from sync_core.settings import Settings
from sync_core.sides.graph_http import GraphClient

# -- the test's client settings -------------------------------------------------------------------
GRAPH_READ_TIMEOUT = 1.0  # seconds; the stand-in's timeout faults stall longer (GRAPH_STALL)
GRAPH_STALL = 1.5
GRAPH_MAX_ATTEMPTS = 4
GRAPH_MAX_WAIT = 3.0
CALDAV_TIMEOUT = 1.0  # CALDAV_TIMEOUT_SECONDS; the proxy's long delays exceed it (CALDAV_STALL)
CALDAV_STALL = 1.4
CALDAV_TRIES = 3  # caldav_side._Http: 429/503 retried twice
SYNC_BUDGET = 30.0  # seconds per sync, faults included (the function timeout is 10 minutes)

#: More seeds: DAVBRIDGE_FAULT_SEEDS=1,2,3,4 pytest tests/test_faults.py -k random
SEEDS = tuple(int(x) for x in os.environ.get("DAVBRIDGE_FAULT_SEEDS", "101,202,303").split(","))
ROUNDS = 8


def _fast_graph_client(*args: Any, **kwargs: Any) -> GraphClient:
    """``GraphClient`` with the test's timeout and retry budget.

    Product gap: ``Services.graph()`` builds ``GraphClient`` with its defaults (read timeout 60 s,
    5 tries, 60 s of waiting per request) and no setting changes them, so the test wraps the class
    where ``sync_core.services`` looks it up."""
    kwargs.update(timeout=(2.0, GRAPH_READ_TIMEOUT), max_attempts=GRAPH_MAX_ATTEMPTS, max_wait=GRAPH_MAX_WAIT,
                  backoff_base=0.05)
    return GraphClient(*args, **kwargs)


# -- the world: stand-in mailbox + CalDAV calendar behind the proxy + CLI ------------------------------
@dataclass
class SyncResult:
    rc: int
    out: str
    seconds: float
    graph: list[dict[str, Any]]  # the stand-in's request records of this sync
    caldav: list[dict[str, Any]]  # the proxy's request records of this sync

    @property
    def clean(self) -> bool:
        return self.rc == 0 and "deferred" not in self.out and "FAILED" not in self.out


@dataclass
class FaultWorld:
    sim: GraphSim
    server: CalDAVServer
    proxy: FaultProxy
    upn: str
    calendar_url: str  # on the server itself
    graph: GraphUserApp
    caldav: CalDAVUserApp  # straight to the server, never through the proxy

    def run(self, *args: str) -> tuple[int, str]:
        out = io.StringIO()
        with redirect_stdout(out):
            rc = cli.main(list(args))
        return rc, out.getvalue()

    def sync(self) -> SyncResult:
        graph_from, caldav_from = len(self.sim.request_log), len(self.proxy.requests)
        started = time.monotonic()
        rc, out = self.run("sync", "--user", self.upn)
        seconds = time.monotonic() - started
        return SyncResult(rc, out, seconds, self.sim.request_log[graph_from:], self.proxy.requests[caldav_from:])

    def faults_off(self) -> None:
        self.sim.clear_faults()
        self.proxy.clear()
        assert self.proxy.wait_idle(10), "a delayed request is still in the proxy"

    def graph_events(self) -> list[dict[str, Any]]:
        return self.graph.events(self.upn)


@pytest.fixture(scope="module")
def fault_server(request: pytest.FixtureRequest, _server_pool: ServerPool) -> CalDAVServer:
    """Radicale (or the first selected server): the proxy is what is under test, not the server."""
    kinds = selected_caldav_kinds(request.config)
    return _server_pool.caldav("radicale" if "radicale" in kinds else kinds[0])


@pytest.fixture
def fw(graphsim: GraphSim, fault_server: CalDAVServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
       request: pytest.FixtureRequest) -> Iterator[FaultWorld]:
    graphsim.clear_faults()
    calendar = fault_server.new_calendar(request.node.name[:60])
    proxy = FaultProxy(fault_server.url, seed=0).start()
    upn = f"faults-{uuid.uuid4().hex[:8]}@contoso.test"
    graphsim.add_user(upn)
    for key, value in {
        "DAVBRIDGE_HOME": str(tmp_path / "home"), "GRAPH_BASE_URL": graphsim.graph_url,
        "GRAPH_AUTHORITY_HOST": graphsim.authority_host, "GRAPH_TENANT_ID": TENANT,
        "GRAPH_CLIENT_ID": CLIENT_ID, "GRAPH_CA_BUNDLE": graphsim.ca_path,
        "DAVBRIDGE_CALDAV_PASSWORD": fault_server.password, "CALDAV_TIMEOUT_SECONDS": str(CALDAV_TIMEOUT),
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr("sync_core.services.GraphClient", _fast_graph_client)
    world = FaultWorld(graphsim, fault_server, proxy, upn, calendar,
                       GraphUserApp(graphsim.graph_url, graphsim.authority_host, TENANT, CLIENT_ID, SECRET,
                                    graphsim.ca_path),
                       CalDAVUserApp(fault_server, calendar))
    monkeypatch.setattr("sys.stdin", io.StringIO(SECRET + "\n"))
    try:
        assert world.run("secrets", "set", "graph-client-secret")[0] == 0
        rc, out = world.run("users", "add", upn, "--caldav-url", proxy.url, "--caldav-user", fault_server.username,
                            "--caldav-calendar", proxy.proxied(calendar))
        assert rc == 0, out
        yield world
    finally:
        graphsim.clear_faults()
        proxy.stop()


# -- checks ------------------------------------------------------------------------------------------
def _assert_retries_bounded(result: SyncResult) -> None:
    """Every logical Graph request is tried at most the budget (+1 for one token refresh), tokens
    are fetched at most twice, and no CalDAV request is repeated past its 429/503 retries."""
    tries = Counter(r["client_request_id"] for r in result.graph
                    if r["path"].startswith("/v1.0/") and r.get("client_request_id"))
    worst = tries.most_common(1)
    assert not worst or worst[0][1] <= GRAPH_MAX_ATTEMPTS + 1, worst
    tokens = [r for r in result.graph if r["path"].endswith("/oauth2/v2.0/token")]
    assert len(tokens) <= 2, tokens
    run, previous = 0, None
    for r in result.caldav:
        key = (r["method"], r["path"])
        if r["status"] in (429, 503):
            run = run + 1 if key == previous else 1
            previous = key
        else:
            run, previous = 0, None
        assert run <= CALDAV_TRIES, result.caldav
    assert len(result.graph) <= 400 and len(result.caldav) <= 400


def _location_of(obj: CalDAVObject) -> str:
    return obj.prop("LOCATION") or ""


@dataclass
class Book:
    """What the test's "users" did: every subject created and every subject deleted."""

    created: set[str] = field(default_factory=set)
    deleted: set[str] = field(default_factory=set)
    actions: list[str] = field(default_factory=list)  # for failure messages

    def did(self, tag: str, what: str, subject: str) -> None:
        self.actions.append(f"{tag}: {what} {subject}")
        if what.startswith("create"):
            self.created.add(subject)
        elif what.startswith("delete"):
            self.deleted.add(subject)

    def history(self, subject: str) -> list[str]:
        return [a for a in self.actions if a.endswith(" " + subject)]

    def live(self, subjects: list[str]) -> list[str]:
        return sorted(s for s in set(subjects) if s in self.created and s not in self.deleted)


def _assert_converged(w: FaultWorld, book: Book) -> None:
    graph = w.graph_events()
    objects = w.caldav.objects()
    subjects = Counter(e["subject"] for e in graph)
    summaries = Counter(o.prop("SUMMARY") for o in objects)
    uids = Counter(o.prop("UID") for o in objects)
    assert [s for s, n in subjects.items() if n > 1] == [], "duplicate on Microsoft 365"
    assert [s for s, n in summaries.items() if n > 1] == [], "duplicate on CalDAV (summary)"
    assert [u for u, n in uids.items() if n > 1] == [], "duplicate on CalDAV (UID)"
    kept = book.created - book.deleted
    assert sorted(kept - set(subjects)) == [], "lost on Microsoft 365"
    assert sorted(kept - set(summaries)) == [], "lost on CalDAV"
    assert set(subjects) <= book.created and set(summaries) <= book.created
    by_summary = {o.prop("SUMMARY"): o for o in objects}
    differ = {e["subject"]: ((e.get("location") or {}).get("displayName") or "", _location_of(by_summary[e["subject"]]))
              for e in graph if e["subject"] in by_summary}
    assert {s: pair for s, pair in differ.items() if pair[0] != pair[1]} == {}, "the sides disagree"


def _assert_deletions_carried_out(w: FaultWorld, book: Book) -> None:
    """A deleted event is gone from both sides, or (an edit won the race) kept on both.
    (Fails while the product forgets deletions whose write failed: see
    test_delete_that_failed_transiently_is_carried_out_next_run.)"""
    subjects = {e["subject"] for e in w.graph_events()}
    summaries = {o.prop("SUMMARY") for o in w.caldav.objects()}
    half = sorted(s for s in book.deleted if (s in subjects) != (s in summaries))
    assert half == [], {s: (book.history(s), "on m365" if s in subjects else "on caldav") for s in half}


def _pending(w: FaultWorld) -> list[tuple[str, str, str]]:
    """(side, item id, reason) of every pending / quarantined item in the state (failure messages)."""
    services = Services(Settings.from_env())
    try:
        return [(p.side, p.item_id, p.reason) for pairing in services.store.list_pairings(w.upn)
                for p in services.store.pending(pairing.pairing_id)]
    finally:
        services.close()


# -- user edits --------------------------------------------------------------------------------------
def _now_stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def _with_location(ics: str, location: str) -> str:
    """The object's iCalendar with a new LOCATION (and LAST-MODIFIED / DTSTAMP): an edit in a
    calendar app that keeps everything else."""
    lines = ics.replace("\r\n ", "").replace("\n ", "").splitlines()
    out: list[str] = []
    in_event = False
    for line in lines:
        key = line.split(":", 1)[0].split(";", 1)[0].upper()
        if line.upper() == "BEGIN:VEVENT":
            in_event = True
        elif line.upper() == "END:VEVENT" and in_event:
            stamp = _now_stamp()
            out += [f"LOCATION:{location}", f"LAST-MODIFIED:{stamp}", f"DTSTAMP:{stamp}"]
            in_event = False
        elif in_event and key in ("LOCATION", "LAST-MODIFIED", "DTSTAMP"):
            continue
        out.append(line)
    return "\r\n".join(out) + "\r\n"


def _edit_caldav(w: FaultWorld, obj: CalDAVObject, location: str) -> None:
    reply = w.server.request("PUT", obj.href, body=_with_location(obj.ics, location).encode(),
                             headers={"If-Match": obj.etag, "Content-Type": "text/calendar; charset=utf-8"})
    assert reply.status in (200, 201, 204), reply.status


def _user_edits(w: FaultWorld, rng: random.Random, tag: str, book: Book) -> None:
    """Random edits of one round: creates, location changes and deletions on both sides."""
    events = {e["subject"]: e for e in w.graph_events()}
    for k in range(rng.randint(0, 2)):
        subject = f"{tag}-g{k}"
        start = day(rng.randint(1, 20), rng.randint(8, 17))
        w.graph.create(w.upn, subject, graph_time(start), graph_time(start.replace(minute=45)), location="")
        book.did(tag, "create on m365", subject)
    live = book.live(list(events))
    if live and rng.random() < 0.6:
        subject = rng.choice(live)
        w.graph.update(w.upn, events[subject]["id"], location={"displayName": f"{tag}-graph"})
        book.did(tag, "edit on m365", subject)
    if len(live) > 3 and rng.random() < 0.3:
        subject = rng.choice(live)
        w.graph.delete(w.upn, events[subject]["id"])
        book.did(tag, "delete on m365", subject)

    objects = {o.prop("SUMMARY") or "": o for o in w.caldav.objects()}
    for k in range(rng.randint(0, 2)):
        subject = f"{tag}-c{k}"
        start = day(rng.randint(1, 20), rng.randint(8, 17))
        w.caldav.put(subject, ical_time(start), ical_time(start.replace(minute=30)))
        book.did(tag, "create on caldav", subject)
    live = book.live(list(objects))
    if live and rng.random() < 0.6:
        subject = rng.choice(live)
        _edit_caldav(w, objects[subject], f"{tag}-caldav")
        book.did(tag, "edit on caldav", subject)
    if len(live) > 3 and rng.random() < 0.3:
        subject = rng.choice(live)
        w.caldav.delete(objects[subject].href)
        book.did(tag, "delete on caldav", subject)


WRITES = ("POST", "PATCH", "DELETE")


def _graph_faults(rng: random.Random) -> list[gf.Fault]:
    """One round's Graph faults: each rule fires at most `count` times (1 unless given), with this
    probability per matching request; rules for writes come first (the first rule drawn fires)."""
    p = rng.choice((0.05, 0.1, 0.2))
    return [
        gf.irresolvable_conflict(probability=0.3),  # PATCH
        gf.server_error(500, after=True, methods=WRITES, probability=p),  # the write landed
        gf.server_error(503, after=True, retry_after=0.1, methods=WRITES, probability=p),
        gf.timeout(GRAPH_STALL, after=True, methods=WRITES, probability=p / 2),
        gf.reset(after=True, methods=WRITES, probability=p),
        gf.throttle(2, retry_after=rng.choice((0.1, 0.25)), probability=p),
        gf.throttle(1, retry_after=0.1, status=503, probability=p),
        gf.server_error(503, probability=p),  # without Retry-After: exponential back-off
        gf.server_error(500, probability=p / 2),
        gf.timeout(GRAPH_STALL, probability=p / 4),
        gf.reset(probability=p / 2),
        gf.expired_token(probability=p / 2),
        gf.expired_delta(probability=p),
    ]


def _caldav_faults(rng: random.Random) -> list[fp.ProxyFault]:
    p = rng.choice((0.05, 0.1, 0.2))
    return [
        fp.reset(after=True, methods="PUT,DELETE", probability=2 * p),  # the write landed
        fp.error(500, after=True, methods="PUT,DELETE", probability=p),
        fp.delay(CALDAV_STALL, after=True, methods="PUT,DELETE", probability=p / 2),
        fp.error(507, methods="PUT", probability=p),
        fp.error(503, 2, retry_after=0.1, probability=p),
        fp.error(500, probability=p / 2),
        fp.delay(0.2, 2, probability=p),
        fp.delay(CALDAV_STALL, probability=p / 4),
        fp.reset(probability=p / 2),
    ]


# -- the randomised run -------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS)
def test_random_faults_lose_nothing_and_duplicate_nothing(fw: FaultWorld, seed: int) -> None:
    """ROUNDS rounds of (random edits on both sides, then a sync with random faults on both sides),
    then faults off and two clean syncs: nothing lost, nothing twice, both sides agree, every sync
    within its time budget and its retry bounds, and the second clean sync has nothing left to do
    (work interrupted by a fault was resumed and finished).

    Known product bugs make some seeds fail at the end (seed 303 at the time of writing: a phantom
    "duplicate identity" quarantine); the focused tests at the end of this file pin them down:
    test_delete_that_failed_transiently_is_carried_out_next_run,
    test_restore_whose_put_landed_unanswered_is_not_created_again."""
    rng = random.Random(seed)
    book = Book()
    faulty: list[SyncResult] = []
    for rnd in range(ROUNDS):
        _user_edits(fw, rng, f"s{seed}-r{rnd}", book)
        fw.sim.inject_faults(*_graph_faults(rng), seed=rng.randrange(1 << 30))
        fw.proxy.set_faults(*_caldav_faults(rng), seed=rng.randrange(1 << 30))
        result = fw.sync()
        fw.faults_off()
        faulty.append(result)
        assert result.rc in (0, 1), result.out  # 1: the pairing failed this run (printed), not a crash
        assert result.seconds < SYNC_BUDGET, (rnd, result.seconds, result.out)
        _assert_retries_bounded(result)

    graph_faults = [r for s in faulty for r in s.graph if r.get("fault")]
    caldav_faults = [r for s in faulty for r in s.caldav if r["fault"]]
    kinds = Counter(f"graph {r['fault']}/{r['status']}" for r in graph_faults)
    kinds.update(f"caldav {r['fault']}/{r['status']}" for r in caldav_faults)
    print(f"seed {seed}: {len(book.created)} created, {len(book.deleted)} deleted; "
          f"{len(graph_faults)} Graph and {len(caldav_faults)} CalDAV faults {dict(sorted(kinds.items()))}; "
          f"{sum(not s.clean for s in faulty)}/{ROUNDS} syncs not clean; "
          f"slowest sync {max(s.seconds for s in faulty):.2f} s")
    # the run did meet faults, on both sides, and some syncs had to leave work for later
    assert graph_faults and caldav_faults
    assert not all(s.clean for s in faulty)

    first, second = fw.sync(), fw.sync()
    for result in (first, second):
        assert result.rc == 0, result.out
        assert result.seconds < SYNC_BUDGET
    assert "no changes" in second.out and second.clean, second.out
    rc, status = fw.run("status", "--json")
    assert rc == 0 and '"ok": true' in status, status
    _assert_converged(fw, book)
    assert '"quarantined": 0' in status, (_pending(fw), book.actions)
    _assert_deletions_carried_out(fw, book)


# -- focused scenarios ---------------------------------------------------------------------------------
def _delta_requests(result: SyncResult) -> list[dict[str, Any]]:
    return [r for r in result.graph if r["path"].endswith("/delta")]


def test_429_storm_is_waited_out_honouring_retry_after(fw: FaultWorld) -> None:
    fw.graph.create(fw.upn, "Storm", graph_time(day(1)), graph_time(day(1, 10)))
    fw.sim.inject_faults(gf.throttle(3, retry_after=0.4, path=gf.DELTA_PATHS))
    result = fw.sync()
    assert result.rc == 0 and "created_caldav=1" in result.out, result.out
    delta = _delta_requests(result)
    assert [r["status"] for r in delta[:4]] == [429, 429, 429, 200]
    assert len({r["client_request_id"] for r in delta[:4]}) == 1  # one logical request, retried
    gaps = [b["time"] - a["time"] for a, b in itertools.pairwise(delta[:4])]
    assert all(gap >= 0.4 for gap in gaps), gaps  # fractional Retry-After honoured
    assert result.seconds >= 1.2

    # A storm longer than the retry budget: the run gives up (bounded), the next one completes.
    fw.graph.create(fw.upn, "After the storm", graph_time(day(2)), graph_time(day(2, 10)))
    fw.sim.inject_faults(gf.throttle(50, retry_after=0.4, path=gf.DELTA_PATHS))
    result = fw.sync()
    fw.faults_off()
    assert result.rc == 1 and "Throttled" in result.out, result.out
    assert len(_delta_requests(result)) == GRAPH_MAX_ATTEMPTS  # and then it stopped asking
    assert result.seconds < GRAPH_MAX_WAIT + 2
    result = fw.sync()
    assert result.rc == 0 and "created_caldav=1" in result.out, result.out
    assert sorted(o.prop("SUMMARY") or "" for o in fw.caldav.objects()) == ["After the storm", "Storm"]


@pytest.mark.parametrize("after", [False, True], ids=["before-the-server", "after-the-write-landed"])
def test_connection_reset_during_caldav_put_leaves_no_duplicate(fw: FaultWorld, after: bool) -> None:
    fw.graph.create(fw.upn, "Reset me", graph_time(day(3)), graph_time(day(3, 10)))
    fw.proxy.set_faults(fp.reset(methods="PUT", after=after))
    result = fw.sync()
    fw.faults_off()
    assert [(f["kind"], f["method"]) for f in fw.proxy.log] == [("reset", "PUT")]
    # Landed without an answer: found at once by its key (one GET) and linked; else deferred.
    assert ("created_caldav=1" in result.out) is after, result.out
    assert len(fw.caldav.objects()) == (1 if after else 0)  # the PUT landed, or not

    first, second = fw.sync(), fw.sync()
    assert first.rc == 0 and second.rc == 0, (first.out, second.out)
    assert "no changes" in second.out and second.clean, second.out
    (obj,) = fw.caldav.objects()
    assert obj.prop("SUMMARY") == "Reset me"
    assert [e["subject"] for e in fw.graph_events()] == ["Reset me"]


def test_expired_access_token_is_refreshed_once(fw: FaultWorld) -> None:
    fw.graph.create(fw.upn, "Token", graph_time(day(4)), graph_time(day(4, 10)))
    fw.sync()  # the app holds a cached token now
    fw.caldav.put("Token 2", ical_time(day(5)), ical_time(day(5, 10)))
    fw.sim.inject_faults(gf.expired_token())
    result = fw.sync()
    assert result.rc == 0 and "created_m365=1" in result.out, result.out
    refused = [r for r in result.graph if r["status"] == 401]
    assert [r["fault"] for r in refused] == ["expire-token"]  # the expired token was never sent again
    tokens = [r for r in result.graph if r["path"].endswith("/oauth2/v2.0/token")]
    assert len(tokens) == 1 and tokens[0]["status"] == 200
    first = result.graph.index(refused[0])
    retry = next(r for r in result.graph[first + 1 :] if r["path"].startswith("/v1.0/"))
    assert retry["client_request_id"] == refused[0]["client_request_id"] and retry["status"] == 200
    assert sorted(e["subject"] for e in fw.graph_events()) == ["Token", "Token 2"]


def test_412_on_graph_patch_is_redecided_next_run(fw: FaultWorld) -> None:
    g = fw.graph.create(fw.upn, "Contested", graph_time(day(6)), graph_time(day(6, 10)))
    assert fw.sync().rc == 0
    (obj,) = fw.caldav.objects()
    _edit_caldav(fw, obj, "Room 9")
    fw.sim.inject_faults(gf.irresolvable_conflict(methods="PATCH"))
    result = fw.sync()
    fw.faults_off()
    assert result.rc == 0 and "1 deferred" in result.out, result.out
    assert [(f["method"], f["status"]) for f in fw.sim.fault_log[-1:]] == [("PATCH", 412)]
    assert (fw.graph.get(fw.upn, g["id"])["location"] or {}).get("displayName", "") == ""

    # Meanwhile the Outlook user edits the event too (later than the CalDAV edit: newest wins).
    time.sleep(1.1)
    fw.graph.update(fw.upn, g["id"], location={"displayName": "Outlook room"})
    result = fw.sync()
    assert result.rc == 0 and result.clean and "updated_caldav=1" in result.out, result.out
    (obj,) = fw.caldav.objects()
    assert obj.prop("LOCATION") == "Outlook room"
    assert fw.graph.get(fw.upn, g["id"])["location"]["displayName"] == "Outlook room"
    assert "no changes" in fw.sync().out


def test_graph_create_whose_answer_was_lost_is_not_duplicated(fw: FaultWorld) -> None:
    """The creates go in one ``$batch``; it lands, its answer never comes (timeout, then
    reset): the retried batch is the same logical request (one client-request-id) and each
    POST in it carries the same transactionId, so Graph returns the first events instead of
    second ones."""
    fw.caldav.put("Slow create", ical_time(day(7)), ical_time(day(7, 10)))
    fw.caldav.put("Cut create", ical_time(day(8)), ical_time(day(8, 10)))
    fw.sim.inject_faults(gf.timeout(GRAPH_STALL, after=True, methods="POST"),
                         gf.reset(after=True, methods="POST"))
    result = fw.sync()
    fw.faults_off()
    assert result.rc == 0 and "created_m365=2" in result.out, result.out
    batches = [r for r in result.graph if r["method"] == "POST" and r["path"].endswith("/$batch")]
    assert [r["status"] for r in batches] == [None, None, 200]
    assert len({r["client_request_id"] for r in batches}) == 1
    assert sorted(e["subject"] for e in fw.graph_events()) == ["Cut create", "Slow create"]
    assert "no changes" in fw.sync().out


# -- the tools themselves ------------------------------------------------------------------------------
def test_graph_fault_rules_are_bounded_seeded_and_filtered() -> None:
    def fired(seed: int) -> list[int]:
        injector = gf.FaultInjector(seed)
        injector.add(gf.server_error(500, 5, probability=0.3, methods="GET", path=r"/events"))
        out = []
        for n in range(100):
            if injector.draw("GET", f"/v1.0/users/u/events/{n}", None) is not None:
                out.append(n)
            assert injector.draw("PATCH", "/v1.0/users/u/events/1", None) is None  # method filter
            assert injector.draw("GET", "/v1.0/users/u/calendar", None) is None  # path filter
        return out

    assert fired(7) == fired(7) and len(fired(7)) == 5  # bounded by count, same seed same faults
    assert fired(7) != fired(8)
    injector = gf.FaultInjector()
    injector.add(gf.expired_token())
    assert injector.draw("GET", "/v1.0/me", "Bearer old").kind == "expire-token"  # type: ignore[union-attr]
    again = injector.draw("GET", "/v1.0/me", "Bearer old")
    assert again is not None and gf.label(again) == "token-expired"
    assert injector.draw("GET", "/v1.0/me", "Bearer new") is None
    with pytest.raises(ValueError):
        gf.Fault("status", count=0)


def test_graph_faults_over_the_admin_api(graphsim: GraphSim) -> None:
    """Another process (the demo) sets faults through ``/_sim/faults``."""
    session = requests.Session()
    session.trust_env = False
    session.verify = graphsim.ca_path
    admin = f"{graphsim.authority_host}/_sim/faults"
    rule = {"kind": "status", "status": 503, "retry_after": 0.5, "methods": ["GET"], "path": "/v1.0/users/nobody-x"}
    try:
        assert session.post(admin, json={"faults": [rule], "seed": 5}).status_code == 204
        assert session.post(admin, json={"faults": [{"kind": "nonsense"}]}).status_code == 400
        reply = session.get(f"{graphsim.graph_url}/users/nobody-x/calendar")  # no token needed: faults come first
        assert reply.status_code == 503 and reply.headers["Retry-After"] == "0.5"
        assert reply.json()["error"]["code"] == "ServiceNotAvailable"
        listed = session.get(admin).json()
        assert listed["active"] == [] and listed["value"][-1]["path"] == "/v1.0/users/nobody-x/calendar"
        assert session.get(f"{graphsim.graph_url}/users/nobody-x/calendar").status_code == 401  # used up
    finally:
        assert session.delete(admin).status_code == 204


class _AbsoluteHrefServer(http.server.BaseHTTPRequestHandler):
    """A server that answers with absolute URLs (as some CalDAV servers do) and echoes bodies."""

    protocol_version = "HTTP/1.1"

    def do_PROPFIND(self) -> None:
        me = f"http://{self.headers['Host']}"
        length = int(self.headers.get("Content-Length") or 0)
        size = len(self.rfile.read(length)) if length else 0
        body = (f'<?xml version="1.0"?><d:multistatus xmlns:d="DAV:"><d:response><d:href>{me}/cal/a.ics</d:href>'
                f"<d:propstat><d:prop><d:displayname>{me}/not-an-href</d:displayname></d:prop>"
                f"<d:status>HTTP/1.1 200 OK</d:status></d:propstat></d:response></d:multistatus>").encode()
        self.send_response(207)
        self.send_header("Content-Type", "application/xml; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Location", f"{me}/cal/")
        self.send_header("X-Got", f"{size} {self.headers.get('Authorization')}")
        self.end_headers()
        self.wfile.write(body)

    def do_PUT(self) -> None:
        data = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(201)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_faultproxy_forwards_and_rewrites_absolute_urls() -> None:
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _AbsoluteHrefServer)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    target = f"http://127.0.0.1:{upstream.server_address[1]}/cal/"
    try:
        with FaultProxy(target, seed=3) as proxy:
            assert proxy.url == f"{proxy.origin}/cal/"
            req = urllib.request.Request(proxy.url, method="PROPFIND", data=b"<x/>" * 10,
                                         headers={"Authorization": "Basic dTpw"})
            with urllib.request.urlopen(req, timeout=5) as reply:
                body = reply.read().decode()
                assert reply.status == 207
                assert reply.headers["Location"] == f"{proxy.origin}/cal/"
                assert reply.headers["X-Got"] == "40 Basic dTpw"  # body and Authorization forwarded
            assert f"<d:href>{proxy.origin}/cal/a.ics</d:href>" in body
            assert f"<d:displayname>{target[:-5]}/not-an-href" in body  # only hrefs are rewritten

            payload = bytes(range(256)) * 4096  # 1 MiB, streamed both ways
            put = urllib.request.Request(proxy.url + "a.ics", method="PUT", data=payload)
            with urllib.request.urlopen(put, timeout=5) as reply:
                assert reply.status == 201 and reply.read() == payload

            proxy.set_faults(fp.error(507, methods="PUT", retry_after=0.5), fp.reset(methods="PROPFIND"))
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(put, timeout=5)
            assert refused.value.code == 507 and refused.value.headers["Retry-After"] == "0.5"
            with pytest.raises((ConnectionError, urllib.error.URLError)):
                urllib.request.urlopen(req, timeout=5)
            with urllib.request.urlopen(req, timeout=5) as reply:  # both faults were used up
                assert reply.status == 207
            assert proxy.wait_idle(5)
            assert [(f["kind"], f["method"]) for f in proxy.log] == [("error", "PUT"), ("reset", "PROPFIND")]
            assert [r["status"] for r in proxy.requests] == [207, 201, 507, None, 207]
    finally:
        upstream.shutdown()
        upstream.server_close()



@pytest.mark.parametrize("deleted_on", ["m365", "caldav"])
def test_delete_that_failed_transiently_is_carried_out_next_run(fw: FaultWorld, deleted_on: str) -> None:
    """PRODUCT BUG (reported, not fixed here): a DeleteOn whose remote write fails with a transient
    error (connection reset, 500, timeout) is deferred, but ``apply._defer`` saves the action's
    link, in which the reconciler already cleared the deleted side's id, and marks only the other
    side's item pending. The next run re-reads that item, finds it unchanged (an echo) and does
    nothing: the deletion is forgotten for good, the copy stays on the other side (and an edit of
    it later creates the event again on the side where it was deleted)."""
    g = fw.graph.create(fw.upn, "Doomed", graph_time(day(3)), graph_time(day(3, 10)))
    assert fw.sync().rc == 0
    (obj,) = fw.caldav.objects()
    if deleted_on == "m365":
        fw.graph.delete(fw.upn, g["id"])
        fw.proxy.set_faults(fp.reset(methods="DELETE"))  # the copy's DELETE on CalDAV is cut
    else:
        fw.caldav.delete(obj.href)
        fw.sim.inject_faults(gf.server_error(500, methods="DELETE"))  # the copy's DELETE on Graph fails
    result = fw.sync()
    fw.faults_off()
    assert result.rc == 0 and "1 deferred" in result.out, result.out

    fw.sync()
    fw.sync()
    assert [o.prop("SUMMARY") for o in fw.caldav.objects()] == []
    assert [e["subject"] for e in fw.graph_events()] == []




def test_restore_whose_put_landed_unanswered_is_not_created_again(fw: FaultWorld) -> None:
    """An event edited in Outlook and deleted on CalDAV is restored on CalDAV (the edit wins).
    The restoring PUT lands, but the connection dies before the answer: the sync asks for the
    resource its key names (``find_created``), finds it and links it in the same run. Nothing
    is created again on either side, nothing is quarantined, and the next runs are quiet."""
    href = fw.caldav.put("Phoenix", ical_time(day(3)), ical_time(day(3, 10)))
    assert "created_m365=1" in fw.sync().out
    (g,) = fw.graph_events()
    fw.graph.update(fw.upn, g["id"], location={"displayName": "edited in Outlook"})
    fw.caldav.delete(href)
    fw.proxy.set_faults(fp.reset(methods="PUT", after=True))
    result = fw.sync()
    fw.faults_off()
    assert "created_caldav=1" in result.out and "deferred" not in result.out, result.out
    (restored,) = fw.caldav.objects()  # the restore landed

    first, second = fw.sync(), fw.sync()
    assert [o.href for o in fw.caldav.objects()] == [restored.href]
    assert [e["id"] for e in fw.graph_events()] == [g["id"]]
    creates = [r for r in first.graph + second.graph if r["method"] == "POST" and r["path"].endswith("/events")]
    assert creates == [], first.out  # nothing is new on the CalDAV side: no create may be sent
    assert _pending(fw) == []
    assert "quarantined" not in first.out + second.out

"""Fast seeding of the local servers for benchmarks: many simple events on a CalDAV calendar or
in a Graph stand-in mailbox, written concurrently.

    seed_caldav(server, calendar_url, n, start=..., prefix="bench")  -> [absolute URL of each event]
    seed_graph(sim, "ada@contoso.test", n, start=..., prefix="bench") -> [Graph event id of each event]

Event ``i`` starts at ``start + i`` hours and lasts 30 minutes; its UID (CalDAV) is
``{prefix}-{i}@bench`` and its title ``{prefix} {i}``. Both helpers keep their requests bounded
(timeouts, a few retries of transport errors and throttling answers) and raise on anything else.

CalDAV: ``CALDAV_WORKERS`` threads, each with its own pooled ``requests`` session (kept-alive
connections where the server keeps them: Cyrus does, Radicale's wsgiref server closes after each
answer), Basic auth sent up front on every request (Cyrus answers unauthenticated requests as
an anonymous user instead of challenging). Cyrus keeps UIDs unique per *user*: seeding two
calendars of the same Cyrus user needs two prefixes. An EMPTY Radicale calendar is filled with
one whole-collection PUT instead (one PUT per event is quadratic there; see ``seed_caldav``).
Measured on this 2-core machine (``python -m bench.seed --n 10000``): 10,000 events take 15 s
into Radicale (whole-collection PUT), 66 s into Cyrus (8 workers), 23 s into the stand-in.

Graph: ``GRAPH_WORKERS`` threads POSTing ``/users/{upn}/events`` through
``devtools.clients.GraphUserApp`` (one client, hence one token and one session, per thread), as
an app registered in the stand-in only for seeding. The stand-in allows 4 concurrent requests per
app and mailbox (``mailbox_concurrency_limit``, documented in devtools/graphsim/README.md); a 429
is waited out as its ``Retry-After`` says.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import quote, unquote, urljoin, urlsplit
from xml.etree import ElementTree as ET

import requests
from requests.adapters import HTTPAdapter

if TYPE_CHECKING:
    from devtools.clients import GraphUserApp
    from devtools.servers import CalDAVServer

CALDAV_WORKERS = 8
GRAPH_WORKERS = 4  # the stand-in's MailboxConcurrency limit per app and mailbox
REQUEST_TIMEOUT = 30.0
ATTEMPTS = 4

T = TypeVar("T")


class GraphStandIn(Protocol):
    """What ``seed_graph`` needs of the stand-in: ``GraphSim`` (in-process) or ``RemoteGraphSim``."""

    ca_path: str

    @property
    def graph_url(self) -> str: ...

    @property
    def authority_host(self) -> str: ...

    def register_app(self, tenant_id: str, client_id: str, client_secret: str) -> None: ...


def event_ics(uid: str, summary: str, start: datetime, *, minutes: int = 30) -> str:
    """A minimal VCALENDAR with one VEVENT (UTC times)."""
    fmt = "%Y%m%dT%H%M%SZ"
    begin = start.astimezone(UTC)
    return ("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//davbridge//bench//EN\r\nBEGIN:VEVENT\r\n"
            f"UID:{uid}\r\nDTSTAMP:{datetime.now(UTC).strftime(fmt)}\r\n"
            f"DTSTART:{begin.strftime(fmt)}\r\nDTEND:{(begin + timedelta(minutes=minutes)).strftime(fmt)}\r\n"
            f"SUMMARY:{summary}\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n")


def event_uid(prefix: str, i: int) -> str:
    return f"{prefix}-{i}@bench"


def event_href(calendar_url: str, prefix: str, i: int) -> str:
    """Absolute URL of seeded event ``i`` (resource name ``{prefix}-{i}.ics``)."""
    base = calendar_url if calendar_url.endswith("/") else calendar_url + "/"
    return urljoin(base, f"{prefix}-{i}.ics")


class _Sessions:
    """One ``requests.Session`` per thread, all sending the same Basic credentials up front."""

    def __init__(self, auth: tuple[str, str]) -> None:
        self.auth = auth
        self._local = threading.local()
        self._all: list[requests.Session] = []
        self._lock = threading.Lock()

    def get(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.trust_env = False  # no proxies or netrc from the environment
            session.auth = self.auth  # HTTPBasicAuth: sent on the first request, no challenge needed
            session.mount("http://", HTTPAdapter(pool_connections=1, pool_maxsize=1))
            self._local.session = session
            with self._lock:
                self._all.append(session)
        return session

    def close(self) -> None:
        with self._lock:
            for s in self._all:
                s.close()
            self._all.clear()


def _retrying(what: str, call: Callable[[], T]) -> T:
    """``call()`` again after a transport error, up to ``ATTEMPTS`` tries."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return call()
        except (requests.ConnectionError, requests.Timeout) as exc:
            if attempt == ATTEMPTS:
                raise RuntimeError(f"{what}: {exc}") from exc
            time.sleep(0.2 * attempt)
    raise AssertionError("unreachable")


def put_caldav_event(sessions: _Sessions | tuple[str, str], url: str, ics: str) -> str:
    """PUT one calendar object (create or overwrite, no precondition: retries stay idempotent);
    returns its ETag (may be empty)."""
    own = isinstance(sessions, tuple)
    pool = _Sessions(sessions) if isinstance(sessions, tuple) else sessions
    body = ics.encode("utf-8")
    headers = {"Content-Type": "text/calendar; charset=utf-8"}

    def once() -> requests.Response:
        return pool.get().put(url, data=body, headers=headers, timeout=REQUEST_TIMEOUT)

    try:
        reply = _retrying(f"PUT {url}", once)
    finally:
        if own:
            pool.close()
    if reply.status_code not in (200, 201, 204):
        raise RuntimeError(f"PUT {url} answered {reply.status_code}: {reply.text[:300]}")
    return reply.headers.get("ETag", "")


def edit_caldav_event(server: CalDAVServer, href: str, uid: str, summary: str, start: datetime) -> str:
    """Overwrite one event with a new SUMMARY (what a person's calendar app would do)."""
    return put_caldav_event(server.auth, href, event_ics(uid, summary, start))


def seed_caldav(server: CalDAVServer, calendar_url: str, n: int, *, start: datetime, prefix: str,
                bulk: bool | None = None) -> list[str]:
    """Put ``n`` simple VEVENTs into ``calendar_url``; returns the absolute URL of each (in order
    of ``i``).

    Normally one PUT per event, ``CALDAV_WORKERS`` at a time, as ``{prefix}-{i}.ics``. Radicale
    checks a new resource's UID against every item of the calendar (``has_uid`` reads them all),
    so creating n resources one by one costs O(n^2) there: 300 take 6 s, 1,000 take 46 s, and one
    more PUT into a calendar of 10,000 takes 0.7 s. Into an EMPTY Radicale calendar
    (``bulk=None``: detected; ``bulk=True``: required) the events therefore go in ONE PUT of the
    whole collection, which Radicale documents as "upload a whole calendar": it stores each
    component as ``<UID>.ics`` (so ``{prefix}-{i}@bench.ics``; the collection keeps its display
    name, other properties set at MKCALENDAR are lost). 10,000 events take about 14 s that way."""
    if bulk is None:
        bulk = server.kind == "radicale" and not _members(server, calendar_url)
    if bulk:
        return _seed_whole_collection(server, calendar_url, n, start=start, prefix=prefix)
    sessions = _Sessions(server.auth)
    hrefs = [event_href(calendar_url, prefix, i) for i in range(n)]

    def put(i: int) -> str:
        put_caldav_event(sessions, hrefs[i], event_ics(event_uid(prefix, i), f"{prefix} {i}",
                                                       start + timedelta(hours=i)))
        return hrefs[i]

    try:
        with ThreadPoolExecutor(CALDAV_WORKERS, thread_name_prefix="seed-caldav") as pool:
            return list(pool.map(put, range(n)))
    finally:
        sessions.close()


_PROPFIND = ('<?xml version="1.0" encoding="utf-8"?><D:propfind xmlns:D="DAV:"><D:prop>{}</D:prop>'
             "</D:propfind>")


def _propfind(server: CalDAVServer, url: str, depth: str, prop: str) -> ET.Element:
    reply = requests.request("PROPFIND", url, auth=server.auth, timeout=REQUEST_TIMEOUT,
                             data=_PROPFIND.format(prop).encode(),
                             headers={"Depth": depth, "Content-Type": "application/xml; charset=utf-8"})
    if reply.status_code != 207:
        raise RuntimeError(f"PROPFIND {url} answered {reply.status_code}")
    return ET.fromstring(reply.content)


def _members(server: CalDAVServer, calendar_url: str) -> list[str]:
    """Percent-decoded paths of the resources in a calendar (Depth-1 PROPFIND of getetag)."""
    own = unquote(urlsplit(calendar_url).path).rstrip("/")
    paths = [unquote(urlsplit(h.text or "").path)
             for h in _propfind(server, calendar_url, "1", "<D:getetag/>").iter("{DAV:}href")]
    return [p for p in paths if p.rstrip("/") != own]


def _seed_whole_collection(server: CalDAVServer, calendar_url: str, n: int, *, start: datetime,
                           prefix: str) -> list[str]:
    if server.kind != "radicale":
        raise ValueError("a whole-collection PUT is a Radicale feature")
    url = calendar_url if calendar_url.endswith("/") else calendar_url + "/"
    if _members(server, url):
        raise ValueError(f"{url} is not empty: a whole-collection PUT would replace its events")
    name = _propfind(server, url, "0", "<D:displayname/>").findtext(".//{DAV:}displayname") or ""
    head = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//davbridge//bench//EN\r\n"
    if name:
        head += "X-WR-CALNAME:" + name.replace("\\", "\\\\").replace(",", "\\,").replace(";", "\\;") + "\r\n"
    events = []
    for i in range(n):
        ics = event_ics(event_uid(prefix, i), f"{prefix} {i}", start + timedelta(hours=i))
        events.append(ics[ics.index("BEGIN:VEVENT"):ics.index("END:VCALENDAR")])
    body = (head + "".join(events) + "END:VCALENDAR\r\n").encode("utf-8")
    reply = requests.put(url, data=body, auth=server.auth, timeout=max(REQUEST_TIMEOUT, n * 0.02),
                         headers={"Content-Type": "text/calendar; charset=utf-8"})
    if reply.status_code not in (200, 201, 204):
        raise RuntimeError(f"PUT {url} (whole collection) answered {reply.status_code}: {reply.text[:300]}")
    hrefs = [urljoin(url, quote(event_uid(prefix, i) + ".ics")) for i in range(n)]
    stored = set(_members(server, url))
    missing = [h for h in hrefs if unquote(urlsplit(h).path) not in stored]
    if missing or len(stored) != n:
        raise RuntimeError(f"whole-collection PUT stored {len(stored)} resources, expected {n} "
                           f"(first missing: {missing[:1]})")
    return hrefs


def _graph_app(sim: GraphStandIn) -> Callable[[], GraphUserApp]:
    """A factory of Graph clients for an app registered in ``sim`` only for seeding."""
    from devtools.clients import GraphUserApp

    tenant, client, secret = "bench-seed", f"bench-seed-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    sim.register_app(tenant, client, client_secret=secret)
    return lambda: GraphUserApp(sim.graph_url, sim.authority_host, tenant, client, secret, sim.ca_path)


def _post_event(app: GraphUserApp, upn: str, payload: dict[str, Any]) -> str:
    for attempt in range(1, ATTEMPTS * 3 + 1):
        try:
            return str(app.create_raw(upn, payload)["id"])
        except requests.HTTPError as exc:
            reply = exc.response
            if reply is None or reply.status_code not in (429, 503) or attempt >= ATTEMPTS * 3:
                raise
            time.sleep(min(5.0, float(reply.headers.get("Retry-After", "1"))))
        except (requests.ConnectionError, requests.Timeout):
            if attempt >= ATTEMPTS:
                raise
            time.sleep(0.2 * attempt)
    raise AssertionError("unreachable")


def seed_graph(sim: GraphStandIn, upn: str, n: int, *, start: datetime, prefix: str) -> list[str]:
    """Create ``n`` events in the primary calendar of ``upn`` in the stand-in (concurrent POSTs
    through ``GraphUserApp``); returns their ids (in order of ``i``).

    POSTs carry no ``transactionId``: a retried POST whose first answer was lost would make a
    duplicate, which cannot happen on loopback without injected faults."""
    make = _graph_app(sim)
    local = threading.local()
    fmt = "%Y-%m-%dT%H:%M:%S"

    def post(i: int) -> str:
        app = getattr(local, "app", None)
        if app is None:
            app = local.app = make()
        begin = (start + timedelta(hours=i)).astimezone(UTC)
        payload = {"subject": f"{prefix} {i}",
                   "start": {"dateTime": begin.strftime(fmt), "timeZone": "UTC"},
                   "end": {"dateTime": (begin + timedelta(minutes=30)).strftime(fmt), "timeZone": "UTC"},
                   "body": {"contentType": "text", "content": ""}}
        return _post_event(app, upn, payload)

    with ThreadPoolExecutor(GRAPH_WORKERS, thread_name_prefix="seed-graph") as pool:
        return list(pool.map(post, range(n)))


def _demo(n: int, kinds: tuple[str, ...]) -> dict[str, float]:
    """Seed ``n`` events on each server kind and into the stand-in; seconds taken per target."""
    import shutil
    import tempfile
    from pathlib import Path

    from devtools.graphsim import GraphSim
    from devtools.servers import start_caldav

    work = Path(tempfile.mkdtemp(prefix="davbridge-seed-"))
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(days=1)
    out: dict[str, float] = {}
    for kind in kinds:
        server = start_caldav(kind, work / kind)
        try:
            t = time.perf_counter()
            hrefs = seed_caldav(server, server.calendar_url, n, start=start, prefix=f"seed-{kind}")
            out[kind] = round(time.perf_counter() - t, 2)
            assert len(hrefs) == n
        finally:
            server.stop()
    sim = GraphSim(state_dir=work / "sim").start()
    try:
        sim.add_user("seed@contoso.test")
        t = time.perf_counter()
        ids = seed_graph(sim, "seed@contoso.test", n, start=start, prefix="seed")
        out["graph"] = round(time.perf_counter() - t, 2)
        assert len(set(ids)) == n
    finally:
        sim.stop()
        shutil.rmtree(work, ignore_errors=True)
    return out


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m bench.seed", description="time the seeding helpers")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--servers", default="radicale,cyrus", help="comma-separated CalDAV server kinds")
    args = parser.parse_args()
    print(json.dumps(_demo(args.n, tuple(s for s in args.servers.split(",") if s)), indent=2))

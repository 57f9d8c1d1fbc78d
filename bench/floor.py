"""Floors: what the protocols themselves cost for a benchmark's work, with bare HTTP on the
same servers (no davbridge code in the path). See ``bench/initial.py`` for the definition
used there."""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import requests

from bench.seed import event_ics, seed_caldav, seed_graph
from bench.world import BenchWorld
from devtools import faultproxy as fp

#: Graph JSON batching: at most 20 requests per $batch; 4 requests per mailbox at once.
BATCH_SIZE = 20
IN_FLIGHT = 4
#: Delta page size asked for (the same as GraphCalendar's default).
PAGE_SIZE = 100

CALENDAR_QUERY = """<?xml version="1.0" encoding="utf-8"?>
<C:calendar-query xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav">
<D:prop><D:getetag/><C:calendar-data/></D:prop>
<C:filter><C:comp-filter name="VCALENDAR"><C:comp-filter name="VEVENT"/></C:comp-filter></C:filter>
</C:calendar-query>"""


def _thread_session(local: threading.local, **settings: Any) -> requests.Session:
    session = getattr(local, "session", None)
    if session is None:
        session = requests.Session()
        session.trust_env = False
        for key, value in settings.items():
            setattr(session, key, value)
        local.session = session
    return session


def initial_floor(world: BenchWorld, proxy: fp.FaultProxy, n: int) -> dict[str, Any]:
    """Bare reads of n events and bare creates of n events on each side, both sides at once,
    on a second user and calendar seeded like the first (round trip injection left on)."""
    assert world.sim is not None and world.caldav is not None
    upn = "floor@contoso.test"
    world.sim.add_user(upn)
    calendar_url = world.caldav.new_calendar("bench-floor")
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(days=1)
    latency_was = world.graph_latency
    world.sim.set_latency(0)
    proxy.clear()
    seed_graph(world.sim, upn, n, start=start, prefix="floorgraph")
    seed_caldav(world.caldav, calendar_url, n, start=start + timedelta(minutes=30), prefix="floorcaldav")
    world.sim.set_latency(latency_was)
    proxy.set_faults(fp.delay(latency_was, count=10**9))
    token = world._graph_token()
    sides: dict[str, float] = {}

    def graph_side() -> None:
        t = time.perf_counter()
        _graph_reads_and_batches(world, upn, token, start, n)
        sides["graph"] = time.perf_counter() - t

    def caldav_side() -> None:
        t = time.perf_counter()
        _caldav_reads_and_puts(world, proxy.proxied(calendar_url), start, n)
        sides["caldav"] = time.perf_counter() - t

    started = time.perf_counter()
    threads = [threading.Thread(target=graph_side), threading.Thread(target=caldav_side)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    total = time.perf_counter() - started
    return {"seconds": total, "graph_seconds": round(sides["graph"], 2), "caldav_seconds": round(sides["caldav"], 2),
            "rule": f"Graph: delta pages of {PAGE_SIZE}, $batch of {BATCH_SIZE}, {IN_FLIGHT} in flight; "
                    f"CalDAV: one calendar-query REPORT, PUTs {IN_FLIGHT} in flight; both sides at once"}


def _graph_reads_and_batches(world: BenchWorld, upn: str, token: str, start: datetime, n: int) -> None:
    assert world.sim is not None
    base = world.sim.graph_url
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    session = requests.Session()
    session.trust_env = False
    session.verify = world.sim.ca_path
    window = {"startDateTime": (start - timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ"),
              "endDateTime": (start + timedelta(days=400)).strftime("%Y-%m-%dT%H:%M:%SZ")}
    url: str | None = f"{base}/users/{upn}/calendarView/delta"
    params: dict[str, str] | None = window
    while url:
        reply = session.get(url, params=params, headers={**headers, "Prefer": f"odata.maxpagesize={PAGE_SIZE}"},
                            timeout=60)
        reply.raise_for_status()
        page = reply.json()
        url, params = page.get("@odata.nextLink"), None
    local = threading.local()

    def send_batch(first: int) -> None:
        session = _thread_session(local, verify=world.sim.ca_path if world.sim else True)
        requests_ = []
        for i in range(first, min(first + BATCH_SIZE, n)):
            begin = start + timedelta(hours=i, minutes=15)
            requests_.append({"id": str(i - first + 1), "method": "POST", "url": f"/users/{upn}/events",
                              "headers": {"Content-Type": "application/json"},
                              "body": {"subject": f"floor {i}", "transactionId": str(uuid.uuid4()),
                                       "start": {"dateTime": begin.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"},
                                       "end": {"timeZone": "UTC", "dateTime": (begin + timedelta(minutes=30))
                                               .strftime("%Y-%m-%dT%H:%M:%S")}}})
        for _attempt in range(20):
            reply = session.post(f"{base}/$batch", json={"requests": requests_}, headers=headers, timeout=120)
            reply.raise_for_status()
            answers = {a["id"]: a for a in reply.json()["responses"]}
            retry = [r for r in requests_ if answers[r["id"]]["status"] == 429]
            bad = [a for a in answers.values() if a["status"] not in (201, 429)]
            if bad:
                raise RuntimeError(f"floor $batch create answered {bad[0]['status']}")
            if not retry:
                return
            wait = max(float(answers[r["id"]].get("headers", {}).get("Retry-After", "1")) for r in retry)
            time.sleep(min(wait, 5.0))
            requests_ = retry
        raise RuntimeError("floor $batch still throttled after 20 tries")

    with ThreadPoolExecutor(IN_FLIGHT) as pool:
        list(pool.map(send_batch, range(0, n, BATCH_SIZE)))


def _caldav_reads_and_puts(world: BenchWorld, calendar_url: str, start: datetime, n: int) -> None:
    assert world.caldav is not None
    auth = world.caldav.auth
    session = requests.Session()
    session.trust_env = False
    reply = session.request("REPORT", calendar_url, data=CALENDAR_QUERY.encode(), auth=auth, timeout=300,
                            headers={"Depth": "1", "Content-Type": "application/xml; charset=utf-8"})
    if reply.status_code != 207:
        raise RuntimeError(f"floor calendar-query answered {reply.status_code}")
    local = threading.local()

    def put(i: int) -> None:
        session = _thread_session(local, auth=auth)
        uid = f"floor-put-{i}@bench"
        body = event_ics(uid, f"floor {i}", start + timedelta(hours=i, minutes=45))
        reply = session.put(f"{calendar_url.rstrip('/')}/floor-put-{i}.ics", data=body.encode(), timeout=60,
                            headers={"Content-Type": "text/calendar; charset=utf-8", "If-None-Match": "*"})
        if reply.status_code not in (201, 204):
            raise RuntimeError(f"floor PUT answered {reply.status_code}")

    with ThreadPoolExecutor(IN_FLIGHT) as pool:
        list(pool.map(put, range(n)))



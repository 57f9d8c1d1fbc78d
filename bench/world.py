"""A benchmark world: the Graph stand-in (in its own process, so it does not share this
process's GIL) and one CalDAV server on loopback, and davbridge set up in this process
(embedded state and secrets in a temporary home), as a warm worker is.

    with BenchWorld("radicale") as world:
        upn, calendar_url = world.add_user("ada")
        world.sync(upn)                           # in this process, through Services.sync_user

``floor(upn)`` times what the protocols themselves cost for that user: one bare RFC 6578
sync-collection REPORT with the token davbridge saved, and one bare GET of the Graph delta link
it saved (same servers, same connections reused as a client would)."""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from contextlib import redirect_stdout
from pathlib import Path
from types import TracebackType

import requests

from devtools.graphsim.remote import RemoteGraphSim
from devtools.servers import CalDAVServer, start_caldav
from sync_core import cli
from sync_core.engine import UserOutcome
from sync_core.services import Services
from sync_core.settings import Settings

TENANT, CLIENT, SECRET = "bench-tenant", "bench-client", "bench-secret"

SYNC_COLLECTION = """<?xml version="1.0" encoding="utf-8"?>
<D:sync-collection xmlns:D="DAV:"><D:sync-token>{token}</D:sync-token><D:sync-level>1</D:sync-level>
<D:prop><D:getetag/></D:prop></D:sync-collection>"""


class BenchWorld:
    def __init__(self, caldav_kind: str = "radicale", *, graph_latency: float = 0.0) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="davbridge-bench-"))
        self.caldav_kind = caldav_kind
        self.graph_latency = graph_latency
        self.sim: RemoteGraphSim | None = None
        self.caldav: CalDAVServer | None = None
        self.services: Services | None = None
        self._saved_env: dict[str, str | None] = {}
        self._floor_session = requests.Session()

    # -- set-up -----------------------------------------------------------------------------
    def __enter__(self) -> BenchWorld:
        self.sim = RemoteGraphSim(self.work / "sim")
        self.sim.register_app(TENANT, CLIENT, client_secret=SECRET)
        self.caldav = start_caldav(self.caldav_kind, self.work / self.caldav_kind)
        env = {"DAVBRIDGE_HOME": str(self.work / "home"), "GRAPH_BASE_URL": self.sim.graph_url,
               "GRAPH_AUTHORITY_HOST": self.sim.authority_host, "GRAPH_TENANT_ID": TENANT,
               "GRAPH_CLIENT_ID": CLIENT, "GRAPH_CA_BUNDLE": self.sim.ca_path,
               "DAVBRIDGE_CALDAV_PASSWORD": self.caldav.password}
        for key, value in env.items():
            self._saved_env[key] = os.environ.get(key)
            os.environ[key] = value
        self.services = Services(Settings.from_env())
        self.services.secrets.set("graph-client-secret", SECRET)
        if self.graph_latency:
            self.sim.set_latency(self.graph_latency)
        return self

    def __exit__(self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]) -> None:
        if self.services is not None:
            self.services.close()
        if self.caldav is not None:
            self.caldav.stop()
        if self.sim is not None:
            self.sim.stop()
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(self.work, ignore_errors=True)

    def add_user(self, name: str, *, calendar_url: str | None = None,
                 via: Callable[[str], str] | None = None, options: tuple[str, ...] = ()) -> tuple[str, str]:
        """A mailbox in the stand-in and a davbridge user paired with a CalDAV calendar (a new
        one unless given); returns (upn, calendar URL). ``via`` maps the server's URLs to the
        ones davbridge is given (a proxy in front of the server); ``options``: more
        ``davbridge users add`` options (pairing settings)."""
        assert self.sim is not None and self.caldav is not None
        upn = f"{name}@contoso.test"
        self.sim.add_user(upn)
        calendar_url = calendar_url or self.caldav.new_calendar(f"bench-{name}")
        via = via or (lambda url: url)
        with redirect_stdout(io.StringIO()):
            rc = cli.main(["users", "add", upn, "--caldav-url", via(self.caldav.url), "--caldav-user",
                           self.caldav.username, "--caldav-calendar", via(calendar_url), *options])
        if rc not in (0, None):
            raise RuntimeError(f"davbridge users add {upn} failed ({rc})")
        return upn, calendar_url

    # -- running ----------------------------------------------------------------------------
    def sync(self, upn: str) -> UserOutcome:
        assert self.services is not None
        outcome = self.services.sync_user(upn, trigger="timer")
        if not outcome.ok:
            raise RuntimeError(f"sync of {upn} failed: {[p.error for p in outcome.pairings]}")
        return outcome

    def graph_port(self) -> int:
        assert self.sim is not None
        return self.sim.port

    def caldav_port(self) -> int:
        assert self.caldav is not None
        return int(self.caldav.url.split(":")[2].split("/")[0])

    # -- the floor ----------------------------------------------------------------------------
    def cursors(self, upn: str) -> tuple[str, str]:
        """(CalDAV sync token, absolute Graph delta link) davbridge saved for the user's pairing."""
        assert self.services is not None
        store = self.services.store
        (pairing,) = store.list_pairings(upn)
        caldav = json.loads(store.cursors(pairing.pairing_id).get("caldav") or "{}")
        graph = json.loads(store.cursors(pairing.pairing_id).get("m365") or "{}")
        link = graph["link"]
        if not link.startswith("https://"):
            link = self.services.graph().base_url + link
        return caldav["token"], link

    def bare_report(self, calendar_url: str, token: str) -> requests.Response:
        assert self.caldav is not None
        reply = self._floor_session.request(
            "REPORT", calendar_url, data=SYNC_COLLECTION.format(token=token).encode(),
            headers={"Depth": "1", "Content-Type": "application/xml; charset=utf-8"},
            auth=(self.caldav.username, self.caldav.password), timeout=60)
        if reply.status_code != 207:
            raise RuntimeError(f"bare REPORT answered {reply.status_code}")
        return reply

    def bare_delta(self, link: str) -> requests.Response:
        assert self.services is not None and self.sim is not None
        token = self._graph_token()
        reply = self._floor_session.get(link, headers={"Authorization": f"Bearer {token}"},
                                        verify=self.sim.ca_path, timeout=60)
        if reply.status_code != 200:
            raise RuntimeError(f"bare delta GET answered {reply.status_code}")
        return reply

    def _graph_token(self) -> str:
        if not hasattr(self, "_token"):
            assert self.sim is not None
            reply = requests.post(f"{self.sim.authority_host}/{TENANT}/oauth2/v2.0/token", verify=self.sim.ca_path,
                                  data={"grant_type": "client_credentials", "client_id": CLIENT,
                                        "client_secret": SECRET, "scope": "https://graph.microsoft.com/.default"},
                                  timeout=30)
            reply.raise_for_status()
            self._token: str = reply.json()["access_token"]
        return self._token

    def floor(self, upn: str, calendar_url: str) -> float:
        """Seconds for one bare REPORT plus one bare delta GET with davbridge's saved cursors."""
        token, link = self.cursors(upn)
        started = time.perf_counter()
        self.bare_report(calendar_url, token)
        self.bare_delta(link)
        return time.perf_counter() - started

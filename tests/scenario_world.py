"""The scenario world: a Graph stand-in mailbox, a fresh CalDAV calendar on a real server,
fresh state, and the ``davbridge`` CLI run in-process (fixtures ``graphsim`` and ``world``,
registered for the whole suite in conftest.py)."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from contextlib import redirect_stdout
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from devtools.clients import CalDAVUserApp, GraphUserApp
from devtools.graphsim import GraphSim
from devtools.servers import CalDAVServer
from sync_core import cli
from sync_core.services import Services
from sync_core.settings import Settings

TENANT, CLIENT_ID, SECRET = "contoso-tenant", "davbridge-app", "app-secret-for-tests"


@pytest.fixture(scope="session")
def graphsim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GraphSim]:
    with GraphSim(state_dir=tmp_path_factory.mktemp("graphsim")) as sim:
        sim.register_app(TENANT, CLIENT_ID, client_secret=SECRET)
        yield sim


@dataclass
class World:
    sim: GraphSim
    server: CalDAVServer
    upn: str
    graph: GraphUserApp
    caldav: CalDAVUserApp
    home: Path

    def run(self, *args: str) -> str:
        out = io.StringIO()
        with redirect_stdout(out):
            rc = cli.main(list(args))
        assert rc == 0, f"davbridge {' '.join(args)} exited {rc}: {out.getvalue()}"
        return out.getvalue()

    def sync(self) -> str:
        return self.run("sync", "--user", self.upn)

    def services(self) -> Services:
        return Services(Settings.from_env())

    def graph_events(self) -> list[dict]:
        return self.graph.events(self.upn)


@pytest.fixture
def world(graphsim: GraphSim, caldav_server: CalDAVServer, fresh_calendar: str, tmp_path: Path,
          monkeypatch: pytest.MonkeyPatch) -> World:
    upn = f"user-{uuid.uuid4().hex[:8]}@contoso.test"
    graphsim.add_user(upn)
    for key, value in {
        "DAVBRIDGE_HOME": str(tmp_path / "home"), "GRAPH_BASE_URL": graphsim.graph_url,
        "GRAPH_AUTHORITY_HOST": graphsim.authority_host, "GRAPH_TENANT_ID": TENANT,
        "GRAPH_CLIENT_ID": CLIENT_ID, "GRAPH_CA_BUNDLE": graphsim.ca_path,
        "DAVBRIDGE_CALDAV_PASSWORD": caldav_server.password,
    }.items():
        monkeypatch.setenv(key, value)
    w = World(graphsim, caldav_server, upn,
              GraphUserApp(graphsim.graph_url, graphsim.authority_host, TENANT, CLIENT_ID, SECRET, graphsim.ca_path),
              CalDAVUserApp(caldav_server, fresh_calendar), tmp_path / "home")
    monkeypatch.setattr("sys.stdin", io.StringIO(SECRET + "\n"))
    w.run("secrets", "set", "graph-client-secret")
    w.run("users", "add", upn, "--caldav-url", caldav_server.url, "--caldav-user", caldav_server.username,
          "--caldav-calendar", fresh_calendar)
    return w


def day(offset: int, hour: int = 9) -> datetime:
    base = datetime.now(UTC).replace(hour=hour, minute=0, second=0, microsecond=0)
    return base + timedelta(days=offset)


def graph_time(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S")


def ical_time(value: datetime) -> str:
    return value.strftime("%Y%m%dT%H%M%SZ")



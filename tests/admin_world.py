"""The admin world: a Graph stand-in mailbox, a real CalDAV server, state on SQLite or Azurite,
driven through the two public admin paths — the ``davbridge`` CLI and the ``admin_api`` HTTP
function (constructed ``HttpRequest``s with the route the host would match)."""

from __future__ import annotations

import io
import json
import uuid
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from scenario_world import CLIENT_ID, SECRET, TENANT

import function_app
from devtools.clients import CalDAVUserApp, GraphUserApp
from devtools.graphsim import GraphSim
from devtools.servers import AzuriteServer, CalDAVServer
from sync_core import cli
from sync_core.services import Services
from sync_core.settings import Settings


@dataclass
class AdminWorld:
    sim: GraphSim
    server: CalDAVServer
    backend: str
    upn: str
    graph: GraphUserApp
    caldav: CalDAVUserApp
    home: Path

    def cli(self, *args: str, stdin: str = "", expect: int | None = 0) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr("sys.stdin", io.StringIO(stdin))
            with redirect_stdout(out), redirect_stderr(err):
                rc = cli.main(list(args))
        if expect is not None:
            assert rc == expect, f"davbridge {' '.join(args)} exited {rc}: {out.getvalue()} {err.getvalue()}"
        return rc, out.getvalue(), err.getvalue()

    def http(self, method: str, path: str, body: Any = None, params: dict[str, str] | None = None,
             raw: bytes | None = None) -> tuple[int, Any]:
        handler = function_app.admin_api.build().get_user_function()
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
        resp = handler(func.HttpRequest(method, f"https://x/api/admin/{path}", body=data, params=params or {},
                                        route_params={"path": path}))
        text = resp.get_body().decode()
        is_json = (resp.mimetype or "").startswith("application/json")
        return resp.status_code, json.loads(text) if is_json else text

    def services(self) -> Services:
        return Services(Settings.from_env())

    def add(self, *extra: str, upn: str | None = None, password: str | None = None,
            expect: int | None = 0) -> str:
        _, out, _ = self.cli("users", "add", upn or self.upn, "--caldav-url", self.server.url, "--caldav-user",
                             self.server.username, "--password-stdin", *extra,
                             stdin=(password if password is not None else self.server.password) + "\n",
                             expect=expect)
        return out

    def new_user(self) -> str:
        upn = f"user-{uuid.uuid4().hex[:8]}@contoso.test"
        self.sim.add_user(upn)
        return upn


def make_admin_world(backend: str, graphsim: GraphSim, server: CalDAVServer, calendar: str, tmp_path: Path,
                     monkeypatch: pytest.MonkeyPatch, azurite: AzuriteServer | None) -> AdminWorld:
    upn = f"user-{uuid.uuid4().hex[:8]}@contoso.test"
    graphsim.add_user(upn)
    env = {
        "DAVBRIDGE_HOME": str(tmp_path / "home"), "GRAPH_BASE_URL": graphsim.graph_url,
        "GRAPH_AUTHORITY_HOST": graphsim.authority_host, "GRAPH_TENANT_ID": TENANT, "GRAPH_CLIENT_ID": CLIENT_ID,
        "GRAPH_CA_BUNDLE": graphsim.ca_path, "SYNC_SCHEDULE": "0 */5 * * * *",
    }
    if backend == "azurite":
        assert azurite is not None
        env["DAVBRIDGE_STATE_URL"] = "azuretables:" + azurite.connection_string
        env["DAVBRIDGE_TABLE_PREFIX"] = "adm" + uuid.uuid4().hex[:10]
    for key in ("DAVBRIDGE_STATE_URL", "DAVBRIDGE_TABLE_PREFIX", "DAVBRIDGE_CALDAV_PASSWORD"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    function_app.services.cache_clear()
    world = AdminWorld(graphsim, server, backend, upn,
                       GraphUserApp(graphsim.graph_url, graphsim.authority_host, TENANT, CLIENT_ID, SECRET,
                                    graphsim.ca_path),
                       CalDAVUserApp(server, calendar), tmp_path / "home")
    world.cli("secrets", "set", "graph-client-secret", stdin=SECRET + "\n")
    return world

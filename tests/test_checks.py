"""Onboarding checks (sync_core.checks) against real situations: the real CalDAV servers
(Radicale, Xandikos, Cyrus through the shared fixtures) and the Graph stand-in over HTTPS.

Every reason the checks can give is produced here by the situation it names: a wrong password,
a closed port, an HTTPS server whose certificate nobody trusts, a calendar URL that does not
exist, an unknown mailbox, an app registered without its permission, a wrong client secret.
Read-only calendars are real ones: Radicale (rights file) and Cyrus (RFC 3744 ACL) refuse the
user's writes there; Xandikos cannot express read-only at all, so there every calendar must be
reported writable (and be writable).

Each test is bounded (``_bounded``: 20 s of wall time once the session-wide servers run).
"""

from __future__ import annotations

import http.client
import signal
import socket
import ssl
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import pytest
import requests
import trustme
from scenario_world import TENANT

from devtools import servers
from devtools.graphsim import GraphSim
from sync_core import checks
from sync_core.errors import AuthenticationFailed, DavbridgeError
from sync_core.sides.caldav_side import CalDAVCalendar, open_caldav, read_only_from_privileges
from sync_core.sides.caldav_xml import DAV, normalize_href, tag
from sync_core.sides.graph_http import GraphAuth, GraphClient, GraphCredentials, StaticToken

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
TIME_LIMIT = 20


@pytest.fixture(autouse=True)
def _bounded() -> Iterator[None]:
    """Fail a test (instead of hanging) when it runs longer than TIME_LIMIT seconds."""

    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"test took longer than {TIME_LIMIT} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, TIME_LIMIT)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def ics(uid: str, summary: str = "Read-only meeting") -> str:
    fmt = "%Y%m%dT%H%M%SZ"
    return (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//davbridge tests//EN\r\nBEGIN:VEVENT\r\n"
        f"UID:{uid}\r\nDTSTAMP:20260101T000000Z\r\nDTSTART:{T0.strftime(fmt)}\r\n"
        f"DTEND:{(T0 + timedelta(hours=1)).strftime(fmt)}\r\nSUMMARY:{summary}\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    )


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def by_path(calendars: list[checks.CalDAVCalendarInfo]) -> dict[str, checks.CalDAVCalendarInfo]:
    return {normalize_href(c.url).rstrip("/"): c for c in calendars}


def path_of(url: str) -> str:
    return normalize_href(url).rstrip("/")


def other_ca_bundle(tmp_path: Path) -> str:
    """A CA bundle that trusts only a CA nobody used: every certificate fails verification."""
    bundle = tmp_path / "unrelated-ca.pem"
    trustme.CA(organization_name="unrelated test CA").cert_pem.write_to_path(str(bundle))
    return str(bundle)


# --- an HTTPS front for the plain-HTTP test servers -----------------------------------------------


class TLSProxy:
    """HTTPS on 127.0.0.1 with a certificate from a throw-away trustme CA, forwarding every
    request (any method, body, headers) to a plain-HTTP backend. ``ca_path`` trusts it."""

    def __init__(self, backend: str, workdir: Path) -> None:
        self.ca = trustme.CA(organization_name="davbridge test proxy CA")
        self.ca_path = str(workdir / "proxy-ca.pem")
        self.ca.cert_pem.write_to_path(self.ca_path)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
        parts = urlsplit(backend)
        target = (parts.hostname or "127.0.0.1", parts.port or 80)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def __getattr__(self, name: str) -> Any:
                if name.startswith("do_"):
                    return self.forward
                raise AttributeError(name)

            def forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn = http.client.HTTPConnection(*target, timeout=10)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    self.send_response(resp.status)
                    for k, v in resp.getheaders():
                        if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                            self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                finally:
                    conn.close()
                proxy.forwarded += 1

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def finish_request(self, request: Any, client_address: Any) -> None:
                try:
                    tls = ctx.wrap_socket(request, server_side=True)
                except (ssl.SSLError, OSError):
                    return
                try:
                    super().finish_request(tls, client_address)
                finally:
                    tls.close()

        self.forwarded = 0
        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def tls_proxy(caldav_server: servers.CalDAVServer, tmp_path: Path) -> Iterator[TLSProxy]:
    proxy = TLSProxy(caldav_server.url, tmp_path)
    try:
        yield proxy
    finally:
        proxy.close()


# --- CalDAV: calendars and read-only detection ------------------------------------------------------


def test_check_caldav_lists_the_calendars_writable(caldav_server: servers.CalDAVServer, fresh_calendar: str) -> None:
    found, reason = checks.check_caldav(caldav_server.url, caldav_server.username, caldav_server.password, timeout=5)
    assert reason is None
    cals = by_path(found)
    mine = cals.get(path_of(fresh_calendar))
    assert mine is not None, list(cals)
    assert mine.supports_events and mine.display_name
    # all three servers report DAV:current-user-privilege-set, and it says writable
    assert mine.privileges is not None and not mine.read_only and mine.writable
    assert mine.privileges & {"all", "write", "write-content"}, mine.privileges
    [default] = [c for c in found if c.is_default]
    assert path_of(default.url) == path_of(caldav_server.calendar_url)
    # and writable means writable: the user can store an event there
    res = caldav_server.request(
        "PUT", urljoin(fresh_calendar, "w.ics"), body=ics(f"w-{uuid.uuid4()}"),
        headers={"Content-Type": "text/calendar; charset=utf-8", "If-None-Match": "*"},
    )  # fmt: skip
    assert res.status in (201, 204), res.status


def test_read_only_calendar_is_reported_read_only(caldav_server: servers.CalDAVServer, fresh_calendar: str) -> None:
    uid = f"ro-{uuid.uuid4()}"
    ro = caldav_server.new_readonly_calendar("Team (read-only)", events=[ics(uid)])
    if not servers.READONLY_CALENDARS[caldav_server.kind]:
        # Xandikos has no access control (every collection reports DAV:all and takes writes):
        # no read-only calendar can exist, and every calendar must come out writable.
        assert ro is None
        found, reason = checks.check_caldav(caldav_server.url, caldav_server.username, caldav_server.password)
        assert reason is None and found
        assert all(not c.read_only and c.privileges == {"all"} for c in found), found
        return
    assert ro is not None
    found, reason = checks.check_caldav(caldav_server.url, caldav_server.username, caldav_server.password)
    assert reason is None
    cals = by_path(found)
    assert cals[path_of(ro)].read_only and not cals[path_of(ro)].writable
    assert cals[path_of(ro)].display_name == "Team (read-only)"
    assert not {"all", "write", "write-content"} & (cals[path_of(ro)].privileges or set())
    assert "read" in (cals[path_of(ro)].privileges or set())
    assert not cals[path_of(fresh_calendar)].read_only  # only that one
    assert not cals[path_of(ro)].is_default
    # the flag matches what the server enforces: the user can read it but not write it
    client = open_caldav(caldav_server.url, caldav_server.username, caldav_server.password, timeout=5)
    batch = CalDAVCalendar(client, ro).changes(None, {})
    assert [i.event.uid for i in batch.changed if i.event is not None] == [uid]
    res = caldav_server.request(
        "PUT", urljoin(ro, "mine.ics"), body=ics(f"w-{uuid.uuid4()}"),
        headers={"Content-Type": "text/calendar; charset=utf-8", "If-None-Match": "*"},
    )  # fmt: skip
    assert res.status == 403, (res.status, res.text[:300])
    # named explicitly (as the admin would), it is found with the same flag
    found, reason = checks.check_caldav(
        caldav_server.url, caldav_server.username, caldav_server.password, calendar_url=ro
    )
    assert reason is None and by_path(found)[path_of(ro)].read_only


@pytest.mark.parametrize(
    ("privileges", "read_only"),
    [
        ({"all"}, False),
        ({"read", "write"}, False),
        ({"read", "write-content"}, False),
        ({"read", "bind", "unbind"}, False),
        ({"read", "bind"}, True),  # can add, cannot remove or change: not a sync target
        ({"read", "unbind"}, True),
        ({"read", "read-free-busy"}, True),
        ({"read", "write-properties"}, True),  # may rename the calendar, not touch events
        (set(), True),
    ],
)
def test_read_only_from_rfc3744_privileges(privileges: set[str], read_only: bool) -> None:
    assert read_only_from_privileges({tag(DAV, p) for p in privileges}) is read_only


# --- CalDAV: the reasons ---------------------------------------------------------------------------


def test_wrong_password_is_the_401_reason(caldav_server: servers.CalDAVServer) -> None:
    secret = f"wrong-{uuid.uuid4().hex}"
    for user in (caldav_server.username, "nobody-here"):
        found, reason = checks.check_caldav(caldav_server.url, user, secret, timeout=5)
        if servers.WRONG_PASSWORD_PROPFIND[caldav_server.kind] == 207:
            # Xandikos serves plain HTTP without any authentication: every password is
            # "right". Pinned, so a Xandikos that starts checking passwords fails this test.
            assert caldav_server.kind == "xandikos"
            assert reason is None and found
            continue
        assert found == [] and reason == checks.CALDAV_401
        assert reason is not None and secret not in reason


def test_closed_port_is_not_reachable() -> None:
    port = closed_port()
    found, reason = checks.check_caldav(f"http://127.0.0.1:{port}/dav/", "u", "pw-not-in-reason", timeout=5)
    assert found == []
    assert reason == f"CalDAV server not reachable: Connection refused (http://127.0.0.1:{port})"


def test_unknown_host_is_not_reachable() -> None:
    found, reason = checks.check_caldav("https://caldav.invalid/", "u", "pw-not-in-reason", timeout=5)
    assert found == [] and reason is not None
    assert reason.startswith("CalDAV server not reachable: ") and reason.endswith("(https://caldav.invalid)")
    assert "pw-not-in-reason" not in reason


def test_not_a_url_is_a_reason() -> None:
    found, reason = checks.check_caldav("caldav.example.com", "u", "p")
    assert found == [] and reason is not None and "must start with https://" in reason


def test_untrusted_certificate_is_a_tls_error(
    caldav_server: servers.CalDAVServer, tls_proxy: TLSProxy, tmp_path: Path
) -> None:
    # the same server behind HTTPS: with the proxy's CA the check passes ...
    found, reason = checks.check_caldav(
        tls_proxy.url, caldav_server.username, caldav_server.password, timeout=5, verify=tls_proxy.ca_path
    )
    assert reason is None and path_of(caldav_server.calendar_url) in by_path(found)
    forwarded = tls_proxy.forwarded
    assert forwarded > 0
    # ... without it (system trust store, or a bundle of another CA), it is a TLS error
    for verify in (True, other_ca_bundle(tmp_path)):
        found, reason = checks.check_caldav(
            tls_proxy.url, caldav_server.username, caldav_server.password, timeout=5, verify=verify
        )
        assert found == []
        assert reason is not None and reason.startswith("TLS error: certificate verify failed"), reason
        assert reason.endswith(f"({tls_proxy.url.rstrip('/')})")
        assert caldav_server.password not in reason
    assert tls_proxy.forwarded == forwarded  # not one request got through


def test_plain_http_server_behind_https_url_is_a_tls_error(caldav_server: servers.CalDAVServer) -> None:
    url = caldav_server.url.replace("http://", "https://")
    found, reason = checks.check_caldav(url, caldav_server.username, caldav_server.password, timeout=5)
    assert found == [] and reason is not None and reason.startswith("TLS error: "), reason
    assert "wrong version number" in reason


def test_calendar_url_that_does_not_exist(caldav_server: servers.CalDAVServer, fresh_calendar: str) -> None:
    missing = urljoin(caldav_server.calendar_home_url, f"no-such-calendar-{uuid.uuid4().hex[:8]}/")
    found, reason = checks.check_caldav(
        caldav_server.url, caldav_server.username, caldav_server.password, calendar_url=missing, timeout=5
    )
    assert reason == f"calendar not found: {missing}"
    # the calendars that do exist come back, so the admin can pick one
    assert path_of(fresh_calendar) in by_path(found)


def test_calendar_url_that_exists(caldav_server: servers.CalDAVServer, fresh_calendar: str) -> None:
    for spelled in (fresh_calendar, fresh_calendar.rstrip("/")):
        found, reason = checks.check_caldav(
            caldav_server.url, caldav_server.username, caldav_server.password, calendar_url=spelled, timeout=5
        )
        assert reason is None and path_of(fresh_calendar) in by_path(found)


def test_calendar_url_of_a_task_list(caldav_server: servers.CalDAVServer) -> None:
    url = urljoin(caldav_server.calendar_home_url, f"tasks-{uuid.uuid4().hex[:8]}/")
    body = (
        '<?xml version="1.0" encoding="utf-8"?><C:mkcalendar xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav">'
        "<D:set><D:prop><D:displayname>Tasks</D:displayname><C:supported-calendar-component-set>"
        '<C:comp name="VTODO"/></C:supported-calendar-component-set></D:prop></D:set></C:mkcalendar>'
    )
    assert caldav_server.request("MKCALENDAR", url, body=body).status == 201
    found, reason = checks.check_caldav(
        caldav_server.url, caldav_server.username, caldav_server.password, calendar_url=url, timeout=5
    )
    assert reason == f"calendar not found: {url} (it holds VTODO, not events)"
    assert path_of(url) not in by_path(found)  # task lists are not offered as event calendars


def test_calendar_url_on_another_server(caldav_server: servers.CalDAVServer) -> None:
    elsewhere = f"http://127.0.0.1:{closed_port()}/cal/"
    found, reason = checks.check_caldav(
        caldav_server.url, caldav_server.username, caldav_server.password, calendar_url=elsewhere, timeout=5
    )
    origin = caldav_server.url.rstrip("/")
    assert reason == f"calendar not found: {elsewhere} (it is not on the CalDAV server {origin})"
    assert found  # nothing was sent to the other host; the real calendars are listed


@pytest.fixture(scope="session")
def radicale(_server_pool: Any) -> servers.CalDAVServer:
    """Radicale whatever --servers says: its second user (the curator) is an account whose
    calendar home holds no calendar at all."""
    srv = _server_pool.caldav("radicale")
    assert isinstance(srv, servers.CalDAVServer)
    return srv


def test_account_without_event_calendar(radicale: servers.CalDAVServer) -> None:
    assert radicale.curator_auth is not None
    user, password = radicale.curator_auth
    assert checks.check_caldav(radicale.url, user, password, timeout=5) == ([], checks.NO_EVENT_CALENDAR)
    # the same account with one event calendar passes
    home = urljoin(radicale.url, f"{user}/")
    url = servers._mkcalendar(home, "First", (user, password))
    found, reason = checks.check_caldav(radicale.url, user, password, timeout=5)
    assert reason is None and [path_of(c.url) for c in found] == [path_of(url)] and found[0].is_default


def test_caldav_reason_keeps_the_password_out() -> None:
    class Leaky(DavbridgeError):
        pass

    secret = "s3cret-app-password"
    text = checks.caldav_failure_reason(Leaky(f"boom {secret}"), "https://u:pw@dav.example/x")
    assert secret in text  # what caldav_failure_reason alone does; check_caldav scrubs on top
    assert "u:pw@" not in checks._without_userinfo("https://u:pw@dav.example/x")
    assert checks._scrub(text, [secret]) == "CalDAV check failed: boom ***"


# --- Microsoft Graph -----------------------------------------------------------------------------


def graph_for(
    sim: GraphSim,
    client_id: str,
    secret: str,
    *,
    tenant: str = TENANT,
    authority_host: str | None = None,
    auth_verify: str | bool | None = None,
    graph_verify: str | bool | None = None,
) -> GraphClient:
    creds = GraphCredentials(
        tenant_id=tenant, client_id=client_id, client_secret=secret, authority_host=authority_host or sim.authority_host
    )
    auth = GraphAuth(creds, verify=sim.ca_path if auth_verify is None else auth_verify, timeout=(5, 5))
    return GraphClient(
        auth,
        base_url=sim.graph_url,
        verify=sim.ca_path if graph_verify is None else graph_verify,
        max_attempts=2,
        sleep=lambda s: None,
        timeout=(5, 5),
    )


@pytest.fixture
def new_app(graphsim: GraphSim) -> Callable[..., tuple[GraphClient, str, str]]:
    """Register an app (fresh client id, so no token cached elsewhere) -> (client, id, secret)."""

    def make(roles: tuple[str, ...] = ("Calendars.ReadWrite",)) -> tuple[GraphClient, str, str]:
        client_id, secret = f"app-{uuid.uuid4()}", f"secret-{uuid.uuid4().hex}"
        graphsim.register_app(TENANT, client_id, client_secret=secret, roles=roles)
        return graph_for(graphsim, client_id, secret), client_id, secret

    return make


@pytest.fixture
def mailbox(graphsim: GraphSim) -> str:
    upn = f"user-{uuid.uuid4().hex[:8]}@contoso.test"
    graphsim.add_user(upn)
    return upn


def test_graph_mailbox_ok(new_app: Callable[..., Any], mailbox: str) -> None:
    graph, _, _ = new_app()
    assert checks.check_graph_mailbox(graph, mailbox) is None


def test_unknown_mailbox(new_app: Callable[..., Any], graphsim: GraphSim) -> None:
    graph, _, _ = new_app()
    upn = f"nobody-{uuid.uuid4().hex[:6]}@contoso.test"
    assert checks.check_graph_mailbox(graph, upn) == (
        f"unknown mailbox: {upn} (no such user, or no Exchange Online licence)"
    )
    assert graphsim.request_log[-1]["status"] == 404


def test_app_without_the_permission(new_app: Callable[..., Any], graphsim: GraphSim, mailbox: str) -> None:
    graph, client_id, secret = new_app(roles=())
    assert checks.check_graph_mailbox(graph, mailbox) == checks.MISSING_PERMISSION
    # the app signed in fine (a token was issued), Graph refused the calendar
    denied = [r for r in graphsim.request_log if r["app"] == client_id and r["path"].startswith("/v1.0/")]
    assert [r["status"] for r in denied] == [403]
    assert secret not in checks.MISSING_PERMISSION
    with pytest.raises(AuthenticationFailed) as exc:
        checks.graph_calendars(graph, mailbox)
    assert checks.graph_failure_reason(exc.value, mailbox, graph) == checks.MISSING_PERMISSION


def test_read_only_permission_reads_but_cannot_create(new_app: Callable[..., Any], mailbox: str) -> None:
    graph, _, _ = new_app(roles=("Calendars.Read",))
    assert checks.check_graph_mailbox(graph, mailbox) is None
    assert [c.name for c in checks.graph_calendars(graph, mailbox)] == ["Calendar"]
    with pytest.raises(AuthenticationFailed) as exc:
        checks.create_graph_calendar(graph, mailbox, "Nope")
    assert "403 ErrorAccessDenied" in str(exc.value)
    assert checks.graph_failure_reason(exc.value, mailbox, graph) == checks.MISSING_PERMISSION


def test_stand_in_answers_like_graph_without_the_permission(graphsim: GraphSim, mailbox: str) -> None:
    client_id, secret = f"app-{uuid.uuid4()}", "s"
    graphsim.register_app(TENANT, client_id, client_secret=secret, roles=())
    s = requests.Session()
    s.verify, s.trust_env = graphsim.ca_path, False
    token = s.post(
        f"{graphsim.authority_host}/{TENANT}/oauth2/v2.0/token",
        data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret,
              "scope": "https://graph.microsoft.com/.default"},
        timeout=5,
    ).json()["access_token"]  # fmt: skip
    s.headers["Authorization"] = f"Bearer {token}"
    for method, path in [("GET", f"/users/{mailbox}/calendar"), ("GET", "/users/nobody@contoso.test/events"),
                         ("POST", f"/users/{mailbox}/calendars")]:  # fmt: skip
        r = s.request(method, graphsim.graph_url + path, json={"name": "x"}, timeout=5)
        assert r.status_code == 403
        assert r.json()["error"]["code"] == "ErrorAccessDenied"
        assert r.json()["error"]["message"] == "Access is denied. Check credentials and try again."
    assert s.get(f"{graphsim.graph_url}/users/{mailbox}", timeout=5).status_code == 200  # not a calendar route
    # the admin API registers such apps too
    admin = f"{graphsim.authority_host}/_sim/apps"
    r = s.post(admin, json={"tenant_id": TENANT, "client_id": f"app-{uuid.uuid4()}", "client_secret": "x",
                            "roles": []}, timeout=5)  # fmt: skip
    assert r.status_code == 201
    assert s.post(admin, json={"tenant_id": TENANT, "client_id": "c", "client_secret": "x", "roles": "oops"},
                  timeout=5).status_code == 400  # fmt: skip


def test_bad_client_secret(graphsim: GraphSim, mailbox: str) -> None:
    client_id = f"app-{uuid.uuid4()}"
    graphsim.register_app(TENANT, client_id, client_secret="the-right-secret")
    wrong = f"wrong-secret-{uuid.uuid4().hex}"
    reason = checks.check_graph_mailbox(graph_for(graphsim, client_id, wrong), mailbox)
    assert reason is not None and reason.startswith("Graph sign-in failed: the client secret is wrong"), reason
    assert wrong not in reason and "the-right-secret" not in reason


def test_unknown_app_and_unknown_tenant(graphsim: GraphSim, mailbox: str) -> None:
    reason = checks.check_graph_mailbox(graph_for(graphsim, f"app-{uuid.uuid4()}", "x"), mailbox)
    assert reason is not None
    assert reason.startswith("Graph sign-in failed: no application with this client ID in the tenant"), reason
    unknown_tenant = graph_for(graphsim, f"app-{uuid.uuid4()}", "x", tenant="no-such-tenant")
    reason = checks.check_graph_mailbox(unknown_tenant, mailbox)
    assert reason == "Graph sign-in failed: the tenant was not found: check the tenant (directory) ID"


def test_untrusted_certificate_at_the_token_endpoint(graphsim: GraphSim, mailbox: str, tmp_path: Path) -> None:
    client_id, secret = f"app-{uuid.uuid4()}", f"secret-{uuid.uuid4().hex}"
    graphsim.register_app(TENANT, client_id, client_secret=secret)
    bundle = other_ca_bundle(tmp_path)
    graph = graph_for(graphsim, client_id, secret, auth_verify=bundle, graph_verify=bundle)
    reason = checks.check_graph_mailbox(graph, mailbox)
    assert reason is not None
    assert reason.startswith("TLS error talking to Microsoft Graph: certificate verify failed"), reason
    assert secret not in reason
    # the same app, trusting the stand-in's CA, is fine
    assert checks.check_graph_mailbox(graph_for(graphsim, client_id, secret), mailbox) is None


def test_untrusted_certificate_at_graph_itself(graphsim: GraphSim, mailbox: str, tmp_path: Path) -> None:
    client_id, secret = f"app-{uuid.uuid4()}", f"secret-{uuid.uuid4().hex}"
    graphsim.register_app(TENANT, client_id, client_secret=secret)
    graph = graph_for(graphsim, client_id, secret, graph_verify=other_ca_bundle(tmp_path))  # token endpoint ok
    reason = checks.check_graph_mailbox(graph, mailbox)
    assert reason is not None
    assert reason.startswith("TLS error talking to Microsoft Graph: certificate verify failed"), reason


def test_graph_not_reachable(graphsim: GraphSim, mailbox: str) -> None:
    port = closed_port()
    graph = graph_for(graphsim, f"app-{uuid.uuid4()}", "x", authority_host=f"https://127.0.0.1:{port}")
    assert checks.check_graph_mailbox(graph, mailbox) == "Microsoft Graph not reachable: Connection refused"


def test_token_graph_refuses(graphsim: GraphSim, mailbox: str) -> None:
    graph = GraphClient(StaticToken("gsim.not-a-token-it-issued"), base_url=graphsim.graph_url,
                        verify=graphsim.ca_path, max_attempts=1, timeout=(5, 5))  # fmt: skip
    reason = checks.check_graph_mailbox(graph, mailbox)
    assert reason is not None and reason.startswith(
        "Graph sign-in failed: Microsoft Graph refused the app's access token (InvalidAuthenticationToken)"
    ), reason
    assert "not-a-token" not in reason


def test_graph_throttling(new_app: Callable[..., Any], graphsim: GraphSim, mailbox: str) -> None:
    graph, _, _ = new_app()
    graph.auth.token()  # sign in first: the injected answers are for Graph requests
    graphsim.inject_throttle(2, retry_after=0.01)  # graph_for() clients try twice
    reason = checks.check_graph_mailbox(graph, mailbox)
    assert reason == "Microsoft Graph is throttling this app: check again in a few minutes"
    assert checks.check_graph_mailbox(graph, mailbox) is None  # both injected answers were used


@pytest.mark.parametrize(
    ("aadsts", "fix"),
    [
        ("7000222", "the client secret has expired"),
        ("65001", "the app has no admin consent: grant admin consent for its application permission"),
        ("700027", "the certificate was refused"),
        ("1234567", "token request refused: invalid_client: AADSTS1234567: Something new."),
    ],
)
def test_sign_in_codes_without_a_stand_in_situation(aadsts: str, fix: str) -> None:
    """Codes the stand-in never answers with client credentials: the text msal's result gives
    (``GraphAuth.token``: "token request refused: <error>: <first line of the description>")."""
    exc = AuthenticationFailed(f"token request refused: invalid_client: AADSTS{aadsts}: Something new.")
    reason = checks.graph_failure_reason(exc, "ada@contoso.test")
    assert reason.startswith(f"Graph sign-in failed: {fix}"), reason


# --- Graph calendars ---------------------------------------------------------------------------------


def test_graph_calendars_every_page_with_can_edit(
    new_app: Callable[..., Any], graphsim: GraphSim, mailbox: str
) -> None:
    graph, client_id, _ = new_app()
    shared = {f"Shared {i:02d}" for i in range(3)}
    own = {f"Project {i:02d}" for i in range(9)}
    for name in sorted(own | shared):
        graphsim.add_calendar(mailbox, name, can_edit=name not in shared)
    graphsim.reset_request_log()
    cals = checks.graph_calendars(graph, mailbox)
    assert {c.name for c in cals} == {"Calendar"} | own | shared  # 13 calendars: 10 + 3 on two pages
    assert len(cals) == 13 and len({c.id for c in cals}) == 13
    assert [c.name for c in cals if c.is_default] == ["Calendar"]
    assert {c.name for c in cals if not c.can_edit} == shared
    assert all(c.owner == mailbox for c in cals)
    pages = [r for r in graphsim.request_log if r["app"] == client_id and r["path"].startswith("/v1.0/")]
    assert [(r["method"], r["path"], r["status"]) for r in pages] == [
        ("GET", f"/v1.0/users/{mailbox}/calendars", 200)
    ] * 2
    # canEdit false is enforced by the stand-in: a write there is refused like Graph does
    [ro] = [c for c in cals if c.name == "Shared 00"]
    with pytest.raises(AuthenticationFailed) as exc:
        graph.request_json("POST", f"/users/{mailbox}/calendars/{ro.id}/events", json={"subject": "x"})
    assert "403 ErrorAccessDenied" in str(exc.value)


def test_create_graph_calendar_is_idempotent(new_app: Callable[..., Any], graphsim: GraphSim, mailbox: str) -> None:
    graph, client_id, _ = new_app()
    for i in range(10):  # the existing calendar will sit on the second page
        graphsim.add_calendar(mailbox, f"Filler {i}")
    created = checks.create_graph_calendar(graph, mailbox, "Sync: Team")
    assert created.name == "Sync: Team" and created.can_edit and not created.is_default and created.id
    graphsim.reset_request_log()
    again = checks.create_graph_calendar(graph, mailbox, "  sync: TEAM ")  # Exchange names ignore case
    assert again == created
    log = [r for r in graphsim.request_log if r["app"] == client_id and r["path"].startswith("/v1.0/")]
    statuses = [(r["method"], r["status"]) for r in log]
    assert statuses == [("POST", 409), ("GET", 200), ("GET", 200)]
    names = [c.name for c in checks.graph_calendars(graph, mailbox)]
    assert names.count("Sync: Team") == 1 and len(names) == 12
    other = checks.create_graph_calendar(graph, mailbox, "Sync: Other")
    assert other.id != created.id
    with pytest.raises(ValueError):
        checks.create_graph_calendar(graph, mailbox, "   ")

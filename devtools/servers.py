"""Start and stop REAL CalDAV servers and Azurite on 127.0.0.1 for tests and the demo.

Public API (everything binds to 127.0.0.1 on random free ports, logs into the
given ``workdir`` and is stopped -- with all its children -- by ``stop()``)::

    start_radicale(workdir)  -> CalDAVServer   # Radicale, htpasswd auth, filesystem storage
    start_xandikos(workdir)  -> CalDAVServer   # Xandikos --defaults, no auth at all
    start_cyrus(workdir)     -> CalDAVServer   # Debian cyrus-imapd + cyrus-caldav, private config
    start_caldav(kind, workdir) -> CalDAVServer
    start_azurite(workdir)   -> AzuriteServer  # npm azurite@3 from .testrun/node
    dav_request(method, url, auth=..., body=..., headers=...) -> HTTPResult  # tiny raw HTTP helper

``CalDAVServer.url`` is the base URL to hand to a CalDAV client (principal
discovery works from it, with basic auth sent up front); ``calendar_url`` is an
existing empty calendar; ``new_calendar(name)`` MKCALENDARs another empty one;
``new_readonly_calendar(name, events=())`` makes one in the user's calendar home that
the user may read but not write (None where the server cannot express that: Xandikos).
Start-up is bounded (``DEFAULT_START_TIMEOUT``); a server that does not come up
raises ``ServerStartError`` carrying the tail of its log.  Every started server
is also registered for an ``atexit`` stop, and its main process gets
``PR_SET_PDEATHSIG=SIGTERM`` (Linux) so it dies with the process that started it
(caveat: that is tied to the starting *thread*; start servers from the main thread
or a thread that outlives them).

Command line (for the demo / manual poking)::

    python -m devtools.servers radicale|xandikos|cyrus|azurite [--workdir DIR]

prints the connection details as JSON and keeps the server running until Ctrl-C.

Fresh machine: ``devtools/install_test_deps.sh`` installs cyrus-imapd,
cyrus-caldav, sasl2-bin (Debian) and Azurite (npm, into ``.testrun/node``).
Radicale and Xandikos come from the venv (requirements-dev.txt; Xandikos >= 0.4 for
``--state-dir``/``--no-detect-systemd``).

QUIRKS OBSERVED (measured against Radicale 3.9.0, Xandikos 0.4.10, Cyrus 3.6.1
(Debian 12) with raw requests and the ``caldav`` 3.6 library; numbers are HTTP
statuses.  The tables ``UNAUTHENTICATED_PROPFIND`` ... ``HREF_AT_SIGN_ENCODED`` below hold
the key facts and tests/test_servers.py re-checks them against the live servers)
=================================================================================

Authentication / discovery
  * Unauthenticated Depth-0 PROPFIND on the base URL:
    Radicale 401 + ``WWW-Authenticate: Basic realm="Radicale - Password Required"``;
    Xandikos 207 (no auth on plain HTTP at all; a Basic header with any password is
    ignored, wrong password -> 207); Cyrus 207 with
    ``current-user-principal`` = ``<D:unauthenticated/>`` and NO challenge.
    Wrong password sent up front: Radicale 401, Cyrus 401.
  * => a client must send Basic auth pre-emptively.  ``caldav.DAVClient`` without
    ``auth_type="basic"`` against Cyrus silently "discovers" the base URL as the
    principal and ``calendars()`` returns ``[]`` (no error!).  With
    ``auth_type="basic"`` discovery from ``url`` works on all three.
  * ``/.well-known/caldav``: Radicale 301 -> ``/``; Xandikos 302 -> ``/``; Cyrus 301
    -> absolute ``http://host:port/dav/calendars``.
  * Paths: Radicale principal = home = ``/alice/``, calendars ``/alice/<name>/``;
    Xandikos principal ``/alice/``, home ``/alice/calendars/``, default calendar
    ``calendar/``; Cyrus principal ``/dav/principals/user/alice/``, home
    ``/dav/calendars/user/alice/``, default calendar ``Default/`` (plus schedule
    ``Inbox/``/``Outbox/``, which are not calendars).
  * calendar-user-address-set: Radicale ``/alice/`` (a path, not mailto:), Xandikos
    empty, Cyrus ``mailto:alice@internal`` (``defaultdomain`` is "internal").
  * OPTIONS ``DAV:`` on a calendar: all advertise ``calendar-access``; Cyrus sends
    several ``DAV:`` header lines (join them!) and on ``/`` or ``/dav/`` sends none
    (``Allow: OPTIONS, GET, HEAD``).

PUT / GET / ETag
  * ETags are strong and double-quoted everywhere (header and ``getetag``), and the
    PUT ETag equals the one GET/PROPFIND return afterwards.
  * ETag on PUT: Radicale and Xandikos always return it (201 create / 204
    overwrite) although both RE-SERIALIZE the object (property order changes, so
    GET body != PUT body); Xandikos also returns a ``Schedule-Tag`` on every PUT.
    Cyrus stores the body byte-for-byte and returns an ETag for plain events, but
    for scheduling objects (event with ORGANIZER/ATTENDEE) it returns only
    ``Schedule-Tag`` and NO ETag -> fetch the ETag (PROPFIND/GET) after such a PUT.
  * Preconditions: ``If-None-Match: *`` on an existing resource 412 and a wrong
    ``If-Match`` 412 on all three.  DELETE: Radicale 200, Xandikos 204, Cyrus 204;
    GET/DELETE of a missing resource 404.  PROPFIND of a missing collection:
    Radicale 404, Cyrus 404, Xandikos 207 with an inner 404 response (whose href is
    an absolute URL).  Deleting a calendar: Radicale 200, Xandikos 204, Cyrus 204.
  * Same UID in a second resource of the SAME calendar: Radicale 409
    ``C:no-uid-conflict``; Xandikos 412 ``C:no-uid-conflict``; Cyrus 403
    ``C:unique-scheduling-object-resource``.  Same UID in ANOTHER calendar of the
    same user: Radicale/Xandikos 201, Cyrus 403 (UIDs are unique per user on Cyrus,
    even for plain events -> tests must use fresh UIDs, not only fresh calendars).
  * Cyrus runs with implicit scheduling on (default): ORGANIZER/ATTENDEE events are
    stored unchanged here (no iMIP transport is configured).

Hrefs
  * All return hrefs as absolute paths (no scheme/host), except Xandikos' inner
    404 above.  A resource PUT as ``a%20b%40c%2Bd.ics`` comes back as
    ``a%20b%40c%2Bd.ics`` from Radicale but ``a%20b@c%2Bd.ics`` from Xandikos and
    Cyrus (``@`` left literal) -> compare hrefs after percent-decoding.

sync-collection (RFC 6578), all three support it
  * Token formats: Radicale ``http://radicale.org/ns/sync/<sha256>``; Xandikos a
    bare 40-hex git commit id (not a URI); Cyrus ``data:,<uidvalidity>-<modseq>``
    (``data:,A-B-C`` as continuation token after a truncated answer).
  * Unknown/bogus token: Radicale 403, Xandikos 412 (RFC says 403), Cyrus 403 --
    all with a ``DAV:valid-sync-token`` error body.  Treat 403 AND 412 (with
    valid-sync-token) as "token invalid -> full resync".
  * Old but once-issued tokens keep working on all three (207 with the changes).
  * Deleted members appear as a ``<response>`` with ``<status>404`` and no propstat.
    Radicale's INITIAL sync (empty token) also lists members deleted earlier as
    404s -> ignore 404s in an initial sync.
  * ``DAV:limit``/``nresults=2`` on 6 members: Radicale ignores it (returns all);
    Xandikos returns 2 plus a token that SKIPS the rest (continuing from it returns
    nothing: silent data loss) -> never send DAV:limit; Cyrus honours it: 2 members
    plus a 507 response for the collection href and a continuation token.
  * ``C:limit`` in calendar-query: Radicale ignores it, Xandikos 400 ("Unknown
    tag"), Cyrus ignores it.

Read-only calendars (``READONLY_CALENDARS``; what DAV:current-user-privilege-set, RFC 3744
5.4, then says for the user)
  * Radicale: rights ``type = from_file`` reproducing ``owner_only`` plus one rule: the user
    may only read (``r``) collections ``<user>/readonly-*``; a second htpasswd user, the
    *curator*, creates and fills them. Reported privileges: ``read``, ``read-free-busy``
    (writable calendars: ``all``, ``write``, ``write-properties``, ``write-content``, ...).
    A PUT by the user there answers 403.
  * Cyrus: the user MKCALENDARs it, then replaces its ACL with the RFC 3744 ACL method,
    granting ``<D:self/>`` only ``D:read`` (Cyrus maps it to IMAP rights ``lr``; a
    ``D:href`` principal is refused with ``recognized-principal``). The owner keeps its
    implicit rights, so the set is ``read``, ``read-free-busy``, ``CY:make-collection``,
    ``CY:remove-collection``, ``CY:write-properties-resource``, ``CY:admin``: no
    ``write-content``, ``bind`` or ``unbind``. A PUT answers 403 ``need-privileges``.
  * Xandikos 0.4 has no access control: every collection reports ``DAV:all``
    (``xandikos/access.py``, "TODO: Use something other than all") and accepts writes, so no
    read-only calendar can exist there.

Cyrus set-up specifics: the user only gets a calendar home after its IMAP INBOX
exists (before that an authenticated PROPFIND answers 500), hence the harness logs
in once over IMAP (``autocreate_quota: 0``) and then touches the calendar home,
which makes Cyrus create ``Default``, ``Inbox``, ``Outbox`` (``caldav_create_*``).
Cyrus answers with ``Upgrade: h2c`` headers (harmless for HTTP/1.1 clients) and
logs only to syslog (nothing if the machine has no ``/dev/log``); the master's own
stdout/stderr go to ``cyrus-master.log``.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import http.client
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from base64 import b64encode
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urljoin, urlsplit
from xml.etree import ElementTree as ET
from xml.sax.saxutils import escape as xml_escape

HOST = "127.0.0.1"
DEFAULT_START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
REPO_ROOT = Path(__file__).resolve().parent.parent
AZURITE_BIN = REPO_ROOT / ".testrun" / "node" / "node_modules" / ".bin" / "azurite"
INSTALL_HINT = "run devtools/install_test_deps.sh (as root or with sudo)"

CALDAV_KINDS: tuple[str, ...] = ("radicale", "xandikos", "cyrus")
DEFAULT_USER = "alice"
DEFAULT_PASSWORD = "alice-secret-pw"

# Quirk tables, measured (see the module docstring); tests/test_servers.py re-checks them.
#: Status of an unauthenticated Depth-0 PROPFIND on the base URL.
UNAUTHENTICATED_PROPFIND: dict[str, int] = {"radicale": 401, "xandikos": 207, "cyrus": 207}
#: Status of a Depth-0 PROPFIND sent with a wrong password.
WRONG_PASSWORD_PROPFIND: dict[str, int] = {"radicale": 401, "xandikos": 207, "cyrus": 401}
#: Whether a PUT creating a plain (non-scheduling) event returns an ``ETag`` header.
ETAG_ON_PUT: dict[str, bool] = {"radicale": True, "xandikos": True, "cyrus": True}
#: Same, for an event with ORGANIZER + ATTENDEE (a scheduling object resource).
ETAG_ON_PUT_SCHEDULING: dict[str, bool] = {"radicale": True, "xandikos": True, "cyrus": False}
#: Whether GET returns the PUT body unchanged (modulo line endings).
STORES_BODY_VERBATIM: dict[str, bool] = {"radicale": False, "xandikos": False, "cyrus": True}
#: Status of a sync-collection REPORT with a never-issued token (RFC 6578: 403).
BOGUS_SYNC_TOKEN: dict[str, int] = {"radicale": 403, "xandikos": 412, "cyrus": 403}
#: DAV:limit in sync-collection: "ignored" | "truncates" (token skips the rest!) | "honoured" (507).
SYNC_LIMIT: dict[str, str] = {"radicale": "ignored", "xandikos": "truncates", "cyrus": "honoured"}
#: Status of a PUT that reuses an existing UID in another calendar of the same user.
DUPLICATE_UID_OTHER_CALENDAR: dict[str, int] = {"radicale": 201, "xandikos": 201, "cyrus": 403}
#: Whether ``@`` in a resource name comes back percent-encoded (``%40``) in hrefs.
HREF_AT_SIGN_ENCODED: dict[str, bool] = {"radicale": True, "xandikos": False, "cyrus": False}
#: Whether ``CalDAVServer.new_readonly_calendar`` can make a calendar the user may only read.
READONLY_CALENDARS: dict[str, bool] = {"radicale": True, "xandikos": False, "cyrus": True}

#: Radicale's second user, which creates (and fills) the test user's read-only calendars.
RADICALE_CURATOR = "davbridge-curator"
#: Name prefix of read-only calendars (Radicale's rights file matches it).
READONLY_PREFIX = "readonly-"

_DAV = "DAV:"
_CALDAV = "urn:ietf:params:xml:ns:caldav"


class ServerStartError(RuntimeError):
    """A server did not start (in time); the message carries the reason and the log tail."""


# --------------------------------------------------------------------------- helpers


def free_port(host: str = HOST) -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it)."""
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = HOST) -> list[int]:
    """``count`` distinct free ports (sockets kept open until all are picked)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _port_open(port: int, host: str = HOST) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class HTTPResult:
    status: int
    headers: dict[str, str]  # lower-cased names; repeated headers joined with ", "
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def xml(self) -> ET.Element:
        return ET.fromstring(self.body)


def basic_auth_header(username: str, password: str) -> str:
    return "Basic " + b64encode(f"{username}:{password}".encode()).decode("ascii")


def dav_request(
    method: str,
    url: str,
    *,
    auth: tuple[str, str] | None = None,
    body: bytes | str | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> HTTPResult:
    """One raw HTTP request (no redirects, no retries); never raises for HTTP status codes.

    ``auth`` is sent pre-emptively as Basic (Cyrus never challenges a PROPFIND).
    """
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"only plain http URLs are supported here: {url!r}")
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    hdrs = {"Accept-Encoding": "identity"}
    if body is not None:
        hdrs["Content-Type"] = "application/xml; charset=utf-8"
    if headers:
        hdrs.update(headers)
    if auth is not None:
        hdrs["Authorization"] = basic_auth_header(*auth)
    data = body.encode("utf-8") if isinstance(body, str) else body
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    try:
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        merged: dict[str, str] = {}
        for k, v in resp.getheaders():  # repeated headers (Cyrus sends several DAV:) are joined
            key = k.lower()
            merged[key] = f"{merged[key]}, {v}" if key in merged else v
        return HTTPResult(resp.status, merged, resp.read())
    finally:
        conn.close()


def _propfind_body(*props: str) -> str:
    inner = "".join(props)
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        f'<D:propfind xmlns:D="DAV:" xmlns:C="{_CALDAV}"><D:prop>{inner}</D:prop></D:propfind>'
    )


def _calendars_in(result: HTTPResult, base_url: str) -> list[str]:
    """Absolute URLs of the calendar collections in a PROPFIND multistatus."""
    out: list[str] = []
    for resp in result.xml().iter(f"{{{_DAV}}}response"):
        href = resp.findtext(f"{{{_DAV}}}href")
        if href and resp.find(f".//{{{_DAV}}}resourcetype/{{{_CALDAV}}}calendar") is not None:
            out.append(urljoin(base_url, href))
    return out


def _slug(name: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40].strip("-")
    return f"{s or 'cal'}-{uuid.uuid4().hex[:8]}"


def _mkcalendar(home_url: str, name: str, auth: tuple[str, str], *, prefix: str = "") -> str:
    url = urljoin(home_url, prefix + _slug(name) + "/")
    body = (
        '<?xml version="1.0" encoding="utf-8"?>'
        f'<C:mkcalendar xmlns:D="DAV:" xmlns:C="{_CALDAV}"><D:set><D:prop>'
        f"<D:displayname>{xml_escape(name)}</D:displayname>"
        "</D:prop></D:set></C:mkcalendar>"
    )
    res = dav_request("MKCALENDAR", url, auth=auth, body=body)
    if res.status != 201:
        raise RuntimeError(f"MKCALENDAR {url} -> {res.status}: {res.text[:500]}")
    return url


# --------------------------------------------------------------------------- processes

_PR_SET_PDEATHSIG = 1


def _set_pdeathsig() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


_LIVE: set[_ManagedProcess] = set()
_LIVE_LOCK = threading.Lock()


class _ManagedProcess:
    """A subprocess in its own process group, logging to a file, stoppable with its children."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        log_path: Path,
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        run_as: pwd.struct_passwd | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log: IO[bytes] = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log.write(f"\n=== {time.strftime('%H:%M:%S')} starting: {' '.join(argv)}\n".encode())
        self._log.flush()
        full_env = dict(os.environ if env is None else env)
        for var in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):  # no systemd socket activation
            full_env.pop(var, None)
        kwargs: dict[str, Any] = {}
        if run_as is not None and os.geteuid() == 0 and run_as.pw_uid != 0:
            kwargs.update(user=run_as.pw_uid, group=run_as.pw_gid, extra_groups=[])
        self._stopped = False
        try:
            self.popen = self._spawn(argv, cwd, full_env, kwargs)
        except BaseException:
            self._log.close()
            raise
        with _LIVE_LOCK:
            _LIVE.add(self)

    def _spawn(
        self, argv: list[str], cwd: Path | None, env: dict[str, str], kwargs: dict[str, Any]
    ) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            argv,
            cwd=str(cwd) if cwd else None,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: stop() kills the whole tree
            preexec_fn=_set_pdeathsig if sys.platform.startswith("linux") else None,
            **kwargs,
        )

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text("utf-8", "replace")
        except OSError as exc:
            return f"(no log: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    def fail(self, reason: str) -> ServerStartError:
        """Stop the process and build a ServerStartError with the log tail."""
        self.stop()
        return ServerStartError(
            f"{self.name} did not start: {reason}\n"
            f"command: {' '.join(self.argv)}\nlog {self.log_path} (tail):\n{self.log_tail()}"
        )

    def wait_until(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll ``ready()`` until true; fail fast if the process exits; bounded by ``timeout``."""
        deadline = time.monotonic() + timeout
        last_exc: BaseException | None = None
        while True:
            if not self.alive():
                raise self.fail(f"process exited with code {self.popen.returncode} while waiting for {what}")
            try:
                if ready():
                    return
            except Exception as exc:  # not ready yet (connection refused, 5xx, ...)
                last_exc = exc
            if time.monotonic() > deadline:
                extra = f" (last error: {last_exc!r})" if last_exc else ""
                raise self.fail(f"timed out after {timeout:.0f}s waiting for {what}{extra}")
            time.sleep(0.1)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self.popen.returncode is None:
            pgid = self.popen.pid  # == pgid thanks to start_new_session
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, signal.SIGKILL)
                self.popen.wait(timeout)
        # children that outlived their leader (same process group)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with _LIVE_LOCK:
            _LIVE.discard(self)
        with contextlib.suppress(Exception):
            self._log.close()


@atexit.register
def _stop_all() -> None:
    with _LIVE_LOCK:
        procs = list(_LIVE)
    for p in procs:
        with contextlib.suppress(Exception):
            p.stop(timeout=5)


# --------------------------------------------------------------------------- CalDAV


@dataclass
class CalDAVServer:
    kind: str  # "radicale" | "xandikos" | "cyrus"
    url: str  # base URL for a CalDAV client (principal discovery works from it)
    username: str
    password: str
    calendar_url: str  # an existing, empty calendar collection of this user
    principal_url: str = ""
    calendar_home_url: str = ""
    workdir: Path = field(default_factory=Path)
    log_path: Path = field(default_factory=Path)
    startup_seconds: float = 0.0
    _proc: _ManagedProcess | None = field(default=None, repr=False)
    _cleanup: list[Callable[[], None]] = field(default_factory=list, repr=False)
    #: Radicale: (user, password) of the curator that owns the read-only calendars' content.
    curator_auth: tuple[str, str] | None = field(default=None, repr=False)

    @property
    def auth(self) -> tuple[str, str]:
        return (self.username, self.password)

    def new_calendar(self, name: str) -> str:
        """MKCALENDAR a new empty calendar (display name ``name``) and return its URL."""
        return _mkcalendar(self.calendar_home_url, name, self.auth)

    def new_readonly_calendar(self, name: str, *, events: Iterable[str] = ()) -> str | None:
        """A new calendar in the user's home that the user may read but not write, holding
        ``events`` (iCalendar texts, stored as ``event-<n>.ics``); its URL, or None when this
        server cannot make one (``READONLY_CALENDARS``; see the module docstring for how)."""
        if self.kind == "radicale" and self.curator_auth is not None:
            url = _mkcalendar(self.calendar_home_url, name, self.curator_auth, prefix=READONLY_PREFIX)
            self._put_events(url, events, self.curator_auth)
            return url
        if self.kind == "cyrus":
            url = _mkcalendar(self.calendar_home_url, name, self.auth, prefix=READONLY_PREFIX)
            self._put_events(url, events, self.auth)
            acl = (
                '<?xml version="1.0" encoding="utf-8"?><D:acl xmlns:D="DAV:"><D:ace>'
                "<D:principal><D:self/></D:principal><D:grant><D:privilege><D:read/></D:privilege></D:grant>"
                "</D:ace></D:acl>"
            )
            res = dav_request("ACL", url, auth=self.auth, body=acl)
            if res.status != 200:
                raise RuntimeError(f"ACL {url} -> {res.status}: {res.text[:500]}")
            return url
        return None

    @staticmethod
    def _put_events(url: str, events: Iterable[str], auth: tuple[str, str]) -> None:
        for n, ics in enumerate(events):
            res = dav_request(
                "PUT",
                urljoin(url, f"event-{n}.ics"),
                auth=auth,
                body=ics,
                headers={"Content-Type": "text/calendar; charset=utf-8", "If-None-Match": "*"},
            )
            if res.status not in (201, 204):
                raise RuntimeError(f"PUT {url}event-{n}.ics -> {res.status}: {res.text[:500]}")

    def request(self, method: str, url: str, **kwargs: Any) -> HTTPResult:
        """``dav_request`` with this server's credentials; ``url`` may be relative to ``self.url``."""
        kwargs.setdefault("auth", self.auth)
        return dav_request(method, urljoin(self.url, url), **kwargs)

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.stop()
        while self._cleanup:
            with contextlib.suppress(Exception):
                self._cleanup.pop()()

    def __enter__(self) -> CalDAVServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "url": self.url,
            "username": self.username,
            "password": self.password,
            "principal_url": self.principal_url,
            "calendar_home_url": self.calendar_home_url,
            "calendar_url": self.calendar_url,
            "log": str(self.log_path),
            "startup_seconds": round(self.startup_seconds, 2),
        }


def _authenticated_propfind_ok(url: str, auth: tuple[str, str]) -> bool:
    res = dav_request(
        "PROPFIND",
        url,
        auth=auth,
        headers={"Depth": "0"},
        body=_propfind_body("<D:current-user-principal/>"),
        timeout=3,
    )
    return res.status == 207


def start_radicale(
    workdir: Path,
    *,
    username: str = DEFAULT_USER,
    password: str = DEFAULT_PASSWORD,
    timeout: float = DEFAULT_START_TIMEOUT,
) -> CalDAVServer:
    """Radicale (``python -m radicale`` from this interpreter) with htpasswd auth (plain).

    Rights are ``owner_only`` written as a ``from_file`` rights file, plus read-only
    ``<user>/readonly-*`` calendars that the curator user (``RADICALE_CURATOR``) writes.
    """
    t0 = time.monotonic()
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    curator = (RADICALE_CURATOR, uuid.uuid4().hex)
    users = workdir / "users"
    users.write_text(f"{username}:{password}\n{curator[0]}:{curator[1]}\n")
    rights = workdir / "rights"
    rights.write_text(_radicale_rights(curator[0]))
    config = workdir / "radicale.conf"
    config.write_text(
        "\n".join(
            [
                "[server]",
                f"hosts = {HOST}:{port}",
                "[auth]",
                "type = htpasswd",
                f"htpasswd_filename = {users}",
                "htpasswd_encryption = plain",  # no bcrypt/passlib dependency
                "delay = 0.01",  # failed-login penalty; keep tests fast
                "[rights]",
                "type = from_file",
                f"file = {rights}",
                "[storage]",
                f"filesystem_folder = {workdir / 'collections'}",
                "[web]",
                "type = none",
                "[logging]",
                "level = info",
                "",
            ]
        )
    )
    argv = [sys.executable, "-m", "radicale", "--config", str(config)]
    env = dict(os.environ, RADICALE_CONFIG=str(config))
    proc = _ManagedProcess("radicale", argv, workdir / "radicale.log", cwd=workdir, env=env)
    url = f"http://{HOST}:{port}/"
    auth = (username, password)
    proc.wait_until(lambda: _authenticated_propfind_ok(url, auth), timeout, "an authenticated PROPFIND")
    home = urljoin(url, f"{username}/")
    try:
        calendar = urljoin(home, "calendar/")
        res = dav_request(
            "MKCALENDAR",
            calendar,
            auth=auth,
            body='<?xml version="1.0" encoding="utf-8"?>'
            f'<C:mkcalendar xmlns:D="DAV:" xmlns:C="{_CALDAV}"><D:set><D:prop>'
            "<D:displayname>calendar</D:displayname></D:prop></D:set></C:mkcalendar>",
        )
        if res.status != 201:
            raise RuntimeError(f"MKCALENDAR {calendar} -> {res.status}: {res.text[:300]}")
    except Exception as exc:
        raise proc.fail(f"creating the default calendar failed: {exc}") from exc
    return CalDAVServer(
        kind="radicale",
        url=url,
        username=username,
        password=password,
        calendar_url=calendar,
        principal_url=home,
        calendar_home_url=home,
        workdir=workdir,
        log_path=proc.log_path,
        startup_seconds=time.monotonic() - t0,
        _proc=proc,
        curator_auth=curator,
    )


def _radicale_rights(curator: str) -> str:
    """Radicale's ``owner_only`` (rights/owner_only.py) as a from_file rights file, plus the
    read-only calendars. The first section matching user and collection wins."""
    ro = re.escape(READONLY_PREFIX) + "[^/]+"
    sections = [
        ("root", ".+", "", "R"),  # list the root, nothing else
        ("readonly-calendars", ".+", "{user}/" + ro, "r"),  # the user may only read these
        ("curator-writes-readonly-calendars", re.escape(curator), "[^/]+/" + ro, "rw"),
        ("principal", ".+", "{user}", "RW"),  # the own principal collection
        ("own-collections", ".+", "{user}/[^/]+", "rw"),  # the own calendars and address books
    ]
    lines = ["# Generated by devtools/servers.py: owner_only plus read-only calendars."]
    for name, user, collection, permissions in sections:
        lines += [f"[{name}]", f"user: {user}", f"collection: {collection}", f"permissions: {permissions}", ""]
    return "\n".join(lines)


def start_xandikos(
    workdir: Path,
    *,
    username: str = DEFAULT_USER,
    password: str = DEFAULT_PASSWORD,
    timeout: float = DEFAULT_START_TIMEOUT,
) -> CalDAVServer:
    """Xandikos ``--defaults`` (creates calendars/calendar); it has no auth on plain HTTP.

    ``username``/``password`` are only what clients will send; Xandikos ignores them.
    """
    t0 = time.monotonic()
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    principal_path = f"/{username}/"
    argv = [
        sys.executable,
        "-m",
        "xandikos",  # default subcommand: serve
        "-d",
        str(workdir / "data"),
        "--defaults",  # implies --autocreate: principal, calendars/calendar, contacts/addressbook
        "--current-user-principal",
        principal_path,
        "-l",
        HOST,
        "-p",
        str(port),
        "--no-detect-systemd",
        "--state-dir",
        str(workdir / "state"),  # instead of $XDG_DATA_HOME/xandikos
    ]
    proc = _ManagedProcess("xandikos", argv, workdir / "xandikos.log", cwd=workdir)
    url = f"http://{HOST}:{port}/"
    auth = (username, password)
    proc.wait_until(lambda: _authenticated_propfind_ok(url, auth), timeout, "a PROPFIND answer")
    principal = urljoin(url, principal_path)
    home = urljoin(principal, "calendars/")
    try:
        res = dav_request(
            "PROPFIND", home, auth=auth, headers={"Depth": "1"}, body=_propfind_body("<D:resourcetype/>")
        )
        if res.status != 207:
            raise RuntimeError(f"PROPFIND {home} -> {res.status}")
        calendars = _calendars_in(res, url)
        if not calendars:
            raise RuntimeError(f"no calendar under {home}: {res.text[:500]}")
    except Exception as exc:
        raise proc.fail(f"finding the default calendar failed: {exc}") from exc
    default = urljoin(home, "calendar/")
    return CalDAVServer(
        kind="xandikos",
        url=url,
        username=username,
        password=password,
        calendar_url=default if default in calendars else calendars[0],
        principal_url=principal,
        calendar_home_url=home,
        workdir=workdir,
        log_path=proc.log_path,
        startup_seconds=time.monotonic() - t0,
        _proc=proc,
    )


# ---- Cyrus

_CYRUS_BIN_DIRS = ("/usr/lib/cyrus/bin", "/usr/libexec/cyrus-imapd", "/usr/lib/cyrus-imapd")


def cyrus_bin_dir() -> Path:
    """Directory holding Cyrus' ``master``/``httpd``/``imapd`` (Debian: /usr/lib/cyrus/bin)."""
    for d in _CYRUS_BIN_DIRS:
        if Path(d, "master").is_file() and Path(d, "httpd").is_file():
            return Path(d)
    raise ServerStartError(
        f"Cyrus IMAP/CalDAV is not installed (no master+httpd in {', '.join(_CYRUS_BIN_DIRS)}); "
        + INSTALL_HINT
    )


def _saslpasswd2() -> str:
    found = shutil.which("saslpasswd2") or next(
        (p for p in ("/usr/sbin/saslpasswd2", "/usr/bin/saslpasswd2") if os.access(p, os.X_OK)), None
    )
    if not found:
        raise ServerStartError("saslpasswd2 not found (Debian package sasl2-bin); " + INSTALL_HINT)
    return found


def _cyrus_service_user() -> pwd.struct_passwd:
    """Cyrus refuses to run as root: as root use the package's ``cyrus`` user, else ourselves."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid())
    try:
        return pwd.getpwnam("cyrus")
    except KeyError:
        raise ServerStartError("running as root but there is no 'cyrus' user; " + INSTALL_HINT) from None


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        os.chown(dirpath, uid, gid)
        for n in dirnames + filenames:
            os.chown(os.path.join(dirpath, n), uid, gid, follow_symlinks=False)


def _short_private_dir(prefix: str) -> Path:
    """A short directory that the Cyrus service user can reach.

    pytest's tmp dirs are 0700 and owned by the caller (the ``cyrus`` user can't
    traverse them), and Cyrus' unix sockets need short paths (108-byte limit),
    so the Cyrus tree lives in /tmp; the workdir gets a symlink to it.
    """
    base = "/tmp" if os.access("/tmp", os.W_OK | os.X_OK) else tempfile.gettempdir()
    _remove_stale_dirs(Path(base), prefix)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


def _remove_stale_dirs(base: Path, prefix: str, min_age: float = 3600.0) -> None:
    """Remove trees left by a killed run: older than ``min_age`` and no live ``master.pid``."""
    now = time.time()
    for d in base.glob(prefix + "*"):
        try:
            if not d.is_dir() or d.is_symlink() or now - d.stat().st_mtime < min_age:
                continue
            pidfile = d / "master.pid"
            if pidfile.exists():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pidfile.read_text().split()[0]), 0)
                    continue  # still running
            shutil.rmtree(d)
        except (OSError, ValueError, IndexError):
            continue  # not ours to remove / racing with its owner


def _imap_login(port: int, username: str, password: str) -> bool:
    import imaplib

    imap = imaplib.IMAP4(HOST, port, timeout=5)
    try:
        imap.login(username, password)  # autocreate_quota >= 0: creates user.<name> (INBOX)
        typ, _ = imap.select("INBOX", readonly=True)
        if typ != "OK":
            raise RuntimeError("INBOX was not auto-created")
        return True
    finally:
        with contextlib.suppress(Exception):
            imap.logout()


def start_cyrus(
    workdir: Path,
    *,
    username: str = DEFAULT_USER,
    password: str = DEFAULT_PASSWORD,
    timeout: float = DEFAULT_START_TIMEOUT,
) -> CalDAVServer:
    """Cyrus IMAP 3.x ``master`` with a private config: httpd (CalDAV) + imapd, sasldb auth."""
    t0 = time.monotonic()
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    bindir = cyrus_bin_dir()
    saslpasswd2 = _saslpasswd2()
    svc_user = _cyrus_service_user()
    root = _short_private_dir("davbridge-cyrus-")
    link = workdir / "cyrus-root"
    with contextlib.suppress(FileNotFoundError):
        link.unlink()
    link.symlink_to(root)
    for sub in ("config", "spool", "sasl"):
        (root / sub).mkdir()
    http_port, imap_port = free_ports(2)
    conf = root / "imapd.conf"
    sasldb = root / "sasl" / "sasldb2"
    realm = "localhost"
    conf.write_text(
        "\n".join(
            [
                "# Private Cyrus config generated by devtools/servers.py; nothing here touches /etc, /var.",
                "# All state (mailboxes.db, proc/, lock/, socket/, ...) lives under configdirectory.",
                f"configdirectory: {root / 'config'}",
                "defaultpartition: default",
                f"partition-default: {root / 'spool'}",
                "# servername doubles as the SASL realm: users are created as <user>@localhost.",
                f"servername: {realm}",
                "# Run services as this user (master only switches uid when started as root).",
                f"cyrus_user: {svc_user.pw_name}",
                "# Plain HTTP test server: allow Basic auth / IMAP LOGIN without TLS.",
                "allowplaintext: yes",
                "# Passwords from a private sasldb (saslpasswd2 -f), no saslauthd/system daemons.",
                "sasl_pwcheck_method: auxprop",
                "sasl_auxprop_plugin: sasldb",
                f"sasl_sasldb_path: {sasldb}",
                "sasl_mech_list: PLAIN LOGIN",
                "# Only CalDAV on the HTTP service (no CardDAV/JMAP/...).",
                "httpmodules: caldav",
                "# Uncompressed bodies: easier to debug, no client decompression surprises.",
                "httpallowcompress: no",
                "# A user's INBOX is created at first IMAP login (unlimited quota); the CalDAV",
                "# home + Default calendar are then created at the first authenticated DAV request.",
                "autocreate_quota: 0",
                "caldav_create_default: yes",
                "caldav_create_sched: yes",
                "# Standard (non-virtual) namespace; user mailboxes are user.<name>.",
                "virtdomains: off",
                "unixhierarchysep: no",
                "altnamespace: no",
                "# Tag our syslog lines (Cyrus logs only to syslog).",
                "syslog_prefix: davbridge-cyrus",
                "",
            ]
        )
    )
    cyrus_conf = root / "cyrus.conf"
    c = f"-C {conf}"
    cyrus_conf.write_text(
        "\n".join(
            [
                "# Private cyrus.conf generated by devtools/servers.py: only what CalDAV tests need.",
                "START {",
                "  # crash recovery of the private cyrusdb databases (cheap on an empty dir)",
                f'  recover cmd="{bindir / "ctl_cyrusdb"} {c} -r"',
                "}",
                "SERVICES {",
                "  # IMAP: only used once to log the user in, which auto-creates its INBOX",
                f'  imap cmd="{bindir / "imapd"} {c}" listen="{HOST}:{imap_port}" prefork=0 maxchild=10',
                "  # HTTP with the caldav module",
                f'  http cmd="{bindir / "httpd"} {c}" listen="{HOST}:{http_port}" prefork=0 maxchild=20',
                "}",
                "EVENTS {",
                "  # periodic database checkpoint",
                f'  checkpoint cmd="{bindir / "ctl_cyrusdb"} {c} -c" period=30',
                "}",
                "",
            ]
        )
    )
    proc_env = dict(os.environ, HOME=str(root), CYRUS_USER=svc_user.pw_name)
    try:
        subprocess.run(
            [saslpasswd2, "-f", str(sasldb), "-c", "-p", "-u", realm, username],
            input=password.encode(),
            check=True,
            capture_output=True,
            timeout=15,
        )
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(root, ignore_errors=True)
        raise ServerStartError(f"saslpasswd2 failed: {exc.stderr.decode(errors='replace')}") from exc
    if os.geteuid() == 0:
        _chown_tree(root, svc_user.pw_uid, svc_user.pw_gid)
        os.chmod(root, 0o700)
    argv = [
        str(bindir / "master"),
        "-C",
        str(conf),
        "-M",
        str(cyrus_conf),
        "-p",
        str(root / "master.pid"),
        "-D",
    ]
    try:
        proc = _ManagedProcess(
            "cyrus", argv, workdir / "cyrus-master.log", cwd=root, env=proc_env, run_as=svc_user
        )
    except Exception:
        shutil.rmtree(root, ignore_errors=True)
        raise
    cleanup: list[Callable[[], None]] = [
        lambda: shutil.rmtree(root, ignore_errors=True),
        lambda: link.unlink(missing_ok=True),
    ]

    def fail(exc: BaseException) -> BaseException:
        for fn in cleanup:
            fn()
        return exc

    url = f"http://{HOST}:{http_port}/"
    auth = (username, password)
    home = urljoin(url, f"dav/calendars/user/{username}/")
    try:
        proc.wait_until(lambda: _port_open(http_port) and _port_open(imap_port), timeout, "the ports")
        remaining = max(5.0, timeout - (time.monotonic() - t0))
        proc.wait_until(
            lambda: _imap_login(imap_port, username, password),
            remaining,
            "the IMAP login that creates the user's INBOX",
        )

        found: list[str] = []

        def calendar_home_ready() -> bool:
            res = dav_request(
                "PROPFIND",
                home,
                auth=auth,
                headers={"Depth": "1"},
                body=_propfind_body("<D:resourcetype/>"),
                timeout=5,
            )
            if res.status != 207:
                raise RuntimeError(f"PROPFIND {home} -> {res.status}")
            found[:] = _calendars_in(res, url)
            return bool(found)

        remaining = max(5.0, timeout - (time.monotonic() - t0))
        proc.wait_until(calendar_home_ready, remaining, "the calendar home with its Default calendar")
    except ServerStartError as exc:
        raise fail(exc) from None
    default = urljoin(home, "Default/")
    return CalDAVServer(
        kind="cyrus",
        url=url,
        username=username,
        password=password,
        calendar_url=default if default in found else found[0],
        principal_url=urljoin(url, f"dav/principals/user/{username}/"),
        calendar_home_url=home,
        workdir=workdir,
        log_path=proc.log_path,
        startup_seconds=time.monotonic() - t0,
        _proc=proc,
        _cleanup=cleanup,
    )


_STARTERS: dict[str, Callable[..., CalDAVServer]] = {
    "radicale": start_radicale,
    "xandikos": start_xandikos,
    "cyrus": start_cyrus,
}


def start_caldav(kind: str, workdir: Path, **kwargs: Any) -> CalDAVServer:
    """Start the CalDAV server ``kind`` (one of ``CALDAV_KINDS``)."""
    try:
        starter = _STARTERS[kind]
    except KeyError:
        raise ValueError(f"unknown CalDAV server kind {kind!r}; expected one of {CALDAV_KINDS}") from None
    return starter(workdir, **kwargs)


# --------------------------------------------------------------------------- Azurite

AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


@dataclass
class AzuriteServer:
    table_url: str
    queue_url: str
    blob_url: str
    connection_string: str
    account: str = AZURITE_ACCOUNT
    key: str = AZURITE_KEY
    workdir: Path = field(default_factory=Path)
    log_path: Path = field(default_factory=Path)
    startup_seconds: float = 0.0
    _proc: _ManagedProcess | None = field(default=None, repr=False)

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.stop()

    def __enter__(self) -> AzuriteServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def describe(self) -> dict[str, Any]:
        return {
            "table_url": self.table_url,
            "queue_url": self.queue_url,
            "blob_url": self.blob_url,
            "connection_string": self.connection_string,
            "account": self.account,
            "log": str(self.log_path),
            "startup_seconds": round(self.startup_seconds, 2),
        }


def start_azurite(
    workdir: Path, *, timeout: float = DEFAULT_START_TIMEOUT, azurite_bin: Path | None = None
) -> AzuriteServer:
    """Azurite (blob+queue+table) from ``.testrun/node`` with its data under ``workdir``."""
    t0 = time.monotonic()
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    binary = Path(azurite_bin or os.environ.get("DAVBRIDGE_AZURITE_BIN") or AZURITE_BIN)
    if not binary.exists():
        raise ServerStartError(f"Azurite not found at {binary}; " + INSTALL_HINT)
    if shutil.which("node") is None:
        raise ServerStartError("node is not on PATH (Azurite needs Node.js); " + INSTALL_HINT)
    blob_port, queue_port, table_port = free_ports(3)
    argv = [
        str(binary),
        "--silent",
        "--location",
        str(workdir / "data"),
        "--blobHost",
        HOST,
        "--blobPort",
        str(blob_port),
        "--queueHost",
        HOST,
        "--queuePort",
        str(queue_port),
        "--tableHost",
        HOST,
        "--tablePort",
        str(table_port),
        "--skipApiVersionCheck",  # SDKs newer than this Azurite must still work
        "--loose",  # ignore unsupported headers instead of failing
        "--disableTelemetry",  # no outbound network
    ]
    (workdir / "data").mkdir(exist_ok=True)
    proc = _ManagedProcess("azurite", argv, workdir / "azurite.log", cwd=workdir)
    proc.wait_until(
        lambda: all(_port_open(p) for p in (blob_port, queue_port, table_port)),
        timeout,
        "the blob/queue/table ports",
    )
    base = f"http://{HOST}"
    blob_url = f"{base}:{blob_port}/{AZURITE_ACCOUNT}"
    queue_url = f"{base}:{queue_port}/{AZURITE_ACCOUNT}"
    table_url = f"{base}:{table_port}/{AZURITE_ACCOUNT}"
    conn = (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
        f"BlobEndpoint={blob_url};QueueEndpoint={queue_url};TableEndpoint={table_url};"
    )
    return AzuriteServer(
        table_url=table_url,
        queue_url=queue_url,
        blob_url=blob_url,
        connection_string=conn,
        workdir=workdir,
        log_path=proc.log_path,
        startup_seconds=time.monotonic() - t0,
        _proc=proc,
    )


# --------------------------------------------------------------------------- CLI


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.servers", description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=[*CALDAV_KINDS, "azurite"])
    parser.add_argument("--workdir", type=Path, help="where logs/data go (default: a new temp dir)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix=f"davbridge-{args.kind}-"))
    # The handler goes in before the ready line: a caller may send SIGTERM right after reading it.
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server: CalDAVServer | AzuriteServer
    server = start_azurite(workdir) if args.kind == "azurite" else start_caldav(args.kind, workdir)
    print(json.dumps(server.describe(), indent=2), flush=True)
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

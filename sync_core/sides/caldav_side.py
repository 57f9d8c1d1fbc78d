"""The CalDAV side: one calendar collection on a CalDAV server (RFC 4791).

Reads use WebDAV collection synchronisation (RFC 6578 sync-collection REPORT) when the server
has it, and a complete etag listing (RFC 4918 9.1 PROPFIND, Depth 1, DAV:getetag) otherwise or
whenever a sync token is refused. Bodies are fetched with calendar-multiget (RFC 4791 7.9), only
for items whose etag differs from the one the state already holds. Writes are conditional PUT /
DELETE (RFC 4791 5.3.2, RFC 7232 3.1 / 3.2): ``If-None-Match: *`` to create, ``If-Match`` to
update and delete.

The HTTP session, the authentication and principal discovery come from ``DAVClient``.
Requests on the calendar itself are sent through ``client.session`` with ``client.auth``, not
through ``client.request``: that path turns every 403 into an ``AuthorizationError`` (RFC 6578
answers a stale token with 403 + DAV:valid-sync-token, which means "list again", not "no access"),
sleeps on 429 / 503 on its own, and logs request bodies (event content) at DEBUG level.

Server quirks handled here (PRODUCT.md traps 7-9):

- unquoted etags and etags that change spelling: compared in one normal form
  (:func:`~sync_core.sides.caldav_xml.normalize_etag`);
- no ETag header after PUT: the etag is read back with a Depth 0 PROPFIND;
- re-encoded hrefs (``@`` / ``%40``): ids are one canonical path
  (:func:`~sync_core.sides.caldav_xml.normalize_href`), and ids the caller holds are answered
  in the caller's own spelling;
- stale tokens answered with 400 / 403 / 409 / 410 / 412 / 418 / 507, or silently answered with
  the whole collection: a full listing with ``reset=True`` and deletions computed from it;
- truncated sync results (507 on the collection, RFC 6578 3.6) are followed with the new token;
- one broken, unreadable or oversized item becomes a :class:`RemoteItem` with ``error``;
- a listing that is suddenly empty while the state links items raises
  :class:`~sync_core.errors.StorageEmptied`.

Recurring series (docs/RECURRENCE.md): with a ``window``, a series is reported with only the
exdates and overrides inside it, and a write keeps those outside it. A series the other side
cannot hold (``expand_when`` gives a reason) is reported as one item per occurrence in the
window, id ``<href>#<recurrence id>``; writing such an item edits that occurrence inside the
resource (a RECURRENCE-ID override; deleting it adds an EXDATE). The items' etags are
``<resource etag>#<content hash>``: the resource part tells the listing whether to re-read,
the hash part is the occurrence's own precondition.

Logging goes to ``davbridge.caldav`` and names methods, paths and status codes only: never
bodies, passwords or event content.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from typing import Any, Final
from urllib.parse import urljoin, urlsplit

from caldav.davclient import DAVClient
from caldav.lib import error as caldav_error

from sync_core.convert.graph_note import SERIES_EXTRA
from sync_core.convert.ical import event_from_ical, event_to_ical, server_scheduled, uid_of
from sync_core.convert.recurrence import expand, parse_recurrence_id_text, recurrence_id_text
from sync_core.errors import (
    AlreadyExists,
    AuthenticationFailed,
    ItemError,
    NotFound,
    PayloadTooLarge,
    PreconditionFailed,
    SideError,
    StorageEmptied,
    Throttled,
    UnsupportedEvent,
)
from sync_core.http_sessions import tune_session
from sync_core.model import Event, Occurrence, in_window, instant_text
from sync_core.sides import caldav_xml as dx
from sync_core.sides.base import ChangeBatch, RemoteItem, SideName, WriteResult

log = logging.getLogger("davbridge.caldav")

DEFAULT_MAX_ITEM_BYTES: Final = 1 << 20
MULTIGET_CHUNK: Final = 50
#: Bodies kept from reads for later updates (see ``CalDAVCalendar._remember_body``).
MAX_CACHED_BODIES: Final = 2000
#: calendar-multiget requests in flight at once while reading many items.
READS_IN_FLIGHT: Final = 4
MAX_SYNC_ROUNDS: Final = 50
# RFC 6578 3.2 says 403 + DAV:valid-sync-token; servers also use these for stale tokens.
STALE_TOKEN_STATUSES: Final = frozenset({403, 409, 410, 412, 418, 507})
# The sync-collection REPORT itself is not supported (RFC 4918 / RFC 3253 3.6 supported-report).
REPORT_UNSUPPORTED_STATUSES: Final = frozenset({405, 415, 501})
ICS_CONTENT_TYPE: Final = "text/calendar; charset=utf-8"
XML_CONTENT_TYPE: Final = "application/xml; charset=utf-8"
_CURSOR_VERSION: Final = 1
# RFC 4791 5.3.2.1 CALDAV:no-uid-conflict; RFC 6638 3.2.4.x CALDAV:unique-scheduling-object-resource
# (Cyrus: UIDs are unique per user, across calendars).
_UID_CONFLICT: Final = frozenset({"no-uid-conflict", "unique-scheduling-object-resource"})
#: A series expanding to more occurrences than this inside the window is quarantined.
MAX_EXPANDED_OCCURRENCES: Final = 1000
_OCCURRENCE_ID = re.compile(r"^(?P<href>.+)#(?P<rid>\d{8}(?:T\d{6}Z?)?)$")

ExpandWhen = Callable[[Event], "str | None"]


def split_occurrence_id(item_id: str) -> tuple[str, str | None]:
    """(resource href, recurrence id text) of an expanded occurrence id; (id, None) otherwise."""
    match = _OCCURRENCE_ID.match(item_id)
    if match is None:
        return item_id, None
    return match.group("href"), match.group("rid")


def _window_key(window: tuple[datetime, datetime]) -> str:
    return f"{window[0].astimezone(UTC):%Y%m%dT%H%M}-{window[1].astimezone(UTC):%Y%m%dT%H%M}"


def _cursor_window(cursor: str | None) -> str | None:
    try:
        data = json.loads(cursor) if cursor else None
    except ValueError:
        return None
    value = data.get("w") if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def _resource_etag(etag: str | None) -> str | None:
    """The resource part of an item etag (an expanded occurrence's etag has a ``#hash``)."""
    if etag is None:
        return None
    head, sep, tail = etag.rpartition("#")
    return head if sep and re.fullmatch(r"[0-9a-f]{12}", tail) else etag


def _occurrence_etag(resource_etag: str | None, event: Event) -> str:
    return f"{resource_etag or ''}#{event.fingerprint()[:12]}"


# --- connection -----------------------------------------------------------------------------


def open_caldav(
    url: str,
    username: str,
    password: str,
    *,
    timeout: float = 30,
    verify: bool | str = True,
) -> DAVClient:
    """A ``DAVClient`` that sends HTTP Basic credentials with the FIRST request.

    DAVClient only builds credentials after a 401 challenge unless ``auth_type`` is given; a
    server that answers an anonymous PROPFIND with 207 (Cyrus lists public data) never sends
    that challenge, so ``auth_type="basic"`` is forced. No request is made here; the first
    read reports refused credentials as :class:`AuthenticationFailed`. ``verify`` is the TLS
    verification flag or a CA bundle path.
    """
    if not url.lower().startswith(("https://", "http://")):
        raise SideError("the CalDAV URL must start with https:// (or http:// for a local server)")
    try:
        client = DAVClient(
            url=url,
            username=username,
            password=password,
            auth_type="basic",
            timeout=timeout,  # type: ignore[arg-type]  # niquests takes float seconds
            ssl_verify_cert=verify,
            enable_rfc6764=False,
        )
        tune_session(client.session)
        return client
    except caldav_error.DAVError as exc:
        raise SideError(f"cannot set up the CalDAV client for {_origin(url)}: {type(exc).__name__}") from None


@dataclass(frozen=True)
class _Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes
    url: str

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        for key, value in self.headers.items():
            if key.lower() == wanted and value:
                return value
        return None

    def conditions(self) -> set[str]:
        return dx.error_conditions(self.body)


def _text(value: str | bytes) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


class _Stream:
    """A listing's multistatus read response by response (``caldav_xml.MultistatusStream``),
    its XML errors as :class:`SideError` naming the request."""

    def __init__(self, reply: _Reply, what: str) -> None:
        self._reply, self._what = reply, what
        try:
            self._stream = dx.MultistatusStream(reply.body)
        except dx.XMLError as exc:
            raise SideError(f"{what} on {urlsplit(reply.url).path}: {exc}") from None

    @property
    def sync_token(self) -> str | None:
        return self._stream.sync_token

    def responses(self) -> Iterator[dx.DavResponse]:
        try:
            yield from self._stream.responses()
        except dx.XMLError as exc:
            raise SideError(f"{self._what} on {urlsplit(self._reply.url).path}: {exc}") from None


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")


class _Http:
    """Raw requests over the DAVClient's session and credentials, counted and logged.

    429 / 503 are retried ``retries`` times, waiting for ``Retry-After`` (capped at
    ``max_wait`` seconds), then raise :class:`Throttled`; 423 Locked is retried
    ``LOCKED_RETRIES`` times with a short backoff (a server committing another write).
    Redirects are followed by hand, with method and body kept, and only within the same
    origin (credentials never leave it).
    """

    def __init__(self, client: DAVClient, *, retries: int = 2, max_wait: float = 5.0) -> None:
        self.client = client
        self.retries = retries
        self.max_wait = max_wait
        self.count = 0

    def send(
        self,
        method: str,
        url: str,
        *,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
    ) -> _Reply:
        hdrs: dict[str, str] = {
            _text(k): _text(v)
            for k, v in dict(self.client.headers).items()
            if _text(k).lower() not in ("content-type", "accept")
        }
        hdrs.update(headers or {})
        redirects = 0
        attempt = 0
        locked = 0
        while True:
            self.count += 1
            reply = self._once(method, url, body, hdrs)
            log.debug("%s %s -> %s", method, urlsplit(url).path, reply.status)
            if reply.status in (301, 302, 307, 308) and reply.header("Location") and redirects < 3:
                target = urljoin(url, reply.header("Location") or "")
                if _origin(target) != _origin(url):
                    raise SideError(
                        f"{method} {urlsplit(url).path} was redirected to another host ({_origin(target)}): "
                        "configure the CalDAV URL of that host instead"
                    )
                url, redirects = target, redirects + 1
                continue
            if reply.status == 423 and locked < LOCKED_RETRIES:
                # RFC 4918 11.3 423 Locked: some servers (Xandikos, a git store) lock the whole
                # collection while one write commits, so concurrent writes meet it briefly.
                time.sleep(min(0.05 * 2 ** locked, 1.0))
                locked += 1
                continue
            if reply.status in (429, 503):
                if attempt < self.retries:
                    attempt += 1
                    time.sleep(self._retry_after(reply))
                    continue
                raise Throttled(
                    f"CalDAV server {_origin(url)} kept answering HTTP {reply.status} to {method} "
                    f"after {attempt + 1} tries"
                )
            return reply

    def _retry_after(self, reply: _Reply) -> float:
        raw = reply.header("Retry-After")
        try:
            wait = float(raw) if raw else 1.0
        except ValueError:
            wait = 1.0
        return max(0.0, min(wait, self.max_wait))

    def _once(self, method: str, url: str, body: bytes, headers: Mapping[str, str]) -> _Reply:
        c = self.client
        proxies = {urlsplit(url).scheme: c.proxy} if c.proxy else None
        try:
            r = c.session.request(
                method,
                url,
                data=body or None,
                headers=dict(headers),
                auth=c.auth,
                timeout=c.timeout,
                verify=c.ssl_verify_cert,
                cert=c.ssl_cert,
                proxies=proxies,
                allow_redirects=False,
            )
        except Exception as exc:
            raise _transport_error(exc, url) from None
        return _Reply(int(r.status_code or 0), dict(r.headers or {}), r.content or b"", url)


_WRITE_METHODS: Final = frozenset({"PUT", "DELETE"})

#: Tries again after 423 Locked (0.05 s doubling, about 3 s in all), then the answer stands.
LOCKED_RETRIES = 6

_SSL_REASON: Final = re.compile(r"\[SSL: [A-Z0-9_]+\] ([^()\]\[]{3,160}?)\s*(?:\(_ssl|$|\)|')")


def _transport_error(exc: Exception, url: str) -> SideError:
    """Map a session exception to a SideError naming the cause, never the credentials."""
    origin = _origin(url)
    name = type(exc).__name__
    text = str(exc).lower()
    if "ssl" in name.lower() or "certificate" in text or "tls" in text:
        detail = _SSL_REASON.search(str(exc))
        if detail:
            reason = detail.group(1).strip().rstrip(":")
        elif "certificate" in text and "verify" in text:
            reason = "certificate verify failed"
        else:
            reason = "TLS handshake failed"
        return SideError(f"TLS error talking to {origin}: {reason} ({name}); check the server URL and its certificate")
    if "timeout" in name.lower() or "timed out" in text:
        return SideError(f"CalDAV server {origin} did not answer in time ({name})")
    if "connection" in name.lower() or isinstance(exc, OSError):
        return SideError(f"cannot connect to CalDAV server {origin} ({name}): refused, unreachable or DNS failure")
    return SideError(f"HTTP request to {origin} failed: {name}")


def _collection_error(reply: _Reply, what: str) -> SideError:
    """The error for a failed request on the calendar collection or a principal (whole side)."""
    where = f"{_origin(reply.url)}{urlsplit(reply.url).path}"
    st = reply.status
    if st == 401:
        return AuthenticationFailed(
            f"CalDAV server refused the credentials (HTTP 401) on {where}: check the user name and "
            "the app-specific password"
        )
    if st == 403:
        return AuthenticationFailed(
            f"CalDAV server denied access (HTTP 403) on {where}: the account lacks permission for "
            "this calendar, or the URL belongs to another user"
        )
    if st == 404:
        return SideError(f"calendar not found (HTTP 404) at {where}: it was deleted, or the URL is wrong")
    if st >= 500:
        return SideError(f"CalDAV server error HTTP {st} on {what} {where}")
    return SideError(f"unexpected HTTP {st} on {what} {where}")


# --- cursor -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Cursor:
    mode: str  # "sync" (RFC 6578 token) or "etag" (listing every time)
    token: str | None = None

    def dump(self) -> str:
        data: dict[str, Any] = {"v": _CURSOR_VERSION, "mode": self.mode}
        if self.token is not None:
            data["token"] = self.token
        return json.dumps(data, separators=(",", ":"))

    @staticmethod
    def load(raw: str | None) -> _Cursor | None:
        if not raw:
            return None
        try:
            data = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(data, dict) or data.get("v") != _CURSOR_VERSION:
            return None
        if data.get("mode") == "sync" and isinstance(data.get("token"), str) and data["token"]:
            return _Cursor("sync", data["token"])
        if data.get("mode") == "etag":
            return _Cursor("etag")
        return None


# --- reads --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Found:
    etag: str | None
    body: str


@dataclass(frozen=True)
class _Failed:
    reason: str


_GONE: Final = "gone"
_ReadResult = _Found | _Failed | str


@dataclass
class _SyncDelta:
    changed: dict[str, str | None]
    deleted: set[str]
    token: str


class _TokenRefused(Exception):
    def __init__(self, reason: str, *, unsupported: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.unsupported = unsupported


def resource_name(idempotency_key: str) -> str:
    """A safe, stable resource name (``<name>.ics``) for a create's idempotency key.

    Keys of letters, digits, ``-`` and ``_`` (up to 100) are used as they are; anything else is
    reduced to those characters and suffixed with a hash of the whole key, so two keys never
    share a name and a retry always targets the same one.
    """
    if not idempotency_key:
        raise ValueError("empty idempotency key")
    if re.fullmatch(r"[A-Za-z0-9_-]{1,100}", idempotency_key):
        return f"{idempotency_key}.ics"
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "-", idempotency_key).strip("-")[:60]
    digest = hashlib.sha256(idempotency_key.encode("utf-8")).hexdigest()[:24]
    return f"{cleaned}-{digest}.ics" if cleaned else f"{digest}.ics"


class CalDAVCalendar:
    """One CalDAV calendar collection as a :class:`~sync_core.sides.base.Side`.

    ``calendar_url`` is the collection URL (RFC 4791 4.2); ids are the members' href paths in
    one canonical encoding; etags are ``DAV:getetag`` values in quoted form. ``max_item_bytes``
    caps one resource (bigger ones are reported with an error and never parsed).
    ``request_count`` counts every HTTP request this object made (retries and redirects too).
    """

    name = SideName.CALDAV

    def __init__(
        self,
        client: DAVClient,
        calendar_url: str,
        *,
        max_item_bytes: int = DEFAULT_MAX_ITEM_BYTES,
        multiget_chunk: int = MULTIGET_CHUNK,
        max_sync_rounds: int = MAX_SYNC_ROUNDS,
        window: tuple[datetime, datetime] | None = None,
        expand_when: ExpandWhen | None = None,
    ) -> None:
        url = urljoin(str(client.url), calendar_url)
        if not url.endswith("/"):
            url += "/"
        self.url = url
        self.path = dx.normalize_href(url)
        self.max_item_bytes = max_item_bytes
        self.multiget_chunk = max(1, multiget_chunk)
        self.max_sync_rounds = max(1, max_sync_rounds)
        self._http = _Http(client)
        self.window = window
        self.expand_when = expand_when
        self._auto_schedule: bool | None = None
        # Bodies of the last read, per id, so an update keeps other clients' properties without
        # a second GET (RFC 4791 5.3.2 replaces the whole resource).
        self._bodies: dict[str, _Found] = {}
        self._writes = threading.Condition()
        self._writes_in_flight = 0
        self._writes_overlapped = False  # two writes were in flight at once, this run
        self._one_write_at_a_time = False

    @property
    def request_count(self) -> int:
        return self._http.count

    # -- helpers --------------------------------------------------------------------------------

    def close(self) -> None:
        """Close this calendar's HTTP connections (a server has few connection slots: Cyrus
        httpd serves each kept-alive connection with a process of its ``maxchild``)."""
        with contextlib.suppress(Exception):
            self._http.client.session.close()

    def _remember_body(self, item: str, found: _Found) -> None:
        """Keep a read body for a later update; at most ``MAX_CACHED_BODIES`` (the oldest go:
        an update without one GETs the resource first), so a first read of a huge calendar
        does not hold every body."""
        self._bodies.pop(item, None)
        self._bodies[item] = found
        while len(self._bodies) > MAX_CACHED_BODIES:
            del self._bodies[next(iter(self._bodies))]

    def resource_of(self, item_id: str) -> str:
        """The resource an item lives in (an expanded occurrence: its series' resource)."""
        return dx.normalize_href(split_occurrence_id(item_id)[0])

    def _url(self, item_id: str) -> str:
        return urljoin(self.url, dx.normalize_href(item_id))

    def _is_member(self, item_id: str) -> bool:
        return item_id != self.path and not item_id.endswith("/")

    def _send(
        self,
        method: str,
        url: str,
        *,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        depth: str | None = None,
        content_type: str | None = None,
    ) -> _Reply:
        hdrs = dict(headers or {})
        if depth is not None:
            hdrs["Depth"] = depth
        if content_type:
            hdrs["Content-Type"] = content_type
        if method not in _WRITE_METHODS:
            return self._http.send(method, url, body=body, headers=hdrs)
        return self._write(method, url, body, hdrs)

    def _write(self, method: str, url: str, body: bytes, headers: Mapping[str, str]) -> _Reply:
        """A PUT or DELETE. Writes may run on several threads (``apply_plan``'s workers); a
        server that fails a write (423 or 500) once writes overlapped (Xandikos commits each
        write to git and fails the loser of a race) gets that write again once no other is in
        flight, and every later write one at a time."""
        reply = self._write_once(method, url, body, headers)
        if self._writes_overlapped and reply.status in (423, 500):
            if not self._one_write_at_a_time:
                log.info("%s: the server failed a %s made alongside other writes (HTTP %d); "
                         "writing one at a time from now on", self.path, method, reply.status)
            self._one_write_at_a_time = True
            reply = self._write_once(method, url, body, headers)
        return reply

    def _write_once(self, method: str, url: str, body: bytes, headers: Mapping[str, str]) -> _Reply:
        with self._writes:
            if self._one_write_at_a_time:
                self._writes.wait_for(lambda: self._writes_in_flight == 0, timeout=120)
            self._writes_in_flight += 1
            self._writes_overlapped = self._writes_overlapped or self._writes_in_flight > 1
        try:
            return self._http.send(method, url, body=body, headers=headers)
        finally:
            with self._writes:
                self._writes_in_flight -= 1
                self._writes.notify_all()

    def _stream(self, reply: _Reply, what: str) -> _Stream:
        return _Stream(reply, what)

    def _multistatus(self, reply: _Reply, what: str) -> dx.Multistatus:
        try:
            return dx.parse_multistatus(reply.body)
        except dx.XMLError as exc:
            raise SideError(f"{what} on {urlsplit(reply.url).path}: {exc}") from None

    # -- Side: changes --------------------------------------------------------------------------

    def changes(self, cursor: str | None, known: Mapping[str, str | None]) -> ChangeBatch:
        """What changed since ``cursor``; see the module docstring for the strategy.

        - no cursor: the collection's DAV:sync-token (RFC 6578 4) is read first, then a full
          etag listing (so nothing written in between is lost); the cursor is that token, or
          etag mode when the server has none;
        - sync cursor: sync-collection REPORT (RFC 6578 3.2) from the token, truncation
          (3.6) followed; a refused token, or a reply that is the whole collection again,
          gives a full listing with ``reset=True``;
        - etag cursor: a full listing every time.

        In a full listing, ``deleted`` is every id of ``known`` that is missing from it and
        that a calendar-multiget confirms gone (404). Bodies are fetched only for ids whose
        etag differs from ``known``.
        """
        batch = self._changes(cursor, known)
        moved = self.window is not None and _cursor_window(cursor) != _window_key(self.window)
        batch = self._settle_occurrences(batch, known, window_moved=moved)
        if self.window is not None and batch.cursor:
            data = json.loads(batch.cursor)
            data["w"] = _window_key(self.window)
            batch.cursor = json.dumps(data, separators=(",", ":"))
        return batch

    @staticmethod
    def _index_known(known: Mapping[str, str | None]) -> tuple[dict[str, str | None], dict[str, str]]:
        """``known`` by normalised href: (etag of each resource, the caller's spelling)."""
        spelled: dict[str, str] = {}
        known_n: dict[str, str | None] = {}
        for k, v in known.items():
            href, rid = split_occurrence_id(k)
            canonical = dx.normalize_href(href)
            if rid is None:
                spelled[canonical] = k
            else:
                spelled.setdefault(canonical, href)
            known_n[canonical] = dx.normalize_etag(_resource_etag(v))
        return known_n, spelled

    def _changes(self, cursor: str | None, known: Mapping[str, str | None]) -> ChangeBatch:
        state = _Cursor.load(cursor)
        if state is None:
            if cursor:
                log.warning("unreadable cursor for %s: full listing", self.path)
            return self._full_listing(*self._index_known(known), reset=bool(cursor), token=None, fetch_token=True)
        if state.mode == "etag" or state.token is None:
            return self._full_listing(*self._index_known(known), reset=False, token=None, fetch_token=False)
        try:
            delta = self._sync(state.token)
        except _TokenRefused as exc:
            log.info("sync token refused on %s (%s): full listing", self.path, exc.reason)
            return self._full_listing(*self._index_known(known), reset=True, token=None,
                                      fetch_token=not exc.unsupported)
        if not delta.changed and not delta.deleted:
            # Nothing changed: the cost stays that of the REPORT, whatever the calendar's size
            # (``known`` is not even read, so the caller may load it lazily).
            return ChangeBatch(cursor=_Cursor("sync", delta.token).dump())
        known_n, spelled = self._index_known(known)
        if self._looks_like_restart(delta, known_n):
            log.info("sync on %s returned the whole collection for an incremental token: full listing", self.path)
            return self._full_listing(known_n, spelled, reset=True, token=delta.token, fetch_token=False)
        wanted = [i for i, etag in delta.changed.items() if etag is None or known_n.get(i) != etag]
        items = self._items(wanted, delta.changed, spelled)
        deleted = [spelled.get(i, i) for i in sorted(delta.deleted)]
        return ChangeBatch(changed=items, deleted=deleted, cursor=_Cursor("sync", delta.token).dump())

    def _settle_occurrences(self, batch: ChangeBatch, known: Mapping[str, str | None], *,
                            window_moved: bool) -> ChangeBatch:
        """Translate resource-level results to the ids the caller holds (expanded series).

        A deleted resource deletes every known occurrence of it; a re-read resource deletes
        its known items that it no longer yields (an occurrence cancelled or no longer in the
        rule, inside the window; a series that switched between expanded and whole). When the
        window moved, expanded series are read again so new occurrences appear.
        """
        if not batch.changed and not batch.deleted and not window_moved:
            return batch  # nothing read, nothing gone: no known item to translate
        by_href: dict[str, list[str]] = {}
        for k in known:
            href, _ = split_occurrence_id(k)
            by_href.setdefault(dx.normalize_href(href), []).append(k)
        changed = list(batch.changed)
        read_hrefs = {dx.normalize_href(split_occurrence_id(i.id)[0]) for i in changed}
        stale = [
            h for h, ids in by_href.items()
            if h not in read_hrefs and any(split_occurrence_id(i)[1] for i in ids)
        ]
        if stale and window_moved:
            extra = self._items(stale, {}, {h: h for h in stale})
            changed.extend(item for item in extra if not self._unchanged(item, known))
            read_hrefs.update(stale)
        yielded: dict[str, set[str | None]] = {}  # href -> recurrence ids read now (None: the whole item)
        for read in changed:
            href, rid = split_occurrence_id(read.id)
            yielded.setdefault(dx.normalize_href(href), set()).add(rid)
        deleted = set()
        for gone in batch.deleted:
            deleted.update(by_href.get(dx.normalize_href(split_occurrence_id(gone)[0]), [gone]))
        for href in read_hrefs:
            now = yielded.get(href, set())
            for k in by_href.get(href, []):
                _, rid = split_occurrence_id(k)
                if k in deleted or rid in now:
                    continue
                if rid is None:
                    if now:
                        deleted.add(k)  # was one item, now expanded
                elif self.window is None or in_window(parse_recurrence_id_text(rid, like=date.min), *self.window):
                    deleted.add(k)  # gone, not merely out of the window
        batch.changed = changed
        batch.deleted = sorted(deleted)
        return batch

    @staticmethod
    def _unchanged(item: RemoteItem, known: Mapping[str, str | None]) -> bool:
        return item.id in known and known[item.id] == item.etag

    @staticmethod
    def _looks_like_restart(delta: _SyncDelta, known: Mapping[str, str | None]) -> bool:
        """A stale token silently answered with the whole collection (PRODUCT.md trap 9).

        Own writes also come back with the etag we stored, so a few unchanged items are
        normal; the whole (or most of the) known collection unchanged and no removal is not.
        A false alarm costs one listing request.
        """
        if delta.deleted or not known:
            return False
        unchanged = sum(1 for i, e in delta.changed.items() if e is not None and known.get(i) == e)
        return unchanged >= 3 and unchanged * 2 >= len(known) and unchanged * 2 >= len(delta.changed)

    def _sync(self, token: str) -> _SyncDelta:
        """RFC 6578 3.2 sync-collection, Depth 0, following 507 truncation (3.6)."""
        changed: dict[str, str | None] = {}
        deleted: set[str] = set()
        for _ in range(self.max_sync_rounds):
            reply = self._send(
                "REPORT", self.url, body=dx.sync_collection_body(token), depth="0", content_type=XML_CONTENT_TYPE
            )
            if reply.status != 207:
                self._token_failure(reply)
            ms = self._stream(reply, "sync-collection")
            truncated = False
            for r in ms.responses():
                if r.status == 507:
                    truncated = True
                    continue
                item = dx.normalize_href(r.href)
                if not self._is_member(item):
                    continue
                if r.status in (404, 410):
                    deleted.add(item)
                    changed.pop(item, None)
                elif r.status is None or 200 <= r.status < 300:
                    changed[item] = dx.normalize_etag(r.text(dx.GETETAG))
                    deleted.discard(item)
                else:
                    log.info("sync-collection on %s: member %s with status %s ignored", self.path, item, r.status)
            if not ms.sync_token:
                raise _TokenRefused("HTTP 207 without a DAV:sync-token")
            if not truncated:
                return _SyncDelta(changed, deleted, ms.sync_token)
            if ms.sync_token == token:
                raise _TokenRefused("truncated result without a new token")
            log.info("sync-collection on %s truncated (507): continuing from the new token", self.path)
            token = ms.sync_token
        raise _TokenRefused(f"still truncated after {self.max_sync_rounds} rounds")

    def _token_failure(self, reply: _Reply) -> None:
        """Classify a non-207 answer to sync-collection (RFC 6578 3.2 / 3.7)."""
        st = reply.status
        conds = reply.conditions()
        if st in (401, 404):
            raise _collection_error(reply, "sync-collection")
        if "valid-sync-token" in conds:
            raise _TokenRefused(f"HTTP {st} valid-sync-token")
        if "supported-report" in conds or st in REPORT_UNSUPPORTED_STATUSES:
            raise _TokenRefused(f"HTTP {st}: sync-collection not supported", unsupported=True)
        if st >= 500 and st != 507:
            raise _collection_error(reply, "sync-collection")
        if st in STALE_TOKEN_STATUSES or st == 400:
            raise _TokenRefused(f"HTTP {st}")
        # Anything else: the listing that follows reports the collection's own state.
        raise _TokenRefused(f"HTTP {st}")

    def _current_token(self) -> str | None:
        """DAV:sync-token of the collection (RFC 6578 4), ``None`` when the server has none."""
        reply = self._send(
            "PROPFIND", self.url, body=dx.propfind_body([dx.SYNC_TOKEN]), depth="0", content_type=XML_CONTENT_TYPE
        )
        if reply.status != 207:
            raise _collection_error(reply, "PROPFIND")
        responses = self._multistatus(reply, "PROPFIND sync-token").responses
        mine = [r for r in responses if dx.normalize_href(r.href) == self.path] or responses[:1]
        for r in mine:
            return (r.text(dx.SYNC_TOKEN) or "").strip() or None
        return None

    def _listing(self) -> dict[str, str | None]:
        """Every member and its etag: RFC 4918 9.1 PROPFIND Depth 1 (DAV:getetag, resourcetype)."""
        reply = self._send(
            "PROPFIND",
            self.url,
            body=dx.propfind_body([dx.GETETAG, dx.RESOURCETYPE]),
            depth="1",
            content_type=XML_CONTENT_TYPE,
        )
        if reply.status != 207:
            raise _collection_error(reply, "PROPFIND")
        out: dict[str, str | None] = {}
        for r in self._stream(reply, "PROPFIND listing").responses():
            item = dx.normalize_href(r.href)
            if item.rstrip("/") == self.path.rstrip("/") and r.status in (404, 410):
                # Xandikos answers a PROPFIND on a missing collection with 207 + an inner 404.
                raise SideError(
                    f"calendar not found (HTTP {r.status}) at {self.url}: it was deleted, or the URL is wrong"
                )
            if not self._is_member(item) or dx.is_collection(r):
                continue
            if r.status is not None and not 200 <= r.status < 300:
                continue
            out[item] = dx.normalize_etag(r.text(dx.GETETAG))
        return out

    def _full_listing(
        self,
        known: Mapping[str, str | None],
        spelled: Mapping[str, str],
        *,
        reset: bool,
        token: str | None,
        fetch_token: bool,
    ) -> ChangeBatch:
        if fetch_token and token is None:
            token = self._current_token()
        listing = self._listing()
        if not listing and known:
            raise StorageEmptied(
                f"CalDAV calendar {self.path} lists no items while {len(known)} are linked; "
                "refusing to treat that as deletions"
            )
        missing = [i for i in known if i not in listing]
        deleted: list[str] = []
        items: list[RemoteItem] = []
        if missing:
            # RFC 4791 7.9: a member missing from the listing must also be gone when asked for.
            for item, result in self._read(missing).items():
                if result == _GONE:
                    deleted.append(spelled.get(item, item))
                elif isinstance(result, _Found):
                    # listed wrongly: it exists; report it only if it changed
                    listing[item] = result.etag
                    if result.etag is None or known.get(item) != result.etag:
                        items.extend(self._to_items(item, result, spelled))
        wanted = [i for i, etag in listing.items() if i not in missing and (etag is None or known.get(i) != etag)]
        items = self._items(wanted, listing, spelled) + items
        cursor = _Cursor("sync", token) if token else _Cursor("etag")
        return ChangeBatch(changed=items, deleted=sorted(deleted), cursor=cursor.dump(), reset=reset)

    # -- reading bodies -------------------------------------------------------------------------

    def _read(self, ids: Iterable[str]) -> dict[str, _ReadResult]:
        """Bodies of these (canonical) ids: calendar-multiget in chunks, GET for the leftovers."""
        out: dict[str, _ReadResult] = {}
        for part in self._read_chunks(ids):
            out.update(part)
        return out

    def _read_chunks(self, ids: Iterable[str]) -> Iterator[dict[str, _ReadResult]]:
        """:meth:`_read` a chunk at a time, in order: calendar-multiget chunks of
        ``multiget_chunk`` ids, ``READS_IN_FLIGHT`` of them fetched ahead while the caller
        works on the current one (so at most that many chunks' bodies are held at once)."""
        ids = list(dict.fromkeys(ids))
        chunks = [ids[start : start + self.multiget_chunk] for start in range(0, len(ids), self.multiget_chunk)]
        if len(chunks) <= 1:
            for chunk in chunks:
                yield self._with_leftovers(chunk, self._multiget(chunk))
            return
        with ThreadPoolExecutor(max_workers=READS_IN_FLIGHT, thread_name_prefix="multiget") as pool:
            upcoming = iter(chunks)
            ahead = deque((chunk, pool.submit(self._multiget, chunk))
                          for chunk in itertools.islice(upcoming, READS_IN_FLIGHT))
            while ahead:
                chunk, fetching = ahead.popleft()
                found = fetching.result()
                following = next(upcoming, None)
                if following is not None:
                    ahead.append((following, pool.submit(self._multiget, following)))
                yield self._with_leftovers(chunk, found)

    def _with_leftovers(self, chunk: list[str], found: dict[str, _ReadResult]) -> dict[str, _ReadResult]:
        """Ids a multiget did not answer are read one by one (GET)."""
        for item in chunk:
            if item not in found:
                found[item] = self._get_one(item)
        return {item: found[item] for item in chunk}

    def _multiget(self, chunk: list[str]) -> dict[str, _ReadResult]:
        # RFC 4791 7.9: no Depth header needed ("the Depth header MUST be ignored").
        reply = self._send("REPORT", self.url, body=dx.multiget_body(chunk), content_type=XML_CONTENT_TYPE)
        if reply.status == 401 or reply.status >= 500:
            raise _collection_error(reply, "calendar-multiget")
        if reply.status != 207:
            log.info("calendar-multiget on %s answered HTTP %s: reading items one by one", self.path, reply.status)
            return {}
        try:
            ms = dx.parse_multistatus(reply.body)
        except dx.XMLError:
            log.warning("calendar-multiget on %s: unparseable answer, reading items one by one", self.path)
            return {}
        wanted = set(chunk)
        out: dict[str, _ReadResult] = {}
        for r in ms.responses:
            item = dx.normalize_href(r.href)
            if item not in wanted:
                continue
            if r.status in (404, 410):
                out[item] = _GONE
                continue
            data = r.props.get(dx.CALENDAR_DATA)
            if data is not None:
                out[item] = _Found(dx.normalize_etag(r.text(dx.GETETAG)), "".join(data.itertext()))
            elif r.prop_status.get(dx.CALENDAR_DATA) in (404, 410) and dx.GETETAG not in r.props:
                out[item] = _GONE
            # anything else: left out, read with a GET
        return out

    def _get_one(self, item: str) -> _ReadResult:
        reply = self._send("GET", self._url(item), headers={"Accept": "text/calendar"})
        if reply.status in (404, 410):
            return _GONE
        if reply.status == 401 or reply.status >= 500:
            raise _collection_error(reply, "GET")
        if reply.status != 200:
            return _Failed(f"could not read the item: HTTP {reply.status}")
        return _Found(dx.normalize_etag(reply.header("ETag")), reply.body.decode("utf-8", errors="replace"))

    def _items(
        self, wanted: list[str], etags: Mapping[str, str | None], spelled: Mapping[str, str]
    ) -> list[RemoteItem]:
        out: list[RemoteItem] = []
        for item, result in ((i, r) for part in self._read_chunks(wanted) for i, r in part.items()):
            if result == _GONE:
                continue  # removed since it was listed: the next read reports it
            if isinstance(result, _Failed):
                out.append(
                    RemoteItem(id=spelled.get(item, item), etag=etags.get(item), event=None, error=result.reason)
                )
                continue
            assert isinstance(result, _Found)
            if result.etag is None and etags.get(item) is not None:
                result = _Found(etags.get(item), result.body)
            out.extend(self._to_items(item, result, spelled))
        return out

    def _to_items(self, item: str, found: _Found, spelled: Mapping[str, str]) -> list[RemoteItem]:
        """The items one resource yields: itself, or its occurrences when expanded."""
        single = self._to_item(item, found, spelled)
        event = single.event
        if event is None or event.recurrence is None:
            return [single]
        if self.window is None:
            return [single]
        reason = self.expand_when(event) if self.expand_when is not None else None
        if reason is None:
            return [replace(single, event=event.clipped(*self.window))]
        return self._occurrences(single, event, reason)

    def _occurrences(self, single: RemoteItem, series: Event, reason: str) -> list[RemoteItem]:
        """One single-event item per occurrence inside the window (docs/RECURRENCE.md fallback)."""
        assert series.recurrence is not None and self.window is not None
        start, end = self.window
        try:
            starts = expand(
                series.recurrence.rule, series.start, window_start=start, window_end=end,
                duration=series.duration, rdates=series.recurrence.rdates, exdates=series.exdates,
                limit=MAX_EXPANDED_OCCURRENCES,
            )
        except ValueError:
            return [replace(single, event=None, error=(
                f"{reason}; the series has more than {MAX_EXPANDED_OCCURRENCES} occurrences in the "
                "sync window, too many to copy one by one"))]
        modified = {instant_text(o.recurrence_id): o for o in series.overrides}
        cancelled = {instant_text(value) for value in series.exdates}
        rids = {instant_text(rid): rid for rid in starts}
        for key, override in modified.items():
            if in_window(override.recurrence_id, start, end):
                rids.setdefault(key, override.recurrence_id)
        resource_etag = single.etag
        out: list[RemoteItem] = []
        for key in sorted(rids):
            rid = rids[key]
            if key in cancelled:
                continue
            event = modified[key].event if key in modified else series.occurrence_at(rid)
            text = recurrence_id_text(rid)
            event = replace(
                event, uid=f"{series.uid}#{text}", recurrence=None, exdates=(), overrides=(),
                extra=((SERIES_EXTRA, reason),),
            )
            out.append(RemoteItem(
                id=f"{single.id}#{text}",
                etag=_occurrence_etag(resource_etag, event),
                event=event,
                match_uids=frozenset({event.uid or ""}),
                notice=f"series expanded into single events: {reason}",
            ))
        return out

    def _to_item(self, item: str, found: _Found, spelled: Mapping[str, str]) -> RemoteItem:
        """Parse one body; any failure is this item's error only (PRODUCT.md trap 7)."""
        rid = spelled.get(item, item)
        size = len(found.body.encode("utf-8"))
        if size > self.max_item_bytes:
            log.warning("item %s is %d bytes, over the %d limit: not parsed", item, size, self.max_item_bytes)
            return RemoteItem(
                id=rid,
                etag=found.etag,
                event=None,
                error=f"payload too large: {size} bytes (limit {self.max_item_bytes})",
            )
        self._remember_body(item, found)
        try:
            event = event_from_ical(found.body)
        except ItemError as exc:
            log.info("item %s not converted: %s", item, type(exc).__name__)
            return RemoteItem(
                id=rid, etag=found.etag, event=None, match_uids=_uids(found.body), error=f"{type(exc).__name__}: {exc}"
            )
        except Exception as exc:  # a converter bug must not stop the calendar either
            log.warning("item %s: converter failed with %s", item, type(exc).__name__)
            return RemoteItem(
                id=rid,
                etag=found.etag,
                event=None,
                match_uids=_uids(found.body),
                error=f"conversion failed: {type(exc).__name__}: {exc}",
            )
        uids = frozenset({event.uid}) if event.uid else _uids(found.body)
        return RemoteItem(id=rid, etag=found.etag, event=event, match_uids=uids)

    # -- Side: get ------------------------------------------------------------------------------

    def get(self, ids: Iterable[str]) -> list[RemoteItem]:
        """Read these items now with calendar-multiget (RFC 4791 7.9); missing ones are left out.

        Items that exist but cannot be read or converted come back with ``error`` (they are not
        missing). Each item carries the id in the caller's spelling.
        """
        wanted = list(ids)
        spelled: dict[str, str] = {}
        for i in wanted:
            href, rid = split_occurrence_id(i)
            spelled.setdefault(dx.normalize_href(href), href if rid else i)
        items = self._items(list(spelled), {}, spelled)
        asked = set(wanted)
        return [item for item in items if item.id in asked or split_occurrence_id(item.id)[1] is None]

    # -- Side: writes ---------------------------------------------------------------------------

    def id_for_key(self, idempotency_key: str) -> str:
        """The id :meth:`create` uses for this key (where a retried create would land)."""
        return dx.normalize_href(self.path + resource_name(idempotency_key))

    def find_created(self, event: Event, *, idempotency_key: str) -> RemoteItem | None:
        """The resource :meth:`create` makes for this key, if it is there (one GET)."""
        found = self.get([self.id_for_key(idempotency_key)])
        return found[0] if found else None

    def create(self, event: Event, *, idempotency_key: str) -> WriteResult:
        """PUT a new resource with ``If-None-Match: *`` (RFC 4791 5.3.2, RFC 7232 3.2).

        The name comes from the key, so a retry targets the same resource and gets 412:
        :class:`AlreadyExists`. A server that finds the UID in another resource (RFC 4791
        5.3.2.1 CALDAV:no-uid-conflict) also raises :class:`AlreadyExists`.
        """
        item = self.id_for_key(idempotency_key)
        if not event.uid:
            # RFC 5545 3.8.4.7 UID is required; derived from the key so a retry writes the same.
            event = event.with_uid(f"{resource_name(idempotency_key)[:-4]}@davbridge")
        body = event_to_ical(replace(event, extra=()))
        self._check_size(body, item)
        reply = self._send(
            "PUT",
            self._url(item),
            body=body.encode("utf-8"),
            headers={"If-None-Match": "*"},
            content_type=ICS_CONTENT_TYPE,
        )
        if reply.status == 412 and not reply.conditions() & _UID_CONFLICT:
            raise AlreadyExists(f"{item} already exists (an earlier create with this key)")
        self._check_write(reply, item, "PUT")
        location = reply.header("Location")
        if reply.status == 201 and location:
            item = dx.normalize_href(urljoin(self._url(item), location))
        return self._written(item, reply, body, event)

    def update(self, item_id: str, event: Event, *, etag: str | None) -> WriteResult:
        """Replace the item's synced fields with a PUT conditional on ``etag`` (RFC 7232 3.1).

        The current body (from this run's read, else a GET) is passed to ``event_to_ical`` so
        properties other clients set survive (RFC 4791 5.3.2 PUT replaces the whole resource),
        and its UID is kept (RFC 4791 5.3.2.1: a PUT must not change a resource's UID).
        Without ``etag``, the PUT is conditional on the etag of the body it was built from, so
        a concurrent edit is never overwritten blindly.
        """
        href, rid = split_occurrence_id(item_id)
        if rid is not None:
            return self._write_occurrence(item_id, href, rid, event, etag)
        item = dx.normalize_href(item_id)
        want = dx.normalize_etag(etag)
        current = self._bodies.get(item)
        if current is None or current.etag is None or (want is not None and current.etag != want):
            current = self._fetch_current(item)
            if want is not None and current.etag is not None and current.etag != want:
                raise PreconditionFailed(f"{item} changed since it was read (etag {current.etag} != {want})")
        self._scheduling_guard(current.body, item)
        stored_uid = _uid(current.body)
        if stored_uid and event.uid != stored_uid:
            # RFC 4791 5.3.2.1 CALDAV:no-uid-conflict: a PUT must not change a resource's UID.
            event = event.with_uid(stored_uid)
        event = self._with_outside(event, current.body)
        body = event_to_ical(event, previous=current.body)
        self._check_size(body, item)
        match = want or current.etag
        headers = {"If-Match": match} if match else {}
        reply = self._send(
            "PUT", self._url(item), body=body.encode("utf-8"), headers=headers, content_type=ICS_CONTENT_TYPE
        )
        if reply.status == 412:
            self._bodies.pop(item, None)
            raise PreconditionFailed(f"{item} changed since it was read (HTTP 412)")
        if reply.status in (404, 410):
            self._bodies.pop(item, None)
            raise NotFound(f"{item} is gone (HTTP {reply.status})")
        self._check_write(reply, item, "PUT")
        return self._written(item, reply, body, event, id_as=item_id)

    def _scheduling_guard(self, body: str, item: str) -> None:
        """Refuse to change or delete a meeting the CalDAV server schedules (RFC 6638 3.2):
        on a server with ``calendar-auto-schedule`` (RFC 6638 2, DAV header of OPTIONS),
        that would send invitations, updates, cancellations or replies (PRODUCT.md trap 6)."""
        if not server_scheduled(body):
            return
        if self._auto_schedule is None:
            reply = self._send("OPTIONS", self.url)
            dav = ",".join(v for k, v in reply.headers.items() if k.lower() == "dav")
            self._auto_schedule = "calendar-auto-schedule" in dav.lower()
        if self._auto_schedule:
            raise UnsupportedEvent(
                f"{item}: meeting scheduled by the CalDAV server (ORGANIZER/ATTENDEE without "
                "SCHEDULE-AGENT=CLIENT): changing or deleting it would send messages to its attendees"
            )

    def _with_outside(self, event: Event, previous_body: str) -> Event:
        """Keep the stored series' exdates and overrides outside the window (docs/RECURRENCE.md)."""
        if event.recurrence is None or self.window is None:
            return event
        try:
            previous = event_from_ical(previous_body)
        except ItemError:
            return event
        return event.with_outside(previous, *self.window)

    def _write_occurrence(self, item_id: str, href: str, rid: str, event: Event | None,
                          etag: str | None) -> WriteResult:
        """Edit (``event``) or cancel (``None``) one occurrence of an expanded series: a
        RECURRENCE-ID override or an EXDATE in the resource (RFC 5545 3.8.4.4, 3.8.5.1), PUT
        with If-Match on the resource. ``etag``'s hash part must still match the occurrence."""
        item = dx.normalize_href(href)
        current = self._fetch_current(item)
        self._scheduling_guard(current.body, item)
        series = event_from_ical(current.body)
        if series.recurrence is None:
            raise NotFound(f"{item} no longer holds a series")
        value = parse_recurrence_id_text(rid, like=series.start)
        key = instant_text(value)
        mine = [i for i in self._to_items(item, current, {item: href}) if i.id == item_id]
        if etag is not None and mine and mine[0].etag is not None and etag.rpartition("#")[2] != (
                mine[0].etag.rpartition("#")[2]):
            raise PreconditionFailed(f"{item_id} changed since it was read")
        overrides = tuple(o for o in series.overrides if instant_text(o.recurrence_id) != key)
        exdates = tuple(d for d in series.exdates if instant_text(d) != key)
        if event is None:
            exdates += (value,)
        else:
            own = replace(event, uid=series.uid, recurrence=None, exdates=(), overrides=(), extra=())
            overrides += (Occurrence(value, own),)
        updated = series.with_series(exdates, overrides)
        body = event_to_ical(updated, previous=current.body)
        self._check_size(body, item)
        headers = {"If-Match": current.etag} if current.etag else {}
        reply = self._send("PUT", self._url(item), body=body.encode("utf-8"), headers=headers,
                           content_type=ICS_CONTENT_TYPE)
        if reply.status == 412:
            raise PreconditionFailed(f"{item} changed since it was read (HTTP 412)")
        self._check_write(reply, item, "PUT")
        written = self._written(item, reply, body, updated)
        again = [i for i in self._to_items(item, _Found(written.etag, body), {item: href}) if i.id == item_id]
        if again and again[0].event is not None:
            return WriteResult(item_id, again[0].etag, again[0].event)
        fallback = event if event is not None else series
        return WriteResult(item_id, _occurrence_etag(written.etag, fallback), fallback)

    def delete(self, item_id: str, *, etag: str | None) -> None:
        """DELETE the resource (RFC 4918 9.6), with ``If-Match`` when ``etag`` is given.

        404 / 410: already gone, fine. 412: :class:`PreconditionFailed` (edited since read).
        An expanded occurrence is cancelled inside its resource instead (EXDATE).
        """
        href, rid = split_occurrence_id(item_id)
        if rid is not None:
            with contextlib.suppress(NotFound):
                self._write_occurrence(item_id, href, rid, None, etag)
            return
        item = dx.normalize_href(item_id)
        want = dx.normalize_etag(etag)
        known = self._bodies.get(item)
        try:
            current = known if known is not None else self._fetch_current(item)
        except NotFound:
            return
        self._scheduling_guard(current.body, item)
        reply = self._send("DELETE", self._url(item), headers={"If-Match": want} if want else {})
        self._bodies.pop(item, None)
        if reply.status in (404, 410):
            log.info("DELETE %s: already gone (HTTP %s)", item, reply.status)
            return
        if reply.status == 412:
            raise PreconditionFailed(f"{item} changed since it was read (HTTP 412)")
        self._check_write(reply, item, "DELETE")

    def _fetch_current(self, item: str) -> _Found:
        reply = self._send("GET", self._url(item), headers={"Accept": "text/calendar"})
        if reply.status in (404, 410):
            raise NotFound(f"{item} is gone (HTTP {reply.status})")
        if reply.status != 200:
            self._check_write(reply, item, "GET")
            raise SideError(f"GET {item}: unexpected HTTP {reply.status}")
        return _Found(dx.normalize_etag(reply.header("ETag")), reply.body.decode("utf-8", errors="replace"))

    def _check_size(self, body: str, item: str) -> None:
        size = len(body.encode("utf-8"))
        if size > self.max_item_bytes:
            raise PayloadTooLarge(f"{item}: {size} bytes to write, over the {self.max_item_bytes} limit")

    def _check_write(self, reply: _Reply, item: str, method: str) -> None:
        """Map a non-success answer to a write (RFC 4791 5.3.2.1 preconditions)."""
        st = reply.status
        if 200 <= st < 300:
            return
        conds = reply.conditions()
        log.info("%s %s -> HTTP %s %s", method, item, st, sorted(conds))
        conflict = sorted(conds & _UID_CONFLICT)
        if conflict:
            other = dx.error_hrefs(reply.body, conflict[0])
            where = dx.normalize_href(other[0]) if other else "another resource"
            raise AlreadyExists(f"the event's UID is already used by {where} (HTTP {st} {conflict[0]})")
        if st == 413 or "max-resource-size" in conds:
            raise PayloadTooLarge(f"{item}: the server refused the size (HTTP {st})")
        if st == 401 or (st == 403 and (not conds or "need-privileges" in conds)):
            raise _collection_error(reply, method)
        if st in (400, 403, 409, 415, 422):
            # RFC 4791 5.3.2.1 preconditions (valid-calendar-data, ...): this item only.
            reason = ", ".join(sorted(conds)) or "no reason given"
            raise ItemError(f"the server refused {item}: HTTP {st} ({reason})")
        if st >= 500:
            raise SideError(f"CalDAV server error HTTP {st} on {method} {item}")
        raise SideError(f"unexpected HTTP {st} on {method} {item}")

    def _written(self, item: str, reply: _Reply, body: str, event: Event, *, id_as: str | None = None) -> WriteResult:
        """Etag after a PUT: the ETag header, else a Depth 0 PROPFIND (RFC 4791 5.3.4 lets a
        server that changed the body omit it)."""
        etag = dx.normalize_etag(reply.header("ETag"))
        if etag is None:
            etag = self._propfind_etag(item)
        try:
            stored = event_from_ical(body)
        except Exception:
            stored = event
        if self.window is not None:
            stored = stored.clipped(*self.window)
        if etag is not None:
            self._remember_body(item, _Found(etag, body))
        else:
            self._bodies.pop(item, None)
        return WriteResult(id=id_as if id_as is not None else item, etag=etag, event=stored)

    def _propfind_etag(self, item: str) -> str | None:
        reply = self._send(
            "PROPFIND", self._url(item), body=dx.propfind_body([dx.GETETAG]), depth="0", content_type=XML_CONTENT_TYPE
        )
        if reply.status != 207:
            log.info("PROPFIND getetag %s -> HTTP %s", item, reply.status)
            return None
        try:
            ms = dx.parse_multistatus(reply.body)
        except dx.XMLError:
            return None
        for r in ms.responses:
            value = dx.normalize_etag(r.text(dx.GETETAG))
            if value:
                return value
        return None


def _uid(body: str) -> str | None:
    try:
        return uid_of(body)
    except Exception:
        return None


def _uids(body: str) -> frozenset[str]:
    uid = _uid(body)
    return frozenset({uid}) if uid else frozenset()


# --- discovery ----------------------------------------------------------------------------------

#: RFC 3744 3.1 / 3.3: DAV:all and DAV:write contain every write privilege; DAV:write-content
#: alone lets a client change existing events (PUT on an existing resource).
_WRITE_PRIVILEGES: Final = frozenset(dx.tag(dx.DAV, p) for p in ("all", "write", "write-content"))
#: RFC 3744 3.9 / 3.10: DAV:bind + DAV:unbind together let a client add and remove events.
_BIND_UNBIND: Final = frozenset(dx.tag(dx.DAV, p) for p in ("bind", "unbind"))
_ALL_COMPONENTS: Final = frozenset({"VEVENT", "VTODO", "VJOURNAL", "VFREEBUSY", "VAVAILABILITY"})


@dataclass(frozen=True)
class CalendarInfo:
    """One calendar collection found by :func:`discover_calendars`."""

    url: str
    display_name: str
    read_only: bool
    components: frozenset[str]
    is_default: bool = False
    #: Local names of the DAV:current-user-privilege-set the server reported for the current
    #: user (``{"read", "write-content", ...}``), or None when it did not report the property.
    privileges: frozenset[str] | None = None

    @property
    def supports_events(self) -> bool:
        return "VEVENT" in self.components

    @property
    def writable(self) -> bool:
        return not self.read_only


def discover_calendars(client: DAVClient) -> list[CalendarInfo]:
    """The user's event calendars (RFC 4791 6.2.1, RFC 5397, RFC 6638 9.2, RFC 3744 5.4).

    1. the principal, from DAV:current-user-principal (RFC 5397) through ``client.principal()``;
    2. its CALDAV:calendar-home-set (RFC 4791 6.2.1) and CALDAV:schedule-inbox-URL (RFC 6638 2.2);
    3. a Depth 1 PROPFIND of each home: collections whose DAV:resourcetype has CALDAV:calendar,
       with DAV:displayname, CALDAV:supported-calendar-component-set (absent = every component,
       RFC 4791 5.2.3) and DAV:current-user-privilege-set (RFC 3744 5.4, see
       :func:`read_only_from_privileges`; a server that does not report it counts as writable);
       the configured URL itself is checked too, in case it is a calendar outside the home (a
       shared calendar);
    4. the default calendar: CALDAV:schedule-default-calendar-URL of the inbox (RFC 6638 9.2),
       else the first event calendar with a conventional default name (``default``,
       ``calendar``, ``personal``, ``home``, ``events``), else the first event calendar.

    Only calendars that accept VEVENT are returned. 401 / 403 -> :class:`AuthenticationFailed`.
    """
    http = _Http(client)
    principal_url = _principal_url(client)
    reply = _propfind(http, principal_url, [dx.CALENDAR_HOME_SET, dx.SCHEDULE_INBOX_URL], "0")
    homes: list[str] = []
    inbox: str | None = None
    for r in reply.responses:
        homes += [urljoin(principal_url, h) for h in r.hrefs(dx.CALENDAR_HOME_SET)]
        inbox_hrefs = r.hrefs(dx.SCHEDULE_INBOX_URL)
        if inbox_hrefs and inbox is None:
            inbox = urljoin(principal_url, inbox_hrefs[0])
    if not homes:
        homes = [principal_url]
    props = [dx.RESOURCETYPE, dx.DISPLAYNAME, dx.SUPPORTED_COMPONENTS, dx.CURRENT_USER_PRIVILEGE_SET]
    found: dict[str, CalendarInfo] = {}
    for home in dict.fromkeys(homes):
        for r in _propfind(http, home, props, "1").responses:
            info = _calendar_info(home, r)
            if info is not None:
                found.setdefault(dx.normalize_href(info.url), info)
    own = str(client.url)
    own_path = dx.normalize_href(own)
    if own_path not in found and own_path not in {dx.normalize_href(h) for h in homes}:
        try:
            for r in _propfind(http, own, props, "0").responses:
                info = _calendar_info(own, r)
                if info is not None:
                    found.setdefault(dx.normalize_href(info.url), info)
        except AuthenticationFailed:
            raise
        except SideError:
            pass
    default = _default_calendar(http, inbox)
    events = [c for c in found.values() if c.supports_events]
    chosen = next((c for c in events if default and _same_collection(c.url, default)), None)
    if chosen is None and events:
        # No RFC 6638 default: a conventionally named one (servers list in no stable order),
        # else the first.
        chosen = next((c for c in events if _last_segment(c.url) in _DEFAULT_NAMES), events[0])
    return [replace(c, is_default=c is chosen) for c in events]


def read_only_from_privileges(privileges: Iterable[str]) -> bool:
    """Whether a DAV:current-user-privilege-set (Clark names) leaves the user unable to write.

    Writable (RFC 3744 3.1-3.10): DAV:all, DAV:write, DAV:write-content, or DAV:bind together
    with DAV:unbind. RFC 3744 5.4 lists aggregate privileges together with the privileges they
    contain, so a part of an aggregate does not count for the whole: Cyrus' owner keeps
    ``CY:make-collection`` (half of its DAV:bind) on a calendar it may only read. An empty set
    is read-only.
    """
    held = frozenset(privileges)
    return not (held & _WRITE_PRIVILEGES or held >= _BIND_UNBIND)


def calendar_info(client: DAVClient, url: str) -> CalendarInfo | None:
    """The calendar collection at ``url`` (Depth 0 PROPFIND), or None when there is none.

    None: 404 / 410, a 207 whose response for ``url`` is itself a 404 (Xandikos answers a
    missing collection that way), or a resource that is not a CALDAV:calendar. 401 / 403 raise
    :class:`AuthenticationFailed`, transport failures :class:`SideError`. ``is_default`` is
    False: only :func:`discover_calendars` decides the default.
    """
    http = _Http(client)
    props = [dx.RESOURCETYPE, dx.DISPLAYNAME, dx.SUPPORTED_COMPONENTS, dx.CURRENT_USER_PRIVILEGE_SET]
    reply = http.send(
        "PROPFIND", url, body=dx.propfind_body(props), headers={"Depth": "0", "Content-Type": XML_CONTENT_TYPE}
    )
    if reply.status in (404, 410):
        return None
    if reply.status != 207:
        raise _collection_error(reply, "PROPFIND")
    try:
        ms = dx.parse_multistatus(reply.body)
    except dx.XMLError as exc:
        raise SideError(f"PROPFIND on {urlsplit(url).path}: {exc}") from None
    for r in ms.responses:
        if r.status is not None and r.status >= 300:
            continue
        if not _same_collection(urljoin(reply.url, r.href), reply.url):
            continue
        return _calendar_info(reply.url, r)
    return None


# Default calendar names: Cyrus "Default", Radicale/Xandikos "calendar", Nextcloud "personal",
# SOGo "personal", Zimbra/Kerio "Calendar", Fastmail/DAViCal "home"/"calendar", Zoho "events".
_DEFAULT_NAMES: Final = ("default", "calendar", "personal", "home", "events")


def _same_collection(a: str, b: str) -> bool:
    """Collection hrefs compared without the trailing slash (Xandikos omits it in
    schedule-default-calendar-URL)."""
    return dx.normalize_href(a).rstrip("/") == dx.normalize_href(b).rstrip("/")


def _last_segment(url: str) -> str:
    return urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1].lower()


def _principal_url(client: DAVClient) -> str:
    try:
        principal = client.principal()
    except caldav_error.AuthorizationError as exc:
        status = getattr(exc, "status", None)
        raise AuthenticationFailed(
            f"CalDAV server {_origin(str(client.url))} refused the credentials (HTTP {status or '401/403'}): "
            "check the user name and the app-specific password"
        ) from None
    except caldav_error.DAVError as exc:
        raise SideError(f"CalDAV discovery on {_origin(str(client.url))} failed: {type(exc).__name__}") from None
    except Exception as exc:
        raise _transport_error(exc, str(client.url)) from None
    return str(principal.url)


def _propfind(http: _Http, url: str, props: list[str], depth: str) -> dx.Multistatus:
    reply = http.send(
        "PROPFIND", url, body=dx.propfind_body(props), headers={"Depth": depth, "Content-Type": XML_CONTENT_TYPE}
    )
    if reply.status != 207:
        raise _collection_error(reply, "PROPFIND")
    try:
        return dx.parse_multistatus(reply.body)
    except dx.XMLError as exc:
        raise SideError(f"PROPFIND on {urlsplit(url).path}: {exc}") from None


def _calendar_info(base: str, r: dx.DavResponse) -> CalendarInfo | None:
    if dx.tag(dx.CALDAV, "calendar") not in r.child_tags(dx.RESOURCETYPE):
        return None
    comps_el = r.props.get(dx.SUPPORTED_COMPONENTS)
    if comps_el is None:
        components = _ALL_COMPONENTS
    else:
        components = frozenset(
            (c.get("name") or "").upper() for c in comps_el.iter(dx.tag(dx.CALDAV, "comp")) if c.get("name")
        )
    privileges: frozenset[str] | None = None
    if dx.CURRENT_USER_PRIVILEGE_SET in r.props:
        held = r.child_tags(dx.CURRENT_USER_PRIVILEGE_SET) - {dx.tag(dx.DAV, "privilege")}
        read_only = read_only_from_privileges(held)
        privileges = frozenset(t.rpartition("}")[2] for t in held)
    else:
        read_only = False  # not reported: assume writable, writes will tell
    url = urljoin(base, r.href)
    name = (r.text(dx.DISPLAYNAME) or "").strip() or urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]
    return CalendarInfo(url=url, display_name=name, read_only=read_only, components=components, privileges=privileges)


def _default_calendar(http: _Http, inbox: str | None) -> str | None:
    """CALDAV:schedule-default-calendar-URL (RFC 6638 9.2), a property of the schedule inbox."""
    if not inbox:
        return None
    try:
        ms = _propfind(http, inbox, [dx.SCHEDULE_DEFAULT_CALENDAR_URL], "0")
    except AuthenticationFailed:
        return None
    except SideError:
        return None
    for r in ms.responses:
        hrefs = r.hrefs(dx.SCHEDULE_DEFAULT_CALENDAR_URL)
        if hrefs:
            return dx.normalize_href(urljoin(inbox, hrefs[0]))
    return None

"""The Microsoft 365 side: one Outlook calendar read through Graph delta, written per event.

Graph behaviour implemented here, by the Microsoft documentation page it comes from:

- *event: delta* and *Get incremental changes to events in a calendar view*: a round starts
  with ``GET /users/{u}/calendars/{c}/calendarView/delta?startDateTime=&endDateTime=``
  (primary calendar: ``/users/{u}/calendarView/delta``), follows ``@odata.nextLink`` until an
  ``@odata.deltaLink``; the bounds are encoded in the state tokens; ``Prefer:
  odata.maxpagesize`` sets the page size; ``$select``/``$expand``/``$filter`` are not supported.
  ``@removed`` (reason ``deleted``) is sent both for events deleted inside the range and for
  events *outside* the range that were added, changed or deleted -- so a removal is only
  reported after ``GET /users/{u}/events/{id}`` answers 404; a known event that answers with
  a new etag was edited outside (or out of) the range and is read and reported as changed.
- *Use delta query to track changes in Microsoft Graph data*: pages may be empty while a
  nextLink follows; the same entity may appear more than once ("Replays") -- merged by id, the
  last occurrence wins; 410 Gone (with a ``Location``) or ``syncStateNotFound`` means a new
  full synchronization ("Synchronization reset", "Token duration").
- *Create event* (``POST /users/{u}/calendars/{c}/events``, 201) with the event resource's
  ``transactionId``: "A custom identifier specified by a client app for the server to avoid
  redundant POST operations in case of client retries to create the same event".
- *Update event* (``PATCH /users/{u}/events/{id}``, 200 with the event). ``If-Match`` is not
  listed among that page's request headers; *Microsoft Graph error responses* documents 412
  as "a precondition provided in the request (such as an if-match header)" failing, and
  Exchange answers 412 ``ErrorIrresolvableConflict`` to a stale change key: we send
  ``If-Match`` with the ``@odata.etag`` read, and map 412 to :class:`PreconditionFailed`.
- *Delete event* (204): "If the event is a meeting, deleting the event on the organizer's
  calendar sends a cancellation message to the meeting attendees"; *Update event*: updating a
  meeting with attendees sends them updates. Hence the meeting guard on writes (below) and no
  ``attendees`` in any body we send.
- *Get singleValueLegacyExtendedProperty*: ``$expand=singleValueExtendedProperties($filter=id
  eq '...')`` on a single event returns our UID tag; ``$filter=singleValueExtendedProperties/
  Any(ep: ep/id eq '...' and ep/value eq '...')`` finds events carrying it.

Window policy: the delta window is fixed for a round (it is baked into the token). The cursor
records the window it was opened with; while the wanted window's start and end are each within
``roll_after`` (default one day) of the recorded ones the delta link is reused, else a new full
round is opened with the wanted window (``reset=True``). With a 5-minute timer that is one full
listing per calendar per day; events that enter at the far future edge show up at most a day
late, and events leaving at the past edge keep being tracked for at most a day longer.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from sync_core.convert.graph_json import (
    UID_PROPERTY_ID,
    event_from_graph,
    event_to_graph,
    index_instances,
    match_uids_from_graph,
    occurrence_patch,
    series_from_graph,
)
from sync_core.convert.recurrence import expand
from sync_core.errors import (
    AlreadyExists,
    AuthenticationFailed,
    DavbridgeError,
    ItemError,
    NotFound,
    PreconditionFailed,
    SideError,
    Throttled,
    UnsupportedEvent,
)
from sync_core.model import Event, instant_text
from sync_core.sides.base import ChangeBatch, RemoteItem, SideName, WriteResult
from sync_core.sides.graph_http import BATCH_LIMIT, BatchStep, Conflict, DeltaReset, GraphClient

log = logging.getLogger("davbridge.graph")

INSTANCE_NOT_LINKED = "a single occurrence of a series is synced with its series, not on its own"
#: Instances are listed this much beyond the window, so an exception moved out of the window
#: is not mistaken for a cancelled occurrence (docs/RECURRENCE.md).
INSTANCE_MARGIN = timedelta(days=31)
_SERIES_TYPES = frozenset({"seriesmaster"})
_INSTANCE_TYPES = frozenset({"occurrence", "exception"})
CURSOR_VERSION = 1


class _Gone:
    """Marker: Graph answered 404 for an event (see ``GraphCalendar._probe``)."""


_GONE = _Gone()
# Fields never sent in a write body: attendees would make Exchange send meeting requests
# (PLATFORM-NOTES, PRODUCT trap 6); transactionId cannot be changed after creation.
_NEVER_WRITTEN = ("attendees",)
_TRANSACTION_ID_RE = re.compile(r"^[\x21-\x7e]{1,128}$")
_TRANSACTION_NAMESPACE = uuid.UUID("6f6d1d8e-3b7b-4f0e-9a43-4c2b1e0d7a51")


def transaction_id_for(idempotency_key: str) -> str:
    """The ``transactionId`` sent for a create.

    Graph documents no format or length for ``transactionId`` (a String; its examples use
    GUIDs). A key of at most 128 printable ASCII characters without spaces is sent as it is
    (so ``match_uids_from_graph``'s ``"txn:<transactionId>"`` equals ``"txn:" + key``); any
    other key becomes a deterministic UUID (uuid5), so retries with the same key always send
    the same value. Whoever matches on ``txn:`` must map keys through this function.
    """
    if _TRANSACTION_ID_RE.match(idempotency_key):
        return idempotency_key
    return str(uuid.uuid5(_TRANSACTION_NAMESPACE, idempotency_key))


def _odata_literal(value: str) -> str:
    """An OData string literal body: single quotes doubled (OData ABNF ``SQUOTE-in-string``)."""
    return value.replace("'", "''")


def _graph_instant(value: datetime) -> str:
    if value.tzinfo is None:
        raise ValueError("window bounds must be timezone-aware datetimes")
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_instant(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


@dataclass(frozen=True)
class _Cursor:
    scope: str
    start: datetime
    end: datetime
    link: str

    def dump(self) -> str:
        return json.dumps(
            {
                "v": CURSOR_VERSION,
                "scope": self.scope,
                "start": _graph_instant(self.start),
                "end": _graph_instant(self.end),
                "link": self.link,
            },
            separators=(",", ":"),
        )

    @classmethod
    def load(cls, text: str) -> _Cursor | None:
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("v") != CURSOR_VERSION:
                return None
            return cls(
                scope=str(data["scope"]),
                start=_parse_instant(str(data["start"])),
                end=_parse_instant(str(data["end"])),
                link=str(data["link"]),
            )
        except (ValueError, KeyError, TypeError):
            return None


@dataclass(frozen=True)
class _WriteCheck:
    """What the meeting guard needs to know about an event before writing it."""

    etags: frozenset[str]
    event_type: str
    organizer_with_attendees: bool
    has_attendees: bool = False
    join_url: str = ""

    @classmethod
    def from_payload(cls, item: Mapping[str, Any]) -> _WriteCheck:
        etags = {str(v) for v in (item.get("@odata.etag"), item.get("changeKey")) if v}
        attendees = item.get("attendees")
        meeting = item.get("onlineMeeting")
        join = meeting.get("joinUrl") if isinstance(meeting, Mapping) else None
        return cls(
            etags=frozenset(etags),
            event_type=str(item.get("type") or "singleInstance"),
            organizer_with_attendees=bool(attendees) and item.get("isOrganizer") is not False,
            has_attendees=bool(attendees),
            join_url=join if isinstance(join, str) else "",
        )


@dataclass(frozen=True)
class CalendarInfo:
    """One calendar of a mailbox (Graph ``calendar`` resource)."""

    id: str
    name: str
    can_edit: bool
    is_default: bool
    owner: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class MailboxStatus:
    """Whether the app can reach a user's calendar; ``reason`` says why not."""

    ok: bool
    code: str = ""
    reason: str = ""
    calendar_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _user_path(user: str) -> str:
    return "/users/" + quote(user, safe="@")


def _id(value: str) -> str:
    return quote(value, safe="")


def _etag_of(item: Mapping[str, Any]) -> str | None:
    etag = item.get("@odata.etag") or item.get("changeKey")
    return str(etag) if etag else None


class GraphCalendar:
    """One Microsoft 365 calendar as a :class:`~sync_core.sides.base.Side`.

    ``user`` is a UPN or user id; ``calendar_id`` ``None`` means the primary calendar;
    ``window`` is the (start, end) of the calendar view to track, timezone-aware.

    ``protect_meetings`` (default on): before a PATCH or DELETE the event is checked (from the
    last read when its etag still matches, else with one ``GET ?$select``); a meeting organised
    by this mailbox with attendees, or any recurring item, is refused with
    :class:`UnsupportedEvent`, because Exchange would send updates or cancellations.

    ``lookup_before_create`` (default off): before each POST, one extra GET looks for an event
    in this calendar already tagged with the event's UID (1 request per create). Without it a
    retried create relies on ``transactionId`` alone; the uid tag is also looked up when Graph
    answers 409 to a create.
    """

    name = SideName.M365

    def __init__(
        self,
        client: GraphClient,
        user: str,
        calendar_id: str | None = None,
        *,
        window: tuple[datetime, datetime],
        page_size: int = 100,
        roll_after: timedelta = timedelta(days=1),
        max_pages: int = 10_000,
        protect_meetings: bool = True,
        lookup_before_create: bool = False,
    ) -> None:
        start, end = window
        _graph_instant(start)
        _graph_instant(end)
        if end <= start:
            raise ValueError("window end must be after its start")
        self.client = client
        self.user = user
        self.calendar_id = calendar_id
        self.window = (start.astimezone(UTC), end.astimezone(UTC))
        self.page_size = page_size
        self.roll_after = roll_after
        self.max_pages = max_pages
        self.protect_meetings = protect_meetings
        self.lookup_before_create = lookup_before_create
        self._seen: dict[str, _WriteCheck] = {}
        self._scope = hashlib.sha256(f"{user}\0{calendar_id or ''}".encode()).hexdigest()[:16]

    # -- paths
    @property
    def _user(self) -> str:
        return _user_path(self.user)

    @property
    def _calendar(self) -> str:
        if self.calendar_id is None:
            return self._user + "/calendar"
        return f"{self._user}/calendars/{_id(self.calendar_id)}"

    def _event_path(self, item_id: str) -> str:
        return f"{self._user}/events/{_id(item_id)}"

    def _delta_path(self) -> str:
        if self.calendar_id is None:
            return self._user + "/calendarView/delta"
        return self._calendar + "/calendarView/delta"

    @property
    def _prefer_page(self) -> str:
        return f"odata.maxpagesize={self.page_size}"

    # -- reading
    def changes(self, cursor: str | None, known: Mapping[str, str | None]) -> ChangeBatch:
        """Delta since ``cursor``; a full round when there is none, it was refused or the
        window moved. Removals are reported only when confirmed by a 404 (see module doc)."""
        state = _Cursor.load(cursor) if cursor else None
        if cursor and state is None:
            log.info("graph %s: cursor unreadable; starting a full round", self._calendar)
        elif state is not None and state.scope != self._scope:
            log.info("graph %s: cursor belongs to another calendar; starting a full round", self._calendar)
            state = None
        elif state is not None and not self._window_current(state):
            log.info("graph %s: window moved; starting a full round", self._calendar)
            state = None
        elif state is not None and not self._link_usable(state.link):
            log.info("graph %s: saved delta link is not on the Graph host; starting a full round", self._calendar)
            state = None
        if state is not None:
            try:
                merged, link = self._round(state.link, params=None)
            except DeltaReset as exc:
                log.info(
                    "graph %s: delta token refused (%s); starting a full round",
                    self._calendar,
                    "410 with Location" if exc.location else "sync state gone",
                )
            else:
                return self._batch(merged, link, (state.start, state.end), known, full=False, reset=False)
        return self._full(known, reset=cursor is not None)

    def _link_usable(self, link: str) -> bool:
        try:
            self.client.url(link)
        except SideError:
            return False
        return True

    def _window_current(self, state: _Cursor) -> bool:
        start, end = self.window
        return abs(start - state.start) <= self.roll_after and abs(end - state.end) <= self.roll_after

    def _full(self, known: Mapping[str, str | None], *, reset: bool) -> ChangeBatch:
        start, end = self.window
        params = {"startDateTime": _graph_instant(start), "endDateTime": _graph_instant(end)}
        try:
            merged, link = self._round(self._delta_path(), params=params)
        except DeltaReset:
            # A skip token of a brand-new round expired mid-round: one more try, then give up.
            merged, link = self._round(self._delta_path(), params=params)
        return self._batch(merged, link, (start, end), known, full=True, reset=reset)

    def _round(self, url: str, *, params: Mapping[str, str] | None) -> tuple[dict[str, dict[str, Any]], str]:
        """Follow one delta round to its deltaLink; items merged by id, last one wins."""
        merged: dict[str, dict[str, Any]] = {}
        pages = 0
        while True:
            page = self.client.get_json(url, params=params, prefer=self._prefer_page)
            params = None
            pages += 1
            for item in page.get("value") or []:
                item_id = item.get("id") if isinstance(item, dict) else None
                if not isinstance(item_id, str) or not item_id:
                    log.warning("graph %s: delta item without id skipped", self._calendar)
                    continue
                merged.pop(item_id, None)
                merged[item_id] = item
            delta_link = page.get("@odata.deltaLink")
            next_link = page.get("@odata.nextLink")
            if isinstance(delta_link, str) and delta_link:
                return merged, delta_link
            if not isinstance(next_link, str) or not next_link:
                raise SideError("Graph delta page has neither @odata.nextLink nor @odata.deltaLink")
            if pages >= self.max_pages:
                raise SideError(f"Graph delta round did not end after {self.max_pages} pages")
            url = next_link

    def _batch(
        self,
        merged: Mapping[str, dict[str, Any]],
        delta_link: str,
        window: tuple[datetime, datetime],
        known: Mapping[str, str | None],
        *,
        full: bool,
        reset: bool,
    ) -> ChangeBatch:
        changed: list[RemoteItem] = []
        removed: list[str] = []
        series_ids: dict[str, None] = {}
        for item_id, item in merged.items():
            event_type = str(item.get("type") or "singleInstance").casefold()
            if "@removed" in item:
                removed.append(item_id)
            elif event_type in _SERIES_TYPES:
                series_ids[item_id] = None
            elif event_type in _INSTANCE_TYPES:
                master_id = item.get("seriesMasterId")
                if isinstance(master_id, str) and master_id:
                    series_ids[master_id] = None
            else:
                changed.append(self._remote(item))
        for master_id in series_ids:
            series = self._read_series(master_id)
            if series is not None:
                changed.append(series)
        if full:
            listed = {item.id for item in changed}
            candidates = [item_id for item_id in known if item_id not in listed]
        else:
            candidates = [item_id for item_id in removed if item_id in known]
        deleted: list[str] = []
        moved: list[str] = []
        for item_id in candidates:
            etag = self._probe(item_id)
            if etag is _GONE:
                deleted.append(item_id)
            elif etag is None or etag != known.get(item_id):
                moved.append(item_id)
        # Still there with a new etag: edited outside the window (or moved out of it). Read
        # it by id, so the change reaches the other side instead of being lost.
        changed.extend(self.get(moved))
        cursor = _Cursor(self._scope, window[0], window[1], self.client.relative(delta_link)).dump()
        log.info(
            "graph %s: %s round: %d changed, %d removals seen, %d confirmed deleted%s",
            self._calendar,
            "full" if full else "delta",
            len(changed),
            len(removed),
            len(deleted),
            " (reset)" if reset else "",
        )
        return ChangeBatch(changed=changed, deleted=deleted, cursor=cursor, reset=reset)

    def _probe(self, item_id: str) -> str | _Gone | None:
        """The event's etag now, or ``_GONE`` only when Graph answers 404 (or 410) for the
        event itself: *event: delta* sends ``@removed`` for events deleted, and for events
        added, changed or deleted *outside* the range (one ``GET ?$select=id`` each)."""
        try:
            payload = self.client.get_json(self._event_path(item_id), params={"$select": "id"})
        except NotFound:
            self._seen.pop(item_id, None)
            return _GONE
        return _etag_of(payload) if isinstance(payload, Mapping) else None

    def _remote(self, item: Mapping[str, Any]) -> RemoteItem:
        item_id = str(item["id"])
        etag = _etag_of(item)
        self._seen[item_id] = _WriteCheck.from_payload(item)
        try:
            uids = frozenset(match_uids_from_graph(dict(item)))
        except Exception:
            uids = frozenset()
        if str(item.get("type") or "singleInstance").casefold() in _INSTANCE_TYPES:
            return RemoteItem(item_id, etag, None, uids, error=INSTANCE_NOT_LINKED)
        try:
            event = event_from_graph(dict(item))
        except ItemError as exc:
            return RemoteItem(item_id, etag, None, uids, error=str(exc) or type(exc).__name__)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            # A payload the converter did not anticipate: quarantine the item, keep the calendar.
            return RemoteItem(item_id, etag, None, uids, error=f"unreadable Graph event ({type(exc).__name__})")
        return RemoteItem(item_id, etag, event, uids)

    def get(self, ids: Iterable[str]) -> list[RemoteItem]:
        """Read these events now (one GET each, with the UID tag expanded; a series also lists
        its instances); 404s are left out."""
        items: list[RemoteItem] = []
        for item_id in ids:
            try:
                payload = self._get_tagged(item_id)
            except NotFound:
                continue
            if str(payload.get("type") or "").casefold() in _SERIES_TYPES:
                series = self._series_item(payload)
                if series is not None:
                    items.append(series)
                continue
            items.append(self._remote(payload))
        return items

    def _get_tagged(self, item_id: str) -> dict[str, Any]:
        expand = f"singleValueExtendedProperties($filter=id eq '{_odata_literal(UID_PROPERTY_ID)}')"
        return self.client.get_json(self._event_path(item_id), params={"$expand": expand})

    # -- series
    def _read_series(self, master_id: str) -> RemoteItem | None:
        """The whole series (master + instances), or ``None`` when the master is gone."""
        try:
            master = self._get_tagged(master_id)
        except NotFound:
            return None
        return self._series_item(master)

    def _series_item(self, master: dict[str, Any]) -> RemoteItem | None:
        """*List instances* over the window (widened) and assemble the series; a series that
        cannot be read is this item's error only."""
        item_id = str(master.get("id") or "")
        etag = _etag_of(master)
        self._seen[item_id] = _WriteCheck.from_payload(master)
        uids = frozenset(match_uids_from_graph(master))
        try:
            instances = self._instances(item_id)
        except NotFound:
            return None
        try:
            event = series_from_graph(master, instances, self.window)
        except ItemError as exc:
            return RemoteItem(item_id, etag, None, uids, error=str(exc) or type(exc).__name__)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            return RemoteItem(item_id, etag, None, uids, error=f"unreadable Graph series ({type(exc).__name__})")
        return RemoteItem(item_id, etag, event, uids)

    def _instances(self, master_id: str) -> list[dict[str, Any]]:
        """``GET /users/{u}/events/{id}/instances?startDateTime&endDateTime`` (paged)."""
        start, end = self.window
        params = {
            "startDateTime": _graph_instant(start - INSTANCE_MARGIN),
            "endDateTime": _graph_instant(end + INSTANCE_MARGIN),
        }
        return list(
            self.client.iter_items(self._event_path(master_id) + "/instances", params=params, prefer=self._prefer_page)
        )

    def _write_instances(self, master: Mapping[str, Any], series: Event) -> bool:
        """Make the series' instances inside the window match ``series``: cancel (DELETE) its
        exdates, PATCH its overrides, PATCH stale exceptions back to the plain occurrence.
        ``master`` is the master as the POST / PATCH just answered it.

        Returns ``False`` when an occurrence the model keeps was cancelled in Microsoft 365:
        Graph cannot restore a cancelled occurrence, so the caller recreates the series.
        """
        assert series.recurrence is not None
        master_id = str(master["id"])
        stored = event_from_graph(master)
        indexed = index_instances(master, stored, self._instances(master_id))
        cancelled = {instant_text(value) for value in series.exdates}
        modified = {instant_text(o.recurrence_id): o.event for o in series.overrides}
        start, end = self.window
        for rid in expand(series.recurrence.rule, stored.start, window_start=start, window_end=end):
            key = instant_text(rid)
            found = indexed.get(key)
            if key in cancelled:
                if found is not None:
                    self._delete_instance(str(found[1]["id"]))
                continue
            if found is None:
                return False
            payload = found[1]
            wanted = modified.get(key)
            if wanted is None and str(payload.get("type") or "").casefold() != "exception":
                continue
            target = wanted if wanted is not None else series.occurrence_at(rid)
            if event_from_graph(payload).content_key() != target.content_key():
                body = occurrence_patch(target, graph_attendees=bool(payload.get("attendees")))
                self.client.request_json("PATCH", self._event_path(str(payload["id"])), json=body)
        return True

    def _delete_instance(self, instance_id: str) -> None:
        with contextlib.suppress(NotFound):
            self.client.request("DELETE", self._event_path(instance_id))

    def _series_result(self, master_id: str, written: Event) -> WriteResult:
        series = self._read_series(master_id)
        if series is None:
            raise NotFound(f"Graph series {master_id[:12]}... vanished while it was written")
        event = series.event if series.event is not None else written
        if event.uid is None and written.uid is not None:
            event = event.with_uid(written.uid)
        return WriteResult(master_id, series.etag, event)

    def find_by_uid_tag(self, uid: str) -> RemoteItem | None:
        """The event of this calendar tagged with ``uid`` (one GET), if any."""
        flt = (
            f"singleValueExtendedProperties/Any(ep: ep/id eq '{_odata_literal(UID_PROPERTY_ID)}' "
            f"and ep/value eq '{_odata_literal(uid)}')"
        )
        page = self.client.get_json(self._calendar + "/events", params={"$filter": flt})
        for item in page.get("value") or []:
            if isinstance(item, dict) and item.get("id"):
                remote = self._remote(item)
                return RemoteItem(remote.id, remote.etag, remote.event, remote.match_uids | {uid}, remote.error)
        return None

    def find_created(self, event: Event, *, idempotency_key: str) -> RemoteItem | None:
        """The event a create of ``event`` made: every event we create carries its UID in our
        extended property (one GET with ``$filter``; see :meth:`find_by_uid_tag`)."""
        return self.find_by_uid_tag(event.uid) if event.uid else None

    # -- writing
    def create(self, event: Event, *, idempotency_key: str) -> WriteResult:
        """POST the event with ``transactionId`` derived from ``idempotency_key``; never attendees."""
        body = self._body(event_to_graph(event, uid_tag=event.uid))
        body["transactionId"] = transaction_id_for(idempotency_key)
        if self.lookup_before_create and event.uid:
            existing = self.find_by_uid_tag(event.uid)
            if existing is not None:
                log.info("graph %s: create found the event already tagged; not posting", self._calendar)
                return self._existing_result(existing, event)
        try:
            created = self.client.request_json("POST", self._calendar + "/events", json=body)
        except Conflict as exc:
            if event.uid:
                existing = self.find_by_uid_tag(event.uid)
                if existing is not None:
                    return self._existing_result(existing, event)
            raise AlreadyExists(str(exc)) from None
        if event.recurrence is None:
            return self._result(created, event, fallback_id=None)
        master_id = str(created.get("id") or "")
        if not master_id:
            raise SideError("Graph create answered without the event")
        if not self._write_instances(created, event):
            raise SideError(f"Graph series {master_id[:12]}... lost an occurrence while it was created")
        return self._series_result(master_id, event)

    def create_many(self, creates: Sequence[tuple[Event, str]]) -> list[WriteResult | DavbridgeError]:
        """Many creates in ``$batch`` requests of up to 20 (*JSON batching*), each exactly the
        POST :meth:`create` sends (``transactionId`` included, so a batch retried after a lost
        answer creates nothing twice). A series (its instances need more requests), a create
        that must look for an existing event first, and a 409 go through :meth:`create`."""
        results: list[WriteResult | DavbridgeError | None] = [None] * len(creates)
        simple: list[int] = []
        for index, (event, key) in enumerate(creates):
            if event.recurrence is None and not self.lookup_before_create:
                simple.append(index)
            else:
                results[index] = self._create_or_error(event, key)
        for start in range(0, len(simple), BATCH_LIMIT):
            chunk = simple[start:start + BATCH_LIMIT]
            steps = []
            for index in chunk:
                event, key = creates[index]
                body = self._body(event_to_graph(event, uid_tag=event.uid))
                body["transactionId"] = transaction_id_for(key)
                steps.append(BatchStep("POST", self._calendar + "/events", body))
            for index, answer in zip(chunk, self.client.batch(steps), strict=True):
                event, key = creates[index]
                if isinstance(answer, Conflict):
                    results[index] = self._create_or_error(event, key)  # 409: looks the event up
                elif isinstance(answer, DavbridgeError):
                    results[index] = answer
                else:
                    try:
                        results[index] = self._result(answer, event, fallback_id=None)
                    except DavbridgeError as exc:
                        results[index] = exc
        return [r if r is not None else SideError("no result") for r in results]

    def _create_or_error(self, event: Event, key: str) -> WriteResult | DavbridgeError:
        try:
            return self.create(event, idempotency_key=key)
        except (AuthenticationFailed, Throttled):
            raise
        except DavbridgeError as exc:
            return exc

    def update(self, item_id: str, event: Event, *, etag: str | None) -> WriteResult:
        """PATCH the synced fields, with ``If-Match: etag`` when given.

        A series: the master is PATCHed without ``recurrence``/``start``/``end`` when those
        are unchanged (sending them resets every exception in Exchange), then its instances
        are matched to the model (:meth:`_write_instances`). When an occurrence the model
        keeps was cancelled in Microsoft 365 (Graph cannot restore it), the series is
        deleted and created again (a new id; it holds no attendees, the guard made sure).
        """
        check = self._guard(item_id, etag)
        body = self._body(event_to_graph(event, graph_attendees=check.has_attendees, graph_join_url=check.join_url))
        body.pop("transactionId", None)
        headers = {"If-Match": etag} if etag else None
        if event.recurrence is None:
            updated = self.client.request_json("PATCH", self._event_path(item_id), json=body, headers=headers)
            return self._result(updated, event, fallback_id=item_id)
        current = event_from_graph(self.client.get_json(self._event_path(item_id)))
        if current.recurrence == event.recurrence and _same_times(current, event):
            for key in ("recurrence", "start", "end", "isAllDay"):
                body.pop(key, None)
        patched = self.client.request_json("PATCH", self._event_path(item_id), json=body, headers=headers)
        if self._write_instances({**patched, "id": patched.get("id") or item_id}, event):
            return self._series_result(item_id, event)
        log.info("graph %s: a cancelled occurrence must come back; recreating the series", self._calendar)
        self.delete(item_id, etag=None)
        key = "restore-" + hashlib.sha256(f"{item_id}\0{event.fingerprint()}".encode()).hexdigest()[:32]
        return self.create(event, idempotency_key=key)

    def delete(self, item_id: str, *, etag: str | None) -> None:
        """DELETE the event (``If-Match`` when given); a missing event is not an error."""
        try:
            self._guard(item_id, etag)
            headers = {"If-Match": etag} if etag else None
            self.client.request("DELETE", self._event_path(item_id), headers=headers)
        except NotFound:
            pass
        self._seen.pop(item_id, None)

    def _guard(self, item_id: str, etag: str | None) -> _WriteCheck:
        check = self._seen.get(item_id)
        if not self.protect_meetings:
            return check or _WriteCheck(frozenset(), "singleInstance", False)
        if check is None or etag is None or etag not in check.etags:
            payload = self.client.get_json(
                self._event_path(item_id),
                params={"$select": "id,type,isOrganizer,attendees,changeKey,onlineMeeting"},
            )
            check = _WriteCheck.from_payload(payload)
            self._seen[item_id] = check
            if etag is not None and check.etags and etag not in check.etags:
                raise PreconditionFailed(f"Graph event {item_id[:12]}... changed since it was read")
        if check.event_type.casefold() in _INSTANCE_TYPES:
            raise UnsupportedEvent(INSTANCE_NOT_LINKED)
        if check.organizer_with_attendees:
            raise UnsupportedEvent(
                "meeting with attendees organised by this mailbox: changing or deleting it "
                "would send updates or cancellations to the attendees"
            )
        return check

    @staticmethod
    def _body(body: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(body)
        for key in _NEVER_WRITTEN:
            out.pop(key, None)
        return out

    def _result(self, payload: Any, written: Event, *, fallback_id: str | None) -> WriteResult:
        if not isinstance(payload, dict) or not (payload.get("id") or fallback_id):
            raise SideError("Graph write answered without the event")
        item_id = str(payload.get("id") or fallback_id)
        self._seen[item_id] = _WriteCheck.from_payload(payload)
        try:
            stored = event_from_graph(payload)
        except (ItemError, KeyError, TypeError, ValueError, AttributeError) as exc:
            log.warning(
                "graph %s: write answer unreadable (%s); keeping the event as written",
                self._calendar,
                type(exc).__name__,
            )
            stored = written
        if stored.uid is None and written.uid is not None:
            stored = stored.with_uid(written.uid)
        return WriteResult(item_id, _etag_of(payload), stored)

    @staticmethod
    def _existing_result(existing: RemoteItem, written: Event) -> WriteResult:
        event = existing.event if existing.event is not None else written
        if event.uid is None:
            event = event.with_uid(written.uid)
        return WriteResult(existing.id, existing.etag, event)


def _same_times(a: Event, b: Event) -> bool:
    return a.all_day == b.all_day and instant_text(a.start) == instant_text(b.start) and (
        instant_text(a.end) == instant_text(b.end)
    )


# --- admin helpers ------------------------------------------------------------------------
def list_calendars(client: GraphClient, user: str) -> list[CalendarInfo]:
    """*List calendars*: ``GET /users/{u}/calendars`` (paged)."""
    calendars: list[CalendarInfo] = []
    params = {"$select": "id,name,canEdit,isDefaultCalendar,owner"}
    for item in client.iter_items(_user_path(user) + "/calendars", params=params):
        owner = item.get("owner")
        calendars.append(
            CalendarInfo(
                id=str(item.get("id")),
                name=str(item.get("name") or ""),
                can_edit=bool(item.get("canEdit")),
                is_default=bool(item.get("isDefaultCalendar")),
                owner=str(owner.get("address")) if isinstance(owner, dict) and owner.get("address") else None,
            )
        )
    return calendars


def check_mailbox(client: GraphClient, user: str) -> MailboxStatus:
    """Whether the app can read ``user``'s primary calendar (*Get calendar*).

    ``GET /users/{u}/calendar`` needs only the Calendars permission the app already has
    (``GET /users/{u}`` would need User.Read.All). Unknown address / no mailbox -> 404;
    missing consent or an application access policy -> 403 ``ErrorAccessDenied``; a refused
    token -> 401; a token endpoint error (bad tenant, client or secret) -> msal's code.
    """
    try:
        payload = client.get_json(_user_path(user) + "/calendar", params={"$select": "id,name"})
    except NotFound as exc:
        return MailboxStatus(False, "NotFound", f"unknown address or no Exchange Online mailbox: {exc}")
    except AuthenticationFailed as exc:
        return MailboxStatus(False, "AuthenticationFailed", str(exc))
    return MailboxStatus(True, calendar_id=str(payload.get("id") or "") or None)

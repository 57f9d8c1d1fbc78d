"""An in-memory calendar implementing the :class:`~sync_core.sides.base.Side` protocol.

``MemorySide`` behaves like the real sides as far as the engine can tell (``changes`` with
cursors over a change log, ``get``, idempotent ``create``, etag-conditional ``update`` and
``delete``), and has knobs for what real servers do to a sync client:

- ``flaky_etags``: an item's etag changes once on its first read after a write, with no
  content change (a CalDAV server re-serialising what was PUT). The new etag is also a
  change in the log, as a sync-collection REPORT would report it.
- ``etag_after_write=False``: writes answer without an etag (Cyrus: no ETag after a PUT),
  so ``WriteResult.etag`` is ``None``; reads still report the stored etag.
- ``reencode_hrefs``: the server spells ids percent-encoded (``@`` as ``%40``) in listings.
  Like ``CalDAVCalendar``, every operation accepts any spelling, ids the caller holds
  (``known``, ``get``, ``update``, ``delete``) are answered in the caller's spelling, and ids
  the caller does not hold come in the server's spelling.
- ``read_only``: every write raises :class:`~sync_core.errors.AuthenticationFailed` (the
  HTTP 403 both real sides map to it) and is recorded as attempted.
- :meth:`fail_next_write`: the next matching write raises a given error once, before it
  lands, or after it landed (a lost reply).
- :meth:`reset_tokens`: every cursor handed out so far is refused; the next ``changes`` is a
  full listing with ``reset=True``, deletions computed from ``known`` (ids missing from the
  calendar, confirmed gone), as ``SyncTokenInvalid`` / ``DeltaTokenExpired`` handling does.
- ``window`` / :meth:`set_window`: with ``windowed_listing`` (the default, as Graph's
  calendarView delta) only items overlapping the window are listed; an item outside it, or
  edited out of it, is not listed and is not a deletion. Without it every item is listed (as
  ``CalDAVCalendar``'s PROPFIND / sync-collection, which have no time range), except that a
  known item (in ``known``) whose etag changed is reported wherever it lies, as
  ``GraphCalendar`` reads an ``@removed`` event that still exists. Deletions are reported
  whatever the window. A cursor records the window it was opened with; a moved window
  starts a full listing with ``reset=True`` (``GraphCalendar``'s window policy). ``get``
  reads by id whatever the window.
- ``skip_unchanged``: listings leave out items whose etag equals the caller's known one
  (``CalDAVCalendar`` fetches only those bodies); off, every changed item is reported
  (Graph delta reports the service's own writes too).
- ``unique_uids``: a create whose UID another item holds raises ``AlreadyExists`` (RFC 4791
  5.3.2.1 no-uid-conflict; Cyrus).

"User" operations (:meth:`user_create`, :meth:`user_edit`, :meth:`user_delete`) change the
calendar as a person with a calendar client would: they go through the change log and ignore
``read_only`` and armed failures. ``write_log`` records every write the sync attempted.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from urllib.parse import quote, unquote

from sync_core.errors import (
    AlreadyExists,
    AuthenticationFailed,
    DavbridgeError,
    NotFound,
    PreconditionFailed,
    SideError,
)
from sync_core.model import Event
from sync_core.sides.base import ChangeBatch, RemoteItem, SideName, WriteResult

Window = tuple[datetime, datetime]

#: Characters kept as they are when the server re-encodes an id.
_REENCODE_SAFE = "/-._~"


def event_in_window(event: Event, window: Window | None) -> bool:
    """Whether ``event`` overlaps ``window`` (both ends inclusive), as the reconcile step
    decides whether a new event is copied. ``None``: no window, everything is inside."""
    if window is None:
        return True
    start, end = window
    return _as_utc(event.end, start) >= start and _as_utc(event.start, start) <= end


def _as_utc(value: datetime | date, ref: datetime) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=ref.tzinfo)
    return datetime.combine(value, time.min, tzinfo=ref.tzinfo)


def canonical_id(item_id: str) -> str:
    """One form for every spelling of an id (``@`` and ``%40`` are the same resource)."""
    return unquote(item_id)


@dataclass
class StoredItem:
    """One item as the memory server holds it."""

    id: str  # canonical
    event: Event
    etag: str
    key: str | None = None
    match_uids: frozenset[str] = frozenset()
    #: Written and not read since: a flaky server changes the etag on the next read.
    fresh: bool = True


@dataclass(frozen=True)
class WriteRecord:
    """One write the sync attempted: ``op`` create/update/delete, the canonical id (``None``
    when the create never got one), ``landed``: whether it changed the calendar, ``error``:
    the error type's name raised to the caller (``None``: success)."""

    op: str
    id: str | None
    landed: bool
    error: str | None = None


@dataclass
class _ArmedFailure:
    op: str | None
    error: type[DavbridgeError]
    after: bool


class _Clock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


class MemorySide:
    """An in-memory calendar for one side of a pairing; see the module docstring."""

    def __init__(
        self,
        name: SideName,
        *,
        window: Window | None = None,
        clock: Callable[[], datetime] | None = None,
        read_only: bool = False,
        flaky_etags: bool = False,
        etag_after_write: bool = True,
        reencode_hrefs: bool = False,
        skip_unchanged: bool = False,
        unique_uids: bool = False,
        windowed_listing: bool = True,
    ) -> None:
        self.name = name
        self.window = window
        self.clock: Callable[[], datetime] = clock or _Clock(datetime(2026, 1, 1, tzinfo=UTC))
        self.read_only = read_only
        self.flaky_etags = flaky_etags
        self.etag_after_write = etag_after_write
        self.reencode_hrefs = reencode_hrefs
        self.skip_unchanged = skip_unchanged
        self.unique_uids = unique_uids
        self.windowed_listing = windowed_listing
        self.write_log: list[WriteRecord] = []
        self._items: dict[str, StoredItem] = {}
        self._by_key: dict[str, str] = {}
        self._log: list[str] = []  # canonical ids, one entry per change; seq = position + 1
        self._epoch = 0
        self._counter = itertools.count(1)
        self._armed: list[_ArmedFailure] = []

    # -- knobs ------------------------------------------------------------------------------
    def fail_next_write(self, op: str | None = None, *, error: type[DavbridgeError] = SideError,
                        after: bool = False) -> None:
        """The next write (``op`` "create", "update", "delete"; ``None``: any) raises ``error``
        once; ``after``: the write lands first and only its reply is lost."""
        if op not in (None, "create", "update", "delete"):
            raise ValueError(f"unknown write {op!r}")
        self._armed.append(_ArmedFailure(op, error, after))

    def disarm(self) -> None:
        """Forget failures armed by :meth:`fail_next_write` that did not fire."""
        self._armed.clear()

    @property
    def armed(self) -> int:
        return len(self._armed)

    def reset_tokens(self) -> None:
        """Refuse every cursor handed out so far (a sync token / delta token expired)."""
        self._epoch += 1

    def set_window(self, window: Window | None) -> None:
        self.window = window

    # -- user operations -----------------------------------------------------------------------
    def user_create(self, event: Event, *, name: str | None = None) -> str:
        """A person creates ``event`` (at id ``name``, else a fresh one; CalDAV names hold an
        ``@``, as many clients' do); returns its id as the server spells it. A missing UID is
        assigned, as calendar clients and Graph do."""
        n = next(self._counter)
        default = f"/cal/user-{n}@client.ics" if self.name is SideName.CALDAV else f"AAMkUser{n}=="
        cid = canonical_id(name) if name else default
        if cid in self._items:
            raise AlreadyExists(f"{cid} already exists")
        uid = event.uid or f"{self.name.value}-user-{n}@example.org"
        stored = replace(event, uid=uid, last_modified=self.clock())
        self._items[cid] = StoredItem(cid, stored, self._new_etag(), match_uids=frozenset({uid}))
        self._log.append(cid)
        return self._server_spelling(cid)

    def user_edit(self, item_id: str, event: Event) -> None:
        """A person replaces the item's content (its UID stays)."""
        item = self._items.get(canonical_id(item_id))
        if item is None:
            raise NotFound(f"{item_id} is gone")
        self._store(item, event)

    def user_delete(self, item_id: str) -> None:
        cid = canonical_id(item_id)
        if cid not in self._items:
            raise NotFound(f"{item_id} is gone")
        del self._items[cid]
        self._log.append(cid)

    # -- inspection ----------------------------------------------------------------------------
    def ids(self) -> list[str]:
        """Canonical ids of every item, oldest first."""
        return list(self._items)

    def event(self, item_id: str) -> Event | None:
        item = self._items.get(canonical_id(item_id))
        return item.event if item is not None else None

    def events(self) -> dict[str, Event]:
        """Every item's event by canonical id."""
        return {cid: item.event for cid, item in self._items.items()}

    def etag(self, item_id: str) -> str | None:
        item = self._items.get(canonical_id(item_id))
        return item.etag if item is not None else None

    def in_window(self, event: Event) -> bool:
        return event_in_window(event, self.window)

    # -- Side: reading -------------------------------------------------------------------------
    def changes(self, cursor: str | None, known: Mapping[str, str | None]) -> ChangeBatch:
        spelled = {canonical_id(k): k for k in known}
        known_etags = {canonical_id(k): v for k, v in known.items()}
        seq = self._cursor_seq(cursor)
        if seq is None:
            return self._full(spelled, known_etags, reset=cursor is not None)
        changed: list[RemoteItem] = []
        deleted: list[str] = []
        for cid in dict.fromkeys(self._log[seq:]):
            item = self._items.get(cid)
            if item is None:
                deleted.append(spelled.get(cid, self._server_spelling(cid)))
            elif self._listed(item) or (cid in known_etags and known_etags[cid] != item.etag):
                self._read(item)
                if not (self.skip_unchanged and known_etags.get(cid) == item.etag):
                    changed.append(self._remote(item, spelled))
        return ChangeBatch(changed=changed, deleted=deleted, cursor=self._cursor())

    def _full(self, spelled: Mapping[str, str], known_etags: Mapping[str, str | None], *,
              reset: bool) -> ChangeBatch:
        changed: list[RemoteItem] = []
        for cid, item in list(self._items.items()):
            if not self._listed(item) and (cid not in known_etags or known_etags[cid] == item.etag):
                continue
            self._read(item)
            if not (self.skip_unchanged and known_etags.get(cid) == item.etag):
                changed.append(self._remote(item, spelled))
        # Known ids missing from the listing are deletions only when they are gone, not when
        # they merely lie outside the window.
        deleted = [spelled[cid] for cid in spelled if cid not in self._items]
        return ChangeBatch(changed=changed, deleted=deleted, cursor=self._cursor(), reset=reset)

    def get(self, ids: Iterable[str]) -> list[RemoteItem]:
        out: list[RemoteItem] = []
        for item_id in ids:
            item = self._items.get(canonical_id(item_id))
            if item is None:
                continue
            self._read(item)
            out.append(self._remote(item, {item.id: item_id}))
        return out

    def find_created(self, event: Event, *, idempotency_key: str) -> RemoteItem | None:
        cid = self._by_key.get(idempotency_key)
        found = self.get([cid]) if cid is not None else []
        return found[0] if found else None

    # -- Side: writing -------------------------------------------------------------------------
    def create(self, event: Event, *, idempotency_key: str) -> WriteResult:
        self._refuse_if_read_only("create", None)
        failure = self._take_failure("create")
        self._fail_before(failure, "create", None)
        existing = self._by_key.get(idempotency_key)
        if existing is not None and existing in self._items:
            self.write_log.append(WriteRecord("create", existing, False, AlreadyExists.__name__))
            raise AlreadyExists(f"{existing} already exists (an earlier create with this key)")
        n = next(self._counter)
        if self.name is SideName.CALDAV:
            cid = f"/cal/{idempotency_key}.ics"  # the resource name comes from the key
            uid = event.uid or f"{idempotency_key}@davbridge"
        else:
            cid = f"AAMkSync{n}=="
            uid = event.uid or f"graph-{n}@example.org"
        if self.unique_uids and any(i.event.uid == uid for i in self._items.values()):
            self.write_log.append(WriteRecord("create", None, False, AlreadyExists.__name__))
            raise AlreadyExists(f"the event's UID is already used by another item ({uid})")
        uids = {uid} if self.name is SideName.CALDAV else {uid, "txn:" + idempotency_key}
        item = StoredItem(cid, event.with_uid(uid), "", idempotency_key, frozenset(uids))
        self._items[cid] = item
        self._by_key[idempotency_key] = cid
        self._store(item, event.with_uid(uid))
        self._fail_after(failure, "create", cid)
        self.write_log.append(WriteRecord("create", cid, True))
        return WriteResult(cid, item.etag if self.etag_after_write else None, item.event)

    def update(self, item_id: str, event: Event, *, etag: str | None) -> WriteResult:
        cid = canonical_id(item_id)
        self._refuse_if_read_only("update", cid)
        failure = self._take_failure("update")
        self._fail_before(failure, "update", cid)
        item = self._items.get(cid)
        if item is None:
            self.write_log.append(WriteRecord("update", cid, False, NotFound.__name__))
            raise NotFound(f"{item_id} is gone")
        if etag is not None and etag != item.etag:
            self.write_log.append(WriteRecord("update", cid, False, PreconditionFailed.__name__))
            raise PreconditionFailed(f"{item_id} changed since it was read (etag {item.etag} != {etag})")
        self._store(item, event)
        self._fail_after(failure, "update", cid)
        self.write_log.append(WriteRecord("update", cid, True))
        return WriteResult(item_id, item.etag if self.etag_after_write else None, item.event)

    def delete(self, item_id: str, *, etag: str | None) -> None:
        cid = canonical_id(item_id)
        self._refuse_if_read_only("delete", cid)
        failure = self._take_failure("delete")
        self._fail_before(failure, "delete", cid)
        item = self._items.get(cid)
        if item is None:
            self.write_log.append(WriteRecord("delete", cid, False))
            return  # a missing item is not an error
        if etag is not None and etag != item.etag:
            self.write_log.append(WriteRecord("delete", cid, False, PreconditionFailed.__name__))
            raise PreconditionFailed(f"{item_id} changed since it was read (etag {item.etag} != {etag})")
        del self._items[cid]
        self._log.append(cid)
        self._fail_after(failure, "delete", cid)
        self.write_log.append(WriteRecord("delete", cid, True))

    # -- internals -----------------------------------------------------------------------------
    def _store(self, item: StoredItem, event: Event) -> None:
        """Replace the item's content (keeping its UID, as both real sides do), stamp it, give
        it a new etag and log the change."""
        item.event = replace(event, uid=item.event.uid, extra=(), last_modified=self.clock())
        item.etag = self._new_etag()
        item.fresh = True
        self._log.append(item.id)

    def _listed(self, item: StoredItem) -> bool:
        return not self.windowed_listing or self.in_window(item.event)

    def _read(self, item: StoredItem) -> None:
        if item.fresh and self.flaky_etags:
            item.etag = self._new_etag()
            self._log.append(item.id)
        item.fresh = False

    def _remote(self, item: StoredItem, spelled: Mapping[str, str]) -> RemoteItem:
        return RemoteItem(spelled.get(item.id, self._server_spelling(item.id)), item.etag, item.event,
                          item.match_uids)

    def _new_etag(self) -> str:
        return f'"{self.name.value}-{next(self._counter)}"'

    def _server_spelling(self, cid: str) -> str:
        return quote(cid, safe=_REENCODE_SAFE) if self.reencode_hrefs else cid

    def _window_key(self) -> str | None:
        if self.window is None:
            return None
        return f"{self.window[0].astimezone(UTC).isoformat()}/{self.window[1].astimezone(UTC).isoformat()}"

    def _cursor(self) -> str:
        return json.dumps({"s": self.name.value, "e": self._epoch, "q": len(self._log), "w": self._window_key()})

    def _cursor_seq(self, cursor: str | None) -> int | None:
        """The log position a cursor stands for; ``None`` when it is refused (none, unreadable,
        another side's, from before a token reset, or opened with another window)."""
        if not cursor:
            return None
        try:
            state = json.loads(cursor)
        except ValueError:
            return None
        if not isinstance(state, dict) or state.get("s") != self.name.value:
            return None
        if state.get("e") != self._epoch or state.get("w") != self._window_key():
            return None
        seq = state.get("q")
        if not isinstance(seq, int) or not 0 <= seq <= len(self._log):
            return None
        return seq

    def _refuse_if_read_only(self, op: str, cid: str | None) -> None:
        if self.read_only:
            self.write_log.append(WriteRecord(op, cid, False, AuthenticationFailed.__name__))
            raise AuthenticationFailed(f"{self.name.value} calendar is read-only (HTTP 403)")

    def _take_failure(self, op: str) -> _ArmedFailure | None:
        for i, armed in enumerate(self._armed):
            if armed.op is None or armed.op == op:
                return self._armed.pop(i)
        return None

    def _fail_before(self, failure: _ArmedFailure | None, op: str, cid: str | None) -> None:
        if failure is not None and not failure.after:
            self.write_log.append(WriteRecord(op, cid, False, failure.error.__name__))
            raise failure.error(f"injected {failure.error.__name__} on {op} {cid or ''}".rstrip())

    def _fail_after(self, failure: _ArmedFailure | None, op: str, cid: str) -> None:
        if failure is not None and failure.after:
            self.write_log.append(WriteRecord(op, cid, True, failure.error.__name__))
            raise failure.error(f"injected {failure.error.__name__} after {op} {cid} landed (reply lost)")

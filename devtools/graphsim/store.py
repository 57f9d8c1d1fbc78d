"""In-memory, thread-safe mailbox store: users, calendars, events, and per-calendar versions.

Every change to an event (create, update, delete) bumps its calendar's ``version`` counter and
stamps the event (or its tombstone) with the new value. A delta state token only has to carry
a version number: "what changed after version N" is every event or tombstone stamped above N.
A change to one instance of a series (an exception written, an occurrence cancelled) is a
change of its series master: the master is stamped, and gets a new ``changeKey``.

Each calendar also keeps every event's past states (``history``: fields and instance overrides
by version), so a delta round can tell which instances a client saw at its cursor and announce
the ones that are gone (``@removed``).

Listeners registered with :meth:`Store.add_change_listener` hear every change ("created",
"updated", "deleted"; a change to an instance of a series is "updated" of its master): the change
notifications of ``subscriptions.py`` start there, so in-process edits through the store notify too.

Identifiers imitate Exchange's: long base64 strings that are case-sensitive and contain ``-``
and ``_`` (immutable ids, the form ``Prefer: IdType="ImmutableId"`` asks for); ``changeKey`` is a
base64 string that changes on every edit; ``iCalUId`` is a hex Global Object Id, set by the
server, different per event.
"""

from __future__ import annotations

import base64
import os
import secrets
import threading
import uuid
from bisect import bisect_right
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any


def new_item_id() -> str:
    """An Exchange-style immutable id: ``AAMkAD`` + url-safe base64 (mixed case, ``-``, ``_``)."""
    return "AAMkAD" + base64.urlsafe_b64encode(os.urandom(69)).decode() + "AAA="


def new_change_key() -> str:
    return base64.b64encode(os.urandom(22)).decode()


def new_ical_uid(created: datetime) -> str:
    """A Global Object Id as Outlook writes it into iCalUId (class id, FILETIME, GUID)."""
    filetime = int((created - datetime(1601, 1, 1, tzinfo=UTC)).total_seconds() * 10_000_000)
    return (
        "040000008200E00074C5B7101A82E00800000000"
        + filetime.to_bytes(8, "little").hex().upper()
        + "0000000000000000"
        + "10000000"
        + secrets.token_hex(16).upper()
    )


@dataclass(frozen=True)
class Override:
    """One instance of a series that differs from the pattern: an exception or a cancellation.

    ``original`` is the instance's original start (UTC); ``oid_date`` its local date in the
    series' time zone (``yyyy-MM-dd``, for ``cancelledOccurrences``)."""

    original: datetime
    oid_date: str
    fields: dict[str, Any] | None  # the exception's own field set; None = cancelled
    extended: dict[str, tuple[str, str]]
    version: int
    modified: datetime

    @property
    def cancelled(self) -> bool:
        return self.fields is None


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def override_key(original: datetime) -> int:
    """Key of an instance in ``StoredEvent.overrides``: its original start in UTC microseconds."""
    return (original - _EPOCH) // _MICROSECOND


@dataclass(frozen=True)
class EventState:
    """What an event looked like at one version (for delta: which instances were in a window)."""

    fields: dict[str, Any]
    overrides: dict[int, Override]


@dataclass
class StoredEvent:
    id: str
    seq: int  # creation order, never changes (stable paging cursor)
    user_id: str
    calendar_id: str
    fields: dict[str, Any]  # normalised writable properties (see events.py)
    created: datetime
    modified: datetime
    change_key: str
    ical_uid: str
    version: int
    transaction_id: str | None = None
    extended: dict[str, tuple[str, str]] = field(default_factory=dict)  # canonical id -> (id, value)
    overrides: dict[int, Override] = field(default_factory=dict)  # series master: override_key -> Override

    # -- the read-only event properties that differ between masters, singles and instances --
    @property
    def event_type(self) -> str:
        return "seriesMaster" if self.fields.get("recurrence") else "singleInstance"

    @property
    def series_master_id(self) -> str | None:
        return None

    @property
    def original_start(self) -> datetime | None:
        return None

    @property
    def cancelled_occurrences(self) -> list[str]:
        """``OID.{masterId}.{yyyy-MM-dd}`` of each cancelled occurrence, by original start."""
        cancelled = sorted((o for o in self.overrides.values() if o.cancelled), key=lambda o: o.original)
        return [f"OID.{self.id}.{o.oid_date}" for o in cancelled]

    def state(self) -> EventState:
        return EventState(self.fields, dict(self.overrides))


@dataclass
class Calendar:
    id: str
    user_id: str
    name: str
    can_edit: bool
    is_default: bool
    change_key: str
    color: str = "auto"
    version: int = 0
    events: dict[str, StoredEvent] = field(default_factory=dict)
    tombstones: dict[str, int] = field(default_factory=dict)  # deleted event id -> version
    history: dict[str, list[tuple[int, EventState | None]]] = field(default_factory=dict)  # None = deleted

    def remember(self, ev: StoredEvent, deleted: bool = False) -> None:
        self.history.setdefault(ev.id, []).append((self.version, None if deleted else ev.state()))

    def state_at(self, event_id: str, version: int) -> EventState | None:
        """The event as it was at ``version`` (None: it did not exist then, or was deleted)."""
        states = self.history.get(event_id, [])
        pos = bisect_right([v for v, _ in states], version)
        return states[pos - 1][1] if pos else None


@dataclass
class User:
    id: str
    upn: str
    display_name: str
    default_calendar_id: str = ""
    calendars: dict[str, Calendar] = field(default_factory=dict)


#: Called with ``("created" | "updated" | "deleted", event)`` after every event change, while the
#: store lock is held: a listener must only take a snapshot and return (no I/O, no waiting).
ChangeListener = Callable[[str, "StoredEvent"], None]


class CalendarExists(Exception):
    """Another calendar of the mailbox already has that name (Graph: 409 ErrorFolderExists)."""


class Store:
    """All mutable state of the stand-in, guarded by one re-entrant lock."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.users: dict[str, User] = {}
        self._by_upn: dict[str, str] = {}
        self._events: dict[str, StoredEvent] = {}
        self._by_transaction: dict[tuple[str, str], str] = {}
        self._seq = 0
        self._listeners: list[ChangeListener] = []

    def add_change_listener(self, listener: ChangeListener) -> None:
        """Register ``listener(change_type, event)``: called after every create, update and delete
        of an event ("updated" on the series master for a change to one of its instances)."""
        with self.lock:
            self._listeners.append(listener)

    def _changed(self, change_type: str, ev: StoredEvent) -> None:
        for listener in list(self._listeners):
            listener(change_type, ev)

    @contextmanager
    def locked(self) -> Iterator[None]:
        with self.lock:
            yield

    # -- users and calendars ---------------------------------------------------------------
    def add_user(self, upn: str, display_name: str | None = None) -> User:
        with self.lock:
            if upn.lower() in self._by_upn:
                raise ValueError(f"user {upn} already exists")
            user = User(id=str(uuid.uuid4()), upn=upn, display_name=display_name or upn.split("@")[0])
            self.users[user.id] = user
            self._by_upn[upn.lower()] = user.id
            cal = self.add_calendar(user, "Calendar", can_edit=True, is_default=True)
            user.default_calendar_id = cal.id
            return user

    def find_user(self, key: str) -> User | None:
        """By object id (GUID, case-insensitive) or userPrincipalName (case-insensitive)."""
        with self.lock:
            return self.users.get(key.lower()) or self.users.get(self._by_upn.get(key.lower(), ""))

    def add_calendar(self, user: User, name: str, *, can_edit: bool = True, is_default: bool = False) -> Calendar:
        with self.lock:
            if any(c.name.lower() == name.lower() for c in user.calendars.values()):
                raise CalendarExists(name)
            cal = Calendar(
                id=new_item_id(),
                user_id=user.id,
                name=name,
                can_edit=can_edit,
                is_default=is_default,
                change_key=new_change_key(),
            )
            user.calendars[cal.id] = cal
            return cal

    # -- events ----------------------------------------------------------------------------
    def get_event(self, event_id: str) -> StoredEvent | None:
        with self.lock:
            return self._events.get(event_id)

    def find_by_transaction(self, user: User, transaction_id: str) -> StoredEvent | None:
        with self.lock:
            eid = self._by_transaction.get((user.id, transaction_id))
            return self._events.get(eid) if eid else None

    def create_event(
        self,
        cal: Calendar,
        fields: dict[str, Any],
        extended: dict[str, tuple[str, str]],
        transaction_id: str | None,
    ) -> StoredEvent:
        with self.lock:
            now = datetime.now(UTC)
            self._seq += 1
            cal.version += 1
            ev = StoredEvent(
                id=new_item_id(),
                seq=self._seq,
                user_id=cal.user_id,
                calendar_id=cal.id,
                fields=fields,
                created=now,
                modified=now,
                change_key=new_change_key(),
                ical_uid=new_ical_uid(now),
                version=cal.version,
                transaction_id=transaction_id,
                extended=dict(extended),
            )
            cal.events[ev.id] = ev
            self._events[ev.id] = ev
            cal.remember(ev)
            if transaction_id:
                self._by_transaction[(cal.user_id, transaction_id)] = ev.id
            self._changed("created", ev)
            return ev

    def update_event(
        self,
        cal: Calendar,
        ev: StoredEvent,
        fields: dict[str, Any],
        extended: dict[str, tuple[str, str]],
        *,
        reset_overrides: bool = False,
    ) -> StoredEvent:
        """Replace the event's fields; ``reset_overrides`` drops every exception and cancellation
        (a series whose pattern, start or end changed)."""
        with self.lock:
            cal.version += 1
            ev.fields = fields
            ev.extended = dict(extended)
            if reset_overrides:
                ev.overrides = {}
            self._touch(cal, ev)
            self._changed("updated", ev)
            return ev

    def put_override(
        self,
        cal: Calendar,
        master: StoredEvent,
        original: datetime,
        oid_date: str,
        fields: dict[str, Any] | None,
        extended: dict[str, tuple[str, str]],
    ) -> Override:
        """Write an exception (``fields``) or cancel (``fields=None``) one instance of a series.

        The series master is what changes: it gets a new version, changeKey and
        lastModifiedDateTime."""
        with self.lock:
            cal.version += 1
            now = datetime.now(UTC)
            override = Override(original, oid_date, fields, dict(extended), cal.version, now)
            master.overrides = {**master.overrides, override_key(original): override}
            self._touch(cal, master, now)
            self._changed("updated", master)
            return override

    @staticmethod
    def _touch(cal: Calendar, ev: StoredEvent, now: datetime | None = None) -> None:
        ev.modified = now or datetime.now(UTC)
        ev.change_key = new_change_key()
        ev.version = cal.version
        cal.remember(ev)

    def delete_event(self, cal: Calendar, ev: StoredEvent) -> None:
        with self.lock:
            cal.version += 1
            cal.events.pop(ev.id, None)
            self._events.pop(ev.id, None)
            cal.tombstones[ev.id] = cal.version
            cal.remember(ev, deleted=True)
            if ev.transaction_id:
                self._by_transaction.pop((ev.user_id, ev.transaction_id), None)
            self._changed("deleted", ev)

    def live_events(self, cal: Calendar) -> list[StoredEvent]:
        """The calendar's events in creation order."""
        with self.lock:
            return sorted(cal.events.values(), key=lambda e: e.seq)

    def changes(self, cal: Calendar, after: int, upto: int) -> list[tuple[int, str, StoredEvent | None]]:
        """``(version, id, event-or-None)`` of everything stamped in ``(after, upto]``, by version.

        ``None`` marks a deletion (tombstone)."""
        with self.lock:
            out: list[tuple[int, str, StoredEvent | None]] = [
                (e.version, e.id, e) for e in cal.events.values() if after < e.version <= upto
            ]
            out += [(v, eid, None) for eid, v in cal.tombstones.items() if after < v <= upto]
            return sorted(out, key=lambda t: t[0])

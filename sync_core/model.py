"""Provider-neutral calendar event model.

Both sides translate into this model (Graph JSON in ``convert/graph_json.py``, iCalendar in
``convert/ical.py``) and the reconcile step only ever compares models. The model holds what
both Microsoft 365 (Graph ``event`` resource) and iCalendar (RFC 5545 VEVENT) can express;
fields only one side knows stay on that side (CalDAV writes keep unknown properties of the
existing resource; Graph PATCH only sends what the model holds).

Times (RFC 5545 3.3.4 / 3.3.5, Graph ``dateTimeTimeZone``):
- an all-day event has ``start``/``end`` as :class:`datetime.date` (end exclusive, as both
  DTEND;VALUE=DATE and Graph's all-day ``end`` are) and ``timezone`` ``None``;
- a timed event has timezone-aware ``start``/``end`` in the zone named by ``timezone`` (an IANA
  name, never a Windows name), or naive datetimes with ``timezone`` ``None`` for floating time.

Recurring series (RFC 5545 3.8.5, Graph ``seriesMaster``) are one :class:`Event`: the master's
fields, ``recurrence`` (an RRULE in the canonical text of ``convert/recurrence.py``), the
cancelled occurrences ``exdates`` (EXDATE / Graph cancelled occurrences) and the modified ones
``overrides`` (RECURRENCE-ID components / Graph ``exception`` instances), each keyed by its
original start ("recurrence id"). A series moves as one unit: one link, one fingerprint.

Both sides read ``exdates`` and ``overrides`` only for recurrence ids inside the sync window
(Graph lists instances by window); writes keep what lies outside it.

Attendees and the organizer are display data: kept both ways, never a reason to invite.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum


class ShowAs(StrEnum):
    """Graph ``freeBusyStatus``; iCalendar TRANSP plus X-MICROSOFT-CDO-BUSYSTATUS."""

    FREE = "free"
    TENTATIVE = "tentative"
    BUSY = "busy"
    OOF = "oof"
    WORKING_ELSEWHERE = "workingElsewhere"
    UNKNOWN = "unknown"


class Sensitivity(StrEnum):
    """Graph ``sensitivity``; iCalendar CLASS (RFC 5545 3.8.1.3)."""

    NORMAL = "normal"
    PERSONAL = "personal"
    PRIVATE = "private"
    CONFIDENTIAL = "confidential"


class Importance(StrEnum):
    """Graph ``importance``; iCalendar PRIORITY (RFC 5545 3.8.1.9: 1-4 high, 5 normal, 6-9 low)."""

    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"


class AttendeeRole(StrEnum):
    """Graph ``attendeeType``; iCalendar ROLE / CUTYPE (RFC 5545 3.2.16, 3.2.3)."""

    REQUIRED = "required"
    OPTIONAL = "optional"
    RESOURCE = "resource"


class ResponseStatus(StrEnum):
    """Graph ``responseType``; iCalendar PARTSTAT (RFC 5545 3.2.12)."""

    NONE = "none"
    ORGANIZER = "organizer"
    TENTATIVE = "tentativelyAccepted"
    ACCEPTED = "accepted"
    DECLINED = "declined"
    NOT_RESPONDED = "notResponded"


@dataclass(frozen=True)
class Person:
    """An attendee or organizer: Graph ``attendee`` / ``recipient``; iCalendar ATTENDEE / ORGANIZER."""

    email: str
    name: str = ""
    role: AttendeeRole = AttendeeRole.REQUIRED
    status: ResponseStatus = ResponseStatus.NONE

    def key(self) -> list[str]:
        return [self.email.strip().casefold(), self.name.strip(), self.role.value, self.status.value]


@dataclass(frozen=True)
class Recurrence:
    """A recurrence rule: RFC 5545 RRULE value text (3.3.10) without the ``RRULE:`` prefix.

    ``rule`` is in the canonical form of :func:`sync_core.convert.recurrence.canonical_rrule`
    (so equal rules compare equal whichever side they were read from); ``rdates`` are extra
    occurrence starts (RDATE, 3.8.5.2), which Graph cannot express.
    """

    rule: str
    rdates: tuple[datetime | date, ...] = ()


@dataclass(frozen=True)
class Occurrence:
    """A modified occurrence of a series: its original start and its own content.

    ``recurrence_id`` is the start the rule gave it (RECURRENCE-ID, RFC 5545 3.8.4.4; Graph
    ``originalStart``), in the master's kind of value (date, zoned or floating datetime).
    ``event`` holds every field of the occurrence (no recurrence of its own).
    """

    recurrence_id: datetime | date
    event: Event


@dataclass(frozen=True)
class Event:
    """One calendar event or one whole recurring series, as both sides can hold it."""

    subject: str
    start: datetime | date
    end: datetime | date
    timezone: str | None = None
    uid: str | None = None
    body_text: str = ""
    body_html: str | None = None
    location: str = ""
    show_as: ShowAs = ShowAs.BUSY
    sensitivity: Sensitivity = Sensitivity.NORMAL
    categories: tuple[str, ...] = ()
    reminder_minutes: int | None = None
    last_modified: datetime | None = None
    importance: Importance = Importance.NORMAL
    online_meeting_url: str = ""
    organizer: Person | None = None
    attendees: tuple[Person, ...] = ()
    recurrence: Recurrence | None = None
    exdates: tuple[datetime | date, ...] = ()
    overrides: tuple[Occurrence, ...] = ()
    extra: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    @property
    def all_day(self) -> bool:
        return not isinstance(self.start, datetime)

    @property
    def is_series(self) -> bool:
        return self.recurrence is not None

    @property
    def duration(self) -> timedelta:
        """End minus start (days for all-day events; exact time otherwise)."""
        if isinstance(self.start, datetime) and isinstance(self.end, datetime):
            if self.start.tzinfo is not None and self.end.tzinfo is not None:
                return self.end.astimezone(UTC) - self.start.astimezone(UTC)
            return self.end.replace(tzinfo=None) - self.start.replace(tzinfo=None)
        return _as_date(self.end) - _as_date(self.start)

    def occurrence_at(self, recurrence_id: datetime | date) -> Event:
        """The plain (unmodified) occurrence of this series that starts at ``recurrence_id``."""
        start = recurrence_id
        if isinstance(start, datetime) and start.tzinfo is not None:
            if isinstance(self.start, datetime) and self.start.tzinfo is not None:
                start = start.astimezone(self.start.tzinfo)
            # exact elapsed duration, also across a DST change
            end: datetime | date = (start.astimezone(UTC) + self.duration).astimezone(start.tzinfo)
        else:
            end = start + self.duration
        return replace(self, start=start, end=end, recurrence=None, exdates=(), overrides=())

    def with_series(
        self, exdates: tuple[datetime | date, ...], overrides: tuple[Occurrence, ...]
    ) -> Event:
        """This series with these cancelled and modified occurrences, normalised: sorted by
        recurrence id, a cancelled occurrence is not also modified, and an override whose
        content equals the plain occurrence is dropped (it changes nothing)."""
        cancelled = {_instant(value): value for value in exdates}
        kept: dict[str, Occurrence] = {}
        for override in overrides:
            key = _instant(override.recurrence_id)
            if key in cancelled:
                continue
            plain = self.occurrence_at(override.recurrence_id)
            if override.event.content_key() == plain.content_key():
                continue
            kept[key] = override
        return replace(
            self,
            exdates=tuple(cancelled[key] for key in sorted(cancelled)),
            overrides=tuple(kept[key] for key in sorted(kept)),
        )

    def with_uid(self, uid: str | None) -> Event:
        return replace(self, uid=uid)

    def as_busy_block(self, title: str) -> Event:
        """A privacy copy: the same times (and series shape) as a private busy block with
        ``title`` and nothing else — no description, place, people, link or categories."""
        def block(event: Event) -> Event:
            return replace(event, subject=title, body_text="", body_html=None, location="",
                           show_as=ShowAs.BUSY if event.show_as is ShowAs.FREE else event.show_as,
                           sensitivity=Sensitivity.PRIVATE, categories=(), importance=Importance.NORMAL,
                           online_meeting_url="", organizer=None, attendees=(), extra=())
        return replace(block(self), overrides=tuple(replace(o, event=block(o.event)) for o in self.overrides))

    def clipped(self, start: datetime, end: datetime) -> Event:
        """This series with only the exdates and overrides whose recurrence id is in the window."""
        if not self.exdates and not self.overrides:
            return self
        return replace(
            self,
            exdates=tuple(value for value in self.exdates if in_window(value, start, end)),
            overrides=tuple(o for o in self.overrides if in_window(o.recurrence_id, start, end)),
        )

    def with_outside(self, previous: Event, start: datetime, end: datetime) -> Event:
        """This series plus ``previous``'s exdates and overrides outside the window, when the
        rule and start are unchanged (a changed rule resets exceptions, as in Outlook)."""
        if (
            self.recurrence is None
            or previous.recurrence != self.recurrence
            or _instant(previous.start) != _instant(self.start)
        ):
            return self
        outside = [v for v in previous.exdates if not in_window(v, start, end)]
        moved = [o for o in previous.overrides if not in_window(o.recurrence_id, start, end)]
        if not outside and not moved:
            return self
        return self.with_series(self.exdates + tuple(outside), self.overrides + tuple(moved))

    def fingerprint(self) -> str:
        """Hash of the synced content; equal for the same event read back from either side.

        Excludes ``uid``, ``last_modified`` and ``extra`` (identity and bookkeeping, not
        content) and ``body_html`` (the text form is what both sides share; Graph wraps text
        in HTML and CalDAV clients drop HTML).
        """
        return content_hash(self.content_key())

    def content_key(self) -> dict[str, object]:
        """The normalised fields compared by :meth:`fingerprint` and by first-sync matching."""
        return {
            "subject": self.subject.strip(),
            "start": _instant(self.start),
            "end": _instant(self.end),
            "all_day": self.all_day,
            "body": " ".join(self.body_text.split()),
            "location": self.location.strip(),
            "show_as": self.show_as.value,
            "sensitivity": self.sensitivity.value,
            "categories": sorted(self.categories),
            "reminder": self.reminder_minutes,
            "importance": self.importance.value,
            "online_meeting_url": self.online_meeting_url.strip(),
            "organizer": self.organizer.email.strip().casefold() if self.organizer else None,
            "attendees": sorted(person.key() for person in self.attendees),
            "recurrence": None if self.recurrence is None else {
                "rule": self.recurrence.rule,
                "rdates": sorted(_instant(value) for value in self.recurrence.rdates),
            },
            "exdates": sorted(_instant(value) for value in self.exdates),
            "overrides": sorted(
                [_instant(o.recurrence_id), o.event.content_key()] for o in self.overrides
            ),
        }

    def match_key(self) -> str:
        """Identity by content for first-sync pairing: subject, start and end instants."""
        return content_hash({
            "subject": self.subject.strip().casefold(),
            "start": _instant(self.start),
            "end": _instant(self.end),
        })


def _instant(value: datetime | date) -> str:
    """A comparable text form: UTC instant for aware datetimes, as-is for dates and floating."""
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            return value.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
        return value.strftime("%Y%m%dT%H%M%S")
    return value.strftime("%Y%m%d")


def in_window(value: datetime | date, start: datetime, end: datetime) -> bool:
    """Whether a start / recurrence id lies in ``[start, end)`` (aware bounds).

    Aware values compare as instants; dates and floating times as if they were UTC wall
    time (the same convention as ``convert.recurrence.expand``)."""
    if isinstance(value, datetime):
        moment = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    else:
        moment = datetime(value.year, value.month, value.day, tzinfo=UTC)
    return start <= moment < end


def instant_text(value: datetime | date) -> str:
    """The comparable text of a start or recurrence id (UTC for aware datetimes)."""
    return _instant(value)


def _as_date(value: datetime | date) -> date:
    return value.date() if isinstance(value, datetime) else value


def content_hash(data: object) -> str:
    """sha256 over canonical JSON; used for fingerprints and audit hashes."""
    raw = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()[:32]

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
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
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


@dataclass(frozen=True)
class Event:
    """One non-recurring calendar event, as both sides can hold it."""

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
    extra: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    @property
    def all_day(self) -> bool:
        return not isinstance(self.start, datetime)

    def with_uid(self, uid: str | None) -> Event:
        return replace(self, uid=uid)

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


def content_hash(data: object) -> str:
    """sha256 over canonical JSON; used for fingerprints and audit hashes."""
    raw = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()[:32]

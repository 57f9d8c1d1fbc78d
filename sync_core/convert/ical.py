"""iCalendar (RFC 5545) calendar object resources <-> the model (single events and series).

A CalDAV calendar object resource holds one VCALENDAR with the components of one UID
(RFC 4791 4.1): a single VEVENT, or a recurring series (docs/RECURRENCE.md): the master
VEVENT (RRULE, plus RDATEs, RFC 5545 3.8.5) and any number of overrides, VEVENTs with the
same UID and a RECURRENCE-ID (RFC 5545 3.8.4.4). A series is one :class:`Event` with
``recurrence``, ``exdates`` and ``overrides``.

Reading decisions (RFC 5545 sections in the function docstrings):
- TZID resolution, in order: a UTC alias -> "UTC"; an IANA name zoneinfo knows; a Windows id
  (Outlook exports ``TZID:W. Europe Standard Time``) -> its CLDR IANA zone; a globally unique
  TZID (``/mozilla.org/.../Europe/Berlin``, RFC 5545 3.2.19) -> its IANA suffix; otherwise
  the calendar's own VTIMEZONE (RFC 5545 3.6.5, e.g. Outlook's "Customized Time Zone"),
  named by the IANA zone with the same offsets over the event's years when there is one,
  else the times are converted to UTC and the timezone is "UTC". A TZID with neither a
  known name nor a VTIMEZONE raises :class:`UnknownTimeZone`. A known name wins over a
  VTIMEZONE of the same TZID (tzdata has the full history, a VTIMEZONE often only one rule).
  RDATE, EXDATE and RECURRENCE-ID values are resolved the same way and expressed in the
  master's kind of value (its zone, DATE, or floating).
- Custom VTIMEZONEs are built per call from this resource's definition (never from
  icalendar's process-wide cache, which is keyed by TZID and could hold another resource's
  "Customized Time Zone").
- DESCRIPTION is the body text; X-ALT-DESC;FMTTYPE=text/html is the HTML body only while it
  says the same words as DESCRIPTION (clients edit DESCRIPTION and keep stale X- copies).
- show-as: X-MICROSOFT-CDO-BUSYSTATUS when it agrees with TRANSP (FREE <-> TRANSPARENT),
  else TRANSP (TRANSPARENT -> free, OPAQUE/absent -> busy).
- The reminder is the first VALARM whose ACTION is DISPLAY or AUDIO and whose TRIGGER is a
  duration relative to the start (RELATED=START, the default) at or before the start.
  Only those alarms belong to the model; all others stay untouched on writes.
- An override is read as a single VEVENT is (it replaces the instance, RFC 5545 3.8.4.4: no
  field is inherited from the master) except that without DTEND/DURATION it lasts as long
  as the master. An override with STATUS:CANCELLED (Google's way) is a cancelled occurrence
  (an exdate), like an EXDATE value.
- Attendees and the organizer are display data (docs/RECURRENCE.md): every ATTENDEE and
  ORGANIZER written carries SCHEDULE-AGENT=CLIENT (RFC 6638 7.1), so the CalDAV server sends
  no invitation, and an ORGANIZER already stored is never rewritten.

Writing keeps every property and component of the previous resource the model does not own
(X- properties, URL, STATUS of the master, other VALARMs, ...), so a write never loses what
another client stored; each override keeps what the previous override with the same
RECURRENCE-ID held. Error messages name properties, never their content.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from icalendar import Alarm, Calendar, Component, Timezone, vCalAddress, vRecur, vText, vUri
from icalendar import Event as VEvent

from sync_core.convert.html_text import html_to_text
from sync_core.convert.recurrence import canonical_rrule
from sync_core.convert.timezones import (
    UTC_NAME,
    equivalent_zone,
    first_known_zone,
    iana_name,
    is_utc_name,
    is_windows_id,
    windows_to_iana,
)
from sync_core.errors import InvalidICalendar, UnknownTimeZone, UnsupportedEvent
from sync_core.model import (
    AttendeeRole,
    Event,
    Importance,
    Occurrence,
    Person,
    Recurrence,
    ResponseStatus,
    Sensitivity,
    ShowAs,
    instant_text,
)

PRODID = "-//davbridge//EN"
NO_MASTER = "modified occurrences without their series master"

#: VEVENT properties the model owns: rewritten from the model on every write. STATUS is not
#: owned (a master's STATUS is kept); an override's STATUS:CANCELLED is the one exception,
#: a cancelled occurrence is written as an EXDATE of the master instead.
OWNED_PROPERTIES = frozenset({
    "UID", "DTSTAMP", "SEQUENCE", "DTSTART", "DTEND", "DURATION", "SUMMARY", "DESCRIPTION",
    "X-ALT-DESC", "LOCATION", "CLASS", "TRANSP", "X-MICROSOFT-CDO-BUSYSTATUS",
    "X-MICROSOFT-CDO-INTENDEDSTATUS", "X-MICROSOFT-CDO-ALLDAYEVENT", "CATEGORIES",
    "LAST-MODIFIED", "PRIORITY", "ORGANIZER", "ATTENDEE", "CONFERENCE", "RRULE", "RDATE",
    "EXDATE", "RECURRENCE-ID",
})
_CALENDAR_REPLACED = frozenset({"PRODID", "VERSION", "METHOD"})

_CLASS_TO_SENSITIVITY = {
    "PUBLIC": Sensitivity.NORMAL,
    "PRIVATE": Sensitivity.PRIVATE,
    "CONFIDENTIAL": Sensitivity.CONFIDENTIAL,
    "X-PERSONAL": Sensitivity.PERSONAL,
}
_SENSITIVITY_TO_CLASS = {
    Sensitivity.NORMAL: "PUBLIC",
    Sensitivity.PRIVATE: "PRIVATE",
    Sensitivity.CONFIDENTIAL: "CONFIDENTIAL",
    # No RFC 5545 value; RFC 5545 3.8.1.3 makes other clients treat an x-name as PRIVATE.
    Sensitivity.PERSONAL: "X-PERSONAL",
}
_BUSYSTATUS = {
    "FREE": ShowAs.FREE,
    "TENTATIVE": ShowAs.TENTATIVE,
    "BUSY": ShowAs.BUSY,
    "OOF": ShowAs.OOF,
    "WORKINGELSEWHERE": ShowAs.WORKING_ELSEWHERE,
    "UNKNOWN": ShowAs.UNKNOWN,
}
_IMPORTANCE_TO_PRIORITY = {Importance.HIGH: 1, Importance.NORMAL: 5, Importance.LOW: 9}
_PARTSTAT_TO_STATUS = {
    "ACCEPTED": ResponseStatus.ACCEPTED,
    "DECLINED": ResponseStatus.DECLINED,
    "TENTATIVE": ResponseStatus.TENTATIVE,
    "NEEDS-ACTION": ResponseStatus.NOT_RESPONDED,
}
_STATUS_TO_PARTSTAT = {
    ResponseStatus.ACCEPTED: "ACCEPTED",
    ResponseStatus.DECLINED: "DECLINED",
    ResponseStatus.TENTATIVE: "TENTATIVE",
    ResponseStatus.NOT_RESPONDED: "NEEDS-ACTION",
    # iCalendar has no "organizer" participation status; the organizer takes part.
    ResponseStatus.ORGANIZER: "ACCEPTED",
}
_ROLE_TO_ICAL = {
    AttendeeRole.REQUIRED: "REQ-PARTICIPANT",
    AttendeeRole.OPTIONAL: "OPT-PARTICIPANT",
    AttendeeRole.RESOURCE: "NON-PARTICIPANT",
}
_RESOURCE_CUTYPES = frozenset({"RESOURCE", "ROOM"})
#: Properties that carry an online meeting URL, in the order they are read.
_MEETING_URL_PROPERTIES = (
    "X-GOOGLE-CONFERENCE", "X-MICROSOFT-SKYPETEAMSMEETINGURL", "X-MICROSOFT-ONLINEMEETINGCONFLINK",
)
_REMINDER_ACTIONS = frozenset({"DISPLAY", "AUDIO"})
_TEXT_ESCAPE = re.compile(r"\\([\\;,nN])")
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$")
_MAX_TZID_SHOWN = 80
#: VTIMEZONE coverage: years after the start of a series without an end, most years written.
_OPEN_ENDED_YEARS = 2
_MAX_YEARS = 50


# --- public API ---------------------------------------------------------------------------
def event_from_ical(data: str | bytes) -> Event:
    """Model of a calendar object resource: one VEVENT, or one recurring series.

    RFC 5545 3.6.1: the end is DTEND, else DTSTART + DURATION (3.3.6: days and weeks are
    nominal, wall-clock; hours, minutes and seconds exact), else one day after a DATE
    DTSTART and zero after a DATE-TIME. DATE values (3.3.4) make an all-day event; a
    DATE-TIME (3.3.5) is UTC ("Z" -> timezone "UTC"), zoned by TZID (3.2.19; see the module
    docstring) or floating (naive, timezone ``None``). An all-day DTEND not after DTSTART is
    read as one day. CLASS (3.8.1.3): PUBLIC/PRIVATE/CONFIDENTIAL, X-PERSONAL -> personal,
    any other value -> private as the RFC requires. CATEGORIES (3.8.1.2) from every
    property and comma list. LAST-MODIFIED (3.8.7.3), else DTSTAMP (3.8.7.2). PRIORITY
    (3.8.1.9): 1-4 high, 5 / 0 / absent normal, 6-9 low. ORGANIZER (3.8.4.3) and ATTENDEE
    (3.8.4.1, see :func:`_person`). The online meeting URL is the first RFC 7986 5.11
    CONFERENCE with a URI value, else X-GOOGLE-CONFERENCE, X-MICROSOFT-SKYPETEAMSMEETINGURL,
    X-MICROSOFT-ONLINEMEETINGCONFLINK.

    A series (3.8.5): ``recurrence`` is the canonical RRULE (3.8.5.3) plus the RDATE values
    (3.8.5.2, a PERIOD counts by its start); ``exdates`` every EXDATE value (3.8.5.1) plus
    the RECURRENCE-ID of every override with STATUS:CANCELLED (3.8.1.11); ``overrides`` the
    other RECURRENCE-ID components (3.8.4.4), normalised by :meth:`Event.with_series`.

    Raises :class:`InvalidICalendar` (unparseable, no VEVENT, several masters or UIDs, two
    overrides of one occurrence, overrides of a master that does not recur, missing or
    invalid DTSTART, inconsistent times, an invalid RRULE), :class:`UnsupportedEvent`
    (VTODO/VJOURNAL only, overrides without their master, RANGE=THISANDFUTURE, several
    RRULEs, EXRULE, RDATE without RRULE, an override with its own RRULE/RDATE) and
    :class:`UnknownTimeZone`.
    """
    calendar = _parse(data)
    master, overrides = _the_vevents(calendar)
    timezones = {str(tz.get("TZID", "")): tz for tz in calendar.walk("VTIMEZONE")}
    vevents = [c for c in calendar.subcomponents if c.name == "VEVENT"]
    raw_durations = _raw_top_vevent_values(data, "DURATION")
    if len(raw_durations) != len(vevents):
        raw_durations = [None] * len(vevents)
    raw_duration = {id(component): raw for component, raw in zip(vevents, raw_durations, strict=True)}

    event = _read_vevent(master, timezones, raw_duration[id(master)])
    recurrence = _recurrence(master, event.start, timezones)
    if recurrence is None:
        if overrides:
            raise InvalidICalendar("RECURRENCE-ID components belong to a VEVENT without RRULE or RDATE")
        return event
    event = replace(event, recurrence=recurrence)

    exdates = _exdates(master, event.start, timezones)
    modified: list[Occurrence] = []
    seen: set[str] = set()
    for component in overrides:
        recurrence_id = _recurrence_id(component, event.start, timezones)
        key = instant_text(recurrence_id)
        if key in seen:
            raise InvalidICalendar("two VEVENTs have the same RECURRENCE-ID")
        seen.add(key)
        if _text(component, "STATUS").strip().upper() == "CANCELLED":
            exdates.append(recurrence_id)
            continue
        if any(name in component for name in ("RRULE", "RDATE")):
            raise UnsupportedEvent("a RECURRENCE-ID component with its own RRULE or RDATE")
        occurrence = _read_vevent(
            component,
            timezones,
            raw_duration[id(component)],
            default_start=recurrence_id,
            default_duration=(event.all_day, event.duration),
        )
        modified.append(Occurrence(recurrence_id, replace(occurrence, uid=event.uid)))
    return event.with_series(tuple(exdates), tuple(modified))


def event_to_ical(event: Event, previous: str | bytes | None = None) -> str:
    """A calendar object resource (RFC 5545 3.4, CRLF line ends, folded) for the model.

    One VCALENDAR (PRODID ``-//davbridge//EN``, VERSION 2.0) with one VEVENT (3.6.1) and a
    VTIMEZONE (3.6.5) for every TZID used, generated from tzdata for the event's years.
    TZIDs are IANA names, never Windows ids (a Windows TZID kept from ``previous`` is
    renamed to its IANA zone; the wall-clock value is unchanged). UTC times use "Z",
    floating times no TZID, all-day events VALUE=DATE. DTSTAMP is now; LAST-MODIFIED is
    ``event.last_modified`` (the edit time on the side it came from) or now; SEQUENCE
    (3.8.7.4) is the previous one plus one when ``previous`` had one. PRIORITY (3.8.1.9) is
    1 / 5 / 9 (a previous value meaning the same importance is kept); ATTENDEE and
    ORGANIZER carry SCHEDULE-AGENT=CLIENT (RFC 6638 7.1), a previous ORGANIZER is kept as it
    was; the meeting URL is an RFC 7986 5.11 ``CONFERENCE;VALUE=URI;FEATURE=VIDEO``.

    A series: the master VEVENT has the RRULE (3.8.5.3; the previous RRULE when it is
    canonically equal), one RDATE (3.8.5.2) and one EXDATE (3.8.5.1) property per value,
    with the TZID / value type of DTSTART; then one VEVENT per override with UID, DTSTAMP,
    RECURRENCE-ID (3.8.4.4, value type and TZID of the master's DTSTART) and its own fields.
    VTIMEZONEs cover the series from its start to its UNTIL (or a bound from COUNT, or two
    years when it has no end) and every override, exdate and rdate.

    With ``previous`` (the resource as stored), every property of its master VEVENT outside
    :data:`OWNED_PROPERTIES`, every calendar-level property but PRODID/VERSION/METHOD, its
    VTIMEZONEs still referenced, and every VALARM but the reminder alarms are kept; the
    first reminder alarm is updated in place, so its other properties stay too. The
    previous override with the same RECURRENCE-ID plays the role of ``previous`` for each
    override (its STATUS:CANCELLED excepted); previous overrides and EXDATEs the model no
    longer holds are dropped.

    Raises :class:`ValueError` when ``event.uid`` is missing (3.8.4.7 UID is required) and
    :class:`InvalidICalendar` when ``previous`` cannot be parsed.
    """
    if not event.uid:
        raise ValueError("event.uid is required to write iCalendar")
    now = datetime.now(UTC).replace(microsecond=0)
    previous_calendar = _parse(previous) if previous is not None else None
    previous_event = _master_vevent(previous_calendar) if previous_calendar is not None else None

    calendar = Calendar()
    calendar.add("PRODID", PRODID)
    calendar.add("VERSION", "2.0")
    if previous_calendar is not None:
        for name, value in previous_calendar.items():
            if name.upper() not in _CALENDAR_REPLACED:
                calendar[name] = value

    master = _write_vevent(event, event.uid, previous_event, now)
    components = [master]
    if event.recurrence is not None:
        _write_series(master, event, previous_event)
        previous_overrides = _previous_overrides(previous_calendar, event.start)
        organizer = master.get("ORGANIZER")
        for override in event.overrides:
            earlier = previous_overrides.get(instant_text(_as_kind(override.recurrence_id, event.start)))
            component = _write_vevent(
                override.event, event.uid, earlier, now, master_organizer=organizer, is_override=True
            )
            _add_series_time(component, "RECURRENCE-ID", override.recurrence_id, event)
            components.append(component)
    for component in components:
        _rename_windows_tzids(component)

    first_year, last_year = _years(event)
    for component in components:
        calendar.add_component(component)
    text = calendar.to_ical().decode("utf-8")
    zones = _timezones_for(components, first_year, last_year, previous_calendar)
    if not zones:
        return text
    # The VTIMEZONEs go before the VEVENTs; a generated one is serialised once per process
    # (most of the cost of writing an event was serialising the same VTIMEZONE again).
    first_event = text.index("BEGIN:VEVENT\r\n")
    return text[:first_event] + "".join(zones) + text[first_event:]


def server_scheduled(data: str | bytes) -> bool:
    """Whether the resource is a scheduling object (RFC 6638 3.1: ORGANIZER and ATTENDEE)
    with any ORGANIZER / ATTENDEE the server schedules for (SCHEDULE-AGENT absent or SERVER,
    RFC 6638 7.1). Changing or deleting such a resource on a scheduling server sends iTIP
    requests, cancellations or replies. Unparseable data counts as not scheduled."""
    try:
        calendar = _parse(data)
    except InvalidICalendar:
        return False
    for vevent in calendar.walk("VEVENT"):
        organizers, attendees = _values(vevent, "ORGANIZER"), _values(vevent, "ATTENDEE")
        if not organizers or not attendees:
            continue
        for prop in [*organizers, *attendees]:
            if _params(prop).get("SCHEDULE-AGENT", "SERVER").upper() != "CLIENT":
                return True
    return False


def uid_of(data: str | bytes) -> str | None:
    """UID (RFC 5545 3.8.4.7) of the first VEVENT, without parsing the whole resource.

    Unfolds lines (3.1) and reads the first UID property directly inside a VEVENT (not the
    UID of a VALARM). ``None`` when there is none.
    """
    value = _raw_vevent_value(data, "UID")
    if value is None:
        return None
    return _unescape_text(value).strip() or None


def _raw_vevent_value(data: str | bytes, name: str) -> str | None:
    """Unparsed value of the first ``name`` property directly inside a VEVENT (3.1 unfolded)."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    text = re.sub(r"\r?\n[ \t]", "", text)
    stack: list[str] = []
    prefixes = (name.upper() + ":", name.upper() + ";")
    for line in text.splitlines():
        upper = line.upper()
        if upper.startswith("BEGIN:"):
            stack.append(upper[6:].strip())
        elif upper.startswith("END:"):
            if stack:
                stack.pop()
        elif stack and stack[-1] == "VEVENT" and upper.startswith(prefixes):
            return _property_value(line)
    return None


def _raw_top_vevent_values(data: str | bytes, name: str) -> list[str | None]:
    """For each VEVENT directly inside the VCALENDAR, in order: the unparsed value of its
    first ``name`` property, or None (3.1 unfolded)."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    text = re.sub(r"\r?\n[ \t]", "", text)
    stack: list[str] = []
    prefixes = (name.upper() + ":", name.upper() + ";")
    result: list[str | None] = []
    for line in text.splitlines():
        upper = line.upper()
        if upper.startswith("BEGIN:"):
            stack.append(upper[6:].strip())
            if stack == ["VCALENDAR", "VEVENT"]:
                result.append(None)
        elif upper.startswith("END:"):
            if stack:
                stack.pop()
        elif stack == ["VCALENDAR", "VEVENT"] and upper.startswith(prefixes) and result[-1] is None:
            result[-1] = _property_value(line)
    return result


# --- parsing helpers -------------------------------------------------------------------------
_VTIMEZONE_BLOCK = re.compile(r"^BEGIN:VTIMEZONE\r?\n.*?^END:VTIMEZONE\r?\n", re.M | re.S)
_TZID_LINE = re.compile(r"^TZID(?:;[^:\r\n]*)?:([^\r\n]*)", re.M)
_FOLD = re.compile(r"\r?\n[ \t]")


def _without_known_vtimezones(data: str | bytes) -> str | bytes:
    """``data`` without the VTIMEZONEs of zones the reader resolves by name (``_known_zone``:
    their rules come from tzdata, the component is never read), so they are not parsed.
    Anything not plainly a well-formed block is left as it is."""
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return data
    else:
        text = data
    if "BEGIN:VTIMEZONE" not in text:
        return data

    def drop(block: re.Match[str]) -> str:
        tzid = _TZID_LINE.search(_FOLD.sub("", block.group(0)))
        if tzid is None or block.group(0).count("BEGIN:VTIMEZONE") != 1:
            return block.group(0)
        name = tzid.group(1).strip()
        # A globally unique TZID ("/vendor/.../Zone") keeps its block: without it icalendar
        # guesses the zone with a warning.
        return "" if not name.startswith("/") and _known_zone(name) is not None else block.group(0)

    return _VTIMEZONE_BLOCK.sub(drop, text)


def _parse(data: str | bytes | None) -> Calendar:
    if data is None or not data.strip():
        raise InvalidICalendar("resource is empty")
    try:
        components = Calendar.from_ical(_without_known_vtimezones(data), multiple=True)
    except Exception as exc:  # icalendar raises ValueError, KeyError, ...; content stays out
        raise InvalidICalendar(f"not parseable as iCalendar ({type(exc).__name__})") from None
    calendars = [c for c in components if c.name == "VCALENDAR"]
    if not calendars:
        raise InvalidICalendar("resource holds no complete VCALENDAR")
    if len(components) > 1:
        raise InvalidICalendar("resource holds more than one top-level component")
    calendar = calendars[0]
    assert isinstance(calendar, Calendar)
    return calendar


def _the_vevents(calendar: Calendar) -> tuple[Component, list[Component]]:
    """The master VEVENT and the override VEVENTs (RFC 5545 3.8.4.4, RFC 4791 4.1)."""
    events = [c for c in calendar.subcomponents if c.name == "VEVENT"]
    if not events:
        if any(c.name in ("VTODO", "VJOURNAL") for c in calendar.subcomponents):
            raise UnsupportedEvent("only VEVENT resources are synced (this is a VTODO/VJOURNAL)")
        raise InvalidICalendar("calendar holds no VEVENT")
    masters = [e for e in events if "RECURRENCE-ID" not in e]
    overrides = [e for e in events if "RECURRENCE-ID" in e]
    if len(masters) > 1:
        raise InvalidICalendar("calendar holds more than one VEVENT without RECURRENCE-ID")
    if not masters:
        raise UnsupportedEvent(NO_MASTER)
    master = masters[0]
    uid = _text(master, "UID").strip()
    if any(_text(e, "UID").strip() != uid for e in overrides):
        raise InvalidICalendar("VEVENTs with different UID values in one resource")
    rules = master.get("RRULE")
    if isinstance(rules, list) and len(rules) > 1:
        raise UnsupportedEvent("several RRULE properties in one VEVENT (RFC 5545 3.8.5.3: SHOULD NOT)")
    if "EXRULE" in master:
        raise UnsupportedEvent("EXRULE (removed in RFC 5545) is not supported")
    for override in overrides:
        range_ = str(getattr(override.get("RECURRENCE-ID"), "params", {}).get("RANGE", "")).upper()
        if range_:
            raise UnsupportedEvent(f"RECURRENCE-ID;RANGE={range_[:20]} (this and future occurrences) is not supported")
    return master, overrides


def _master_vevent(calendar: Calendar) -> Component | None:
    for component in calendar.subcomponents:
        if component.name == "VEVENT" and "RECURRENCE-ID" not in component:
            return component
    return None


def _single(component: Component, name: str) -> Any:
    value = component.get(name)
    if isinstance(value, list):
        if not value:
            return None
        if name in ("DTSTART", "DTEND", "DURATION", "UID", "RECURRENCE-ID"):
            raise InvalidICalendar(f"{name} occurs more than once")
        return value[0]
    return value


def _values(component: Component | None, name: str) -> list[Any]:
    """Every value of a property that may occur more than once (in order)."""
    if component is None:
        return []
    value = component.get(name)
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _unescape_text(raw: str) -> str:
    """RFC 5545 3.3.11 TEXT unescaping (for values icalendar keeps raw, e.g. X- properties)."""

    def replace(match: re.Match[str]) -> str:
        char = match.group(1)
        return "\n" if char in "nN" else char

    return _TEXT_ESCAPE.sub(replace, raw)


def _property_value(line: str) -> str:
    """The value of a content line: after the first ':' outside a quoted parameter."""
    quoted = False
    for index, char in enumerate(line):
        if char == '"':
            quoted = not quoted
        elif char == ":" and not quoted:
            return line[index + 1 :]
    return ""


def _text(component: Component, name: str) -> str:
    value = _single(component, name)
    if value is None:
        return ""
    return _value_text(value)


def _value_text(value: Any) -> str:
    if isinstance(value, (vText, vCalAddress, vUri)) or type(value) is str:
        return str(value)
    return _unescape_text(_raw(value))


def _normalise_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _html_body(vevent: Component) -> str | None:
    for value in _values(vevent, "X-ALT-DESC"):
        params = getattr(value, "params", {})
        if str(params.get("FMTTYPE", "")).lower() != "text/html":
            continue
        raw = str(value) if isinstance(value, vText) else _unescape_text(_raw(value))
        return raw if raw.strip() else None
    return None


def _raw(value: Any) -> str:
    to_ical = getattr(value, "to_ical", None)
    if to_ical is None:
        return str(value)
    encoded = to_ical()
    return encoded.decode("utf-8") if isinstance(encoded, bytes) else str(encoded)


def _params(value: Any) -> dict[str, str]:
    """A property's parameters, names upper-cased, values as text."""
    params = getattr(value, "params", None) or {}
    return {str(key).upper(): str(item) for key, item in params.items()}


# --- reading one VEVENT ------------------------------------------------------------------------
def _read_vevent(
    vevent: Component,
    timezones: dict[str, Component],
    raw_duration: str | None,
    *,
    default_start: datetime | date | None = None,
    default_duration: tuple[bool, timedelta] | None = None,
) -> Event:
    """One VEVENT's own fields (RFC 5545 3.6.1), without recurrence.

    ``default_start`` stands in for a missing DTSTART (an override's RECURRENCE-ID);
    ``default_duration`` (all-day?, duration) for a missing DTEND and DURATION when the
    VEVENT is of the same kind (an override takes the master's duration).
    """
    start_time = _read_time(vevent, "DTSTART", timezones)
    if start_time is None:
        if default_start is None:
            raise InvalidICalendar("VEVENT has no DTSTART")
        start_time = _Time(default_start, getattr(getattr(default_start, "tzinfo", None), "key", None))
    end_time = _read_time(vevent, "DTEND", timezones)
    if end_time is None and "DURATION" not in vevent and default_duration is not None:
        all_day, duration = default_duration
        if all_day == (not isinstance(start_time.value, datetime)):
            end_time = _Time(_add_exact(start_time.value, duration), start_time.zone, start_time.custom_tzid)
    start, end, timezone = _resolve_times(vevent, start_time, end_time, raw_duration)

    body_text = _normalise_newlines(_text(vevent, "DESCRIPTION"))
    body_html = _html_body(vevent)
    if body_html is not None:
        html_text = html_to_text(body_html)
        if not body_text.strip():
            body_text = html_text
        elif html_text.split() != body_text.split():
            body_html = None  # stale copy: DESCRIPTION was edited, X-ALT-DESC kept

    return Event(
        subject=_text(vevent, "SUMMARY"),
        start=start,
        end=end,
        timezone=timezone,
        uid=_text(vevent, "UID") or None,
        body_text=body_text,
        body_html=body_html,
        location=_text(vevent, "LOCATION"),
        show_as=_show_as(vevent),
        sensitivity=_sensitivity(vevent),
        categories=_categories(vevent),
        reminder_minutes=_reminder(vevent),
        last_modified=_last_modified(vevent),
        importance=_importance(vevent),
        online_meeting_url=_online_meeting_url(vevent),
        organizer=_organizer(vevent),
        attendees=_attendees(vevent),
    )


def _add_exact(value: datetime | date, duration: timedelta) -> datetime | date:
    if isinstance(value, datetime) and value.tzinfo is not None:
        return (value.astimezone(UTC) + duration).astimezone(value.tzinfo)
    return value + duration


# --- times -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Time:
    """A DTSTART/DTEND value: date, naive (floating) or aware datetime.

    ``zone`` is the IANA name when the zone is known by name, ``custom_tzid`` the TZID of a
    calendar-defined VTIMEZONE whose rules were used.
    """

    value: datetime | date
    zone: str | None = None
    custom_tzid: str | None = None


def _read_time(vevent: Component, name: str, timezones: dict[str, Component]) -> _Time | None:
    prop = _single(vevent, name)
    if prop is None:
        return None
    return _time_value(_dt(prop), getattr(prop, "params", {}) or {}, name, timezones)


def _time_value(value: Any, params: Any, name: str, timezones: dict[str, Component]) -> _Time:
    """A DATE or DATE-TIME value (RFC 5545 3.3.4/3.3.5) with the parameters of its property."""
    is_date_value = str(params.get("VALUE", "")).upper() == "DATE"
    if isinstance(value, datetime):
        if is_date_value:  # icalendar turns DATE;TZID=... into a datetime; a DATE has no zone
            return _Time(value.date())
        tzid = params.get("TZID")
        if tzid:
            return _zoned(value.replace(tzinfo=None), str(tzid), timezones)
        if value.tzinfo is not None:  # form 2, "Z"
            return _Time(value.astimezone(ZoneInfo(UTC_NAME)), UTC_NAME)
        return _Time(value)  # form 1, floating
    if isinstance(value, date):
        return _Time(value)
    raise InvalidICalendar(f"{name} is not a valid DATE or DATE-TIME")


def _dt(prop: Any) -> Any:
    """``prop.dt``, or None for a value icalendar could not parse (``vBroken`` raises)."""
    try:
        return getattr(prop, "dt", None)
    except Exception:
        return None


def _known_zone(tzid: str) -> str | None:
    """IANA name for a TZID that names a zone (UTC alias, IANA, Windows, globally unique)."""
    if is_utc_name(tzid):
        return UTC_NAME
    direct = iana_name(tzid)
    if direct:
        return direct
    if is_windows_id(tzid):
        return windows_to_iana(tzid)
    cleaned = tzid.strip()
    if cleaned.startswith("/"):
        parts = cleaned.strip("/").split("/")
        for first in range(1, len(parts)):
            suffix = iana_name("/".join(parts[first:]))
            if suffix:
                return suffix
    return None


def _zoned(wall: datetime, tzid: str, timezones: dict[str, Component]) -> _Time:
    name = _known_zone(tzid)
    if name is not None:
        return _Time(wall.replace(tzinfo=ZoneInfo(name)), name)
    component = timezones.get(tzid)
    if component is None:
        raise UnknownTimeZone(
            f"TZID {tzid[:_MAX_TZID_SHOWN]!r} names no known time zone and the calendar "
            "has no VTIMEZONE for it"
        )
    return _Time(wall.replace(tzinfo=_custom_tzinfo(component)), None, tzid)


def _custom_tzinfo(component: Component) -> tzinfo:
    """tzinfo built from this VTIMEZONE's own rules (RFC 5545 3.6.5), never from a cache."""
    assert isinstance(component, Timezone)
    try:
        result = component.to_tz(lookup_tzid=False)
    except Exception:
        raise InvalidICalendar("a VTIMEZONE cannot be turned into time zone rules") from None
    if not isinstance(result, tzinfo):
        raise InvalidICalendar("a VTIMEZONE cannot be turned into time zone rules")
    return result


def _resolve_times(
    vevent: Component, start_time: _Time, end_time: _Time | None, raw_duration: str | None
) -> tuple[datetime | date, datetime | date, str | None]:
    start = start_time.value
    end = _end_from_duration(vevent, start, raw_duration) if end_time is None else end_time.value
    if isinstance(start, datetime) != isinstance(end, datetime):
        raise InvalidICalendar("DTSTART and DTEND are not both DATE or both DATE-TIME")
    if not isinstance(start, datetime):
        assert not isinstance(end, datetime)
        if end <= start:
            end = start + timedelta(days=1)
        return start, end, None
    assert isinstance(end, datetime)
    if (start.tzinfo is None) != (end.tzinfo is None):
        raise InvalidICalendar("DTSTART and DTEND mix floating and zoned times")
    if start.tzinfo is None:
        if end < start:
            raise InvalidICalendar("DTEND is before DTSTART")
        return start, end, None

    if start_time.zone is not None:
        name = start_time.zone
    else:
        name = _name_custom_zone(start, end, start_time.custom_tzid or "")
    target = ZoneInfo(name)
    start, end = start.astimezone(target), end.astimezone(target)
    if end < start:
        raise InvalidICalendar("DTEND is before DTSTART")
    return start, end, name


def _name_custom_zone(start: datetime, end: datetime, tzid: str) -> str:
    """IANA zone with the custom zone's offsets over the event's years, else "UTC"."""
    assert start.tzinfo is not None
    first = datetime(start.year, 1, 1, tzinfo=UTC)
    last = datetime(max(start.year, end.year) + 1, 1, 1, tzinfo=UTC)
    match = equivalent_zone(start.tzinfo, first, last, hint=tzid)
    return match if match is not None else UTC_NAME


def _end_from_duration(
    vevent: Component, start: datetime | date, raw_duration: str | None
) -> datetime | date:
    prop = _single(vevent, "DURATION")
    if prop is None:
        if isinstance(start, datetime):
            return start
        return start + timedelta(days=1)
    duration = _dt(prop)
    if not isinstance(duration, timedelta):
        raise InvalidICalendar("DURATION is not a valid duration")
    if duration < timedelta(0):
        raise InvalidICalendar("DURATION is negative")
    # icalendar folds "PT24H" into one day; the text tells nominal days from exact hours.
    parts = _duration_parts(raw_duration) if raw_duration else None
    days, exact = parts if parts is not None else (
        duration.days, timedelta(seconds=duration.seconds, microseconds=duration.microseconds)
    )
    if not isinstance(start, datetime):
        whole = days + (1 if exact else 0) + exact.days
        return start + timedelta(days=max(whole, 1))
    return _add_duration(start, days, exact)


_DURATION = re.compile(
    r"^\+?P(?:(?P<weeks>\d+)W|(?:(?P<days>\d+)D)?"
    r"(?:T(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+)S)?)?)$"
)


def _duration_parts(raw: str) -> tuple[int, timedelta] | None:
    """RFC 5545 3.3.6 dur-value -> (nominal days, exact time), None when not parseable."""
    match = _DURATION.match(raw.strip().upper())
    if match is None:
        return None
    number = {key: int(value) for key, value in match.groupdict().items() if value}
    days = number.get("weeks", 0) * 7 + number.get("days", 0)
    exact = timedelta(
        hours=number.get("hours", 0), minutes=number.get("minutes", 0), seconds=number.get("seconds", 0)
    )
    return days, exact


def _add_duration(start: datetime, days: int, exact: timedelta) -> datetime:
    """RFC 5545 3.3.6: days and weeks keep the wall clock, the rest is exact elapsed time."""
    wall = start + timedelta(days=days)
    if wall.tzinfo is None or not exact:
        return wall + exact
    return (wall.astimezone(UTC) + exact).astimezone(wall.tzinfo)


# --- series (RFC 5545 3.8.5) ---------------------------------------------------------------------
def _as_kind(value: datetime | date, reference: datetime | date) -> datetime | date:
    """``value`` as the same kind of value as the series start ``reference`` (RFC 5545 3.8.5.1
    wants EXDATE/RDATE of DTSTART's value type; other producers are read leniently).

    All-day series: a date (a date-time counts by its own wall-clock date). Timed series: a
    date is the series' time of day on that date; a floating value is wall-clock time in
    the series' zone; an aware one is converted to it; for a floating series the wall clock
    of the value is taken.
    """
    if not isinstance(reference, datetime):
        return value.date() if isinstance(value, datetime) else value
    if not isinstance(value, datetime):
        value = datetime.combine(value, reference.time())
        if reference.tzinfo is not None:
            value = value.replace(tzinfo=reference.tzinfo)
    if reference.tzinfo is None:
        return value.replace(tzinfo=None)
    if value.tzinfo is None:
        return value.replace(tzinfo=reference.tzinfo)
    return value.astimezone(reference.tzinfo)


def _date_list(
    vevent: Component, name: str, reference: datetime | date, timezones: dict[str, Component]
) -> list[datetime | date]:
    """Every value of every ``name`` property (RDATE / EXDATE, comma lists included), TZIDs
    resolved like DTSTART, a PERIOD (RFC 5545 3.3.9) by its start, in ``reference``'s kind."""
    result: list[datetime | date] = []
    for prop in _values(vevent, name):
        params = getattr(prop, "params", {}) or {}
        try:
            items = [item.dt for item in prop.dts]
        except Exception:
            raise InvalidICalendar(f"{name} is not a valid list of DATE, DATE-TIME or PERIOD values") from None
        for item in items:
            value = item[0] if isinstance(item, tuple) else item
            result.append(_as_kind(_time_value(value, params, name, timezones).value, reference))
    return result


#: The rule of a series given by RDATEs alone (the recurrence set is DTSTART plus the RDATEs).
RDATE_ONLY_RULE = "FREQ=DAILY;COUNT=1"


def _recurrence(
    master: Component, start: datetime | date, timezones: dict[str, Component]
) -> Recurrence | None:
    """RRULE (RFC 5545 3.8.5.3, canonical text) and RDATE (3.8.5.2) of the master, or None
    when it has neither. RDATE without an RRULE gets :data:`RDATE_ONLY_RULE` (the model knows
    a series by its rule; that rule yields DTSTART alone)."""
    prop = _single(master, "RRULE")
    if prop is None:
        if "RDATE" in master:
            # RFC 5545 3.8.5.2: the set is DTSTART plus the RDATEs; COUNT=1 yields DTSTART only.
            rdates = _date_list(master, "RDATE", start, timezones)
            return Recurrence(rule=RDATE_ONLY_RULE, rdates=tuple(dict.fromkeys(rdates)))
        return None
    if not isinstance(prop, vRecur):
        raise InvalidICalendar("RRULE is not a valid recurrence rule")
    rule = canonical_rrule(_raw(prop), start)
    rdates = _date_list(master, "RDATE", start, timezones)
    return Recurrence(rule=rule, rdates=tuple(dict.fromkeys(rdates)))


def _exdates(master: Component, start: datetime | date, timezones: dict[str, Component]) -> list[datetime | date]:
    """Every EXDATE value (RFC 5545 3.8.5.1) of the master, in the series' kind."""
    return _date_list(master, "EXDATE", start, timezones)


def _recurrence_id(
    override: Component, start: datetime | date, timezones: dict[str, Component]
) -> datetime | date:
    """RECURRENCE-ID (RFC 5545 3.8.4.4) read like DTSTART, in the series' kind."""
    time = _read_time(override, "RECURRENCE-ID", timezones)
    assert time is not None  # only called for components that have one
    return _as_kind(time.value, start)


def _previous_overrides(calendar: Calendar | None, start: datetime | date) -> dict[str, Component]:
    """The previous resource's overrides by the instant text of their RECURRENCE-ID."""
    if calendar is None:
        return {}
    timezones = {str(tz.get("TZID", "")): tz for tz in calendar.walk("VTIMEZONE")}
    result: dict[str, Component] = {}
    for component in calendar.subcomponents:
        if component.name != "VEVENT" or "RECURRENCE-ID" not in component:
            continue
        try:
            key = instant_text(_recurrence_id(component, start, timezones))
        except (InvalidICalendar, UnknownTimeZone):
            continue  # unreadable: nothing of it can be matched, it is dropped
        result.setdefault(key, component)
    return result


# --- other properties --------------------------------------------------------------------------
def _show_as(vevent: Component) -> ShowAs:
    transp = _text(vevent, "TRANSP").strip().upper()
    status = _BUSYSTATUS.get(_text(vevent, "X-MICROSOFT-CDO-BUSYSTATUS").strip().upper())
    if status is not None and (not transp or (transp == "TRANSPARENT") == (status is ShowAs.FREE)):
        return status
    return ShowAs.FREE if transp == "TRANSPARENT" else ShowAs.BUSY


def _sensitivity(vevent: Component) -> Sensitivity:
    value = _text(vevent, "CLASS").strip().upper()
    if not value:
        return Sensitivity.NORMAL
    return _CLASS_TO_SENSITIVITY.get(value, Sensitivity.PRIVATE)


def _categories(vevent: Component) -> tuple[str, ...]:
    values = vevent.get("CATEGORIES")
    if values is None:
        return ()
    names: list[str] = []
    for value in values if isinstance(values, list) else [values]:
        cats = getattr(value, "cats", None)
        if cats is None:
            cats = _unescape_text(_raw(value)).split(",")
        names.extend(str(cat).strip() for cat in cats)
    return tuple(dict.fromkeys(name for name in names if name))


def _reminder_trigger(alarm: Component) -> timedelta | None:
    """The offset before the start when ``alarm`` is a reminder alarm (see module doc)."""
    if alarm.name != "VALARM":
        return None
    action = _text(alarm, "ACTION").strip().upper()
    if action not in _REMINDER_ACTIONS:
        return None
    trigger = alarm.get("TRIGGER")
    if trigger is None or isinstance(trigger, list):
        return None
    params = getattr(trigger, "params", {}) or {}
    if str(params.get("RELATED", "START")).upper() != "START":
        return None
    value = getattr(trigger, "dt", None)
    if not isinstance(value, timedelta) or value > timedelta(0):
        return None
    return -value


def _reminder(vevent: Component) -> int | None:
    """RFC 5545 3.6.6/3.8.6.3: minutes before the start of the first reminder alarm."""
    for alarm in vevent.subcomponents:
        before = _reminder_trigger(alarm)
        if before is not None:
            return int(before.total_seconds() // 60)
    return None


def _last_modified(vevent: Component) -> datetime | None:
    for name in ("LAST-MODIFIED", "DTSTAMP"):
        prop = _single(vevent, name)
        value = getattr(prop, "dt", None)
        if isinstance(value, datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=UTC)
            return value.astimezone(UTC)
    return None


def _importance(vevent: Component) -> Importance:
    """RFC 5545 3.8.1.9 PRIORITY: 1-4 high, 5 normal, 6-9 low, 0 (undefined) / absent normal."""
    return _importance_of(_single(vevent, "PRIORITY"))


def _importance_of(prop: Any) -> Importance:
    if prop is None:
        return Importance.NORMAL
    try:
        value = int(_raw(prop).strip())
    except ValueError:
        return Importance.NORMAL
    if 1 <= value <= 4:
        return Importance.HIGH
    if 6 <= value <= 9:
        return Importance.LOW
    return Importance.NORMAL


def _conference_uri(prop: Any) -> str | None:
    """The URI of an RFC 7986 5.11 CONFERENCE property (VALUE=URI), else None."""
    value_type = _params(prop).get("VALUE", "URI").upper()
    text = _value_text(prop).strip()
    if value_type != "URI" or not _URI.match(text):
        return None
    return text


def _online_meeting_url(vevent: Component) -> str:
    """First CONFERENCE (RFC 7986 5.11) with a URI value, else the X- properties of Google
    and Microsoft that carry the join URL."""
    for prop in _values(vevent, "CONFERENCE"):
        uri = _conference_uri(prop)
        if uri is not None:
            return uri
    for name in _MEETING_URL_PROPERTIES:
        for prop in _values(vevent, name):
            text = _value_text(prop).strip()
            if text:
                return text
    return ""


def _address_email(prop: Any) -> str:
    """The e-mail address of a CAL-ADDRESS (RFC 5545 3.3.3): the ``mailto:`` address, else
    the RFC 7986 6.2 EMAIL parameter, else the whole URI."""
    value = _value_text(prop).strip()
    if value.casefold().startswith("mailto:"):
        return value[len("mailto:") :].strip()
    email = _params(prop).get("EMAIL", "").strip()
    return email or value


def _cal_address(email: str) -> str:
    email = email.strip()
    return email if _URI.match(email) and "@" not in email.split(":", 1)[0] else f"mailto:{email}"


def _role_of(params: dict[str, str]) -> AttendeeRole:
    """RFC 5545 3.2.16 ROLE / 3.2.3 CUTYPE: NON-PARTICIPANT or a RESOURCE/ROOM is a resource,
    OPT-PARTICIPANT optional, anything else (REQ-PARTICIPANT, CHAIR, absent) required."""
    role = params.get("ROLE", "").upper()
    if role == "NON-PARTICIPANT" or params.get("CUTYPE", "").upper() in _RESOURCE_CUTYPES:
        return AttendeeRole.RESOURCE
    if role == "OPT-PARTICIPANT":
        return AttendeeRole.OPTIONAL
    return AttendeeRole.REQUIRED


def _status_of(params: dict[str, str]) -> ResponseStatus:
    """RFC 5545 3.2.12 PARTSTAT: NEEDS-ACTION -> notResponded; absent or any other value
    (DELEGATED, x-name) -> none."""
    return _PARTSTAT_TO_STATUS.get(params.get("PARTSTAT", "").upper(), ResponseStatus.NONE)


def _person(prop: Any, status: ResponseStatus | None = None) -> Person | None:
    email = _address_email(prop)
    if not email:
        return None
    params = _params(prop)
    return Person(
        email=email,
        name=params.get("CN", "").strip(),
        role=_role_of(params),
        status=_status_of(params) if status is None else status,
    )


def _organizer(vevent: Component) -> Person | None:
    """RFC 5545 3.8.4.3 ORGANIZER: address and CN, status organizer."""
    props = _values(vevent, "ORGANIZER")
    return _person(props[0], ResponseStatus.ORGANIZER) if props else None


def _attendees(vevent: Component) -> tuple[Person, ...]:
    """RFC 5545 3.8.4.1 ATTENDEE properties, in order, one per address (the first wins)."""
    result: dict[str, Person] = {}
    for prop in _values(vevent, "ATTENDEE"):
        person = _person(prop)
        if person is not None:
            result.setdefault(person.email.casefold(), person)
    return tuple(result.values())


# --- writing -------------------------------------------------------------------------------------
def _write_vevent(
    event: Event,
    uid: str,
    previous: Component | None,
    now: datetime,
    *,
    master_organizer: Any = None,
    is_override: bool = False,
) -> Component:
    """One VEVENT for ``event`` (its own fields, no recurrence), keeping what ``previous``
    holds outside :data:`OWNED_PROPERTIES`; an override never keeps STATUS:CANCELLED (a
    cancelled occurrence is an EXDATE of the master, RFC 5545 3.8.5.1)."""
    vevent = VEvent()
    if previous is not None:
        for name, value in previous.items():
            if name.upper() in OWNED_PROPERTIES:
                continue
            if is_override and name.upper() == "STATUS" and _value_text(value).strip().upper() == "CANCELLED":
                continue
            vevent[name] = value
    _write_owned(vevent, event, uid, previous, now, master_organizer)
    _write_alarms(vevent, event, previous)
    return vevent


def _write_owned(
    vevent: Component,
    event: Event,
    uid: str,
    previous: Component | None,
    now: datetime,
    master_organizer: Any = None,
) -> None:
    vevent.add("UID", uid)
    vevent.add("DTSTAMP", now)
    if previous is not None and previous.get("SEQUENCE") is not None:
        try:
            sequence = int(_single(previous, "SEQUENCE"))
        except (TypeError, ValueError):
            sequence = 0
        vevent.add("SEQUENCE", sequence + 1)
    _write_times(vevent, event)
    if event.subject:
        _write_text(vevent, "SUMMARY", event.subject, previous)
    if event.body_text:
        _write_text(vevent, "DESCRIPTION", event.body_text, previous)
    if event.body_html and html_to_text(event.body_html).split() == event.body_text.split():
        vevent.add("X-ALT-DESC", vText(event.body_html), parameters={"FMTTYPE": "text/html"})
    if event.location:
        _write_text(vevent, "LOCATION", event.location, previous)
    vevent.add("CLASS", _SENSITIVITY_TO_CLASS[event.sensitivity])
    vevent.add("TRANSP", "TRANSPARENT" if event.show_as is ShowAs.FREE else "OPAQUE")
    status = next(key for key, value in _BUSYSTATUS.items() if value is event.show_as)
    vevent.add("X-MICROSOFT-CDO-BUSYSTATUS", vText(status))
    categories = list(dict.fromkeys(c for c in event.categories if c.strip()))
    if categories:
        vevent.add("CATEGORIES", categories)
    _write_priority(vevent, event.importance, previous)
    _write_organizer(vevent, event.organizer, previous, master_organizer)
    _write_attendees(vevent, event.attendees, previous)
    _write_conference(vevent, event.online_meeting_url, previous)
    modified = event.last_modified or now
    if modified.tzinfo is None:
        modified = modified.replace(tzinfo=UTC)
    vevent.add("LAST-MODIFIED", modified.astimezone(UTC).replace(microsecond=0))


def _write_priority(vevent: Component, importance: Importance, previous: Component | None) -> None:
    """RFC 5545 3.8.1.9 PRIORITY 1 / 5 / 9; a previous value of the same importance is kept."""
    earlier = _values(previous, "PRIORITY")
    if earlier and _importance_of(earlier[0]) is importance:
        vevent["PRIORITY"] = earlier[0]
        return
    vevent.add("PRIORITY", _IMPORTANCE_TO_PRIORITY[importance])


def _write_organizer(
    vevent: Component, organizer: Person | None, previous: Component | None, master_organizer: Any
) -> None:
    """RFC 5545 3.8.4.3 ORGANIZER with SCHEDULE-AGENT=CLIENT (RFC 6638 7.1).

    An ORGANIZER of ``previous`` is kept as it was (RFC 6638 3.2.4: the organizer of a
    scheduling object resource does not change), whatever the model says; a new override
    takes the master's ORGANIZER (RFC 6638 3.1: the same in every component).
    """
    earlier = _values(previous, "ORGANIZER")
    prop = earlier[0] if earlier else None
    if prop is None and organizer is not None and master_organizer is not None:
        prop = master_organizer[0] if isinstance(master_organizer, list) else master_organizer
    if prop is None:
        if organizer is None or not organizer.email.strip():
            return
        prop = vCalAddress(_cal_address(organizer.email))
        if organizer.name.strip():
            prop.params["CN"] = organizer.name.strip()
    prop.params["SCHEDULE-AGENT"] = "CLIENT"
    vevent.add("ORGANIZER", prop)


def _write_attendees(vevent: Component, attendees: Iterable[Person], previous: Component | None) -> None:
    """RFC 5545 3.8.4.1 ATTENDEE, one per address, each with SCHEDULE-AGENT=CLIENT (RFC 6638 7.1).

    An attendee already in ``previous`` (same address) keeps its other parameters, with CN,
    ROLE (3.2.16) / CUTYPE (3.2.3) and PARTSTAT (3.2.12) changed only where they no longer
    read as the model's values; a new one gets CN, ROLE, PARTSTAT (none: absent),
    CUTYPE=RESOURCE for resources and RSVP=FALSE (3.2.17: no reply expected).
    """
    earlier: dict[str, Any] = {}
    for prop in _values(previous, "ATTENDEE"):
        earlier.setdefault(_address_email(prop).casefold(), prop)
    seen: set[str] = set()
    for person in attendees:
        key = person.email.strip().casefold()
        if not key or key in seen:
            continue
        seen.add(key)
        prop = earlier.get(key)
        if prop is None:
            prop = vCalAddress(_cal_address(person.email))
            if person.name.strip():
                prop.params["CN"] = person.name.strip()
            if person.role is AttendeeRole.RESOURCE:
                prop.params["CUTYPE"] = "RESOURCE"
            prop.params["ROLE"] = _ROLE_TO_ICAL[person.role]
            if person.status in _STATUS_TO_PARTSTAT:
                prop.params["PARTSTAT"] = _STATUS_TO_PARTSTAT[person.status]
            prop.params["RSVP"] = "FALSE"
        else:
            _update_attendee(prop, person)
        prop.params["SCHEDULE-AGENT"] = "CLIENT"
        vevent.add("ATTENDEE", prop)


def _update_attendee(prop: Any, person: Person) -> None:
    params = prop.params
    name = person.name.strip()
    if name:
        params["CN"] = name
    else:
        params.pop("CN", None)
    current = _params(prop)
    if _role_of(current) is not person.role:
        params["ROLE"] = _ROLE_TO_ICAL[person.role]
        if person.role is AttendeeRole.RESOURCE:
            params["CUTYPE"] = "RESOURCE"
        elif current.get("CUTYPE", "").upper() in _RESOURCE_CUTYPES:
            params.pop("CUTYPE", None)
    if _status_of(current) is not person.status:
        if person.status in _STATUS_TO_PARTSTAT:
            params["PARTSTAT"] = _STATUS_TO_PARTSTAT[person.status]
        else:
            params.pop("PARTSTAT", None)


def _write_conference(vevent: Component, url: str, previous: Component | None) -> None:
    """RFC 7986 5.11 ``CONFERENCE;VALUE=URI;FEATURE=VIDEO`` first (the previous property when
    its URI is the same), then the previous resource's other CONFERENCE properties (dial-in
    numbers, ...). Without a URL in the model no CONFERENCE is written."""
    url = url.strip()
    if not url:
        return
    earlier = _values(previous, "CONFERENCE")
    read = next((prop for prop in earlier if _conference_uri(prop) is not None), None)
    if read is not None and _conference_uri(read) == url:
        vevent.add("CONFERENCE", read)
    else:
        vevent.add("CONFERENCE", url, parameters={"VALUE": "URI", "FEATURE": "VIDEO"})
    for prop in earlier:
        if prop is not read and _conference_uri(prop) != url:
            vevent.add("CONFERENCE", prop)


def _write_series(vevent: Component, event: Event, previous: Component | None) -> None:
    """RRULE (RFC 5545 3.8.5.3), RDATE (3.8.5.2) and EXDATE (3.8.5.1) of the master.

    The previous RRULE is kept when it is canonically equal to the model's rule (so another
    client's spelling survives); one RDATE / EXDATE property per value.
    """
    assert event.recurrence is not None
    rule = event.recurrence.rule
    if rule == RDATE_ONLY_RULE and event.recurrence.rdates and not _values(previous, "RRULE"):
        rule = ""  # DTSTART plus RDATEs, as it was written
    if rule:
        earlier = _values(previous, "RRULE")
        kept = False
        if len(earlier) == 1 and isinstance(earlier[0], vRecur):
            try:
                kept = canonical_rrule(_raw(earlier[0]), event.start) == rule
            except InvalidICalendar:
                kept = False
        if kept:
            vevent["RRULE"] = earlier[0]
        else:
            try:
                vevent["RRULE"] = vRecur.from_ical(rule)
            except ValueError:
                raise ValueError("event.recurrence.rule is not a valid RRULE value") from None
    for value in event.recurrence.rdates:
        _add_series_time(vevent, "RDATE", value, event)
    for value in event.exdates:
        _add_series_time(vevent, "EXDATE", value, event)


def _add_series_time(component: Component, name: str, value: datetime | date, event: Event) -> None:
    """RDATE / EXDATE / RECURRENCE-ID ``value`` with the value type and TZID of the series'
    DTSTART: VALUE=DATE for all-day series, "Z" for UTC, no TZID for floating ones."""
    value = _as_kind(value, event.start)
    if not isinstance(value, datetime) or value.tzinfo is None:
        component.add(name, value)
        return
    zone = _write_zone_name(event)
    if zone == UTC_NAME:
        component.add(name, value.astimezone(UTC))
        return
    # Naive value + explicit TZID, as for DTSTART (see _write_times).
    component.add(name, value.astimezone(ZoneInfo(zone)).replace(tzinfo=None), parameters={"TZID": zone})


def _write_text(vevent: Component, name: str, value: str, previous: Component | None) -> None:
    """Keep the previous property (with LANGUAGE, ALTREP, ...) when its text is unchanged."""
    if previous is not None:
        old = previous.get(name)
        if isinstance(old, vText) and _normalise_newlines(str(old)) == _normalise_newlines(value):
            vevent[name] = old
            return
    vevent.add(name, value)


def _write_times(vevent: Component, event: Event) -> None:
    if event.all_day:
        start = _as_date(event.start)
        end = _as_date(event.end)
        if end <= start:
            end = start + timedelta(days=1)
        vevent.add("DTSTART", start)
        vevent.add("DTEND", end)
        return
    assert isinstance(event.start, datetime) and isinstance(event.end, datetime)
    if event.start.tzinfo is None or event.end.tzinfo is None:
        vevent.add("DTSTART", event.start.replace(tzinfo=None))
        vevent.add("DTEND", event.end.replace(tzinfo=None))
        return
    name = _write_zone_name(event)
    if name == UTC_NAME:
        vevent.add("DTSTART", event.start.astimezone(UTC))
        vevent.add("DTEND", event.end.astimezone(UTC))
        return
    target = ZoneInfo(name)
    for prop, value in (("DTSTART", event.start), ("DTEND", event.end)):
        wall = value.astimezone(target).replace(tzinfo=None)
        # Naive value + explicit TZID: icalendar would write "Z" for zones it deems equal
        # to UTC (Africa/Abidjan), and the TZID must be exactly this IANA name.
        vevent.add(prop, wall, parameters={"TZID": name})


def _write_zone_name(event: Event) -> str:
    """IANA name to write (never a Windows id); UTC when the zone cannot be resolved."""
    return first_known_zone((event.timezone, getattr(getattr(event.start, "tzinfo", None), "key", None)))


def _as_date(value: datetime | date) -> date:
    return value.date() if isinstance(value, datetime) else value


def _write_alarms(vevent: Component, event: Event, previous: Component | None) -> None:
    """Keep every previous subcomponent; the model owns only the reminder alarms."""
    wanted = event.reminder_minutes
    placed = False
    for component in previous.subcomponents if previous is not None else []:
        if _reminder_trigger(component) is None:
            vevent.add_component(component)
            continue
        if wanted is None:
            continue  # the reminder was removed: drop every reminder alarm
        if not placed:
            component.pop("TRIGGER", None)
            component.add("TRIGGER", timedelta(minutes=-max(0, wanted)))
            placed = True
        vevent.add_component(component)
    if wanted is not None and not placed:
        alarm = Alarm()
        alarm.add("ACTION", "DISPLAY")
        alarm.add("DESCRIPTION", "Reminder")
        alarm.add("TRIGGER", timedelta(minutes=-max(0, wanted)))
        # Put the reminder first so it is the one read back.
        vevent.subcomponents.insert(0, alarm)


def _all_properties(component: Component) -> Iterable[Any]:
    for sub in component.walk():
        for value in sub.values():
            yield from value if isinstance(value, list) else [value]


def _rename_windows_tzids(vevent: Component) -> None:
    """A kept property with a Windows TZID gets the IANA name (same wall-clock value)."""
    for value in _all_properties(vevent):
        params = getattr(value, "params", None)
        if not params or "TZID" not in params:
            continue
        tzid = str(params["TZID"])
        if is_windows_id(tzid):
            params["TZID"] = windows_to_iana(tzid)


def _used_tzids(vevent: Component) -> list[str]:
    result: list[str] = []
    for value in _all_properties(vevent):
        params = getattr(value, "params", None)
        if params and params.get("TZID"):
            tzid = str(params["TZID"])
            if tzid not in result and tzid != UTC_NAME:
                result.append(tzid)
    return result


def _timezones_for(
    components: list[Component], first_year: int, last_year: int, previous_calendar: Calendar | None
) -> list[str]:
    """A VTIMEZONE (serialised) for every TZID used in any component (RFC 5545 3.2.19
    requires one)."""
    previous_timezones = {
        str(tz.get("TZID", "")): tz
        for tz in (previous_calendar.walk("VTIMEZONE") if previous_calendar is not None else [])
    }
    result: list[str] = []
    used: list[str] = []
    for component in components:
        used.extend(tzid for tzid in _used_tzids(component) if tzid not in used)
    for tzid in used:
        known = _known_zone(tzid)
        if known is not None:
            result.append(_serialised_vtimezone(known, tzid, first_year, last_year))
        elif tzid in previous_timezones:
            result.append(previous_timezones[tzid].to_ical().decode("utf-8"))
    return result


def _years(event: Event) -> tuple[int, int]:
    """Years the VTIMEZONEs cover: the event (a year either side), and for a series its
    rdates, exdates and overrides and the rule up to its end (:func:`_rule_last_year`)."""
    values: list[datetime | date] = [event.start, event.end]
    last = event.end.year + 1
    if event.recurrence is not None:
        values.extend(event.recurrence.rdates)
        values.extend(event.exdates)
        for override in event.overrides:
            values.extend((override.recurrence_id, override.event.start, override.event.end))
        if event.recurrence.rule:
            last = max(last, _rule_last_year(event.recurrence.rule, event.start.year))
    return min(v.year for v in values) - 1, max(last, max(v.year for v in values) + 1)


#: Occurrence periods per year by FREQ, to bound a COUNT rule's last year.
_PERIODS_PER_YEAR = {"YEARLY": 1, "MONTHLY": 12, "WEEKLY": 52, "DAILY": 365}
#: A period without an occurrence (BYMONTHDAY=31, 29 February...) is skipped (RFC 5545 3.3.10).
_COUNT_SLACK = 4


def _rule_last_year(rule: str, start_year: int) -> int:
    """The year of the rule's last occurrence or a bound of it: UNTIL's year; for COUNT,
    COUNT x INTERVAL periods (with slack for skipped periods); else start + 2 years. At most
    :data:`_MAX_YEARS` after the start."""
    parts = dict(part.split("=", 1) for part in rule.upper().split(";") if "=" in part)
    until, count, interval = parts.get("UNTIL", ""), parts.get("COUNT", ""), parts.get("INTERVAL", "1")
    if until[:4].isdigit():
        last = int(until[:4])
    elif count.isdigit():
        periods = int(count) * (int(interval) if interval.isdigit() and int(interval) > 0 else 1)
        per_year = _PERIODS_PER_YEAR.get(parts.get("FREQ", ""), 365 * 24)
        last = start_year + -(-periods * _COUNT_SLACK // per_year)
    else:
        last = start_year + _OPEN_ENDED_YEARS
    return min(max(last, start_year), start_year + _MAX_YEARS)


@functools.lru_cache(maxsize=256)
def _serialised_vtimezone(zone_name: str, tzid: str, first_year: int, last_year: int) -> str:
    """The VTIMEZONE as icalendar writes it (folded, CRLF), parsed and serialised once."""
    return str(Timezone.from_ical(_vtimezone(zone_name, tzid, first_year, last_year)).to_ical().decode("utf-8"))


@functools.lru_cache(maxsize=256)
def _vtimezone(zone_name: str, tzid: str, first_year: int, last_year: int) -> bytes:
    """VTIMEZONE text from tzdata for ``first_year``..``last_year`` (icalendar from_tzinfo)."""
    component = Timezone.from_tzinfo(
        ZoneInfo(zone_name),
        tzid=tzid,
        first_date=date(first_year, 1, 1),
        last_date=date(last_year + 1, 1, 1),
    )
    result: bytes = component.to_ical()
    return result


__all__ = [
    "NO_MASTER",
    "OWNED_PROPERTIES",
    "PRODID",
    "event_from_ical",
    "event_to_ical",
    "server_scheduled",
    "uid_of",
]

"""iCalendar (RFC 5545) calendar object resources <-> the model (single, non-recurring events).

A CalDAV calendar object resource holds one VCALENDAR with the components of one UID
(RFC 4791 4.1). This version syncs resources with exactly one VEVENT that does not recur;
RRULE, RDATE and RECURRENCE-ID raise :class:`UnsupportedEvent` until recurrence is added.

Reading decisions (RFC 5545 sections in the function docstrings):
- TZID resolution, in order: a UTC alias -> "UTC"; an IANA name zoneinfo knows; a Windows id
  (Outlook exports ``TZID:W. Europe Standard Time``) -> its CLDR IANA zone; a globally unique
  TZID (``/mozilla.org/.../Europe/Berlin``, RFC 5545 3.2.19) -> its IANA suffix; otherwise
  the calendar's own VTIMEZONE (RFC 5545 3.6.5, e.g. Outlook's "Customized Time Zone"),
  named by the IANA zone with the same offsets over the event's years when there is one,
  else the times are converted to UTC and the timezone is "UTC". A TZID with neither a
  known name nor a VTIMEZONE raises :class:`UnknownTimeZone`. A known name wins over a
  VTIMEZONE of the same TZID (tzdata has the full history, a VTIMEZONE often only one rule).
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

Writing keeps every property and component of the previous resource the model does not own
(X- properties, ATTENDEE, ORGANIZER, URL, other VALARMs, ...), so a write never loses what
another client stored. Error messages name properties, never their content.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from icalendar import Alarm, Calendar, Component, Timezone, vText
from icalendar import Event as VEvent

from sync_core.convert.html_text import html_to_text
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
from sync_core.model import Event, Sensitivity, ShowAs

PRODID = "-//davbridge//EN"
RECURRING = "recurring events are not synced yet"

#: VEVENT properties the model owns: rewritten from the model on every write.
OWNED_PROPERTIES = frozenset({
    "UID", "DTSTAMP", "SEQUENCE", "DTSTART", "DTEND", "DURATION", "SUMMARY", "DESCRIPTION",
    "X-ALT-DESC", "LOCATION", "CLASS", "TRANSP", "X-MICROSOFT-CDO-BUSYSTATUS",
    "X-MICROSOFT-CDO-INTENDEDSTATUS", "X-MICROSOFT-CDO-ALLDAYEVENT", "CATEGORIES",
    "LAST-MODIFIED",
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
_REMINDER_ACTIONS = frozenset({"DISPLAY", "AUDIO"})
_TEXT_ESCAPE = re.compile(r"\\([\\;,nN])")
_MAX_TZID_SHOWN = 80


# --- public API ---------------------------------------------------------------------------
def event_from_ical(data: str | bytes) -> Event:
    """Model of a calendar object resource holding one non-recurring VEVENT.

    RFC 5545 3.6.1: the end is DTEND, else DTSTART + DURATION (3.3.6: days and weeks are
    nominal, wall-clock; hours, minutes and seconds exact), else one day after a DATE
    DTSTART and zero after a DATE-TIME. DATE values (3.3.4) make an all-day event; a
    DATE-TIME (3.3.5) is UTC ("Z" -> timezone "UTC"), zoned by TZID (3.2.19; see the module
    docstring) or floating (naive, timezone ``None``). An all-day DTEND not after DTSTART is
    read as one day. CLASS (3.8.1.3): PUBLIC/PRIVATE/CONFIDENTIAL, X-PERSONAL -> personal,
    any other value -> private as the RFC requires. CATEGORIES (3.8.1.2) from every
    property and comma list. LAST-MODIFIED (3.8.7.3), else DTSTAMP (3.8.7.2).

    Raises :class:`InvalidICalendar` (unparseable, no/several VEVENTs, missing or invalid
    DTSTART, inconsistent times), :class:`UnsupportedEvent` (recurrence, VTODO/VJOURNAL
    only) and :class:`UnknownTimeZone`.
    """
    calendar = _parse(data)
    vevent = _the_vevent(calendar)
    timezones = {str(tz.get("TZID", "")): tz for tz in calendar.walk("VTIMEZONE")}

    start_time = _read_time(vevent, "DTSTART", timezones)
    if start_time is None:
        raise InvalidICalendar("VEVENT has no DTSTART")
    end_time = _read_time(vevent, "DTEND", timezones)
    raw_duration = _raw_vevent_value(data, "DURATION") if "DURATION" in vevent else None
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
    )


def event_to_ical(event: Event, previous: str | bytes | None = None) -> str:
    """A calendar object resource (RFC 5545 3.4, CRLF line ends, folded) for the model.

    One VCALENDAR (PRODID ``-//davbridge//EN``, VERSION 2.0) with one VEVENT (3.6.1) and a
    VTIMEZONE (3.6.5) for every TZID used, generated from tzdata for the event's years.
    TZIDs are IANA names, never Windows ids (a Windows TZID kept from ``previous`` is
    renamed to its IANA zone; the wall-clock value is unchanged). UTC times use "Z",
    floating times no TZID, all-day events VALUE=DATE. DTSTAMP is now; LAST-MODIFIED is
    ``event.last_modified`` (the edit time on the side it came from) or now; SEQUENCE
    (3.8.7.4) is the previous one plus one when ``previous`` had one.

    With ``previous`` (the resource as stored), every property of its VEVENT outside
    :data:`OWNED_PROPERTIES`, every calendar-level property but PRODID/VERSION/METHOD, its
    VTIMEZONEs still referenced, and every VALARM but the reminder alarms are kept; the
    first reminder alarm is updated in place, so its other properties stay too.

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

    vevent = VEvent()
    if previous_event is not None:
        for name, value in previous_event.items():
            if name.upper() not in OWNED_PROPERTIES:
                vevent[name] = value
    _write_owned(vevent, event, previous_event, now)
    _write_alarms(vevent, event, previous_event)
    _rename_windows_tzids(vevent)

    for timezone in _timezones_for(vevent, event, previous_calendar):
        calendar.add_component(timezone)
    calendar.add_component(vevent)
    return calendar.to_ical().decode("utf-8")


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


# --- parsing helpers -------------------------------------------------------------------------
def _parse(data: str | bytes | None) -> Calendar:
    if data is None or not data.strip():
        raise InvalidICalendar("resource is empty")
    try:
        components = Calendar.from_ical(data, multiple=True)
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


def _the_vevent(calendar: Calendar) -> Component:
    events = [c for c in calendar.subcomponents if c.name == "VEVENT"]
    if not events:
        if any(c.name in ("VTODO", "VJOURNAL") for c in calendar.subcomponents):
            raise UnsupportedEvent("only VEVENT resources are synced (this is a VTODO/VJOURNAL)")
        raise InvalidICalendar("calendar holds no VEVENT")
    if any(key in e for e in events for key in ("RRULE", "RDATE", "RECURRENCE-ID")):
        raise UnsupportedEvent(RECURRING)
    if len(events) > 1:
        raise InvalidICalendar("calendar holds more than one VEVENT")
    return events[0]


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
        if name in ("DTSTART", "DTEND", "DURATION", "UID"):
            raise InvalidICalendar(f"{name} occurs more than once")
        return value[0]
    return value


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
    if isinstance(value, vText):
        return str(value)
    return _unescape_text(_raw(value))


def _normalise_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _html_body(vevent: Component) -> str | None:
    values = vevent.get("X-ALT-DESC")
    if values is None:
        return None
    for value in values if isinstance(values, list) else [values]:
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
    value = _dt(prop)
    params = getattr(prop, "params", {}) or {}
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


# --- writing -------------------------------------------------------------------------------------
def _write_owned(
    vevent: Component, event: Event, previous: Component | None, now: datetime
) -> None:
    assert event.uid is not None
    vevent.add("UID", event.uid)
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
    modified = event.last_modified or now
    if modified.tzinfo is None:
        modified = modified.replace(tzinfo=UTC)
    vevent.add("LAST-MODIFIED", modified.astimezone(UTC).replace(microsecond=0))


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
    vevent: Component, event: Event, previous_calendar: Calendar | None
) -> list[Component]:
    """A VTIMEZONE for every TZID used (RFC 5545 3.2.19 requires one)."""
    first_year, last_year = _years(event)
    previous_timezones = {
        str(tz.get("TZID", "")): tz
        for tz in (previous_calendar.walk("VTIMEZONE") if previous_calendar is not None else [])
    }
    result: list[Component] = []
    for tzid in _used_tzids(vevent):
        known = _known_zone(tzid)
        if known is not None:
            result.append(Timezone.from_ical(_vtimezone(known, tzid, first_year, last_year)))
        elif tzid in previous_timezones:
            result.append(previous_timezones[tzid])
    return result


def _years(event: Event) -> tuple[int, int]:
    return event.start.year - 1, event.end.year + 1


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
    "OWNED_PROPERTIES",
    "PRODID",
    "RECURRING",
    "event_from_ical",
    "event_to_ical",
    "uid_of",
]

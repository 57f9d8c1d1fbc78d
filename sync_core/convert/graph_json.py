"""Microsoft Graph ``event`` JSON <-> the model (single, non-recurring events).

Shapes follow the Graph v1.0 metadata (``graph.event``, ``graph.dateTimeTimeZone``,
``graph.itemBody``, ``graph.location``, ``graph.singleValueLegacyExtendedProperty``).

Graph behaviour this module relies on:
- ``start``/``end`` are ``{dateTime, timeZone}``: a wall-clock time (7 fractional digits, no
  offset) in ``timeZone``: ``"UTC"`` by default, or the zone asked for with
  ``Prefer: outlook.timezone`` (a Windows id or an IANA name).
- ``originalStartTimeZone`` is the zone the author used (Windows id, ``"UTC"`` or
  ``"tzone://Microsoft/Custom"``); it names the zone but never shifts ``start``.
- All-day events (``isAllDay``) come back as midnight-to-midnight of the author's dates in
  whatever zone the response uses, unshifted ("by design", microsoftgraph/microsoft-graph-docs
  #1802); writes need midnight start and end in one zone (the service moves other times to
  the surrounding midnights).
- Writes take Windows ids and only some IANA names, so zones are converted
  (:func:`sync_core.convert.timezones.iana_to_windows`).
- Creating or updating an event with attendees makes Exchange send invitations: this module
  never writes ``attendees``.

Error messages carry ids only, never event content.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from sync_core.convert.html_text import html_to_text, text_to_html
from sync_core.convert.timezones import (
    UTC_NAME,
    first_known_zone,
    iana_to_windows,
    windows_to_iana,
    zone,
)
from sync_core.errors import InvalidGraphEvent, UnknownTimeZone, UnsupportedEvent
from sync_core.model import Event, Sensitivity, ShowAs

#: The single-value extended property that tags an event with the UID we gave it (MAPI
#: named string property in our own property set). Filterable with
#: ``singleValueExtendedProperties/Any(ep: ep/id eq '...' and ep/value eq '...')`` and read
#: with ``$expand=singleValueExtendedProperties($filter=id eq '...')``.
UID_PROPERTY_ID = "String {7a658d66-d096-4926-a509-61d41de9322e} Name davbridgeUid"

#: ``match_uids`` entries derived from ``transactionId`` carry this prefix.
TRANSACTION_PREFIX = "txn:"

_RECURRING_TYPES = frozenset({"seriesmaster", "occurrence", "exception"})
_GRAPH_DATETIME = "%Y-%m-%dT%H:%M:%S"


def event_from_graph(payload: Mapping[str, Any]) -> Event:
    """Model of a Graph event as returned by GET, list or delta.

    Timed events: ``start``/``end`` are read in their ``timeZone`` and expressed in the
    author's zone, ``originalStartTimeZone`` mapped to IANA; when that is missing, custom
    (``tzone://Microsoft/Custom``) or unknown, the response zone (``start.timeZone``) is used,
    and UTC when there is none. All-day events: the date part of ``dateTime``, no zone shift
    (Graph returns the author's dates at midnight whatever the response zone).

    Body: html -> ``body_html`` plus ``body_text`` (:func:`html_to_text`); text ->
    ``body_text``. Reminder: ``reminderMinutesBeforeStart`` when ``isReminderOn``. UID: the
    value of :data:`UID_PROPERTY_ID` when present (expanded), else ``iCalUId``.

    Raises :class:`InvalidGraphEvent` (missing/garbled fields, deletion markers),
    :class:`UnsupportedEvent` (series masters, occurrences, exceptions: not synced yet) and
    :class:`UnknownTimeZone` (a ``dateTimeTimeZone`` in a zone that cannot be resolved).
    """
    if not isinstance(payload, Mapping):
        raise InvalidGraphEvent("Graph event payload is not a JSON object")
    ident = _ident(payload)
    if "@removed" in payload:
        raise InvalidGraphEvent(f"{ident}: payload is a deletion marker, not an event")
    event_type = payload.get("type")
    if payload.get("recurrence") or (
        isinstance(event_type, str) and event_type.casefold() in _RECURRING_TYPES
    ):
        raise UnsupportedEvent("recurring events are not synced yet")

    all_day = payload.get("isAllDay") is True
    start_local, start_zone = _read_date_time(payload, "start", ident)
    end_local, end_zone = _read_date_time(payload, "end", ident)

    start: datetime | date
    end: datetime | date
    timezone: str | None
    if all_day:
        start, end, timezone = start_local.date(), end_local.date(), None
        if end <= start:
            raise InvalidGraphEvent(f"{ident}: all-day end is not after its start")
    else:
        timezone = _author_zone(payload, start_zone)
        target = ZoneInfo(timezone)
        start = _aware(start_local, start_zone).astimezone(target)
        end = _aware(end_local, end_zone).astimezone(target)
        if end < start:
            raise InvalidGraphEvent(f"{ident}: end is before start")

    body_text, body_html = _read_body(payload, ident)
    return Event(
        subject=_string(payload, "subject", ident),
        start=start,
        end=end,
        timezone=timezone,
        uid=_uid(payload),
        body_text=body_text,
        body_html=body_html,
        location=_location(payload, ident),
        show_as=_show_as(payload.get("showAs")),
        sensitivity=_sensitivity(payload.get("sensitivity")),
        categories=_categories(payload, ident),
        reminder_minutes=_reminder(payload, ident),
        last_modified=_instant(payload.get("lastModifiedDateTime")),
    )


def event_to_graph(
    event: Event, *, uid_tag: str | None = None, local_zone: str = UTC_NAME
) -> dict[str, Any]:
    """Request body for ``POST /events`` or ``PATCH /events/{id}`` holding every model field.

    - ``body``: ``body_html`` as html when it still says what ``body_text`` says (same words);
      otherwise ``body_text`` through :func:`text_to_html` (html, so the text reads back
      unchanged). A stale HTML copy never overwrites an edited text.
    - ``start``/``end``: wall-clock ``YYYY-MM-DDTHH:MM:SS`` in the Windows id of
      ``event.timezone``. When the zone has no Windows id, or that id's zone has other UTC
      offsets at the event's start or end, the times are sent in UTC instead (same instants).
    - Floating times (no zone; RFC 5545 3.3.5 form 1) cannot exist in Graph: their wall-clock
      time is sent in ``local_zone`` (the mailbox's zone when the caller knows it, else UTC).
      Read back they are zoned, so their fingerprint changes once.
    - All-day: ``isAllDay`` true with midnight start and (exclusive) end dates in
      ``local_zone`` (Graph requires midnight in one zone; dates come back unshifted).
    - ``isReminderOn``/``reminderMinutesBeforeStart`` from ``reminder_minutes``.
    - ``uid_tag`` -> ``singleValueExtendedProperties`` [{id: :data:`UID_PROPERTY_ID`, value}].
    - Never ``attendees`` (Exchange would send invitations) and no ``transactionId`` (the
      caller adds it to POSTs).
    """
    local_windows = _windows_or_utc(local_zone)
    body: dict[str, Any] = {
        "subject": event.subject,
        "body": _write_body(event),
        "isAllDay": event.all_day,
        "location": {"displayName": event.location},
        "showAs": event.show_as.value,
        "sensitivity": event.sensitivity.value,
        "categories": list(dict.fromkeys(event.categories)),
        "isReminderOn": event.reminder_minutes is not None,
    }
    if event.reminder_minutes is not None:
        body["reminderMinutesBeforeStart"] = max(0, int(event.reminder_minutes))

    if event.all_day:
        start_day = _as_date(event.start)
        end_day = _as_date(event.end)
        if end_day <= start_day:
            end_day = start_day + timedelta(days=1)
        body["start"] = {"dateTime": f"{start_day:%Y-%m-%d}T00:00:00", "timeZone": local_windows}
        body["end"] = {"dateTime": f"{end_day:%Y-%m-%d}T00:00:00", "timeZone": local_windows}
    else:
        assert isinstance(event.start, datetime) and isinstance(event.end, datetime)
        body["start"], body["end"] = _write_times(event.start, event.end, event.timezone, local_zone)

    if uid_tag:
        body["singleValueExtendedProperties"] = [{"id": UID_PROPERTY_ID, "value": uid_tag}]
    return body


def match_uids_from_graph(payload: Mapping[str, Any]) -> frozenset[str]:
    """Identities a Graph event can be paired by on a first sync.

    ``iCalUId`` (server-set, shared with the invitation's iCalendar UID), the value of our
    :data:`UID_PROPERTY_ID` tag when the payload includes it, and ``transactionId`` (set by
    our own POST, idempotent creates) as ``"txn:<id>"``.
    """
    if not isinstance(payload, Mapping):
        return frozenset()
    result: set[str] = set()
    ical_uid = payload.get("iCalUId")
    if isinstance(ical_uid, str) and ical_uid:
        result.add(ical_uid)
    tagged = _tagged_uid(payload)
    if tagged:
        result.add(tagged)
    transaction = payload.get("transactionId")
    if isinstance(transaction, str) and transaction:
        result.add(TRANSACTION_PREFIX + transaction)
    return frozenset(result)


# --- reading ----------------------------------------------------------------------------------
def _ident(payload: Mapping[str, Any]) -> str:
    event_id = payload.get("id")
    return f"Graph event {event_id}" if isinstance(event_id, str) and event_id else "Graph event"


def _read_date_time(payload: Mapping[str, Any], key: str, ident: str) -> tuple[datetime, str]:
    """(wall-clock datetime, zone name) of a ``dateTimeTimeZone``."""
    value = payload.get(key)
    if not isinstance(value, Mapping):
        raise InvalidGraphEvent(f"{ident}: {key} is missing")
    raw = value.get("dateTime")
    if not isinstance(raw, str) or not raw:
        raise InvalidGraphEvent(f"{ident}: {key}.dateTime is missing")
    try:
        parsed = datetime.fromisoformat(raw)
    except ValueError:
        raise InvalidGraphEvent(f"{ident}: {key}.dateTime is not an ISO 8601 date-time") from None
    zone_name = value.get("timeZone")
    if parsed.tzinfo is not None:  # not what Graph sends, but unambiguous
        return parsed.astimezone(UTC).replace(tzinfo=None), UTC_NAME
    if zone_name is None or zone_name == "":
        return parsed, UTC_NAME
    if not isinstance(zone_name, str):
        raise InvalidGraphEvent(f"{ident}: {key}.timeZone is not a string")
    return parsed, zone_name


def _aware(local: datetime, zone_name: str) -> datetime:
    return local.replace(tzinfo=zone(zone_name))


def _author_zone(payload: Mapping[str, Any], response_zone: str) -> str:
    """IANA name of the zone the author used; see :func:`event_from_graph`."""
    return first_known_zone((payload.get("originalStartTimeZone"), response_zone))


def _string(payload: Mapping[str, Any], key: str, ident: str) -> str:
    value = payload.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidGraphEvent(f"{ident}: {key} is not a string")
    return value


def _read_body(payload: Mapping[str, Any], ident: str) -> tuple[str, str | None]:
    body = payload.get("body")
    if body is None:
        return "", None
    if not isinstance(body, Mapping):
        raise InvalidGraphEvent(f"{ident}: body is not an object")
    content = body.get("content") or ""
    if not isinstance(content, str):
        raise InvalidGraphEvent(f"{ident}: body.content is not a string")
    content_type = body.get("contentType")
    if isinstance(content_type, str) and content_type.casefold() == "html":
        if not content.strip():
            return "", None
        return html_to_text(content), content
    return _normalise_newlines(content), None


def _normalise_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _location(payload: Mapping[str, Any], ident: str) -> str:
    location = payload.get("location")
    if location is None:
        return ""
    if not isinstance(location, Mapping):
        raise InvalidGraphEvent(f"{ident}: location is not an object")
    name = location.get("displayName")
    return name if isinstance(name, str) else ""


def _show_as(value: object) -> ShowAs:
    """``freeBusyStatus``; missing -> busy (Graph's default), unrecognised -> unknown."""
    if value is None:
        return ShowAs.BUSY
    for member in ShowAs:
        if isinstance(value, str) and value.casefold() == member.value.casefold():
            return member
    return ShowAs.UNKNOWN


def _sensitivity(value: object) -> Sensitivity:
    """``sensitivity``; missing -> normal, unrecognised -> private (never expose by mistake)."""
    if value is None:
        return Sensitivity.NORMAL
    for member in Sensitivity:
        if isinstance(value, str) and value.casefold() == member.value:
            return member
    return Sensitivity.PRIVATE


def _categories(payload: Mapping[str, Any], ident: str) -> tuple[str, ...]:
    value = payload.get("categories")
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InvalidGraphEvent(f"{ident}: categories is not a list")
    names = (item.strip() for item in value if isinstance(item, str))
    return tuple(dict.fromkeys(name for name in names if name))


def _reminder(payload: Mapping[str, Any], ident: str) -> int | None:
    if payload.get("isReminderOn") is not True:
        return None
    minutes = payload.get("reminderMinutesBeforeStart")
    if minutes is None:
        return None
    if isinstance(minutes, bool) or not isinstance(minutes, int):
        raise InvalidGraphEvent(f"{ident}: reminderMinutesBeforeStart is not an integer")
    return max(0, minutes)


def _instant(value: object) -> datetime | None:
    """An ``Edm.DateTimeOffset`` (``2019-10-17T11:22:54.9229346Z``) as aware UTC, or None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _tagged_uid(payload: Mapping[str, Any]) -> str | None:
    properties = payload.get("singleValueExtendedProperties")
    if not isinstance(properties, list):
        return None
    wanted = UID_PROPERTY_ID.casefold()
    for item in properties:
        if not isinstance(item, Mapping):
            continue
        prop_id, value = item.get("id"), item.get("value")
        if isinstance(prop_id, str) and prop_id.casefold() == wanted and isinstance(value, str):
            return value or None
    return None


def _uid(payload: Mapping[str, Any]) -> str | None:
    tagged = _tagged_uid(payload)
    if tagged:
        return tagged
    ical_uid = payload.get("iCalUId")
    return ical_uid if isinstance(ical_uid, str) and ical_uid else None


# --- writing ----------------------------------------------------------------------------------
def _words(text: str) -> list[str]:
    return text.split()


def _write_body(event: Event) -> dict[str, str]:
    if event.body_html and _words(html_to_text(event.body_html)) == _words(event.body_text):
        return {"contentType": "html", "content": event.body_html}
    return {"contentType": "html", "content": text_to_html(event.body_text)}


def _windows_or_utc(name: str | None) -> str:
    if not name:
        return "UTC"
    try:
        return iana_to_windows(windows_to_iana(name))
    except UnknownTimeZone:
        return "UTC"


def _zone_of(value: datetime, timezone: str | None) -> tzinfo:
    if timezone:
        try:
            return zone(timezone)
        except UnknownTimeZone:
            pass
    return value.tzinfo or UTC


def _write_times(
    start: datetime, end: datetime, timezone: str | None, local_zone: str
) -> tuple[dict[str, str], dict[str, str]]:
    if start.tzinfo is None or end.tzinfo is None:  # floating: wall clock in the local zone
        local_windows = _windows_or_utc(local_zone)
        return (
            {"dateTime": _wall(start.replace(tzinfo=None)), "timeZone": local_windows},
            {"dateTime": _wall(end.replace(tzinfo=None)), "timeZone": local_windows},
        )
    name = timezone
    if not name:
        key = getattr(start.tzinfo, "key", None)
        name = key if isinstance(key, str) else UTC_NAME
    try:
        windows = iana_to_windows(windows_to_iana(name))
        graph_zone = zone(windows)
    except UnknownTimeZone:
        windows, graph_zone = "UTC", ZoneInfo(UTC_NAME)
    local_start = start.astimezone(graph_zone)
    local_end = end.astimezone(graph_zone)
    # The Windows zone must give the same wall clock the event has in its own zone;
    # otherwise (a zone that only recently matches, a past rule change) write UTC.
    own = _zone_of(start, timezone)
    if (
        start.astimezone(own).utcoffset() != local_start.utcoffset()
        or end.astimezone(own).utcoffset() != local_end.utcoffset()
    ):
        windows = "UTC"
        local_start, local_end = start.astimezone(UTC), end.astimezone(UTC)
    return (
        {"dateTime": _wall(local_start.replace(tzinfo=None)), "timeZone": windows},
        {"dateTime": _wall(local_end.replace(tzinfo=None)), "timeZone": windows},
    )


def _wall(value: datetime) -> str:
    return value.strftime(_GRAPH_DATETIME)


def _as_date(value: datetime | date) -> date:
    return value.date() if isinstance(value, datetime) else value


__all__ = [
    "TRANSACTION_PREFIX",
    "UID_PROPERTY_ID",
    "event_from_graph",
    "event_to_graph",
    "match_uids_from_graph",
]

"""Microsoft Graph ``event`` JSON <-> the model (single events and whole series).

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
  never writes ``attendees``; a CalDAV invitation's people travel in the note of
  ``convert/graph_note.py``.
- A series is a ``seriesMaster`` (with ``recurrence``) plus its instances: ``occurrence`` and
  ``exception`` items (``originalStart`` = recurrence id), cancelled occurrences missing from
  ``/events/{id}/instances`` (*List instances*). :func:`series_from_graph` assembles them into
  one model event (see docs/RECURRENCE.md).

Error messages carry ids only, never event content.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from sync_core.convert import graph_note
from sync_core.convert.html_text import html_to_text, text_to_html
from sync_core.convert.recurrence import expand, graph_from_rrule, rrule_from_graph
from sync_core.convert.timezones import (
    UTC_NAME,
    first_known_zone,
    iana_to_windows,
    windows_to_iana,
    zone,
)
from sync_core.errors import InvalidGraphEvent, NotExpressible, UnknownTimeZone
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

#: The single-value extended property that tags an event with the UID we gave it (MAPI
#: named string property in our own property set). Filterable with
#: ``singleValueExtendedProperties/Any(ep: ep/id eq '...' and ep/value eq '...')`` and read
#: with ``$expand=singleValueExtendedProperties($filter=id eq '...')``.
UID_PROPERTY_ID = "String {7a658d66-d096-4926-a509-61d41de9322e} Name davbridgeUid"

#: ``match_uids`` entries derived from ``transactionId`` carry this prefix.
TRANSACTION_PREFIX = "txn:"

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

    A ``seriesMaster`` gets ``recurrence`` (canonical RRULE of its ``patternedRecurrence``)
    but no exdates/overrides (those need the instances: :func:`series_from_graph`); an
    ``occurrence`` or ``exception`` is read as the single event it is. People: Graph's own
    ``attendees`` (+ ``organizer``) when the event lists attendees, else the note / extended
    property written by :func:`event_to_graph`. Join URL: ``onlineMeeting.joinUrl``, else
    ``onlineMeetingUrl``, else the note.

    Raises :class:`InvalidGraphEvent` (missing/garbled fields, deletion markers) and
    :class:`UnknownTimeZone` (a ``dateTimeTimeZone`` in a zone that cannot be resolved).
    """
    if not isinstance(payload, Mapping):
        raise InvalidGraphEvent("Graph event payload is not a JSON object")
    ident = _ident(payload)
    if "@removed" in payload:
        raise InvalidGraphEvent(f"{ident}: payload is a deletion marker, not an event")
    event_type = payload.get("type")
    is_master = isinstance(event_type, str) and event_type.casefold() == "seriesmaster"

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
    body_text, note = graph_note.split_note(body_text)
    if body_html is not None and not note.empty:
        body_html = graph_note.strip_html_note(body_html)
        if not html_to_text(body_html).strip():
            body_html = None
    organizer, attendees = _people(payload, note)
    recurrence: Recurrence | None = None
    if is_master or payload.get("recurrence"):
        raw = payload.get("recurrence")
        if not isinstance(raw, Mapping):
            raise InvalidGraphEvent(f"{ident}: seriesMaster without recurrence")
        recurrence = Recurrence(rrule_from_graph(raw, start))
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
        importance=_importance(payload.get("importance")),
        online_meeting_url=_join_url(payload) or note.join_url,
        organizer=organizer,
        attendees=attendees,
        recurrence=recurrence,
    )


def series_from_graph(
    master: Mapping[str, Any],
    instances: Sequence[Mapping[str, Any]],
    window: tuple[datetime, datetime],
) -> Event:
    """One series from its master and its instances (*List instances* over ``window``).

    Recurrence ids come from each instance's ``originalStart`` (:func:`index_instances`).
    ``exception`` instances become overrides; occurrences the rule gives inside ``window``
    that are not among the instances were cancelled (exdates). Only recurrence ids inside
    ``window`` are kept (docs/RECURRENCE.md): the caller lists instances over a wider range
    so a moved exception is still seen.
    """
    event = event_from_graph(master)
    if event.recurrence is None:
        raise InvalidGraphEvent(f"{_ident(master)}: not a series master")
    indexed = index_instances(master, event, instances)
    overrides = [
        Occurrence(rid, event_from_graph(item).with_uid(None))
        for rid, item in indexed.values()
        if str(item.get("type") or "").casefold() == "exception"
    ]
    expected = expand(event.recurrence.rule, event.start, window_start=window[0], window_end=window[1])
    exdates = tuple(rid for rid in expected if instant_text(rid) not in indexed)
    return event.with_series(exdates, tuple(overrides)).clipped(*window)


def index_instances(
    master: Mapping[str, Any], series: Event, instances: Sequence[Mapping[str, Any]]
) -> dict[str, tuple[datetime | date, Mapping[str, Any]]]:
    """Instances by the text of their recurrence id (:func:`sync_core.model.instant_text`).

    The recurrence id is the instance's ``originalStart`` (``Edm.DateTimeOffset``) in the
    series' zone; for an all-day series the local date in ``recurrenceTimeZone``.
    """
    ident = _ident(master)
    zone_name = _recurrence_zone(master, series)
    out: dict[str, tuple[datetime | date, Mapping[str, Any]]] = {}
    for item in instances:
        rid = _recurrence_id(item, series, zone_name, ident)
        out[instant_text(rid)] = (rid, item)
    return out


def _recurrence_zone(master: Mapping[str, Any], event: Event) -> str:
    rec = master.get("recurrence")
    rng = rec.get("range") if isinstance(rec, Mapping) else None
    name = rng.get("recurrenceTimeZone") if isinstance(rng, Mapping) else None
    return first_known_zone((name, event.timezone, UTC_NAME))


def _recurrence_id(item: Mapping[str, Any], series: Event, zone_name: str, ident: str) -> datetime | date:
    raw = item.get("originalStart")
    original = _instant(raw)
    if original is None:
        raise InvalidGraphEvent(f"{ident}: instance {item.get('id')!s:.12} has no originalStart")
    if series.all_day:
        return original.astimezone(zone(zone_name)).date()
    if isinstance(series.start, datetime) and series.start.tzinfo is not None:
        return original.astimezone(series.start.tzinfo)
    return original.astimezone(zone(zone_name)).replace(tzinfo=None)


def event_to_graph(
    event: Event,
    *,
    uid_tag: str | None = None,
    local_zone: str = UTC_NAME,
    graph_attendees: bool = False,
    graph_join_url: str = "",
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
      caller adds it to POSTs). Organizer, attendees and a join URL Graph does not already
      hold (``graph_attendees`` / ``graph_join_url`` say what the stored event has) go into
      the note and extended property of ``convert/graph_note.py``.
    - ``importance``; a series master's ``recurrence`` (:func:`graph_from_rrule`, in the zone
      the start is written in). RDATEs cannot be written: :class:`NotExpressible`.
    """
    local_windows = _windows_or_utc(local_zone)
    note = graph_note.note_for(event, graph_attendees=graph_attendees, graph_join_url=graph_join_url)
    body: dict[str, Any] = {
        "subject": event.subject,
        "body": _write_body(event, note),
        "isAllDay": event.all_day,
        "location": {"displayName": event.location},
        "showAs": event.show_as.value,
        "sensitivity": event.sensitivity.value,
        "categories": list(dict.fromkeys(event.categories)),
        "isReminderOn": event.reminder_minutes is not None,
        "importance": event.importance.value,
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

    if event.recurrence is not None:
        if event.recurrence.rdates or not event.recurrence.rule:
            raise NotExpressible("the series has RDATE occurrences, which Microsoft 365 cannot hold")
        series_start = _as_date(event.start) if event.all_day else _written_wall(body["start"])
        body["recurrence"] = graph_from_rrule(
            event.recurrence.rule, series_start, time_zone=body["start"]["timeZone"]
        )

    properties = []
    if uid_tag:
        properties.append({"id": UID_PROPERTY_ID, "value": uid_tag})
    people = graph_note.note_property(note)
    if people is not None:
        properties.append(people)
    if properties:
        body["singleValueExtendedProperties"] = properties
    return body


def occurrence_patch(event: Event, **kwargs: Any) -> dict[str, Any]:
    """PATCH body for one instance of a series (an exception): no recurrence, no UID tag."""
    body = event_to_graph(replace(event, recurrence=None, exdates=(), overrides=()), **kwargs)
    body.pop("recurrence", None)
    properties = [
        p for p in body.pop("singleValueExtendedProperties", []) if p.get("id") != UID_PROPERTY_ID
    ]
    if properties:
        body["singleValueExtendedProperties"] = properties
    return body


def _written_wall(value: Mapping[str, str]) -> datetime:
    """The written start as an aware datetime in its (Windows or UTC) zone."""
    return datetime.strptime(value["dateTime"], _GRAPH_DATETIME).replace(tzinfo=zone(value["timeZone"]))


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


def _people(payload: Mapping[str, Any], note: graph_note.Note) -> tuple[Person | None, tuple[Person, ...]]:
    """Graph's own attendees when it lists any, else our extended property, else the note."""
    listed = payload.get("attendees")
    if isinstance(listed, list) and listed:
        attendees = tuple(p for p in (_attendee(item) for item in listed) if p is not None)
        organizer = _recipient(payload.get("organizer"), ResponseStatus.ORGANIZER)
        return organizer, attendees
    stored = _extended(payload, graph_note.ATTENDEES_PROPERTY_ID)
    if stored:
        people = graph_note.people_from_property(stored)
        if people is not None:
            return people
    return note.organizer, note.attendees


_ROLES = {"required": AttendeeRole.REQUIRED, "optional": AttendeeRole.OPTIONAL, "resource": AttendeeRole.RESOURCE}


def _attendee(item: object) -> Person | None:
    if not isinstance(item, Mapping):
        return None
    status = item.get("status")
    response = status.get("response") if isinstance(status, Mapping) else None
    person = _recipient(item, _response(response))
    if person is None:
        return None
    role = _ROLES.get(str(item.get("type") or "required").casefold(), AttendeeRole.REQUIRED)
    return replace(person, role=role)


def _response(value: object) -> ResponseStatus:
    for member in ResponseStatus:
        if isinstance(value, str) and value.casefold() == member.value.casefold():
            return member
    return ResponseStatus.NONE


def _recipient(item: object, status: ResponseStatus) -> Person | None:
    """A Graph ``recipient`` / ``attendee`` (``emailAddress {name, address}``)."""
    if not isinstance(item, Mapping):
        return None
    address = item.get("emailAddress")
    if not isinstance(address, Mapping) or not isinstance(address.get("address"), str) or not address["address"]:
        return None
    name = address.get("name")
    return Person(email=address["address"], name=name if isinstance(name, str) else "", status=status)


def _importance(value: object) -> Importance:
    for member in Importance:
        if isinstance(value, str) and value.casefold() == member.value:
            return member
    return Importance.NORMAL


def _join_url(payload: Mapping[str, Any]) -> str:
    meeting = payload.get("onlineMeeting")
    if isinstance(meeting, Mapping) and isinstance(meeting.get("joinUrl"), str):
        return str(meeting["joinUrl"])
    url = payload.get("onlineMeetingUrl")
    return url if isinstance(url, str) else ""


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
        if not html_to_text(content).strip():
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
    return _extended(payload, UID_PROPERTY_ID)


def _extended(payload: Mapping[str, Any], property_id: str) -> str | None:
    properties = payload.get("singleValueExtendedProperties")
    if not isinstance(properties, list):
        return None
    wanted = property_id.casefold()
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


def _write_body(event: Event, note: graph_note.Note) -> dict[str, str]:
    if event.body_html and _words(html_to_text(event.body_html)) == _words(event.body_text):
        content = event.body_html
    else:
        content = text_to_html(event.body_text)
    if not note.empty:
        block = graph_note.note_html(note)
        closing = content.lower().rfind("</body>")
        content = content[:closing] + block + content[closing:] if closing >= 0 else content + block
    return {"contentType": "html", "content": content}


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
    "index_instances",
    "match_uids_from_graph",
    "occurrence_patch",
    "series_from_graph",
]

"""The event model: validate and normalise writes, render Graph v1.0 ``event`` JSON.

Behaviour implemented (Graph docs: event resource, user-post-events, event-update, event-get,
dateTimeTimeZone, location, singleValueLegacyExtendedProperty; see README.md for sources):

* Writable properties are merged on PATCH (top level); complex values are replaced whole.
  Read-only properties sent by a client (``id``, ``iCalUId``, ``changeKey``, ``type``, ...) are
  ignored -- in particular ``iCalUId`` is always server-set.
* ``start``/``end`` keep the zone they were written in; unknown zones answer
  ``400 TimeZoneNotSupportedException``; ``end`` before ``start`` answers
  ``400 ErrorCalendarEndDateIsEarlierThanStartDate``. ``isAllDay`` needs midnight start and end
  at least a day apart (400 otherwise).
* ``location`` and ``locations`` "always correspond": writing one rewrites the other.
* A text body is returned as HTML (Exchange converts it) unless
  ``Prefer: outlook.body-content-type="text"``; ``bodyPreview`` is the first 255 text characters.
* An event with ``recurrence`` is a ``seriesMaster``. If its start is not on the pattern, the
  start (and end, duration kept) moves to the first occurrence on or after it, and
  ``range.startDate`` becomes that date; ``recurrenceTimeZone`` is the start's zone (Windows id).
  Its occurrences and exceptions are in ``series.py``, the date arithmetic in ``recurrence.py``.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, tzinfo
from typing import Any, Protocol
from urllib.parse import quote

from devtools.graphsim import recurrence as rec_dates
from devtools.graphsim import timezones as tz
from devtools.graphsim.odata import GraphError, bad_request, normalize_extended_property_id
from devtools.graphsim.store import User

#: Properties a client may set (POST/PATCH). Other declared properties are read-only: ignored.
WRITABLE = frozenset(
    {
        "subject",
        "body",
        "start",
        "end",
        "isAllDay",
        "location",
        "locations",
        "attendees",
        "categories",
        "importance",
        "sensitivity",
        "showAs",
        "isReminderOn",
        "reminderMinutesBeforeStart",
        "recurrence",
        "responseRequested",
        "allowNewTimeProposals",
        "isOnlineMeeting",
        "onlineMeetingProvider",
        "hideAttendees",
    }
)
NEVER_RESPONSE_TIME = "0001-01-01T00:00:00Z"

#: Property order of an event GET on Graph v1.0 (event-get response example).
EVENT_PROPERTY_ORDER = (
    "id",
    "createdDateTime",
    "lastModifiedDateTime",
    "changeKey",
    "categories",
    "transactionId",
    "originalStartTimeZone",
    "originalEndTimeZone",
    "originalStart",  # instances of a series only
    "iCalUId",
    "reminderMinutesBeforeStart",
    "isReminderOn",
    "hasAttachments",
    "subject",
    "bodyPreview",
    "importance",
    "sensitivity",
    "isAllDay",
    "isCancelled",
    "isOrganizer",
    "responseRequested",
    "seriesMasterId",
    "showAs",
    "type",
    "webLink",
    "onlineMeetingUrl",
    "isOnlineMeeting",
    "onlineMeetingProvider",
    "allowNewTimeProposals",
    "isDraft",
    "hideAttendees",
    "cancelledOccurrences",
    "responseStatus",
    "body",
    "start",
    "end",
    "location",
    "locations",
    "recurrence",
    "attendees",
    "organizer",
    "onlineMeeting",
)


def validation_failure(detail: str) -> GraphError:
    """Graph's generic answer to a semantically invalid property (message made specific)."""
    return bad_request("ErrorPropertyValidationFailure", f"At least one property failed validation. {detail}")


# -- times ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class When:
    local: datetime  # naive wall time in ``tz_name``
    tz_name: str  # as written by the client

    @property
    def zone(self) -> tzinfo:
        return tz.resolve_zone(self.tz_name)

    @property
    def utc(self) -> datetime:
        return tz.to_utc(self.local, self.zone)


def _parse_when(value: Any, name: str) -> When:
    if not isinstance(value, Mapping) or "dateTime" not in value:
        raise validation_failure(f"'{name}' needs a dateTimeTimeZone with dateTime.")
    zone_name = value.get("timeZone") or "UTC"
    try:
        zone = tz.resolve_zone(zone_name)
    except tz.UnsupportedTimeZone:
        raise bad_request(
            "TimeZoneNotSupportedException",
            f"A valid TimeZone value must be specified. The following TimeZone value is not supported: '{zone_name}'.",
        ) from None
    try:
        local = tz.parse_graph_datetime(value["dateTime"], zone)
    except ValueError as exc:
        raise bad_request("RequestBodyRead", f"Cannot convert '{name}.dateTime': {exc}.") from None
    return When(local, zone_name)


def span_overlaps(s: datetime, e: datetime, window_start: datetime, window_end: datetime) -> bool:
    """calendarView semantics: [s, e) intersects the window; zero-length events count at their start."""
    if s == e:
        return window_start <= s < window_end
    return s < window_end and e > window_start


def overlaps(fields: Mapping[str, Any], window_start: datetime, window_end: datetime) -> bool:
    """Whether one event (a single instance, an occurrence or an exception) is in the window.

    A series master is never "in" a window itself: its instances are (series.py)."""
    return span_overlaps(fields["start"].utc, fields["end"].utc, window_start, window_end)


def series_zone(fields: Mapping[str, Any]) -> tuple[str, tzinfo]:
    """The zone whose wall clock a series follows: ``recurrenceTimeZone`` (else the start's zone);
    an all-day series follows its start's zone (all-day events are dates)."""
    start: When = fields["start"]
    name = start.tz_name
    rec = fields.get("recurrence")
    if rec and not fields["isAllDay"]:
        name = rec["range"].get("recurrenceTimeZone") or name
    return name, tz.resolve_zone(name)


def series_day(fields: Mapping[str, Any], when: When) -> date:
    """The local date of ``when`` in the series' zone (``fields`` are the master's)."""
    if fields["isAllDay"]:
        return when.local.date()
    return tz.from_utc(when.utc, series_zone(fields)[1]).date()


# -- writes -------------------------------------------------------------------------------------
_ENUM_DEFAULTS = {
    "importance": "normal",
    "sensitivity": "normal",
    "showAs": "busy",
    "onlineMeetingProvider": "unknown",
}


def default_fields() -> dict[str, Any]:
    return {
        "subject": "",
        "body": {"contentType": "html", "content": ""},
        "isAllDay": False,
        "location": _location({}),
        "locations": [],
        "attendees": [],
        "categories": [],
        "isReminderOn": True,
        "reminderMinutesBeforeStart": 15,
        "recurrence": None,
        "responseRequested": True,
        "allowNewTimeProposals": True,
        "isOnlineMeeting": False,
        "hideAttendees": False,
        **_ENUM_DEFAULTS,
    }


def apply_write(current: Mapping[str, Any] | None, payload: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a POST (``current`` None) or PATCH payload and return the new field set.

    The payload has already passed CSDL validation (names and JSON types)."""
    fields = dict(current) if current is not None else default_fields()
    for key in ("start", "end"):
        if key in payload:
            fields[key] = _parse_when(payload[key], key)
    if current is None and ("start" not in fields or "end" not in fields):
        raise validation_failure("'start' and 'end' are required.")
    for key in ("subject",):
        if key in payload:
            fields[key] = payload[key] or ""
    for key in (
        "isAllDay",
        "isReminderOn",
        "responseRequested",
        "allowNewTimeProposals",
        "isOnlineMeeting",
        "hideAttendees",
    ):
        if key in payload and payload[key] is not None:
            fields[key] = bool(payload[key])
    for key, default in _ENUM_DEFAULTS.items():
        if key in payload:
            fields[key] = payload[key] or default
    if "reminderMinutesBeforeStart" in payload and payload["reminderMinutesBeforeStart"] is not None:
        fields["reminderMinutesBeforeStart"] = payload["reminderMinutesBeforeStart"]
    if "categories" in payload:
        fields["categories"] = list(payload["categories"] or [])
    if "body" in payload:
        body = payload["body"] or {}
        fields["body"] = {
            "contentType": body.get("contentType") or "text",
            "content": body.get("content") or "",
        }
    if "attendees" in payload:
        fields["attendees"] = _attendees(payload["attendees"] or [], fields.get("attendees", []))
    if "locations" in payload:
        locs = [_location(loc) for loc in payload["locations"] or []]
        fields["locations"] = locs
        if "location" in payload and payload["location"] is not None:
            fields["location"] = _location(payload["location"])
        elif len(locs) == 1:
            fields["location"] = dict(locs[0])
        else:
            names = "; ".join(loc["displayName"] for loc in locs if loc["displayName"])
            fields["location"] = _location({"displayName": names}) if names else _location({})
    elif "location" in payload:
        loc = _location(payload["location"] or {})
        fields["location"] = loc
        fields["locations"] = [dict(loc)] if loc["displayName"] else []
    if "recurrence" in payload:
        fields["recurrence"] = _recurrence(payload["recurrence"], fields["start"]) if payload["recurrence"] else None
    elif fields.get("recurrence") and "start" in payload:
        fields["recurrence"] = _copy(fields["recurrence"])
        fields["recurrence"]["range"]["recurrenceTimeZone"] = tz.windows_id(fields["start"].tz_name)
    _check_times(fields)
    if fields.get("recurrence"):
        _move_to_first_occurrence(fields)
    return fields


def _move_to_first_occurrence(fields: dict[str, Any]) -> None:
    """A series starts on its first occurrence: move start/end there (duration kept) when the
    start is not on the pattern, and set ``range.startDate`` to that date.

    The start's local date (series zone) is where the pattern is anchored: weeks, months and
    years are counted from it. A ``range.startDate`` that disagrees with it is replaced."""
    rec = _copy(fields["recurrence"])
    fields["recurrence"] = rec
    start: When = fields["start"]
    end: When = fields["end"]
    anchor = series_day(fields, start)
    first = rec_dates.first_date(rec, anchor)
    if first is None:
        raise validation_failure("The recurrence range ends before the first occurrence of the pattern.")
    rec["range"]["startDate"] = first.isoformat()
    shift = first - anchor
    if not shift:
        return
    if fields["isAllDay"]:
        fields["start"] = When(start.local + shift, start.tz_name)
        fields["end"] = When(end.local + shift, end.tz_name)
        return
    zone = series_zone(fields)[1]
    new_start = tz.to_utc(tz.from_utc(start.utc, zone) + shift, zone)
    fields["start"] = When(tz.from_utc(new_start, start.zone), start.tz_name)
    fields["end"] = When(tz.from_utc(new_start + (end.utc - start.utc), end.zone), end.tz_name)


def _check_times(fields: Mapping[str, Any]) -> None:
    start: When = fields["start"]
    end: When = fields["end"]
    if end.utc < start.utc:
        raise bad_request("ErrorCalendarEndDateIsEarlierThanStartDate", "The end date occurs before the start date.")
    if fields["isAllDay"]:
        if not (tz.is_midnight(start.local) and tz.is_midnight(end.local)):
            raise validation_failure("An all-day event must start and end at midnight.")
        if (end.local.date() - start.local.date()).days < 1:
            raise validation_failure("The duration of an event marked as All day must be at least 24 hours.")


def _location(loc: Mapping[str, Any]) -> dict[str, Any]:
    name = loc.get("displayName") or ""
    out: dict[str, Any] = {
        "displayName": name,
        "locationType": loc.get("locationType") or "default",
    }
    if loc.get("uniqueId") or name:
        out["uniqueId"] = loc.get("uniqueId") or name
    out["uniqueIdType"] = loc.get("uniqueIdType") or ("private" if name else "unknown")
    for key in ("locationEmailAddress", "locationUri"):
        if loc.get(key):
            out[key] = loc[key]
    out["address"] = dict(loc.get("address") or {})
    out["coordinates"] = dict(loc.get("coordinates") or {})
    return out


def _attendees(items: list[Any], previous: list[dict[str, Any]]) -> list[dict[str, Any]]:
    prev_status = {a["emailAddress"]["address"].lower(): a["status"] for a in previous}
    out = []
    for item in items:
        email = (item or {}).get("emailAddress") or {}
        address = email.get("address")
        if not address or "@" not in address:
            raise bad_request("ErrorInvalidRecipients", "At least one recipient isn't valid.")
        out.append(
            {
                "type": item.get("type") or "required",
                "status": prev_status.get(address.lower(), {"response": "none", "time": NEVER_RESPONSE_TIME}),
                "emailAddress": {"name": email.get("name") or address, "address": address},
            }
        )
    return out


_NEEDS = {
    "daily": (),
    "weekly": ("daysOfWeek",),
    "absoluteMonthly": ("dayOfMonth",),
    "relativeMonthly": ("daysOfWeek",),
    "absoluteYearly": ("dayOfMonth", "month"),
    "relativeYearly": ("daysOfWeek", "month"),
}


def _recurrence(rec: Mapping[str, Any], start: When) -> dict[str, Any]:
    """Validate ``patternedRecurrence`` and fill the defaults Graph returns (0, "sunday",
    "first", "0001-01-01") so the output has every member (several are Nullable=false)."""
    pattern = rec.get("pattern") or {}
    rng = rec.get("range") or {}
    ptype = pattern.get("type")
    if ptype not in _NEEDS:
        raise validation_failure("recurrence.pattern.type is required.")
    for need in _NEEDS[ptype]:
        if not pattern.get(need):
            raise validation_failure(f"recurrence.pattern.{need} is required for a {ptype} pattern.")
    interval = pattern.get("interval")
    if interval is None:
        interval = 1
    if interval < 1:
        raise validation_failure("recurrence.pattern.interval must be at least 1.")
    if pattern.get("dayOfMonth") and not 1 <= pattern["dayOfMonth"] <= 31:
        raise validation_failure("recurrence.pattern.dayOfMonth must be 1..31.")
    if pattern.get("month") and not 1 <= pattern["month"] <= 12:
        raise validation_failure("recurrence.pattern.month must be 1..12.")
    if (pattern.get("index") or "first") not in rec_dates.WEEK_INDEX:
        raise validation_failure("recurrence.pattern.index must be first, second, third, fourth or last.")
    rtype = rng.get("type")
    if rtype not in ("endDate", "noEnd", "numbered"):
        raise validation_failure("recurrence.range.type is required.")
    if not rng.get("startDate"):
        raise validation_failure("recurrence.range.startDate is required.")
    if rtype == "endDate" and (not rng.get("endDate") or rng["endDate"] < rng["startDate"]):
        raise validation_failure("recurrence.range.endDate must be on or after startDate.")
    if rtype == "numbered" and (rng.get("numberOfOccurrences") or 0) < 1:
        raise validation_failure("recurrence.range.numberOfOccurrences must be at least 1.")
    rec_tz = rng.get("recurrenceTimeZone") or start.tz_name
    try:
        tz.resolve_zone(rec_tz)
    except tz.UnsupportedTimeZone:
        raise bad_request(
            "TimeZoneNotSupportedException",
            f"A valid TimeZone value must be specified. The following TimeZone value is not supported: '{rec_tz}'.",
        ) from None
    return {
        "pattern": {
            "type": ptype,
            "interval": interval,
            "month": pattern.get("month") or 0,
            "dayOfMonth": pattern.get("dayOfMonth") or 0,
            "daysOfWeek": list(dict.fromkeys(pattern.get("daysOfWeek") or [])),
            "firstDayOfWeek": pattern.get("firstDayOfWeek") or "sunday",
            "index": pattern.get("index") or "first",
        },
        "range": {
            "type": rtype,
            "startDate": rng["startDate"],
            "endDate": rng.get("endDate") if rtype == "endDate" else "0001-01-01",
            "recurrenceTimeZone": tz.windows_id(rec_tz),
            "numberOfOccurrences": (rng.get("numberOfOccurrences") or 0) if rtype == "numbered" else 0,
        },
    }


def apply_extended(current: Mapping[str, tuple[str, str]], items: Any) -> dict[str, tuple[str, str]]:
    """Add or replace single-value extended properties (POST/PATCH ``singleValueExtendedProperties``)."""
    out = dict(current)
    for item in items or []:
        raw_id = (item or {}).get("id")
        canon = normalize_extended_property_id(raw_id) if isinstance(raw_id, str) else None
        if canon is None:
            raise bad_request("ErrorInvalidProperty", f"The extended property id '{raw_id}' is not valid.")
        value = item.get("value")
        if value is None:
            out.pop(canon, None)
        else:
            out[canon] = (canon, str(value))
    return out


# -- rendering -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class RenderOptions:
    """Per-request output choices (Prefer headers, $select, $expand)."""

    zone_name: str = "UTC"
    zone: tzinfo = UTC
    body_type: str | None = None  # "text" | "html" | None (= html, Exchange's default)
    select: tuple[str, ...] | None = None
    expand_extended: tuple[str, ...] | None = None  # canonical ids
    odata_type: bool = False  # delta items carry "@odata.type"
    expand_exceptions: bool = False  # $expand=exceptionOccurrences (series masters)


class EventLike(Protocol):
    """What rendering needs: a stored event (single instance or series master) or an instance
    of a series (``series.Instance``: an occurrence or an exception)."""

    @property
    def id(self) -> str: ...
    @property
    def seq(self) -> int: ...
    @property
    def created(self) -> datetime: ...
    @property
    def modified(self) -> datetime: ...
    @property
    def change_key(self) -> str: ...
    @property
    def ical_uid(self) -> str: ...
    @property
    def transaction_id(self) -> str | None: ...
    @property
    def fields(self) -> dict[str, Any]: ...
    @property
    def extended(self) -> dict[str, tuple[str, str]]: ...
    @property
    def event_type(self) -> str: ...
    @property
    def series_master_id(self) -> str | None: ...
    @property
    def original_start(self) -> datetime | None: ...
    @property
    def cancelled_occurrences(self) -> list[str]: ...


def web_link(event_id: str) -> str:
    return f"https://outlook.office365.com/owa/?itemid={quote(event_id, safe='')}&exvsurl=1&path=/calendar/item"


def render_event(ev: EventLike, user: User, opts: RenderOptions) -> dict[str, Any]:
    """The Graph v1.0 JSON of one event (without ``@odata.context``).

    Instances of a series also carry ``originalStart`` (UTC, ``Z``), ``seriesMasterId`` and
    ``type`` ``occurrence``/``exception``; a master lists its ``cancelledOccurrences``."""
    f = ev.fields
    body_type, content = _render_body(f["body"], opts.body_type)
    full: dict[str, Any] = {
        "id": ev.id,
        "createdDateTime": tz.format_timestamp(ev.created),
        "lastModifiedDateTime": tz.format_timestamp(ev.modified),
        "changeKey": ev.change_key,
        "categories": list(f["categories"]),
        "transactionId": ev.transaction_id,
        "originalStartTimeZone": tz.windows_id(f["start"].tz_name),
        "originalEndTimeZone": tz.windows_id(f["end"].tz_name),
    }
    if ev.original_start is not None:
        full["originalStart"] = format_original_start(ev.original_start)
    full |= {
        "iCalUId": ev.ical_uid,
        "reminderMinutesBeforeStart": f["reminderMinutesBeforeStart"],
        "isReminderOn": f["isReminderOn"],
        "hasAttachments": False,
        "subject": f["subject"],
        "bodyPreview": _preview(f["body"]),
        "importance": f["importance"],
        "sensitivity": f["sensitivity"],
        "isAllDay": f["isAllDay"],
        "isCancelled": False,
        "isOrganizer": True,
        "responseRequested": f["responseRequested"],
        "seriesMasterId": ev.series_master_id,
        "showAs": f["showAs"],
        "type": ev.event_type,
        "webLink": web_link(ev.id),
        "onlineMeetingUrl": None,
        "isOnlineMeeting": f["isOnlineMeeting"],
        "onlineMeetingProvider": f["onlineMeetingProvider"],
        "allowNewTimeProposals": f["allowNewTimeProposals"],
        "isDraft": False,
        "hideAttendees": f["hideAttendees"],
        "cancelledOccurrences": ev.cancelled_occurrences,
        "responseStatus": {"response": "organizer", "time": NEVER_RESPONSE_TIME},
        "body": {"contentType": body_type, "content": content},
        "start": _render_when(f["start"], f["isAllDay"], opts),
        "end": _render_when(f["end"], f["isAllDay"], opts),
        "location": _copy(f["location"]),
        "locations": _copy(f["locations"]),
        "recurrence": _copy(f["recurrence"]),
        "attendees": _copy(f["attendees"]),
        "organizer": {"emailAddress": {"name": user.display_name, "address": user.upn}},
        "onlineMeeting": None,
    }
    out: dict[str, Any] = {}
    if opts.odata_type:
        out["@odata.type"] = "#microsoft.graph.event"
    out["@odata.etag"] = etag(ev)
    if opts.select is None:
        out.update(full)
    else:
        out["id"] = ev.id
        for name in opts.select:
            if name in full:
                out[name] = full[name]
    if opts.expand_extended:
        matched = [
            {"id": ev.extended[cid][0], "value": ev.extended[cid][1]}
            for cid in opts.expand_extended
            if cid in ev.extended
        ]
        if matched:
            out["singleValueExtendedProperties"] = matched
    return out


def render_thin(ev: EventLike, opts: RenderOptions) -> dict[str, Any]:
    """An occurrence as calendarView delta lists it: "Occurrences are thin (id, type,
    seriesMasterId, start, end, etag): read the master for the rest" (PLATFORM-NOTES)."""
    f = ev.fields
    out: dict[str, Any] = {}
    if opts.odata_type:
        out["@odata.type"] = "#microsoft.graph.event"
    out |= {
        "@odata.etag": etag(ev),
        "id": ev.id,
        "type": ev.event_type,
        "seriesMasterId": ev.series_master_id,
        "start": _render_when(f["start"], f["isAllDay"], opts),
        "end": _render_when(f["end"], f["isAllDay"], opts),
    }
    return out


def format_original_start(instant: datetime) -> str:
    """``originalStart`` as Graph shows it: UTC with ``Z`` and no fraction (event-list-instances)."""
    utc = instant.astimezone(UTC)
    if utc.microsecond:
        return tz.format_timestamp(utc)
    return utc.strftime("%Y-%m-%dT%H:%M:%SZ")


def removed_item(event_id: str) -> dict[str, Any]:
    """A delta entry for an item that left the view (delta query: ``@removed``)."""
    return {"@odata.type": "#microsoft.graph.event", "id": event_id, "@removed": {"reason": "deleted"}}


def etag(ev: EventLike) -> str:
    return f'W/"{ev.change_key}"'


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _render_when(when: When, all_day: bool, opts: RenderOptions) -> dict[str, str]:
    # all-day events are dates: no zone shift
    local = when.local if all_day else tz.from_utc(when.utc, opts.zone)
    return {"dateTime": tz.format_graph_datetime(local), "timeZone": opts.zone_name}


_HTML_WRAPPER = (
    '<html><head>\r\n<meta http-equiv="Content-Type" content="text/html; charset=utf-8">\r\n'
    '<meta name="Generator" content="Microsoft Exchange Server">\r\n<!-- converted from text -->\r\n'
    "<style><!-- .EmailQuote { margin-left: 1pt; padding-left: 4pt; border-left: #800000 2px solid; } "
    '--></style></head>\r\n<body>\r\n<font size="2"><span style="font-size:11pt;">'
    '<div class="PlainText">%BODY%</div></span></font>\r\n</body>\r\n</html>\r\n'
)


def text_to_html(text: str) -> str:
    if not text:
        return ""
    escaped = html.escape(text, quote=False).replace("\r\n", "\n").replace("\n", "<br>\r\n")
    return _HTML_WRAPPER.replace("%BODY%", escaped)


_TAG = re.compile(r"<[^>]+>")
_BLOCK_END = re.compile(r"<br\s*/?>|</(?:p|div|li|tr|h\d)>", re.IGNORECASE)
_HEAD = re.compile(r"<(head|style|script)\b.*?</\1>", re.IGNORECASE | re.DOTALL)


def html_to_text(markup: str) -> str:
    text = _HEAD.sub("", markup)
    text = text.replace("\r\n", "\n")
    text = re.sub(r"\n(?=\s*<)", "", text)
    text = _BLOCK_END.sub("\n", text)
    text = html.unescape(_TAG.sub("", text))
    return "\r\n".join(line.rstrip() for line in text.strip().split("\n"))


def _render_body(body: Mapping[str, str], preferred: str | None) -> tuple[str, str]:
    ctype, content = body["contentType"], body["content"]
    want = preferred or "html"
    if want == ctype:
        return ctype, content
    if want == "html":
        return "html", text_to_html(content)
    return "text", html_to_text(content)


def _preview(body: Mapping[str, str]) -> str:
    text = body["content"] if body["contentType"] == "text" else html_to_text(body["content"])
    return " ".join(text.split())[:255]

"""Graph event JSON <-> model (sync_core.convert.graph_json), and across both converters."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from sync_core.convert.graph_json import (
    UID_PROPERTY_ID,
    event_from_graph,
    event_to_graph,
    match_uids_from_graph,
)
from sync_core.convert.html_text import html_to_text, text_to_html
from sync_core.convert.ical import event_from_ical, event_to_ical
from sync_core.convert.timezones import windows_to_iana
from sync_core.errors import InvalidGraphEvent, UnknownTimeZone
from sync_core.model import Event, Sensitivity, ShowAs

BERLIN = ZoneInfo("Europe/Berlin")
SECRET = "Quarterly layoffs plan"


def graph_echo(body: dict[str, Any], *, prefer: str | None = None) -> dict[str, Any]:
    """What Graph returns for an event written with ``body`` (GET, optional outlook.timezone).

    Timed: start/end converted to UTC (or the Prefer zone); ``originalStartTimeZone`` is the
    zone written. All-day: the written midnights, unshifted, labelled with the response zone.
    Text bodies come back as HTML (Exchange converts them).
    """
    response_zone = prefer or "UTC"

    def when(value: dict[str, str]) -> dict[str, str]:
        local = datetime.fromisoformat(value["dateTime"])
        if body["isAllDay"]:
            shown = local
        else:
            aware = local.replace(tzinfo=ZoneInfo(windows_to_iana(value["timeZone"])))
            shown = aware.astimezone(ZoneInfo(windows_to_iana(response_zone))).replace(tzinfo=None)
        return {"dateTime": shown.strftime("%Y-%m-%dT%H:%M:%S.0000000"), "timeZone": response_zone}

    content = body["body"]["content"]
    if body["body"]["contentType"] == "text":
        content = text_to_html(content)
    payload: dict[str, Any] = {
        "@odata.etag": 'W/"abc"',
        "id": "AAMkAGI2-event-id",
        "createdDateTime": "2024-05-01T08:00:00.1234567Z",
        "lastModifiedDateTime": "2024-05-01T08:00:01.9229346Z",
        "changeKey": "abc",
        "categories": list(body["categories"]),
        "transactionId": None,
        "originalStartTimeZone": body["start"]["timeZone"],
        "originalEndTimeZone": body["end"]["timeZone"],
        "iCalUId": "040000008200E00074C5B7101A82E008000000001234",
        "reminderMinutesBeforeStart": body.get("reminderMinutesBeforeStart", 15),
        "isReminderOn": body["isReminderOn"],
        "subject": body["subject"],
        "sensitivity": body["sensitivity"],
        "isAllDay": body["isAllDay"],
        "showAs": body["showAs"],
        "type": "singleInstance",
        "body": {"contentType": "html", "content": content},
        "start": when(body["start"]),
        "end": when(body["end"]),
        "location": {"displayName": body["location"]["displayName"], "locationType": "default"},
        "recurrence": None,
        "attendees": [],
    }
    if "singleValueExtendedProperties" in body:
        payload["singleValueExtendedProperties"] = [
            {"id": UID_PROPERTY_ID, "value": body["singleValueExtendedProperties"][0]["value"]}
        ]
    return json.loads(json.dumps(payload))  # plain JSON types only


def through_graph(event: Event, *, prefer: str | None = None, **kwargs: Any) -> Event:
    body = event_to_graph(event, uid_tag=event.uid, **kwargs)
    assert "attendees" not in body
    back = event_from_graph(graph_echo(body, prefer=prefer))
    assert back.fingerprint() == event.fingerprint()
    assert back.uid == event.uid
    return back


def timed(zone_name: str, start: datetime, minutes: int = 60, **fields: Any) -> Event:
    tz = ZoneInfo(zone_name)
    local = start.replace(tzinfo=tz)
    return Event(
        subject=fields.pop("subject", "Meeting"),
        start=local,
        end=(local.astimezone(UTC) + timedelta(minutes=minutes)).astimezone(tz),
        timezone=zone_name,
        uid=fields.pop("uid", "uid-1@test"),
        **fields,
    )


# --- model -> graph -> (Graph echo) -> model -----------------------------------------------------
@pytest.mark.parametrize(
    "zone_name",
    ["Europe/Berlin", "Asia/Tokyo", "America/New_York", "Asia/Kolkata", "UTC", "Pacific/Auckland",
     "America/Los_Angeles", "Australia/Adelaide", "Asia/Kathmandu"],
)
@pytest.mark.parametrize("prefer", [None, "Pacific Standard Time", "Asia/Tokyo"])
def test_timed_round_trip_through_graph(zone_name: str, prefer: str | None) -> None:
    event = timed(zone_name, datetime(2024, 7, 3, 9, 30), 45)
    back = through_graph(event, prefer=prefer)
    assert back.start == event.start and back.end == event.end
    assert back.timezone is not None
    assert ZoneInfo(back.timezone).utcoffset(datetime(2024, 7, 3)) == ZoneInfo(zone_name).utcoffset(
        datetime(2024, 7, 3)
    )


def test_dst_crossing_event_through_graph() -> None:
    event = Event(
        subject="Night shift",
        start=datetime(2024, 10, 26, 22, 0, tzinfo=BERLIN),
        end=datetime(2024, 10, 27, 4, 0, tzinfo=BERLIN),
        timezone="Europe/Berlin",
        uid="dst@test",
    )
    body = event_to_graph(event)
    assert body["start"] == {"dateTime": "2024-10-26T22:00:00", "timeZone": "W. Europe Standard Time"}
    assert body["end"] == {"dateTime": "2024-10-27T04:00:00", "timeZone": "W. Europe Standard Time"}
    echo = graph_echo(body)
    assert echo["start"]["dateTime"].startswith("2024-10-26T20:00:00")
    assert echo["end"]["dateTime"].startswith("2024-10-27T03:00:00")
    back = through_graph(event)
    assert back.timezone == "Europe/Berlin"
    assert back.end.astimezone(UTC) - back.start.astimezone(UTC) == timedelta(hours=7)


@pytest.mark.parametrize("local_zone", ["UTC", "Pacific/Auckland", "America/Los_Angeles"])
@pytest.mark.parametrize(
    ("start", "end"), [(date(2024, 12, 25), date(2024, 12, 26)), (date(2024, 3, 29), date(2024, 4, 2))]
)
@pytest.mark.parametrize("prefer", [None, "Tokyo Standard Time", "Hawaiian Standard Time"])
def test_all_day_exact_on_graph(local_zone: str, start: date, end: date, prefer: str | None) -> None:
    event = Event(subject="Holiday", start=start, end=end, uid="ad@test")
    body = event_to_graph(event, local_zone=local_zone)
    assert body["isAllDay"] is True
    assert body["start"]["dateTime"] == f"{start:%Y-%m-%d}T00:00:00"
    assert body["end"]["dateTime"] == f"{end:%Y-%m-%d}T00:00:00"
    assert body["start"]["timeZone"] == body["end"]["timeZone"]
    back = through_graph(event, prefer=prefer, local_zone=local_zone)
    assert (back.start, back.end, back.timezone) == (start, end, None)


def test_all_day_read_from_graph_without_zone_shift() -> None:
    # Created in Auckland; Graph answers in UTC with the author's dates at midnight.
    payload = {
        "id": "ad-1", "subject": "Waitangi Day", "isAllDay": True,
        "originalStartTimeZone": "New Zealand Standard Time",
        "start": {"dateTime": "2025-02-06T00:00:00.0000000", "timeZone": "UTC"},
        "end": {"dateTime": "2025-02-07T00:00:00.0000000", "timeZone": "UTC"},
    }
    event = event_from_graph(payload)
    assert (event.start, event.end, event.timezone) == (date(2025, 2, 6), date(2025, 2, 7), None)


def test_timed_read_expresses_times_in_the_authors_zone() -> None:
    payload = {
        "id": "t-1", "subject": "x", "isAllDay": False,
        "originalStartTimeZone": "Pacific Standard Time",
        "originalEndTimeZone": "Pacific Standard Time",
        "start": {"dateTime": "2024-01-10T17:00:00.0000000", "timeZone": "UTC"},
        "end": {"dateTime": "2024-01-10T18:30:00.0000000", "timeZone": "UTC"},
    }
    event = event_from_graph(payload)
    la = ZoneInfo("America/Los_Angeles")
    assert event.timezone == "America/Los_Angeles"
    assert event.start == datetime(2024, 1, 10, 9, 0, tzinfo=la)
    assert event.end == datetime(2024, 1, 10, 10, 30, tzinfo=la)
    assert (event.start.hour, event.start.tzinfo) == (9, la)


@pytest.mark.parametrize(
    ("original", "response_zone", "expected"),
    [
        ("tzone://Microsoft/Custom", "UTC", "UTC"),
        ("tzone://Microsoft/Custom", "Tokyo Standard Time", "Asia/Tokyo"),
        (None, "Europe/Berlin", "Europe/Berlin"),
        ("Some Future Windows Zone", "UTC", "UTC"),
        ("UTC", "Eastern Standard Time", "UTC"),
    ],
)
def test_author_zone_fallbacks(original: str | None, response_zone: str, expected: str) -> None:
    start = datetime(2024, 1, 10, 17, 0, tzinfo=UTC)
    local = start.astimezone(ZoneInfo(windows_to_iana(response_zone))).replace(tzinfo=None)
    payload: dict[str, Any] = {
        "id": "t-2",
        "start": {"dateTime": local.isoformat(), "timeZone": response_zone},
        "end": {"dateTime": (local + timedelta(hours=1)).isoformat(), "timeZone": response_zone},
    }
    if original is not None:
        payload["originalStartTimeZone"] = original
    event = event_from_graph(payload)
    assert event.timezone == expected
    assert event.start == start


def test_fields_read_from_graph() -> None:
    payload = {
        "id": "f-1",
        "subject": "Review",
        "isAllDay": False,
        "start": {"dateTime": "2024-01-10T17:00:00.0000000", "timeZone": "UTC"},
        "end": {"dateTime": "2024-01-10T18:00:00.0000000", "timeZone": "UTC"},
        "originalStartTimeZone": "UTC",
        "body": {
            "contentType": "html",
            "content": "<html><head><style>p{}</style></head><body><p>Hi &amp; bye</p><div>line 2</div></body></html>",
        },
        "location": {"displayName": "Room 1"},
        "showAs": "workingElsewhere",
        "sensitivity": "personal",
        "categories": ["Red category", "Blue category", "Red category"],
        "isReminderOn": True,
        "reminderMinutesBeforeStart": 1440,
        "lastModifiedDateTime": "2024-01-09T11:22:54.9229346Z",
        "iCalUId": "ical-uid",
        "transactionId": "txn-1",
    }
    event = event_from_graph(payload)
    assert event.subject == "Review"
    assert event.body_text == "Hi & bye\nline 2"
    assert event.body_html == payload["body"]["content"]
    assert event.location == "Room 1"
    assert event.show_as is ShowAs.WORKING_ELSEWHERE
    assert event.sensitivity is Sensitivity.PERSONAL
    assert event.categories == ("Red category", "Blue category")
    assert event.reminder_minutes == 1440
    assert event.last_modified == datetime(2024, 1, 9, 11, 22, 54, 922934, tzinfo=UTC)
    assert event.uid == "ical-uid"
    assert match_uids_from_graph(payload) == {"ical-uid", "txn:txn-1"}

    payload["isReminderOn"] = False
    payload["body"] = {"contentType": "text", "content": "plain\r\ntext"}
    payload["singleValueExtendedProperties"] = [{"id": UID_PROPERTY_ID.upper(), "value": "our-uid"}]
    event = event_from_graph(payload)
    assert event.reminder_minutes is None
    assert (event.body_text, event.body_html) == ("plain\ntext", None)
    assert event.uid == "our-uid"
    assert match_uids_from_graph(payload) == {"ical-uid", "our-uid", "txn:txn-1"}


def test_event_to_graph_fields() -> None:
    event = timed(
        "Europe/Berlin", datetime(2024, 7, 3, 9, 30), 30,
        subject="Plan", body_text="a < b\n\nnext", location="Room 2",
        show_as=ShowAs.FREE, sensitivity=Sensitivity.PRIVATE, categories=("A", "B"), reminder_minutes=5,
    )
    body = event_to_graph(event, uid_tag="uid-xyz")
    assert body["subject"] == "Plan"
    assert body["body"]["contentType"] == "html"
    assert html_to_text(body["body"]["content"]) == "a < b\n\nnext"
    assert body["location"] == {"displayName": "Room 2"}
    assert (body["showAs"], body["sensitivity"]) == ("free", "private")
    assert body["categories"] == ["A", "B"]
    assert (body["isReminderOn"], body["reminderMinutesBeforeStart"]) == (True, 5)
    assert body["singleValueExtendedProperties"] == [{"id": UID_PROPERTY_ID, "value": "uid-xyz"}]
    assert body["isAllDay"] is False
    assert "attendees" not in body and "transactionId" not in body
    no_reminder = event_to_graph(timed("UTC", datetime(2024, 7, 3, 9, 30)))
    assert no_reminder["isReminderOn"] is False and "reminderMinutesBeforeStart" not in no_reminder
    assert "singleValueExtendedProperties" not in no_reminder
    assert no_reminder["start"] == {"dateTime": "2024-07-03T09:30:00", "timeZone": "UTC"}


def test_html_body_is_kept_unless_the_text_was_edited() -> None:
    html = "<html><body><p><b>Bold</b> words</p></body></html>"
    same = timed("UTC", datetime(2024, 7, 3, 9), body_text="Bold words", body_html=html)
    assert event_to_graph(same)["body"] == {"contentType": "html", "content": html}
    edited = timed("UTC", datetime(2024, 7, 3, 9), body_text="New words", body_html=html)
    assert html_to_text(event_to_graph(edited)["body"]["content"]) == "New words"


def test_floating_time_is_sent_in_the_local_zone() -> None:
    event = Event(subject="Lunch", start=datetime(2024, 2, 1, 12), end=datetime(2024, 2, 1, 13), uid="f@test")
    body = event_to_graph(event, local_zone="Europe/Berlin")
    assert body["start"] == {"dateTime": "2024-02-01T12:00:00", "timeZone": "W. Europe Standard Time"}
    assert event_to_graph(event)["start"] == {"dateTime": "2024-02-01T12:00:00", "timeZone": "UTC"}
    back = event_from_graph(graph_echo(body))
    assert back.start == datetime(2024, 2, 1, 12, tzinfo=BERLIN)


@pytest.mark.parametrize(
    ("zone_name", "start"),
    [
        ("Antarctica/Troll", datetime(2024, 7, 3, 9, 30)),  # no Windows zone at all
        ("America/Chihuahua", datetime(2016, 1, 15, 9, 30)),  # Windows match only since 2022
    ],
)
def test_zone_without_a_faithful_windows_id_is_written_in_utc(zone_name: str, start: datetime) -> None:
    event = timed(zone_name, start)
    body = event_to_graph(event)
    assert body["start"]["timeZone"] == "UTC"
    assert body["start"]["dateTime"] == event.start.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    through_graph(event)


def test_no_windows_name_leaks_into_the_model() -> None:
    back = through_graph(timed("Europe/Berlin", datetime(2024, 7, 3, 9)))
    assert back.timezone == "Europe/Berlin"


# --- errors -----------------------------------------------------------------------------------
def base_payload() -> dict[str, Any]:
    return {
        "id": "evt-9",
        "subject": SECRET,
        "start": {"dateTime": "2024-01-10T17:00:00.0000000", "timeZone": "UTC"},
        "end": {"dateTime": "2024-01-10T18:00:00.0000000", "timeZone": "UTC"},
    }


@pytest.mark.parametrize(
    "mutate",
    [
        lambda p: p.pop("start"),
        lambda p: p.pop("end"),
        lambda p: p.update(start={"timeZone": "UTC"}),
        lambda p: p.update(start={"dateTime": f"tomorrow {SECRET}", "timeZone": "UTC"}),
        lambda p: p.update(end={"dateTime": "2024-01-10T16:00:00", "timeZone": "UTC"}),
        lambda p: p.update(start="2024-01-10"),
        lambda p: p.update(subject=42),
        lambda p: p.update(categories="Red"),
        lambda p: p.update(isAllDay=True, end={"dateTime": "2024-01-10T00:00:00", "timeZone": "UTC"}),
        lambda p: p.update({"@removed": {"reason": "deleted"}}),
    ],
)
def test_broken_payloads_raise_invalid_graph_event_with_id_only(mutate: Any) -> None:
    payload = base_payload()
    mutate(payload)
    with pytest.raises(InvalidGraphEvent) as info:
        event_from_graph(payload)
    assert SECRET not in str(info.value)
    assert "evt-9" in str(info.value)


def test_not_a_dict() -> None:
    with pytest.raises(InvalidGraphEvent):
        event_from_graph([])  # type: ignore[arg-type]


def test_unknown_response_zone_raises_unknown_time_zone() -> None:
    payload = base_payload()
    payload["start"]["timeZone"] = "Mars Standard Time"
    with pytest.raises(UnknownTimeZone):
        event_from_graph(payload)


# --- both converters ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "event",
    [
        timed("Europe/Berlin", datetime(2024, 10, 26, 22), 360, body_text="Line 1\nLine 2", location="Hall",
              categories=("Red",), reminder_minutes=15, sensitivity=Sensitivity.CONFIDENTIAL,
              show_as=ShowAs.OOF),
        timed("Asia/Tokyo", datetime(2024, 1, 5, 23, 30), 90),
        Event(subject="Trip", start=date(2024, 3, 29), end=date(2024, 4, 2), uid="trip@test",
              show_as=ShowAs.FREE),
    ],
)
def test_caldav_to_graph_and_back(event: Event) -> None:
    from_caldav = event_from_ical(event_to_ical(event))
    assert from_caldav.fingerprint() == event.fingerprint()
    from_graph = through_graph(from_caldav, prefer="Pacific Standard Time")
    again = event_from_ical(event_to_ical(from_graph))
    assert again.fingerprint() == event.fingerprint()

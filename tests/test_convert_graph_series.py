"""Graph JSON <-> model for series, people, importance and join URLs (no network)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from sync_core.convert import graph_note
from sync_core.convert.graph_json import (
    event_from_graph,
    event_to_graph,
    occurrence_patch,
    series_from_graph,
)
from sync_core.errors import InvalidGraphEvent, NotExpressible
from sync_core.model import (
    AttendeeRole,
    Event,
    Importance,
    Occurrence,
    Person,
    Recurrence,
    ResponseStatus,
)

BERLIN = ZoneInfo("Europe/Berlin")
WINDOW = (datetime(2027, 1, 1, tzinfo=UTC), datetime(2028, 1, 1, tzinfo=UTC))


def master_payload(**fields: Any) -> dict[str, Any]:
    payload = {
        "id": "master-1",
        "type": "seriesMaster",
        "subject": "Standup",
        "start": {"dateTime": "2027-03-01T08:00:00.0000000", "timeZone": "UTC"},
        "end": {"dateTime": "2027-03-01T08:15:00.0000000", "timeZone": "UTC"},
        "originalStartTimeZone": "W. Europe Standard Time",
        "recurrence": {
            "pattern": {"type": "weekly", "interval": 1, "daysOfWeek": ["monday", "wednesday"],
                        "firstDayOfWeek": "monday"},
            "range": {"type": "numbered", "startDate": "2027-03-01", "numberOfOccurrences": 6,
                      "recurrenceTimeZone": "W. Europe Standard Time"},
        },
    }
    payload.update(fields)
    return payload


def instance(kind: str, original_utc: str, start_utc: str, subject: str = "Standup") -> dict[str, Any]:
    end = (datetime.fromisoformat(start_utc) + timedelta(minutes=15)).strftime("%Y-%m-%dT%H:%M:%S")
    return {
        "id": f"inst-{original_utc}", "type": kind, "seriesMasterId": "master-1", "subject": subject,
        "originalStart": original_utc + "Z", "originalStartTimeZone": "W. Europe Standard Time",
        "start": {"dateTime": start_utc + ".0000000", "timeZone": "UTC"},
        "end": {"dateTime": end + ".0000000", "timeZone": "UTC"},
    }


def test_a_master_reads_as_a_series_in_its_authors_zone() -> None:
    event = event_from_graph(master_payload())
    assert event.recurrence == Recurrence(event.recurrence.rule if event.recurrence else "")
    assert event.recurrence is not None
    assert "FREQ=WEEKLY" in event.recurrence.rule and "COUNT=6" in event.recurrence.rule
    assert event.timezone == "Europe/Berlin" and event.start == datetime(2027, 3, 1, 9, tzinfo=BERLIN)


def test_a_master_without_recurrence_is_invalid() -> None:
    payload = master_payload()
    payload.pop("recurrence")
    with pytest.raises(InvalidGraphEvent):
        event_from_graph(payload)


def test_series_from_instances_finds_exceptions_and_cancellations() -> None:
    # Occurrences: Mar 1, 3, 8, 10, 15, 17 at 09:00 Berlin (08:00 UTC).
    instances = [
        instance("occurrence", "2027-03-01T08:00:00", "2027-03-01T08:00:00"),
        instance("exception", "2027-03-03T08:00:00", "2027-03-03T10:00:00", subject="Late standup"),
        # 8 March cancelled
        instance("occurrence", "2027-03-10T08:00:00", "2027-03-10T08:00:00"),
        instance("occurrence", "2027-03-15T08:00:00", "2027-03-15T08:00:00"),
        instance("occurrence", "2027-03-17T08:00:00", "2027-03-17T08:00:00"),
    ]
    series = series_from_graph(master_payload(), instances, WINDOW)
    assert series.exdates == (datetime(2027, 3, 8, 9, tzinfo=BERLIN),)
    (override,) = series.overrides
    assert override.recurrence_id == datetime(2027, 3, 3, 9, tzinfo=BERLIN)
    assert override.event.subject == "Late standup"
    assert override.event.start == datetime(2027, 3, 3, 11, tzinfo=BERLIN)


def test_exceptions_outside_the_window_are_left_out() -> None:
    instances = [instance("exception", "2027-03-03T08:00:00", "2027-03-03T10:00:00", subject="Late")]
    window = (datetime(2027, 3, 5, tzinfo=UTC), datetime(2027, 3, 12, tzinfo=UTC))
    series = series_from_graph(master_payload(), instances, window)
    assert series.overrides == ()
    # 8 and 10 March are inside the window and missing from the instances: cancelled.
    assert series.exdates == (datetime(2027, 3, 8, 9, tzinfo=BERLIN), datetime(2027, 3, 10, 9, tzinfo=BERLIN))


def test_series_write_carries_the_recurrence_in_the_written_zone() -> None:
    event = event_from_graph(master_payload())
    body = event_to_graph(event.with_uid("u@x"))
    assert body["start"] == {"dateTime": "2027-03-01T09:00:00", "timeZone": "W. Europe Standard Time"}
    assert body["recurrence"]["pattern"]["type"] == "weekly"
    assert body["recurrence"]["pattern"]["daysOfWeek"] == ["monday", "wednesday"]
    assert body["recurrence"]["range"]["numberOfOccurrences"] == 6
    assert body["recurrence"]["range"]["recurrenceTimeZone"] == "W. Europe Standard Time"
    assert "attendees" not in body


def test_rdates_cannot_be_written_to_graph() -> None:
    event = Event("x", datetime(2027, 1, 1, 9, tzinfo=UTC), datetime(2027, 1, 1, 10, tzinfo=UTC), "UTC",
                  recurrence=Recurrence("FREQ=DAILY;COUNT=2", (datetime(2027, 2, 1, 9, tzinfo=UTC),)))
    with pytest.raises(NotExpressible):
        event_to_graph(event)


def test_occurrence_patch_has_no_recurrence_and_no_uid_tag() -> None:
    event = event_from_graph(master_payload()).with_uid("u@x")
    body = occurrence_patch(event)
    assert "recurrence" not in body and "singleValueExtendedProperties" not in body


PEOPLE = Event(
    "Review", datetime(2027, 5, 3, 9, tzinfo=BERLIN), datetime(2027, 5, 3, 10, tzinfo=BERLIN), "Europe/Berlin",
    uid="r@x", body_text="Agenda:\nNumbers", importance=Importance.HIGH,
    online_meeting_url="https://meet.example.org/abc",
    organizer=Person("olga@example.org", "Olga", status=ResponseStatus.ORGANIZER),
    attendees=(Person("ann@example.org", "Ann", AttendeeRole.REQUIRED, ResponseStatus.ACCEPTED),
               Person("ben@example.org", "Ben <B>", AttendeeRole.OPTIONAL, ResponseStatus.NOT_RESPONDED)),
)


def graph_echo(body: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """What Graph returns for a written body: no people of its own (none were written)."""
    echo = {"id": "e1", "type": "singleInstance", **body,
            "organizer": {"emailAddress": {"name": "Mailbox", "address": "me@contoso.test"}}, "attendees": []}
    echo.update(fields)
    return echo


def test_people_and_join_url_travel_in_the_note_and_come_back() -> None:
    body = event_to_graph(PEOPLE, uid_tag="r@x")
    assert "attendees" not in body and body["importance"] == "high"
    content = body["body"]["content"]
    assert "[davbridge] Attendee: Ann &lt;ann@example.org&gt;; required; accepted" in content
    assert "meet.example.org/abc" in content
    back = event_from_graph(graph_echo(body))
    assert back.fingerprint() == PEOPLE.fingerprint()
    assert back.body_text == "Agenda:\nNumbers"
    # Without the extended property (delta cannot expand it) the note alone gives the people back.
    no_property = graph_echo(body)
    no_property.pop("singleValueExtendedProperties")
    assert event_from_graph(no_property).fingerprint() == PEOPLE.fingerprint()


def test_a_text_body_note_is_parsed_and_stripped() -> None:
    text, note = graph_note.split_note("Hello\n\n[davbridge] Organizer: Olga <olga@example.org>\n"
                                       "[davbridge] Join: https://x.example/1\n")
    assert text == "Hello\n" or text.rstrip() == "Hello"
    assert note.organizer is not None and note.organizer.email == "olga@example.org"
    assert note.join_url == "https://x.example/1"


def test_graph_meeting_people_come_from_graph_itself() -> None:
    payload = {
        "id": "m1", "type": "singleInstance", "subject": "Design",
        "start": {"dateTime": "2027-05-03T07:00:00", "timeZone": "UTC"},
        "end": {"dateTime": "2027-05-03T08:00:00", "timeZone": "UTC"},
        "organizer": {"emailAddress": {"name": "Me", "address": "me@contoso.test"}},
        "attendees": [{"emailAddress": {"name": "Carl", "address": "carl@example.org"}, "type": "optional",
                       "status": {"response": "tentativelyAccepted", "time": "0001-01-01T00:00:00Z"}}],
        "onlineMeeting": {"joinUrl": "https://teams.example/join/1"},
    }
    event = event_from_graph(payload)
    assert event.organizer == Person("me@contoso.test", "Me", status=ResponseStatus.ORGANIZER)
    assert event.attendees == (Person("carl@example.org", "Carl", AttendeeRole.OPTIONAL, ResponseStatus.TENTATIVE),)
    assert event.online_meeting_url == "https://teams.example/join/1"
    # Written back to that meeting, nothing is duplicated into a note.
    body = event_to_graph(event, graph_attendees=True, graph_join_url="https://teams.example/join/1")
    assert "davbridge" not in body["body"]["content"]


def test_an_event_without_attendees_has_no_organizer_in_the_model() -> None:
    payload = {
        "id": "s1", "type": "singleInstance", "subject": "Alone",
        "start": {"dateTime": "2027-05-03T07:00:00", "timeZone": "UTC"},
        "end": {"dateTime": "2027-05-03T08:00:00", "timeZone": "UTC"},
        "organizer": {"emailAddress": {"name": "Me", "address": "me@contoso.test"}}, "attendees": [],
    }
    event = event_from_graph(payload)
    assert event.organizer is None and event.attendees == ()


def test_with_series_normalises_overrides_equal_to_the_plain_occurrence() -> None:
    series = event_from_graph(master_payload())
    rid = datetime(2027, 3, 3, 9, tzinfo=BERLIN)
    plain = series.occurrence_at(rid)
    moved = Occurrence(rid, plain.__class__(**{**plain.__dict__, "subject": "Changed"}))
    normal = series.with_series((date(2027, 3, 8),), (Occurrence(rid, plain), moved))
    assert [o.event.subject for o in normal.overrides] == ["Changed"]

"""iCalendar series <-> model (sync_core.convert.ical): RRULE/RDATE/EXDATE/RECURRENCE-ID,
plus the fields the model owns since recurrence: PRIORITY, ORGANIZER, ATTENDEE, CONFERENCE."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from icalendar import Calendar
from test_convert_ical import WINDOWS_TZ

from sync_core.convert.ical import NO_MASTER, event_from_ical, event_to_ical
from sync_core.convert.timezones import is_windows_id
from sync_core.errors import InvalidICalendar, UnsupportedEvent
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
SECRET = "Quarterly layoffs plan"  # event content that must never reach an error message
ORGANIZER = Person("org@example.com", "Org", status=ResponseStatus.ORGANIZER)


# --- helpers ------------------------------------------------------------------------------------
def wrap(*lines: str) -> str:
    body = ["BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//test//EN", *lines, "END:VCALENDAR"]
    return "\r\n".join(body) + "\r\n"


def vevent(*lines: str, uid: str = "series-1@test") -> list[str]:
    return ["BEGIN:VEVENT", f"UID:{uid}", "DTSTAMP:20240101T000000Z", *lines, "END:VEVENT"]


def unfold(text: str) -> str:
    return re.sub(r"\r\n[ \t]", "", text)


def tzids(text: str) -> list[str]:
    unfolded = unfold(text)
    found = re.findall(r";TZID=(\"[^\"]*\"|[^:;]*)", unfolded)
    found += re.findall(r"^TZID:(.*)$", unfolded, flags=re.MULTILINE)
    return [value.strip().strip('"') for value in found]


def assert_well_formed(text: str) -> None:
    """CRLF, folded lines, a VTIMEZONE for every TZID, no Windows TZID, and every ATTENDEE /
    ORGANIZER written with SCHEDULE-AGENT=CLIENT (RFC 6638 7.1)."""
    assert text.endswith("\r\n")
    assert "\n" not in text.replace("\r\n", "")
    assert all(len(line.encode()) <= 75 for line in text.split("\r\n"))
    calendar = Calendar.from_ical(text)
    defined = {str(tz["TZID"]) for tz in calendar.walk("VTIMEZONE")}
    used = set(calendar.get_used_tzids()) - {"UTC"}
    assert used <= defined, f"TZIDs without VTIMEZONE: {used - defined}"
    for tzid in tzids(text):
        assert not is_windows_id(tzid), f"Windows name written as TZID: {tzid}"
    for component in calendar.walk("VEVENT"):
        for name in ("ATTENDEE", "ORGANIZER"):
            for prop in props(component, name):
                assert prop.params.get("SCHEDULE-AGENT") == "CLIENT", name


def props(component: Any, name: str) -> list[Any]:
    value = component.get(name)
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def vevents(text: str) -> list[Any]:
    return [c for c in Calendar.from_ical(text).subcomponents if c.name == "VEVENT"]


def round_trip(event: Event, previous: str | None = None) -> tuple[Event, str]:
    text = event_to_ical(event, previous)
    assert_well_formed(text)
    back = event_from_ical(text)
    assert back.fingerprint() == event.fingerprint()
    assert back.uid == event.uid
    return back, text


def berlin(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=BERLIN)


def covers(text: str, tzid: str, moment: datetime, offset: timedelta) -> bool:
    """The written VTIMEZONE ``tzid`` itself gives ``offset`` at wall time ``moment``."""
    timezone: Any = next(tz for tz in Calendar.from_ical(text).walk("VTIMEZONE") if str(tz["TZID"]) == tzid)
    return moment.replace(tzinfo=timezone.to_tz(lookup_tzid=False)).utcoffset() == offset


def weekly_series() -> Event:
    master = Event(
        subject="Team sync",
        start=berlin(2024, 3, 4, 10),
        end=berlin(2024, 3, 4, 11),
        timezone="Europe/Berlin",
        uid="weekly@test",
        body_text="Agenda",
        location="Room 1",
        reminder_minutes=15,
        importance=Importance.HIGH,
        online_meeting_url="https://teams.example.com/l/meetup-join/1",
        organizer=ORGANIZER,
        attendees=(
            Person("ann@example.com", "Ann", AttendeeRole.REQUIRED, ResponseStatus.ACCEPTED),
            Person("bob@example.com", "Bob, Jr.", AttendeeRole.OPTIONAL, ResponseStatus.TENTATIVE),
            Person("room1@example.com", "Room 1", AttendeeRole.RESOURCE),
        ),
        recurrence=Recurrence("FREQ=WEEKLY;BYDAY=MO;WKST=MO"),
    )
    moved = Event(
        subject="Team sync (moved)",
        start=berlin(2024, 3, 12, 14),
        end=berlin(2024, 3, 12, 15, 30),
        timezone="Europe/Berlin",
        location="Room 2",
        organizer=ORGANIZER,
        attendees=master.attendees[:1],
    )
    return master.with_series((berlin(2024, 3, 18, 10),), (Occurrence(berlin(2024, 3, 11, 10), moved),))


# --- model -> ical -> model ---------------------------------------------------------------------
def test_weekly_series_with_exdate_and_override_round_trip() -> None:
    event = weekly_series()
    back, text = round_trip(event)
    assert back.recurrence == event.recurrence
    assert back.exdates == (berlin(2024, 3, 18, 10),)
    assert [o.recurrence_id for o in back.overrides] == [berlin(2024, 3, 11, 10)]
    assert back.overrides[0].event.subject == "Team sync (moved)"
    assert back.overrides[0].event.uid == "weekly@test"
    assert back.attendees == event.attendees and back.organizer == ORGANIZER
    unfolded = unfold(text)
    assert "RRULE:FREQ=WEEKLY;BYDAY=MO;WKST=MO" in unfolded
    assert "EXDATE;TZID=Europe/Berlin:20240318T100000" in unfolded
    assert "RECURRENCE-ID;TZID=Europe/Berlin:20240311T100000" in unfolded
    master, override = vevents(text)
    assert "RECURRENCE-ID" not in master and "RRULE" not in override and "EXDATE" not in override
    assert str(override["UID"]) == "weekly@test" and "DTSTAMP" in override
    # No end: the VTIMEZONE covers at least two years from the start.
    assert covers(text, "Europe/Berlin", datetime(2026, 7, 1, 12), timedelta(hours=2))


def test_all_day_yearly_series() -> None:
    master = Event(
        subject="Anniversary", start=date(2024, 5, 1), end=date(2024, 5, 2), uid="yearly@test",
        recurrence=Recurrence("FREQ=YEARLY;BYMONTHDAY=1;BYMONTH=5"),
    )
    moved = Event(subject="Anniversary (party)", start=date(2026, 5, 2), end=date(2026, 5, 4))
    event = master.with_series((date(2025, 5, 1),), (Occurrence(date(2026, 5, 1), moved),))
    back, text = round_trip(event)
    assert back.all_day and back.exdates == (date(2025, 5, 1),)
    assert back.overrides[0].event.end == date(2026, 5, 4)
    unfolded = unfold(text)
    assert "EXDATE;VALUE=DATE:20250501" in unfolded
    assert "RECURRENCE-ID;VALUE=DATE:20260501" in unfolded
    assert "VTIMEZONE" not in unfolded


def test_floating_daily_series() -> None:
    master = Event(
        subject="Stretch", start=datetime(2024, 3, 1, 8), end=datetime(2024, 3, 1, 8, 15), uid="float@test",
        recurrence=Recurrence("FREQ=DAILY;COUNT=10"),
    )
    later = Event(subject="Stretch", start=datetime(2024, 3, 5, 9), end=datetime(2024, 3, 5, 9, 15))
    event = master.with_series((datetime(2024, 3, 3, 8),), (Occurrence(datetime(2024, 3, 5, 8), later),))
    back, text = round_trip(event)
    assert back.timezone is None and back.exdates == (datetime(2024, 3, 3, 8),)
    unfolded = unfold(text)
    assert "EXDATE:20240303T080000\r\n" in unfolded
    assert "RECURRENCE-ID:20240305T080000\r\n" in unfolded
    assert "VTIMEZONE" not in unfolded


def test_utc_series() -> None:
    master = Event(
        subject="Standup", start=datetime(2024, 1, 1, 9, tzinfo=UTC), end=datetime(2024, 1, 1, 9, 15, tzinfo=UTC),
        timezone="UTC", uid="utc@test", recurrence=Recurrence("FREQ=DAILY;UNTIL=20240131T090000Z"),
    )
    later = Event(
        subject="Standup", start=datetime(2024, 1, 2, 10, tzinfo=UTC), end=datetime(2024, 1, 2, 10, 15, tzinfo=UTC),
        timezone="UTC",
    )
    event = master.with_series(
        (datetime(2024, 1, 3, 9, tzinfo=UTC),), (Occurrence(datetime(2024, 1, 2, 9, tzinfo=UTC), later),)
    )
    back, text = round_trip(event)
    assert back.timezone == "UTC"
    unfolded = unfold(text)
    assert "EXDATE:20240103T090000Z" in unfolded and "RECURRENCE-ID:20240102T090000Z" in unfolded
    assert "VTIMEZONE" not in unfolded


def test_rdate_series_round_trip() -> None:
    master = Event(
        subject="Workshop", start=berlin(2024, 4, 2, 9), end=berlin(2024, 4, 2, 12), timezone="Europe/Berlin",
        uid="rdate@test",
        recurrence=Recurrence("FREQ=MONTHLY;COUNT=3;BYMONTHDAY=2", rdates=(berlin(2024, 4, 20, 9),)),
    )
    back, text = round_trip(master)
    assert back.recurrence == master.recurrence
    assert "RDATE;TZID=Europe/Berlin:20240420T090000" in unfold(text)


def test_series_of_a_zone_ending_years_later_gets_vtimezones_for_all_years() -> None:
    master = Event(
        subject="Long", start=berlin(2024, 1, 8, 9), end=berlin(2024, 1, 8, 10), timezone="Europe/Berlin",
        uid="long@test", recurrence=Recurrence("FREQ=WEEKLY;UNTIL=20301230T080000Z;BYDAY=MO;WKST=MO"),
    )
    _, text = round_trip(master)
    assert covers(text, "Europe/Berlin", datetime(2030, 7, 1, 12), timedelta(hours=2))
    assert covers(text, "Europe/Berlin", datetime(2030, 12, 1, 12), timedelta(hours=1))
    counted = replace(master, recurrence=Recurrence("FREQ=YEARLY;COUNT=6;BYMONTHDAY=8;BYMONTH=1"))
    _, text = round_trip(counted)
    assert covers(text, "Europe/Berlin", datetime(2029, 7, 1, 12), timedelta(hours=2))


# --- reading other producers --------------------------------------------------------------------
OUTLOOK_SERIES = wrap(
    *WINDOWS_TZ,
    *vevent(
        "SUMMARY:Weekly review",
        "DTSTART;TZID=W. Europe Standard Time:20240304T100000",
        "DTEND;TZID=W. Europe Standard Time:20240304T110000",
        "RRULE:FREQ=WEEKLY;UNTIL=20240429T080000Z;INTERVAL=1;BYDAY=MO;WKST=SU",
        "EXDATE;TZID=W. Europe Standard Time:20240318T100000,20240325T100000",
        "EXDATE:20240401T080000Z",
        "ORGANIZER;CN=Boss;SENT-BY=\"mailto:assistant@example.com\":mailto:boss@example.com",
        "ATTENDEE;CN=Ann;ROLE=REQ-PARTICIPANT;PARTSTAT=NEEDS-ACTION;RSVP=TRUE;X-NUM-GUESTS=0:mailto:ann@example.com",
        "ATTENDEE;CN=Conf room;CUTYPE=ROOM;ROLE=REQ-PARTICIPANT:mailto:room@example.com",
        "PRIORITY:3",
        "SEQUENCE:2",
        "STATUS:CONFIRMED",
        "X-MICROSOFT-CDO-IMPORTANCE:2",
        "X-MS-OLK-ORIGINALSTART;TZID=W. Europe Standard Time:20240304T100000",
        "X-FOO:master",
    ),
    *vevent(
        "RECURRENCE-ID;TZID=W. Europe Standard Time:20240311T100000",
        "SUMMARY:Weekly review (late)",
        "DTSTART;TZID=W. Europe Standard Time:20240311T160000",
        "SEQUENCE:1",
        "X-BAR:override",
        "BEGIN:VALARM",
        "ACTION:EMAIL",
        "SUMMARY:mail",
        "DESCRIPTION:mail",
        "ATTENDEE:mailto:me@example.com",
        "TRIGGER:-P1D",
        "END:VALARM",
    ),
    *vevent(
        "RECURRENCE-ID:20240408T080000Z",
        "SUMMARY:Weekly review (gone later)",
        "DTSTART;TZID=W. Europe Standard Time:20240408T120000",
        "DTEND;TZID=W. Europe Standard Time:20240408T130000",
    ),
)


def test_windows_tzid_series_is_read_in_the_iana_zone() -> None:
    event = event_from_ical(OUTLOOK_SERIES)
    assert event.timezone == "Europe/Berlin"
    assert event.recurrence is not None
    assert event.recurrence.rule == "FREQ=WEEKLY;UNTIL=20240429T080000Z;BYDAY=MO;WKST=SU"
    assert event.exdates == (berlin(2024, 3, 18, 10), berlin(2024, 3, 25, 10), berlin(2024, 4, 1, 10))
    assert [o.recurrence_id for o in event.overrides] == [berlin(2024, 3, 11, 10), berlin(2024, 4, 8, 10)]
    late = event.overrides[0].event
    # No DTEND/DURATION: the override lasts as long as the master; nothing else is inherited.
    assert (late.start, late.end) == (berlin(2024, 3, 11, 16), berlin(2024, 3, 11, 17))
    assert late.location == "" and late.organizer is None and late.attendees == ()
    assert event.importance is Importance.HIGH
    assert event.organizer == Person("boss@example.com", "Boss", status=ResponseStatus.ORGANIZER)
    assert event.attendees == (
        Person("ann@example.com", "Ann", AttendeeRole.REQUIRED, ResponseStatus.NOT_RESPONDED),
        Person("room@example.com", "Conf room", AttendeeRole.RESOURCE, ResponseStatus.NONE),
    )
    back, text = round_trip(event, OUTLOOK_SERIES)
    assert back.timezone == "Europe/Berlin"
    assert "W. Europe" not in text
    assert "DTSTART;TZID=Europe/Berlin:20240304T100000" in unfold(text)
    assert "EXDATE;TZID=Europe/Berlin:20240401T100000" in unfold(text)
    assert "RECURRENCE-ID;TZID=Europe/Berlin:20240408T100000" in unfold(text)


def test_write_keeps_previous_resource_content() -> None:
    event = event_from_ical(OUTLOOK_SERIES)
    ann = Person("ann@example.com", "Ann B.", AttendeeRole.OPTIONAL, ResponseStatus.ACCEPTED)
    room = event.attendees[1]
    carl = Person("carl@example.com", "Carl", AttendeeRole.RESOURCE, ResponseStatus.DECLINED)
    late = event.overrides[0]
    changed = event.with_series(
        (berlin(2024, 3, 25, 10),),  # 18 Mar and 1 Apr uncancelled
        (Occurrence(late.recurrence_id, Event(
            subject="Weekly review (later)", start=berlin(2024, 3, 11, 17), end=berlin(2024, 3, 11, 18),
            timezone="Europe/Berlin", reminder_minutes=5,
        )),),  # the 8 Apr override dropped
    )
    changed = replace(
        changed,
        organizer=Person("someone.else@example.com", "Else", status=ResponseStatus.ORGANIZER),
        attendees=(ann, room, carl),
        importance=Importance.HIGH,
    )
    text = event_to_ical(changed, previous=OUTLOOK_SERIES)
    assert_well_formed(text)
    unfolded = unfold(text)
    master, override = vevents(text)
    # Master: unknown properties kept, Windows TZID of a kept property renamed.
    for kept in ("X-FOO:master", "STATUS:CONFIRMED", "X-MICROSOFT-CDO-IMPORTANCE:2", "PRIORITY:3",
                 "X-MS-OLK-ORIGINALSTART;TZID=Europe/Berlin:20240304T100000"):
        assert kept in unfolded, kept
    # The previous RRULE spelling is kept (canonically equal), one EXDATE left.
    assert "INTERVAL=1" in master["RRULE"].to_ical().decode()
    assert [prop.to_ical() for prop in props(master, "EXDATE")] == [b"20240325T100000"]
    assert props(master, "EXDATE")[0].params["TZID"] == "Europe/Berlin"
    assert str(master["SEQUENCE"]) == "3" and str(override["SEQUENCE"]) == "2"
    # ORGANIZER kept as it was (the model's other organizer is not written), SCHEDULE-AGENT added.
    organizer = master["ORGANIZER"]
    assert str(organizer) == "mailto:boss@example.com"
    assert dict(organizer.params) == {
        "CN": "Boss", "SENT-BY": "mailto:assistant@example.com", "SCHEDULE-AGENT": "CLIENT",
    }
    attendees = {str(prop): dict(prop.params) for prop in props(master, "ATTENDEE")}
    assert attendees == {
        "mailto:ann@example.com": {
            "CN": "Ann B.", "ROLE": "OPT-PARTICIPANT", "PARTSTAT": "ACCEPTED", "RSVP": "TRUE", "X-NUM-GUESTS": "0",
            "SCHEDULE-AGENT": "CLIENT",
        },
        "mailto:room@example.com": {
            "CN": "Conf room", "CUTYPE": "ROOM", "ROLE": "REQ-PARTICIPANT", "SCHEDULE-AGENT": "CLIENT",
        },
        "mailto:carl@example.com": {
            "CN": "Carl", "CUTYPE": "RESOURCE", "ROLE": "NON-PARTICIPANT", "PARTSTAT": "DECLINED", "RSVP": "FALSE",
            "SCHEDULE-AGENT": "CLIENT",
        },
    }
    # Override: its own unknown properties and alarms kept; the other override dropped.
    assert str(override["X-BAR"]) == "override" and "X-FOO" not in override
    assert [str(a["ACTION"]) for a in override.walk("VALARM")] == ["DISPLAY", "EMAIL"]
    assert "gone later" not in unfolded
    assert "RECURRENCE-ID;TZID=Europe/Berlin:20240311T100000" in unfolded
    back = event_from_ical(text)
    assert back.organizer is not None and back.organizer.email == "boss@example.com"
    assert back.attendees == (ann, room, carl)
    assert back.overrides[0].event.reminder_minutes == 5
    assert [o.recurrence_id for o in back.overrides] == [berlin(2024, 3, 11, 10)]
    assert back.exdates == (berlin(2024, 3, 25, 10),)


def test_changed_rule_is_written_in_canonical_text() -> None:
    previous = wrap(*vevent(
        "DTSTART;TZID=Europe/Berlin:20240304T100000", "DURATION:PT1H", "RRULE:FREQ=MONTHLY;BYDAY=1MO",
    ))
    event = event_from_ical(previous)
    assert event.recurrence is not None
    assert event.recurrence.rule == "FREQ=MONTHLY;BYDAY=MO;BYSETPOS=1"
    same = event_to_ical(event, previous)
    assert "RRULE:FREQ=MONTHLY;BYDAY=1MO" in unfold(same)  # the other client's spelling kept
    changed = replace(event, recurrence=Recurrence("FREQ=MONTHLY;COUNT=5;BYDAY=MO;BYSETPOS=1"))
    back, text = round_trip(changed, previous)
    assert "BYDAY=1MO" not in unfold(text)
    assert back.recurrence == changed.recurrence


def test_google_style_cancelled_override_is_an_exdate() -> None:
    google = wrap(
        *vevent(
            "DTSTART;TZID=Europe/Berlin:20240305T090000",
            "DTEND;TZID=Europe/Berlin:20240305T093000",
            "RRULE:FREQ=DAILY;COUNT=5",
            "SUMMARY:Daily",
            "X-GOOGLE-CONFERENCE:https://meet.google.com/abc-defg-hij",
        ),
        *vevent(
            "RECURRENCE-ID;TZID=Europe/Berlin:20240307T090000",
            "DTSTART;TZID=Europe/Berlin:20240307T090000",
            "DTEND;TZID=Europe/Berlin:20240307T093000",
            "SUMMARY:Daily",
            "STATUS:CANCELLED",
        ),
    )
    event = event_from_ical(google)
    assert event.exdates == (berlin(2024, 3, 7, 9),) and event.overrides == ()
    assert event.online_meeting_url == "https://meet.google.com/abc-defg-hij"
    text = event_to_ical(event, google)
    assert len(vevents(text)) == 1 and "CANCELLED" not in text
    assert "EXDATE;TZID=Europe/Berlin:20240307T090000" in unfold(text)
    # X-GOOGLE-CONFERENCE is not owned: kept as it was, next to the CONFERENCE written.
    assert "X-GOOGLE-CONFERENCE:https://meet.google.com/abc-defg-hij" in unfold(text)
    assert "CONFERENCE;FEATURE=VIDEO;VALUE=URI:https://meet.google.com/abc-defg-hij" in unfold(text)
    assert event_from_ical(text).fingerprint() == event.fingerprint()


def test_uncancelling_a_google_override_drops_its_cancelled_status() -> None:
    google = wrap(
        *vevent("DTSTART:20240305T090000Z", "DURATION:PT30M", "RRULE:FREQ=DAILY;COUNT=5", "SUMMARY:Daily"),
        *vevent("RECURRENCE-ID:20240307T090000Z", "DTSTART:20240307T090000Z", "STATUS:CANCELLED", "X-KEEP:1"),
    )
    event = event_from_ical(google)
    moved = event.occurrence_at(datetime(2024, 3, 7, 9, tzinfo=UTC))
    moved = replace(moved, subject="Daily (moved)", uid=None)
    changed = event.with_series((), (Occurrence(datetime(2024, 3, 7, 9, tzinfo=UTC), moved),))
    back, text = round_trip(changed, google)
    assert "CANCELLED" not in text and "X-KEEP:1" in text
    assert back.exdates == () and back.overrides[0].event.subject == "Daily (moved)"


def test_exdate_forms_are_read_in_the_series_kind() -> None:
    text = wrap(*vevent(
        "DTSTART;TZID=Europe/Berlin:20240301T100000",
        "DTEND;TZID=Europe/Berlin:20240301T110000",
        "RRULE:FREQ=DAILY",
        "EXDATE;TZID=Europe/Berlin:20240302T100000,20240303T100000",
        "EXDATE:20240304T090000Z",  # UTC, the same instant as 10:00 in Berlin
        "EXDATE;TZID=America/New_York:20240305T040000",
        "EXDATE:20240306T100000",  # floating: wall time in the series' zone
        "EXDATE;VALUE=DATE:20240307",  # a date: the series' time of day on that date
    ))
    event = event_from_ical(text)
    assert event.exdates == tuple(berlin(2024, 3, day, 10) for day in range(2, 8))
    assert all(value.tzinfo is BERLIN for value in event.exdates if isinstance(value, datetime))


def test_date_exdate_on_date_series_and_period_rdate() -> None:
    text = wrap(*vevent(
        "DTSTART;VALUE=DATE:20240101",
        "RRULE:FREQ=MONTHLY",
        "EXDATE;VALUE=DATE:20240201,20240301",
        "RDATE;VALUE=DATE:20240115",
    ))
    event = event_from_ical(text)
    assert event.exdates == (date(2024, 2, 1), date(2024, 3, 1))
    assert event.recurrence is not None and event.recurrence.rdates == (date(2024, 1, 15),)
    period = wrap(*vevent(
        "DTSTART:20240101T100000Z", "DURATION:PT1H", "RRULE:FREQ=WEEKLY",
        "RDATE;VALUE=PERIOD:20240103T100000Z/PT1H,20240104T120000Z/20240104T130000Z",
    ))
    series = event_from_ical(period)
    assert series.recurrence is not None
    assert series.recurrence.rdates == (datetime(2024, 1, 3, 10, tzinfo=UTC), datetime(2024, 1, 4, 12, tzinfo=UTC))


def test_recurrence_id_forms_match_the_master() -> None:
    text = wrap(
        *vevent("DTSTART;TZID=Europe/Berlin:20240301T100000", "DURATION:PT1H", "RRULE:FREQ=DAILY"),
        *vevent("RECURRENCE-ID:20240302T090000Z", "DTSTART:20240302T120000Z", "DURATION:PT2H", "SUMMARY:utc"),
        *vevent("RECURRENCE-ID;TZID=Asia/Tokyo:20240303T180000", "DTSTART;TZID=Asia/Tokyo:20240303T190000",
                "SUMMARY:tokyo"),
    )
    event = event_from_ical(text)
    assert [o.recurrence_id for o in event.overrides] == [berlin(2024, 3, 2, 10), berlin(2024, 3, 3, 10)]
    utc, tokyo = (o.event for o in event.overrides)
    assert utc.timezone == "UTC" and utc.duration == timedelta(hours=2)
    assert tokyo.timezone == "Asia/Tokyo" and tokyo.duration == timedelta(hours=1)
    # Written back, RECURRENCE-ID takes the master's TZID; each override keeps its own zone.
    back, written = round_trip(event, text)
    unfolded = unfold(written)
    assert "RECURRENCE-ID;TZID=Europe/Berlin:20240302T100000" in unfolded
    assert "RECURRENCE-ID;TZID=Europe/Berlin:20240303T100000" in unfolded
    assert "DTSTART;TZID=Asia/Tokyo:20240303T190000" in unfolded
    assert back.overrides[1].event.timezone == "Asia/Tokyo"


def test_override_equal_to_its_occurrence_is_dropped() -> None:
    text = wrap(
        *vevent("DTSTART:20240301T100000Z", "DTEND:20240301T110000Z", "RRULE:FREQ=DAILY", "SUMMARY:Same"),
        *vevent("RECURRENCE-ID:20240302T100000Z", "DTSTART:20240302T100000Z", "SUMMARY:Same"),
    )
    assert event_from_ical(text).overrides == ()


def test_series_written_as_single_event_drops_recurrence() -> None:
    previous = OUTLOOK_SERIES
    event = event_from_ical(previous)
    single = replace(event, recurrence=None, exdates=(), overrides=())
    back, text = round_trip(single, previous)
    assert back.recurrence is None and len(vevents(text)) == 1
    assert "RRULE" not in text and "EXDATE" not in text and "RECURRENCE-ID" not in text


def test_override_years_are_covered_by_the_vtimezone() -> None:
    master = Event(
        subject="Rare", start=berlin(2024, 1, 8, 9), end=berlin(2024, 1, 8, 10), timezone="Europe/Berlin",
        uid="rare@test", recurrence=Recurrence("FREQ=MONTHLY;BYMONTHDAY=8"),
    )
    moved = Event(subject="Rare (moved)", start=berlin(2029, 7, 9, 9), end=berlin(2029, 7, 9, 10),
                  timezone="Europe/Berlin")
    event = master.with_series((), (Occurrence(berlin(2029, 7, 8, 9), moved),))
    _, text = round_trip(event)
    assert covers(text, "Europe/Berlin", datetime(2029, 7, 9, 9), timedelta(hours=2))


# --- PRIORITY, CONFERENCE, ATTENDEE -------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, Importance.NORMAL), ("0", Importance.NORMAL), ("1", Importance.HIGH), ("4", Importance.HIGH),
     ("5", Importance.NORMAL), ("6", Importance.LOW), ("9", Importance.LOW)],
)
def test_priority_is_read_as_importance(value: str | None, expected: Importance) -> None:
    lines = ["DTSTART;VALUE=DATE:20240301"] + ([f"PRIORITY:{value}"] if value is not None else [])
    assert event_from_ical(wrap(*vevent(*lines))).importance is expected


@pytest.mark.parametrize(
    ("previous_value", "importance", "written"),
    [(None, Importance.HIGH, "1"), (None, Importance.NORMAL, "5"), (None, Importance.LOW, "9"),
     ("2", Importance.HIGH, "2"), ("0", Importance.NORMAL, "0"), ("7", Importance.LOW, "7"),
     ("2", Importance.LOW, "9"), ("8", Importance.NORMAL, "5")],
)
def test_priority_written_keeps_an_equivalent_previous_value(
    previous_value: str | None, importance: Importance, written: str
) -> None:
    previous = wrap(*vevent("DTSTART;VALUE=DATE:20240301", *([f"PRIORITY:{previous_value}"] if previous_value else [])))
    event = replace(event_from_ical(previous), importance=importance)
    back, text = round_trip(event, previous)
    assert f"PRIORITY:{written}\r\n" in text and back.importance is importance


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (["CONFERENCE;VALUE=URI;FEATURE=PHONE;LABEL=Dial:tel:+1-555-0100",
          "CONFERENCE;VALUE=URI;FEATURE=VIDEO:https://zoom.example.com/j/1"], "tel:+1-555-0100"),
        (["CONFERENCE;VALUE=TEXT:not a uri", "X-GOOGLE-CONFERENCE:https://meet.google.com/x"],
         "https://meet.google.com/x"),
        (["X-MICROSOFT-SKYPETEAMSMEETINGURL:https://teams.example.com/a",
          "X-MICROSOFT-ONLINEMEETINGCONFLINK:conf:sip:b"], "https://teams.example.com/a"),
        (["X-MICROSOFT-ONLINEMEETINGCONFLINK:conf:sip:b"], "conf:sip:b"),
        ([], ""),
    ],
)
def test_online_meeting_url_sources(lines: list[str], expected: str) -> None:
    assert event_from_ical(wrap(*vevent("DTSTART;VALUE=DATE:20240301", *lines))).online_meeting_url == expected


def test_conference_written_and_kept() -> None:
    previous = wrap(*vevent(
        "DTSTART;VALUE=DATE:20240301",
        "CONFERENCE;VALUE=URI;FEATURE=VIDEO;LABEL=Join:https://zoom.example.com/j/1",
        "CONFERENCE;VALUE=URI;FEATURE=PHONE:tel:+1-555-0100",
        "X-MICROSOFT-SKYPETEAMSMEETINGURL:https://teams.example.com/old",
    ))
    event = event_from_ical(previous)
    assert event.online_meeting_url == "https://zoom.example.com/j/1"
    same = unfold(event_to_ical(event, previous))
    assert "CONFERENCE;FEATURE=VIDEO;LABEL=Join;VALUE=URI:https://zoom.example.com/j/1" in same
    assert "CONFERENCE;FEATURE=PHONE;VALUE=URI:tel:+1-555-0100" in same
    assert "X-MICROSOFT-SKYPETEAMSMEETINGURL:https://teams.example.com/old" in same
    changed = replace(event, online_meeting_url="https://zoom.example.com/j/2")
    _, text = round_trip(changed, previous)
    conferences = [str(p) for p in props(vevents(text)[0], "CONFERENCE")]
    assert conferences == ["https://zoom.example.com/j/2", "tel:+1-555-0100"]
    assert "LABEL=Join" not in text
    removed = replace(event, online_meeting_url="")
    assert "CONFERENCE" not in event_to_ical(removed, previous).replace("X-MICROSOFT", "")


@pytest.mark.parametrize(
    ("params", "role", "status"),
    [
        ("", AttendeeRole.REQUIRED, ResponseStatus.NONE),
        (";ROLE=CHAIR;PARTSTAT=ACCEPTED", AttendeeRole.REQUIRED, ResponseStatus.ACCEPTED),
        (";ROLE=OPT-PARTICIPANT;PARTSTAT=TENTATIVE", AttendeeRole.OPTIONAL, ResponseStatus.TENTATIVE),
        (";ROLE=NON-PARTICIPANT;PARTSTAT=DECLINED", AttendeeRole.RESOURCE, ResponseStatus.DECLINED),
        (";CUTYPE=RESOURCE;PARTSTAT=NEEDS-ACTION", AttendeeRole.RESOURCE, ResponseStatus.NOT_RESPONDED),
        (";CUTYPE=ROOM;ROLE=OPT-PARTICIPANT", AttendeeRole.RESOURCE, ResponseStatus.NONE),
        (";PARTSTAT=DELEGATED", AttendeeRole.REQUIRED, ResponseStatus.NONE),
    ],
)
def test_attendee_mapping(params: str, role: AttendeeRole, status: ResponseStatus) -> None:
    text = wrap(*vevent("DTSTART;VALUE=DATE:20240301", f'ATTENDEE;CN="Doe, Jane"{params}:MAILTO:jane@example.com'))
    assert event_from_ical(text).attendees == (Person("jane@example.com", "Doe, Jane", role, status),)


def test_attendees_and_organizer_round_trip_from_the_model() -> None:
    people = tuple(
        Person(f"p{index}@example.com", f"P {index}", role, status)
        for index, (role, status) in enumerate(
            (role, status)
            for role in AttendeeRole
            for status in ResponseStatus
            if status is not ResponseStatus.ORGANIZER
        )
    )
    event = Event(
        subject="Meeting", start=berlin(2024, 3, 1, 10), end=berlin(2024, 3, 1, 11), timezone="Europe/Berlin",
        uid="people@test", organizer=ORGANIZER, attendees=people,
    )
    back, text = round_trip(event)
    assert back.attendees == people
    assert all(p.params["RSVP"] == "FALSE" for p in props(vevents(text)[0], "ATTENDEE"))


def test_attendee_with_organizer_status_is_written_accepted() -> None:
    event = Event(
        subject="x", start=date(2024, 3, 1), end=date(2024, 3, 2), uid="org-att@test",
        attendees=(Person("org@example.com", "Org", status=ResponseStatus.ORGANIZER),),
    )
    back = event_from_ical(event_to_ical(event))
    assert back.attendees[0].status is ResponseStatus.ACCEPTED


def test_new_override_takes_the_masters_kept_organizer() -> None:
    event = event_from_ical(OUTLOOK_SERIES)
    extra = Event(
        subject="Extra", start=berlin(2024, 4, 22, 12), end=berlin(2024, 4, 22, 13), timezone="Europe/Berlin",
        organizer=Person("boss@example.com", "Boss", status=ResponseStatus.ORGANIZER),
    )
    changed = event.with_series(event.exdates, (*event.overrides, Occurrence(berlin(2024, 4, 22, 10), extra)))
    text = event_to_ical(changed, OUTLOOK_SERIES)
    assert_well_formed(text)
    organizers = {str(c["SUMMARY"]): c.get("ORGANIZER") for c in vevents(text)}
    assert organizers["Extra"].params["SENT-BY"] == "mailto:assistant@example.com"


# --- errors -------------------------------------------------------------------------------------
MASTER = vevent("DTSTART:20240301T100000Z", "RRULE:FREQ=DAILY", f"SUMMARY:{SECRET}")


@pytest.mark.parametrize(
    ("data", "error", "reason"),
    [
        (wrap(*vevent("RECURRENCE-ID:20240302T100000Z", "DTSTART:20240302T120000Z", f"SUMMARY:{SECRET}")),
         UnsupportedEvent, NO_MASTER),
        (wrap(*MASTER, *vevent("RECURRENCE-ID;RANGE=THISANDFUTURE:20240302T100000Z", "DTSTART:20240302T120000Z")),
         UnsupportedEvent, "THISANDFUTURE"),
        (wrap(*vevent("DTSTART:20240301T100000Z", "RRULE:FREQ=DAILY", "RRULE:FREQ=WEEKLY")),
         UnsupportedEvent, "RRULE"),
        (wrap(*vevent("DTSTART:20240301T100000Z", "RRULE:FREQ=DAILY", "EXRULE:FREQ=WEEKLY")),
         UnsupportedEvent, "EXRULE"),
        (wrap(*MASTER, *MASTER), InvalidICalendar, "more than one"),
        (wrap(*MASTER, *vevent("RECURRENCE-ID:20240302T100000Z", "DTSTART:20240302T120000Z"),
              *vevent("RECURRENCE-ID:20240302T100000Z", "DTSTART:20240302T130000Z")),
         InvalidICalendar, "same RECURRENCE-ID"),
        (wrap(*MASTER, *vevent("RECURRENCE-ID:20240302T100000Z", "DTSTART:20240302T120000Z", uid="other")),
         InvalidICalendar, "UID"),
        (wrap(*vevent("DTSTART:20240301T100000Z", f"SUMMARY:{SECRET}"),
              *vevent("RECURRENCE-ID:20240302T100000Z", "DTSTART:20240302T120000Z")),
         InvalidICalendar, "RECURRENCE-ID"),
        (wrap(*vevent("DTSTART:20240301T100000Z", f"RRULE:FREQ=FORTNIGHTLY;X={SECRET}")),
         InvalidICalendar, "RRULE"),
        (wrap(*vevent("DTSTART:20240301T100000Z", "RRULE:FREQ=DAILY;COUNT=x")), InvalidICalendar, "RRULE"),
        (wrap(*MASTER, *vevent("RECURRENCE-ID:20240302T100000Z", "DTSTART:20240302T120000Z",
                               "RRULE:FREQ=DAILY")), UnsupportedEvent, "RRULE"),
    ],
)
def test_series_errors(data: str, error: type[Exception], reason: str) -> None:
    with pytest.raises(error, match=re.escape(reason)) as info:
        event_from_ical(data)
    assert SECRET not in str(info.value)


def test_single_event_without_recurrence_is_unchanged() -> None:
    text = wrap(*vevent("DTSTART:20240301T100000Z", "DURATION:PT1H", "EXDATE:20240301T100000Z", "SUMMARY:One"))
    event = event_from_ical(text)
    assert event.recurrence is None and event.exdates == () and event.overrides == ()
    written = event_to_ical(event, text)
    assert "EXDATE" not in written and "RRULE" not in written


def test_rdate_without_rrule_is_a_series_of_dtstart_plus_its_rdates() -> None:
    data = wrap(*vevent("DTSTART:20240301T100000Z", "DTEND:20240301T110000Z",
                        "RDATE:20240302T100000Z,20240309T100000Z"))
    event = event_from_ical(data)
    assert event.recurrence is not None and event.recurrence.rule == "FREQ=DAILY;COUNT=1"
    assert len(event.recurrence.rdates) == 2
    written = event_to_ical(event, previous=data)
    assert "RRULE" not in written and "RDATE" in written
    assert event_from_ical(written).fingerprint() == event.fingerprint()

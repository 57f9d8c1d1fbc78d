"""iCalendar <-> model (sync_core.convert.ical)."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from icalendar import Calendar

from sync_core.convert.ical import PRODID, event_from_ical, event_to_ical, uid_of
from sync_core.convert.timezones import is_windows_id
from sync_core.errors import InvalidICalendar, UnknownTimeZone, UnsupportedEvent
from sync_core.model import Event, Sensitivity, ShowAs

BERLIN = ZoneInfo("Europe/Berlin")
SECRET = "Quarterly layoffs plan"  # event content that must never reach an error message


def wrap(*lines: str, calendar_lines: tuple[str, ...] = ()) -> str:
    """A VCALENDAR around the given lines (VEVENT and VTIMEZONE lines included by the caller)."""
    body = ["BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//test//EN", *calendar_lines, *lines, "END:VCALENDAR"]
    return "\r\n".join(body) + "\r\n"


def vevent(*lines: str, uid: str = "uid-1@test") -> list[str]:
    return ["BEGIN:VEVENT", f"UID:{uid}", "DTSTAMP:20240101T000000Z", *lines, "END:VEVENT"]


def tzids(text: str) -> list[str]:
    unfolded = re.sub(r"\r\n[ \t]", "", text)
    found = re.findall(r";TZID=(\"[^\"]*\"|[^:;]*)", unfolded)
    found += re.findall(r"^TZID:(.*)$", unfolded, flags=re.MULTILINE)
    return [value.strip().strip('"') for value in found]


def assert_well_formed(text: str) -> None:
    """CRLF everywhere, lines <= 75 octets, a VTIMEZONE for every TZID, never a Windows TZID."""
    assert text.endswith("\r\n")
    assert "\n" not in text.replace("\r\n", "")
    assert all(len(line.encode()) <= 75 for line in text.split("\r\n"))
    calendar = Calendar.from_ical(text)
    defined = {str(tz["TZID"]) for tz in calendar.walk("VTIMEZONE")}
    used = set(calendar.get_used_tzids()) - {"UTC"}
    assert used <= defined, f"TZIDs without VTIMEZONE: {used - defined}"
    for tzid in tzids(text):
        assert not is_windows_id(tzid), f"Windows name written as TZID: {tzid}"


def round_trip(event: Event) -> Event:
    text = event_to_ical(event)
    assert_well_formed(text)
    back = event_from_ical(text)
    assert back.fingerprint() == event.fingerprint()
    assert back.uid == event.uid
    return back


# --- model -> ical -> model ---------------------------------------------------------------------
def test_timed_event_round_trip_keeps_zone_and_fields() -> None:
    event = Event(
        subject="Review, Q3; budget",
        start=datetime(2024, 6, 3, 9, 30, tzinfo=BERLIN),
        end=datetime(2024, 6, 3, 10, 15, tzinfo=BERLIN),
        timezone="Europe/Berlin",
        uid="uid-timed@test",
        body_text="Agenda:\n- one, two\n- three; four",
        location="Room 1, Floor 2",
        show_as=ShowAs.TENTATIVE,
        sensitivity=Sensitivity.CONFIDENTIAL,
        categories=("Red", "Blue, dark", "Green"),
        reminder_minutes=30,
        last_modified=datetime(2024, 5, 1, 8, 0, tzinfo=UTC),
    )
    back = round_trip(event)
    assert back.timezone == "Europe/Berlin"
    assert back.start == event.start and back.end == event.end
    assert back.categories == event.categories
    assert back.body_text == event.body_text
    assert back.last_modified == event.last_modified
    text = event_to_ical(event)
    assert "DTSTART;TZID=Europe/Berlin:20240603T093000" in text
    assert f"PRODID:{PRODID}" in text and "VERSION:2.0" in text


def test_dst_crossing_event_berlin_late_october() -> None:
    # 26 Oct 2024 22:00 CEST -> 27 Oct 2024 04:00 CET: 7 hours elapsed across the fall-back.
    event = Event(
        subject="Night shift",
        start=datetime(2024, 10, 26, 22, 0, tzinfo=BERLIN),
        end=datetime(2024, 10, 27, 4, 0, tzinfo=BERLIN),
        timezone="Europe/Berlin",
        uid="uid-dst@test",
    )
    back = round_trip(event)
    assert back.end.astimezone(UTC) - back.start.astimezone(UTC) == timedelta(hours=7)
    text = event_to_ical(event)
    assert "DTSTART;TZID=Europe/Berlin:20241026T220000" in text
    assert "DTEND;TZID=Europe/Berlin:20241027T040000" in text
    vtimezone = Calendar.from_ical(text).timezones[0]
    tz = vtimezone.to_tz(lookup_tzid=False)
    # The generated VTIMEZONE itself knows the October 2024 transition.
    assert datetime(2024, 10, 26, 22, 0, tzinfo=tz).utcoffset() == timedelta(hours=2)
    assert datetime(2024, 10, 27, 4, 0, tzinfo=tz).utcoffset() == timedelta(hours=1)


@pytest.mark.parametrize("zone_name", ["Pacific/Auckland", "America/Los_Angeles", "Asia/Tokyo"])
def test_all_day_and_multi_day_are_exact_dates(zone_name: str) -> None:
    single = Event(subject="Holiday", start=date(2024, 12, 25), end=date(2024, 12, 26), uid="ad1@test")
    multi = Event(subject="Trip", start=date(2024, 3, 29), end=date(2024, 4, 2), uid="ad2@test")
    for event in (single, multi):
        back = round_trip(event)
        assert back.all_day and back.timezone is None
        assert (back.start, back.end) == (event.start, event.end)
        text = event_to_ical(event)
        assert f"DTSTART;VALUE=DATE:{event.start:%Y%m%d}" in text
        assert f"DTEND;VALUE=DATE:{event.end:%Y%m%d}" in text
        assert "VTIMEZONE" not in text


def test_utc_event_is_written_with_z_and_no_vtimezone() -> None:
    event = Event(
        subject="Standup",
        start=datetime(2024, 1, 5, 9, 0, tzinfo=UTC),
        end=datetime(2024, 1, 5, 9, 15, tzinfo=UTC),
        timezone="UTC",
        uid="utc@test",
    )
    text = event_to_ical(event)
    assert "DTSTART:20240105T090000Z" in text and "VTIMEZONE" not in text
    assert round_trip(event).timezone == "UTC"


def test_zero_offset_zone_keeps_its_tzid() -> None:
    # icalendar writes "Z" for zones it deems equal to UTC; our TZID must stay.
    abidjan = ZoneInfo("Africa/Abidjan")
    event = Event(
        subject="x", start=datetime(2024, 1, 5, 9, tzinfo=abidjan), end=datetime(2024, 1, 5, 10, tzinfo=abidjan),
        timezone="Africa/Abidjan", uid="abj@test",
    )
    text = event_to_ical(event)
    assert "DTSTART;TZID=Africa/Abidjan:20240105T090000" in text
    assert round_trip(event).timezone == "Africa/Abidjan"


def test_floating_time_stays_floating() -> None:
    event = Event(
        subject="Lunch", start=datetime(2024, 2, 1, 12, 0), end=datetime(2024, 2, 1, 13, 0), uid="float@test"
    )
    text = event_to_ical(event)
    assert "DTSTART:20240201T120000\r\n" in text
    back = round_trip(event)
    assert back.timezone is None and isinstance(back.start, datetime) and back.start.tzinfo is None


@pytest.mark.parametrize("sensitivity", list(Sensitivity))
@pytest.mark.parametrize("show_as", list(ShowAs))
def test_sensitivity_and_show_as_round_trip(sensitivity: Sensitivity, show_as: ShowAs) -> None:
    event = Event(
        subject="s", start=date(2024, 1, 1), end=date(2024, 1, 2), uid="enum@test",
        sensitivity=sensitivity, show_as=show_as,
    )
    back = round_trip(event)
    assert (back.sensitivity, back.show_as) == (sensitivity, show_as)


def test_html_body_round_trip_and_reminder_zero() -> None:
    event = Event(
        subject="h", start=date(2024, 1, 1), end=date(2024, 1, 2), uid="html@test",
        body_text="Hello\nworld", body_html="<html><body><p>Hello</p><p>world</p></body></html>",
        reminder_minutes=0,
    )
    text = event_to_ical(event)
    assert "X-ALT-DESC;FMTTYPE=text/html:" in text
    back = round_trip(event)
    assert back.body_html == event.body_html and back.reminder_minutes == 0


def test_uid_is_required() -> None:
    with pytest.raises(ValueError):
        event_to_ical(Event(subject="x", start=date(2024, 1, 1), end=date(2024, 1, 2)))


# --- reading other producers --------------------------------------------------------------------
WINDOWS_TZ = [
    "BEGIN:VTIMEZONE",
    "TZID:W. Europe Standard Time",
    "BEGIN:STANDARD",
    "DTSTART:16010101T030000",
    "TZOFFSETFROM:+0200",
    "TZOFFSETTO:+0100",
    "RRULE:FREQ=YEARLY;INTERVAL=1;BYDAY=-1SU;BYMONTH=10",
    "END:STANDARD",
    "BEGIN:DAYLIGHT",
    "DTSTART:16010101T020000",
    "TZOFFSETFROM:+0100",
    "TZOFFSETTO:+0200",
    "RRULE:FREQ=YEARLY;INTERVAL=1;BYDAY=-1SU;BYMONTH=3",
    "END:DAYLIGHT",
    "END:VTIMEZONE",
]
OUTLOOK = wrap(
    *WINDOWS_TZ,
    "BEGIN:VEVENT",
    "ORGANIZER;CN=Organizer:mailto:org@example.com",
    "ATTENDEE;ROLE=REQ-PARTICIPANT;CN=Guest:mailto:guest@example.com",
    "DESCRIPTION;LANGUAGE=en-US:Agenda\\, items\\nline 2",
    "UID:040000008200E00074C5B7101A82E00800000000",
    " ABCDEF",
    "SUMMARY;LANGUAGE=en-US:Review\\, Q3",
    "DTSTART;TZID=W. Europe Standard Time:20241027T013000",
    "DTEND;TZID=W. Europe Standard Time:20241027T040000",
    "CLASS:PRIVATE",
    "PRIORITY:5",
    "DTSTAMP:20240901T120000Z",
    "TRANSP:OPAQUE",
    "STATUS:CONFIRMED",
    "SEQUENCE:3",
    "LOCATION;LANGUAGE=en-US:Room 1",
    "URL:https://example.com/meeting",
    "X-MICROSOFT-CDO-BUSYSTATUS:OOF",
    "X-MICROSOFT-CDO-IMPORTANCE:1",
    "X-MS-OLK-ORIGINALSTART;TZID=W. Europe Standard Time:20241027T013000",
    "X-ALT-DESC;FMTTYPE=text/html:<html><body><p>Agenda\\, items</p><p>line 2</p></body></html>",
    "BEGIN:VALARM",
    "DESCRIPTION:REMINDER",
    "TRIGGER;RELATED=START:-PT15M",
    "ACTION:DISPLAY",
    "X-WR-ALARMUID:alarm-1",
    "END:VALARM",
    "BEGIN:VALARM",
    "ACTION:EMAIL",
    "SUMMARY:mail",
    "DESCRIPTION:mail",
    "ATTENDEE:mailto:me@example.com",
    "TRIGGER:-P1D",
    "END:VALARM",
    "BEGIN:VALARM",
    "ACTION:DISPLAY",
    "DESCRIPTION:second",
    "TRIGGER:-PT2H",
    "END:VALARM",
    "END:VEVENT",
    calendar_lines=("METHOD:PUBLISH", "X-WR-CALNAME:Work"),
)


def test_outlook_export_with_windows_tzid() -> None:
    event = event_from_ical(OUTLOOK)
    assert event.timezone == "Europe/Berlin"
    assert event.start == datetime(2024, 10, 27, 1, 30, tzinfo=BERLIN)
    assert event.start.astimezone(UTC) == datetime(2024, 10, 26, 23, 30, tzinfo=UTC)
    assert event.end.astimezone(UTC) == datetime(2024, 10, 27, 3, 0, tzinfo=UTC)
    assert event.uid == "040000008200E00074C5B7101A82E00800000000ABCDEF"
    assert event.subject == "Review, Q3"
    assert event.body_text == "Agenda, items\nline 2"
    assert event.body_html is not None
    assert event.location == "Room 1"
    assert event.sensitivity is Sensitivity.PRIVATE
    assert event.show_as is ShowAs.OOF
    assert event.reminder_minutes == 15
    assert event.last_modified == datetime(2024, 9, 1, 12, 0, tzinfo=UTC)


def test_write_keeps_what_the_model_does_not_own() -> None:
    event = event_from_ical(OUTLOOK)
    changed = Event(
        subject="Review, Q4",
        start=event.start,
        end=event.end + timedelta(hours=1),
        timezone=event.timezone,
        uid=event.uid,
        body_text=event.body_text,
        body_html=event.body_html,
        location=event.location,
        show_as=ShowAs.BUSY,
        sensitivity=event.sensitivity,
        reminder_minutes=10,
        organizer=event.organizer,
        attendees=event.attendees,
    )
    text = event_to_ical(changed, previous=OUTLOOK)
    assert_well_formed(text)
    unfolded = re.sub(r"\r\n[ \t]", "", text)
    for kept in (
        # The model owns ORGANIZER/ATTENDEE now: kept, with SCHEDULE-AGENT=CLIENT (RFC 6638 7.1).
        "ORGANIZER;CN=Organizer;SCHEDULE-AGENT=CLIENT:mailto:org@example.com",
        "ATTENDEE;CN=Guest;ROLE=REQ-PARTICIPANT;SCHEDULE-AGENT=CLIENT:mailto:guest@example.com",
        "URL:https://example.com/meeting",
        "X-MICROSOFT-CDO-IMPORTANCE:1",
        "PRIORITY:5",
        "STATUS:CONFIRMED",
        "X-WR-CALNAME:Work",
        "X-WR-ALARMUID:alarm-1",
        "ACTION:EMAIL",
        "DESCRIPTION:second",
        "DESCRIPTION;LANGUAGE=en-US:Agenda\\, items\\nline 2",
    ):
        assert kept in unfolded, kept
    assert "SEQUENCE:4" in unfolded
    assert "METHOD" not in unfolded
    assert "X-MICROSOFT-CDO-BUSYSTATUS:BUSY" in unfolded
    # The Windows-named TZID of a kept property is renamed to its IANA zone.
    assert "X-MS-OLK-ORIGINALSTART;TZID=Europe/Berlin:20241027T013000" in unfolded
    back = event_from_ical(text)
    assert back.fingerprint() == changed.fingerprint()
    assert back.reminder_minutes == 10
    vevent_ = Calendar.from_ical(text).walk("VEVENT")[0]
    assert len(vevent_.walk("VALARM")) == 3  # the reminder updated in place, the others kept


def test_removing_the_reminder_drops_reminder_alarms_only() -> None:
    event = event_from_ical(OUTLOOK)
    text = event_to_ical(
        Event(subject=event.subject, start=event.start, end=event.end, timezone=event.timezone, uid=event.uid),
        previous=OUTLOOK,
    )
    back = event_from_ical(text)
    assert back.reminder_minutes is None
    actions = [str(a["ACTION"]) for a in Calendar.from_ical(text).walk("VALARM")]
    assert actions == ["EMAIL"]


def test_no_sequence_is_added_when_previous_had_none() -> None:
    previous = wrap(*vevent("DTSTART;VALUE=DATE:20240101", "SUMMARY:a", "X-FOO:bar"))
    event = event_from_ical(previous)
    text = event_to_ical(event, previous=previous)
    assert "SEQUENCE" not in text and "X-FOO:bar" in text


CUSTOM = [
    "BEGIN:VTIMEZONE",
    "TZID:Customized Time Zone",
    "BEGIN:STANDARD",
    "DTSTART:16010101T020000",
    "TZOFFSETFROM:-0400",
    "TZOFFSETTO:-0500",
    "RRULE:FREQ=YEARLY;INTERVAL=1;BYDAY=1SU;BYMONTH=11",
    "END:STANDARD",
    "BEGIN:DAYLIGHT",
    "DTSTART:16010101T020000",
    "TZOFFSETFROM:-0500",
    "TZOFFSETTO:-0400",
    "RRULE:FREQ=YEARLY;INTERVAL=1;BYDAY=2SU;BYMONTH=3",
    "END:DAYLIGHT",
    "END:VTIMEZONE",
]
ODD = [
    "BEGIN:VTIMEZONE",
    "TZID:Customized Time Zone",
    "BEGIN:STANDARD",
    "DTSTART:16010101T000000",
    "TZOFFSETFROM:+0123",
    "TZOFFSETTO:+0123",
    "END:STANDARD",
    "END:VTIMEZONE",
]


def test_custom_vtimezone_maps_to_an_equivalent_iana_zone() -> None:
    text = wrap(
        *CUSTOM,
        *vevent(
            "DTSTART;TZID=Customized Time Zone:20240710T090000",
            "DTEND;TZID=Customized Time Zone:20240710T100000",
            "SUMMARY:x",
        ),
    )
    event = event_from_ical(text)
    assert event.timezone is not None and event.timezone != "UTC"
    assert event.start.astimezone(UTC) == datetime(2024, 7, 10, 13, 0, tzinfo=UTC)
    winter = ZoneInfo(event.timezone).utcoffset(datetime(2024, 1, 10, 12))
    assert winter == timedelta(hours=-5)
    out = event_to_ical(event, previous=text)
    assert "Customized Time Zone" not in out
    assert_well_formed(out)


def test_custom_vtimezone_without_equivalent_falls_back_to_utc() -> None:
    text = wrap(*ODD, *vevent("DTSTART;TZID=Customized Time Zone:20240710T090000", "DURATION:PT1H"))
    event = event_from_ical(text)
    assert event.timezone == "UTC"
    assert event.start == datetime(2024, 7, 10, 7, 37, tzinfo=UTC)
    assert event.end == datetime(2024, 7, 10, 8, 37, tzinfo=UTC)


def test_same_custom_tzid_in_two_resources_uses_each_definition() -> None:
    eastern = wrap(*CUSTOM, *vevent("DTSTART;TZID=Customized Time Zone:20240710T090000"))
    odd = wrap(*ODD, *vevent("DTSTART;TZID=Customized Time Zone:20240710T090000"))
    assert event_from_ical(eastern).start.astimezone(UTC).hour == 13
    assert event_from_ical(odd).start.astimezone(UTC) == datetime(2024, 7, 10, 7, 37, tzinfo=UTC)
    assert event_from_ical(eastern).start.astimezone(UTC).hour == 13


def test_google_style_utc() -> None:
    text = wrap(*vevent("DTSTART:20240105T090000Z", "DTEND:20240105T100000Z", "SUMMARY:G"))
    event = event_from_ical(text)
    assert event.timezone == "UTC"
    assert event.start == datetime(2024, 1, 5, 9, 0, tzinfo=UTC)


@pytest.mark.filterwarnings("ignore::icalendar.error.GloballyUniqueTZIDGuessed")
def test_globally_unique_tzid_and_iana_tzid() -> None:
    text = wrap(*vevent(
        "DTSTART;TZID=/mozilla.org/20050126_1/Asia/Tokyo:20240105T090000",
        "DTEND;TZID=Asia/Tokyo:20240105T100000",
    ))
    event = event_from_ical(text)
    assert event.timezone == "Asia/Tokyo"
    assert event.end - event.start == timedelta(hours=1)


def test_floating_time_is_read_naive() -> None:
    event = event_from_ical(wrap(*vevent("DTSTART:20240201T120000", "DTEND:20240201T130000")))
    assert event.timezone is None
    assert event.start == datetime(2024, 2, 1, 12, 0)


def test_unknown_tzid_without_vtimezone_raises() -> None:
    with pytest.raises(UnknownTimeZone):
        event_from_ical(wrap(*vevent("DTSTART;TZID=Mars/Olympus:20240201T120000")))


@pytest.mark.parametrize(
    ("lines", "expected_start", "expected_end"),
    [
        (["DTSTART;VALUE=DATE:20240301"], date(2024, 3, 1), date(2024, 3, 2)),
        (["DTSTART:20240301T100000Z"], datetime(2024, 3, 1, 10, tzinfo=UTC), datetime(2024, 3, 1, 10, tzinfo=UTC)),
        (["DTSTART;VALUE=DATE:20240301", "DURATION:P3D"], date(2024, 3, 1), date(2024, 3, 4)),
        (["DTSTART:20240301T100000Z", "DURATION:PT90M"], datetime(2024, 3, 1, 10, tzinfo=UTC),
         datetime(2024, 3, 1, 11, 30, tzinfo=UTC)),
        # DATE with a (meaningless) TZID is still a date.
        (["DTSTART;VALUE=DATE;TZID=Europe/Berlin:20240301"], date(2024, 3, 1), date(2024, 3, 2)),
        # An all-day DTEND equal to DTSTART is read as one day.
        (["DTSTART;VALUE=DATE:20240301", "DTEND;VALUE=DATE:20240301"], date(2024, 3, 1), date(2024, 3, 2)),
    ],
)
def test_end_from_dtend_duration_or_default(
    lines: list[str], expected_start: object, expected_end: object
) -> None:
    event = event_from_ical(wrap(*vevent(*lines)))
    assert (event.start, event.end) == (expected_start, expected_end)


def test_duration_days_are_nominal_hours_exact_across_dst() -> None:
    day = event_from_ical(wrap(*vevent("DTSTART;TZID=Europe/Berlin:20241026T120000", "DURATION:P1D")))
    assert day.end == datetime(2024, 10, 27, 12, 0, tzinfo=BERLIN)  # 25 hours elapsed
    hours = event_from_ical(wrap(*vevent("DTSTART;TZID=Europe/Berlin:20241026T120000", "DURATION:PT24H")))
    assert hours.end.astimezone(UTC) - hours.start.astimezone(UTC) == timedelta(hours=24)
    assert hours.end == datetime(2024, 10, 27, 11, 0, tzinfo=BERLIN)


def test_categories_from_several_properties_and_comma_lists() -> None:
    event = event_from_ical(wrap(*vevent(
        "DTSTART;VALUE=DATE:20240301", "CATEGORIES:Work,Travel", "CATEGORIES:Urgent", "CATEGORIES:Work",
    )))
    assert event.categories == ("Work", "Travel", "Urgent")


@pytest.mark.parametrize(
    ("alarms", "expected"),
    [
        ([["ACTION:DISPLAY", "TRIGGER:-PT10M"]], 10),
        ([["ACTION:DISPLAY", "TRIGGER;RELATED=END:-PT10M"], ["ACTION:DISPLAY", "TRIGGER:-PT5M"]], 5),
        ([["ACTION:EMAIL", "TRIGGER:-PT10M"], ["ACTION:AUDIO", "TRIGGER:-P1D"]], 1440),
        ([["ACTION:DISPLAY", "TRIGGER;VALUE=DATE-TIME:20240301T080000Z"]], None),
        ([["ACTION:DISPLAY", "TRIGGER:PT10M"]], None),  # after the start: Graph cannot hold it
        ([], None),
    ],
)
def test_reminder_is_the_first_display_alarm_before_start(alarms: list[list[str]], expected: int | None) -> None:
    lines = ["DTSTART:20240301T100000Z"]
    for alarm in alarms:
        lines += ["BEGIN:VALARM", *alarm, "DESCRIPTION:r", "END:VALARM"]
    assert event_from_ical(wrap(*vevent(*lines))).reminder_minutes == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [("PUBLIC", Sensitivity.NORMAL), ("PRIVATE", Sensitivity.PRIVATE),
     ("CONFIDENTIAL", Sensitivity.CONFIDENTIAL), ("X-PERSONAL", Sensitivity.PERSONAL),
     ("X-SOMETHING", Sensitivity.PRIVATE)],
)
def test_class_mapping(value: str, expected: Sensitivity) -> None:
    event = event_from_ical(wrap(*vevent("DTSTART;VALUE=DATE:20240301", f"CLASS:{value}")))
    assert event.sensitivity is expected


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ([], ShowAs.BUSY),
        (["TRANSP:TRANSPARENT"], ShowAs.FREE),
        (["TRANSP:OPAQUE", "X-MICROSOFT-CDO-BUSYSTATUS:TENTATIVE"], ShowAs.TENTATIVE),
        (["X-MICROSOFT-CDO-BUSYSTATUS:WORKINGELSEWHERE"], ShowAs.WORKING_ELSEWHERE),
        # Another client switched TRANSP and kept the stale Outlook status: TRANSP wins.
        (["TRANSP:TRANSPARENT", "X-MICROSOFT-CDO-BUSYSTATUS:BUSY"], ShowAs.FREE),
        (["TRANSP:OPAQUE", "X-MICROSOFT-CDO-BUSYSTATUS:FREE"], ShowAs.BUSY),
    ],
)
def test_show_as_from_transp_and_busystatus(lines: list[str], expected: ShowAs) -> None:
    assert event_from_ical(wrap(*vevent("DTSTART;VALUE=DATE:20240301", *lines))).show_as is expected


def test_stale_alt_desc_is_ignored_when_description_was_edited() -> None:
    event = event_from_ical(wrap(*vevent(
        "DTSTART;VALUE=DATE:20240301",
        "DESCRIPTION:new text",
        "X-ALT-DESC;FMTTYPE=text/html:<html><body>old text</body></html>",
    )))
    assert event.body_text == "new text" and event.body_html is None


def test_alt_desc_alone_gives_the_text() -> None:
    event = event_from_ical(wrap(*vevent(
        "DTSTART;VALUE=DATE:20240301", "X-ALT-DESC;FMTTYPE=text/html:<p>only html</p>",
    )))
    assert event.body_text == "only html" and event.body_html == "<p>only html</p>"


def test_last_modified_falls_back_to_dtstamp() -> None:
    with_lm = event_from_ical(wrap(*vevent("DTSTART;VALUE=DATE:20240301", "LAST-MODIFIED:20240202T101010Z")))
    assert with_lm.last_modified == datetime(2024, 2, 2, 10, 10, 10, tzinfo=UTC)
    without = event_from_ical(wrap(*vevent("DTSTART;VALUE=DATE:20240301")))
    assert without.last_modified == datetime(2024, 1, 1, 0, 0, tzinfo=UTC)


# --- errors -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "data",
    [
        f"garbage {SECRET}",
        "",
        b"\x00\x01\x02",
        wrap(),  # no VEVENT
        wrap(*vevent(f"SUMMARY:{SECRET}")),  # no DTSTART
        wrap(*vevent(f"SUMMARY:{SECRET}", "DTSTART:notadate")),
        wrap(*vevent(f"SUMMARY:{SECRET}", "DTSTART:20240301T100000Z", "DTEND:20240301T090000Z")),
        wrap(*vevent(f"SUMMARY:{SECRET}", "DTSTART;VALUE=DATE:20240301", "DTEND:20240301T090000Z")),
        wrap(*vevent(f"SUMMARY:{SECRET}", "DTSTART:20240301T100000", "DTEND:20240301T110000Z")),
        wrap(*vevent("DTSTART:20240301T100000Z", uid="a"), *vevent("DTSTART:20240301T100000Z", uid="b")),
        "BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nUID:1\r\nDTSTART:20240301T100000Z\r\n",  # truncated
        "BEGIN:VEVENT\r\nUID:1\r\nDTSTART:20240301T100000Z\r\nEND:VEVENT\r\n",  # no VCALENDAR
    ],
)
def test_broken_resources_raise_invalid_icalendar_without_content(data: str | bytes) -> None:
    with pytest.raises(InvalidICalendar) as info:
        event_from_ical(data)
    assert SECRET not in str(info.value)
    assert info.value.__cause__ is None or SECRET not in str(info.value.__cause__)


def test_recurring_events_are_read_as_series() -> None:
    # Recurrence is synced now (tests/test_convert_ical_series.py has the details).
    event = event_from_ical(wrap(*vevent("DTSTART:20240301T100000Z", "RRULE:FREQ=WEEKLY")))
    assert event.recurrence is not None and event.recurrence.rule.startswith("FREQ=WEEKLY")


@pytest.mark.parametrize(
    ("lines", "reason"),
    [(["RECURRENCE-ID:20240301T100000Z"], "without their series master")],
)
def test_recurrence_parts_without_a_series_are_unsupported(lines: list[str], reason: str) -> None:
    with pytest.raises(UnsupportedEvent, match=reason):
        event_from_ical(wrap(*vevent("DTSTART:20240301T100000Z", *lines)))


def test_vtodo_is_unsupported() -> None:
    with pytest.raises(UnsupportedEvent):
        event_from_ical(wrap("BEGIN:VTODO", "UID:t", "SUMMARY:task", "END:VTODO"))


def test_uid_of() -> None:
    assert uid_of(OUTLOOK) == "040000008200E00074C5B7101A82E00800000000ABCDEF"
    assert uid_of(OUTLOOK.encode()) == "040000008200E00074C5B7101A82E00800000000ABCDEF"
    alarm_first = wrap("BEGIN:VEVENT", "BEGIN:VALARM", "UID:alarm", "END:VALARM", "UID:event\\,1", "END:VEVENT")
    assert uid_of(alarm_first) == "event,1"
    assert uid_of(wrap()) is None
    assert uid_of("garbage") is None

"""Windows <-> IANA time-zone names (sync_core.convert.timezones)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from icalendar import Calendar
from icalendar.timezone.windows_to_olson import WINDOWS_TO_OLSON

from sync_core.convert.timezones import (
    equivalent_zone,
    iana_to_windows,
    is_windows_id,
    windows_to_iana,
    zone,
)
from sync_core.errors import UnknownTimeZone

PAIRS = [
    ("Tokyo Standard Time", "Asia/Tokyo"),
    ("W. Europe Standard Time", "Europe/Berlin"),
    ("Eastern Standard Time", "America/New_York"),
    ("India Standard Time", "Asia/Calcutta"),  # CLDR's canonical spelling of Asia/Kolkata
    ("Pacific Standard Time", "America/Los_Angeles"),
    ("GMT Standard Time", "Europe/London"),
    ("Romance Standard Time", "Europe/Paris"),
    ("AUS Eastern Standard Time", "Australia/Sydney"),
    ("New Zealand Standard Time", "Pacific/Auckland"),
    ("China Standard Time", "Asia/Shanghai"),
    ("E. South America Standard Time", "America/Sao_Paulo"),
    ("Central Standard Time", "America/Chicago"),
    ("Arabian Standard Time", "Asia/Dubai"),
    ("Singapore Standard Time", "Asia/Singapore"),
]


def same_offsets(a: str, b: str, years: range = range(2025, 2031)) -> bool:
    za, zb = ZoneInfo(a), ZoneInfo(b)
    at = datetime(years.start, 1, 1, tzinfo=UTC)
    end = datetime(years.stop, 1, 1, tzinfo=UTC)
    while at < end:
        if at.astimezone(za).utcoffset() != at.astimezone(zb).utcoffset():
            return False
        at += timedelta(hours=6)
    return True


@pytest.mark.parametrize(("windows", "iana"), PAIRS)
def test_windows_to_iana_and_back(windows: str, iana: str) -> None:
    assert windows_to_iana(windows) == iana
    assert iana_to_windows(iana) == windows
    assert zone(windows) == ZoneInfo(iana)


def test_utc_both_ways() -> None:
    for name in ("UTC", "Etc/UTC", "utc", "GMT", "tzone://Microsoft/Utc"):
        assert windows_to_iana(name) == "UTC"
        assert iana_to_windows(name) == "UTC"
    assert zone("UTC").utcoffset(datetime(2024, 6, 1)) == timedelta(0)


def test_every_windows_id_of_the_cldr_table_round_trips() -> None:
    for windows, iana in WINDOWS_TO_OLSON.items():
        if windows == "UTC":
            continue
        assert windows_to_iana(windows) == iana
        assert iana_to_windows(iana) == windows
        assert is_windows_id(windows)
        assert not is_windows_id(iana)


def test_graph_may_return_iana_names_and_any_case() -> None:
    assert windows_to_iana("Europe/Berlin") == "Europe/Berlin"
    assert windows_to_iana("America/Indiana/Indianapolis") == "America/Indiana/Indianapolis"
    assert windows_to_iana("w. europe standard time") == "Europe/Berlin"
    assert windows_to_iana("europe/berlin") == "Europe/Berlin"


@pytest.mark.parametrize("name", ["tzone://Microsoft/Custom", "Customized Time Zone", "Mars/Olympus", "", "  "])
def test_unknown_names_raise(name: str) -> None:
    with pytest.raises(UnknownTimeZone):
        windows_to_iana(name)
    with pytest.raises(UnknownTimeZone):
        iana_to_windows(name)


@pytest.mark.parametrize(
    ("iana", "expected"),
    [
        ("Asia/Kolkata", "India Standard Time"),
        ("America/Toronto", "Eastern Standard Time"),  # agrees longer than America/Indianapolis
        ("Europe/Oslo", "W. Europe Standard Time"),
        ("Europe/Kyiv", "FLE Standard Time"),
        ("America/Argentina/Buenos_Aires", "Argentina Standard Time"),
        ("Asia/Ho_Chi_Minh", "SE Asia Standard Time"),
    ],
)
def test_non_canonical_iana_zones_map_to_the_equivalent_windows_id(iana: str, expected: str) -> None:
    assert iana_to_windows(iana) == expected


@pytest.mark.parametrize(
    "iana",
    [
        "Europe/Zurich", "Europe/Vienna", "Europe/Madrid", "Europe/Dublin", "Africa/Abidjan",
        "America/Chihuahua", "America/Ojinaga", "Asia/Almaty", "America/Nuuk", "Asia/Gaza",
        "Australia/Melbourne", "Pacific/Chatham", "America/Edmonton", "Asia/Kathmandu",
    ],
)
def test_chosen_windows_zone_keeps_current_offsets(iana: str) -> None:
    windows = iana_to_windows(iana)
    assert is_windows_id(windows) or windows == "UTC"
    assert same_offsets(iana, windows_to_iana(windows))


def test_zone_without_any_windows_equivalent_raises() -> None:
    # Antarctica/Troll switches between +00 and +02: no Windows zone does that.
    with pytest.raises(UnknownTimeZone):
        iana_to_windows("Antarctica/Troll")


CUSTOM_EASTERN = """BEGIN:VCALENDAR\r
VERSION:2.0\r
PRODID:test\r
BEGIN:VTIMEZONE\r
TZID:Customized Time Zone\r
BEGIN:STANDARD\r
DTSTART:16010101T020000\r
TZOFFSETFROM:-0400\r
TZOFFSETTO:-0500\r
RRULE:FREQ=YEARLY;INTERVAL=1;BYDAY=1SU;BYMONTH=11\r
END:STANDARD\r
BEGIN:DAYLIGHT\r
DTSTART:16010101T020000\r
TZOFFSETFROM:-0500\r
TZOFFSETTO:-0400\r
RRULE:FREQ=YEARLY;INTERVAL=1;BYDAY=2SU;BYMONTH=3\r
END:DAYLIGHT\r
END:VTIMEZONE\r
END:VCALENDAR\r
"""


def test_equivalent_zone_names_a_custom_vtimezone_by_its_rules() -> None:
    custom = Calendar.from_ical(CUSTOM_EASTERN).timezones[0].to_tz(lookup_tzid=False)
    first, last = datetime(2025, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC)
    match = equivalent_zone(custom, first, last)
    assert match is not None
    assert same_offsets(match, "America/New_York", range(2025, 2026))
    # The hint prefers a candidate whose city the TZID names.
    assert equivalent_zone(custom, first, last, hint="(UTC-05:00) Eastern Time (New York)") == (
        "America/New_York"
    )
    # Rules no zone follows: no match.
    assert equivalent_zone(custom, first, last, candidates=["Europe/Berlin", "UTC"]) is None

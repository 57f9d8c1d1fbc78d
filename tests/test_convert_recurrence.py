"""convert/recurrence.py: Graph patternedRecurrence <-> RRULE, canonical text, expansion, fallback.

Expectations are independent of the module: hand-computed dates (checked against a calendar)
and ``recurring_ical_events`` run on a small VCALENDAR built here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import icalendar
import pytest
import recurring_ical_events

from sync_core.convert.recurrence import (
    canonical_rrule,
    crossing_boundary_reason,
    expand,
    graph_from_rrule,
    graph_unsupported_reason,
    parse_recurrence_id_text,
    recurrence_id_text,
    rrule_from_graph,
    rule_unsupported_reason,
)
from sync_core.errors import InvalidGraphEvent, InvalidICalendar, NotExpressible, UnsupportedEvent
from sync_core.model import Event, Occurrence, Recurrence

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
WINDOWS_BERLIN = "W. Europe Standard Time"
WEEKDAYS_GRAPH = ["monday", "tuesday", "wednesday", "thursday", "friday"]


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def berlin(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=BERLIN)


def ical_expectation(rule: str, start: datetime | date, low: datetime, high: datetime) -> list[datetime | date]:
    """Occurrence starts per recurring_ical_events for a one-VEVENT calendar (1 h / 1 day long)."""
    if not isinstance(start, datetime):
        dtstart = f"DTSTART;VALUE=DATE:{start:%Y%m%d}"
        dtend = f"DTEND;VALUE=DATE:{start + timedelta(days=1):%Y%m%d}"
    elif start.tzinfo is None:
        dtstart = f"DTSTART:{start:%Y%m%dT%H%M%S}"
        dtend = f"DTEND:{start + timedelta(hours=1):%Y%m%dT%H%M%S}"
    else:
        key = start.tzinfo.key  # type: ignore[attr-defined]
        dtstart = f"DTSTART;TZID={key}:{start:%Y%m%dT%H%M%S}"
        dtend = f"DTEND;TZID={key}:{start + timedelta(hours=1):%Y%m%dT%H%M%S}"
    text = "\r\n".join([
        "BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//test//EN", "BEGIN:VEVENT", "UID:expectation",
        "DTSTAMP:20250101T000000Z", dtstart, dtend, f"RRULE:{rule}", "END:VEVENT", "END:VCALENDAR", "",
    ])
    calendar = icalendar.Calendar.from_ical(text)
    if isinstance(start, datetime) and start.tzinfo is not None:
        found = recurring_ical_events.of(calendar).between(low, high)
    else:  # dates and floating times: the window's UTC wall time
        found = recurring_ical_events.of(calendar).between(low.replace(tzinfo=None), high.replace(tzinfo=None))
    return sorted(event["DTSTART"].dt for event in found)


def series(start: datetime | date, rule: str, **changes: Any) -> Event:
    end = start + (timedelta(hours=1) if isinstance(start, datetime) else timedelta(days=1))
    zone = start.tzinfo.key if isinstance(start, datetime) and start.tzinfo else None  # type: ignore[attr-defined]
    return Event(subject="Standup", start=start, end=end, timezone=zone, recurrence=Recurrence(rule), **changes)


# --- the 6 pattern types x 3 range types ------------------------------------------------
@dataclass(frozen=True)
class PatternCase:
    name: str
    pattern: dict[str, Any]
    start: datetime | date
    first_five: tuple[datetime | date, ...]  # hand-computed
    end_date: date  # an occurrence date, for the endDate range
    until: str  # the UNTIL text rrule_from_graph writes for end_date


PATTERNS = [
    PatternCase(  # crosses the change to CEST on 2025-03-30: stays 09:00 local
        "daily",
        {"type": "daily", "interval": 3},
        berlin(2025, 3, 28, 9),
        (berlin(2025, 3, 28, 9), berlin(2025, 3, 31, 9), berlin(2025, 4, 3, 9), berlin(2025, 4, 6, 9),
         berlin(2025, 4, 9, 9)),
        date(2025, 4, 6),
        "20250406T070000Z",
    ),
    PatternCase(  # weeks start on sunday: Mar 2-8 on, 9-15 off, 16-22 on
        "weekly",
        {"type": "weekly", "interval": 2, "daysOfWeek": ["monday", "thursday"], "firstDayOfWeek": "sunday"},
        berlin(2025, 3, 3, 9),
        (berlin(2025, 3, 3, 9), berlin(2025, 3, 6, 9), berlin(2025, 3, 17, 9), berlin(2025, 3, 20, 9),
         berlin(2025, 3, 31, 9)),
        date(2025, 3, 20),
        "20250320T080000Z",
    ),
    PatternCase(  # dayOfMonth 31 clamps to the month's last day
        "absoluteMonthly",
        {"type": "absoluteMonthly", "interval": 1, "dayOfMonth": 31},
        berlin(2025, 1, 31, 9),
        (berlin(2025, 1, 31, 9), berlin(2025, 2, 28, 9), berlin(2025, 3, 31, 9), berlin(2025, 4, 30, 9),
         berlin(2025, 5, 31, 9)),
        date(2025, 4, 30),
        "20250430T070000Z",
    ),
    PatternCase(  # last weekday of the month, floating time
        "relativeMonthly",
        {"type": "relativeMonthly", "interval": 1, "daysOfWeek": WEEKDAYS_GRAPH, "index": "last"},
        datetime(2025, 1, 31, 18, 0),
        (datetime(2025, 1, 31, 18), datetime(2025, 2, 28, 18), datetime(2025, 3, 31, 18),
         datetime(2025, 4, 30, 18), datetime(2025, 5, 30, 18)),
        date(2025, 4, 30),
        "20250430T180000",
    ),
    PatternCase(  # February 29, all-day: Feb 28 in common years
        "absoluteYearly",
        {"type": "absoluteYearly", "interval": 1, "dayOfMonth": 29, "month": 2},
        date(2024, 2, 29),
        (date(2024, 2, 29), date(2025, 2, 28), date(2026, 2, 28), date(2027, 2, 28), date(2028, 2, 29)),
        date(2027, 2, 28),
        "20270228",
    ),
    PatternCase(  # last Sunday of March (the DST change day), 10:00 local
        "relativeYearly",
        {"type": "relativeYearly", "interval": 1, "daysOfWeek": ["sunday"], "month": 3, "index": "last"},
        berlin(2025, 3, 30, 10),
        (berlin(2025, 3, 30, 10), berlin(2026, 3, 29, 10), berlin(2027, 3, 28, 10), berlin(2028, 3, 26, 10),
         berlin(2029, 3, 25, 10)),
        date(2027, 3, 28),
        "20270328T080000Z",
    ),
]
RANGE_TYPES = ["noEnd", "numbered", "endDate"]


def graph_range(case: PatternCase, kind: str) -> dict[str, Any]:
    start_day = case.start.date() if isinstance(case.start, datetime) else case.start
    result: dict[str, Any] = {"type": kind, "startDate": start_day.isoformat()}
    if kind == "numbered":
        result["numberOfOccurrences"] = 5
    if kind == "endDate":
        result["endDate"] = case.end_date.isoformat()
    result["recurrenceTimeZone"] = WINDOWS_BERLIN
    return result


def window_of(case: PatternCase) -> tuple[datetime, datetime]:
    """Six years from the day before the start (as UTC wall time for dates / floating)."""
    first = case.start if isinstance(case.start, datetime) else datetime.combine(case.start, datetime.min.time())
    low = first.astimezone(UTC) if first.tzinfo else first.replace(tzinfo=UTC)
    return low - timedelta(days=1), low + timedelta(days=6 * 366)


@pytest.mark.parametrize("range_kind", RANGE_TYPES)
@pytest.mark.parametrize("case", PATTERNS, ids=[case.name for case in PATTERNS])
def test_graph_rrule_graph_round_trip(case: PatternCase, range_kind: str) -> None:
    graph = {"pattern": case.pattern, "range": graph_range(case, range_kind)}
    rule = rrule_from_graph(graph, case.start)
    assert graph_from_rrule(rule, case.start, time_zone=WINDOWS_BERLIN) == graph
    assert canonical_rrule(rule, case.start) == rule
    assert rule_unsupported_reason(rule, case.start) is None


@pytest.mark.parametrize("range_kind", RANGE_TYPES)
@pytest.mark.parametrize("case", PATTERNS, ids=[case.name for case in PATTERNS])
def test_expansion_matches_hand_computed_and_recurring_ical_events(case: PatternCase, range_kind: str) -> None:
    rule = rrule_from_graph({"pattern": case.pattern, "range": graph_range(case, range_kind)}, case.start)
    low, high = window_of(case)
    found = expand(rule, case.start, window_start=low, window_end=high)
    assert found == ical_expectation(rule, case.start, low, high)
    if range_kind == "numbered":
        assert found == list(case.first_five)
    elif range_kind == "endDate":
        day = [value.date() if isinstance(value, datetime) else value for value in case.first_five]
        assert found == [value for value, on in zip(case.first_five, day, strict=True) if on <= case.end_date]
        assert f"UNTIL={case.until}" in rule
    else:
        assert found[:5] == list(case.first_five)
        assert len(found) > 5
    assert all(type(value) is type(case.start) for value in found)
    if isinstance(case.start, datetime):
        times = {(value.hour, value.minute, value.tzinfo) for value in found if isinstance(value, datetime)}
        assert times == {(case.start.hour, case.start.minute, case.start.tzinfo)}


def test_rrule_texts_from_graph() -> None:
    start = berlin(2025, 1, 31, 9)
    no_end = {"type": "noEnd", "startDate": "2025-01-31"}
    texts = {
        case.name: rrule_from_graph({"pattern": case.pattern, "range": no_end}, case.start) for case in PATTERNS
    }
    assert texts == {
        "daily": "FREQ=DAILY;INTERVAL=3",
        "weekly": "FREQ=WEEKLY;INTERVAL=2;BYDAY=MO,TH;WKST=SU",
        "absoluteMonthly": "FREQ=MONTHLY;BYMONTHDAY=28,29,30,31;BYSETPOS=-1",
        "relativeMonthly": "FREQ=MONTHLY;BYDAY=MO,TU,WE,TH,FR;BYSETPOS=-1",
        "absoluteYearly": "FREQ=YEARLY;BYMONTHDAY=28,29;BYMONTH=2;BYSETPOS=-1",
        "relativeYearly": "FREQ=YEARLY;BYDAY=SU;BYMONTH=3;BYSETPOS=-1",
    }

    def monthly(day: int) -> str:
        return rrule_from_graph(
            {"pattern": {"type": "absoluteMonthly", "interval": 1, "dayOfMonth": day}, "range": no_end}, start
        )

    assert monthly(28) == "FREQ=MONTHLY;BYMONTHDAY=28"
    assert monthly(29) == "FREQ=MONTHLY;BYMONTHDAY=28,29;BYSETPOS=-1"
    assert monthly(30) == "FREQ=MONTHLY;BYMONTHDAY=28,29,30;BYSETPOS=-1"

    def yearly(month: int, day: int) -> str:
        pattern = {"type": "absoluteYearly", "interval": 1, "dayOfMonth": day, "month": month}
        return rrule_from_graph({"pattern": pattern, "range": no_end}, start)

    assert yearly(1, 31) == "FREQ=YEARLY;BYMONTHDAY=31;BYMONTH=1"
    assert yearly(4, 30) == "FREQ=YEARLY;BYMONTHDAY=30;BYMONTH=4"
    assert yearly(4, 31) == "FREQ=YEARLY;BYMONTHDAY=28,29,30,31;BYMONTH=4;BYSETPOS=-1"
    assert yearly(2, 30) == "FREQ=YEARLY;BYMONTHDAY=28,29,30;BYMONTH=2;BYSETPOS=-1"


def test_graph_payload_as_graph_returns_it() -> None:
    """Graph returns every member with zeros; only those of the type count. interval 0 -> 1,
    firstDayOfWeek missing -> sunday, index missing -> first."""
    start = berlin(2025, 3, 3, 9)
    graph = {
        "pattern": {"type": "weekly", "interval": 0, "month": 0, "dayOfMonth": 0, "daysOfWeek": ["Monday"],
                    "index": "first"},
        "range": {"type": "noEnd", "startDate": "2025-03-03", "endDate": "0001-01-01",
                  "recurrenceTimeZone": WINDOWS_BERLIN, "numberOfOccurrences": 0},
    }
    assert rrule_from_graph(graph, start) == "FREQ=WEEKLY;BYDAY=MO;WKST=SU"
    relative = {"type": "relativeMonthly", "interval": 2, "daysOfWeek": ["monday"]}
    assert rrule_from_graph({"pattern": relative, "range": graph["range"]}, start) == (
        "FREQ=MONTHLY;INTERVAL=2;BYDAY=MO;BYSETPOS=1"
    )


@pytest.mark.parametrize(
    ("recurrence", "field"),
    [
        ({"range": {"type": "noEnd"}}, "recurrence.pattern"),
        ({"pattern": {"type": "hourly", "interval": 1}, "range": {"type": "noEnd"}}, "recurrence.pattern.type"),
        ({"pattern": {"type": "daily", "interval": -1}, "range": {"type": "noEnd"}}, "recurrence.pattern.interval"),
        ({"pattern": {"type": "weekly", "interval": 1}, "range": {"type": "noEnd"}}, "recurrence.pattern.daysOfWeek"),
        ({"pattern": {"type": "weekly", "interval": 1, "daysOfWeek": ["funday"]}, "range": {"type": "noEnd"}},
         "recurrence.pattern.daysOfWeek"),
        ({"pattern": {"type": "weekly", "interval": 1, "daysOfWeek": ["monday"], "firstDayOfWeek": "x"},
          "range": {"type": "noEnd"}}, "recurrence.pattern.firstDayOfWeek"),
        ({"pattern": {"type": "absoluteMonthly", "interval": 1, "dayOfMonth": 32}, "range": {"type": "noEnd"}},
         "recurrence.pattern.dayOfMonth"),
        ({"pattern": {"type": "absoluteYearly", "interval": 1, "dayOfMonth": 3, "month": 0},
          "range": {"type": "noEnd"}}, "recurrence.pattern.month"),
        ({"pattern": {"type": "relativeMonthly", "interval": 1, "daysOfWeek": ["monday"], "index": "fifth"},
          "range": {"type": "noEnd"}}, "recurrence.pattern.index"),
        ({"pattern": {"type": "daily", "interval": 1}}, "recurrence.range"),
        ({"pattern": {"type": "daily", "interval": 1}, "range": {"type": "forever"}}, "recurrence.range.type"),
        ({"pattern": {"type": "daily", "interval": 1}, "range": {"type": "endDate", "endDate": "2025-13-01"}},
         "recurrence.range.endDate"),
        ({"pattern": {"type": "daily", "interval": 1}, "range": {"type": "numbered", "numberOfOccurrences": 0}},
         "recurrence.range.numberOfOccurrences"),
    ],
)
def test_malformed_graph_recurrence_names_the_field(recurrence: Mapping[str, Any], field: str) -> None:
    with pytest.raises(InvalidGraphEvent) as caught:
        rrule_from_graph(recurrence, berlin(2025, 3, 3, 9))
    assert field in str(caught.value)
    assert "funday" not in str(caught.value)


# --- specific expansion semantics -----------------------------------------------------------
def test_dst_weekly_stays_at_nine_local_across_march_and_october() -> None:
    start = berlin(2025, 3, 18, 9)
    found = expand("FREQ=WEEKLY;BYDAY=TU;WKST=MO", start, window_start=utc(2025, 3, 1),
                   window_end=utc(2025, 11, 15))
    assert all((value.hour, value.minute) == (9, 0) for value in found if isinstance(value, datetime))
    in_utc = {value.astimezone(UTC) for value in found if isinstance(value, datetime)}
    assert utc(2025, 3, 25, 8) in in_utc  # CET
    assert utc(2025, 4, 1, 7) in in_utc  # CEST
    assert utc(2025, 10, 21, 7) in in_utc  # CEST
    assert utc(2025, 10, 28, 8) in in_utc  # CET again
    assert len(found) == 35


def test_nonexistent_and_ambiguous_local_times() -> None:
    """RFC 5545 3.3.5: a time in the gap uses the offset before it; an ambiguous one the first."""
    gap = expand("FREQ=DAILY;COUNT=3", berlin(2025, 3, 29, 2, 30), window_start=utc(2025, 3, 1),
                 window_end=utc(2025, 4, 1))
    assert [value.astimezone(UTC) for value in gap if isinstance(value, datetime)] == [
        utc(2025, 3, 29, 1, 30), utc(2025, 3, 30, 1, 30), utc(2025, 3, 31, 0, 30)
    ]
    fold = expand("FREQ=DAILY;COUNT=3", berlin(2025, 10, 25, 2, 30), window_start=utc(2025, 10, 1),
                  window_end=utc(2025, 11, 1))
    assert [value.astimezone(UTC) for value in fold if isinstance(value, datetime)] == [
        utc(2025, 10, 25, 0, 30), utc(2025, 10, 26, 0, 30), utc(2025, 10, 27, 1, 30)
    ]


@pytest.mark.parametrize(
    ("wkst", "days"),
    [("MO", [5, 10, 19, 24]), ("SU", [5, 17, 19, 31])],
)
def test_wkst_example_of_rfc_5545(wkst: str, days: list[int]) -> None:
    """RFC 5545 3.3.10's WKST example (DTSTART 19970805T090000, America/New_York)."""
    start = datetime(1997, 8, 5, 9, tzinfo=NEW_YORK)
    rule = f"FREQ=WEEKLY;INTERVAL=2;COUNT=4;BYDAY=TU,SU;WKST={wkst}"
    found = expand(rule, start, window_start=utc(1997, 8, 1), window_end=utc(1997, 10, 1))
    assert found == [datetime(1997, 8, day, 9, tzinfo=NEW_YORK) for day in days]
    graph = graph_from_rrule(rule, start, time_zone="Eastern Standard Time")
    assert graph["pattern"] == {
        "type": "weekly", "interval": 2, "daysOfWeek": ["sunday", "tuesday"],
        "firstDayOfWeek": {"MO": "monday", "SU": "sunday"}[wkst],
    }
    assert graph["range"] == {"type": "numbered", "startDate": "1997-08-05", "numberOfOccurrences": 4,
                              "recurrenceTimeZone": "Eastern Standard Time"}


def test_count_counts_before_exdates_and_rdates_are_added() -> None:
    start = berlin(2025, 3, 3, 9)
    found = expand(
        "FREQ=DAILY;COUNT=5", start, window_start=utc(2025, 1, 1), window_end=utc(2026, 1, 1),
        exdates=[datetime(2025, 3, 4, 3, tzinfo=ZoneInfo("America/New_York"))],  # the same instant
        rdates=[berlin(2025, 6, 1, 12), berlin(2025, 3, 5, 9)],
    )
    assert found == [berlin(2025, 3, 3, 9), berlin(2025, 3, 5, 9), berlin(2025, 3, 6, 9),
                     berlin(2025, 3, 7, 9), berlin(2025, 6, 1, 12)]


def test_date_exdates_and_all_day_series() -> None:
    start = date(2025, 12, 29)
    found = expand("FREQ=DAILY;UNTIL=20260102", start, window_start=utc(2025, 12, 1), window_end=utc(2026, 2, 1),
                   exdates=[date(2025, 12, 31)])
    assert found == [date(2025, 12, 29), date(2025, 12, 30), date(2026, 1, 1), date(2026, 1, 2)]
    timed = expand("FREQ=DAILY;COUNT=3", berlin(2025, 5, 1, 9), window_start=utc(2025, 5, 1),
                   window_end=utc(2025, 6, 1), exdates=[date(2025, 5, 2)])
    assert timed == [berlin(2025, 5, 1, 9), berlin(2025, 5, 3, 9)]


def test_dates_and_floating_times_compare_with_the_window_as_utc_wall_time() -> None:
    assert expand("FREQ=DAILY", date(2025, 1, 1), window_start=utc(2025, 1, 3), window_end=utc(2025, 1, 5)) == [
        date(2025, 1, 3), date(2025, 1, 4)
    ]
    floating = datetime(2025, 1, 1, 23, 30)
    low, high = berlin(2025, 1, 3, 23, 30), utc(2025, 1, 4, 23, 30)  # 22:30 UTC .. 23:30 UTC
    assert expand("FREQ=DAILY", floating, window_start=low, window_end=high) == [datetime(2025, 1, 3, 23, 30)]


def test_duration_overlapping_the_window_start_counts() -> None:
    start = berlin(2025, 1, 1, 9)
    low, high = berlin(2025, 1, 2, 10), berlin(2025, 1, 3, 9)
    assert expand("FREQ=DAILY", start, window_start=low, window_end=high) == []
    assert expand("FREQ=DAILY", start, window_start=low, window_end=high, duration=timedelta(hours=2)) == [
        berlin(2025, 1, 2, 9)
    ]


def test_dtstart_is_the_first_occurrence_even_off_the_rule() -> None:
    start = berlin(2025, 3, 4, 9)  # a Tuesday, the rule says Mondays
    found = expand("FREQ=WEEKLY;COUNT=3;BYDAY=MO", start, window_start=utc(2025, 1, 1), window_end=utc(2026, 1, 1))
    assert found == [berlin(2025, 3, 4, 9), berlin(2025, 3, 10, 9), berlin(2025, 3, 17, 9)]
    assert rule_unsupported_reason("FREQ=WEEKLY;BYDAY=MO", start) is not None


def test_limit_raises_value_error() -> None:
    with pytest.raises(ValueError):
        expand("FREQ=DAILY", berlin(2025, 1, 1, 9), window_start=utc(2025, 1, 1), window_end=utc(2026, 1, 1),
               limit=100)
    assert len(expand("FREQ=DAILY", berlin(2025, 1, 1, 9), window_start=utc(2025, 1, 1),
                      window_end=utc(2025, 4, 11), limit=100)) == 100


def test_sub_daily_rules_far_from_dtstart_keep_their_phase() -> None:
    start = datetime(2020, 1, 1, 0, 7)
    found = expand("FREQ=MINUTELY;INTERVAL=7", start, window_start=utc(2030, 1, 1), window_end=utc(2030, 1, 1, 1))
    minutes = (datetime(2030, 1, 1) - start) // timedelta(minutes=1)
    first = start + timedelta(minutes=7 * -(-minutes // 7))
    assert found[0] == first
    assert found == [first + timedelta(minutes=7 * k) for k in range(len(found))]
    assert len(found) in (8, 9)


def test_rule_that_never_matches_gives_only_dtstart_quickly() -> None:
    found = expand("FREQ=DAILY;BYMONTH=2;BYMONTHDAY=30", datetime(2025, 1, 1, 9), window_start=utc(2025, 1, 1),
                   window_end=utc(2030, 1, 1))
    assert found == [datetime(2025, 1, 1, 9)]


def test_rfc_7529_and_leap_seconds_cannot_be_expanded() -> None:
    low, high = utc(2025, 1, 1), utc(2026, 1, 1)
    with pytest.raises(UnsupportedEvent):
        expand("RSCALE=HEBREW;FREQ=YEARLY", berlin(2025, 1, 1, 9), window_start=low, window_end=high)
    with pytest.raises(UnsupportedEvent):
        expand("FREQ=MINUTELY;BYSECOND=60", berlin(2025, 1, 1, 9), window_start=low, window_end=high)
    found = expand("RSCALE=GREGORIAN;SKIP=OMIT;FREQ=YEARLY", berlin(2025, 1, 1, 9), window_start=low, window_end=high)
    assert found == [berlin(2025, 1, 1, 9)]


# --- the fallback list ------------------------------------------------------------------------
MONDAY = berlin(2025, 3, 3, 9)
UNSUPPORTED = [
    ("FREQ=HOURLY", MONDAY, "FREQ=HOURLY"),
    ("FREQ=MINUTELY", MONDAY, "FREQ=MINUTELY"),
    ("FREQ=SECONDLY", MONDAY, "FREQ=SECONDLY"),
    ("FREQ=DAILY;BYHOUR=9,15", MONDAY, "BYHOUR"),
    ("FREQ=DAILY;BYMINUTE=0,30", MONDAY, "BYMINUTE"),
    ("FREQ=DAILY;BYSECOND=0", MONDAY, "BYSECOND"),
    ("FREQ=YEARLY;BYWEEKNO=10;BYDAY=MO", MONDAY, "BYWEEKNO"),
    ("FREQ=YEARLY;BYYEARDAY=62", MONDAY, "BYYEARDAY"),
    ("FREQ=MONTHLY;BYMONTHDAY=3,17", MONDAY, "BYMONTHDAY"),
    ("FREQ=MONTHLY;BYMONTHDAY=28,29,30", berlin(2025, 1, 28, 9), "BYMONTHDAY"),  # no BYSETPOS=-1
    ("FREQ=MONTHLY;BYMONTHDAY=-1", berlin(2025, 3, 31, 9), "BYMONTHDAY"),
    ("FREQ=MONTHLY;BYMONTHDAY=31", berlin(2025, 1, 31, 9), "BYMONTHDAY"),
    ("FREQ=MONTHLY", berlin(2025, 1, 30, 9), "BYMONTHDAY"),  # DTSTART's day 30, RFC skips February
    ("FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=29", berlin(2024, 2, 29, 9), "BYMONTHDAY"),
    ("FREQ=YEARLY;BYMONTH=3,9;BYMONTHDAY=3", MONDAY, "BYMONTH"),
    ("FREQ=MONTHLY;BYDAY=MO;BYSETPOS=5", berlin(2025, 3, 31, 9), "BYSETPOS"),
    ("FREQ=MONTHLY;BYDAY=MO;BYSETPOS=-2", berlin(2025, 3, 24, 9), "BYSETPOS"),
    ("FREQ=MONTHLY;BYDAY=MO;BYSETPOS=1,3", MONDAY, "BYSETPOS"),
    ("FREQ=MONTHLY;BYDAY=5MO", berlin(2025, 3, 31, 9), "BYDAY"),
    ("FREQ=MONTHLY;BYDAY=-2MO", berlin(2025, 3, 24, 9), "BYDAY"),
    ("FREQ=MONTHLY;BYDAY=1MO,-1FR", MONDAY, "BYDAY"),
    ("FREQ=MONTHLY;BYDAY=1MO,1TU", MONDAY, "BYDAY"),
    ("FREQ=MONTHLY;BYDAY=MO", MONDAY, "BYDAY"),  # every Monday of the month
    ("FREQ=DAILY;INTERVAL=2;BYDAY=MO,TU", MONDAY, "INTERVAL>1"),
    ("FREQ=WEEKLY;BYMONTH=3", MONDAY, "BYMONTH"),
    ("FREQ=WEEKLY;BYMONTHDAY=3", MONDAY, "BYMONTHDAY"),
    ("FREQ=WEEKLY;BYDAY=TU", MONDAY, "DTSTART"),
    ("FREQ=MONTHLY;BYMONTHDAY=4", MONDAY, "DTSTART"),
    ("FREQ=DAILY;UNTIL=20250301T000000Z", MONDAY, "DTSTART"),
    ("FREQ=YEARLY;BYDAY=1MO", MONDAY, "BYDAY"),  # first Monday of the year
    ("RSCALE=GREGORIAN;FREQ=YEARLY", MONDAY, "RSCALE"),
]


@pytest.mark.parametrize(("rule", "start", "part"), UNSUPPORTED, ids=[rule for rule, _s, _p in UNSUPPORTED])
def test_every_fallback_item_gives_a_reason(rule: str, start: datetime, part: str) -> None:
    reason = rule_unsupported_reason(rule, start)
    assert reason is not None and part in reason
    with pytest.raises(NotExpressible) as caught:
        graph_from_rrule(rule, start, time_zone=WINDOWS_BERLIN)
    assert str(caught.value) == reason
    assert graph_unsupported_reason(series(start, rule)) == reason
    canonical = canonical_rrule(rule, start)
    assert canonical_rrule(canonical, start) == canonical


def test_fallback_reason_for_rdates() -> None:
    reason = rule_unsupported_reason("FREQ=DAILY", MONDAY, [berlin(2025, 3, 10, 15)])
    assert reason is not None and "RDATE" in reason
    event = series(MONDAY, "FREQ=DAILY")
    event = Event(**{**event.__dict__, "recurrence": Recurrence("FREQ=DAILY", (berlin(2025, 3, 10, 15),))})
    assert graph_unsupported_reason(event) == reason


def test_fallback_reason_for_zones() -> None:
    unknown = series(datetime(2025, 1, 6, 9, tzinfo=ZoneInfo("Antarctica/Troll")), "FREQ=DAILY")
    reason = graph_unsupported_reason(unknown)
    assert reason is not None and "Antarctica/Troll" in reason
    # Chihuahua kept DST until October 2022; its Windows zone's canonical zone did not.
    changed = series(datetime(2021, 1, 6, 9, tzinfo=ZoneInfo("America/Chihuahua")), "FREQ=DAILY")
    reason = graph_unsupported_reason(changed)
    assert reason is not None and "offsets" in reason
    assert graph_unsupported_reason(series(MONDAY, "FREQ=DAILY")) is None
    assert graph_unsupported_reason(series(datetime(2025, 3, 3, 9, tzinfo=ZoneInfo("Europe/Oslo")), "FREQ=DAILY")) \
        is None


def test_supported_equivalent_forms_have_no_reason() -> None:
    assert rule_unsupported_reason("FREQ=DAILY;BYDAY=MO,WE", MONDAY) is None
    assert rule_unsupported_reason("FREQ=WEEKLY", MONDAY) is None
    assert rule_unsupported_reason("FREQ=MONTHLY;BYDAY=1MO", MONDAY) is None
    assert rule_unsupported_reason("FREQ=MONTHLY;BYMONTHDAY=3;BYSETPOS=1", MONDAY) is None
    assert rule_unsupported_reason("FREQ=YEARLY", MONDAY) is None
    assert rule_unsupported_reason("FREQ=YEARLY;BYMONTH=3;BYDAY=-1MO", berlin(2025, 3, 31, 9)) is None
    assert rule_unsupported_reason("FREQ=YEARLY;BYMONTH=1;BYMONTHDAY=28,29,30;BYSETPOS=-1",
                                   berlin(2025, 1, 30, 9)) is None


# --- canonical text ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("forms", "start", "canonical"),
    [
        (["FREQ=MONTHLY;BYDAY=2TU", "FREQ=MONTHLY;BYDAY=TU;BYSETPOS=2", "FREQ=MONTHLY;BYDAY=+2TU",
          "RRULE:freq=monthly;bysetpos=2;byday=tu;"],
         berlin(2025, 1, 14, 9), "FREQ=MONTHLY;BYDAY=TU;BYSETPOS=2"),
        (["FREQ=DAILY;UNTIL=20250310T235959Z", "FREQ=DAILY;UNTIL=20250310T080000Z", "FREQ=DAILY;UNTIL=20250310",
          "FREQ=DAILY;UNTIL=20250310T090000", "FREQ=DAILY;INTERVAL=1;UNTIL=20250311T075959Z"],
         MONDAY, "FREQ=DAILY;UNTIL=20250310T080000Z"),
        (["FREQ=DAILY;BYDAY=WE,MO", "FREQ=WEEKLY;BYDAY=MO,WE", "FREQ=WEEKLY;BYDAY=MO,WE;WKST=MO"],
         MONDAY, "FREQ=WEEKLY;BYDAY=MO,WE;WKST=MO"),
        (["FREQ=WEEKLY", "FREQ=WEEKLY;BYDAY=MO;WKST=MO"], MONDAY, "FREQ=WEEKLY;BYDAY=MO;WKST=MO"),
        (["FREQ=MONTHLY", "FREQ=MONTHLY;BYMONTHDAY=3"], MONDAY, "FREQ=MONTHLY;BYMONTHDAY=3"),
        (["FREQ=YEARLY", "FREQ=YEARLY;BYMONTH=3", "FREQ=YEARLY;BYMONTHDAY=3;BYMONTH=3"], MONDAY,
         "FREQ=YEARLY;BYMONTHDAY=3;BYMONTH=3"),
        (["FREQ=YEARLY;BYMONTH=3;BYDAY=-1MO", "FREQ=YEARLY;BYMONTH=3;BYDAY=MO;BYSETPOS=-1"],
         berlin(2025, 3, 31, 9), "FREQ=YEARLY;BYDAY=MO;BYMONTH=3;BYSETPOS=-1"),
        (["FREQ=MONTHLY;BYDAY=FR,TH,WE,TU,MO;BYSETPOS=-1;COUNT=4"], berlin(2025, 1, 31, 9),
         "FREQ=MONTHLY;COUNT=4;BYDAY=MO,TU,WE,TH,FR;BYSETPOS=-1"),
        (["FREQ=DAILY;UNTIL=20250310", "FREQ=DAILY;UNTIL=20250310T120000Z"], date(2025, 3, 3),
         "FREQ=DAILY;UNTIL=20250310"),
        (["FREQ=DAILY;UNTIL=20250310T235959", "FREQ=DAILY;UNTIL=20250310T090000Z"], datetime(2025, 3, 3, 9),
         "FREQ=DAILY;UNTIL=20250310T090000"),
    ],
)
def test_canonical_rrule_equal_for_equivalent_forms(forms: list[str], start: datetime | date, canonical: str) -> None:
    for form in forms:
        assert canonical_rrule(form, start) == canonical
    assert canonical_rrule(canonical, start) == canonical


def test_canonical_text_of_inexpressible_rules_orders_parts_and_keeps_until() -> None:
    rule = "byday=-1mo,1MO,TU,MO;bymonthday=-1,3,-3,1,3;until=20251231t000000z;interval=1;freq=hourly;wkst=su"
    canonical = canonical_rrule(rule, MONDAY)
    assert canonical == "FREQ=HOURLY;UNTIL=20251231T000000Z;BYDAY=MO,1MO,-1MO,TU;BYMONTHDAY=1,3,-3,-1;WKST=SU"
    assert canonical_rrule(canonical, MONDAY) == canonical
    assert canonical_rrule("FREQ=WEEKLY;BYDAY=TU", MONDAY) == "FREQ=WEEKLY;BYDAY=TU"  # DTSTART off the rule


@pytest.mark.parametrize(
    "rule",
    ["", "FREQ=FOO", "INTERVAL=2", "FREQ=DAILY;COUNT=2;UNTIL=20250101", "FREQ=DAILY;BYMONTH=13",
     "FREQ=DAILY;FOO=1", "FREQ=DAILY;FREQ=DAILY", "FREQ=DAILY;INTERVAL=0", "FREQ=DAILY;UNTIL=2025-01-01",
     "FREQ=DAILY;BYDAY=XX", "FREQ=MONTHLY;BYMONTHDAY=0", "FREQ=DAILY;BYHOUR=-1", "FREQ=DAILY;COUNT",
     "FREQ=WEEKLY;WKST=MONDAY", "FREQ=MONTHLY;BYDAY=54MO"],
)
def test_invalid_rrule_text_raises_invalid_icalendar(rule: str) -> None:
    with pytest.raises(InvalidICalendar):
        canonical_rrule(rule, MONDAY)
    with pytest.raises(InvalidICalendar):
        graph_from_rrule(rule, MONDAY, time_zone="UTC")


def test_graph_range_from_until_and_count() -> None:
    start = berlin(2025, 3, 3, 9)
    late = graph_from_rrule("FREQ=DAILY;UNTIL=20250310T235959Z", start, time_zone=WINDOWS_BERLIN)
    assert late["range"] == {"type": "endDate", "startDate": "2025-03-03", "endDate": "2025-03-10",
                             "recurrenceTimeZone": WINDOWS_BERLIN}
    early = graph_from_rrule("FREQ=DAILY;UNTIL=20250310T075959Z", start, time_zone=WINDOWS_BERLIN)
    assert early["range"]["endDate"] == "2025-03-09"
    assert graph_from_rrule("FREQ=DAILY;COUNT=7", start, time_zone="UTC")["range"] == {
        "type": "numbered", "startDate": "2025-03-03", "numberOfOccurrences": 7, "recurrenceTimeZone": "UTC"
    }
    assert graph_from_rrule("FREQ=DAILY", start, time_zone="UTC")["range"] == {
        "type": "noEnd", "startDate": "2025-03-03", "recurrenceTimeZone": "UTC"
    }


# --- crossing boundaries ----------------------------------------------------------------------
def moved(rid: datetime, new_start: datetime) -> Occurrence:
    return Occurrence(rid, Event(subject="Standup", start=new_start, end=new_start + timedelta(hours=1),
                                 timezone="Europe/Berlin"))


WEEKLY_MONDAYS = "FREQ=WEEKLY;BYDAY=MO;WKST=MO"


@pytest.mark.parametrize(
    ("overrides", "exdates", "crosses"),
    [
        ([moved(berlin(2025, 3, 10, 9), berlin(2025, 3, 12, 15))], [], False),
        ([moved(berlin(2025, 3, 10, 9), berlin(2025, 3, 4, 9))], [], False),
        ([moved(berlin(2025, 3, 10, 9), berlin(2025, 3, 17, 8))], [], True),  # onto the next date
        ([moved(berlin(2025, 3, 10, 9), berlin(2025, 3, 3, 18))], [], True),  # onto the previous date
        ([moved(berlin(2025, 3, 10, 9), berlin(2025, 3, 20, 9))], [], True),  # past the next
        ([moved(berlin(2025, 3, 10, 9), berlin(2025, 3, 20, 9))], [berlin(2025, 3, 17, 9)], False),
        ([moved(berlin(2025, 3, 10, 9), berlin(2025, 3, 20, 9)), moved(berlin(2025, 3, 17, 9),
                                                                       berlin(2025, 3, 21, 9))], [], False),
        ([moved(berlin(2025, 3, 10, 9), berlin(2025, 3, 22, 9)), moved(berlin(2025, 3, 17, 9),
                                                                       berlin(2025, 3, 21, 9))], [], True),
        ([moved(berlin(2025, 3, 3, 9), berlin(2025, 3, 1, 9))], [], False),  # first occurrence: no previous
        ([moved(berlin(2025, 3, 17, 9), berlin(2025, 3, 12, 9))], [berlin(2025, 3, 10, 9)], False),
    ],
)
def test_crossing_boundary_reason(overrides: list[Occurrence], exdates: list[datetime], crosses: bool) -> None:
    event = series(berlin(2025, 3, 3, 9), WEEKLY_MONDAYS, overrides=tuple(overrides), exdates=tuple(exdates))
    reason = crossing_boundary_reason(event)
    assert (reason is not None) == crosses
    if crosses:
        assert reason is not None and "ErrorOccurrenceCrossingBoundary" in reason
        assert graph_unsupported_reason(event) == reason


def test_crossing_boundary_of_a_finite_series_and_local_dates() -> None:
    # The last occurrence of a COUNT series has no next one; local dates are the series zone's.
    last = moved(berlin(2025, 3, 17, 9), berlin(2025, 3, 30, 9))
    assert crossing_boundary_reason(series(berlin(2025, 3, 3, 9), "FREQ=WEEKLY;COUNT=3;BYDAY=MO;WKST=MO",
                                           overrides=(last,))) is None
    # 23:30 UTC on Sunday the 16th is already Monday the 17th in Berlin.
    onto_next = moved(berlin(2025, 3, 10, 9), utc(2025, 3, 16, 23, 30))
    assert crossing_boundary_reason(series(berlin(2025, 3, 3, 9), WEEKLY_MONDAYS, overrides=(onto_next,)))
    yearly = moved(berlin(2026, 3, 3, 9), berlin(2026, 9, 1, 9))
    assert crossing_boundary_reason(series(berlin(2025, 3, 3, 9), "FREQ=YEARLY;BYMONTHDAY=3;BYMONTH=3",
                                           overrides=(yearly,))) is None


# --- recurrence ids ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "text"),
    [
        (date(2025, 3, 3), "20250303"),
        (berlin(2025, 3, 3, 9), "20250303T080000Z"),
        (berlin(2025, 7, 3, 9), "20250703T070000Z"),
        (datetime(2025, 3, 3, 9, 30, 15), "20250303T093015"),
        (utc(2025, 12, 31, 23, 59, 59), "20251231T235959Z"),
    ],
)
def test_recurrence_id_text_round_trips(value: datetime | date, text: str) -> None:
    assert recurrence_id_text(value) == text
    back = parse_recurrence_id_text(text, value)
    assert back == value and type(back) is type(value)
    if isinstance(value, datetime) and value.tzinfo is not None:
        assert isinstance(back, datetime) and back.tzinfo is value.tzinfo and back.hour == value.hour


@pytest.mark.parametrize("text", ["", "2025-03-03", "20250230", "20250303T250000Z", "20250303T0900", "x20250303"])
def test_parse_recurrence_id_text_rejects_bad_text(text: str) -> None:
    with pytest.raises(ValueError):
        parse_recurrence_id_text(text, MONDAY)


def test_crossing_boundary_looks_past_cancelled_occurrences() -> None:
    mondays = [berlin(2025, 3, 3, 9) + timedelta(weeks=k) for k in range(30)]
    cancelled = tuple(mondays[2:14])  # Mar 17 .. Jun 2 cancelled; next after Mar 10 is Jun 9
    ok = moved(mondays[1], berlin(2025, 6, 5, 9))
    assert crossing_boundary_reason(series(mondays[0], WEEKLY_MONDAYS, overrides=(ok,), exdates=cancelled)) is None
    onto = moved(mondays[1], berlin(2025, 6, 9, 7))
    assert crossing_boundary_reason(series(mondays[0], WEEKLY_MONDAYS, overrides=(onto,), exdates=cancelled))
    back = moved(mondays[14], berlin(2025, 3, 10, 12))  # onto the previous one, Mar 10
    assert crossing_boundary_reason(series(mondays[0], WEEKLY_MONDAYS, overrides=(back,), exdates=cancelled))


def test_crossing_boundary_with_many_overrides_of_a_long_series_is_quick() -> None:
    start = berlin(2005, 1, 3, 9)
    overrides = tuple(moved(berlin(2025, 1, 1, 9) + timedelta(days=7 * k), berlin(2025, 1, 1, 11) +
                            timedelta(days=7 * k)) for k in range(60))
    began = datetime.now()
    assert crossing_boundary_reason(series(start, "FREQ=DAILY", overrides=overrides)) is None
    assert datetime.now() - began < timedelta(seconds=5)

"""Property tests (hypothesis): Graph -> model -> iCalendar -> model -> Graph is stable.

Generated Graph events cover single and recurring events (every pattern type x range type),
zones with and without DST, all-day, and every field the model maps; the round trip through
iCalendar must give the same model fingerprint and the same Graph request body.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sync_core.convert.graph_json import event_from_graph, event_to_graph
from sync_core.convert.ical import event_from_ical, event_to_ical

ZONES = ["W. Europe Standard Time", "Eastern Standard Time", "India Standard Time", "UTC",
         "New Zealand Standard Time", "Lord Howe Standard Time"]
DAYS = ["sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday"]
INDEXES = ["first", "second", "third", "fourth", "last"]
WORDS = st.text(alphabet=st.characters(whitelist_categories=("Lu", "Ll", "Nd"), whitelist_characters=" .,-!?"),
                min_size=1, max_size=30).map(str.strip).filter(bool)


@st.composite
def patterns(draw: st.DrawFn, start: date) -> dict[str, Any]:
    kind = draw(st.sampled_from(["daily", "weekly", "absoluteMonthly", "relativeMonthly", "absoluteYearly",
                                 "relativeYearly"]))
    interval = draw(st.integers(1, 3))
    weekday = DAYS[(start.weekday() + 1) % 7]
    if kind == "daily":
        return {"type": kind, "interval": interval}
    if kind == "weekly":
        extra = draw(st.lists(st.sampled_from(DAYS), max_size=3))
        days = [d for d in DAYS if d in {weekday, *extra}]
        return {"type": kind, "interval": interval, "daysOfWeek": days,
                "firstDayOfWeek": draw(st.sampled_from(["sunday", "monday"]))}
    if kind == "absoluteMonthly":
        return {"type": kind, "interval": interval, "dayOfMonth": start.day}
    if kind == "absoluteYearly":
        return {"type": kind, "interval": 1, "dayOfMonth": start.day, "month": start.month}
    # The master starts on its pattern (Graph moves a start that is not to the first occurrence).
    week = (start.day - 1) // 7
    month_end = (date(start.year + start.month // 12, start.month % 12 + 1, 1) - timedelta(days=1)).day
    choices = ([INDEXES[week]] if week < 4 else []) + (["last"] if start.day + 7 > month_end else [])
    index = draw(st.sampled_from(choices))
    pattern = {"type": kind, "interval": interval if kind == "relativeMonthly" else 1,
               "daysOfWeek": [weekday], "index": index}
    if kind == "relativeYearly":
        pattern["month"] = start.month
    return pattern


@st.composite
def graph_events(draw: st.DrawFn) -> dict[str, Any]:
    all_day = draw(st.booleans())
    zone = "UTC" if all_day else draw(st.sampled_from(ZONES))
    start_day = date(2027, 1, 1) + timedelta(days=draw(st.integers(0, 364)))
    hour = 0 if all_day else draw(st.integers(0, 23))
    start = datetime(start_day.year, start_day.month, start_day.day, hour, draw(st.sampled_from([0, 15, 30])))
    length = timedelta(days=draw(st.integers(1, 3))) if all_day else timedelta(minutes=draw(st.sampled_from(
        [15, 30, 60, 90, 180])))
    payload: dict[str, Any] = {
        "id": "generated",
        "type": "singleInstance",
        "subject": draw(WORDS),
        "body": {"contentType": "text", "content": draw(st.one_of(st.just(""), WORDS))},
        "isAllDay": all_day,
        "start": {"dateTime": start.strftime("%Y-%m-%dT%H:%M:%S.0000000"), "timeZone": zone},
        "end": {"dateTime": (start + length).strftime("%Y-%m-%dT%H:%M:%S.0000000"), "timeZone": zone},
        "originalStartTimeZone": zone,
        "location": {"displayName": draw(st.one_of(st.just(""), WORDS))},
        "showAs": draw(st.sampled_from(["free", "tentative", "busy", "oof", "workingElsewhere"])),
        "sensitivity": draw(st.sampled_from(["normal", "private", "confidential"])),
        "importance": draw(st.sampled_from(["low", "normal", "high"])),
        "categories": draw(st.lists(WORDS, max_size=2, unique=True)),
        "isReminderOn": draw(st.booleans()),
        "reminderMinutesBeforeStart": draw(st.sampled_from([0, 5, 15, 1440])),
    }
    if draw(st.booleans()):
        payload["type"] = "seriesMaster"
        pattern = draw(patterns(start_day))
        rng: dict[str, Any] = {"type": draw(st.sampled_from(["noEnd", "numbered", "endDate"])),
                               "startDate": start_day.isoformat(), "recurrenceTimeZone": zone}
        if rng["type"] == "numbered":
            rng["numberOfOccurrences"] = draw(st.integers(1, 30))
        elif rng["type"] == "endDate":
            rng["endDate"] = (start_day + timedelta(days=draw(st.integers(0, 700)))).isoformat()
        payload["recurrence"] = {"pattern": pattern, "range": rng}
    return payload


def _without_tag(body: dict[str, Any]) -> dict[str, Any]:
    out = dict(body)
    out.pop("singleValueExtendedProperties", None)
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graph_events())
def test_graph_to_ical_and_back_is_stable(payload: dict[str, Any]) -> None:
    model = event_from_graph(payload).with_uid("generated@davbridge")
    ics = event_to_ical(model)
    again = event_from_ical(ics)
    assert again.fingerprint() == model.fingerprint(), (model, again, ics)
    assert _without_tag(event_to_graph(again)) == _without_tag(event_to_graph(model))
    # and a second lap changes nothing either
    assert event_from_ical(event_to_ical(again, previous=ics)).fingerprint() == model.fingerprint()

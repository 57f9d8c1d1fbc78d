"""devtools.graphsim: recurring series expanded as Microsoft Graph does, over real HTTPS.

Driven exactly like tests/test_graphsim.py (its fixtures and helpers are imported). Expected
dates are hand-computed from Graph's definitions (recurrencePattern / recurrenceRange); every
JSON body the stand-in emits during a test is validated against the v1.0 CSDL afterwards
(``csdl_checked``), and ``test_the_payload_check_catches_invalid_output`` shows that check fails
on bad output.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import date
from itertools import islice
from typing import Any

import pytest
from test_graphsim import UPN, Graph, create, event_body, follow_delta, g, sim  # noqa: F401

from devtools.graphsim import GraphSim
from devtools.graphsim import recurrence as rec_dates
from devtools.graphsim.csdl import load_schema
from devtools.graphsim.schemas import validate_error_body

EVENTS = f"/users/{UPN}/events"
TWO_YEARS = "startDateTime=2026-11-01T00:00:00Z&endDateTime=2028-11-01T00:00:00Z"
URL_SAFE_ID = re.compile(r"^[A-Za-z0-9_\-=]+$")
THIN = {"@odata.type", "@odata.etag", "id", "type", "seriesMasterId", "start", "end"}


# --- helpers ------------------------------------------------------------------------------------
def payload_problems(records: list[dict[str, Any]]) -> list[str]:
    """CSDL (and error-shape) issues in the response log records of Graph calls."""
    schema = load_schema()
    problems: list[str] = []
    for rec in records:
        path, status, body = rec["path"], rec["status"], rec["body"]
        if not path.startswith("/v1.0/"):
            continue
        parts = path.split("/")[2:]
        if status >= 400:
            issues = validate_error_body(body)
        elif "events" in parts or "calendarView" in parts:
            check = schema.validate_collection if "value" in body else schema.validate
            issues = [str(i) for i in check(body, "event")]
        elif parts[2:3] in (["calendar"], ["calendars"]):
            check = schema.validate_collection if "value" in body else schema.validate
            issues = [str(i) for i in check(body, "calendar")]
        else:
            issues = []
        problems += [f"{rec['method']} {path} -> {status}: {i}" for i in issues]
    return problems


@pytest.fixture(autouse=True)
def csdl_checked(sim: GraphSim) -> Iterator[None]:  # noqa: F811
    """After each test: every body the stand-in emitted must match the CSDL."""
    yield
    assert payload_problems(sim.response_log) == []


def series_body(
    subject: str,
    start: str,
    end: str,
    pattern: dict[str, Any],
    rng: dict[str, Any],
    zone: str = "UTC",
    **extra: Any,
) -> dict[str, Any]:
    return {
        "subject": subject,
        "start": {"dateTime": start, "timeZone": zone},
        "end": {"dateTime": end, "timeZone": zone},
        "recurrence": {"pattern": {"interval": 1, **pattern}, "range": rng},
        **extra,
    }


def new_series(g: Graph, *args: Any, **kw: Any) -> dict[str, Any]:  # noqa: F811
    resp = g.post(EVENTS, series_body(*args, **kw))
    assert resp.status_code == 201, resp.text
    body = dict(resp.json())
    assert body["type"] == "seriesMaster"
    return body


def all_pages(g: Graph, url: str, **kw: Any) -> list[dict[str, Any]]:  # noqa: F811
    out: list[dict[str, Any]] = []
    while url:
        resp = g.get(url, **kw)
        assert resp.status_code == 200, resp.text
        out += resp.json()["value"]
        url = resp.json().get("@odata.nextLink")
    return out


def instances(g: Graph, master_id: str, window: str = TWO_YEARS, **kw: Any) -> list[dict[str, Any]]:  # noqa: F811
    return all_pages(g, f"{EVENTS}/{master_id}/instances?{window}&$top=1000", **kw)


def days(items: list[dict[str, Any]]) -> list[str]:
    return [i["start"]["dateTime"][:10] for i in items]


def get(g: Graph, event_id: str, **kw: Any) -> dict[str, Any]:  # noqa: F811
    resp = g.get(f"{EVENTS}/{event_id}", **kw)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


# --- expansion: 6 pattern types x 3 range types over two years (UTC, 09:00-09:30) ----------------
# (pattern, first date, endDate, numberOfOccurrences, expected: noEnd, endDate, numbered)
# each expectation: (count, first dates, last dates) of the occurrences in 2026-11-01..2028-11-01
GRID = {
    "daily": (
        {"type": "daily", "interval": 3},
        "2026-11-02", "2027-01-31", 10,
        (244, ["2026-11-02", "2026-11-05", "2026-11-08"], ["2028-10-28", "2028-10-31"]),
        (31, ["2026-11-02", "2026-11-05"], ["2027-01-28", "2027-01-31"]),  # endDate is an occurrence: included
        (10, ["2026-11-02", "2026-11-05"], ["2026-11-26", "2026-11-29"]),
    ),
    "weekly": (  # every 2nd week (weeks start on Monday) on Mon+Thu, starting on a Thursday
        {"type": "weekly", "interval": 2, "daysOfWeek": ["thursday", "monday"], "firstDayOfWeek": "monday"},
        "2026-11-05", "2026-12-31", 4,
        (104, ["2026-11-05", "2026-11-16", "2026-11-19"], ["2028-10-19", "2028-10-30"]),
        (9, ["2026-11-05", "2026-11-16", "2026-11-19"], ["2026-12-28", "2026-12-31"]),
        (4, ["2026-11-05", "2026-11-16", "2026-11-19", "2026-11-30"], ["2026-11-30"]),
    ),
    "absoluteMonthly": (  # day 31 every 2nd month: the 30th in 30-day months
        {"type": "absoluteMonthly", "interval": 2, "dayOfMonth": 31},
        "2026-11-30", "2027-09-30", 3,
        (12, ["2026-11-30", "2027-01-31", "2027-03-31"], ["2028-07-31", "2028-09-30"]),
        (6, ["2026-11-30", "2027-01-31"], ["2027-07-31", "2027-09-30"]),
        (3, ["2026-11-30", "2027-01-31", "2027-03-31"], ["2027-03-31"]),
    ),
    "relativeMonthly": (  # the second Tuesday-or-Thursday of every 3rd month
        {"type": "relativeMonthly", "interval": 3, "daysOfWeek": ["tuesday", "thursday"], "index": "second"},
        "2026-11-05", "2027-11-04", 2,
        (8, ["2026-11-05", "2027-02-04", "2027-05-06"], ["2028-05-04", "2028-08-03"]),
        (5, ["2026-11-05", "2027-02-04"], ["2027-08-05", "2027-11-04"]),
        (2, ["2026-11-05", "2027-02-04"], ["2027-02-04"]),
    ),
    "absoluteYearly": (  # 29 February: the 28th in common years
        {"type": "absoluteYearly", "month": 2, "dayOfMonth": 29},
        "2027-02-28", "2028-02-28", 1,
        (2, ["2027-02-28", "2028-02-29"], ["2028-02-29"]),
        (1, ["2027-02-28"], ["2027-02-28"]),  # 2028-02-29 is after the end date
        (1, ["2027-02-28"], ["2027-02-28"]),
    ),
    "relativeYearly": (  # the last Sunday of March
        {"type": "relativeYearly", "month": 3, "daysOfWeek": ["sunday"], "index": "last"},
        "2027-03-28", "2028-03-25", 2,
        (2, ["2027-03-28", "2028-03-26"], ["2028-03-26"]),
        (1, ["2027-03-28"], ["2027-03-28"]),
        (2, ["2027-03-28", "2028-03-26"], ["2028-03-26"]),
    ),
}  # fmt: skip


@pytest.mark.parametrize("range_type", ["noEnd", "endDate", "numbered"])
@pytest.mark.parametrize("kind", list(GRID))
def test_each_pattern_and_range_expands_as_graph_defines(g: Graph, kind: str, range_type: str) -> None:  # noqa: F811
    pattern, first, end_date, count, *expected = GRID[kind]
    rng: dict[str, Any] = {"type": range_type, "startDate": first}
    if range_type == "endDate":
        rng["endDate"] = end_date
    if range_type == "numbered":
        rng["numberOfOccurrences"] = count
    master = new_series(g, kind, f"{first}T09:00:00", f"{first}T09:30:00", pattern, rng)
    assert master["start"]["dateTime"] == f"{first}T09:00:00.0000000"  # on the pattern: not moved
    assert master["recurrence"]["range"]["startDate"] == first
    want_count, want_first, want_last = expected[("noEnd", "endDate", "numbered").index(range_type)]

    got = instances(g, master["id"])
    assert len(got) == want_count
    assert days(got)[: len(want_first)] == want_first and days(got)[-len(want_last) :] == want_last
    assert days(got) == sorted(days(got))
    assert {i["type"] for i in got} == {"occurrence"} and {i["seriesMasterId"] for i in got} == {master["id"]}
    assert all(i["start"]["dateTime"][10:] == "T09:00:00.0000000" for i in got)
    assert all(i["end"]["dateTime"] == i["start"]["dateTime"][:11] + "09:30:00.0000000" for i in got)
    assert all(i["originalStart"] == i["start"]["dateTime"][:19] + "Z" for i in got)
    # calendarView lists the same occurrences (and never the master)
    view = all_pages(g, f"/users/{UPN}/calendarView?{TWO_YEARS}&$top=1000")
    assert [v["id"] for v in view] == [i["id"] for i in got]


def test_expansion_module_over_longer_spans() -> None:
    def dates(pattern: dict[str, Any], first: str, n: int) -> list[str]:
        full = {"interval": 1, "daysOfWeek": [], "firstDayOfWeek": "sunday", "index": "first", "dayOfMonth": 0,
                "month": 0, **pattern}  # fmt: skip
        rec = {"pattern": full, "range": {"type": "noEnd", "startDate": first}}
        return [d.isoformat() for d in islice(rec_dates.series_dates(rec), n)]

    # every 4th year on 29 February: leap years keep the 29th
    assert dates({"type": "absoluteYearly", "interval": 4, "month": 2, "dayOfMonth": 29}, "2028-02-29", 3) == [
        "2028-02-29", "2032-02-29", "2036-02-29"]  # fmt: skip
    # every 3rd year, the fourth weekday (Mon..Fri) of June
    weekdays = ["monday", "tuesday", "wednesday", "thursday", "friday"]
    assert dates({"type": "relativeYearly", "interval": 3, "month": 6, "daysOfWeek": weekdays, "index": "fourth"},
                 "2026-01-01", 3) == ["2026-06-04", "2029-06-06", "2032-06-04"]  # fmt: skip
    # firstDayOfWeek decides which Sunday belongs to the counted week (interval 2)
    sun = {"type": "weekly", "interval": 2, "daysOfWeek": ["sunday", "wednesday"]}
    assert dates({**sun, "firstDayOfWeek": "sunday"}, "2026-11-04", 4) == [
        "2026-11-04", "2026-11-15", "2026-11-18", "2026-11-29"]  # fmt: skip
    assert dates({**sun, "firstDayOfWeek": "monday"}, "2026-11-04", 4) == [
        "2026-11-04", "2026-11-08", "2026-11-18", "2026-11-22"]  # fmt: skip
    # the last day among several days of the week
    assert dates({"type": "relativeMonthly", "daysOfWeek": ["saturday", "sunday"], "index": "last"},
                 "2026-11-01", 3) == ["2026-11-29", "2026-12-27", "2027-01-31"]  # fmt: skip
    assert rec_dates.clamped_date(2027, 4, 31) == date(2027, 4, 30)


def test_day_31_is_clamped_to_the_last_day_of_shorter_months(g: Graph) -> None:  # noqa: F811
    master = new_series(g, "Month end", "2027-01-31T17:00:00", "2027-01-31T17:15:00",
                        {"type": "absoluteMonthly", "dayOfMonth": 31},
                        {"type": "numbered", "startDate": "2027-01-31", "numberOfOccurrences": 14})  # fmt: skip
    got = instances(g, master["id"], "startDateTime=2027-01-01T00:00:00Z&endDateTime=2029-01-01T00:00:00Z")
    assert days(got) == [
        "2027-01-31", "2027-02-28", "2027-03-31", "2027-04-30", "2027-05-31", "2027-06-30", "2027-07-31",
        "2027-08-31", "2027-09-30", "2027-10-31", "2027-11-30", "2027-12-31", "2028-01-31", "2028-02-29",
    ]  # fmt: skip


def test_occurrences_keep_their_wall_clock_time_across_dst(g: Graph) -> None:  # noqa: F811
    zone = "W. Europe Standard Time"
    three = {"type": "numbered", "startDate": "2027-03-22", "numberOfOccurrences": 3}
    weekly = new_series(g, "Standup", "2027-03-22T09:00:00", "2027-03-22T09:15:00",
                        {"type": "weekly", "daysOfWeek": ["monday"]}, three, zone=zone)  # fmt: skip
    window = "startDateTime=2027-03-01T00:00:00Z&endDateTime=2027-05-01T00:00:00Z"
    utc = instances(g, weekly["id"], window)
    assert [i["start"]["dateTime"] for i in utc] == [
        "2027-03-22T08:00:00.0000000", "2027-03-29T07:00:00.0000000", "2027-04-05T07:00:00.0000000"]  # fmt: skip
    assert [i["end"]["dateTime"][11:16] for i in utc] == ["08:15", "07:15", "07:15"]
    local = instances(g, weekly["id"], window, headers={"Prefer": f'outlook.timezone="{zone}"'})
    assert {i["start"]["dateTime"][11:] for i in local} == {"09:00:00.0000000"}
    assert {i["originalStartTimeZone"] for i in local} == {zone}
    assert [i["originalStart"] for i in local] == ["2027-03-22T08:00:00Z", "2027-03-29T07:00:00Z",
                                                   "2027-04-05T07:00:00Z"]  # fmt: skip

    # 02:30 does not exist on 2027-03-28 in Berlin: the offset before the gap (+01:00) applies
    gap = new_series(g, "Night job", "2027-03-27T02:30:00", "2027-03-27T02:45:00", {"type": "daily"},
                     {"type": "numbered", "startDate": "2027-03-27", "numberOfOccurrences": 3},
                     zone="Europe/Berlin")  # fmt: skip
    assert [i["start"]["dateTime"] for i in instances(g, gap["id"], window)] == [
        "2027-03-27T01:30:00.0000000", "2027-03-28T01:30:00.0000000", "2027-03-29T00:30:00.0000000"]  # fmt: skip


def test_a_start_off_the_pattern_moves_the_master_to_the_first_occurrence(g: Graph) -> None:  # noqa: F811
    zone = "Pacific Standard Time"
    master = new_series(g, "Wednesdays", "2026-11-23T10:00:00", "2026-11-23T11:30:00",  # a Monday
                        {"type": "weekly", "daysOfWeek": ["wednesday"]},
                        {"type": "noEnd", "startDate": "2026-11-23"}, zone=zone)  # fmt: skip
    local = {"Prefer": f'outlook.timezone="{zone}"'}
    moved = get(g, master["id"], headers=local)
    assert moved["start"]["dateTime"] == "2026-11-25T10:00:00.0000000"
    assert moved["end"]["dateTime"] == "2026-11-25T11:30:00.0000000"  # duration kept
    assert moved["recurrence"]["range"]["startDate"] == "2026-11-25"
    assert moved["recurrence"]["range"]["recurrenceTimeZone"] == zone

    friday = {"pattern": {"type": "weekly", "interval": 1, "daysOfWeek": ["friday"]},
              "range": {"type": "noEnd", "startDate": "2026-11-25"}}  # fmt: skip
    patched = g.patch(f"{EVENTS}/{master['id']}", {"recurrence": friday}, headers=local).json()
    assert patched["start"]["dateTime"] == "2026-11-27T10:00:00.0000000"
    assert patched["recurrence"]["range"]["startDate"] == "2026-11-27"

    monthly = {"type": "absoluteMonthly", "dayOfMonth": 5}
    too_short = {"type": "endDate", "startDate": "2026-11-23", "endDate": "2026-11-30"}
    ended = g.post(EVENTS, series_body("never", "2026-11-23T10:00:00", "2026-11-23T11:00:00", monthly, too_short))
    assert (ended.status_code, ended.json()["error"]["code"]) == (400, "ErrorPropertyValidationFailure")


def test_all_day_series_are_dates(g: Graph) -> None:  # noqa: F811
    zone = "Pacific Standard Time"
    body = {
        **series_body("Fridays off", "2026-11-25T00:00:00", "2026-11-26T00:00:00",  # a Wednesday
                      {"type": "weekly", "daysOfWeek": ["friday"]},
                      {"type": "numbered", "startDate": "2026-11-25", "numberOfOccurrences": 3}, zone=zone),
        "isAllDay": True,
    }  # fmt: skip
    resp = g.post(EVENTS, body)
    assert resp.status_code == 201, resp.text
    master = resp.json()
    assert (master["start"]["dateTime"], master["end"]["dateTime"]) == (
        "2026-11-27T00:00:00.0000000", "2026-11-28T00:00:00.0000000")  # fmt: skip
    got = instances(g, master["id"], headers={"Prefer": 'outlook.timezone="Tokyo Standard Time"'})
    assert [(i["start"]["dateTime"], i["end"]["dateTime"]) for i in got] == [
        ("2026-11-27T00:00:00.0000000", "2026-11-28T00:00:00.0000000"),
        ("2026-12-04T00:00:00.0000000", "2026-12-05T00:00:00.0000000"),
        ("2026-12-11T00:00:00.0000000", "2026-12-12T00:00:00.0000000"),
    ]
    assert all(i["isAllDay"] and i["start"]["timeZone"] == "Tokyo Standard Time" for i in got)
    assert [i["originalStart"] for i in got] == ["2026-11-27T08:00:00Z", "2026-12-04T08:00:00Z",
                                                 "2026-12-11T08:00:00Z"]  # fmt: skip
    g.delete(f"{EVENTS}/{got[1]['id']}")
    assert get(g, master["id"])["cancelledOccurrences"] == [f"OID.{master['id']}.2026-12-04"]


@pytest.mark.parametrize(
    ("pattern", "rng"),
    [
        ({"type": "daily", "interval": 0}, {"type": "noEnd"}),
        ({"type": "daily", "interval": -2}, {"type": "noEnd"}),
        ({"type": "absoluteMonthly", "dayOfMonth": 32}, {"type": "noEnd"}),
        ({"type": "absoluteYearly", "dayOfMonth": 1, "month": 13}, {"type": "noEnd"}),
        ({"type": "relativeMonthly", "daysOfWeek": ["monday"], "index": "fifth"}, {"type": "noEnd"}),
        ({"type": "weekly", "daysOfWeek": []}, {"type": "noEnd"}),
        ({"type": "relativeMonthly", "daysOfWeek": []}, {"type": "noEnd"}),
        ({"type": "relativeYearly", "month": 3}, {"type": "noEnd"}),
        ({"type": "daily"}, {"type": "endDate", "endDate": "2026-11-01"}),
        ({"type": "daily"}, {"type": "numbered", "numberOfOccurrences": 0}),
    ],
)
def test_invalid_recurrences_are_refused(g: Graph, pattern: dict[str, Any], rng: dict[str, Any]) -> None:  # noqa: F811
    body = series_body("x", "2026-11-02T09:00:00", "2026-11-02T10:00:00", pattern, {**rng, "startDate": "2026-11-02"})
    resp = g.post(EVENTS, body)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["code"] in ("ErrorPropertyValidationFailure", "RequestBodyRead")
    assert g.get(EVENTS).json()["value"] == []


# --- instances, ids, calendarView ---------------------------------------------------------------
def test_instances_are_readable_by_stable_url_safe_ids(sim: GraphSim, g: Graph) -> None:  # noqa: F811
    master = new_series(g, "Daily", "2026-11-02T09:00:00", "2026-11-02T09:30:00", {"type": "daily"},
                        {"type": "noEnd", "startDate": "2026-11-02"},
                        body={"contentType": "text", "content": "agenda"}, categories=["Blue category"])  # fmt: skip
    window = "startDateTime=2026-11-03T00:00:00Z&endDateTime=2026-11-06T00:00:00Z"
    first = instances(g, master["id"], window)
    again = instances(g, master["id"], window)
    assert [i["id"] for i in first] == [i["id"] for i in again] and len(first) == 3
    ids = [i["id"] for i in first]
    assert len(set(ids)) == 3 and all(URL_SAFE_ID.match(i) and i != master["id"] for i in ids)

    occ = g.get(f"{EVENTS}/{ids[0]}")
    assert occ.status_code == 200 and occ.headers["ETag"] == occ.json()["@odata.etag"]
    one = occ.json()
    assert one["type"] == "occurrence" and one["seriesMasterId"] == master["id"]
    assert one["originalStart"] == "2026-11-03T09:00:00Z" and one["originalStartTimeZone"] == "UTC"
    assert one["originalEndTimeZone"] == "UTC" and one["recurrence"] is None
    assert (one["subject"], one["categories"], one["bodyPreview"]) == ("Daily", ["Blue category"], "agenda")
    assert one["iCalUId"] != master["iCalUId"] and len({get(g, i)["iCalUId"] for i in ids}) == 3
    assert one["@odata.etag"] == f'W/"{get(g, master["id"])["changeKey"]}"'  # the series' change key
    cal = sim.default_calendar_id(UPN)
    assert g.get(f"/users/{UPN}/calendars/{cal}/events/{ids[0]}").json()["id"] == ids[0]
    other = g.post(f"/users/{UPN}/calendars", {"name": "Other"}).json()["id"]
    assert g.get(f"/users/{UPN}/calendars/{other}/events/{ids[0]}").status_code == 404
    assert g.get(f"{EVENTS}/{ids[0][:-6]}xAAA=").status_code in (400, 404)
    # before the series starts there is no such occurrence
    early = g.get(f"{EVENTS}/{ids[0]}".replace(ids[0], ids[0][:-8] + "AAAAAAA="))
    assert early.status_code in (400, 404)

    # the list of events holds the master only; calendarView the occurrences only
    assert [e["id"] for e in g.get(EVENTS).json()["value"]] == [master["id"]]
    view = g.get(f"/users/{UPN}/calendarView?{window}").json()["value"]
    assert [v["id"] for v in view] == ids and all(v["type"] == "occurrence" and "subject" in v for v in view)
    cal_view = g.get(f"/users/{UPN}/calendars/{cal}/calendarView?{window}").json()["value"]
    assert [v["id"] for v in cal_view] == ids
    # a subject change on the master shows in its occurrences, ids unchanged
    g.patch(f"{EVENTS}/{master['id']}", {"subject": "Daily sync"})
    assert [(i["id"], i["subject"]) for i in instances(g, master["id"], window)] == [(i, "Daily sync") for i in ids]


def test_instances_paging_bounds_and_non_masters(sim: GraphSim, g: Graph) -> None:  # noqa: F811
    master = new_series(g, "Daily", "2026-11-02T09:00:00", "2026-11-02T09:30:00", {"type": "daily"},
                        {"type": "numbered", "startDate": "2026-11-02", "numberOfOccurrences": 25})  # fmt: skip
    url = f"{EVENTS}/{master['id']}/instances?{TWO_YEARS}"
    first = g.get(url).json()
    assert len(first["value"]) == 10 and "$skip=10" in first["@odata.nextLink"]
    assert first["@odata.context"].endswith("/instances") and "/events('" in first["@odata.context"]
    pages = [first["value"]]
    link = first.get("@odata.nextLink")
    while link:
        page = g.get(link).json()
        pages.append(page["value"])
        link = page.get("@odata.nextLink")
    assert [len(p) for p in pages] == [10, 10, 5]
    got = days([i for p in pages for i in p])
    assert got[0] == "2026-11-02" and got[-1] == "2026-11-26" and len(set(got)) == 25
    selected = g.get(url, params={"$top": "2", "$select": "subject,start"}).json()["value"]
    assert set(selected[0]) == {"@odata.etag", "id", "subject", "start"}
    cal = sim.default_calendar_id(UPN)
    by_cal = g.get(f"/users/{UPN}/calendars/{cal}/events/{master['id']}/instances?{TWO_YEARS}&$top=5")
    assert len(by_cal.json()["value"]) == 5
    by_primary = g.get(f"/users/{UPN}/calendar/events/{master['id']}/instances?{TWO_YEARS}&$top=5")
    assert len(by_primary.json()["value"]) == 5

    missing = g.get(f"{EVENTS}/{master['id']}/instances")
    assert (missing.status_code, missing.json()["error"]["code"]) == (400, "ErrorInvalidParameter")
    single = create(g, "single")
    assert g.get(f"{EVENTS}/{single['id']}/instances?{TWO_YEARS}").json()["value"] == []
    occurrence = first["value"][0]["id"]
    assert g.get(f"{EVENTS}/{occurrence}/instances?{TWO_YEARS}").json()["value"] == []
    assert g.get(f"{EVENTS}/AAMkADnothere/instances?{TWO_YEARS}").status_code == 404


# --- exceptions, cancellations, the master ---------------------------------------------------------
def weekly_wednesdays(g: Graph, **extra: Any) -> dict[str, Any]:  # noqa: F811
    return new_series(g, "Weekly", "2026-11-04T09:00:00", "2026-11-04T10:00:00",
                      {"type": "weekly", "daysOfWeek": ["wednesday"]},
                      {"type": "numbered", "startDate": "2026-11-04", "numberOfOccurrences": 6}, **extra)  # fmt: skip


def at(day: str, hour: int = 9, minutes: int = 0) -> dict[str, str]:
    return {"dateTime": f"{day}T{hour:02d}:{minutes:02d}:00", "timeZone": "UTC"}


def test_patching_an_occurrence_makes_an_exception(g: Graph) -> None:  # noqa: F811
    master = weekly_wednesdays(g)
    occ = instances(g, master["id"])  # 11-04 11-11 11-18 11-25 12-02 12-09
    url = f"{EVENTS}/{occ[1]['id']}"
    stale = g.patch(url, {"subject": "x"}, headers={"If-Match": 'W/"stale"'})
    assert (stale.status_code, stale.json()["error"]["code"]) == (412, "ErrorIrresolvableConflict")
    moved = g.patch(url, {"subject": "Moved", "start": at("2026-11-12", 14), "end": at("2026-11-12", 15)},
                    headers={"If-Match": occ[1]["@odata.etag"]})  # fmt: skip
    assert moved.status_code == 200, moved.text
    exc = moved.json()
    assert (exc["id"], exc["type"], exc["subject"]) == (occ[1]["id"], "exception", "Moved")
    assert exc["originalStart"] == "2026-11-11T09:00:00Z" and exc["start"]["dateTime"].startswith("2026-11-12T14")
    after = get(g, master["id"])
    assert after["changeKey"] != master["changeKey"] and after["lastModifiedDateTime"] > master["lastModifiedDateTime"]
    assert after["subject"] == "Weekly" and after["cancelledOccurrences"] == []
    assert get(g, occ[1]["id"])["type"] == "exception"

    listed = instances(g, master["id"])
    assert [i["type"] for i in listed] == ["exception"] + ["occurrence"] * 5  # exceptions first, as documented
    assert days(listed) == ["2026-11-12", "2026-11-04", "2026-11-18", "2026-11-25", "2026-12-02", "2026-12-09"]
    view = g.get(f"/users/{UPN}/calendarView?{TWO_YEARS}").json()["value"]
    assert days(view) == ["2026-11-04", "2026-11-12", "2026-11-18", "2026-11-25", "2026-12-02", "2026-12-09"]
    assert view[1]["subject"] == "Moved"
    expanded = get(g, master["id"], params={"$expand": "exceptionOccurrences"})
    assert [e["id"] for e in expanded["exceptionOccurrences"]] == [occ[1]["id"]]
    assert "exceptionOccurrences" not in get(g, master["id"])

    # crossing a neighbour's (current) date: 400
    def move(i: int, day: str) -> tuple[int, str]:
        resp = g.patch(f"{EVENTS}/{occ[i]['id']}", {"start": at(day, 8), "end": at(day, 9)})
        return resp.status_code, resp.json()["error"]["code"] if resp.status_code >= 400 else "ok"

    crossing = (400, "ErrorOccurrenceCrossingBoundary")
    assert move(2, "2026-11-12") == crossing  # on the moved previous occurrence's date
    assert move(2, "2026-11-25") == crossing  # on the next occurrence's date
    assert move(2, "2026-11-30") == crossing  # beyond it
    assert move(0, "2026-11-01") == (200, "ok")  # the first has no previous neighbour
    assert move(2, "2026-11-13") == (200, "ok")
    assert move(5, "2027-01-20") == (200, "ok")  # the last (numbered) has no next neighbour
    assert move(4, "2027-01-20") == crossing
    assert get(g, occ[2]["id"])["start"]["dateTime"].startswith("2026-11-13T08")
    refused = g.patch(f"{EVENTS}/{occ[3]['id']}", {"recurrence": {"pattern": {"type": "daily", "interval": 1},
                                                                  "range": {"type": "noEnd",
                                                                            "startDate": "2026-11-25"}}})  # fmt: skip
    assert refused.status_code == 400


def test_deleting_an_occurrence_cancels_it(g: Graph) -> None:  # noqa: F811
    master = weekly_wednesdays(g)
    occ = instances(g, master["id"])
    _, link = follow_delta(g, f"/users/{UPN}/calendarView/delta?{TWO_YEARS}")
    assert g.delete(f"{EVENTS}/{occ[2]['id']}", headers={"If-Match": 'W/"old"'}).status_code == 412
    assert g.delete(f"{EVENTS}/{occ[2]['id']}", headers={"If-Match": occ[2]["@odata.etag"]}).status_code == 204
    gone = g.get(f"{EVENTS}/{occ[2]['id']}")
    assert (gone.status_code, gone.json()["error"]["code"]) == (404, "ErrorItemNotFound")
    assert g.delete(f"{EVENTS}/{occ[2]['id']}").status_code == 404
    after = get(g, master["id"])
    assert after["cancelledOccurrences"] == [f"OID.{master['id']}.2026-11-18"]
    assert after["changeKey"] != master["changeKey"]
    # numbered counts the cancelled occurrence: still ends on 12-09
    assert days(instances(g, master["id"])) == ["2026-11-04", "2026-11-11", "2026-11-25", "2026-12-02", "2026-12-09"]
    assert occ[2]["id"] not in [v["id"] for v in g.get(f"/users/{UPN}/calendarView?{TWO_YEARS}").json()["value"]]

    pages, _ = follow_delta(g, link)
    items = [e for p in pages for e in p]
    changed_master = [e for e in items if e["id"] == master["id"]]
    assert changed_master and changed_master[0]["changeKey"] == after["changeKey"]
    assert {"@odata.type": "#microsoft.graph.event", "id": occ[2]["id"], "@removed": {"reason": "deleted"}} in items
    assert {e["id"] for e in items if "@removed" not in e} == {master["id"]} | {o["id"] for i, o in enumerate(occ)
                                                                                if i != 2}  # fmt: skip


def test_a_new_pattern_start_or_end_resets_exceptions_but_other_fields_keep_them(g: Graph) -> None:  # noqa: F811
    master = weekly_wednesdays(g)
    occ = instances(g, master["id"])
    g.patch(f"{EVENTS}/{occ[1]['id']}", {"subject": "Special"})
    g.delete(f"{EVENTS}/{occ[3]['id']}")

    # other fields of the master: exceptions and cancellations stay
    g.patch(f"{EVENTS}/{master['id']}", {"subject": "Weekly (renamed)", "start": at("2026-11-04")})  # same start
    listed = {i["id"]: i for i in instances(g, master["id"])}
    assert listed[occ[1]["id"]]["subject"] == "Special" and listed[occ[1]["id"]]["type"] == "exception"
    assert listed[occ[0]["id"]]["subject"] == "Weekly (renamed)" and occ[3]["id"] not in listed
    assert len(get(g, master["id"])["cancelledOccurrences"]) == 1

    # a different end (or start, or pattern): every exception and cancellation is gone
    g.patch(f"{EVENTS}/{master['id']}", {"end": at("2026-11-04", 10, 30)})
    reset = get(g, master["id"], params={"$expand": "exceptionOccurrences"})
    assert reset["cancelledOccurrences"] == [] and reset["exceptionOccurrences"] == []
    listed = {i["id"]: i for i in instances(g, master["id"])}
    assert len(listed) == 6 and {i["type"] for i in listed.values()} == {"occurrence"}
    assert listed[occ[1]["id"]]["subject"] == "Weekly (renamed)"  # same original start: same id, plain again

    g.patch(f"{EVENTS}/{occ[1]['id']}", {"subject": "Special again"})
    _, link = follow_delta(g, f"/users/{UPN}/calendarView/delta?{TWO_YEARS}")
    every_2nd = {"pattern": {"type": "weekly", "interval": 2, "daysOfWeek": ["wednesday"]},
                 "range": {"type": "numbered", "startDate": "2026-11-04", "numberOfOccurrences": 6}}  # fmt: skip
    g.patch(f"{EVENTS}/{master['id']}", {"recurrence": every_2nd})
    got = instances(g, master["id"])
    assert days(got) == ["2026-11-04", "2026-11-18", "2026-12-02", "2026-12-16", "2026-12-30", "2027-01-13"]
    assert {i["type"] for i in got} == {"occurrence"}
    assert g.get(f"{EVENTS}/{occ[1]['id']}").status_code == 404  # 11-11 is no longer an occurrence
    pages, _ = follow_delta(g, link)
    items = [e for p in pages for e in p]
    assert [e["id"] for e in items if "@removed" not in e] == [master["id"]] + [i["id"] for i in got]
    assert [e["id"] for e in items if "@removed" in e] == [occ[1]["id"], occ[3]["id"], occ[5]["id"]]


def test_deleting_the_master_deletes_the_series(g: Graph) -> None:  # noqa: F811
    master = weekly_wednesdays(g)
    occ = instances(g, master["id"])
    g.patch(f"{EVENTS}/{occ[0]['id']}", {"subject": "first"})
    assert g.delete(f"{EVENTS}/{master['id']}").status_code == 204
    assert g.get(f"{EVENTS}/{master['id']}").status_code == 404
    assert all(g.get(f"{EVENTS}/{o['id']}").status_code == 404 for o in occ)
    assert g.get(f"/users/{UPN}/calendarView?{TWO_YEARS}").json()["value"] == []


# --- delta ------------------------------------------------------------------------------------------
def test_delta_lists_the_master_thin_occurrences_and_full_exceptions(sim: GraphSim, g: Graph) -> None:  # noqa: F811
    single = create(g, "single", day=3)
    master = weekly_wednesdays(g, body={"contentType": "text", "content": "notes"})
    occ = instances(g, master["id"])
    g.patch(f"{EVENTS}/{occ[4]['id']}", {"subject": "Exception"})
    window = "startDateTime=2026-11-01T00:00:00Z&endDateTime=2026-12-05T00:00:00Z"  # holds the first five

    pages, link = follow_delta(g, f"/users/{UPN}/calendarView/delta?{window}", page_size=2)
    assert [len(p) for p in pages] == [2, 2, 2, 1]  # a series spans pages
    items = [e for p in pages for e in p]
    assert [e["id"] for e in items] == [single["id"], master["id"]] + [o["id"] for o in occ[:5]]
    by_id = {e["id"]: e for e in items}
    assert by_id[master["id"]]["type"] == "seriesMaster" and by_id[master["id"]]["bodyPreview"] == "notes"
    for o in occ[:4]:
        thin = by_id[o["id"]]
        assert set(thin) == THIN, thin
        assert (thin["type"], thin["seriesMasterId"]) == ("occurrence", master["id"])
        assert thin["@odata.etag"] == f'W/"{get(g, master["id"])["changeKey"]}"'
    exc = by_id[occ[4]["id"]]
    assert exc["type"] == "exception" and exc["subject"] == "Exception" and "originalStart" in exc

    pages, link = follow_delta(g, link)
    assert pages == [[]]
    # a subject change of the master: the master and its instances in the window again
    g.patch(f"{EVENTS}/{master['id']}", {"subject": "Renamed"})
    pages, link = follow_delta(g, link)
    items = [e for p in pages for e in p]
    assert items[0]["id"] == master["id"] and items[0]["subject"] == "Renamed"
    assert [e["id"] for e in items[1:]] == [o["id"] for o in occ[:5]] and not any("@removed" in e for e in items)

    # an exception moved out of the window: @removed for it, the rest again
    g.patch(f"{EVENTS}/{occ[4]['id']}", {"start": at("2026-12-08"), "end": at("2026-12-08", 10)})
    pages, link = follow_delta(g, link)
    items = [e for p in pages for e in p]
    assert [e["id"] for e in items if "@removed" in e] == [occ[4]["id"]]

    # the series deleted: @removed for the master and every instance the client saw
    g.delete(f"{EVENTS}/{master['id']}")
    pages, link = follow_delta(g, link, page_size=3)
    removed = [e["id"] for p in pages for e in p]
    assert removed == [master["id"]] + [o["id"] for o in occ[:4]]
    assert all(set(e) == {"@odata.type", "id", "@removed"} for p in pages for e in p)

    # 410 and empty pages still work with series around
    weekly_wednesdays(g)
    sim.inject_empty_delta_pages(1)
    pages, link = follow_delta(g, link)
    assert pages[0] == [] and len([e for p in pages for e in p]) == 6
    sim.expire_delta_tokens()
    assert g.get(link).status_code == 410


def test_delta_round_one_and_instances_of_another_calendar(sim: GraphSim, g: Graph) -> None:  # noqa: F811
    cal = sim.add_calendar(UPN, "Team")
    body = series_body("Team daily", "2026-11-02T09:00:00", "2026-11-02T09:15:00", {"type": "daily"},
                       {"type": "endDate", "startDate": "2026-11-02", "endDate": "2026-11-04"})  # fmt: skip
    master = g.post(f"/users/{UPN}/calendars/{cal}/events", body).json()
    pages, _ = follow_delta(g, f"/users/{UPN}/calendars/{cal}/calendarView/delta?{TWO_YEARS}")
    items = [e for p in pages for e in p]
    assert [e.get("type") for e in items] == ["seriesMaster", "occurrence", "occurrence", "occurrence"]
    pages, _ = follow_delta(g, f"/users/{UPN}/calendarView/delta?{TWO_YEARS}")
    assert pages == [[]]  # the primary calendar has none of them
    got = all_pages(g, f"/users/{UPN}/calendars/{cal}/events/{master['id']}/instances?{TWO_YEARS}")
    assert days(got) == ["2026-11-02", "2026-11-03", "2026-11-04"]


# --- the CSDL check itself ------------------------------------------------------------------------------
def test_the_payload_check_catches_invalid_output(g: Graph) -> None:  # noqa: F811
    master = weekly_wednesdays(g)
    occ = instances(g, master["id"])[0]
    good = {"method": "GET", "path": f"/v1.0{EVENTS}/x", "query": {}, "status": 200, "body": occ}
    assert payload_problems([good]) == []
    beta_only = {**good, "body": {**occ, "occurrenceId": f"OID.{master['id']}.2026-11-04"}}  # not in v1.0
    bad_type = {**good, "body": {**occ, "type": "instance"}}
    thin_bad = {**good, "path": f"/v1.0/users/{UPN}/calendarView/delta",
                "body": {"value": [{"id": "x", "start": {"dateTime": None}}]}}  # fmt: skip
    problems = payload_problems([beta_only, bad_type, thin_bad])
    assert len(problems) == 3, problems
    assert "'occurrenceId' is not a property" in problems[0] and "eventType" in problems[1]
    assert "must not be null" in problems[2]

"""The iCalendar corpus (tests/corpus/, shaped like exports of six products) against its
hand-written expected Graph form, and occurrence-set equality over two years:

- every corpus item converts to its expected Graph request body (or names its fallback);
- every recurring item written to the Graph stand-in through the product's Graph side gives
  the same instants, durations and subjects as recurring-ical-events expanding the original
  file (the stand-in expands Graph patterns by itself, never through the product's code);
- every pattern type x range type created in the stand-in, read by the product and written as
  iCalendar expands (recurring-ical-events) to what the stand-in lists in ``/instances``;
- every fallback item expands in the product exactly as recurring-ical-events expands it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import icalendar
import pytest
import recurring_ical_events
from icalendar.timezone import tzp

from devtools.clients import GraphUserApp
from devtools.graphsim import GraphSim
from sync_core.convert.graph_json import event_to_graph
from sync_core.convert.ical import event_from_ical, event_to_ical
from sync_core.convert.recurrence import expand, graph_unsupported_reason
from sync_core.convert.timezones import windows_to_iana
from sync_core.model import Event, instant_text
from sync_core.sides.graph_http import GraphAuth, GraphClient, GraphCredentials
from sync_core.sides.graph_side import GraphCalendar

CORPUS = Path(__file__).parent / "corpus"
FILES = sorted(CORPUS.glob("*/*.ics"))
TENANT, CLIENT_ID, SECRET = "corpus-tenant", "corpus-app", "corpus-secret"
TWO_YEARS = timedelta(days=731)


def expected_of(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.with_suffix("").with_suffix(".expected.json").read_text()))


def test_the_corpus_is_big_enough_and_covers_every_source() -> None:
    assert len(FILES) >= 50
    assert {p.parent.name for p in FILES} == {"outlook", "google", "apple", "zoho", "thunderbird", "nextcloud"}
    assert all(p.with_suffix("").with_suffix(".expected.json").exists() for p in FILES)


# --- expected Graph form ----------------------------------------------------------------------------
def _local_wall(value: datetime | date, zone_name: str | None) -> str:
    if isinstance(value, datetime):
        if value.tzinfo is not None and zone_name:
            value = value.astimezone(ZoneInfo(zone_name))
        return value.replace(tzinfo=None).strftime("%Y-%m-%dT%H:%M:%S")
    return value.isoformat()


def _series_zone(expected: dict[str, Any], event: Event) -> str | None:
    rng = expected["graph"].get("recurrence", {}).get("range", {})
    name = rng.get("recurrenceTimeZone")
    return windows_to_iana(name) if name and not event.all_day else event.timezone


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_corpus_item_converts_to_its_expected_graph_form(path: Path) -> None:
    expected = expected_of(path)
    event = event_from_ical(path.read_text())
    reason = graph_unsupported_reason(event) if event.recurrence is not None else None
    if "fallback" in expected:
        assert reason is not None and expected["fallback"].lower() in reason.lower(), reason
        return
    assert reason is None, reason
    body = event_to_graph(event, uid_tag=event.uid)
    for key, value in expected["graph"].items():
        got = body.get(key)
        if key == "categories":
            assert sorted(got or []) == sorted(value)
        elif key in ("start", "end"):
            assert got == {"dateTime": value["dateTime"][:19], "timeZone": value["timeZone"]}, key
        else:
            assert got == value, key
    if "reminderMinutesBeforeStart" not in expected["graph"] and not expected["graph"].get("isReminderOn"):
        assert body.get("isReminderOn") is False
    zone_name = _series_zone(expected, event)
    assert sorted(
        (d.isoformat() if not isinstance(d, datetime) else _local_wall(d, zone_name)[:10]) for d in event.exdates
    ) == sorted(expected.get("cancelled", []))
    exceptions = [
        {"originalStart": _local_wall(o.recurrence_id, zone_name), "start": _local_wall(o.event.start, zone_name),
         "end": _local_wall(o.event.end, zone_name), "subject": o.event.subject}
        for o in event.overrides
    ]
    want = [{k: e[k] for k in ("originalStart", "start", "end", "subject") if k in e}
            for e in expected.get("exceptions", [])]
    assert _same_prefixes(exceptions, want), (exceptions, want)
    if event.recurrence is not None:
        assert _first_occurrences(event, zone_name) == expected["first_occurrences"]


def _same_prefixes(got: list[dict[str, str]], want: list[dict[str, str]]) -> bool:
    """The same exceptions; an expected value may be a prefix (a date only, for all-day series)."""
    if len(got) != len(want):
        return False
    for g, w in zip(sorted(got, key=lambda e: e["originalStart"]), sorted(want, key=lambda e: e["originalStart"]),
                    strict=True):
        if any(not g[k].startswith(w[k]) for k in w):
            return False
    return True


def _first_occurrences(event: Event, zone_name: str | None) -> list[str]:
    assert event.recurrence is not None
    low = datetime(1970, 1, 1, tzinfo=UTC)
    starts = expand(event.recurrence.rule, event.start, window_start=low, window_end=low + timedelta(days=40000),
                    rdates=event.recurrence.rdates, exdates=event.exdates, limit=100000)[:10]
    moved = {instant_text(o.recurrence_id): o.event.start for o in event.overrides}
    values = sorted((moved.get(instant_text(s), s) for s in starts), key=lambda v: instant_text(v))
    return [_local_wall(v, zone_name) for v in values[:3]]


# --- occurrence sets --------------------------------------------------------------------------------
def _key(start: datetime | date, end: datetime | date, subject: str) -> tuple[str, str, str]:
    if not isinstance(start, datetime):
        assert not isinstance(end, datetime)
        return start.isoformat(), f"{(end - start).days}d", subject
    assert isinstance(end, datetime)
    a = (start if start.tzinfo else start.replace(tzinfo=UTC)).astimezone(UTC)
    b = (end if end.tzinfo else end.replace(tzinfo=UTC)).astimezone(UTC)  # elapsed, not wall-clock
    return a.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ"), f"{int((b - a).total_seconds())}s", subject


def ical_occurrences(ics: str, start: datetime, end: datetime) -> set[tuple[str, str, str]]:
    # icalendar caches custom VTIMEZONEs process-wide by TZID (the product never uses that
    # cache): another file's "Customized Time Zone" must not leak into this reference.
    tzp._TZP__tz_cache.clear()  # type: ignore[attr-defined]
    calendar = icalendar.Calendar.from_ical(ics)
    out = set()
    for component in recurring_ical_events.of(calendar).between(start, end):
        if str(component.get("STATUS", "")).upper() == "CANCELLED":
            continue  # Google's way of cancelling one occurrence; it does not occur
        begin = component["DTSTART"].dt
        finish = component["DTEND"].dt if "DTEND" in component else begin + component["DURATION"].dt
        out.add(_key(begin, finish, str(component.get("SUMMARY", ""))))
    return out


def graph_occurrences(items: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    out = set()
    for item in items:
        begin = datetime.fromisoformat(item["start"]["dateTime"][:19])
        finish = datetime.fromisoformat(item["end"]["dateTime"][:19])
        assert item["start"]["timeZone"] == "UTC"
        if item.get("isAllDay"):
            out.add(_key(begin.date(), finish.date(), item["subject"]))
        else:
            out.add(_key(begin.replace(tzinfo=UTC), finish.replace(tzinfo=UTC), item["subject"]))
    return out


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GraphSim]:
    with GraphSim(state_dir=tmp_path_factory.mktemp("corpus-sim")) as graph_sim:
        graph_sim.register_app(TENANT, CLIENT_ID, client_secret=SECRET)
        yield graph_sim


@pytest.fixture(scope="module")
def client(sim: GraphSim) -> GraphClient:
    creds = GraphCredentials(tenant_id=TENANT, client_id=CLIENT_ID, client_secret=SECRET,
                             authority_host=sim.authority_host)
    return GraphClient(GraphAuth(creds, verify=sim.ca_path), base_url=sim.graph_url, verify=sim.ca_path)


@pytest.fixture(scope="module")
def person(sim: GraphSim) -> GraphUserApp:
    return GraphUserApp(sim.graph_url, sim.authority_host, TENANT, CLIENT_ID, SECRET, sim.ca_path)


def _range_of(event: Event) -> tuple[datetime, datetime]:
    first = event.start if isinstance(event.start, datetime) else datetime(
        event.start.year, event.start.month, event.start.day)
    first = first if first.tzinfo else first.replace(tzinfo=UTC)
    low = first.astimezone(UTC) - timedelta(days=2)
    return low, low + TWO_YEARS


FALLBACK = [p for p in FILES if "fallback" in expected_of(p)]
GRAPH_HOLDS = [p for p in FILES if "fallback" not in expected_of(p)]


@pytest.mark.parametrize("path", GRAPH_HOLDS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_corpus_item_has_the_same_occurrences_in_the_graph_stand_in(
        path: Path, sim: GraphSim, client: GraphClient, person: GraphUserApp) -> None:
    ics = path.read_text()
    event = event_from_ical(ics)
    low, high = _range_of(event)
    upn = f"corpus-{uuid.uuid4().hex[:8]}@contoso.test"
    sim.add_user(upn)
    side = GraphCalendar(client, upn, window=(low, high))
    written = side.create(event, idempotency_key=f"corpus-{uuid.uuid4().hex}")
    if event.recurrence is None:
        items = [person.get(upn, written.id)]
    else:
        items = person.instances(upn, written.id, low.strftime("%Y-%m-%dT%H:%M:%SZ"),
                                 high.strftime("%Y-%m-%dT%H:%M:%SZ"))
    assert graph_occurrences(items) == ical_occurrences(ics, low, high)
    # and what the product reads back is the series it wrote
    (again,) = side.get([written.id])
    assert again.event is not None
    if not (isinstance(event.start, datetime) and event.start.tzinfo is None):  # floating comes back zoned
        assert again.event.fingerprint() == event.clipped(low, high).fingerprint()


@pytest.mark.parametrize("path", FALLBACK, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_corpus_fallback_series_expands_as_recurring_ical_events_does(path: Path) -> None:
    ics = path.read_text()
    event = event_from_ical(ics)
    assert event.recurrence is not None
    low, high = _range_of(event)
    starts = expand(event.recurrence.rule, event.start, window_start=low, window_end=high, duration=event.duration,
                    rdates=event.recurrence.rdates, exdates=event.exdates)
    moved = {instant_text(o.recurrence_id): o.event for o in event.overrides}
    ours = set()
    for start in starts:
        occurrence = moved.get(instant_text(start)) or event.occurrence_at(start)
        ours.add(_key(occurrence.start, occurrence.end, occurrence.subject))
    reference = ical_occurrences(ics, low, high)
    if "dtstart" in expected_of(path)["fallback"] and "COUNT=" in event.recurrence.rule:
        # RFC 5545 3.3.10: "The DTSTART property value always counts as the first occurrence"
        # for COUNT. recurring-ical-events (dateutil) adds an off-rule DTSTART on top of COUNT
        # rule instances; the product follows the RFC, so the reference has one more, the last.
        reference.discard(max(reference))
    assert ours == reference


PATTERNS: dict[str, dict[str, Any]] = {
    "daily": {"type": "daily", "interval": 2},
    "weekly": {"type": "weekly", "interval": 2, "daysOfWeek": ["monday", "thursday"], "firstDayOfWeek": "sunday"},
    "absoluteMonthly": {"type": "absoluteMonthly", "interval": 1, "dayOfMonth": 31},
    "relativeMonthly": {"type": "relativeMonthly", "interval": 1, "daysOfWeek": ["friday"], "index": "last"},
    "absoluteYearly": {"type": "absoluteYearly", "interval": 1, "dayOfMonth": 29, "month": 2},
    "relativeYearly": {"type": "relativeYearly", "interval": 1, "daysOfWeek": ["sunday"], "index": "last",
                       "month": 3},
}
RANGES = {"noEnd": {}, "numbered": {"numberOfOccurrences": 9}, "endDate": {"endDate": "2028-10-31"}}


@pytest.mark.parametrize("range_type", list(RANGES))
@pytest.mark.parametrize("pattern_type", list(PATTERNS))
def test_every_pattern_and_range_expands_the_same_on_both_sides(
        pattern_type: str, range_type: str, sim: GraphSim, client: GraphClient, person: GraphUserApp) -> None:
    upn = f"matrix-{uuid.uuid4().hex[:8]}@contoso.test"
    sim.add_user(upn)
    zone = "W. Europe Standard Time"
    master = person.create_raw(upn, {
        "subject": f"{pattern_type} {range_type}",
        "start": {"dateTime": "2027-01-04T09:30:00", "timeZone": zone},
        "end": {"dateTime": "2027-01-04T10:15:00", "timeZone": zone},
        "recurrence": {"pattern": PATTERNS[pattern_type],
                       "range": {"type": range_type, "startDate": "2027-01-04", "recurrenceTimeZone": zone,
                                 **RANGES[range_type]}},
    })
    low = datetime(2027, 1, 1, tzinfo=UTC)
    high = low + TWO_YEARS
    window = (low.strftime("%Y-%m-%dT%H:%M:%SZ"), high.strftime("%Y-%m-%dT%H:%M:%SZ"))
    instances = sorted(person.instances(upn, master["id"], *window), key=lambda i: i["start"]["dateTime"])
    if len(instances) >= 4:  # an exception and a cancelled occurrence travel with the series
        person.update(upn, instances[1]["id"], subject="moved and renamed",
                      start={"dateTime": instances[1]["start"]["dateTime"][:11] + "15:00:00", "timeZone": "UTC"},
                      end={"dateTime": instances[1]["start"]["dateTime"][:11] + "16:00:00", "timeZone": "UTC"})
        person.delete(upn, instances[2]["id"])
    (item,) = GraphCalendar(client, upn, window=(low, high)).get([master["id"]])
    assert item.event is not None, item.error
    ics = event_to_ical(item.event.with_uid("matrix@davbridge"))
    graph_side = graph_occurrences(person.instances(upn, master["id"], *window))
    assert graph_side == ical_occurrences(ics, low, high)
    assert len(graph_side) >= 2
    assert event_from_ical(ics).fingerprint() == item.event.with_uid("matrix@davbridge").fingerprint()

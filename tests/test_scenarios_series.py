"""End-to-end series scenarios through the ``davbridge`` CLI, on Radicale, Xandikos and Cyrus.

A series (master, modified and cancelled occurrences) must move as one unit, both sides must
give the same occurrences at the same instants, a rule Microsoft 365 cannot hold is copied
occurrence by occurrence and kept in step, and no copy ever invites anyone.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import icalendar
import recurring_ical_events
from scenario_world import World, graph_time

BERLIN = ZoneInfo("Europe/Berlin")


def next_monday(hour: int) -> datetime:
    today = datetime.now(BERLIN).replace(hour=hour, minute=0, second=0, microsecond=0)
    return today + timedelta(days=7 - today.weekday())


def graph_instant(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def utc(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def graph_occurrences(world: World, master_id: str, days: int = 90) -> set[tuple[str, str]]:
    now = datetime.now(UTC)
    items = world.graph.instances(world.upn, master_id, graph_instant(now - timedelta(days=2)),
                                  graph_instant(now + timedelta(days=days)))
    out = set()
    for item in items:
        start = datetime.fromisoformat(item["start"]["dateTime"][:19]).replace(
            tzinfo=ZoneInfo("UTC") if item["start"]["timeZone"] == "UTC" else None)
        assert start.tzinfo is not None, "the stand-in answers in UTC by default"
        out.add((utc(start), item["subject"]))
    return out


def caldav_occurrences(ics: str, days: int = 90) -> set[tuple[str, str]]:
    now = datetime.now(UTC)
    calendar = icalendar.Calendar.from_ical(ics)
    out = set()
    for component in recurring_ical_events.of(calendar).between(now - timedelta(days=2), now + timedelta(days=days)):
        out.add((utc(component["DTSTART"].dt), str(component["SUMMARY"])))
    return out


def series_ics(uid: str, summary: str, rule: str, start: datetime, *, minutes: int = 30, extra: str = "",
               overrides: str = "") -> str:
    fmt = "%Y%m%dT%H%M%S"
    end = start + timedelta(minutes=minutes)
    return ("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//devtools//person//EN\r\n"
            "BEGIN:VEVENT\r\n"
            f"UID:{uid}\r\nDTSTAMP:20261101T000000Z\r\nLAST-MODIFIED:{utc(datetime.now(UTC))}\r\n"
            f"DTSTART;TZID=Europe/Berlin:{start:{fmt}}\r\nDTEND;TZID=Europe/Berlin:{end:{fmt}}\r\n"
            f"RRULE:{rule}\r\nSUMMARY:{summary}\r\n{extra}END:VEVENT\r\n{overrides}END:VCALENDAR\r\n")


def override_ics(uid: str, original: datetime, start: datetime, summary: str, minutes: int = 30) -> str:
    fmt = "%Y%m%dT%H%M%S"
    return ("BEGIN:VEVENT\r\n"
            f"UID:{uid}\r\nDTSTAMP:20261101T000000Z\r\nRECURRENCE-ID;TZID=Europe/Berlin:{original:{fmt}}\r\n"
            f"DTSTART;TZID=Europe/Berlin:{start:{fmt}}\r\n"
            f"DTEND;TZID=Europe/Berlin:{start + timedelta(minutes=minutes):{fmt}}\r\n"
            f"SUMMARY:{summary}\r\nEND:VEVENT\r\n")


def masters(world: World) -> list[dict]:
    return [e for e in world.graph_events() if e.get("type") == "seriesMaster"]


def invitations(world: World) -> list[dict]:
    return [i for i in world.sim.sent_invitations if i.get("user") == world.upn]


# ---------------------------------------------------------------------------------------------
def test_outlook_series_with_exceptions_reaches_caldav_as_one_resource(world: World) -> None:
    start = next_monday(9)
    master = world.graph.create_raw(world.upn, {
        "subject": "Standup",
        "start": {"dateTime": graph_time(start), "timeZone": "W. Europe Standard Time"},
        "end": {"dateTime": graph_time(start + timedelta(minutes=15)), "timeZone": "W. Europe Standard Time"},
        "recurrence": {
            "pattern": {"type": "weekly", "interval": 1, "daysOfWeek": ["monday", "wednesday"],
                        "firstDayOfWeek": "monday"},
            "range": {"type": "numbered", "startDate": start.strftime("%Y-%m-%d"), "numberOfOccurrences": 6,
                      "recurrenceTimeZone": "W. Europe Standard Time"},
        },
    })
    instances = sorted(world.graph.instances(world.upn, master["id"], graph_instant(start - timedelta(days=1)),
                                             graph_instant(start + timedelta(days=30))),
                       key=lambda i: i["start"]["dateTime"])
    assert len(instances) == 6
    moved = start + timedelta(days=2, hours=2)
    world.graph.update(world.upn, instances[1]["id"], subject="Standup (late)",
                       start={"dateTime": graph_time(moved), "timeZone": "W. Europe Standard Time"},
                       end={"dateTime": graph_time(moved + timedelta(minutes=15)),
                            "timeZone": "W. Europe Standard Time"})
    world.graph.delete(world.upn, instances[2]["id"])

    out = world.sync()
    assert "created_caldav=1" in out
    (obj,) = world.caldav.objects()
    assert "RRULE:" in obj.ics and obj.ics.count("RECURRENCE-ID") == 1 and "EXDATE" in obj.ics
    assert "TZID=Europe/Berlin" in obj.ics and "W. Europe" not in obj.ics
    assert caldav_occurrences(obj.ics) == graph_occurrences(world, master["id"])
    assert len(caldav_occurrences(obj.ics)) == 5
    assert "no changes" in world.sync()

    # A CalDAV app renames the moved occurrence and cancels another one.
    calendar = icalendar.Calendar.from_ical(obj.ics)
    fourth = start + timedelta(days=7)
    for component in calendar.walk("VEVENT"):
        if "RECURRENCE-ID" in component:
            component["SUMMARY"] = icalendar.vText("Standup (late, renamed)")
        else:
            component.add("EXDATE", fourth)
    world.caldav.put_raw(obj.href.rsplit("/", 1)[1], calendar.to_ical().decode())
    out = world.sync()
    assert "updated_m365=1" in out
    (obj,) = world.caldav.objects()
    occurrences = graph_occurrences(world, master["id"])
    assert occurrences == caldav_occurrences(obj.ics)
    assert (utc(moved), "Standup (late, renamed)") in occurrences
    assert utc(fourth) not in {when for when, _ in occurrences}
    assert len(masters(world)) == 1 and len(world.caldav.objects()) == 1
    assert invitations(world) == []


def test_caldav_series_reaches_outlook_and_a_series_rename_keeps_its_exceptions(world: World) -> None:
    uid = f"{uuid.uuid4()}@caldav.example"
    start = next_monday(10)
    ics = series_ics(uid, "Daily check", "FREQ=DAILY;COUNT=5", start,
                     extra=f"EXDATE;TZID=Europe/Berlin:{start + timedelta(days=1):%Y%m%dT%H%M%S}\r\n",
                     overrides=override_ics(uid, start + timedelta(days=2), start + timedelta(days=2, hours=1),
                                            "Daily check (later)"))
    world.caldav.put_raw(f"{uuid.uuid4().hex}.ics", ics)
    out = world.sync()
    assert "created_m365=1" in out
    (master,) = masters(world)
    assert master["recurrence"]["pattern"]["type"] == "daily"
    assert master["recurrence"]["range"] == {**master["recurrence"]["range"], "type": "numbered",
                                             "numberOfOccurrences": 5}
    (obj,) = world.caldav.objects()
    assert graph_occurrences(world, master["id"]) == caldav_occurrences(obj.ics)
    assert len(caldav_occurrences(obj.ics)) == 4
    assert "no changes" in world.sync()

    world.graph.update(world.upn, master["id"], subject="Daily sync")
    out = world.sync()
    assert "updated_caldav=1" in out
    (obj,) = world.caldav.objects()
    assert obj.prop("SUMMARY") == "Daily sync"
    assert "Daily check (later)" in obj.ics and "EXDATE" in obj.ics
    assert graph_occurrences(world, master["id"]) == caldav_occurrences(obj.ics)
    assert invitations(world) == []


def test_a_series_edit_that_resets_exceptions_resets_them_on_the_other_side(world: World) -> None:
    start = next_monday(8)
    master = world.graph.create_raw(world.upn, {
        "subject": "Gym",
        "start": {"dateTime": graph_time(start), "timeZone": "W. Europe Standard Time"},
        "end": {"dateTime": graph_time(start + timedelta(hours=1)), "timeZone": "W. Europe Standard Time"},
        "recurrence": {"pattern": {"type": "daily", "interval": 1},
                       "range": {"type": "endDate", "startDate": start.strftime("%Y-%m-%d"),
                                 "endDate": (start + timedelta(days=9)).strftime("%Y-%m-%d"),
                                 "recurrenceTimeZone": "W. Europe Standard Time"}},
    })
    first = sorted(world.graph.instances(world.upn, master["id"], graph_instant(start - timedelta(days=1)),
                                         graph_instant(start + timedelta(days=20))),
                   key=lambda i: i["start"]["dateTime"])
    world.graph.update(world.upn, first[3]["id"], subject="Gym (pool)")
    world.graph.delete(world.upn, first[5]["id"])
    world.sync()
    (obj,) = world.caldav.objects()
    assert "RECURRENCE-ID" in obj.ics and "EXDATE" in obj.ics

    world.graph.update(world.upn, master["id"], recurrence={
        "pattern": {"type": "daily", "interval": 2},
        "range": {"type": "endDate", "startDate": start.strftime("%Y-%m-%d"),
                  "endDate": (start + timedelta(days=9)).strftime("%Y-%m-%d"),
                  "recurrenceTimeZone": "W. Europe Standard Time"}})
    out = world.sync()
    assert "updated_caldav=1" in out
    (obj,) = world.caldav.objects()
    assert "RECURRENCE-ID" not in obj.ics and "EXDATE" not in obj.ics and "INTERVAL=2" in obj.ics
    assert graph_occurrences(world, master["id"]) == caldav_occurrences(obj.ics)
    assert len(caldav_occurrences(obj.ics)) == 5


def test_a_rule_outlook_cannot_hold_is_copied_occurrence_by_occurrence_and_kept_in_step(world: World) -> None:
    uid = f"{uuid.uuid4()}@caldav.example"
    start = next_monday(9)
    name = f"{uuid.uuid4().hex}.ics"
    world.caldav.put_raw(name, series_ics(uid, "Medication", "FREQ=DAILY;COUNT=4;BYHOUR=9,15", start, minutes=10))
    out = world.sync()
    assert "created_m365=4" in out
    copies = sorted((e for e in world.graph_events() if e["subject"] == "Medication"),
                    key=lambda e: e["start"]["dateTime"])
    assert len(copies) == 4 and all(e["type"] == "singleInstance" for e in copies)
    assert "[davbridge] Series:" in copies[0]["body"]["content"] or "davbridge-note" in copies[0]["body"]["content"]
    status = json.loads(world.run("status", "--json"))
    assert any("BYHOUR" in notice for notice in status[0]["notices"]), status[0]["notices"]
    assert "BYHOUR" in world.run("status")
    assert "no changes" in world.sync()

    # Outlook edits one copy and deletes another: the CalDAV series gets an override and an EXDATE.
    world.graph.update(world.upn, copies[1]["id"], subject="Medication (with food)")
    world.graph.delete(world.upn, copies[2]["id"])
    out = world.sync()
    assert "updated_caldav=1" in out and "deleted_caldav=1" in out
    (obj,) = world.caldav.objects()
    assert obj.ics.count("RECURRENCE-ID") == 1 and "Medication (with food)" in obj.ics and "EXDATE" in obj.ics
    assert {(when, what) for when, what in caldav_occurrences(obj.ics)} == {
        (utc(datetime.fromisoformat(e["start"]["dateTime"][:19]).replace(tzinfo=UTC)), e["subject"])
        for e in world.graph_events()}
    assert "no changes" in world.sync()

    # The author deletes the series: every copy goes.
    world.caldav.delete(obj.href)
    out = world.sync()
    assert "deleted_m365=3" in out
    assert world.graph_events() == []


def test_people_are_kept_for_display_and_nobody_is_invited(world: World) -> None:
    uid = f"{uuid.uuid4()}@caldav.example"
    start = next_monday(11)
    extra = ("ORGANIZER;CN=Olga Organizer:mailto:olga@example.org\r\n"
             "ATTENDEE;CN=Ann;ROLE=REQ-PARTICIPANT;PARTSTAT=ACCEPTED:mailto:ann@example.org\r\n"
             "ATTENDEE;CN=Ben;ROLE=OPT-PARTICIPANT;PARTSTAT=NEEDS-ACTION:mailto:ben@example.org\r\n"
             "PRIORITY:1\r\nCONFERENCE;VALUE=URI;FEATURE=VIDEO:https://meet.example.org/xyz\r\n")
    world.caldav.put("Quarterly review", start.strftime("%Y%m%dT%H%M%S"),
                     (start + timedelta(hours=1)).strftime("%Y%m%dT%H%M%S"), tzid="Europe/Berlin", uid=uid,
                     extra=extra)
    world.sync()
    (copy,) = [e for e in world.graph_events() if e["subject"] == "Quarterly review"]
    assert copy.get("attendees") in (None, []) and copy["importance"] == "high"
    assert "ann@example.org" in copy["body"]["content"] and "meet.example.org/xyz" in copy["body"]["content"]
    assert invitations(world) == []
    assert "no changes" in world.sync()

    # A meeting organised in Outlook: its CalDAV copy shows the people but schedules nothing.
    world.graph.create_raw(world.upn, {
        "subject": "Design sync",
        "start": {"dateTime": graph_time(start + timedelta(days=1)), "timeZone": "W. Europe Standard Time"},
        "end": {"dateTime": graph_time(start + timedelta(days=1, hours=1)), "timeZone": "W. Europe Standard Time"},
        "attendees": [{"emailAddress": {"address": "carl@example.org", "name": "Carl"}, "type": "required"}],
    })
    before = len(invitations(world))
    world.sync()
    (obj,) = world.caldav.by_summary("Design sync")
    unfolded = obj.ics.replace("\r\n ", "").replace("\n ", "")
    attendee_lines = [line for line in unfolded.splitlines() if line.startswith(("ATTENDEE", "ORGANIZER"))]
    assert any("carl@example.org" in line for line in attendee_lines)
    assert attendee_lines and all("SCHEDULE-AGENT=CLIENT" in line for line in attendee_lines)
    assert len(invitations(world)) == before  # the sync sent nothing
    assert "no changes" in world.sync()
    (original,) = world.caldav.by_summary("Quarterly review")
    organizer = icalendar.Calendar.from_ical(original.ics).walk("VEVENT")[0]["ORGANIZER"]
    assert str(organizer) == "mailto:olga@example.org" and organizer.params["CN"] == "Olga Organizer"


def test_a_meeting_the_caldav_server_schedules_is_never_changed_by_the_sync(world: World) -> None:
    start = next_monday(14)
    extra = ("ORGANIZER;CN=Pat:mailto:pat@example.org\r\n"
             "ATTENDEE;CN=Quinn;PARTSTAT=ACCEPTED:mailto:quinn@example.org\r\n")
    world.caldav.put("Board meeting", start.strftime("%Y%m%dT%H%M%S"),
                     (start + timedelta(hours=2)).strftime("%Y%m%dT%H%M%S"), tzid="Europe/Berlin", extra=extra)
    world.sync()
    (copy,) = [e for e in world.graph_events() if e["subject"] == "Board meeting"]
    (before,) = world.caldav.by_summary("Board meeting")
    world.graph.update(world.upn, copy["id"], subject="Board meeting (moved room)")
    world.sync()
    status = json.loads(world.run("status", "--json"))[0]
    options = world.server.request("OPTIONS", world.caldav.calendar_url)
    dav = ",".join(v for k, v in options.headers.items() if k.lower() == "dav")
    if "calendar-auto-schedule" in dav:  # RFC 6638 server (Cyrus, Xandikos): a write would notify Quinn
        (after,) = world.caldav.by_summary("Board meeting")
        assert after.etag == before.etag
        assert status["quarantined"] == 1
    else:  # no scheduling on this server: the edit is just an edit
        assert world.caldav.by_summary("Board meeting (moved room)")
        assert status["quarantined"] == 0


def test_a_rule_change_in_caldav_resets_the_exceptions_in_outlook(world: World) -> None:
    uid = f"{uuid.uuid4()}@caldav.example"
    start = next_monday(7)
    name = f"{uuid.uuid4().hex}.ics"
    world.caldav.put_raw(name, series_ics(uid, "Run", "FREQ=DAILY;COUNT=6", start,
                                          overrides=override_ics(uid, start + timedelta(days=1),
                                                                 start + timedelta(days=1, hours=2), "Run (late)")))
    world.sync()
    (master,) = masters(world)
    assert any(subject == "Run (late)" for _, subject in graph_occurrences(world, master["id"]))

    world.caldav.put_raw(name, series_ics(uid, "Run", "FREQ=DAILY;INTERVAL=2;COUNT=6", start))
    out = world.sync()
    assert "updated_m365=1" in out
    (master,) = masters(world)
    assert master["recurrence"]["pattern"]["interval"] == 2
    (obj,) = world.caldav.objects()
    occurrences = graph_occurrences(world, master["id"])
    assert occurrences == caldav_occurrences(obj.ics) and len(occurrences) == 6
    assert all(subject == "Run" for _, subject in occurrences)
    assert "no changes" in world.sync()

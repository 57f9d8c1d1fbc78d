"""End-to-end scenarios through the ``davbridge`` CLI: Graph stand-in <-> each real CalDAV server.

Every test runs once per CalDAV server (Radicale, Xandikos, Cyrus). Each gets a new mailbox on
the stand-in, a new empty CalDAV calendar and new state, and checks what is really on both
sides with independent clients (``devtools/clients.py``).
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import timedelta

import pytest
from scenario_world import World, day, graph_time, ical_time

from sync_core import cli
from sync_core.sides.base import SideName
from sync_core.state.base import ConflictPolicy


# ---------------------------------------------------------------------------------------------
def test_create_propagates_both_ways(world: World) -> None:
    start = day(2)
    world.graph.create(world.upn, "Budget review", graph_time(start), graph_time(start + timedelta(hours=1)),
                       tz="UTC", body="Bring the numbers", location="Room 4")
    world.caldav.put("Dentist", ical_time(day(3, 14)), ical_time(day(3, 15)), location="Main street",
                     description="Check-up")
    world.caldav.put("Holiday", day(5).strftime("%Y%m%d"), day(7).strftime("%Y%m%d"))
    out = world.sync()
    assert "created_caldav=1" in out and "created_m365=2" in out

    (copy,) = world.caldav.by_summary("Budget review")
    assert copy.prop("LOCATION") == "Room 4"
    assert copy.prop("DESCRIPTION") == "Bring the numbers"
    assert "ATTENDEE" not in copy.ics
    by_subject = {e["subject"]: e for e in world.graph_events()}
    dentist = by_subject["Dentist"]
    assert dentist["location"]["displayName"] == "Main street"
    assert dentist["start"]["dateTime"].startswith(day(3, 14).strftime("%Y-%m-%dT14:00:00"))
    holiday = by_subject["Holiday"]
    assert holiday["isAllDay"] is True
    assert holiday["start"]["dateTime"].startswith(day(5).strftime("%Y-%m-%d"))
    assert holiday["end"]["dateTime"].startswith(day(7).strftime("%Y-%m-%d"))
    assert len(world.graph_events()) == 3 and len(world.caldav.objects()) == 3
    assert world.sim.sent_invitations == [] or all(i["user"] != world.upn for i in world.sim.sent_invitations)


def test_edit_and_delete_propagate_both_ways(world: World) -> None:
    g = world.graph.create(world.upn, "From Outlook", graph_time(day(1)), graph_time(day(1, 10)))
    href = world.caldav.put("From CalDAV", ical_time(day(2)), ical_time(day(2, 10)))
    world.sync()

    world.graph.update(world.upn, g["id"], subject="From Outlook, moved",
                       start={"dateTime": graph_time(day(1, 11)), "timeZone": "UTC"},
                       end={"dateTime": graph_time(day(1, 12)), "timeZone": "UTC"})
    (obj,) = world.caldav.by_summary("From CalDAV")
    world.caldav.put("From CalDAV, edited", ical_time(day(2)), ical_time(day(2, 10)), href=href,
                     uid=obj.prop("UID"), etag=obj.etag, location="Cafe")
    out = world.sync()
    assert "updated_caldav=1" in out and "updated_m365=1" in out
    (moved,) = world.caldav.by_summary("From Outlook, moved")
    assert moved.prop("DTSTART") in (ical_time(day(1, 11)), day(1, 11).strftime("%Y%m%dT%H%M%S"))
    edited = [e for e in world.graph_events() if e["subject"] == "From CalDAV, edited"]
    assert len(edited) == 1 and edited[0]["location"]["displayName"] == "Cafe"

    world.graph.delete(world.upn, g["id"])
    world.caldav.delete(href)
    out = world.sync()
    assert "deleted_caldav=1" in out and "deleted_m365=1" in out
    assert world.caldav.objects() == [] and world.graph_events() == []


@pytest.mark.parametrize("policy", ["newest-wins", "m365-wins", "caldav-wins"])
def test_edit_on_both_sides_follows_the_policy(world: World, policy: str) -> None:
    g = world.graph.create(world.upn, "Planning", graph_time(day(4)), graph_time(day(4, 10)))
    world.sync()
    services = world.services()
    (pairing,) = services.store.list_pairings(world.upn)
    pairing.conflict_policy = ConflictPolicy(policy)
    services.store.save_pairing(pairing)
    services.close()

    (obj,) = world.caldav.by_summary("Planning")
    world.graph.update(world.upn, g["id"], subject="Planning (Outlook)")
    # The CalDAV edit is made second, so it is the newest (LAST-MODIFIED has whole seconds).
    time.sleep(1.1)
    world.caldav.put("Planning (CalDAV)", ical_time(day(4)), ical_time(day(4, 10)), href=obj.href,
                     uid=obj.prop("UID"), etag=obj.etag)
    world.sync()
    winner = "Planning (Outlook)" if policy == "m365-wins" else "Planning (CalDAV)"
    assert [e["subject"] for e in world.graph_events()] == [winner]
    assert [o.prop("SUMMARY") for o in world.caldav.objects()] == [winner]


def test_second_sync_with_nothing_changed_writes_nothing(world: World) -> None:
    world.graph.create(world.upn, "Steady", graph_time(day(1)), graph_time(day(1, 10)))
    world.caldav.put("Steady too", ical_time(day(2)), ical_time(day(2, 10)))
    world.sync()
    out = world.sync()  # reads back the service's own writes: none of them is a change
    assert "no changes" in out

    world.sim.reset_request_log()
    services = world.services()
    opened: dict[SideName, object] = {}
    real_open = services.open_sides

    def recording_open(user, pairing, window):  # type: ignore[no-untyped-def]
        sides = real_open(user, pairing, window)
        opened.update(sides)
        return sides

    services.open_sides = recording_open  # type: ignore[method-assign]
    outcome = services.sync_user(world.upn)
    services.close()
    assert outcome.ok and outcome.pairings[0].applied is not None
    assert outcome.pairings[0].applied.counts == {}
    graph_calls = [r for r in world.sim.request_log if "/v1.0/" in r["path"]]
    writes = [r for r in world.sim.request_log if r["method"] in ("POST", "PATCH", "DELETE")
              and "/oauth2/" not in r["path"]]
    assert writes == []
    assert len(graph_calls) == 1, graph_calls  # one delta request
    caldav_requests = opened[SideName.CALDAV].request_count  # type: ignore[attr-defined]
    assert caldav_requests == 1  # one sync-collection REPORT
    print(f"no-change sync on {world.server.kind}: graph={len(graph_calls)} caldav={caldav_requests}")


def test_dry_run_prints_the_plan_and_writes_nothing(world: World) -> None:
    world.graph.create(world.upn, "Only planned", graph_time(day(1)), graph_time(day(1, 10)))
    out = world.run("sync", "--user", world.upn, "--dry-run")
    assert "create on caldav" in out
    assert world.caldav.objects() == []
    out = world.sync()
    assert "created_caldav=1" in out


def test_first_sync_pairs_existing_copies_without_duplicates(world: World) -> None:
    start = day(6)
    world.graph.create(world.upn, "Already on both", graph_time(start), graph_time(start + timedelta(hours=1)))
    world.caldav.put("Already on both", ical_time(start), ical_time(start + timedelta(hours=1)))
    world.sync()
    assert len(world.graph_events()) == 1 and len(world.caldav.objects()) == 1
    status = json.loads(world.run("status", "--json"))
    assert status[0]["ok"] is True and status[0]["last_error"] is None


class Crash(BaseException):
    """Stands for the process dying: not an Exception, so nothing in the sync catches it."""


@pytest.mark.parametrize("direction", ["m365-to-caldav", "caldav-to-m365"])
def test_crash_between_remote_write_and_state_save_leaves_no_duplicate(
        world: World, direction: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if direction == "m365-to-caldav":
        world.graph.create(world.upn, "Crash test", graph_time(day(1)), graph_time(day(1, 10)))
    else:
        world.caldav.put("Crash test", ical_time(day(1)), ical_time(day(1, 10)))

    from sync_core.state.sqlite import SQLiteStateStore

    real_save = SQLiteStateStore.save_link

    def dying_save(self, link):  # type: ignore[no-untyped-def]
        if link.m365_id and link.caldav_href:
            raise Crash("killed after the remote write, before the state row")
        return real_save(self, link)

    monkeypatch.setattr(SQLiteStateStore, "save_link", dying_save)
    with pytest.raises(Crash):
        cli.main(["sync", "--user", world.upn])
    monkeypatch.setattr(SQLiteStateStore, "save_link", real_save)
    assert len(world.graph_events()) == 1 and len(world.caldav.objects()) == 1  # the write landed

    world.sync()
    world.sync()
    assert len(world.graph_events()) == 1
    assert len(world.caldav.objects()) == 1
    links = world.services().store.links(world.services().store.list_pairings(world.upn)[0].pairing_id)
    assert len(links) == 1 and links[0].m365_id and links[0].caldav_href


def test_broken_item_is_quarantined_and_the_rest_syncs(world: World) -> None:
    # Every server accepts a TZID without VTIMEZONE; no zone database knows this one.
    when, until = day(1).strftime("%Y%m%dT%H%M%S"), day(1, 10).strftime("%Y%m%dT%H%M%S")
    broken = world.caldav.put_raw("broken.ics", "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//x//EN\r\nBEGIN:VEVENT\r\n"
                         f"UID:broken-{uuid.uuid4().hex}\r\nDTSTAMP:20261101T000000Z\r\n"
                         f"DTSTART;TZID=Mars/Olympus:{when}\r\nDTEND;TZID=Mars/Olympus:{until}\r\n"
                         "SUMMARY:Unknown zone\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n")
    world.caldav.put("Healthy", ical_time(day(1)), ical_time(day(1, 10)))
    out = world.run("sync", "--user", world.upn)
    assert "created_m365=1" in out and "1 quarantined" in out
    assert [e["subject"] for e in world.graph_events()] == ["Healthy"]
    status = json.loads(world.run("status", "--json"))
    assert status[0]["quarantined"] == 1
    world.sync()  # reads the echo of the copy written to Microsoft 365
    world.sync()  # nothing changed and the retry is not due: the count is kept without a re-read
    assert json.loads(world.run("status", "--json"))[0]["quarantined"] == 1

    world.caldav.delete(broken)  # the author removes the broken item: the quarantine clears
    world.sync()
    assert json.loads(world.run("status", "--json"))[0]["quarantined"] == 0
    assert [e["subject"] for e in world.graph_events()] == ["Healthy"]

"""Safety guards through the CLI on each real CalDAV server: the mass-deletion guard stops a
pairing until an admin confirms, and a quarantined item is retried with backoff."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

from scenario_world import World, day, ical_time

from sync_core.engine import quarantine_backoff


def _pairing(world: World) -> str:
    (pairing,) = world.services().store.list_pairings(world.upn)
    return pairing.pairing_id


def test_mass_deletion_stops_the_pairing_until_an_admin_confirms(world: World) -> None:
    for i in range(20):
        world.caldav.put(f"Meeting {i}", ical_time(day(1 + i % 5, 8 + i % 8)), ical_time(day(1 + i % 5, 9 + i % 8)))
    world.sync()
    events = world.graph_events()
    assert len(events) == 20

    # 10 deletions (= the floor, 50 %) go through without a question ...
    for ev in events[:10]:
        world.graph.delete(world.upn, ev["id"])
    assert "deleted_caldav=10" in world.sync()
    # ... 11 of the 10 left would not: max(10, 25 %) is exceeded.
    for i in range(10):
        world.caldav.put(f"Second batch {i}", ical_time(day(6, 8 + i)), ical_time(day(6, 9 + i)))
    world.sync()
    remaining = world.graph_events()
    assert len(remaining) == 20
    for ev in remaining[:11]:
        world.graph.delete(world.upn, ev["id"])
    out = _sync_expect_failure(world)
    assert "MassDeletion" in out and "refusing to delete 11 of 20" in out
    assert len(world.caldav.objects()) == 20  # nothing was deleted
    status = json.loads(world.run("status", "--json"))
    assert "MassDeletion" in status[0]["last_error"]
    pairings = json.loads(world.run("pairings", "list", world.upn, "--json"))
    assert pairings[0]["blocked_deletes"] == 11

    out = world.run("confirm", world.upn, _pairing(world))
    assert "up to 11 items" in out
    assert "deleted_caldav=11" in world.sync()
    assert len(world.caldav.objects()) == 9
    assert json.loads(world.run("pairings", "list", world.upn, "--json"))[0]["confirmed_deletes"] == 0


def _sync_expect_failure(world: World) -> str:
    import io
    from contextlib import redirect_stdout

    from sync_core import cli

    out = io.StringIO()
    with redirect_stdout(out):
        rc = cli.main(["sync", "--user", world.upn, "--no-progress"])
    assert rc == 1, out.getvalue()
    return out.getvalue()


def test_a_quarantined_item_is_retried_with_backoff(world: World) -> None:
    when, until = day(1).strftime("%Y%m%dT%H%M%S"), day(1, 10).strftime("%Y%m%dT%H%M%S")
    world.caldav.put_raw("mars.ics", "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//x//EN\r\nBEGIN:VEVENT\r\n"
                         f"UID:mars-{uuid.uuid4().hex}\r\nDTSTAMP:20261101T000000Z\r\n"
                         f"DTSTART;TZID=Mars/Olympus:{when}\r\nDTEND;TZID=Mars/Olympus:{until}\r\n"
                         "SUMMARY:Unknown zone\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n")
    world.caldav.put("Healthy", ical_time(day(2)), ical_time(day(2, 10)))
    assert "1 quarantined" in world.sync()
    store = world.services().store
    (held,) = store.pending(_pairing(world))
    assert held.quarantined and held.attempts == 1 and "Mars/Olympus" in held.reason
    assert held.next_retry_at is not None
    assert timedelta(minutes=4) < held.next_retry_at - datetime.now(UTC) <= quarantine_backoff(1)

    world.sync()  # not due yet: not read again, same attempt count
    (held,) = store.pending(_pairing(world))
    assert held.attempts == 1

    held.next_retry_at = datetime.now(UTC) - timedelta(seconds=1)  # the backoff has passed
    store.save_pending(held)
    world.sync()
    (held,) = store.pending(_pairing(world))
    assert held.attempts == 2 and held.next_retry_at is not None
    assert held.next_retry_at - datetime.now(UTC) > timedelta(minutes=9)
    assert json.loads(world.run("status", "--json"))[0]["quarantined"] == 1
    assert [e["subject"] for e in world.graph_events()] == ["Healthy"]

"""Crash consistency on the real servers: the worker dies at every write boundary — right after
a remote write but before its state row is saved, and right after the state row but before
the next write — and the next run leaves no duplicate and loses no edit on either side."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import pytest
from scenario_world import World, day, graph_time, ical_time

from sync_core.model import Event
from sync_core.services import Services
from sync_core.sides.base import Side, SideName, WriteResult
from sync_core.state.base import Pairing, UserRecord

WRITES_PER_ROUND = 6
_COUNTER_LOCK = threading.Lock()


class Crash(BaseException):
    """The worker process dies (nothing in the sync catches a BaseException)."""


class CrashAfterWrite:
    """A side whose ``crash_at``-th write reaches the server, then the process dies."""

    def __init__(self, side: Side, counter: dict[str, int], crash_at: int) -> None:
        self.side, self.counter, self.crash_at = side, counter, crash_at
        self.name = side.name

    def _count(self) -> None:
        with _COUNTER_LOCK:  # writes run on several apply threads
            self.counter["writes"] += 1
            reached = self.counter["writes"]
        if reached == self.crash_at:
            raise Crash(f"died after write {self.crash_at}")

    def changes(self, cursor: str | None, known: Mapping[str, str | None]) -> Any:
        return self.side.changes(cursor, known)

    def get(self, ids: Any) -> Any:
        return self.side.get(ids)

    def find_created(self, event: Event, *, idempotency_key: str) -> Any:
        return self.side.find_created(event, idempotency_key=idempotency_key)

    def create(self, event: Event, *, idempotency_key: str) -> WriteResult:
        result = self.side.create(event, idempotency_key=idempotency_key)
        self._count()
        return result

    def update(self, item_id: str, event: Event, *, etag: str | None) -> WriteResult:
        result = self.side.update(item_id, event, etag=etag)
        self._count()
        return result

    def delete(self, item_id: str, *, etag: str | None) -> None:
        self.side.delete(item_id, etag=etag)
        self._count()


def _changes(world: World, tag: str, before: dict[str, str]) -> dict[str, str]:
    """Six changes, three per side: edit, delete, create. Returns the expected final subjects
    by origin key."""
    graph_by_subject = {e["subject"]: e for e in world.graph_events()}
    caldav_by_subject = {o.prop("SUMMARY"): o for o in world.caldav.objects()}
    # CalDAV side: edit A, delete B, create E
    a = caldav_by_subject[before["A"]]
    world.caldav.put(f"{tag} A edited", ical_time(day(1, 9)), ical_time(day(1, 10)), href=a.href,
                     uid=a.prop("UID"), etag=a.etag)
    world.caldav.delete(caldav_by_subject[before["B"]].href)
    world.caldav.put(f"{tag} E new", ical_time(day(3, 9)), ical_time(day(3, 10)))
    # Microsoft 365 side: edit C, delete D, create F
    world.graph.update(world.upn, graph_by_subject[before["C"]]["id"], subject=f"{tag} C edited")
    world.graph.delete(world.upn, graph_by_subject[before["D"]]["id"])
    world.graph.create(world.upn, f"{tag} F new", graph_time(day(4, 9)), graph_time(day(4, 10)))
    return {"A": f"{tag} A edited", "C": f"{tag} C edited", "E": f"{tag} E new", "F": f"{tag} F new"}


def _seed(world: World, tag: str) -> dict[str, str]:
    for key, offset in (("A", 1), ("B", 2)):
        world.caldav.put(f"{tag} {key}", ical_time(day(offset, 11)), ical_time(day(offset, 12)))
    for key, offset in (("C", 1), ("D", 2)):
        world.graph.create(world.upn, f"{tag} {key}", graph_time(day(offset, 14)), graph_time(day(offset, 15)))
    world.sync()
    return {k: f"{tag} {k}" for k in "ABCD"}


def _crash_once(world: World, moment: str, crash_at: int, monkeypatch: pytest.MonkeyPatch) -> None:
    counter = {"writes": 0}
    original_open = Services.open_sides

    def crashing_open(self: Services, user: UserRecord, pairing: Pairing,
                      window: tuple[datetime, datetime]) -> Mapping[SideName, Side]:
        sides = original_open(self, user, pairing, window)
        if moment != "after-remote-write":
            return sides
        return {name: CrashAfterWrite(side, counter, crash_at) for name, side in sides.items()}

    def die_after_save(action: Any, written: Any) -> None:
        counter["writes"] += 1
        if counter["writes"] == crash_at:
            raise Crash(f"died after the state row of write {crash_at}")

    with monkeypatch.context() as mp:
        mp.setattr(Services, "open_sides", crashing_open)
        services = world.services()
        with pytest.raises(Crash):
            services.sync_user(world.upn, on_write=die_after_save if moment == "after-state-save" else None)
        services.close()


@pytest.mark.parametrize("moment", ["after-remote-write", "after-state-save"])
def test_a_crash_at_any_write_boundary_leaves_no_duplicate_and_no_lost_edit(
        world: World, moment: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for crash_at in range(1, WRITES_PER_ROUND + 1):
        tag = f"r{crash_at}-{uuid.uuid4().hex[:4]}"
        expected = _changes(world, tag, _seed(world, tag))
        _crash_once(world, moment, crash_at, monkeypatch)
        world.sync()  # the next run (the queue retries, or the timer)
        graph_subjects = sorted(e["subject"] for e in world.graph_events() if e["subject"].startswith(tag))
        caldav_subjects = sorted(str(o.prop("SUMMARY")) for o in world.caldav.objects()
                                 if str(o.prop("SUMMARY")).startswith(tag))
        assert graph_subjects == caldav_subjects == sorted(expected.values()), (crash_at, moment)
        quiet = world.sync()
        assert "no changes" in quiet, (crash_at, moment, quiet)

"""Stateful property test of the whole sync loop: ``engine.sync_pairing`` (the real reconcile,
apply and SQLite state) between two in-memory calendars (``devtools.memory_side``).

Hypothesis drives users creating, editing and deleting events on either side, servers
misbehaving (flaky etags, no etag after a write, re-encoded hrefs, refused tokens, failing
writes, a calendar becoming read-only) and the window moving, interleaved with syncs.

Invariants after every sync:
- a side the pairing marks read-only was never written (not even attempted);
- every item the sync deleted on one side was linked to an item a user deleted on the other;
- no UID is held by two items of one side;
- an event whose deletion was synced (see "after a clean sync") never reappears.
After every clean sync (no error, no deferred write, no quarantine):
- two-way: both sides hold the same events inside the window (multiset of content
  fingerprints); one-way: every source event inside the window has a linked mirror copy with
  its content (unless a user edited that copy since the sync last wrote it);
- every event a user deleted since the previous clean sync, whose counterpart no user edited
  meanwhile (edit beats delete), is gone from both sides, for good;
- a second sync right away writes nothing and is clean.
``settle`` clears the transient faults and requires a clean sync within three runs
(a persistent server quirk must not keep the pairing failing).

Three machines: two-way (any conflict policy), one-way (either direction), one-way from a
read-only source; 2,000 examples of up to 25 steps in all, derandomized and without an example
database, so every CI run explores the same cases (about 40 s on two cores while green).
Below them: each shortest failing run found so far as a plain test, and MemorySide's own tests.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule

from devtools.memory_side import MemorySide, WriteRecord, canonical_id, event_in_window
from sync_core.engine import PairingOutcome, sync_pairing
from sync_core.errors import DavbridgeError, PreconditionFailed, SideError, Throttled
from sync_core.model import Event
from sync_core.sides.base import SideName
from sync_core.state.base import ConflictPolicy, Direction, ItemLink, Pairing
from sync_core.state.sqlite import SQLiteStateStore

M365, CALDAV = SideName.M365, SideName.CALDAV
SIDES = st.sampled_from([M365, CALDAV])
UPN = "ada@example.org"
T0 = datetime(2026, 6, 1, tzinfo=UTC)
PAST, FUTURE = timedelta(days=3), timedelta(days=10)

#: Examples per machine (2,000 in all) and steps per example.
EXAMPLES = {"two_way": 1000, "one_way": 600, "read_only": 400}
STEPS = 25

# An event relative to the current day: few subjects and times, so events often share
# subject + start + end (first-sync content pairing), some outside the window.
SPECS = st.fixed_dictionaries({
    "subject": st.sampled_from(["Standup", "Lunch", "Review"]),
    "day": st.integers(-6, 14),
    "hour": st.sampled_from([9, 14]),
    "minutes": st.sampled_from([30, 60]),
    "location": st.sampled_from(["", "Room 1"]),
    "all_day": st.booleans(),
})
FAULTS = st.sampled_from([SideError, PreconditionFailed, Throttled])
QUIRKS = ["flaky_etags", "no_etag_after_write", "reencoded_hrefs", "token_reset", "write_access"]
ENVIRONMENT = st.one_of(
    st.tuples(st.just("quirk"), SIDES, st.sampled_from(QUIRKS), st.booleans()),
    st.tuples(st.just("time"), st.integers(1, 4)),
)


def settings_for(examples: int) -> settings:
    return settings(max_examples=examples, stateful_step_count=STEPS, deadline=None, derandomize=True,
                    database=None, report_multiple_bugs=False, suppress_health_check=[HealthCheck.too_slow])


class SyncMachine(RuleBasedStateMachine):
    """One pairing between two memory calendars; subclasses fix the direction."""

    DIRECTIONS: tuple[Direction, ...] = (Direction.TWO_WAY,)
    READ_ONLY_SOURCE = False

    def __init__(self) -> None:
        super().__init__()
        self.day = T0
        self.tick = T0
        self.store = SQLiteStateStore(":memory:")
        self.sides = {side: MemorySide(side, window=self.window, clock=self.clock) for side in (M365, CALDAV)}
        self.direction = Direction.TWO_WAY
        self.read_only: SideName | None = None
        #: canonical ids users deleted, per side
        self.user_deleted: dict[SideName, set[str]] = {M365: set(), CALDAV: set()}
        #: UIDs of the items users deleted, per side
        self.user_deleted_uids: dict[SideName, set[str]] = {M365: set(), CALDAV: set()}
        #: UIDs of items users edited since the last clean sync, per side
        self.edited: dict[SideName, set[str]] = {M365: set(), CALDAV: set()}
        #: (side, canonical id) -> canonical ids on the other side it was ever linked with
        self.linked_with: dict[tuple[SideName, str], set[str]] = {}
        #: deletions not yet checked: (side deleted on, UIDs of the event's items)
        self.tombstones: list[tuple[SideName, frozenset[str]]] = []
        #: UIDs of events whose deletion was synced: they never come back
        self.dead: set[str] = set()
        #: mirror items (one-way) a user created or edited since the sync last wrote them
        self.dirty: set[str] = set()

    # -- set-up -------------------------------------------------------------------------------
    @initialize(direction_index=st.integers(0, 1), policy=st.sampled_from(list(ConflictPolicy)),
                skip_unchanged=st.tuples(st.booleans(), st.booleans()), caldav_windowed=st.booleans(),
                seed=st.tuples(st.lists(SPECS, max_size=3), st.lists(SPECS, max_size=3)))
    def configure(self, direction_index: int, policy: ConflictPolicy, skip_unchanged: tuple[bool, bool],
                  caldav_windowed: bool, seed: tuple[list[dict[str, object]], list[dict[str, object]]]) -> None:
        """Microsoft 365 lists a window (calendarView delta); CalDAV the whole collection
        (as ``CalDAVCalendar`` does) or a window (as a time-range query would). ``seed``:
        events both calendars hold before the first sync."""
        self.direction = self.DIRECTIONS[direction_index % len(self.DIRECTIONS)]
        self.sides[CALDAV].windowed_listing = caldav_windowed
        if self.READ_ONLY_SOURCE:
            self.read_only = self.source
            self.sides[self.source].read_only = True
        self.sides[M365].skip_unchanged, self.sides[CALDAV].skip_unchanged = skip_unchanged
        for name, specs in ((M365, seed[0]), (CALDAV, seed[1])):
            for spec in specs:
                self.user_creates(name, spec)
        pairing = Pairing(Pairing.make_id(UPN, None, "/cal/"), UPN, None, "/cal/", direction=self.direction,
                          conflict_policy=policy, m365_read_only=self.read_only is M365,
                          caldav_read_only=self.read_only is CALDAV)
        self.pid = pairing.pairing_id
        self.store.save_pairing(pairing)

    def teardown(self) -> None:
        self.store.close()

    # -- helpers ------------------------------------------------------------------------------
    @property
    def window(self) -> tuple[datetime, datetime]:
        return self.day - PAST, self.day + FUTURE

    @property
    def two_way(self) -> bool:
        return self.direction is Direction.TWO_WAY

    @property
    def source(self) -> SideName:
        return CALDAV if self.direction is Direction.CALDAV_TO_M365 else M365

    @property
    def mirror(self) -> SideName:
        return self.source.other()

    def clock(self) -> datetime:
        self.tick = max(self.tick, self.day) + timedelta(seconds=1)
        return self.tick

    def event(self, spec: dict[str, object]) -> Event:
        day = self.day + timedelta(days=int(str(spec["day"])))
        subject, location = str(spec["subject"]), str(spec["location"])
        if spec["all_day"]:
            return Event(subject, day.date(), (day + timedelta(days=1)).date(), location=location)
        start = day + timedelta(hours=int(str(spec["hour"])))
        return Event(subject, start, start + timedelta(minutes=int(str(spec["minutes"]))), timezone="UTC",
                     location=location)

    def pick(self, side: SideName, index: int) -> tuple[SideName, str] | None:
        """An item of ``side`` (of the other side when ``side`` has none)."""
        for name in (side, side.other()):
            ids = self.sides[name].ids()
            if ids:
                return name, ids[index % len(ids)]
        return None

    def uids(self, side: SideName) -> dict[str, str]:
        """Live UIDs of a side -> canonical id."""
        return {e.uid: cid for cid, e in self.sides[side].events().items() if e.uid}

    # -- user actions -------------------------------------------------------------------------
    @rule(side=SIDES, spec=SPECS)
    def user_creates(self, side: SideName, spec: dict[str, object]) -> None:
        cid = canonical_id(self.sides[side].user_create(self.event(spec)))
        if not self.two_way and side is self.mirror:
            self.dirty.add(cid)

    @rule(side=SIDES, index=st.integers(0, 50), spec=SPECS | st.none())
    def user_edits(self, side: SideName, index: int, spec: dict[str, object] | None) -> None:
        """A new content, or (``None``) a save without a synced change: a new etag only (Outlook
        bumps the change key for a dismissed reminder or a re-save)."""
        picked = self.pick(side, index)
        if picked is None:
            return
        side, cid = picked
        current = self.sides[side].events()[cid]
        self.sides[side].user_edit(cid, current if spec is None else self.event(spec))
        assert current.uid is not None
        self.edited[side].add(current.uid)
        if not self.two_way and side is self.mirror:
            self.dirty.add(cid)

    @rule(side=SIDES, index=st.integers(0, 50))
    def user_deletes(self, side: SideName, index: int) -> None:
        picked = self.pick(side, index)
        if picked is None:
            return
        side, cid = picked
        other = side.other()
        group = {self.sides[side].events()[cid].uid}
        for lk in self.store.links(self.pid):
            if lk.id_on(side) and canonical_id(lk.id_on(side) or "") == cid:
                group.add(lk.uid)
        for other_id in self.linked_with.get((side, cid), set()):
            counterpart = self.sides[other].event(other_id)
            if counterpart is not None:
                group.add(counterpart.uid)
        self.sides[side].user_delete(cid)
        self.user_deleted[side].add(cid)
        self.user_deleted_uids[side] |= {u for u in group if u}
        if self.two_way or side is self.source:
            self.tombstones.append((side, frozenset(u for u in group if u)))

    # -- the world around: servers misbehaving, time passing ----------------------------------
    @rule(change=ENVIRONMENT)
    def environment(self, change: tuple[object, ...]) -> None:
        """A server quirk toggled, or days passing (one rule, so user actions, faults and
        syncs make most of the steps)."""
        kind, *args = change
        if kind == "quirk":
            self.server_quirk(*args)  # type: ignore[arg-type]
        else:
            self.time_passes(*args)  # type: ignore[arg-type]

    def server_quirk(self, side: SideName, quirk: str, on: bool) -> None:
        """Toggle a server behaviour; ``token_reset`` refuses the cursors handed out so far;
        ``write_access`` off: the calendar turns read-only behind the pairing's back (two-way)."""
        memory = self.sides[side]
        if quirk == "flaky_etags":
            memory.flaky_etags = on
        elif quirk == "no_etag_after_write":
            memory.etag_after_write = not on
        elif quirk == "reencoded_hrefs":
            memory.reencode_hrefs = on
        elif quirk == "token_reset":
            memory.reset_tokens()
        elif quirk == "write_access" and self.two_way:
            memory.read_only = not on

    @rule(side=SIDES, op=st.sampled_from([None, "create", "update", "delete"]), error=FAULTS, after=st.booleans())
    def write_fails_once(self, side: SideName, op: str | None, error: type[DavbridgeError], after: bool) -> None:
        """The next such write fails; ``after``: it landed and only the reply was lost. A lost
        reply is a transport error (``SideError``: timeout, reset); a 412 or a 429 is an answer
        saying the write was not done (RFC 7232 4.2, RFC 6585 4), so those never land."""
        self.sides[side].fail_next_write(op, error=error, after=after and error is SideError)

    def time_passes(self, days: int) -> None:
        self.day += timedelta(days=days)
        for side in self.sides.values():
            side.set_window(self.window)

    # -- syncing ------------------------------------------------------------------------------
    @rule()
    def sync(self) -> None:
        self.sync_and_check()

    @rule()
    def settle(self) -> None:
        """Transient faults gone: a clean sync must follow within three runs."""
        for name, side in self.sides.items():
            side.disarm()
            side.read_only = name is self.read_only
        outcomes = []
        for _ in range(3):
            outcome, clean = self.sync_and_check()
            if clean:
                return
            outcomes.append(outcome.error or (outcome.applied and outcome.applied.failed))
        raise AssertionError(f"no clean sync within 3 runs without faults: {outcomes}")

    def run_sync(self) -> tuple[PairingOutcome, dict[SideName, list[WriteRecord]]]:
        marks = {name: len(side.write_log) for name, side in self.sides.items()}
        pairing = self.store.list_pairings(UPN)[0]
        outcome = sync_pairing(pairing, self.sides, self.store, window=self.window, now=self.clock())
        writes = {name: side.write_log[marks[name]:] for name, side in self.sides.items()}
        if outcome.error and outcome.error.startswith("MassDeletion"):
            # The admin confirms the deletions ("davbridge confirm"): the policy says so.
            pairing = self.store.list_pairings(UPN)[0]
            pairing.confirmed_deletes = pairing.blocked_deletes
            self.store.save_pairing(pairing)
        return outcome, writes

    def sync_and_check(self) -> tuple[PairingOutcome, bool]:
        links_before = self.store.links(self.pid)
        uids_before = {name: {cid: e.uid for cid, e in side.events().items()} for name, side in self.sides.items()}
        outcome, writes = self.run_sync()
        self.check_every_sync(links_before, writes, uids_before)
        clean = outcome.ok and outcome.applied is not None and not outcome.applied.failed \
            and not outcome.applied.quarantined
        if clean:
            self.check_clean()
        return outcome, clean

    # -- invariants ---------------------------------------------------------------------------
    def remember_links(self, links: list[ItemLink]) -> None:
        for lk in links:
            m, c = lk.id_on(M365), lk.id_on(CALDAV)
            if m and c:
                self.linked_with.setdefault((M365, canonical_id(m)), set()).add(canonical_id(c))
                self.linked_with.setdefault((CALDAV, canonical_id(c)), set()).add(canonical_id(m))

    def check_every_sync(self, links_before: list[ItemLink], writes: dict[SideName, list[WriteRecord]],
                         uids_before: dict[SideName, dict[str, str | None]]) -> None:
        """``uids_before``: each side's UIDs by canonical id before the sync (a copy carries
        its source's UID, so a deleted copy is matched to a deleted source by UID too, e.g.
        when the create's answer was lost and the link never held the copy's id)."""
        self.remember_links(links_before)
        self.remember_links(self.store.links(self.pid))
        if self.read_only is not None:
            assert not self.sides[self.read_only].write_log, "the read-only side was written"
        for name, records in writes.items():
            for record in records:
                if record.op == "delete" and record.landed:
                    assert record.id is not None
                    partners = self.linked_with.get((name, record.id), set())
                    uid = uids_before[name].get(record.id)
                    assert partners & self.user_deleted[name.other()] or uid in self.user_deleted_uids[name.other()], (
                        f"sync deleted {name.value} {record.id}, linked with {sorted(partners)}, none of which "
                        f"a user deleted on {name.other().value}")
                elif name is self.mirror and record.landed and record.id is not None:
                    self.dirty.discard(record.id)
        for name, side in self.sides.items():
            twice = [uid for uid, n in Counter(e.uid for e in side.events().values()).items() if n > 1]
            assert not twice, f"UIDs held twice on {name.value}: {twice}"
            back = self.dead & set(self.uids(name))
            assert not back, f"deleted events came back on {name.value}: {sorted(back)}"

    def check_clean(self) -> None:
        if self.two_way:
            inside = {name: Counter(e.fingerprint() for e in side.events().values() if event_in_window(e, self.window))
                      for name, side in self.sides.items()}
            assert inside[M365] == inside[CALDAV], self.describe_difference()
        else:
            self.check_mirror()
        for side, group in self.tombstones:
            if self.two_way and group & self.edited[side.other()]:
                continue  # edited on the other side: the edit is restored
            live = {name: group & set(self.uids(name)) for name in self.sides}
            assert not live[M365] and not live[CALDAV], f"deleted on {side.value} but still there: {live}"
            self.dead |= group
        self.tombstones.clear()
        for edited in self.edited.values():
            edited.clear()
        # Nothing changed since: a second sync writes nothing.
        outcome, writes = self.run_sync()
        assert outcome.ok and outcome.applied is not None and not outcome.applied.failed, outcome.error
        assert not writes[M365] and not writes[CALDAV], f"second sync wrote: {writes}"

    def check_mirror(self) -> None:
        source, mirror = self.sides[self.source], self.sides[self.mirror]
        by_source = {canonical_id(lk.id_on(self.source) or ""): lk for lk in self.store.links(self.pid)}
        for cid, event in source.events().items():
            if not event_in_window(event, self.window):
                continue
            link = by_source.get(cid)
            copy_id = link.id_on(self.mirror) if link is not None else None
            copy = mirror.event(copy_id) if copy_id else None
            assert copy is not None, f"source {self.source.value} {cid} ({event.subject}) has no copy on the mirror"
            if canonical_id(copy_id or "") not in self.dirty:
                assert copy.fingerprint() == event.fingerprint(), f"mirror copy of {cid} differs"

    def describe_difference(self) -> str:
        lines = []
        for name, side in self.sides.items():
            for cid, e in side.events().items():
                if event_in_window(e, self.window):
                    lines.append(f"{name.value} {cid}: {e.subject} {e.start} {e.location!r} uid={e.uid}")
        return "sides differ inside the window:\n" + "\n".join(lines)


class TwoWayMachine(SyncMachine):
    DIRECTIONS = (Direction.TWO_WAY,)


class OneWayMachine(SyncMachine):
    DIRECTIONS = (Direction.M365_TO_CALDAV, Direction.CALDAV_TO_M365)


class ReadOnlySourceMachine(SyncMachine):
    """One-way from a calendar the service may not write (admin: read-only pairings)."""

    DIRECTIONS = (Direction.M365_TO_CALDAV, Direction.CALDAV_TO_M365)
    READ_ONLY_SOURCE = True


TestTwoWay = TwoWayMachine.TestCase
TestTwoWay.settings = settings_for(EXAMPLES["two_way"])
TestOneWay = OneWayMachine.TestCase
TestOneWay.settings = settings_for(EXAMPLES["one_way"])
TestReadOnlySource = ReadOnlySourceMachine.TestCase
TestReadOnlySource.settings = settings_for(EXAMPLES["read_only"])


# -- the shortest failing runs, as plain tests -------------------------------------------------
STANDUP = {"subject": "Standup", "day": 0, "hour": 9, "minutes": 30, "location": "", "all_day": False}
MOVED = {**STANDUP, "location": "Room 1"}


def machine(machine_class: type[SyncMachine] = TwoWayMachine, *, m365: int = 1, caldav: int = 0,
            caldav_windowed: bool = True) -> SyncMachine:
    """A machine after set-up: ``m365`` / ``caldav`` Standup events, first sync done (clean)."""
    state = machine_class()
    seed = ([STANDUP] * m365, [STANDUP] * caldav)
    state.configure(0, ConflictPolicy.M365_WINS, (False, False), caldav_windowed, seed)
    state.settle()
    return state


def test_echo_with_a_new_etag_does_not_block_later_writes() -> None:
    """An item saved again without a synced change (new etag, same content: Outlook bumps the
    change key, a CalDAV server re-serialises) is an echo, but the link must then hold the new
    etag: else every later conditional write to it fails (PreconditionFailed, run after run)."""
    state = machine()
    state.user_edits(M365, 0, None)  # re-saved, nothing synced changed
    state.sync()
    state.user_edits(CALDAV, 0, MOVED)  # a real edit on the other side
    state.settle()


def test_a_delete_that_failed_once_is_retried() -> None:
    """A copy's deletion that failed once (transient error) must happen on a later run."""
    state = machine()
    state.user_deletes(CALDAV, 0)
    state.write_fails_once(M365, "delete", SideError, after=False)
    state.sync()
    state.settle()


def test_an_edit_moving_an_event_out_of_the_window_reaches_the_copy() -> None:
    """Microsoft 365 moves an event out of the window: Graph's calendarView delta reports
    ``@removed``, the event still exists, so nothing is reported, and the copy stays at the
    old time inside the window."""
    state = machine()
    state.user_edits(M365, 0, {**STANDUP, "day": -4})  # the window starts 3 days back
    state.settle()


def test_a_deleted_one_way_copy_is_restored() -> None:
    """One-way: a user deletes the mirror's copy; the copy is restored from the source."""
    state = machine(OneWayMachine)
    state.user_deletes(CALDAV, 0)
    state.settle()


def test_a_created_copy_whose_reply_was_lost_does_not_resurrect_a_deleted_source() -> None:
    """The create of the copy landed but its reply was lost; the user deletes the original
    before the next run. The copy must not be taken for a new event and copied back."""
    state = machine(m365=0)
    state.user_creates(M365, STANDUP)
    state.write_fails_once(CALDAV, "create", SideError, after=True)
    state.sync()
    state.user_deletes(M365, 0)
    state.settle()


def test_an_update_whose_reply_was_lost_is_not_an_edit_that_beats_a_deletion() -> None:
    """The sync's own update landed but its reply was lost; the user then deletes the event
    on the side the edit came from. The landed update is not a user's edit: the event goes."""
    state = machine()
    state.user_edits(CALDAV, 0, MOVED)
    state.write_fails_once(M365, "update", SideError, after=True)
    state.sync()
    state.user_deletes(CALDAV, 0)
    state.settle()


def test_a_landed_create_whose_reply_was_lost_is_linked_at_once() -> None:
    """The copy's create landed and its reply was lost; the user deletes that copy before the
    next run. The sync must have linked the copy already (``Side.find_created``), so the
    deletion reaches the original instead of the original being copied again."""
    state = machine(m365=0)
    state.user_creates(CALDAV, STANDUP)
    state.write_fails_once(M365, "create", SideError, after=True)
    state.sync()
    state.user_deletes(M365, 0)
    state.settle()


def test_a_run_stopped_by_throttling_keeps_the_items_it_was_retrying() -> None:
    """A create failed (re-read next run from its pending row); the next run is stopped by
    throttling before it writes: the pending row must survive, or the copy is never made."""
    state = machine(m365=0)
    state.user_creates(M365, STANDUP)
    state.write_fails_once(CALDAV, "create", SideError, after=False)
    state.sync()
    state.write_fails_once(CALDAV, None, Throttled, after=False)
    state.sync()
    state.sync()
    state.settle()


def test_a_duplicate_identity_is_quarantined_and_not_copied() -> None:
    """A second CalDAV item carrying a linked UID is quarantined; it must not also be
    created in Microsoft 365 as a new event (a duplicate there)."""
    from sync_core.reconcile import CreateOn, PairingRules, Quarantine, reconcile
    from sync_core.sides.base import ChangeBatch, RemoteItem

    start = T0 + timedelta(hours=9)
    event = Event("Standup", start, start + timedelta(minutes=30), timezone="UTC", uid="u1")
    fp = event.fingerprint()
    link = ItemLink("p1", "u1", "m1", '"m-1"', fp, "/cal/a.ics", '"c-1"', fp)
    stray = RemoteItem("/cal/b.ics", '"c-9"', event, frozenset({"u1"}))
    plan = reconcile(PairingRules("p1"), [link], ChangeBatch(cursor="m"), ChangeBatch(changed=[stray], cursor="c"))
    assert any(isinstance(a, Quarantine) for a in plan.actions)
    assert not [a for a in plan.actions if isinstance(a, CreateOn)], plan.actions


# -- MemorySide itself ---------------------------------------------------------------------------
def test_memory_side_lists_changes_since_a_cursor_and_reports_resets() -> None:
    side = MemorySide(CALDAV)
    first = side.user_create(Event("A", T0, T0 + timedelta(hours=1)))
    batch = side.changes(None, {})
    assert [i.id for i in batch.changed] == [first] and not batch.reset
    second = side.user_create(Event("B", T0, T0 + timedelta(hours=1)))
    side.user_delete(first)
    later = side.changes(batch.cursor, {first: batch.changed[0].etag})
    assert [i.id for i in later.changed] == [second] and later.deleted == [first] and not later.reset
    assert side.changes(later.cursor, {}).changed == []
    side.reset_tokens()
    full = side.changes(later.cursor, {first: None, second: None})
    assert full.reset and [i.id for i in full.changed] == [second] and full.deleted == [first]


def test_memory_side_writes_are_conditional_and_idempotent() -> None:
    from sync_core.errors import AlreadyExists, AuthenticationFailed, NotFound

    side = MemorySide(M365, etag_after_write=False)
    event = Event("A", T0, T0 + timedelta(hours=1), uid="u1")
    written = side.create(event, idempotency_key="k1")
    assert written.etag is None and side.etag(written.id) is not None
    try:
        side.create(event, idempotency_key="k1")
        raise AssertionError("a second create with the key")
    except AlreadyExists:
        pass
    try:
        side.update(written.id, event, etag='"stale"')
        raise AssertionError("update with a stale etag")
    except PreconditionFailed:
        pass
    side.delete(written.id, etag=side.etag(written.id))
    side.delete(written.id, etag=None)  # gone: not an error
    try:
        side.update(written.id, event, etag=None)
        raise AssertionError("update of a deleted item")
    except NotFound:
        pass
    side.read_only = True
    try:
        side.create(event, idempotency_key="k2")
        raise AssertionError("write to a read-only side")
    except AuthenticationFailed:
        pass
    assert [(r.op, r.landed, r.error) for r in side.write_log][-1] == ("create", False, "AuthenticationFailed")


def test_memory_side_quirks() -> None:
    window = (T0, T0 + timedelta(days=10))
    side = MemorySide(CALDAV, window=window, flaky_etags=True, reencode_hrefs=True)
    inside = side.user_create(Event("A", T0, T0 + timedelta(hours=1)))
    assert inside == "/cal/user-1%40client.ics" and canonical_id(inside) == "/cal/user-1@client.ics"
    side.user_create(Event("B", T0 - timedelta(days=5), T0 - timedelta(days=4)))  # outside the window
    batch = side.changes(None, {})
    assert [i.id for i in batch.changed] == [inside]  # in the server's spelling; B is not listed
    etag = batch.changed[0].etag
    again = side.get([canonical_id(inside)])  # the caller's spelling is kept
    assert again[0].id == canonical_id(inside) and again[0].etag == etag
    # Flaky: the first read after a write changes the etag, content unchanged.
    side.user_edit(inside, Event("A2", T0, T0 + timedelta(hours=1)))
    written = side.etag(inside)
    reread = side.get([inside])[0]
    assert reread.etag != written and reread.etag == side.etag(inside)
    # A moved window: a full listing (reset); B is inside now, nothing was deleted.
    side.set_window((T0 - timedelta(days=6), T0 + timedelta(days=4)))
    moved = side.changes(batch.cursor, {canonical_id(inside): etag})
    assert moved.reset and not moved.deleted
    assert {i.event.subject for i in moved.changed if i.event} == {"A2", "B"}
    assert moved.changed[0].id == canonical_id(inside)
    # A lost reply: the write landed, the caller got an error.
    side.fail_next_write("update", error=SideError, after=True)
    try:
        side.update(inside, Event("A3", T0, T0 + timedelta(hours=1)), etag=None)
        raise AssertionError("the armed failure did not fire")
    except SideError:
        pass
    current = side.event(inside)
    assert current is not None and current.subject == "A3"

"""The pure reconcile step: saved state + both sides' changes -> plan."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from sync_core.errors import MassDeletion
from sync_core.model import Event
from sync_core.reconcile import (
    CreateOn,
    DeleteOn,
    DropLink,
    PairingRules,
    Quarantine,
    SaveLink,
    UpdateOn,
    idempotency_key,
    reconcile,
)
from sync_core.sides.base import ChangeBatch, RemoteItem, SideName
from sync_core.state.base import ConflictPolicy, Direction, ItemLink

M365, CALDAV = SideName.M365, SideName.CALDAV
T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
RULES = PairingRules("p1")


def ev(subject: str = "Standup", *, uid: str | None = None, start: datetime = T0, minutes: int = 30,
       modified: datetime | None = None, body: str = "") -> Event:
    return Event(subject=subject, start=start, end=start + timedelta(minutes=minutes), timezone="UTC",
                 uid=uid, body_text=body, last_modified=modified)


def item(item_id: str, event: Event, etag: str = "e1", uids: frozenset[str] = frozenset()) -> RemoteItem:
    return RemoteItem(item_id, etag, event, match_uids=uids or frozenset({event.uid} if event.uid else ()))


def linked(uid: str, event: Event, m_id: str = "m1", c_id: str = "/c/1.ics") -> ItemLink:
    fp = event.fingerprint()
    return ItemLink("p1", uid, m_id, "me1", fp, c_id, "ce1", fp)


def batch(*items: RemoteItem, deleted: tuple[str, ...] = ()) -> ChangeBatch:
    return ChangeBatch(changed=list(items), deleted=list(deleted), cursor="next")


def kinds(plan) -> list[tuple[str, str | None]]:
    return [(type(a).__name__, getattr(getattr(a, "target", None), "value", None)) for a in plan.actions]


def test_first_sync_creates_each_side_on_the_other():
    plan = reconcile(RULES, [], batch(item("m1", ev("A", uid="ical-a"))), batch(item("/c/b.ics", ev("B", uid="b"))))
    creates = {(a.target, a.event.subject) for a in plan.actions if isinstance(a, CreateOn)}
    assert creates == {(CALDAV, "A"), (M365, "B")}
    by_target = {a.target: a for a in plan.actions if isinstance(a, CreateOn)}
    assert by_target[CALDAV].event.uid == "ical-a"
    assert by_target[M365].idempotency_key == idempotency_key("p1", "b")


def test_first_sync_pairs_by_uid_and_by_content_without_duplicates():
    later = T0 + timedelta(hours=2)
    m = [item("m1", ev("Same uid", uid="u1")), item("m2", ev("Same content", uid="graph-x", start=later))]
    c = [item("/c/1.ics", ev("Same uid", uid="u1")), item("/c/2.ics", ev("Same content ", uid="cal-y",
                                                                          start=T0 + timedelta(hours=2)))]
    plan = reconcile(RULES, [], batch(*m), batch(*c))
    assert not plan.writes()
    saved = sorted((a.link.m365_id, a.link.caldav_href) for a in plan.actions if isinstance(a, SaveLink))
    assert saved == [("m1", "/c/1.ics"), ("m2", "/c/2.ics")]


def test_rerun_after_crash_pairs_graph_copy_by_transaction_id():
    """The Graph create landed, the link row did not: the copy carries txn:<key(uid)>."""
    source = item("/c/1.ics", ev("Dentist", uid="u1"))
    copy = item("m-new", ev("Dentist", uid="ical-server-set"),
                uids=frozenset({"ical-server-set", "txn:" + idempotency_key("p1", "u1")}))
    plan = reconcile(RULES, [], batch(copy), batch(source))
    assert kinds(plan) == [("SaveLink", None)]
    assert plan.actions[0].link.m365_id == "m-new"


def test_own_writes_are_not_changes():
    event = ev("Mine", uid="u1")
    link = linked("u1", event)
    # same etag on M365; different etag but same content on CalDAV (server re-serialised)
    plan = reconcile(RULES, [link], batch(item("m1", event, etag="me1")),
                     batch(item("/c/1.ics", event, etag="changed-etag")))
    # No write; only the new etag is kept, so later If-Match writes to the item hold.
    (action,) = plan.actions
    assert isinstance(action, SaveLink) and not plan.writes()
    assert action.link.caldav_etag == "changed-etag" and action.link.m365_etag == link.m365_etag


def test_edit_on_one_side_updates_the_other_with_stable_uid():
    link = linked("u1", ev("Old", uid="u1"))
    plan = reconcile(RULES, [link], batch(item("m1", ev("New", uid="graph-ical"), etag="me2")), batch())
    (action,) = plan.actions
    assert isinstance(action, UpdateOn) and action.target is CALDAV
    assert action.event.subject == "New" and action.event.uid == "u1"
    assert action.link.m365_etag == "me2"


@pytest.mark.parametrize(("policy", "winner"), [
    (ConflictPolicy.M365_WINS, "from m365"),
    (ConflictPolicy.CALDAV_WINS, "from caldav"),
    (ConflictPolicy.NEWEST_WINS, "from caldav"),
])
def test_conflict_follows_policy(policy, winner):
    link = linked("u1", ev("Old", uid="u1"))
    m = item("m1", ev("from m365", uid="u1", modified=T0), etag="me2")
    c = item("/c/1.ics", ev("from caldav", uid="u1", modified=T0 + timedelta(minutes=1)), etag="ce2")
    plan = reconcile(PairingRules("p1", policy=policy), [link], batch(m), batch(c))
    (action,) = plan.actions
    assert isinstance(action, UpdateOn)
    assert action.event.subject == winner
    assert action.target is (CALDAV if winner == "from m365" else M365)


def test_same_edit_on_both_sides_is_no_conflict():
    link = linked("u1", ev("Old", uid="u1"))
    plan = reconcile(RULES, [link], batch(item("m1", ev("New"), etag="me2")),
                     batch(item("/c/1.ics", ev("New"), etag="ce2")))
    assert kinds(plan) == [("SaveLink", None)]


def test_deletion_propagates_and_both_deleted_drops_link():
    link = linked("u1", ev(uid="u1"))
    plan = reconcile(RULES, [link], batch(deleted=("m1",)), batch())
    assert kinds(plan) == [("DeleteOn", "caldav")]
    plan = reconcile(RULES, [link], batch(deleted=("m1",)), batch(deleted=("/c/1.ics",)))
    assert isinstance(plan.actions[0], DropLink)


def test_modification_beats_deletion_whatever_the_policy():
    link = linked("u1", ev("Old", uid="u1"))
    plan = reconcile(PairingRules("p1", policy=ConflictPolicy.M365_WINS), [link], batch(deleted=("m1",)),
                     batch(item("/c/1.ics", ev("Edited"), etag="ce2")))
    (action,) = plan.actions
    assert isinstance(action, CreateOn) and action.target is M365 and action.event.subject == "Edited"
    assert action.idempotency_key != idempotency_key("p1", "u1")


def test_new_items_outside_the_window_are_not_created():
    rules = PairingRules("p1", window_start=T0 - timedelta(days=30), window_end=T0 + timedelta(days=365))
    old = item("/c/old.ics", ev("Ancient", uid="old", start=T0 - timedelta(days=400)))
    plan = reconcile(rules, [], batch(), batch(old))
    assert plan.actions == []


def test_one_way_never_writes_the_source_and_records_mirror_edits():
    rules = PairingRules("p1", direction=Direction.M365_TO_CALDAV)
    link = linked("u1", ev("Old", uid="u1"))
    plan = reconcile(rules, [link], batch(), batch(item("/c/1.ics", ev("Mirror edit"), etag="ce2"),
                                                    item("/c/new.ics", ev("Only on caldav", uid="n"))))
    assert kinds(plan) == [("SaveLink", None)]
    assert plan.actions[0].link.caldav_etag == "ce2"


def test_broken_item_is_quarantined_and_the_rest_syncs():
    broken = RemoteItem("/c/bad.ics", "x", None, error="InvalidICalendar: no VEVENT")
    plan = reconcile(RULES, [], batch(), batch(broken, item("/c/ok.ics", ev("Fine", uid="ok"))))
    assert isinstance(plan.actions[0], Quarantine) and plan.actions[0].item_id == "/c/bad.ics"
    assert kinds(plan)[1] == ("CreateOn", "m365")


def test_duplicate_uid_is_quarantined():
    plan = reconcile(RULES, [], batch(item("m1", ev("A", uid="dup")), item("m2", ev("B", uid="dup"))), batch())
    assert [type(a) for a in plan.actions] == [Quarantine, CreateOn]


def test_mass_deletion_is_refused():
    links = [linked(f"u{i}", ev(uid=f"u{i}"), m_id=f"m{i}", c_id=f"/c/{i}.ics") for i in range(30)]
    with pytest.raises(MassDeletion):
        reconcile(RULES, links, batch(), batch(deleted=tuple(f"/c/{i}.ics" for i in range(20))))
    plan = reconcile(RULES, links, batch(), batch(deleted=tuple(f"/c/{i}.ics" for i in range(5))))
    assert sum(isinstance(a, DeleteOn) for a in plan.actions) == 5

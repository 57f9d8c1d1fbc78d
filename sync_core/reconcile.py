"""Reconcile: saved state + each side's changes -> plan. Pure: no I/O, no clock.

The algorithm follows vdirsyncer's shape (status table + two change sets -> tiny named
actions), adapted to calendars that cannot share ids:

1. A read matching what a link saved for that side (same etag, or same fingerprint) is not a
   change: that is how the service's own writes are never seen as new changes.
2. A linked item changed on one side is copied to the other; changed on both sides is a
   conflict settled by the pairing's policy (identical content is no conflict).
3. A linked item confirmed deleted on one side is deleted on the other. Deleted on one side
   but modified on the other: the modification wins and is restored, whatever the policy,
   because nothing a user wrote may be lost.
4. Unlinked items are paired first by identity (CalDAV UID / Graph iCalUId, our UID tag, the
   create idempotency key), then by content (subject, start, end), so a first sync or a rerun
   after a crash creates no duplicate. What is left is created on the other side, if it lies
   inside the sync window.
5. One-way pairings never write the source side; edits of the mirror are recorded, not copied.
6. Safety: a plan deleting more than max(``MAX_DELETE_FLOOR``, ``MAX_DELETE_SHARE`` of a side's
   linked items) raises :class:`~sync_core.errors.MassDeletion`, unless an admin confirmed at
   least that many deletions for this pairing (``PairingRules.confirmed_deletes``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time

from sync_core.errors import MassDeletion
from sync_core.model import Event
from sync_core.sides.base import ChangeBatch, RemoteItem, SideName
from sync_core.state.base import ConflictPolicy, Direction, ItemLink

MAX_DELETE_SHARE = 0.25
MAX_DELETE_FLOOR = 10

M365, CALDAV = SideName.M365, SideName.CALDAV


# ---------------------------------------------------------------------------------------------
# Actions: each one remote write (or none) plus the link row to save once it succeeded.
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CreateOn:
    """Create ``event`` on ``target``; save ``link`` with the new id filled in."""

    target: SideName
    event: Event
    link: ItemLink
    idempotency_key: str
    reason: str = "new"


@dataclass(frozen=True)
class UpdateOn:
    """Overwrite the linked item on ``target`` with ``event`` (If-Match the saved etag)."""

    target: SideName
    event: Event
    link: ItemLink
    reason: str = "changed"


@dataclass(frozen=True)
class DeleteOn:
    """Delete the linked item on ``target`` (If-Match the saved etag), then drop the link.

    ``deleted_id`` is the id the item had on the other side, where it was deleted: if this
    write fails, the deletion must still be known next run (it is re-read there and found gone)."""

    target: SideName
    link: ItemLink
    deleted_id: str | None = None


@dataclass(frozen=True)
class SaveLink:
    """Save a link row without writing to either side (pairing found, new etag recorded)."""

    link: ItemLink
    reason: str


@dataclass(frozen=True)
class DropLink:
    """Forget a link whose items are gone from both sides."""

    link: ItemLink


@dataclass(frozen=True)
class Quarantine:
    """Record a per-item problem; the item is skipped and everything else keeps syncing."""

    pairing_id: str
    side: SideName
    item_id: str
    reason: str


Action = CreateOn | UpdateOn | DeleteOn | SaveLink | DropLink | Quarantine


@dataclass
class Plan:
    actions: list[Action] = field(default_factory=list)
    #: New events not copied because the first-sync cap was reached.
    over_first_sync_cap: int = 0

    def writes(self) -> list[Action]:
        return [a for a in self.actions if isinstance(a, CreateOn | UpdateOn | DeleteOn)]

    def summary(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for action in self.actions:
            key = type(action).__name__
            if isinstance(action, CreateOn | UpdateOn | DeleteOn):
                key = f"{key}:{action.target.value}"
            counts[key] = counts.get(key, 0) + 1
        return counts


@dataclass(frozen=True)
class PairingRules:
    """The parts of a pairing's settings the reconcile step needs."""

    pairing_id: str
    direction: Direction = Direction.TWO_WAY
    policy: ConflictPolicy = ConflictPolicy.NEWEST_WINS
    window_start: datetime | None = None
    window_end: datetime | None = None
    #: Sides whose calendar cannot be written (CalDAV privileges, Graph canEdit): never written.
    read_only: frozenset[SideName] = frozenset()
    #: First sync only (no cursor saved yet): at most this many creates, upcoming first.
    first_sync_cap: int | None = None
    #: "Now" for the first-sync order (reconcile reads no clock).
    reference_time: datetime | None = None
    #: Only events modified at or after this instant are copied as new.
    only_changes_after: datetime | None = None
    #: Copies are busy-only blocks with this title.
    privacy_title: str | None = None
    #: An admin confirmed a run deleting up to this many items per side (``davbridge confirm``).
    confirmed_deletes: int = 0

    def writes_to(self, side: SideName) -> bool:
        if side in self.read_only:
            return False
        if self.direction is Direction.TWO_WAY:
            return True
        return side is (CALDAV if self.direction is Direction.M365_TO_CALDAV else M365)

    def reads_from(self, side: SideName) -> bool:
        return self.writes_to(side.other())


def idempotency_key(pairing_id: str, uid: str) -> str:
    """Create key for one item: CalDAV resource name / Graph ``transactionId``.

    Deterministic, so a create retried after a crash targets the same resource (CalDAV
    If-None-Match: * answers 412) or the same transaction (Graph does not create twice)."""
    return "db-" + hashlib.sha256(f"{pairing_id}|{uid}".encode()).hexdigest()[:40]


# ---------------------------------------------------------------------------------------------
def reconcile(
    rules: PairingRules,
    links: Sequence[ItemLink],
    m365: ChangeBatch,
    caldav: ChangeBatch,
) -> Plan:
    """Decide what to write where. See the module docstring for the rules."""
    return _Reconciler(rules, links, {M365: m365, CALDAV: caldav}).run()


class _Duplicate:
    """Marker: an unlinked item carries an identity another linked item holds."""


_DUPLICATE = _Duplicate()


@dataclass
class _Change:
    """A linked item's net change on one side this run."""

    item: RemoteItem | None = None  # changed content
    deleted: bool = False


class _Reconciler:
    def __init__(self, rules: PairingRules, links: Sequence[ItemLink], batches: dict[SideName, ChangeBatch]):
        self.rules = rules
        self.batches = batches
        self.plan = Plan()
        self.by_id: dict[SideName, dict[str, ItemLink]] = {M365: {}, CALDAV: {}}
        self.by_uid: dict[str, ItemLink] = {}
        self.by_identity: dict[str, ItemLink] = {}
        #: Linked items read this run, echoes included, by link UID.
        self.read_now: dict[SideName, dict[str, RemoteItem]] = {M365: {}, CALDAV: {}}
        for link in links:
            self.by_uid[link.uid] = link
            self.by_identity[link.uid] = link
            self.by_identity["txn:" + idempotency_key(rules.pairing_id, link.uid)] = link
            if link.m365_id:
                self.by_id[M365][link.m365_id] = link
            if link.caldav_href:
                self.by_id[CALDAV][link.caldav_href] = link

    # -- entry -----------------------------------------------------------------------------
    def run(self) -> Plan:
        linked: dict[str, dict[SideName, _Change]] = {}
        new: dict[SideName, list[RemoteItem]] = {M365: [], CALDAV: []}
        refreshed: set[str] = set()
        for side, batch in self.batches.items():
            seen: set[str] = set()
            for item in _last_read_wins(batch.changed):
                if item.event is None:
                    self._quarantine(side, item.id, item.error or "unreadable item")
                    continue
                link = self.by_id[side].get(item.id) or self._claim_by_uid(side, item)
                if isinstance(link, _Duplicate):
                    continue  # quarantined: neither linked nor copied as new
                if link is None:
                    new[side].append(item)
                    continue
                self.read_now[side][link.uid] = item
                if _is_echo(side, link, item):
                    if item.etag is not None and item.etag != link.etag_on(side):
                        refreshed.add(self._refresh(side, link, item).uid)
                    continue
                linked.setdefault(link.uid, {})[side] = _Change(item=item)
                seen.add(item.id)
            for item_id in batch.deleted:
                link = self.by_id[side].get(item_id)
                if link is not None and item_id not in seen:
                    linked.setdefault(link.uid, {})[side] = _Change(deleted=True)
        for uid, changes in linked.items():
            self._linked(self.by_uid[uid], changes.get(M365), changes.get(CALDAV))
        for uid in sorted(refreshed - linked.keys()):
            self.plan.actions.append(SaveLink(self.by_uid[uid], "same content, new etag"))
        self._pair_new(new[M365], new[CALDAV])
        self._apply_first_sync_cap()
        self._check_mass_deletion()
        return self.plan

    def _refresh(self, side: SideName, link: ItemLink, item: RemoteItem) -> ItemLink:
        """An echo with a new etag (re-saved without a synced change, or a server that
        re-serialises): the link must hold the new etag, or every later If-Match write to the
        item fails (RFC 7232 3.1). Later actions of this run start from the refreshed link."""
        return self._relink(link.with_side(side, link.id_on(side) or item.id, item.etag,
                                           link_fingerprint(link, side)))

    def _relink(self, link: ItemLink) -> ItemLink:
        """Use ``link`` (a newer copy of a saved link) for the rest of this run."""
        self.by_uid[link.uid] = link
        for key in (link.uid, "txn:" + idempotency_key(self.rules.pairing_id, link.uid)):
            self.by_identity[key] = link
        for side in (M365, CALDAV):
            item_id = link.id_on(side)
            if item_id:
                self.by_id[side][item_id] = link
        return link

    def _quarantine(self, side: SideName, item_id: str, reason: str) -> None:
        self.plan.actions.append(Quarantine(self.rules.pairing_id, side, item_id, reason))

    def _claim_by_uid(self, side: SideName, item: RemoteItem) -> ItemLink | _Duplicate | None:
        """An unlinked item carrying a link's identity whose id on this side is not set yet.

        This is the crash case: the create reached the side, the link row was never saved
        with the new id. A link that already holds another id is a duplicate identity: the
        item is quarantined and ``_DUPLICATE`` returned (it must not be created elsewhere)."""
        for identity in sorted(_identities(self.rules.pairing_id, item)):
            link = self.by_identity.get(identity)
            if link is None:
                continue
            if link.id_on(side) is None:
                return self._relink(link.with_side(side, item.id, None, link_fingerprint(link, side)))
            if link.id_on(side) != item.id:
                self._quarantine(side, item.id, "duplicate identity: another item already carries this UID")
                return _DUPLICATE
        return None

    # -- linked items ------------------------------------------------------------------------
    def _linked(self, link: ItemLink, m365: _Change | None, caldav: _Change | None) -> None:
        rules = self.rules
        # One-way: the mirror's edits are recorded so later writes' If-Match holds; its
        # deletions are restored by the engine (it re-reads the source item).
        for side, change in ((M365, m365), (CALDAV, caldav)):
            if change is not None and change.item is not None and not rules.reads_from(side):
                link = _with_side(link, side, change.item)
                self.plan.actions.append(SaveLink(link, f"{side.value} mirror edit ignored (one-way)"))
        m365 = m365 if m365 is None or rules.reads_from(M365) or m365.deleted else None
        caldav = caldav if caldav is None or rules.reads_from(CALDAV) or caldav.deleted else None

        if m365 and caldav and m365.deleted and caldav.deleted:
            self.plan.actions.append(DropLink(link))
            return
        for gone, other in ((M365, caldav), (CALDAV, m365)):
            change = m365 if gone is M365 else caldav
            if change is None or not change.deleted:
                continue
            if other is not None and other.item is not None:
                # Deleted here, modified there: the modification is restored here.
                gone_id = link.id_on(gone) or ""
                self._copy(_with_side(_cleared(link, gone), gone.other(), other.item), other.item, gone,
                           create=True, reason="restored: edited on the other side after deletion",
                           key_salt=f"|restore|{gone_id}")
            elif rules.reads_from(gone) and rules.writes_to(gone.other()):
                if link.id_on(gone.other()):
                    self.plan.actions.append(DeleteOn(gone.other(), _cleared(link, gone), link.id_on(gone)))
                else:
                    self.plan.actions.append(DropLink(link))
            elif rules.writes_to(gone) and (source := self.read_now[gone.other()].get(link.uid)) is not None:
                # A one-way mirror copy was deleted and its source is still there (the engine
                # re-read it): the copy is created again.
                gone_id = link.id_on(gone) or ""
                self._copy(_with_side(_cleared(link, gone), gone.other(), source), source, gone, create=True,
                           reason="restored: mirror copy deleted", key_salt=f"|restore|{gone_id}")
            else:
                self.plan.actions.append(SaveLink(_cleared(link, gone), f"{gone.value} mirror deleted"))
            return

        m_item = m365.item if m365 else None
        c_item = caldav.item if caldav else None
        if m_item and c_item:
            assert m_item.event is not None and c_item.event is not None
            both = _with_side(_with_side(link, M365, m_item), CALDAV, c_item)
            if m_item.event.fingerprint() == c_item.event.fingerprint():
                self.plan.actions.append(SaveLink(both, "same edit on both sides"))
                return
            winner = self._winner(m_item, c_item)
            src = m_item if winner is M365 else c_item
            self._copy(both, src, winner.other(), create=False, reason=f"conflict: {winner.value} wins")
        elif m_item:
            self._copy(_with_side(link, M365, m_item), m_item, CALDAV, create=False)
        elif c_item:
            self._copy(_with_side(link, CALDAV, c_item), c_item, M365, create=False)

    def _winner(self, m_item: RemoteItem, c_item: RemoteItem) -> SideName:
        policy = self.rules.policy
        if policy is ConflictPolicy.M365_WINS:
            return M365
        if policy is ConflictPolicy.CALDAV_WINS:
            return CALDAV
        assert m_item.event is not None and c_item.event is not None
        # iCalendar LAST-MODIFIED has whole seconds: compare both at that resolution.
        m_time, c_time = _seconds(m_item.event.last_modified), _seconds(c_item.event.last_modified)
        if c_time is not None and (m_time is None or c_time > m_time):
            return CALDAV
        return M365  # ties and unknown times: Microsoft 365 (documented choice)

    def _copy(self, link: ItemLink, source: RemoteItem, target: SideName, *, create: bool,
              reason: str = "changed", key_salt: str = "") -> None:
        """Write ``source``'s event to ``target`` (one-way rules permitting)."""
        assert source.event is not None
        if not self.rules.writes_to(target):
            self.plan.actions.append(SaveLink(link, f"not written to {target.value} (one-way)"))
            return
        event = source.event.with_uid(link.uid)
        if self.rules.privacy_title is not None:
            event = event.as_busy_block(self.rules.privacy_title)
            if not create and link.id_on(target) and event.fingerprint() == link_fingerprint(link, target):
                self.plan.actions.append(SaveLink(_with_side(link, target.other(), source),
                                                  "privacy copy unchanged"))
                return
        if create or link.id_on(target) is None:
            # A restore uses its own key: the first create's key names a deleted item.
            key = idempotency_key(self.rules.pairing_id, link.uid + key_salt)
            self.plan.actions.append(CreateOn(target, event, link, key, reason))
        else:
            self.plan.actions.append(UpdateOn(target, event, link, reason))

    # -- unlinked items ----------------------------------------------------------------------
    def _pair_new(self, m_new: list[RemoteItem], c_new: list[RemoteItem]) -> None:
        c_new = self._drop_duplicates(CALDAV, c_new)
        m_new = self._drop_duplicates(M365, m_new)
        c_by_uid: dict[str, RemoteItem] = {}
        c_by_content: dict[str, list[RemoteItem]] = {}
        for item in c_new:
            for uid in _identities(self.rules.pairing_id, item):
                c_by_uid.setdefault(uid, item)
            assert item.event is not None
            c_by_content.setdefault(item.event.match_key(), []).append(item)
        paired: set[str] = set()
        for m_item in m_new:
            assert m_item.event is not None
            match = next((c_by_uid[u] for u in sorted(_identities(self.rules.pairing_id, m_item))
                          if u in c_by_uid and c_by_uid[u].id not in paired), None)
            if match is None:
                candidates = [c for c in c_by_content.get(m_item.event.match_key(), []) if c.id not in paired]
                match = candidates[0] if candidates else None
            if match is None:
                self._create_new(M365, m_item)
                continue
            paired.add(match.id)
            self._pair(m_item, match)
        for c_item in c_new:
            if c_item.id not in paired:
                self._create_new(CALDAV, c_item)

    def _drop_duplicates(self, side: SideName, items: list[RemoteItem]) -> list[RemoteItem]:
        """Two unlinked items on one side with the same UID: keep the first, quarantine the rest."""
        seen: set[str] = set()
        kept = []
        for item in items:
            uid = item.event.uid if item.event else None
            if uid and uid in seen:
                self._quarantine(side, item.id, "duplicate identity: UID used twice")
                continue
            if uid:
                seen.add(uid)
            kept.append(item)
        return kept

    def _pair(self, m_item: RemoteItem, c_item: RemoteItem) -> None:
        """Link two existing items found to be the same event; settle differing content."""
        assert m_item.event is not None and c_item.event is not None
        uid = c_item.event.uid or m_item.event.uid or c_item.id
        link = _with_side(_with_side(ItemLink(self.rules.pairing_id, uid), M365, m_item), CALDAV, c_item)
        if m_item.event.fingerprint() == c_item.event.fingerprint():
            self.plan.actions.append(SaveLink(link, "paired existing items"))
            return
        winner = self._winner(m_item, c_item)
        if not self.rules.reads_from(winner):
            winner = winner.other()
        src = m_item if winner is M365 else c_item
        self._copy(link, src, winner.other(), create=False, reason=f"paired; {winner.value} content wins")

    def _create_new(self, side: SideName, item: RemoteItem) -> None:
        assert item.event is not None
        if not self.rules.reads_from(side) or not self._in_window(item.event):
            return
        after = self.rules.only_changes_after
        if after is not None and (item.event.last_modified is None or item.event.last_modified < after):
            return  # "only events created or changed after enabling": this one is older
        uid = item.event.uid or item.id
        link = replace(_with_side(ItemLink(self.rules.pairing_id, uid), side, item), origin=side.value)
        self._copy(link, item, side.other(), create=True, reason="new")

    def _apply_first_sync_cap(self) -> None:
        """First sync: keep at most ``first_sync_cap`` creates of new events, upcoming ones
        first (soonest first), then the recent past (newest first); the rest are counted."""
        cap, now = self.rules.first_sync_cap, self.rules.reference_time
        creates = [a for a in self.plan.actions if isinstance(a, CreateOn) and a.reason == "new"]
        if cap is None or len(creates) <= cap:
            return
        ref = now or self.rules.window_start or datetime.min.replace(tzinfo=UTC)

        def order(action: CreateOn) -> tuple[int, float]:
            start = _as_utc(action.event.start, ref).timestamp()
            return (0, start) if start >= ref.timestamp() else (1, -start)

        keep = {id(a) for a in sorted(creates, key=order)[:max(0, cap)]}
        self.plan.actions = [a for a in self.plan.actions
                             if not (isinstance(a, CreateOn) and a.reason == "new" and id(a) not in keep)]
        self.plan.over_first_sync_cap = len(creates) - len(keep)

    def _in_window(self, event: Event) -> bool:
        start, end = self.rules.window_start, self.rules.window_end
        if start is None or end is None:
            return True
        ev_start, ev_end = _as_utc(event.start, start), _as_utc(event.end, start)
        return ev_end >= start and ev_start <= end

    # -- safety ------------------------------------------------------------------------------
    def _check_mass_deletion(self) -> None:
        total = {M365: len(self.by_id[M365]), CALDAV: len(self.by_id[CALDAV])}
        for side in (M365, CALDAV):
            deletes = sum(1 for a in self.plan.actions if isinstance(a, DeleteOn) and a.target is side)
            if deletes > max(MAX_DELETE_FLOOR, MAX_DELETE_SHARE * total[side]) \
                    and deletes > self.rules.confirmed_deletes:
                raise MassDeletion(
                    f"refusing to delete {deletes} of {total[side]} linked items on {side.value} in one run; "
                    "nothing was written. If that is right, confirm it (davbridge confirm UPN PAIRING)",
                    deletes=deletes)


# -------------------------------------------------------------------------------------------
def _last_read_wins(items: Iterable[RemoteItem]) -> list[RemoteItem]:
    """Replays happen (Graph delta pages, retried pending reads): keep the last read per id."""
    by_id: dict[str, RemoteItem] = {}
    for item in items:
        by_id.pop(item.id, None)
        by_id[item.id] = item
    return list(by_id.values())


def _identities(pairing_id: str, item: RemoteItem) -> set[str]:
    """Identities an item can be paired by: its UIDs and, for each, the create key it implies.

    A Graph event we created carries ``transactionId`` = idempotency_key(uid), reported as
    ``txn:<key>``; a CalDAV item with that UID implies the same ``txn:<key>``, so the two pair
    even before any link row exists (a crash right after the create)."""
    uids = set(item.match_uids)
    if item.event is not None and item.event.uid:
        uids.add(item.event.uid)
    plain = {u for u in uids if not u.startswith("txn:")}
    return uids | {"txn:" + idempotency_key(pairing_id, u) for u in plain}


def _is_echo(side: SideName, link: ItemLink, item: RemoteItem) -> bool:
    """Is this read what the link saved for this side (our own write, or nothing new)?"""
    if item.etag is not None and item.etag == link.etag_on(side):
        return True
    assert item.event is not None
    return item.event.fingerprint() == (link.m365_fingerprint if side is M365 else link.caldav_fingerprint)


def _with_side(link: ItemLink, side: SideName, item: RemoteItem) -> ItemLink:
    return link.with_side(side, item.id, item.etag, item.event.fingerprint() if item.event else None)


def link_fingerprint(link: ItemLink, side: SideName) -> str | None:
    return link.m365_fingerprint if side is M365 else link.caldav_fingerprint


def _cleared(link: ItemLink, side: SideName) -> ItemLink:
    return link.with_side(side, None, None, None)


def _seconds(value: datetime | None) -> datetime | None:
    return value.replace(microsecond=0) if value is not None else None


def _as_utc(value: datetime | date, ref: datetime) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=ref.tzinfo)
    return datetime.combine(value, time.min, tzinfo=ref.tzinfo)

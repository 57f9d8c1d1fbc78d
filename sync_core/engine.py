"""One sync run of one user: read both sides, reconcile, apply, save cursors and status.

Order matters for safety: cursors are saved only after the plan was applied, so a crash at
any point re-reads the same changes next time, and the per-item link rows saved by ``apply``
make that re-read a no-op for what was already done.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Protocol

from sync_core.apply import ApplyResult, WriteHook, apply_plan
from sync_core.errors import DavbridgeError, MassDeletion
from sync_core.reconcile import Action, CreateOn, DeleteOn, PairingRules, Plan, Quarantine, UpdateOn, reconcile
from sync_core.sides.base import ChangeBatch, Side, SideName, WriteResult
from sync_core.state.base import (
    AuditEntry,
    ItemLink,
    Pairing,
    PendingItem,
    RunStatus,
    StateStore,
    UserRecord,
    utcnow,
)

log = logging.getLogger("davbridge.engine")


class SideFactory(Protocol):
    """Opens both sides of one pairing (real clients in production, anything in tests)."""

    def open_sides(self, user: UserRecord, pairing: Pairing,
                   window: tuple[datetime, datetime]) -> Mapping[SideName, Side]: ...


@dataclass
class PairingOutcome:
    pairing: Pairing
    plan: Plan | None = None
    applied: ApplyResult | None = None
    error: str | None = None
    notices: dict[str, str] = field(default_factory=dict)
    reread: set[str] = field(default_factory=set)
    #: Quarantined items after the run, when the run knows it without reading the pending
    #: rows again (nothing was read, retried or written); None: the status reads them.
    quarantined: int | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class UserOutcome:
    upn: str
    pairings: list[PairingOutcome] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(p.ok for p in self.pairings)


def sync_window(pairing: Pairing, now: datetime) -> tuple[datetime, datetime]:
    """The pairing's window, rounded to whole days so Graph delta tokens stay valid all day."""
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return day - timedelta(days=pairing.window_past_days), day + timedelta(days=pairing.window_future_days + 1)


PlanHook = Callable[[Plan], None]


#: Writes in flight per side while a plan is applied (Graph: at most 4 concurrent requests
#: per mailbox, *Microsoft Graph throttling guidance* / Outlook service limits).
WRITES_IN_FLIGHT = 4


def sync_user(upn: str, *, store: StateStore, sides: SideFactory, now: datetime | None = None,
              dry_run: bool = False, on_write: WriteHook | None = None, trigger: str = "manual",
              on_plan: PlanHook | None = None, workers: int = 1, user: UserRecord | None = None) -> UserOutcome:
    """Sync every pairing of one user. A failing pairing is recorded and the others go on.
    Every write is recorded in the audit log with ``trigger``; ``workers``: see
    :func:`~sync_core.apply.apply_plan`; ``user``: the user's row when the caller just read
    it (the queue worker), saving a read."""
    now = now or utcnow()
    if user is None or user.upn.casefold() != upn.casefold():
        user = store.get_user(upn)
    if user is None:
        raise DavbridgeError(f"unknown user {upn!r}")
    outcome = UserOutcome(user.upn)
    for pairing in store.list_pairings(user.upn):
        window = sync_window(pairing, now)
        try:
            opened = sides.open_sides(user, pairing, window)
        except DavbridgeError as exc:
            result = PairingOutcome(pairing, error=f"{type(exc).__name__}: {exc}")
        else:
            audit = None if dry_run else AuditTrail(user.upn, pairing.pairing_id, trigger)
            try:
                result = sync_pairing(pairing, opened, store, window=window, dry_run=dry_run, on_write=on_write,
                                      on_plan=on_plan, now=now, audit=audit, workers=workers)
            finally:
                _close(opened)
        if not dry_run:
            _save_status(store, user, result, started=now)
        outcome.pairings.append(result)
    if not dry_run:
        _settle_user_status(store, user, outcome)
    return outcome


def _close(sides: Mapping[SideName, Side]) -> None:
    """Sides opened for one pairing that hold their own connections (CalDAV) close them."""
    for side in sides.values():
        close = getattr(side, "close", None)
        if callable(close):
            close()


def _settle_user_status(store: StateStore, user: UserRecord, outcome: UserOutcome) -> None:
    """A clean run clears an earlier error and proves the credentials; a refused credential
    shows as ``authentication failed: <reason>`` (status, cyzen-style)."""
    refused = next((p.error for p in outcome.pairings if p.error and p.error.startswith("AuthenticationFailed")),
                   None)
    if outcome.ok:
        wanted_error, wanted_auth = None, "authenticated" if outcome.pairings else user.auth_status
    else:
        wanted_error = user.last_error
        wanted_auth = ("authentication failed: " + refused.split(": ", 1)[-1]) if refused else user.auth_status
    if user.auth_status == "revoked" or (wanted_error, wanted_auth) == (user.last_error, user.auth_status):
        return
    fresh = store.get_user(user.upn)
    if fresh is None:
        return
    if outcome.ok:
        fresh.last_error = fresh.last_error_at = None
    fresh.auth_status = wanted_auth
    store.save_user(fresh)


class AuditTrail:
    """Collects one :class:`AuditEntry` per write of a run; saved even when the run fails."""

    def __init__(self, upn: str, pairing_id: str, trigger: str) -> None:
        self.upn, self.pairing_id, self.trigger = upn, pairing_id, trigger
        self.entries: list[AuditEntry] = []

    def record(self, action: Action, written: WriteResult | None) -> None:
        if not isinstance(action, CreateOn | UpdateOn | DeleteOn):
            return
        side = action.target
        before = action.link.m365_fingerprint if side is SideName.M365 else action.link.caldav_fingerprint
        kind = "create" if isinstance(action, CreateOn) else "update" if isinstance(action, UpdateOn) else "delete"
        self.entries.append(AuditEntry(
            self.upn, self.pairing_id, side.value, kind,
            written.id if written is not None else action.link.id_on(side),
            None if kind == "create" else before,
            written.event.fingerprint() if written is not None else None, self.trigger))

    def flush(self, store: StateStore) -> None:
        if self.entries:
            store.append_audit(self.entries)
            self.entries = []


def _read_changes(sides: Mapping[SideName, Side], cursors: Mapping[SideName, str | None], links: _Links, *,
                  concurrently: bool) -> dict[SideName, ChangeBatch]:
    """Both sides' changes since their cursors; ``concurrently``: the two reads at once (two
    servers: the run waits for the slower, not for both one after the other)."""
    order = (SideName.M365, SideName.CALDAV)
    if not concurrently:
        return {side: sides[side].changes(cursors[side], links.known(side)) for side in order}
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="read") as pool:
        futures = {side: pool.submit(sides[side].changes, cursors[side], links.known(side)) for side in order}
        return {side: futures[side].result() for side in order}


class _Links:
    """A pairing's link rows, read from the state store only when first needed: a run in
    which neither side reports anything never reads them (its cost does not grow with the
    calendar). ``known(side)`` is the id -> etag map the side's ``changes`` gets."""

    def __init__(self, store: StateStore, pairing_id: str, *, quarantined: Sequence[PendingItem]) -> None:
        self._store, self._pairing_id, self._quarantined = store, pairing_id, quarantined
        self._links: list[ItemLink] | None = None
        self._lock = threading.Lock()

    def all(self) -> list[ItemLink]:
        with self._lock:  # both sides' reads may ask at once
            if self._links is None:
                self._links = self._store.links(self._pairing_id)
            return self._links

    def known(self, side: SideName) -> Mapping[str, str | None]:
        return _LazyKnown(lambda: self._known(side))

    def _known(self, side: SideName) -> dict[str, str | None]:
        known = {lk.id_on(side): lk.etag_on(side) for lk in self.all() if lk.id_on(side)}
        # Quarantined items are "known" too (no etag: always re-read), so the side reports
        # their deletion and the quarantine row is cleared instead of counting forever.
        for held in self._quarantined:
            if held.side == side.value:
                known.setdefault(held.item_id, None)
        return {k: v for k, v in known.items() if k}


class _LazyKnown(Mapping[str, str | None]):
    def __init__(self, load: Callable[[], dict[str, str | None]]) -> None:
        self._load = load
        self._data: dict[str, str | None] | None = None

    def _loaded(self) -> dict[str, str | None]:
        if self._data is None:
            self._data = self._load()
        return self._data

    def __getitem__(self, key: str) -> str | None:
        return self._loaded()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._loaded())

    def __len__(self) -> int:
        return len(self._loaded())

    def __contains__(self, key: object) -> bool:
        return key in self._loaded()


def _pairing_rules(pairing: Pairing, window: tuple[datetime, datetime] | None,
                   now: datetime | None, cursors: Mapping[SideName, str | None]) -> PairingRules:
    first_sync = all(cursor is None for cursor in cursors.values())
    read_only = frozenset(side for side, flag in ((SideName.M365, pairing.m365_read_only),
                                                  (SideName.CALDAV, pairing.caldav_read_only)) if flag)
    return PairingRules(pairing.pairing_id, pairing.direction, pairing.conflict_policy,
                        window[0] if window else None, window[1] if window else None,
                        read_only=read_only,
                        first_sync_cap=pairing.first_sync_cap if first_sync else None,
                        reference_time=now, only_changes_after=pairing.only_changes_after,
                        privacy_title=pairing.privacy_title, confirmed_deletes=pairing.confirmed_deletes)


def sync_pairing(pairing: Pairing, sides: Mapping[SideName, Side], store: StateStore, *,
                 window: tuple[datetime, datetime] | None = None, dry_run: bool = False,
                 on_write: WriteHook | None = None, on_plan: PlanHook | None = None,
                 now: datetime | None = None, audit: AuditTrail | None = None, workers: int = 1) -> PairingOutcome:
    """Read, reconcile, apply one pairing. Errors are returned in the outcome, not raised."""
    pid = pairing.pairing_id
    saved = store.cursors(pid)
    cursors = {side: saved.get(side.value) for side in SideName}
    rules = _pairing_rules(pairing, window, now, cursors)
    try:
        pending = store.pending(pid)
        quarantined = [p for p in pending if p.quarantined]
        links = _Links(store, pid, quarantined=quarantined)
        batches = _read_changes(sides, cursors, links, concurrently=workers > 1)
        held_before = {(p.side, p.item_id): p for p in pending}
        retried = _reread_pending(pending, sides, batches, now=now or utcnow())
        # Re-read pending items land in the batches too: nothing read means nothing retried.
        read_anything = any(b.changed or b.deleted for b in batches.values())
        if read_anything:
            _restore_deleted_mirrors(rules, links.all(), sides, batches)
            try:
                plan = reconcile(rules, links.all(), batches[SideName.M365], batches[SideName.CALDAV])
            except MassDeletion as exc:
                if not dry_run:
                    store.save_pairing(replace(pairing, blocked_deletes=exc.deletes))
                raise
        else:
            plan = Plan()  # nothing read: nothing to decide, and the links are never loaded
        if on_plan is not None:
            on_plan(plan)
        if dry_run:
            return PairingOutcome(pairing, plan=plan)
        _clear_resolved_pending(pid, store, batches, retried)
        try:
            applied = apply_plan(plan, sides, store, on_write=_hooks(on_write, audit), workers=workers)
        except DavbridgeError:
            # A side-wide failure stopped the run: the cursors are not saved, so whatever the
            # listings showed comes again; items read only because of a pending row keep it.
            _restore_pending(pid, store, held_before)
            raise
        finally:
            if audit is not None:
                audit.flush(store)
        for side, batch in batches.items():
            if batch.cursor != cursors[side]:
                store.save_cursor(pid, side.value, batch.cursor)
        _back_off_quarantined(plan, held_before, store, now or utcnow())
        if pairing.blocked_deletes or pairing.confirmed_deletes:  # a confirmation is used once
            store.save_pairing(replace(pairing, blocked_deletes=0, confirmed_deletes=0))
        log.info("pairing %s synced: %s", pid, applied.counts or "no changes")
        notices, reread = _notices(batches)
        if plan.over_first_sync_cap:
            notices["first sync"] = (f"{plan.over_first_sync_cap} older or later events were not copied "
                                     f"(first-sync cap {pairing.first_sync_cap}); they sync once they change")
        return PairingOutcome(pairing, plan=plan, applied=applied, notices=notices, reread=reread,
                              quarantined=None if read_anything else len(quarantined))
    except DavbridgeError as exc:
        log.warning("pairing %s failed: %s: %s", pid, type(exc).__name__, exc)
        return PairingOutcome(pairing, error=f"{type(exc).__name__}: {exc}")


def _hooks(on_write: WriteHook | None, audit: AuditTrail | None) -> WriteHook | None:
    if audit is None:
        return on_write
    if on_write is None:
        return audit.record

    def both(action: Action, written: WriteResult | None) -> None:
        audit.record(action, written)
        on_write(action, written)

    return both


#: At most this many notices are kept in a pairing's status.
MAX_NOTICES = 20


def _notices(batches: Mapping[SideName, ChangeBatch]) -> tuple[dict[str, str], set[str]]:
    """Notices the sides reported (e.g. a series expanded into single events), one per
    resource (``"<side> <id>"``), and every resource read this run (their old notices go)."""
    seen: dict[str, str] = {}
    reread: set[str] = set()
    for side, batch in batches.items():
        read = [(item.id, item.notice) for item in batch.changed] + [(i, None) for i in batch.deleted]
        for item_id, notice in read:
            where = f"{side.value} {item_id.split('#', 1)[0]}"
            reread.add(where)
            if notice:
                seen.setdefault(where, notice)
    return seen, reread


def merged_notices(previous: list[str], result: PairingOutcome) -> list[str]:
    """The status's notices: the previous ones for resources not read this run, plus this
    run's (a resource read again without a notice has none any more)."""
    kept: dict[str, str] = {}
    for line in previous:
        where, _, text = line.partition(": ")
        if where not in result.reread:
            kept[where] = text
    kept.update(result.notices)
    return [f"{where}: {text}" for where, text in sorted(kept.items())][:MAX_NOTICES]


#: Quarantined items are read again after 5 min, 10, 20, ... at most once a day.
QUARANTINE_FIRST_RETRY = timedelta(minutes=5)
QUARANTINE_MAX_RETRY = timedelta(days=1)


def quarantine_backoff(attempts: int) -> timedelta:
    return min(QUARANTINE_FIRST_RETRY * 2 ** max(0, min(attempts - 1, 20)), QUARANTINE_MAX_RETRY)


def _reread_pending(pending: Sequence[PendingItem], sides: Mapping[SideName, Side],
                    batches: dict[SideName, ChangeBatch], *, now: datetime) -> dict[SideName, set[str]]:
    """Items whose write failed last run are read again, so their change is not lost even
    though the cursor moved on. Quarantined items are read again when they change, and on
    their own schedule with backoff (a server fix or a converter upgrade may let them sync)."""
    retried: dict[SideName, set[str]] = {SideName.M365: set(), SideName.CALDAV: set()}
    for item in pending:
        due = item.next_retry_at is None or item.next_retry_at <= now
        if not item.quarantined or due:
            retried[SideName(item.side)].add(item.item_id)
    for side, ids in retried.items():
        if ids:
            fresh = sides[side].get(sorted(ids))
            batches[side].changed.extend(fresh)
            found = {i.id for i in fresh}
            batches[side].deleted.extend(sorted(ids - found))
    return retried


def _restore_pending(pid: str, store: StateStore, held_before: Mapping[tuple[str, str], PendingItem]) -> None:
    present = {(p.side, p.item_id) for p in store.pending(pid)}
    for key, row in held_before.items():
        if key not in present:
            store.save_pending(row)


def _back_off_quarantined(plan: Plan, held_before: Mapping[tuple[str, str], PendingItem], store: StateStore,
                          now: datetime) -> None:
    """Each item quarantined again counts one more attempt and waits twice as long."""
    for action in plan.actions:
        if not isinstance(action, Quarantine):
            continue
        before = held_before.get((action.side.value, action.item_id))
        attempts = before.attempts + 1 if before is not None and before.quarantined else 1
        store.save_pending(PendingItem(
            action.pairing_id, action.side.value, action.item_id, action.reason, attempts=attempts,
            quarantined=True, first_seen=before.first_seen if before is not None else now,
            next_retry_at=now + quarantine_backoff(attempts)))


def _restore_deleted_mirrors(rules: PairingRules, links: Sequence[ItemLink], sides: Mapping[SideName, Side],
                             batches: dict[SideName, ChangeBatch]) -> None:
    """One-way pairing: a deleted mirror item is re-created from its source, so read it."""
    for mirror in (SideName.M365, SideName.CALDAV):
        source = mirror.other()
        if rules.reads_from(mirror) or not batches[mirror].deleted:
            continue
        gone = set(batches[mirror].deleted)
        source_ids = [lk.id_on(source) for lk in links if lk.id_on(mirror) in gone]
        changed = {i.id for i in batches[source].changed}
        wanted = sorted(i for i in source_ids if i and i not in changed)
        if wanted:
            batches[source].changed.extend(sides[source].get(wanted))


def _clear_resolved_pending(pid: str, store: StateStore, batches: dict[SideName, ChangeBatch],
                            retried: dict[SideName, set[str]]) -> None:
    """Pending rows of items read again this run are settled by this run's plan."""
    for side, batch in batches.items():
        done = set(retried[side]) | {i.id for i in batch.changed if i.event is not None} | set(batch.deleted)
        if done:
            store.clear_pending(pid, side.value, sorted(done))


def _save_status(store: StateStore, user: UserRecord, result: PairingOutcome, *, started: datetime) -> None:
    previous = store.get_status(result.pairing.pairing_id)
    status = RunStatus(
        pairing_id=result.pairing.pairing_id,
        upn=user.upn,
        started_at=started,
        finished_at=utcnow(),
        ok=result.ok,
        last_success_at=utcnow() if result.ok else (previous.last_success_at if previous else None),
        counts=dict(result.applied.counts) if result.applied else {},
        quarantined=result.quarantined if result.quarantined is not None
        else sum(1 for p in store.pending(result.pairing.pairing_id) if p.quarantined),
        error=result.error,
        notices=merged_notices(previous.notices if previous else [], result),
    )
    store.save_status(status)

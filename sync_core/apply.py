"""Apply a reconcile plan: one conditional remote write per action, then that item's state row.

State is saved per item right after its write succeeded, so a crash loses at most the row of
the write in flight; the rerun pairs that item again by identity (see ``reconcile``) instead
of creating it twice. Per-item failures become pending rows re-read on the next run; only
side-wide failures (authentication, throttling past the budget) stop the run.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from sync_core.errors import (
    AlreadyExists,
    AuthenticationFailed,
    DavbridgeError,
    NotFound,
    PayloadTooLarge,
    PreconditionFailed,
    Throttled,
    UnsupportedEvent,
)
from sync_core.reconcile import (
    Action,
    CreateOn,
    DeleteOn,
    DropLink,
    Plan,
    Quarantine,
    SaveLink,
    UpdateOn,
    idempotency_key,
)
from sync_core.sides.base import BatchCreates, SharedResources, Side, SideName, WriteResult
from sync_core.state.base import ItemLink, PendingItem, StateStore

log = logging.getLogger("davbridge.apply")

WriteHook = Callable[[Action, WriteResult | None], None]

#: Creates handed to ``BatchCreates.create_many`` at once (Graph: one ``$batch`` of 20).
BATCH_CREATES = 20


@dataclass
class ApplyResult:
    """What a plan's writes did. Safe to update from several apply threads."""

    counts: dict[str, int] = field(default_factory=dict)
    failed: list[tuple[str, str, str]] = field(default_factory=list)  # (side, item id, reason)
    quarantined: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def count(self, key: str) -> None:
        with self._lock:
            self.counts[key] = self.counts.get(key, 0) + 1

    def add_quarantined(self) -> None:
        with self._lock:
            self.quarantined += 1

    def add_failed(self, side: str, item_id: str, reason: str) -> None:
        with self._lock:
            self.failed.append((side, item_id, reason))


def apply_plan(
    plan: Plan,
    sides: Mapping[SideName, Side],
    store: StateStore,
    *,
    on_write: WriteHook | None = None,
    workers: int = 1,
) -> ApplyResult:
    """Carry out ``plan``. Raises only side-wide errors (auth, throttling).

    ``workers`` > 1: the actions of different items run concurrently, at most ``workers``
    writes in flight per side (Graph allows 4 concurrent requests per mailbox: *Microsoft
    Graph throttling guidance*, Outlook service limits); the actions of one item keep their
    order. A side-wide error stops new actions from starting; writes in flight finish and
    save their rows, then the first such error is raised."""
    result = ApplyResult()
    if workers <= 1 or len(plan.actions) <= 1:
        for action in plan.actions:
            _carry_out(action, sides, store, result, on_write)
        return result
    return _apply_concurrently(plan, sides, store, result, on_write, workers)


def _carry_out(action: Action, sides: Mapping[SideName, Side], store: StateStore, result: ApplyResult,
               on_write: WriteHook | None) -> None:
    try:
        written = _apply_one(action, sides, store, result)
    except DavbridgeError as exc:
        _after_failure(action, exc, sides, store, result, on_write)
        return
    if on_write is not None and isinstance(action, CreateOn | UpdateOn | DeleteOn):
        on_write(action, written)


def _after_failure(action: Action, exc: DavbridgeError, sides: Mapping[SideName, Side], store: StateStore,
                   result: ApplyResult, on_write: WriteHook | None) -> None:
    """A write failed: side-wide errors are raised; a create that landed anyway is linked;
    anything else is deferred to the next run (see :func:`_defer`)."""
    if isinstance(exc, AuthenticationFailed | Throttled):
        raise exc
    refused = isinstance(exc, UnsupportedEvent | PayloadTooLarge)
    written = None if refused or not isinstance(action, CreateOn) else _landed(action, sides, store, result)
    if written is None:
        _defer(action, store, result, f"{type(exc).__name__}: {exc}", refused=refused)
    elif on_write is not None:
        on_write(action, written)


def _created(action: CreateOn, written: WriteResult, store: StateStore, result: ApplyResult) -> WriteResult:
    store.save_link(_with_write(action.link, action.target, written))
    result.count(f"created_{action.target.value}")
    return written


def _apply_concurrently(plan: Plan, sides: Mapping[SideName, Side], store: StateStore, result: ApplyResult,
                        on_write: WriteHook | None, workers: int) -> ApplyResult:
    groups = _groups(plan.actions, sides)
    # An item whose only action is a create, on a side that takes creates in batches (Graph
    # $batch), goes in a batch; everything else runs item by item.
    batched: dict[SideName, list[CreateOn]] = {side: [] for side in SideName}
    for key, actions in list(groups.items()):
        first = actions[0]
        if len(actions) == 1 and isinstance(first, CreateOn) and isinstance(sides[first.target], BatchCreates):
            batched[first.target].append(first)
            del groups[key]
    lock = threading.RLock()
    in_flight = {side: threading.BoundedSemaphore(workers) for side in SideName}
    stop = threading.Event()
    hook = None if on_write is None else _locked_hook(on_write, lock)

    def run_group(actions: list[Action]) -> None:
        for action in actions:
            if stop.is_set():
                return
            target = action.target if isinstance(action, CreateOn | UpdateOn | DeleteOn) else None
            if target is None:
                _carry_out(action, sides, store, result, hook)
                continue
            with in_flight[target]:
                if stop.is_set():
                    return
                try:
                    _carry_out(action, sides, store, result, hook)
                except BaseException:
                    stop.set()
                    raise

    def run_batch(target: SideName, creates: list[CreateOn]) -> None:
        side = sides[target]
        assert isinstance(side, BatchCreates)
        with in_flight[target]:
            if stop.is_set():
                return
            try:
                outcomes = side.create_many([(a.event, a.idempotency_key) for a in creates])
                for action, outcome in zip(creates, outcomes, strict=True):
                    if isinstance(outcome, DavbridgeError):
                        _after_failure(action, outcome, sides, store, result, hook)
                    else:
                        _created(action, outcome, store, result)
                        if hook is not None:
                            hook(action, outcome)
            except BaseException:
                stop.set()
                raise

    # One pool per side, so both sides' writes proceed at once; a group goes to the pool of
    # its first write's side (the semaphores still bound a group writing to both).
    pools = {side: ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"apply-{side.value}")
             for side in SideName}
    try:
        futures = [pools[target].submit(run_batch, target, creates[i:i + BATCH_CREATES])
                   for target, creates in batched.items() for i in range(0, len(creates), BATCH_CREATES)]
        futures += [pools[_first_target(actions)].submit(run_group, actions) for actions in groups.values()]
        errors = [f.exception() for f in futures]
    finally:
        for pool in pools.values():
            pool.shutdown(wait=True)
    failure = next((e for e in errors if e is not None), None)
    if failure is not None:
        raise failure
    return result


def _groups(actions: list[Action], sides: Mapping[SideName, Side]) -> dict[str, list[Action]]:
    """The plan's actions in groups that may run at once: one group per item, and items that
    share a stored resource (``SharedResources``: a CalDAV series' occurrences) in one group,
    so their writes keep their order instead of racing on one resource's etag."""
    parent: dict[str, str] = {}

    def root(key: str) -> str:
        while parent.setdefault(key, key) != key:
            key = parent[key]
        return key

    keys: list[str] = []
    for action in actions:
        if isinstance(action, Quarantine):
            key = f"quarantine|{action.side.value}|{action.item_id}"
        else:
            key = f"link|{action.link.uid}"
            for side in SideName:
                item_id, shared = action.link.id_on(side), sides[side]
                if item_id and isinstance(shared, SharedResources):
                    parent[root(key)] = root(f"{side.value}|{shared.resource_of(item_id)}")
        keys.append(key)
    groups: dict[str, list[Action]] = {}
    for action, key in zip(actions, keys, strict=True):
        groups.setdefault(root(key), []).append(action)
    return groups


def _first_target(actions: list[Action]) -> SideName:
    for action in actions:
        if isinstance(action, CreateOn | UpdateOn | DeleteOn):
            return action.target
    return SideName.M365


def _locked_hook(hook: WriteHook, lock: threading.RLock) -> WriteHook:
    def locked(action: Action, written: WriteResult | None) -> None:
        with lock:
            hook(action, written)
    return locked


def _apply_one(action: Action, sides: Mapping[SideName, Side], store: StateStore,
               result: ApplyResult) -> WriteResult | None:
    if isinstance(action, CreateOn):
        return _created(action, sides[action.target].create(action.event, idempotency_key=action.idempotency_key),
                        store, result)
    if isinstance(action, UpdateOn):
        target_id = action.link.id_on(action.target)
        assert target_id is not None
        try:
            etag = action.link.etag_on(action.target)
            written = sides[action.target].update(target_id, action.event, etag=etag)
        except NotFound:
            # Gone since it was read: the source's content is restored as a new item.
            written = sides[action.target].create(
                action.event, idempotency_key=_recreate_key(action.link, action.target))
            result.count(f"created_{action.target.value}")
        else:
            result.count(f"updated_{action.target.value}")
        store.save_link(_with_write(action.link, action.target, written))
        return written
    if isinstance(action, DeleteOn):
        target_id = action.link.id_on(action.target)
        assert target_id is not None
        sides[action.target].delete(target_id, etag=action.link.etag_on(action.target))
        store.delete_link(action.link.pairing_id, action.link.uid)
        result.count(f"deleted_{action.target.value}")
        return None
    if isinstance(action, SaveLink):
        store.save_link(action.link)
        return None
    if isinstance(action, DropLink):
        store.delete_link(action.link.pairing_id, action.link.uid)
        return None
    if isinstance(action, Quarantine):
        store.save_pending(PendingItem(action.pairing_id, action.side.value, action.item_id, action.reason,
                                       quarantined=True))
        result.add_quarantined()
        return None
    raise TypeError(f"unknown action {action!r}")


def _landed(action: CreateOn, sides: Mapping[SideName, Side], store: StateStore,
            result: ApplyResult) -> WriteResult | None:
    """A create failed without an answer (or answered AlreadyExists): did it land? Found by
    its key (``Side.find_created``), it is linked now, as if the answer had come; else (or if
    asking fails too) ``None`` and the create is deferred."""
    try:
        found = sides[action.target].find_created(action.event, idempotency_key=action.idempotency_key)
    except DavbridgeError as exc:
        log.info("could not check whether a create on %s landed: %s", action.target.value, type(exc).__name__)
        return None
    if found is None or found.event is None:
        return None
    written = WriteResult(found.id, found.etag, found.event)
    store.save_link(_with_write(action.link, action.target, written))
    result.count(f"created_{action.target.value}")
    return written


def _defer(action: Action, store: StateStore, result: ApplyResult, reason: str, *, refused: bool = False) -> None:
    """A write failed for this item only: re-read both sides of it on the next run.

    AlreadyExists (a create retried after a crash) and PreconditionFailed (someone edited the
    item since it was read) need no special path: the re-read pairs or re-decides it. The
    link row is left as it was before the action, so the next read is still a change.
    ``refused``: the side will not take this content (a meeting it would notify, a size
    limit): the target item is also quarantined with the reason, so status shows it."""
    if not isinstance(action, CreateOn | UpdateOn | DeleteOn):
        result.add_failed("state", "", reason)
        log.warning("state write failed: %s", reason)
        return
    link = action.link
    if isinstance(action, DeleteOn) and action.deleted_id:
        # Keep the deleted item's id (no etag): the next run re-reads it, finds it gone and
        # plans the deletion again, instead of forgetting it with the moved cursor.
        link = link.with_side(action.target.other(), action.deleted_id, None, None)
    for side in (SideName.M365, SideName.CALDAV):
        item_id = link.id_on(side)
        if item_id:
            store.save_pending(PendingItem(link.pairing_id, side.value, item_id, reason))
    target_id = link.id_on(action.target)
    if refused and target_id:
        store.save_pending(PendingItem(link.pairing_id, action.target.value, target_id, reason, quarantined=True))
        result.add_quarantined()
    if isinstance(action, DeleteOn):
        # The delete lost a race with an edit: keep the link so the edit is restored.
        store.save_link(link)
    if isinstance(action, CreateOn | UpdateOn) and not refused:
        store.save_link(_unconfirmed_write(action))
    result.add_failed(action.target.value, link.id_on(action.target) or link.link_id, reason)
    expected = reason.startswith((AlreadyExists.__name__, PreconditionFailed.__name__))
    log.log(logging.INFO if expected else logging.WARNING, "deferred %s on %s for link %s: %s",
            type(action).__name__, action.target.value, link.link_id, reason)


def _unconfirmed_write(action: CreateOn | UpdateOn) -> ItemLink:
    """The link to keep after a create or update whose answer never came: it may have landed.

    The target keeps the id and etag it had (none for a create) with the fingerprint of what
    was sent, so a landed write reads back as the service's own echo (by fingerprint), not as
    a user's edit that would beat a deletion or be copied back; a landed create is claimed by
    its UID. The source's etag and fingerprint are forgotten, so the source reads as a change
    next run and is written again if the write did not land."""
    link, target, source = action.link, action.target, action.target.other()
    if isinstance(action, CreateOn):
        link = link.with_side(target, None, None, action.event.fingerprint())
    else:
        link = link.with_side(target, link.id_on(target), link.etag_on(target), action.event.fingerprint())
    return link.with_side(source, link.id_on(source), None, None)


def _with_write(link: ItemLink, side: SideName, written: WriteResult) -> ItemLink:
    return link.with_side(side, written.id, written.etag, written.event.fingerprint())


def _recreate_key(link: ItemLink, side: SideName) -> str:
    return idempotency_key(link.pairing_id, f"{link.uid}|recreated-after|{link.id_on(side) or ''}")

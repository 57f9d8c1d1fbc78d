"""Apply a reconcile plan: one conditional remote write per action, then that item's state row.

State is saved per item right after its write succeeded, so a crash loses at most the row of
the write in flight; the rerun pairs that item again by identity (see ``reconcile``) instead
of creating it twice. Per-item failures become pending rows re-read on the next run; only
side-wide failures (authentication, throttling past the budget) stop the run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
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
from sync_core.sides.base import Side, SideName, WriteResult
from sync_core.state.base import ItemLink, PendingItem, StateStore

log = logging.getLogger("davbridge.apply")

WriteHook = Callable[[Action, WriteResult | None], None]


@dataclass
class ApplyResult:
    counts: dict[str, int] = field(default_factory=dict)
    failed: list[tuple[str, str, str]] = field(default_factory=list)  # (side, item id, reason)
    quarantined: int = 0

    def count(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1


def apply_plan(
    plan: Plan,
    sides: Mapping[SideName, Side],
    store: StateStore,
    *,
    on_write: WriteHook | None = None,
) -> ApplyResult:
    """Carry out ``plan`` in order. Raises only side-wide errors (auth, throttling)."""
    result = ApplyResult()
    for action in plan.actions:
        try:
            written = _apply_one(action, sides, store, result)
        except (AuthenticationFailed, Throttled):
            raise
        except DavbridgeError as exc:
            refused = isinstance(exc, UnsupportedEvent | PayloadTooLarge)
            written = None if refused or not isinstance(action, CreateOn) else _landed(action, sides, store, result)
            if written is None:
                _defer(action, store, result, f"{type(exc).__name__}: {exc}", refused=refused)
                continue
        if on_write is not None and isinstance(action, CreateOn | UpdateOn | DeleteOn):
            on_write(action, written)
    return result


def _apply_one(action: Action, sides: Mapping[SideName, Side], store: StateStore,
               result: ApplyResult) -> WriteResult | None:
    if isinstance(action, CreateOn):
        written = sides[action.target].create(action.event, idempotency_key=action.idempotency_key)
        store.save_link(_with_write(action.link, action.target, written))
        result.count(f"created_{action.target.value}")
        return written
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
        result.quarantined += 1
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
        result.failed.append(("state", "", reason))
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
        result.quarantined += 1
    if isinstance(action, DeleteOn):
        # The delete lost a race with an edit: keep the link so the edit is restored.
        store.save_link(link)
    if isinstance(action, CreateOn | UpdateOn) and not refused:
        store.save_link(_unconfirmed_write(action))
    result.failed.append((action.target.value, link.id_on(action.target) or link.link_id, reason))
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

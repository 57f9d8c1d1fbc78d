"""The state repository: users, pairings, item links, cursors, pending retries, run status.

One interface, two implementations chosen by configuration: ``SQLiteStateStore`` (embedded
default, ``state/sqlite.py``) and ``TableStateStore`` (Azure Table Storage, ``state/tables.py``).
Records are plain dataclasses so both backends store the same fields. Nothing secret is ever
stored here: credentials live in the secrets store and are referenced by name.

Besides sync state the store coordinates the workers of one deployment (timer, webhook,
queue worker, admin HTTP): a per-user *lease* so two syncs of one user never overlap, and a
per-user *sync request* row that coalesces every trigger into at most one queued message.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Protocol


def utcnow() -> datetime:
    return datetime.now(UTC)


class Direction(StrEnum):
    TWO_WAY = "two-way"
    M365_TO_CALDAV = "m365-to-caldav"
    CALDAV_TO_M365 = "caldav-to-m365"


class ConflictPolicy(StrEnum):
    M365_WINS = "m365-wins"
    CALDAV_WINS = "caldav-wins"
    NEWEST_WINS = "newest-wins"


@dataclass
class UserRecord:
    """One Microsoft 365 mailbox and the CalDAV account it is paired with.

    The CalDAV password is in the secrets store under :meth:`caldav_secret_name`.
    """

    upn: str
    caldav_url: str
    caldav_username: str
    enabled: bool = True
    auth_status: str = "unchecked"
    created_at: datetime = field(default_factory=utcnow)
    #: "app" (application permission, the default) or "delegated" (the user signed in through
    #: the auth-code endpoint; the msal token cache is in the secrets store).
    auth_mode: str = "app"
    #: The last failure outside any pairing's run (e.g. a sync request that went to the
    #: poison queue), shown in status until the next successful run clears it.
    last_error: str | None = None
    last_error_at: datetime | None = None

    def caldav_secret_name(self) -> str:
        return "caldav-password-" + hashlib.sha256(self.upn.casefold().encode()).hexdigest()[:24]


@dataclass
class Pairing:
    """One Microsoft 365 calendar paired with one CalDAV calendar of the same user."""

    pairing_id: str
    upn: str
    m365_calendar_id: str | None  # None: the mailbox's primary calendar
    caldav_calendar_url: str
    name: str = "Calendar"
    direction: Direction = Direction.TWO_WAY
    conflict_policy: ConflictPolicy = ConflictPolicy.NEWEST_WINS
    window_past_days: int = 30
    window_future_days: int = 365
    #: At most this many events are copied by the first sync, upcoming ones first, then the
    #: recent past (newest first); the rest stay where they are (a notice says how many).
    first_sync_cap: int = 5000
    #: Set: only events created or changed after this instant are copied.
    only_changes_after: datetime | None = None
    #: Set: copies are busy-only blocks with this title (one-way pairings only).
    privacy_title: str | None = None
    #: The calendar cannot be written on that side (CalDAV privileges, Graph ``canEdit``).
    m365_read_only: bool = False
    caldav_read_only: bool = False
    #: The last run stopped because it would delete this many items (mass-deletion guard).
    blocked_deletes: int = 0
    #: An admin confirmed that the next run may delete up to this many; used once.
    confirmed_deletes: int = 0

    @staticmethod
    def make_id(upn: str, m365_calendar_id: str | None, caldav_calendar_url: str) -> str:
        raw = f"{upn.casefold()}|{m365_calendar_id or 'primary'}|{caldav_calendar_url}"
        return hashlib.sha256(raw.encode()).hexdigest()[:20]


@dataclass
class ItemLink:
    """The saved pairing of one Microsoft 365 event with one CalDAV resource.

    ``*_etag`` and ``*_fingerprint`` are what each side held right after the last sync (or
    the service's own write); a read that matches either is not a new change.
    """

    pairing_id: str
    uid: str
    m365_id: str | None = None
    m365_etag: str | None = None
    m365_fingerprint: str | None = None
    caldav_href: str | None = None
    caldav_etag: str | None = None
    caldav_fingerprint: str | None = None
    updated_at: datetime = field(default_factory=utcnow)
    #: The side the event came from when the service created the copy on the other side;
    #: None when the pair was found on both sides (then neither is a mere copy).
    origin: str | None = None

    @property
    def link_id(self) -> str:
        return link_id_for(self.uid)

    def id_on(self, side: str) -> str | None:
        """The item id on ``side`` ("m365" or "caldav")."""
        return self.m365_id if side == "m365" else self.caldav_href

    def etag_on(self, side: str) -> str | None:
        return self.m365_etag if side == "m365" else self.caldav_etag

    def with_side(self, side: str, item_id: str | None, etag: str | None, fingerprint: str | None) -> ItemLink:
        """A copy holding what ``side`` now has for this item (``None``s: nothing)."""
        if side == "m365":
            return replace(self, m365_id=item_id, m365_etag=etag, m365_fingerprint=fingerprint)
        return replace(self, caldav_href=item_id, caldav_etag=etag, caldav_fingerprint=fingerprint)


def link_id_for(uid: str) -> str:
    """Stable row key for a link: the UID may hold characters storage keys forbid."""
    return hashlib.sha256(uid.encode("utf-8")).hexdigest()[:32]


@dataclass
class PendingItem:
    """An item whose last write failed or that could not be read; retried by id next run."""

    pairing_id: str
    side: str
    item_id: str
    reason: str
    attempts: int = 1
    quarantined: bool = False
    first_seen: datetime = field(default_factory=utcnow)
    #: Quarantined items are read again (to see whether they can sync now) from this time on,
    #: backing off: 5 min, 10, 20, ... at most a day.
    next_retry_at: datetime | None = None


@dataclass
class RunStatus:
    """Outcome of the last sync run of one pairing."""

    pairing_id: str
    upn: str
    started_at: datetime
    finished_at: datetime | None = None
    ok: bool = False
    last_success_at: datetime | None = None
    counts: dict[str, int] = field(default_factory=dict)
    quarantined: int = 0
    error: str | None = None
    notices: list[str] = field(default_factory=list)


@dataclass
class AuditEntry:
    """One write the service made to a calendar (kept 30 days)."""

    upn: str
    pairing_id: str
    side: str  # the side written: "m365" or "caldav"
    action: str  # "create" | "update" | "delete"
    item_id: str | None
    hash_before: str | None  # content fingerprint the side held before (None: nothing)
    hash_after: str | None  # content fingerprint written (None: deleted)
    trigger: str  # "timer" | "webhook" | "manual" | "lifecycle" | ... (as the run was started)
    at: datetime = field(default_factory=utcnow)


#: Audit rows older than this are aged out (by partition on Table Storage).
AUDIT_RETENTION = timedelta(days=30)


@dataclass
class Subscription:
    """One Microsoft Graph change-notification subscription (Graph ``subscription`` entity).

    One per user on ``/users/{id}/events``, which covers every calendar of the mailbox
    (Graph "Change notifications for Outlook resources": "changes to all events in a user's
    mailbox"). Event subscriptions live at most 10,080 minutes and are renewed by PATCH.
    """

    subscription_id: str
    upn: str
    resource: str
    expires_at: datetime
    created_at: datetime = field(default_factory=utcnow)


@dataclass
class SyncRequest:
    """A pending request to sync one user: at most one per user, so at most one queue message.

    Every trigger that arrives while a request is pending is merged into it (``triggers``
    gains the trigger, ``check_subscription`` is or-ed); the worker takes the request as it
    starts, so changes arriving during a sync cause exactly one more sync.
    """

    upn: str
    triggers: list[str] = field(default_factory=list)
    check_subscription: bool = False
    requested_at: datetime = field(default_factory=utcnow)


class StateStore(Protocol):
    """Repository of sync state. Writes are per record, so a crash loses at most one item."""

    # users
    def save_user(self, user: UserRecord) -> None: ...
    def get_user(self, upn: str) -> UserRecord | None: ...
    def list_users(self, *, enabled_only: bool = False) -> list[UserRecord]: ...

    # pairings
    def save_pairing(self, pairing: Pairing) -> None: ...
    def list_pairings(self, upn: str) -> list[Pairing]: ...

    # item links
    def links(self, pairing_id: str) -> list[ItemLink]: ...
    def save_link(self, link: ItemLink) -> None: ...
    def save_links(self, links: Sequence[ItemLink]) -> None:
        """Save many links; on Table Storage in transactions of at most 100 per partition."""
        ...
    def delete_link(self, pairing_id: str, uid: str) -> None: ...
    def delete_pairing(self, pairing: Pairing) -> None:
        """Remove the pairing and everything kept for it (links, cursors, pending, status)."""
        ...

    # cursors (delta link / sync token), saved only after a run's plan was applied
    def cursors(self, pairing_id: str) -> dict[str, str]:
        """side -> cursor of every side that has one (one partition query on Table Storage)."""
        ...
    def save_cursor(self, pairing_id: str, side: str, cursor: str | None) -> None: ...

    # pending retries and quarantine
    def pending(self, pairing_id: str) -> list[PendingItem]: ...
    def save_pending(self, item: PendingItem) -> None: ...
    def clear_pending(self, pairing_id: str, side: str, item_ids: Iterable[str]) -> None: ...

    # status
    def save_status(self, status: RunStatus) -> None: ...
    def get_status(self, pairing_id: str) -> RunStatus | None: ...

    # audit log: one row per write the service made, queryable by user and time
    def append_audit(self, entries: Sequence[AuditEntry]) -> None: ...
    def audit(self, upn: str, since: datetime, until: datetime) -> list[AuditEntry]:
        """The user's rows with ``since <= at < until``, oldest first."""
        ...

    def purge_audit(self, older_than: datetime) -> int:
        """Remove rows written before ``older_than`` (whole day partitions on Table
        Storage); returns how many rows went."""
        ...

    # Graph change-notification subscriptions (looked up by id on every notification)
    def save_subscription(self, subscription: Subscription) -> None: ...
    def get_subscription(self, subscription_id: str) -> Subscription | None: ...
    def list_subscriptions(self, upn: str | None = None) -> list[Subscription]: ...
    def delete_subscription(self, subscription_id: str) -> None: ...

    # per-user coordination between the workers of one deployment
    def request_sync(self, upn: str, trigger: str, *, check_subscription: bool = False,
                     stale_after: timedelta = timedelta(minutes=15), now: datetime | None = None) -> bool:
        """Record that ``upn`` needs a sync. True when no request was pending (or the pending
        one is older than ``stale_after``, i.e. its message was lost): the caller enqueues a
        message. False when merged into the pending request (nothing to enqueue). Atomic
        across processes (etag / transaction)."""
        ...

    def take_sync_request(self, upn: str) -> SyncRequest | None:
        """Remove and return the pending request of ``upn`` (the worker, as it starts)."""
        ...

    def try_lease(self, upn: str, owner: str, *, ttl: timedelta, now: datetime | None = None) -> bool:
        """Take the per-user lease for ``owner`` if it is free, expired or already ``owner``'s.
        Atomic across processes: of two concurrent callers at most one gets True."""
        ...

    def release_lease(self, upn: str, owner: str) -> None:
        """Free the lease if ``owner`` still holds it (an expired, re-taken lease is left alone)."""
        ...

    def close(self) -> None: ...

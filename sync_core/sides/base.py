"""The side protocol: the only thing the sync engine knows about Microsoft 365 and CalDAV.

A side lists what changed since a cursor, and creates, updates and deletes single items with
conditional writes. Ids are opaque strings: the Graph immutable event id for Microsoft 365,
the resource href (path, as the server spelled it) for CalDAV. Etags are opaque too (Graph
``@odata.etag`` / ``changeKey``; the CalDAV ``getetag`` value, quotes kept as received).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, runtime_checkable

from sync_core.errors import DavbridgeError
from sync_core.model import Event


class SideName(StrEnum):
    M365 = "m365"
    CALDAV = "caldav"

    def other(self) -> SideName:
        return SideName.CALDAV if self is SideName.M365 else SideName.M365


@dataclass(frozen=True)
class RemoteItem:
    """One item as read from a side.

    ``event`` is ``None`` when the item could not be turned into the model; ``error`` then says
    why, and the item is quarantined instead of stopping the calendar.
    ``notice`` is something the admin should know although the item syncs (for example a
    series copied occurrence by occurrence); it is shown in the pairing's status.
    ``match_uids`` are the identities the item can be paired by on a first sync: the iCalendar
    UID for CalDAV; ``iCalUId`` and the UID we tagged it with (extended property) for Graph.
    """

    id: str
    etag: str | None
    event: Event | None
    match_uids: frozenset[str] = frozenset()
    error: str | None = None
    notice: str | None = None


@dataclass
class ChangeBatch:
    """What changed on one side since the given cursor.

    ``changed``: created or modified items (may include the service's own writes; the
    reconcile step recognises those by etag and fingerprint).
    ``deleted``: ids the side has confirmed are gone (not merely out of the window).
    ``cursor``: the value to pass next time; saved only after the plan was applied.
    ``reset``: the old cursor was refused and this batch is a full listing.
    """

    changed: list[RemoteItem] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    cursor: str | None = None
    reset: bool = False


@dataclass(frozen=True)
class WriteResult:
    """Where an item lives after a write, and what the side now returns for it.

    ``event`` is the event as the side stores it when the side returns it (Graph does), else
    the event as written; its fingerprint is what a later read is compared to.
    """

    id: str
    etag: str | None
    event: Event


@runtime_checkable
class BatchCreates(Protocol):
    """A side that can create many items in one round trip (Graph ``$batch``)."""

    def create_many(self, creates: Sequence[tuple[Event, str]]) -> list[WriteResult | DavbridgeError]:
        """Create each (event, idempotency key) as :meth:`Side.create` would; return, in order,
        each one's result or the error :meth:`Side.create` would have raised."""
        ...


@runtime_checkable
class SharedResources(Protocol):
    """A side on which several items can live in one stored resource (CalDAV: the
    occurrences of an expanded series), so writes to them must not run at once."""

    def resource_of(self, item_id: str) -> str:
        """The stored resource holding the item."""
        ...


class Side(Protocol):
    """One calendar on one side. Implementations: ``GraphCalendar``, ``CalDAVCalendar``."""

    name: SideName

    def changes(self, cursor: str | None, known: Mapping[str, str | None]) -> ChangeBatch:
        """Items changed since ``cursor`` (everything when ``None``).

        ``known`` maps the ids linked in state to their last seen etag. A side may use it to
        skip fetching unchanged items, and must use it to report deletions it finds in a full
        listing (an id in ``known`` missing from a complete listing and confirmed gone). A
        known item that still exists but changed so that a windowed listing leaves it out
        (edited out of the window) must be reported as changed, never dropped or deleted.
        """
        ...

    def get(self, ids: Iterable[str]) -> list[RemoteItem]:
        """Read these items now (missing ones are left out)."""
        ...

    def create(self, event: Event, *, idempotency_key: str) -> WriteResult:
        """Create the item; retrying with the same key never creates a second one.

        CalDAV: PUT to a name derived from the key with ``If-None-Match: *``.
        Graph: POST with ``transactionId`` = key.
        Raises :class:`~sync_core.errors.AlreadyExists` when the key's item is already there.
        """
        ...

    def find_created(self, event: Event, *, idempotency_key: str) -> RemoteItem | None:
        """The item an earlier :meth:`create` of ``event`` with this key made, if it is there.

        Asked when a create's answer was lost (timeout, reset) or it answered AlreadyExists,
        so a landed create is linked at once instead of being guessed at on the next run.
        CalDAV: GET the name the key gives. Graph: the event tagged with the event's UID.
        """
        ...

    def update(self, item_id: str, event: Event, *, etag: str | None) -> WriteResult:
        """Replace the item's synced fields; conditional on ``etag`` when given (If-Match).

        Raises :class:`~sync_core.errors.PreconditionFailed` or
        :class:`~sync_core.errors.NotFound`.
        """
        ...

    def delete(self, item_id: str, *, etag: str | None) -> None:
        """Delete the item; conditional on ``etag`` when given. A missing item is not an error."""
        ...

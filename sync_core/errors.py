"""Typed errors. Each failure an operator or the engine must tell apart has its own type."""

from __future__ import annotations


class DavbridgeError(Exception):
    """Base of every error the sync core raises on purpose."""


# --- item-level: recorded for that item, everything else keeps syncing -------------------
class ItemError(DavbridgeError):
    """A problem with one item; the item is quarantined with this message."""


class InvalidICalendar(ItemError):
    """The resource is not parseable iCalendar or holds no usable VEVENT (RFC 5545 3.4/3.6.1)."""


class UnsupportedEvent(ItemError):
    """The event is valid but uses something this version cannot sync (reason in the message)."""


class InvalidGraphEvent(ItemError):
    """A Graph event payload lacks a field the model needs or holds an invalid value."""


class UnknownTimeZone(ItemError):
    """A TZID / Graph time zone name that maps to no IANA zone."""


class PayloadTooLarge(ItemError):
    """An item larger than the configured limit; never parsed."""


# --- write-level --------------------------------------------------------------------------
class PreconditionFailed(DavbridgeError):
    """The conditional write lost a race (HTTP 412; Graph ErrorIrresolvableConflict).

    Read the item again and re-decide on the next run."""


class AlreadyExists(PreconditionFailed):
    """A create with If-None-Match: * found the resource already there."""


class NotFound(DavbridgeError):
    """The item is gone on the remote side (HTTP 404/410 on an item URL)."""


# --- side-level: the whole pairing stops for this run ------------------------------------
class SideError(DavbridgeError):
    """A side could not be read or written as a whole (network, server error, throttling)."""


class AuthenticationFailed(SideError):
    """Credentials were refused (HTTP 401/403 on the collection, token endpoint error)."""


class Throttled(SideError):
    """The remote kept answering 429/503 past the retry budget."""


class SyncTokenInvalid(SideError):
    """RFC 6578 3.2: the server refused the sync token (403/409/410/412/418/507)."""


class DeltaTokenExpired(SideError):
    """Graph answered 410 Gone (SyncStateNotFound) to a delta link: start a new round."""


# --- safety: refuse to act rather than lose data (vdirsyncer's safety errors) ------------
class SafetyError(DavbridgeError):
    """The plan looks like data loss caused by a bad read or configuration; nothing is applied."""


class StorageEmptied(SafetyError):
    """One side suddenly lists nothing while state links many items to it."""


class MassDeletion(SafetyError):
    """The plan deletes more than the allowed share of a side's linked items in one run.

    ``deletes`` is how many the run wanted to delete, so an admin can confirm that many."""

    def __init__(self, message: str, *, deletes: int = 0) -> None:
        super().__init__(message)
        self.deletes = deletes


class DuplicateIdentity(ItemError):
    """Two items on one side claim the same identity (UID / iCalUId)."""


class NotExpressible(UnsupportedEvent):
    """A valid recurrence Microsoft Graph cannot hold as a series (reason in the message).

    Such a series is expanded into single events instead (docs/RECURRENCE.md, "the fallback")."""


class SecretStoreError(DavbridgeError):
    """The secrets backend refused or failed an operation (e.g. Key Vault 401/403, a value over 25 KB).

    The message says what to fix (such as the missing Key Vault role) and never holds a secret value."""

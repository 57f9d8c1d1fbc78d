"""Record <-> plain dict codec shared by every state backend (SQLite JSON, Table entities),
plus the per-user coordination rules (lease, sync-request coalescing) both backends apply."""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any, TypeVar

from sync_core.state.base import SyncRequest

T = TypeVar("T")


def to_dict(record: object) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(record):  # type: ignore[arg-type]
        value = getattr(record, f.name)
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, Enum):
            value = value.value
        out[f.name] = value
    return out


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    """The resolved field types of ``cls`` (resolved once per class)."""
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """The record of ``data``. A field missing from ``data`` (a record written before the
    field existed) gets its default; a key that is no field (written by a newer version)
    is ignored."""
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name not in data:
            continue
        value = data[f.name]
        hint = hints[f.name]
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        target = args[0] if args and len(args) == 1 else hint
        if value is not None:
            if target is datetime:
                value = datetime.fromisoformat(value)
            elif isinstance(target, type) and issubclass(target, Enum):
                value = target(value)
        kwargs[f.name] = value
    return cls(**kwargs)


def dumps(record: object) -> str:
    return json.dumps(to_dict(record), sort_keys=True)


def loads(cls: type[T], raw: str) -> T:
    return from_dict(cls, json.loads(raw))


# --- time keys ----------------------------------------------------------------------------


def as_utc(value: datetime) -> datetime:
    """``value`` in UTC; a naive value is taken to be UTC already."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def time_key(value: datetime) -> str:
    """``value`` as fixed-width UTC text, ``20261124T080000.000000Z``: sorting the text sorts
    the instants (microsecond resolution), so both backends compare and range-query it."""
    d = as_utc(value)
    return (f"{d.year:04d}{d.month:02d}{d.day:02d}T{d.hour:02d}{d.minute:02d}{d.second:02d}"
            f".{d.microsecond:06d}Z")


# --- per-user coordination rules, shared by every backend ------------------------------------


@dataclass
class LeaseRecord:
    """The per-user lease row: ``owner`` holds the user's sync until ``expires_at``."""

    upn: str
    owner: str
    expires_at: datetime


def lease_takeable(lease: LeaseRecord | None, owner: str, now: datetime) -> bool:
    """A lease can be taken when there is none, it expired, or ``owner`` already holds it."""
    return lease is None or lease.owner == owner or lease.expires_at <= now


def merge_sync_request(existing: SyncRequest | None, upn: str, trigger: str, *, check_subscription: bool,
                       now: datetime, stale_after: timedelta) -> tuple[SyncRequest, bool]:
    """The request to store after ``trigger`` arrived, and whether the caller must enqueue.

    No pending request: a new one, enqueue. A pending one: the trigger is merged in (once,
    order kept; ``check_subscription`` or-ed); enqueue only if it is older than
    ``stale_after`` (its message was lost), then it restarts at ``now`` keeping the merged
    triggers, so nothing that asked for a sync is dropped.
    """
    if existing is None:
        return SyncRequest(upn, [trigger], check_subscription, now), True
    triggers = list(existing.triggers)
    if trigger not in triggers:
        triggers.append(trigger)
    merged = SyncRequest(existing.upn, triggers, existing.check_subscription or check_subscription,
                         existing.requested_at)
    if now - existing.requested_at > stale_after:
        merged.requested_at = now
        return merged, True
    return merged, False

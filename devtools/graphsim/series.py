"""Series masters and their instances: occurrence ids, the instances in a window, exceptions,
cancellations and the neighbour rule (Graph semantics; sources in README.md, "Recurrence").

* An instance is identified by its master and its *original start* (UTC). Its id encodes both
  (url-safe base64 in Exchange's ``AAMkAD...AAA=`` shape), so it is stable for as long as the
  pattern gives that start, and ``GET /events/{id}`` can find it without a lookup table.
* Plain occurrences show the master's current fields with their own start/end; an exception
  has its own full field set (written by PATCH) and keeps it when the master changes.
* Every instance carries the master's ``changeKey`` (the event-list-instances example shows one
  etag for the exception and the occurrences of a series; EWS: "the single occurrence and the
  recurring master contain the same change key"). Any change to a series changes it.
* ``iCalUId`` differs per occurrence ("This ID is different for each occurrence in a recurring
  series", event resource): the master's Global Object Id with the instance date filled in
  (bytes 16..19: year, month, day, as Exchange writes it).
* Wall-clock times follow the series zone (``recurrenceTimeZone``): a 09:00 series stays at
  09:00 local across DST; a start that does not exist on some day (spring-forward gap) takes
  the offset before the gap (``fold=0``), an ambiguous one the first (daylight) offset.
  Timed occurrences keep the master's duration in absolute time; all-day ones its length in days.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from devtools.graphsim import events as ev_model
from devtools.graphsim import recurrence as rec_dates
from devtools.graphsim import timezones as tz
from devtools.graphsim.events import When
from devtools.graphsim.odata import GraphError, bad_request
from devtools.graphsim.store import EventState, Override, StoredEvent, override_key

_PREFIX, _SUFFIX = "AAMkAD", "AAA="
_MARK = b"\x0b"  # separates the master's bytes from the original start in an instance id
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# -- ids --------------------------------------------------------------------------------------
def instance_id(master_id: str, original: datetime) -> str:
    """The id of the instance of ``master_id`` whose original start is ``original`` (UTC)."""
    stamp = override_key(original).to_bytes(8, "big", signed=True)
    return _PREFIX + base64.urlsafe_b64encode(_id_bytes(master_id) + _MARK + stamp).decode() + _SUFFIX


def parse_instance_id(value: str) -> tuple[str, datetime] | None:
    """``(master id, original start)`` encoded in an instance id, or None if it is not one."""
    if not (value.startswith(_PREFIX) and value.endswith(_SUFFIX)) or len(value) <= len(_PREFIX + _SUFFIX):
        return None
    body = value[len(_PREFIX) : -len(_SUFFIX)]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        return None
    if len(raw) < 10 or raw[-9:-8] != _MARK:
        return None
    micros = int.from_bytes(raw[-8:], "big", signed=True)
    try:
        original = _EPOCH + timedelta(microseconds=micros)
    except OverflowError:
        return None
    master_id = _PREFIX + base64.urlsafe_b64encode(raw[:-9]).decode() + _SUFFIX
    if instance_id(master_id, original) != value:  # only the canonical spelling
        return None
    return master_id, original


def _id_bytes(item_id: str) -> bytes:
    body = item_id[len(_PREFIX) : -len(_SUFFIX)] if item_id.startswith(_PREFIX) else item_id
    try:
        return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):  # pragma: no cover - store ids are always base64
        return item_id.encode()


def instance_ical_uid(master_uid: str, day: date) -> str:
    """The master's Global Object Id with the instance date (bytes 16..19) filled in."""
    if len(master_uid) < 40:
        return master_uid
    return master_uid[:32] + f"{day.year:04X}{day.month:02X}{day.day:02X}" + master_uid[40:]


# -- instances ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Slot:
    """One occurrence the pattern gives: original start (UTC), its date in the series zone, and
    its plain start/end."""

    original: datetime
    day: date
    start: When
    end: When


@dataclass(frozen=True)
class Instance:
    """An occurrence or exception of a series, rendered like an event (events.EventLike)."""

    master: StoredEvent
    original: datetime
    day: date
    fields: dict[str, Any]
    override: Override | None  # the exception, None for a plain occurrence

    @property
    def id(self) -> str:
        return instance_id(self.master.id, self.original)

    @property
    def seq(self) -> int:
        return self.master.seq

    @property
    def created(self) -> datetime:
        return self.master.created

    @property
    def modified(self) -> datetime:
        return self.master.modified

    @property
    def change_key(self) -> str:
        return self.master.change_key

    @property
    def ical_uid(self) -> str:
        return instance_ical_uid(self.master.ical_uid, self.day)

    @property
    def transaction_id(self) -> str | None:
        return None

    @property
    def extended(self) -> dict[str, tuple[str, str]]:
        return self.override.extended if self.override is not None else self.master.extended

    @property
    def event_type(self) -> str:
        return "exception" if self.override is not None else "occurrence"

    @property
    def series_master_id(self) -> str | None:
        return self.master.id

    @property
    def original_start(self) -> datetime | None:
        return self.original

    @property
    def cancelled_occurrences(self) -> list[str]:
        return []

    @property
    def is_exception(self) -> bool:
        return self.override is not None

    @property
    def start_utc(self) -> datetime:
        return self.fields["start"].utc


def slots(fields: Mapping[str, Any]) -> Iterator[Slot]:
    """Every occurrence of the series defined by the master's ``fields``, in order (unbounded
    for ``noEnd``: stop yourself)."""
    rec = fields["recurrence"]
    start: When = fields["start"]
    end: When = fields["end"]
    if fields["isAllDay"]:
        length = end.local - start.local
        for day in rec_dates.series_dates(rec):
            local = datetime.combine(day, start.local.time())
            s = When(local, start.tz_name)
            yield Slot(s.utc, day, s, When(local + length, end.tz_name))
        return
    zone = ev_model.series_zone(fields)[1]
    wall = tz.from_utc(start.utc, zone).time()
    duration = end.utc - start.utc
    start_zone, end_zone = start.zone, end.zone
    for day in rec_dates.series_dates(rec):
        utc = tz.to_utc(datetime.combine(day, wall), zone)
        yield Slot(
            utc,
            day,
            When(tz.from_utc(utc, start_zone), start.tz_name),
            When(tz.from_utc(utc + duration, end_zone), end.tz_name),
        )


def _plain(master: StoredEvent, slot: Slot) -> Instance:
    fields = {**master.fields, "start": slot.start, "end": slot.end, "recurrence": None}
    return Instance(master, slot.original, slot.day, fields, None)


def _exception(master: StoredEvent, ov: Override) -> Instance:
    assert ov.fields is not None
    return Instance(master, ov.original, date.fromisoformat(ov.oid_date), ov.fields, ov)


def _members(
    fields: Mapping[str, Any], overrides: Mapping[int, Override], ws: datetime, we: datetime
) -> list[tuple[datetime, Slot | None, Override | None]]:
    """``(original, slot of a plain occurrence | None, exception | None)`` of the instances whose
    span overlaps [ws, we), by start. Cancelled occurrences are not instances."""
    found: list[tuple[datetime, datetime, Slot | None, Override | None]] = []
    for slot in slots(fields):
        s = slot.start.utc
        if s >= we:
            break
        if override_key(slot.original) in overrides:
            continue
        if ev_model.span_overlaps(s, slot.end.utc, ws, we):
            found.append((s, slot.original, slot, None))
    for ov in overrides.values():
        if ov.fields is not None and ev_model.overlaps(ov.fields, ws, we):
            found.append((ov.fields["start"].utc, ov.original, None, ov))
    found.sort(key=lambda t: (t[0], t[1]))
    return [(original, slot, ov) for _, original, slot, ov in found]


def window_instances(master: StoredEvent, ws: datetime, we: datetime) -> list[Instance]:
    """The occurrences and exceptions of ``master`` overlapping [ws, we), by start."""
    out: list[Instance] = []
    for _, slot, ov in _members(master.fields, master.overrides, ws, we):
        if slot is not None:
            out.append(_plain(master, slot))
        elif ov is not None:
            out.append(_exception(master, ov))
    return out


def window_ids(event_id: str, state: EventState, ws: datetime, we: datetime) -> list[str]:
    """Ids a calendarView delta over [ws, we) showed for this event in ``state``: a single
    instance when it overlapped; a series' master plus its overlapping instances."""
    if not state.fields.get("recurrence"):
        return [event_id] if ev_model.overlaps(state.fields, ws, we) else []
    members = _members(state.fields, state.overrides, ws, we)
    if not members:
        return []
    return [event_id] + [instance_id(event_id, original) for original, _, _ in members]


def exceptions(master: StoredEvent) -> list[Instance]:
    """Every exception of the series (``exceptionOccurrences``), by start."""
    found = [_exception(master, ov) for ov in master.overrides.values() if not ov.cancelled]
    return sorted(found, key=lambda i: (i.start_utc, i.original))


def find_instance(master: StoredEvent, original: datetime) -> Instance | None:
    """The instance of ``master`` with this original start; None when the pattern has no such
    occurrence or it was cancelled."""
    if not master.fields.get("recurrence"):
        return None
    ov = master.overrides.get(override_key(original))
    if ov is not None:
        return None if ov.cancelled else _exception(master, ov)
    for slot in slots(master.fields):
        if slot.original == original:
            return _plain(master, slot)
        if slot.original > original:
            return None
    return None


def check_move(master: StoredEvent, original: datetime, new_start: When) -> None:
    """400 ``ErrorOccurrenceCrossingBoundary`` when ``new_start``'s local date (series zone) is on
    or before the previous instance's date or on or after the next one's. Neighbours are the
    other non-cancelled instances of the series, at their current (possibly moved) dates."""
    fields = master.fields
    new_day = ev_model.series_day(fields, new_start)
    prev_day: date | None = None
    next_day: date | None = None
    for slot in slots(fields):
        if slot.original == original:
            continue
        ov = master.overrides.get(override_key(slot.original))
        if ov is not None and ov.cancelled:
            continue
        day = ev_model.series_day(fields, ov.fields["start"]) if ov is not None and ov.fields else slot.day
        if slot.original < original:
            prev_day = day
        else:
            next_day = day
            break
    if (prev_day is not None and new_day <= prev_day) or (next_day is not None and new_day >= next_day):
        raise crossing_boundary()


def crossing_boundary() -> GraphError:
    return bad_request(
        "ErrorOccurrenceCrossingBoundary",
        "An occurrence cannot be moved to or beyond the date of an adjacent occurrence of the series.",
    )

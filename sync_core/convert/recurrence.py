"""Recurring series: Graph ``patternedRecurrence`` <-> RFC 5545 RRULE, and expansion.

The contract is docs/RECURRENCE.md; in short:

- Graph's recurrence (``/work/shared/reference/graph-v1.0-calendar.csdl.xml``: complex types
  ``patternedRecurrence``, ``recurrencePattern``, ``recurrenceRange``; enums
  ``recurrencePatternType``, ``recurrenceRangeType``, ``dayOfWeek``, ``weekIndex``) maps onto
  an RRULE (RFC 5545 3.3.10): ``daily`` -> FREQ=DAILY, ``weekly`` -> FREQ=WEEKLY;BYDAY;WKST,
  ``absoluteMonthly`` -> BYMONTHDAY, ``relativeMonthly`` -> BYDAY;BYSETPOS, the yearly types
  likewise with BYMONTH; ``numbered`` -> COUNT, ``endDate`` -> UNTIL, ``noEnd`` -> neither.
  Exchange clamps a ``dayOfMonth`` past the month's end to its last day; RFC 5545 skips such
  months, so those days are written ``BYMONTHDAY=28,..,d;BYSETPOS=-1``.
- Both converters store the *canonical text* (:func:`canonical_rrule`): the RRULE the Graph
  form maps back to, or, for rules Graph cannot express, the parts in a fixed order:
  FREQ, INTERVAL (omitted when 1), COUNT, UNTIL, BYSECOND, BYMINUTE, BYHOUR, BYDAY,
  BYMONTHDAY, BYYEARDAY, BYWEEKNO, BYMONTH, BYSETPOS, WKST (then RFC 7529 RSCALE, SKIP).
  Values are upper-case and de-duplicated; numbers ascend with the non-negative ones first
  (``BYMONTHDAY=1,15,-3,-1``); BYDAY goes MO..SU, and for one weekday a bare day first, then
  positive prefixes ascending, then negative ones ascending (``BYDAY=MO,1MO,-2MO,-1MO,TU``).
- Rules Graph cannot express give a reason (:func:`rule_unsupported_reason`,
  :func:`graph_unsupported_reason`, :class:`~sync_core.errors.NotExpressible`); such series
  are expanded into single events (:func:`expand`).
- Expansion is wall-clock expansion with ``dateutil.rrule`` in the series' zone (RFC 5545
  3.3.10 / 3.3.5), DTSTART always being the first occurrence.

Kinds of values (as in :mod:`sync_core.model`): a ``date`` for all-day series, an aware
datetime in the series' zone, or a naive datetime for floating time. Where dates or floating
times meet aware instants (windows, UTC UNTIL for floating series), they are read as if they
were UTC wall time (:func:`sync_core.model.in_window` uses the same convention).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any

from dateutil.rrule import rrulestr

from sync_core.convert import timezones
from sync_core.errors import InvalidGraphEvent, InvalidICalendar, NotExpressible, UnknownTimeZone, UnsupportedEvent
from sync_core.model import Event, instant_text

# --- vocabulary ---------------------------------------------------------------------------
#: RFC 5545 3.3.10 ``weekday``, in the order canonical BYDAY lists use (Python's weekday()).
WEEKDAYS = ("MO", "TU", "WE", "TH", "FR", "SA", "SU")
#: Graph ``dayOfWeek`` members, in the enum's order (the order written to ``daysOfWeek``).
GRAPH_DAYS = ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday")
_DAY_TO_GRAPH = dict(zip(("SU", "MO", "TU", "WE", "TH", "FR", "SA"), GRAPH_DAYS, strict=True))
_GRAPH_TO_DAY = {graph: day for day, graph in _DAY_TO_GRAPH.items()}
#: Graph ``weekIndex`` <-> BYSETPOS / BYDAY prefix.
_INDEX_TO_POSITION = {"first": 1, "second": 2, "third": 3, "fourth": 4, "last": -1}
_POSITION_TO_INDEX = {position: index for index, position in _INDEX_TO_POSITION.items()}
#: Graph ``recurrencePatternType`` members (matched case-insensitively on reads).
_PATTERN_TYPES = {
    name.casefold(): name
    for name in ("daily", "weekly", "absoluteMonthly", "relativeMonthly", "absoluteYearly", "relativeYearly")
}
_RANGE_TYPES = {name.casefold(): name for name in ("endDate", "noEnd", "numbered")}

_FREQS = ("SECONDLY", "MINUTELY", "HOURLY", "DAILY", "WEEKLY", "MONTHLY", "YEARLY")
_SUB_DAILY = {"SECONDLY": timedelta(seconds=1), "MINUTELY": timedelta(minutes=1), "HOURLY": timedelta(hours=1)}
#: An upper bound of one FREQ period (used to size the windows that look for neighbours).
_PERIOD = {
    **_SUB_DAILY, "DAILY": timedelta(days=1), "WEEKLY": timedelta(days=7),
    "MONTHLY": timedelta(days=31), "YEARLY": timedelta(days=366),
}
#: Numeric list parts (RFC 5545 3.3.10): name -> (lowest absolute value, highest, negatives allowed).
_NUMBER_PARTS = {
    "BYSECOND": (0, 60, False),
    "BYMINUTE": (0, 59, False),
    "BYHOUR": (0, 23, False),
    "BYMONTHDAY": (1, 31, True),
    "BYYEARDAY": (1, 366, True),
    "BYWEEKNO": (1, 53, True),
    "BYMONTH": (1, 12, False),
    "BYSETPOS": (1, 366, True),
}
#: Canonical part order (module docstring).
PART_ORDER = (
    "FREQ", "INTERVAL", "COUNT", "UNTIL", "BYSECOND", "BYMINUTE", "BYHOUR", "BYDAY", "BYMONTHDAY",
    "BYYEARDAY", "BYWEEKNO", "BYMONTH", "BYSETPOS", "WKST", "RSCALE", "SKIP",
)
#: Days a month always has (February: 28), for the absoluteYearly clamp.
_SHORTEST_MONTH = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
#: Day from which the clamp form ``BYMONTHDAY=28,..,d;BYSETPOS=-1`` starts.
_CLAMP_FROM = 28

_NUMBER = re.compile(r"[+-]?\d{1,3}")
_BYDAY_ITEM = re.compile(r"([+-]?\d{1,2})?(MO|TU|WE|TH|FR|SA|SU)")
_DATE_TEXT = re.compile(r"(\d{4})(\d{2})(\d{2})")
_DATETIME_TEXT = re.compile(r"(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})(Z?)")
_TOKEN = re.compile(r"[A-Z0-9-]{1,64}")
_SHOWN = 24

#: Earliest / latest instants a window may reach (keeps arithmetic inside datetime's range).
_EARLIEST = datetime(1, 1, 3, tzinfo=UTC)
_LATEST = datetime(9999, 12, 29, tzinfo=UTC)
#: Neighbour search (crossing_boundary_reason): widenings of the window and occurrence cap.
_NEIGHBOUR_WIDENINGS = 8
_NEIGHBOUR_LIMIT = 100_000


# --- the parsed rule ----------------------------------------------------------------------
@dataclass(frozen=True)
class _Rule:
    """An RRULE value (RFC 5545 3.3.10 ``recur``), parts parsed; lists in canonical order.

    ``until`` is a date, a naive datetime (floating / local form) or an aware UTC datetime;
    ``until_text`` is its text as read (kept for inexpressible rules).
    """

    freq: str
    interval: int = 1
    count: int | None = None
    until: date | datetime | None = None
    until_text: str | None = None
    bysecond: tuple[int, ...] = ()
    byminute: tuple[int, ...] = ()
    byhour: tuple[int, ...] = ()
    byday: tuple[tuple[int | None, str], ...] = ()
    bymonthday: tuple[int, ...] = ()
    byyearday: tuple[int, ...] = ()
    byweekno: tuple[int, ...] = ()
    bymonth: tuple[int, ...] = ()
    bysetpos: tuple[int, ...] = ()
    wkst: str | None = None
    rscale: str | None = None
    skip: str | None = None


def _shown(text: str) -> str:
    """A piece of RRULE text for an error message, bounded in length."""
    return repr(text[:_SHOWN])


def _number_key(value: int) -> tuple[bool, int]:
    """Canonical order of numbers: non-negative ascending, then negative ascending."""
    return (value < 0, value)


def _byday_key(item: tuple[int | None, str]) -> tuple[int, int, bool, int]:
    """Canonical order of BYDAY items: MO..SU, then bare day, positive, negative prefixes."""
    prefix, day = item
    if prefix is None:
        return (WEEKDAYS.index(day), 0, False, 0)
    return (WEEKDAYS.index(day), 1, prefix < 0, prefix)


def _parse_rule(text: str) -> _Rule:
    """Parse RRULE value text (RFC 5545 3.3.10; an ``RRULE:`` prefix and case are tolerated).

    Raises :class:`InvalidICalendar` for text that is no valid ``recur`` value: unknown or
    repeated parts, no FREQ, values outside the grammar's ranges, COUNT together with UNTIL.
    Messages name the part, never more than a few characters of the value.
    """
    if not isinstance(text, str):
        raise InvalidICalendar("RRULE is not text")
    values = _split_parts(text)
    if "FREQ" not in values:
        raise InvalidICalendar("RRULE has no FREQ")
    if values["FREQ"] not in _FREQS:
        raise InvalidICalendar(f"RRULE FREQ {_shown(values['FREQ'])} is no RFC 5545 frequency")
    if "COUNT" in values and "UNTIL" in values:
        raise InvalidICalendar("RRULE has both COUNT and UNTIL")
    until_text = values.get("UNTIL")

    def numbers(name: str) -> tuple[int, ...]:
        return _parse_numbers(name, values[name]) if name in values else ()

    return _Rule(
        freq=values["FREQ"],
        interval=_parse_positive("INTERVAL", values.get("INTERVAL", "1")),
        count=_parse_positive("COUNT", values["COUNT"]) if "COUNT" in values else None,
        until=_parse_until(until_text) if until_text is not None else None,
        until_text=until_text,
        byday=_parse_byday(values["BYDAY"]) if "BYDAY" in values else (),
        wkst=_parse_weekday("WKST", values["WKST"]) if "WKST" in values else None,
        rscale=_parse_token("RSCALE", values["RSCALE"]) if "RSCALE" in values else None,
        skip=_parse_skip(values["SKIP"]) if "SKIP" in values else None,
        bysecond=numbers("BYSECOND"),
        byminute=numbers("BYMINUTE"),
        byhour=numbers("BYHOUR"),
        bymonthday=numbers("BYMONTHDAY"),
        byyearday=numbers("BYYEARDAY"),
        byweekno=numbers("BYWEEKNO"),
        bymonth=numbers("BYMONTH"),
        bysetpos=numbers("BYSETPOS"),
    )


def _split_parts(text: str) -> dict[str, str]:
    """``NAME=VALUE`` parts, upper-cased; empty parts (a trailing ``;``) are skipped."""
    body = text.strip()
    if body.upper().startswith("RRULE:"):
        body = body[len("RRULE:"):]
    values: dict[str, str] = {}
    for raw in body.split(";"):
        if not raw.strip():
            continue
        name, sep, value = (piece.strip().upper() for piece in raw.partition("="))
        if name not in PART_ORDER:
            raise InvalidICalendar(f"RRULE part {_shown(name)} is unknown")
        if not sep or not value:
            raise InvalidICalendar(f"RRULE part {name} has no value")
        if name in values:
            raise InvalidICalendar(f"RRULE part {name} occurs more than once")
        values[name] = value
    return values


def _parse_positive(name: str, value: str) -> int:
    if not value.isdigit() or len(value) > 9 or int(value) < 1:
        raise InvalidICalendar(f"RRULE {name} is not a positive integer")
    return int(value)


def _parse_numbers(name: str, value: str) -> tuple[int, ...]:
    low, high, negative = _NUMBER_PARTS[name]
    result: set[int] = set()
    for item in value.split(","):
        if not _NUMBER.fullmatch(item):
            raise InvalidICalendar(f"RRULE {name} holds a value that is no number")
        number = int(item)
        if not low <= abs(number) <= high or (number < 0 and not negative) or (item[0] == "-" and number == 0):
            raise InvalidICalendar(f"RRULE {name} holds a value outside {'+/-' if negative else ''}{low}..{high}")
        result.add(number)
    return tuple(sorted(result, key=_number_key))


def _parse_byday(value: str) -> tuple[tuple[int | None, str], ...]:
    result: set[tuple[int | None, str]] = set()
    for item in value.split(","):
        match = _BYDAY_ITEM.fullmatch(item)
        if match is None:
            raise InvalidICalendar("RRULE BYDAY holds a value that is no [+/-ordwk]weekday")
        prefix = int(match.group(1)) if match.group(1) else None
        if prefix is not None and not 1 <= abs(prefix) <= 53:
            raise InvalidICalendar("RRULE BYDAY holds a prefix outside +/-1..53")
        result.add((prefix, match.group(2)))
    return tuple(sorted(result, key=_byday_key))


def _parse_weekday(name: str, value: str) -> str:
    if value not in WEEKDAYS:
        raise InvalidICalendar(f"RRULE {name} is no weekday")
    return value


def _parse_token(name: str, value: str) -> str:
    if not _TOKEN.fullmatch(value):
        raise InvalidICalendar(f"RRULE {name} is not a name")
    return value


def _parse_skip(value: str) -> str:
    if value not in ("OMIT", "BACKWARD", "FORWARD"):
        raise InvalidICalendar("RRULE SKIP is not OMIT, BACKWARD or FORWARD (RFC 7529)")
    return value


def _parse_until(value: str) -> date | datetime:
    """UNTIL as a date, a naive datetime or an aware UTC datetime (RFC 5545 3.3.4 / 3.3.5)."""
    try:
        return _parse_date_or_datetime(value)
    except ValueError:
        raise InvalidICalendar("RRULE UNTIL is no DATE or DATE-TIME") from None


def _parse_date_or_datetime(value: str) -> date | datetime:
    """``YYYYMMDD``, ``YYYYMMDDTHHMMSS`` or ``YYYYMMDDTHHMMSSZ``; ValueError otherwise."""
    match = _DATE_TEXT.fullmatch(value)
    if match is not None:
        return date(*(int(group) for group in match.groups()))
    match = _DATETIME_TEXT.fullmatch(value)
    if match is None:
        raise ValueError(f"{_shown(value)} is no DATE or DATE-TIME text")
    year, month, day, hour, minute, second = (int(group) for group in match.groups()[:6])
    moment = datetime(year, month, day, hour, minute, second)
    return moment.replace(tzinfo=UTC) if match.group(7) else moment


# --- canonical text -----------------------------------------------------------------------
def _numbers_text(values: Sequence[int]) -> str:
    return ",".join(str(value) for value in sorted(set(values), key=_number_key))


def _byday_text(items: Sequence[tuple[int | None, str]]) -> str:
    return ",".join(f"{'' if prefix is None else prefix}{day}" for prefix, day in sorted(set(items), key=_byday_key))


def _rule_text(rule: _Rule) -> str:
    """The parts of ``rule`` in canonical order (module docstring), without ``RRULE:``."""
    parts: dict[str, str | None] = {
        "FREQ": rule.freq,
        "INTERVAL": str(rule.interval) if rule.interval != 1 else None,
        "COUNT": str(rule.count) if rule.count is not None else None,
        "UNTIL": rule.until_text,
        "BYDAY": _byday_text(rule.byday) if rule.byday else None,
        "WKST": rule.wkst,
        "RSCALE": rule.rscale,
        "SKIP": rule.skip,
    }
    for name in _NUMBER_PARTS:
        values: tuple[int, ...] = getattr(rule, name.lower())
        parts[name] = _numbers_text(values) if values else None
    return ";".join(f"{name}={parts[name]}" for name in PART_ORDER if parts[name] is not None)


def _with_until(rule: _Rule, until: date | datetime | None) -> _Rule:
    return replace(rule, until=until, until_text=None if until is None else recurrence_id_text(until))


# --- Graph -> RRULE -----------------------------------------------------------------------
def rrule_from_graph(recurrence: Mapping[str, Any], start: datetime | date) -> str:
    """Graph ``patternedRecurrence`` -> canonical RRULE text (docs/RECURRENCE.md tables).

    ``recurrence`` is ``{"pattern": recurrencePattern, "range": recurrenceRange}`` (Graph v1.0
    CSDL); only the members relevant to each ``type`` are read (Graph returns them all, with
    zeros). ``interval`` missing or 0 means 1, ``firstDayOfWeek`` missing means sunday and
    ``index`` missing means first (the enums' zero members). ``start`` is the series master's
    start in model form; an ``endDate`` range becomes UNTIL at the start's time of day on that
    date: UTC (``...Z``) for an aware start, a DATE for all-day, floating for floating
    (RFC 5545 3.3.10: UNTIL has DTSTART's value type, in UTC when DTSTART has a zone).

    Raises :class:`InvalidGraphEvent` (naming the field) for a malformed or unknown value.
    """
    if not isinstance(recurrence, Mapping):
        raise InvalidGraphEvent("recurrence is not an object")
    pattern = _graph_object(recurrence, "pattern")
    rule = _rule_from_pattern(pattern, start)
    return _rule_text(_with_graph_range(rule, _graph_object(recurrence, "range"), start))


def _graph_object(recurrence: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = recurrence.get(name)
    if not isinstance(value, Mapping):
        raise InvalidGraphEvent(f"recurrence.{name} is missing or not an object")
    return value


def _graph_enum(container: Mapping[str, Any], name: str, members: Mapping[str, str], where: str) -> str:
    value = container.get(name)
    if not isinstance(value, str) or value.casefold() not in members:
        raise InvalidGraphEvent(f"recurrence.{where}.{name} is missing or not a known value")
    return members[value.casefold()]


def _graph_int(container: Mapping[str, Any], name: str, where: str, low: int, high: int | None) -> int:
    value = container.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        raise InvalidGraphEvent(f"recurrence.{where}.{name} is missing or not an integer {bound}")
    return value


def _graph_interval(pattern: Mapping[str, Any]) -> int:
    """``interval``; missing or 0 means 1."""
    if pattern.get("interval") in (None, 0):
        return 1
    return _graph_int(pattern, "interval", "pattern", 1, None)


def _graph_weekday(value: object, field: str) -> str:
    """A Graph ``dayOfWeek`` member -> RRULE weekday."""
    if not isinstance(value, str) or value.casefold() not in _GRAPH_TO_DAY:
        raise InvalidGraphEvent(f"recurrence.pattern.{field} is not a day of the week")
    return _GRAPH_TO_DAY[value.casefold()]


def _graph_weekdays(pattern: Mapping[str, Any]) -> tuple[tuple[int | None, str], ...]:
    """``daysOfWeek`` (at least one) -> BYDAY items without prefix."""
    days = pattern.get("daysOfWeek")
    if not isinstance(days, list) or not days:
        raise InvalidGraphEvent("recurrence.pattern.daysOfWeek is missing or empty")
    return tuple(sorted({(None, _graph_weekday(day, "daysOfWeek")) for day in days}, key=_byday_key))


def _graph_position(pattern: Mapping[str, Any]) -> int:
    """``index`` (``weekIndex``; missing means first) -> BYSETPOS."""
    if pattern.get("index") is None:
        return 1
    return _INDEX_TO_POSITION[_graph_enum(pattern, "index", {key: key for key in _INDEX_TO_POSITION}, "pattern")]


def _with_month_day(rule: _Rule, day: int, shortest: int) -> _Rule:
    """BYMONTHDAY (and BYSETPOS) for Graph ``dayOfMonth``: the day itself when every month
    concerned has it, else the clamp form ``28,..,day;BYSETPOS=-1`` (the month's last day)."""
    if day <= shortest:
        return replace(rule, bymonthday=(day,))
    return replace(rule, bymonthday=tuple(range(_CLAMP_FROM, day + 1)), bysetpos=(-1,))


def _rule_from_pattern(pattern: Mapping[str, Any], start: datetime | date) -> _Rule:
    """Graph ``recurrencePattern`` -> the rule's FREQ, INTERVAL and BYxxx parts."""
    kind = _graph_enum(pattern, "type", _PATTERN_TYPES, "pattern")
    interval = _graph_interval(pattern)
    if kind == "daily":
        return _Rule("DAILY", interval)
    if kind == "weekly":
        first = pattern.get("firstDayOfWeek")
        wkst = _graph_weekday(first, "firstDayOfWeek") if first is not None else "SU"
        return _Rule("WEEKLY", interval, byday=_graph_weekdays(pattern), wkst=wkst)
    if kind == "absoluteMonthly":
        day = _graph_int(pattern, "dayOfMonth", "pattern", 1, 31)
        return _with_month_day(_Rule("MONTHLY", interval), day, _CLAMP_FROM)
    if kind == "relativeMonthly":
        return _Rule("MONTHLY", interval, byday=_graph_weekdays(pattern), bysetpos=(_graph_position(pattern),))
    month = _graph_int(pattern, "month", "pattern", 1, 12)
    if kind == "absoluteYearly":
        day = _graph_int(pattern, "dayOfMonth", "pattern", 1, 31)
        return _with_month_day(_Rule("YEARLY", interval, bymonth=(month,)), day, _SHORTEST_MONTH[month - 1])
    return _Rule(
        "YEARLY", interval, byday=_graph_weekdays(pattern), bymonth=(month,), bysetpos=(_graph_position(pattern),)
    )


def _with_graph_range(rule: _Rule, graph_range: Mapping[str, Any], start: datetime | date) -> _Rule:
    """Graph ``recurrenceRange`` -> COUNT / UNTIL (``startDate`` and the zone are the master's)."""
    kind = _graph_enum(graph_range, "type", _RANGE_TYPES, "range")
    if kind == "noEnd":
        return rule
    if kind == "numbered":
        return replace(rule, count=_graph_int(graph_range, "numberOfOccurrences", "range", 1, None))
    value = graph_range.get("endDate")
    try:
        end_date = date.fromisoformat(value) if isinstance(value, str) and len(value) == 10 else None
    except ValueError:
        end_date = None
    if end_date is None:
        raise InvalidGraphEvent("recurrence.range.endDate is missing or not a date")
    return _with_until(rule, _until_for_end_date(end_date, start))


def _until_for_end_date(end_date: date, start: datetime | date) -> date | datetime:
    """UNTIL for a Graph ``endDate``: the start's time of day on that local date (RFC 5545
    3.3.10: UTC when DTSTART is zoned, a DATE for all-day, local time for floating)."""
    if not isinstance(start, datetime):
        return end_date
    wall = datetime.combine(end_date, start.time().replace(microsecond=0))
    if start.tzinfo is None:
        return wall
    return _localize(wall, start.tzinfo).astimezone(UTC)


# --- RRULE -> Graph -----------------------------------------------------------------------
def graph_from_rrule(rule: str, start: datetime | date, *, time_zone: str) -> dict[str, Any]:
    """RRULE text (any valid form) -> Graph ``patternedRecurrence`` ``{"pattern", "range"}``.

    The pattern holds ``type`` and ``interval`` plus only the members its type uses (Graph
    v1.0 ``recurrencePattern``): ``daysOfWeek`` and ``firstDayOfWeek`` (weekly),
    ``dayOfMonth`` (absolute), ``month`` (yearly), ``daysOfWeek`` and ``index`` (relative).
    The range (``recurrenceRange``) holds ``type``, ``startDate`` (the start's local date),
    ``endDate`` (the last local date UNTIL includes) or ``numberOfOccurrences`` (COUNT), and
    ``recurrenceTimeZone`` = ``time_zone`` (a Windows id the caller chose).

    Raises :class:`NotExpressible` (a short reason naming the RRULE part) for what Graph
    cannot hold (docs/RECURRENCE.md "the fallback"), including a DTSTART that is not an
    occurrence of the rule (Graph would move the series start); :class:`InvalidICalendar`
    for invalid RRULE text.
    """
    return _graph_form(_parse_rule(rule), start, time_zone)


def _graph_form(rule: _Rule, start: datetime | date, time_zone: str) -> dict[str, Any]:
    pattern = _graph_pattern(rule, start)
    _require_start_on_rule(rule, start)
    return {"pattern": pattern, "range": _graph_range(rule, start, time_zone)}


def _graph_pattern(rule: _Rule, start: datetime | date) -> dict[str, Any]:
    """Graph ``recurrencePattern`` for the rule, or :class:`NotExpressible`."""
    _refuse_parts_graph_lacks(rule)
    if rule.freq == "DAILY":
        return _daily_pattern(rule, start)
    if rule.freq == "WEEKLY":
        return _weekly_pattern(rule, start)
    if rule.freq == "MONTHLY":
        return _monthly_pattern(rule, start)
    return _yearly_pattern(rule, start)


def _refuse_parts_graph_lacks(rule: _Rule) -> None:
    """Sub-daily FREQ, BYSECOND/BYMINUTE/BYHOUR/BYYEARDAY/BYWEEKNO and RFC 7529 parts."""
    if rule.freq in _SUB_DAILY:
        raise NotExpressible(f"RRULE uses FREQ={rule.freq}, which Microsoft 365 cannot repeat by")
    for name in ("BYSECOND", "BYMINUTE", "BYHOUR", "BYYEARDAY", "BYWEEKNO"):
        if getattr(rule, name.lower()):
            raise NotExpressible(f"RRULE uses {name}, which Microsoft 365 cannot repeat by")
    if rule.rscale is not None or rule.skip is not None:
        raise NotExpressible("RRULE uses RSCALE/SKIP (RFC 7529), which Microsoft 365 cannot express")


def _refuse_parts_with_freq(rule: _Rule, names: Sequence[str]) -> None:
    for name in names:
        if getattr(rule, name.lower()):
            raise NotExpressible(f"RRULE uses {name} with FREQ={rule.freq}, which Microsoft 365 cannot express")


def _refuse_byday_prefixes(rule: _Rule) -> None:
    if any(prefix is not None for prefix, _day in rule.byday):
        raise NotExpressible(
            f"RRULE uses BYDAY with a numeric prefix in FREQ={rule.freq}, which Microsoft 365 cannot express"
        )


def _graph_days(byday: Sequence[tuple[int | None, str]]) -> list[str]:
    """BYDAY weekdays -> Graph ``daysOfWeek`` in the enum's order (sunday first)."""
    wanted = {_DAY_TO_GRAPH[day] for _prefix, day in byday}
    return [name for name in GRAPH_DAYS if name in wanted]


def _weekly(days: Sequence[tuple[int | None, str]], interval: int, wkst: str | None) -> dict[str, Any]:
    """A ``weekly`` pattern; WKST absent means monday (RFC 5545's default, not Graph's)."""
    return {
        "type": "weekly",
        "interval": interval,
        "daysOfWeek": _graph_days(days),
        "firstDayOfWeek": _DAY_TO_GRAPH[wkst or "MO"],
    }


def _daily_pattern(rule: _Rule, start: datetime | date) -> dict[str, Any]:
    """FREQ=DAILY -> ``daily``; with BYDAY and INTERVAL 1 -> ``weekly`` on those days."""
    _refuse_parts_with_freq(rule, ("BYMONTH", "BYMONTHDAY", "BYSETPOS"))
    if not rule.byday:
        return {"type": "daily", "interval": rule.interval}
    if rule.interval > 1:
        raise NotExpressible("RRULE uses FREQ=DAILY with BYDAY and INTERVAL>1, which Microsoft 365 cannot express")
    _refuse_byday_prefixes(rule)
    return _weekly(rule.byday, 1, rule.wkst)


def _weekly_pattern(rule: _Rule, start: datetime | date) -> dict[str, Any]:
    """FREQ=WEEKLY -> ``weekly``; no BYDAY means DTSTART's weekday (RFC 5545 3.3.10)."""
    _refuse_parts_with_freq(rule, ("BYMONTH", "BYMONTHDAY", "BYSETPOS"))
    _refuse_byday_prefixes(rule)
    days = rule.byday or ((None, WEEKDAYS[start.weekday()]),)
    return _weekly(days, rule.interval, rule.wkst)


def _monthly_pattern(rule: _Rule, start: datetime | date) -> dict[str, Any]:
    """FREQ=MONTHLY -> ``relativeMonthly`` (BYDAY) or ``absoluteMonthly`` (BYMONTHDAY)."""
    _refuse_parts_with_freq(rule, ("BYMONTH",))
    if rule.byday:
        if rule.bymonthday:
            raise NotExpressible("RRULE combines BYDAY and BYMONTHDAY, which Microsoft 365 cannot express")
        days, index = _relative_days(rule)
        return {"type": "relativeMonthly", "interval": rule.interval, "daysOfWeek": days, "index": index}
    return {"type": "absoluteMonthly", "interval": rule.interval, "dayOfMonth": _day_of_month(rule, start, _CLAMP_FROM)}


def _yearly_pattern(rule: _Rule, start: datetime | date) -> dict[str, Any]:
    """FREQ=YEARLY -> ``relativeYearly`` (BYMONTH + BYDAY) or ``absoluteYearly``; no BYMONTH
    and no BYMONTHDAY means DTSTART's month and day (RFC 5545 3.3.10)."""
    if len(rule.bymonth) > 1:
        raise NotExpressible("RRULE has several BYMONTH values, which Microsoft 365 cannot express")
    if rule.byday:
        if not rule.bymonth:
            raise NotExpressible("RRULE uses BYDAY in FREQ=YEARLY without BYMONTH, which Microsoft 365 cannot express")
        if rule.bymonthday:
            raise NotExpressible("RRULE combines BYDAY and BYMONTHDAY, which Microsoft 365 cannot express")
        days, index = _relative_days(rule)
        return {
            "type": "relativeYearly", "interval": rule.interval, "daysOfWeek": days,
            "month": rule.bymonth[0], "index": index,
        }
    if rule.bymonthday and not rule.bymonth:
        raise NotExpressible(
            "RRULE uses BYMONTHDAY in FREQ=YEARLY without BYMONTH (every month), which Microsoft 365 cannot express"
        )
    month = rule.bymonth[0] if rule.bymonth else start.month
    day = _day_of_month(rule, start, _SHORTEST_MONTH[month - 1])
    return {"type": "absoluteYearly", "interval": rule.interval, "dayOfMonth": day, "month": month}


def _relative_days(rule: _Rule) -> tuple[list[str], str]:
    """``daysOfWeek`` and ``index`` from BYDAY=D;BYSETPOS=i or a single BYDAY=iD."""
    prefixes = {prefix for prefix, _day in rule.byday}
    if len(prefixes) > 1 or (None not in prefixes and len(rule.byday) > 1):
        raise NotExpressible(
            "RRULE uses BYDAY with mixed or several numeric prefixes, which Microsoft 365 cannot express"
        )
    prefix = next(iter(prefixes))
    if prefix is not None:
        if rule.bysetpos:
            raise NotExpressible(
                "RRULE uses BYSETPOS with a numeric BYDAY prefix, which Microsoft 365 cannot express"
            )
        position = prefix
    elif not rule.bysetpos:
        raise NotExpressible(
            f"RRULE uses BYDAY in FREQ={rule.freq} without a position (every matching day), "
            "which Microsoft 365 cannot express"
        )
    elif len(rule.bysetpos) > 1:
        raise NotExpressible("RRULE has several BYSETPOS values, which Microsoft 365 cannot express")
    else:
        position = rule.bysetpos[0]
    if position not in _POSITION_TO_INDEX:
        raise NotExpressible(
            f"RRULE picks occurrence {position} of the period (BYSETPOS or BYDAY prefix); "
            "Microsoft 365 can only pick the 1st to 4th or the last"
        )
    return _graph_days(rule.byday), _POSITION_TO_INDEX[position]


def _day_of_month(rule: _Rule, start: datetime | date, shortest: int) -> int:
    """Graph ``dayOfMonth`` from BYMONTHDAY (default: DTSTART's day). A day past ``shortest``
    (the fewest days a concerned month has) needs the clamp form ``28,..,d;BYSETPOS=-1``:
    RFC 5545 skips months without the day, Exchange uses their last day."""
    days = rule.bymonthday or (start.day,)
    last = days[-1]
    if rule.bysetpos == (-1,) and _CLAMP_FROM < last <= 31 and days == tuple(range(_CLAMP_FROM, last + 1)):
        return last
    if len(days) > 1:
        raise NotExpressible("RRULE has several BYMONTHDAY values, which Microsoft 365 cannot express")
    day = days[0]
    if day < 0:
        raise NotExpressible("RRULE counts BYMONTHDAY from the month's end, which Microsoft 365 cannot express")
    if rule.bysetpos not in ((), (1,), (-1,)):
        raise NotExpressible("RRULE uses BYSETPOS without BYDAY, which Microsoft 365 cannot express")
    if day > shortest:
        raise NotExpressible(
            f"RRULE repeats on day {day} of the month (BYMONTHDAY), which RFC 5545 skips in shorter months "
            "and Microsoft 365 would move to their last day"
        )
    return day


def _graph_range(rule: _Rule, start: datetime | date, time_zone: str) -> dict[str, Any]:
    """Graph ``recurrenceRange``: COUNT -> numbered, UNTIL -> endDate, else noEnd."""
    result: dict[str, Any] = {"type": "noEnd", "startDate": _local_day(start).isoformat()}
    if rule.count is not None:
        result.update(type="numbered", numberOfOccurrences=rule.count)
    elif rule.until is not None:
        result.update(type="endDate", endDate=_end_date(rule.until, start).isoformat())
    result["recurrenceTimeZone"] = time_zone
    return result


def _end_date(until: date | datetime, start: datetime | date) -> date:
    """The last local date whose occurrence (at the start's time of day) UNTIL includes."""
    if not isinstance(until, datetime):
        return until
    if not isinstance(start, datetime):
        return until.date()
    if start.tzinfo is None or until.tzinfo is None:
        wall = until.replace(tzinfo=None)
        candidate = wall.date()
        return candidate if datetime.combine(candidate, start.time()) <= wall else candidate - timedelta(days=1)
    candidate = until.astimezone(start.tzinfo).date()
    at = _localize(datetime.combine(candidate, start.time().replace(microsecond=0)), start.tzinfo)
    return candidate if at <= until else candidate - timedelta(days=1)


def _require_start_on_rule(rule: _Rule, start: datetime | date) -> None:
    """NotExpressible unless DTSTART is the rule's first occurrence (Graph would move it)."""
    wall = _wall(start).replace(microsecond=0)
    first = next(_rule_walls(rule, wall), None)
    if first != wall or (rule.until is not None and _after_until(_first_value(start), rule.until, start)):
        raise NotExpressible(
            "DTSTART is not an occurrence of the RRULE; Microsoft 365 would move the series to its first occurrence"
        )


# --- canonical text and reasons -----------------------------------------------------------
def canonical_rrule(rule: str, start: datetime | date) -> str:
    """The canonical RRULE text stored in :class:`sync_core.model.Recurrence` (docs/RECURRENCE.md).

    ``rrule_from_graph(graph_from_rrule(rule, start, time_zone="UTC"), start)`` when Graph
    can express the rule (so ``BYDAY=2TU`` and ``BYDAY=TU;BYSETPOS=2`` agree, and UNTIL at any
    time of the last day becomes the occurrence time); otherwise the parts in canonical
    order with values upper-cased, lists sorted and UNTIL's text kept. Idempotent.

    Raises :class:`InvalidICalendar` for invalid RRULE text (RFC 5545 3.3.10).
    """
    parsed = _parse_rule(rule)
    try:
        graph = _graph_form(parsed, start, timezones.UTC_NAME)
    except NotExpressible:
        return _rule_text(parsed)
    return rrule_from_graph(graph, start)


def rule_unsupported_reason(
    rule: str, start: datetime | date, rdates: Sequence[datetime | date] = ()
) -> str | None:
    """Why Graph cannot express this rule (plus RDATEs) with this DTSTART, or ``None``.

    The reasons are docs/RECURRENCE.md's fallback list, a DTSTART that is not an occurrence
    of the rule included. Raises :class:`InvalidICalendar` for invalid RRULE text.
    """
    parsed = _parse_rule(rule)
    if rdates:
        return "the series has RDATE occurrences outside its RRULE, which Microsoft 365 cannot express"
    try:
        _graph_form(parsed, start, timezones.UTC_NAME)
    except NotExpressible as exc:
        return str(exc)
    return None


# --- expansion ----------------------------------------------------------------------------
def expand(
    rule: str,
    start: datetime | date,
    *,
    window_start: datetime,
    window_end: datetime,
    duration: timedelta = timedelta(0),
    rdates: Sequence[datetime | date] = (),
    exdates: Sequence[datetime | date] = (),
    limit: int = 5000,
) -> list[datetime | date]:
    """Starts (recurrence ids) of the occurrences overlapping ``[window_start, window_end)``.

    An occurrence spans ``[s, s + duration)``; with a zero duration it counts when ``s`` lies
    in the window. Results are sorted and of ``start``'s kind: dates (all-day), aware
    datetimes in ``start``'s tzinfo, naive (floating). Semantics (RFC 5545):

    - wall-clock expansion in the start's zone with ``dateutil.rrule`` (naive DTSTART, then
      localised): 09:00 stays 09:00 across DST; a nonexistent local time takes the offset
      before the gap, an ambiguous one its first instant (3.3.5, 3.3.10);
    - DTSTART is always the first occurrence (3.8.5.3; 3.3.10: it counts for COUNT);
    - COUNT counts before EXDATEs are removed; UNTIL is inclusive, compared as an instant
      when it is UTC and the start is zoned (a DATE UNTIL includes that local date);
    - RDATEs are added (not counted by COUNT); EXDATEs are removed by instant equality (a
      date EXDATE of a timed series removes the occurrences on that local date).

    Window bounds are aware (naive bounds are read as UTC); dates and floating times compare
    as if they were UTC wall time. Raises :class:`ValueError` when more than ``limit``
    occurrences would be returned, :class:`InvalidICalendar` for invalid RRULE text and
    :class:`UnsupportedEvent` for RFC 7529 calendar scales or leap seconds.
    """
    parsed = _parse_rule(rule)
    low, high = _as_utc(window_start), _as_utc(window_end)
    excluded = _exclusion(exdates, start)
    resume = _wall_at(_shift(low, -abs(duration) - timedelta(days=2)), start)
    stop = _shift(high, timedelta(days=1))
    chosen: dict[str, datetime | date] = {}

    def take(value: datetime | date) -> None:
        if _overlaps(value, duration, low, high) and not excluded(value):
            chosen.setdefault(instant_text(value), value)
            if len(chosen) > limit:
                raise ValueError(f"the series has more than {limit} occurrences in the window")

    for value in _series_values(parsed, start, resume):
        if _as_utc_wall(value) >= stop:
            break
        take(value)
    for extra in rdates:
        take(_as_kind(extra, start))
    return sorted(chosen.values(), key=_as_utc_wall)


def _series_values(rule: _Rule, start: datetime | date, resume: datetime | None) -> Iterator[datetime | date]:
    """DTSTART, then the rule's later occurrences in start's kind, COUNT and UNTIL applied.

    ``resume`` (a naive wall time) lets sub-daily rules without COUNT skip ahead."""
    first = _wall(start).replace(microsecond=0)
    yield _first_value(start)
    produced = 1
    walls = _rule_walls(rule, first, resume if rule.count is None else None)
    for wall in walls:
        if wall <= _wall(start):
            continue
        if rule.count is not None and produced >= rule.count:
            return
        value = _from_wall(wall, start)
        if rule.until is not None and _after_until(value, rule.until, start):
            return
        produced += 1
        yield value


def _rule_walls(rule: _Rule, first: datetime, resume: datetime | None = None) -> Iterator[datetime]:
    """Naive wall-clock starts of FREQ/INTERVAL/BYxxx/WKST from ``first`` (``dateutil``
    ``rrulestr`` with a naive DTSTART); COUNT and UNTIL are left to the callers."""
    if rule.rscale not in (None, "GREGORIAN") or rule.skip not in (None, "OMIT"):
        raise UnsupportedEvent("RRULE uses a calendar scale or SKIP mode (RFC 7529) that cannot be expanded")
    if 60 in rule.bysecond:
        raise UnsupportedEvent("RRULE uses BYSECOND=60 (a leap second), which cannot be expanded")
    if _never_matches(rule):
        return iter(())
    if resume is not None and rule.freq in _SUB_DAILY:
        first = _fast_forward(first, resume, _SUB_DAILY[rule.freq] * rule.interval)
    core = replace(rule, count=None, until=None, until_text=None, rscale=None, skip=None)
    return iter(rrulestr(_rule_text(core), dtstart=first))


def _never_matches(rule: _Rule) -> bool:
    """BYMONTHDAY values no month of BYMONTH has (``BYMONTH=2;BYMONTHDAY=30``): dateutil would
    search such a rule up to year 9999 before giving up."""
    if not rule.bymonthday:
        return False
    months = rule.bymonth or tuple(range(1, 13))
    longest = {month: 29 if month == 2 else _SHORTEST_MONTH[month - 1] for month in months}
    return not any(abs(day) <= longest[month] for month in months for day in rule.bymonthday)


def _fast_forward(first: datetime, resume: datetime, step: timedelta) -> datetime:
    """The latest ``first + k * step`` (k >= 0) not after ``resume``: the same phase, so a
    sub-daily rule gives the same occurrences after it (its BYxxx defaults stay the same)."""
    if resume <= first:
        return first
    return first + step * ((resume - first) // step)


def _first_value(start: datetime | date) -> datetime | date:
    """DTSTART as the first occurrence (aware: the same instant, written in its zone)."""
    if isinstance(start, datetime) and start.tzinfo is not None:
        return start.astimezone(UTC).astimezone(start.tzinfo)
    return start


def _after_until(value: datetime | date, until: date | datetime, start: datetime | date) -> bool:
    """Whether an occurrence (of start's kind) lies after UNTIL (RFC 5545 3.3.10, inclusive)."""
    if not isinstance(until, datetime):
        return _local_day(value) > until
    if not isinstance(value, datetime):
        return value > until.date()
    if value.tzinfo is None:
        return value > (until.astimezone(UTC).replace(tzinfo=None) if until.tzinfo else until)
    if until.tzinfo is None:
        return value > _localize(until, value.tzinfo)
    return value > until


def _overlaps(value: datetime | date, duration: timedelta, low: datetime, high: datetime) -> bool:
    begin = _as_utc_wall(value)
    if duration <= timedelta(0):
        return low <= begin < high
    return begin < high and begin + duration > low


def _exclusion(exdates: Sequence[datetime | date], start: datetime | date) -> Callable[[datetime | date], bool]:
    """A test for cancelled occurrences: same instant, or (a date EXDATE of a timed series)
    the same local date."""
    keys: set[str] = set()
    days: set[date] = set()
    for value in exdates:
        if isinstance(start, datetime) and not isinstance(value, datetime):
            days.add(value)
        else:
            keys.add(instant_text(_as_kind(value, start)))

    def excluded(value: datetime | date) -> bool:
        return instant_text(value) in keys or (bool(days) and _local_day(value) in days)

    return excluded


# --- kinds of values ----------------------------------------------------------------------
def _localize(wall: datetime, tz: tzinfo) -> datetime:
    """A local wall time in ``tz``: a nonexistent time takes the offset before the gap, an
    ambiguous one the first instant (RFC 5545 3.3.5; PEP 495 fold=0), written normalised."""
    return wall.replace(tzinfo=tz, fold=0).astimezone(UTC).astimezone(tz)


def _wall(value: datetime | date) -> datetime:
    """The naive wall-clock time of a value (dates at midnight)."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=None)
    return datetime.combine(value, time())


def _from_wall(wall: datetime, like: datetime | date) -> datetime | date:
    """A wall time in ``like``'s kind."""
    if not isinstance(like, datetime):
        return wall.date()
    if like.tzinfo is None:
        return wall
    return _localize(wall, like.tzinfo)


def _as_kind(value: datetime | date, like: datetime | date) -> datetime | date:
    """``value`` in ``like``'s kind: aware values converted to like's zone, naive values
    localised there, dates at like's time of day; against dates or floating times, aware
    values are read in UTC (the module's convention)."""
    if not isinstance(like, datetime):
        if isinstance(value, datetime):
            return (value.astimezone(UTC) if value.tzinfo else value).date()
        return value
    if not isinstance(value, datetime):
        value = datetime.combine(value, like.time().replace(tzinfo=None))
    if like.tzinfo is None:
        return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value
    if value.tzinfo is None:
        return _localize(value, like.tzinfo)
    return value.astimezone(like.tzinfo)


def _local_day(value: datetime | date) -> date:
    return value.date() if isinstance(value, datetime) else value


def _as_utc_wall(value: datetime | date) -> datetime:
    """An aware UTC datetime to compare with windows: aware values as instants, dates and
    floating times as if they were UTC wall time."""
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return datetime.combine(value, time(), UTC)


def _as_utc(bound: datetime) -> datetime:
    """A window bound as aware UTC (naive bounds are read as UTC)."""
    return bound.astimezone(UTC) if bound.tzinfo is not None else bound.replace(tzinfo=UTC)


def _wall_at(instant: datetime, start: datetime | date) -> datetime:
    """The naive wall time of an instant in start's zone (UTC wall for dates / floating)."""
    if isinstance(start, datetime) and start.tzinfo is not None:
        return instant.astimezone(start.tzinfo).replace(tzinfo=None)
    return instant.astimezone(UTC).replace(tzinfo=None)


def _shift(instant: datetime, delta: timedelta) -> datetime:
    """``instant + delta`` kept inside [_EARLIEST, _LATEST]."""
    try:
        moved = instant + delta
    except OverflowError:
        return _LATEST if delta > timedelta(0) else _EARLIEST
    return min(max(moved, _EARLIEST), _LATEST)


# --- recurrence ids -----------------------------------------------------------------------
def recurrence_id_text(value: datetime | date) -> str:
    """``YYYYMMDD`` (date), ``YYYYMMDDTHHMMSSZ`` (aware, in UTC) or ``YYYYMMDDTHHMMSS``
    (floating): RFC 5545 3.3.4 / 3.3.5 forms, used in ids of expanded copies."""
    return instant_text(value)


def parse_recurrence_id_text(text: str, like: datetime | date) -> datetime | date:
    """Inverse of :func:`recurrence_id_text`; a UTC result is converted to ``like``'s zone
    when ``like`` is aware. Raises :class:`ValueError` for other text."""
    if not isinstance(text, str):
        raise ValueError("recurrence id is not text")
    value = _parse_date_or_datetime(text)
    if isinstance(value, datetime) and value.tzinfo is not None and isinstance(like, datetime) and like.tzinfo:
        return value.astimezone(like.tzinfo)
    return value


# --- whole series -------------------------------------------------------------------------
def crossing_boundary_reason(series: Event) -> str | None:
    """Why Graph would refuse an override with 400 ``ErrorOccurrenceCrossingBoundary``, or None.

    An override is refused when its new start (local date in the series' zone) is on or
    before the date of the previous occurrence, or on or after the date of the next one.
    Neighbours are the occurrences of the series (RRULE, RDATEs, minus EXDATEs, found with
    :func:`expand`); an overridden neighbour counts at its own new date.
    """
    if series.recurrence is None or not series.overrides:
        return None
    rids = [_as_kind(o.recurrence_id, series.start) for o in series.overrides]
    moved = {
        instant_text(rid): _series_day(o.event.start, series.start)
        for rid, o in zip(rids, series.overrides, strict=True)
    }
    search = _NeighbourSearch(series, [_as_utc_wall(rid) for rid in rids])
    for rid in rids:
        previous, following = search.neighbours(_as_utc_wall(rid))
        new_day = moved[instant_text(rid)]
        if (previous is not None and new_day <= moved.get(instant_text(previous), _local_day(previous))) or (
            following is not None and new_day >= moved.get(instant_text(following), _local_day(following))
        ):
            return (
                f"the occurrence {recurrence_id_text(rid)} is moved onto or past the date of a neighbouring "
                "occurrence, which Microsoft 365 refuses (ErrorOccurrenceCrossingBoundary)"
            )
    return None


def _series_day(value: datetime | date, series_start: datetime | date) -> date:
    """The local date of a start in the series' zone."""
    aware = isinstance(value, datetime) and value.tzinfo is not None
    if aware and isinstance(value, datetime) and isinstance(series_start, datetime) and series_start.tzinfo:
        return value.astimezone(series_start.tzinfo).date()
    return _local_day(value)


_Neighbours = tuple[datetime | date | None, datetime | date | None]
_Found = tuple[datetime | date | None, datetime | date | None, bool]


class _NeighbourSearch:
    """Occurrences right before and after given instants: one expansion around all of them
    (two FREQ periods beyond each end), and wider windows for an instant whose neighbours
    that misses (cancelled occurrences in a row)."""

    def __init__(self, series: Event, centres: Sequence[datetime]) -> None:
        assert series.recurrence is not None
        self.series = series
        self.recurrence = series.recurrence
        self.first = _as_utc_wall(series.start)
        rule = _parse_rule(series.recurrence.rule)
        self.span = _PERIOD[rule.freq] * 2 * rule.interval + timedelta(days=2)
        self.shared = self._window(_shift(min(centres), -self.span), _shift(max(centres), self.span))

    def _window(self, low: datetime, high: datetime) -> tuple[datetime, datetime, list[datetime | date]] | None:
        try:
            found = expand(
                self.recurrence.rule, self.series.start, window_start=low, window_end=high,
                rdates=self.recurrence.rdates, exdates=self.series.exdates, limit=_NEIGHBOUR_LIMIT,
            )
        except ValueError:  # too many occurrences: keep what narrower windows found
            return None
        return low, high, found

    def _within(self, window: tuple[datetime, datetime, list[datetime | date]], centre: datetime) -> _Found:
        """The neighbours in ``window`` and whether the window was wide enough to be sure."""
        low, high, found = window
        before = [value for value in found if _as_utc_wall(value) < centre]
        after = [value for value in found if _as_utc_wall(value) > centre]
        previous = before[-1] if before else None
        following = after[0] if after else None
        sure = (previous is not None or low <= self.first) and (following is not None or high >= _LATEST)
        return previous, following, sure

    def neighbours(self, centre: datetime) -> _Neighbours:
        previous, following, sure = self._within(self.shared, centre) if self.shared else (None, None, False)
        span = self.span
        for _ in range(_NEIGHBOUR_WIDENINGS):
            if sure:
                break
            span *= 4
            window = self._window(_shift(centre, -span), _shift(centre, span))
            if window is None:
                break
            previous, following, sure = self._within(window, centre)
        return previous, following


def graph_unsupported_reason(series: Event) -> str | None:
    """Why Graph cannot hold this series as a series (docs/RECURRENCE.md "the fallback"), or None.

    In order: the rule (:func:`rule_unsupported_reason`, RDATEs included), an override
    crossing a neighbour (:func:`crossing_boundary_reason`), a zone without a Windows id
    keeping the same UTC offsets over the series' first two years. ``None`` for non-series.
    """
    if series.recurrence is None:
        return None
    return (
        rule_unsupported_reason(series.recurrence.rule, series.start, series.recurrence.rdates)
        or crossing_boundary_reason(series)
        or _zone_reason(series)
    )


def _zone_reason(series: Event) -> str | None:
    """A reason when ``series.timezone`` has no Windows id with the same offsets."""
    name = series.timezone
    if not name:
        return None
    try:
        mapped = timezones.windows_to_iana(timezones.iana_to_windows(name))
        own = timezones.zone(name)
    except UnknownTimeZone:
        return f"time zone {name[:80]!r} has no Windows time zone, which Microsoft 365 needs for a series"
    first = _as_utc_wall(series.start)
    last = _shift(first, timedelta(days=731))
    if timezones.equivalent_zone(own, first, last, candidates=[mapped]) is None:
        return (
            f"time zone {name[:80]!r} has no Windows time zone with the same UTC offsets over the series' "
            "first two years"
        )
    return None


__all__ = [
    "GRAPH_DAYS",
    "PART_ORDER",
    "WEEKDAYS",
    "canonical_rrule",
    "crossing_boundary_reason",
    "expand",
    "graph_from_rrule",
    "graph_unsupported_reason",
    "parse_recurrence_id_text",
    "recurrence_id_text",
    "rrule_from_graph",
    "rule_unsupported_reason",
]

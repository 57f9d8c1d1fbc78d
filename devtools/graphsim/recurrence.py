"""Occurrence dates of a Graph ``patternedRecurrence``, written from Graph's own definitions.

This module deliberately knows nothing about RFC 5545 (no RRULE, no ``dateutil.rrule``) and
imports nothing from ``sync_core``: it is an independent check of the product's converters.
It works on local *dates* in the series' time zone; wall-clock times and UTC are the caller's
business (``series.py``).

Semantics (Graph recurrencePattern / recurrenceRange resources; Exchange for the month clamp):

* ``daily``: every ``interval`` days from the first date.
* ``weekly``: weeks start on ``firstDayOfWeek`` (default ``sunday``); every ``interval``-th week,
  counted from the week that contains the first date, on each day of ``daysOfWeek``.
* ``absoluteMonthly``: day ``dayOfMonth`` of every ``interval``-th month counted from the first
  date's month. "If for a particular month this value is larger than the number of days in the
  month, the last day of the month is assumed" (Exchange): 31 means the 30th in April, the
  28th/29th in February.
* ``relativeMonthly``: the ``index``-th (``first``..``fourth``, or ``last``) day of the month among
  the days whose weekday is in ``daysOfWeek`` ("if daysOfWeek specifies more than one day, the
  event falls on the first day that satisfies the pattern"), every ``interval``-th month.
* ``absoluteYearly`` / ``relativeYearly``: the same within ``month``, every ``interval``-th year
  counted from the first date's year.
* Only dates on or after the first date count. ``endDate`` ranges include occurrences on the
  end date; ``numbered`` ranges count occurrences from the first one (cancelled ones included:
  the count is a property of the pattern, not of what is left of it); ``noEnd`` is unbounded
  (iterate lazily and stop yourself).
"""

from __future__ import annotations

import calendar
from collections.abc import Iterator, Mapping
from datetime import date, timedelta
from itertools import islice
from typing import Any

#: Graph's dayOfWeek enum in its declared order (sunday = 0).
DAY_NAMES = ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday")
#: Graph's weekIndex enum -> position among the matching days of the month.
WEEK_INDEX = {"first": 0, "second": 1, "third": 2, "fourth": 3, "last": -1}
PATTERN_TYPES = ("daily", "weekly", "absoluteMonthly", "relativeMonthly", "absoluteYearly", "relativeYearly")
RANGE_TYPES = ("endDate", "noEnd", "numbered")


def day_index(d: date) -> int:
    """Graph's dayOfWeek number of a date (sunday = 0 .. saturday = 6)."""
    return (d.weekday() + 1) % 7


def last_day_of_month(year: int, month: int) -> int:
    return calendar.monthrange(year, month)[1]


def clamped_date(year: int, month: int, day: int) -> date:
    """``day`` of the month, or the month's last day when the month is shorter (Exchange)."""
    return date(year, month, min(day, last_day_of_month(year, month)))


def relative_date(year: int, month: int, days_of_week: frozenset[int], index: str) -> date | None:
    """The ``index``-th day of the month whose weekday is in ``days_of_week`` (``last``: the last)."""
    matching = [
        date(year, month, d)
        for d in range(1, last_day_of_month(year, month) + 1)
        if day_index(date(year, month, d)) in days_of_week
    ]
    pos = WEEK_INDEX[index]
    if not matching or pos >= len(matching):
        return None
    return matching[pos]


def _add_months(year: int, month: int, count: int) -> tuple[int, int]:
    total = year * 12 + (month - 1) + count
    return total // 12, total % 12 + 1


def pattern_dates(pattern: Mapping[str, Any], first: date) -> Iterator[date]:
    """Every date the pattern produces on or after ``first``, ascending, without range limits.

    ``pattern`` is a normalised recurrencePattern (``events._recurrence``): ``interval`` >= 1,
    ``daysOfWeek`` names, ``firstDayOfWeek``, ``dayOfMonth``, ``month``, ``index``."""
    ptype = pattern["type"]
    if ptype not in PATTERN_TYPES:
        raise ValueError(f"unknown recurrence pattern type {ptype!r}")
    interval = int(pattern.get("interval") or 1)
    days = frozenset(DAY_NAMES.index(name) for name in pattern.get("daysOfWeek") or ())
    index = pattern.get("index") or "first"
    try:
        if ptype == "daily":
            step = timedelta(days=interval)
            d = first
            while True:
                yield d
                d += step
        elif ptype == "weekly":
            fdow = DAY_NAMES.index(pattern.get("firstDayOfWeek") or "sunday")
            week_start = first - timedelta(days=(day_index(first) - fdow) % 7)
            offsets = sorted((dow - fdow) % 7 for dow in days)
            while True:
                for off in offsets:
                    d = week_start + timedelta(days=off)
                    if d >= first:
                        yield d
                week_start += timedelta(weeks=interval)
        elif ptype in ("absoluteMonthly", "relativeMonthly"):
            year, month = first.year, first.month
            while True:
                if ptype == "absoluteMonthly":
                    cand: date | None = clamped_date(year, month, int(pattern["dayOfMonth"]))
                else:
                    cand = relative_date(year, month, days, index)
                if cand is not None and cand >= first:
                    yield cand
                year, month = _add_months(year, month, interval)
        else:  # absoluteYearly / relativeYearly
            year, month = first.year, int(pattern["month"])
            while True:
                if ptype == "absoluteYearly":
                    cand = clamped_date(year, month, int(pattern["dayOfMonth"]))
                else:
                    cand = relative_date(year, month, days, index)
                if cand is not None and cand >= first:
                    yield cand
                year += interval
    except (OverflowError, ValueError):  # ran past date.max (year 9999): the end of time
        return


def series_dates(recurrence: Mapping[str, Any], first: date | None = None) -> Iterator[date]:
    """The occurrence dates of a series: the pattern from ``first`` (default: ``range.startDate``),
    limited by the range (``endDate`` inclusive, ``numbered`` count, ``noEnd`` unbounded)."""
    rng = recurrence["range"]
    start = first if first is not None else date.fromisoformat(rng["startDate"])
    dates = pattern_dates(recurrence["pattern"], start)
    if rng["type"] == "endDate":
        end = date.fromisoformat(rng["endDate"])
        for d in dates:
            if d > end:
                return
            yield d
    elif rng["type"] == "numbered":
        yield from islice(dates, max(0, int(rng["numberOfOccurrences"])))
    else:
        yield from dates


def first_date(recurrence: Mapping[str, Any], on_or_after: date) -> date | None:
    """The first occurrence date on or after ``on_or_after`` (None: the range ends before it)."""
    return next(series_dates(recurrence, on_or_after), None)

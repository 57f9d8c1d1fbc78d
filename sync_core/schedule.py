"""The timer's NCRONTAB schedule (Azure Functions: ``{second} {minute} {hour} {day} {month}
{day-of-week}``), enough to tell an admin when a user's next timer sync is due.

Supports what the Functions docs list: ``*``, values, ranges ``a-b``, steps ``*/n`` and
``a-b/n``, lists ``a,b``, month names ``JAN``-``DEC`` and day names ``SUN``-``SAT``
(0 and 7 are Sunday). Times are UTC (``WEBSITE_TIME_ZONE`` is not supported on Linux plans).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

_MONTHS = {n: i for i, n in enumerate(("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT",
                                         "NOV", "DEC"), 1)}
_DAYS = {n: i for i, n in enumerate(("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"))}
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("second", 0, 59, {}), ("minute", 0, 59, {}), ("hour", 0, 23, {}), ("day", 1, 31, {}),
    ("month", 1, 12, _MONTHS), ("day-of-week", 0, 7, _DAYS))
#: Never search further ahead than this (a schedule that fires less often is "not soon").
HORIZON = timedelta(days=400)


class BadSchedule(ValueError):
    """Not a six-field NCRONTAB expression."""


def _value(text: str, names: dict[str, int], name: str) -> int:
    key = text.upper()
    if key in names:
        return names[key]
    if not text.isdigit():
        raise BadSchedule(f"{name}: {text!r} is not a number")
    return int(text)


def _field(text: str, name: str, low: int, high: int, names: dict[str, int]) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        base, _, step_text = part.partition("/")
        step = _value(step_text, {}, name) if step_text else 1
        if step < 1:
            raise BadSchedule(f"{name}: step must be at least 1")
        if base == "*":
            start, stop = low, high
        elif "-" in base:
            a, _, b = base.partition("-")
            start, stop = _value(a, names, name), _value(b, names, name)
        else:
            start = _value(base, names, name)
            stop = high if step_text else start
        if not low <= start <= stop <= high:
            raise BadSchedule(f"{name}: {part!r} is outside {low}-{high}")
        values.update(range(start, stop + 1, step))
    return frozenset(values)


@dataclass(frozen=True)
class Schedule:
    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    any_day: bool
    any_weekday: bool

    @classmethod
    def parse(cls, expression: str) -> Schedule:
        parts = expression.split()
        if len(parts) != 6:
            raise BadSchedule(f"expected 6 fields (second minute hour day month day-of-week), got {len(parts)}")
        sets = [_field(text, name, low, high, names) for text, (name, low, high, names) in zip(parts, _FIELDS,
                                                                                              strict=True)]
        weekdays = frozenset(7 if d == 0 else d for d in sets[5]) | frozenset(0 if d == 7 else d for d in sets[5])
        return cls(sets[0], sets[1], sets[2], sets[3], sets[4], weekdays,
                   parts[3] == "*", parts[5] == "*")

    def _day_matches(self, moment: datetime) -> bool:
        if moment.month not in self.months:
            return False
        weekday = (moment.weekday() + 1) % 7  # Python: Monday 0 -> cron: Sunday 0
        day_ok, weekday_ok = moment.day in self.days, weekday in self.weekdays
        if self.any_day or self.any_weekday:  # cron: restricted fields must both match
            return day_ok and weekday_ok
        return day_ok or weekday_ok  # both restricted: either matches (classic cron)

    def next_after(self, moment: datetime) -> datetime | None:
        """The first firing strictly after ``moment`` (same tzinfo), or None within a year."""
        t = moment.replace(microsecond=0) + timedelta(seconds=1)
        limit = moment + HORIZON
        while t <= limit:
            if not self._day_matches(t):
                t = (t + timedelta(days=1)).replace(hour=0, minute=0, second=0)
                continue
            if t.hour not in self.hours:
                t = (t + timedelta(hours=1)).replace(minute=0, second=0)
                continue
            if t.minute not in self.minutes:
                t = (t + timedelta(minutes=1)).replace(second=0)
                continue
            later = [s for s in sorted(self.seconds) if s >= t.second]
            if later:
                return t.replace(second=later[0])
            t = (t + timedelta(minutes=1)).replace(second=0)
        return None


def next_run(expression: str | None, after: datetime) -> datetime | None:
    """When the timer next fires after ``after`` (None: no schedule set, or not within a year)."""
    if not expression or expression.startswith("%"):
        return None
    return Schedule.parse(expression).next_after(after)

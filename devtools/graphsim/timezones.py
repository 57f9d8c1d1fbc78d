"""Time zones and date/time formats as Microsoft Graph (Outlook calendar) handles them.

Graph facts implemented here (sources in README.md):

* ``dateTimeTimeZone.timeZone`` accepts "any of the time zones supported by Windows, as well as
  the following time zone names" -- a fixed list of IANA names (dateTimeTimeZone resource page).
  Anything else is refused with ``400 TimeZoneNotSupportedException`` ("A valid TimeZone value
  must be specified. The following TimeZone value is not supported: '...'").
* ``originalStartTimeZone`` / ``originalEndTimeZone`` hold a Windows id (or ``UTC``), so an IANA
  name given on write is reported as its Windows id (CLDR windowsZones, territory 001).
* Responses carry times in UTC unless ``Prefer: outlook.timezone="..."`` names another zone.
  ``dateTime`` strings have seven fractional digits: ``2026-11-24T09:00:00.0000000``;
  timestamps (``createdDateTime``) end in ``Z``: ``2026-11-24T09:00:00.1234567Z``.
* calendarView ``startDateTime``/``endDateTime`` are "interpreted using the timezone offset
  specified in the value ... If no timezone offset is included in the value, it is
  interpreted as UTC" (calendar-list-calendarview page).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from icalendar.timezone.windows_to_olson import WINDOWS_TO_OLSON

#: The IANA names the dateTimeTimeZone page lists as accepted besides Windows ids.
#: (The page writes "Europe/Kyiv (Kiev)", "Asia/Toshkent (Tashkent)", "Asia/Astana (Almaty)",
#: "Asia/Yangon (Rangoon)": both spellings that exist in tzdata are accepted.)
DOCUMENTED_IANA_ZONES: frozenset[str] = frozenset(
    """
    Etc/GMT+12 Etc/GMT+11 Pacific/Honolulu America/Anchorage America/Santa_Isabel
    America/Los_Angeles America/Phoenix America/Chihuahua America/Denver America/Guatemala
    America/Chicago America/Mexico_City America/Regina America/Bogota America/New_York
    America/Indiana/Indianapolis America/Caracas America/Asuncion America/Halifax America/Cuiaba
    America/La_Paz America/Santiago America/St_Johns America/Sao_Paulo
    America/Argentina/Buenos_Aires America/Cayenne America/Godthab America/Montevideo
    America/Bahia Etc/GMT+2 Atlantic/Azores Atlantic/Cape_Verde Africa/Casablanca Etc/GMT
    Europe/London Atlantic/Reykjavik Europe/Berlin Europe/Budapest Europe/Paris Europe/Warsaw
    Africa/Lagos Africa/Windhoek Europe/Bucharest Asia/Beirut Africa/Cairo Asia/Damascus
    Africa/Johannesburg Europe/Kyiv Europe/Kiev Europe/Istanbul Asia/Jerusalem Asia/Amman
    Asia/Baghdad Europe/Kaliningrad Asia/Riyadh Africa/Nairobi Asia/Tehran Asia/Dubai Asia/Baku
    Europe/Moscow Indian/Mauritius Asia/Tbilisi Asia/Yerevan Asia/Kabul Asia/Karachi
    Asia/Tashkent Asia/Kolkata Asia/Colombo Asia/Kathmandu Asia/Almaty Asia/Astana Asia/Dhaka
    Asia/Yekaterinburg Asia/Yangon Asia/Rangoon Asia/Bangkok Asia/Novosibirsk Asia/Shanghai
    Asia/Krasnoyarsk Asia/Singapore Australia/Perth Asia/Taipei Asia/Ulaanbaatar Asia/Irkutsk
    Asia/Tokyo Asia/Seoul Australia/Adelaide Australia/Darwin Australia/Brisbane Australia/Sydney
    Pacific/Port_Moresby Australia/Hobart Asia/Yakutsk Pacific/Guadalcanal Asia/Vladivostok
    Pacific/Auckland Etc/GMT-12 Pacific/Fiji Asia/Magadan Pacific/Tongatapu Pacific/Apia
    Pacific/Kiritimati
    """.split()  # noqa: SIM905
)

# Documented IANA names whose CLDR (territory 001) Windows zone maps to a different IANA
# spelling, so the inverted CLDR table does not find them.
_IANA_TO_WINDOWS_EXTRA = {
    "America/Santa_Isabel": "Pacific Standard Time (Mexico)",
    "America/Chihuahua": "Mountain Standard Time (Mexico)",
    "America/Indiana/Indianapolis": "US Eastern Standard Time",
    "America/Argentina/Buenos_Aires": "Argentina Standard Time",
    "Etc/GMT": "UTC",
    "Europe/Kyiv": "FLE Standard Time",
    "Asia/Kolkata": "India Standard Time",
    "Asia/Kathmandu": "Nepal Standard Time",
    "Asia/Almaty": "Central Asia Standard Time",
    "Asia/Astana": "Central Asia Standard Time",
    "Asia/Yangon": "Myanmar Standard Time",
}
# IANA names on the documented list that tzdata does not ship under that name.
_IANA_ALIASES = {"Asia/Astana": "Asia/Almaty"}

_WINDOWS_IDS_LOWER = {name.lower(): name for name in WINDOWS_TO_OLSON}
_IANA_TO_WINDOWS: dict[str, str] = {}
for _win, _iana in WINDOWS_TO_OLSON.items():
    _IANA_TO_WINDOWS.setdefault(_iana, _win)
_IANA_TO_WINDOWS.update(_IANA_TO_WINDOWS_EXTRA)


class UnsupportedTimeZone(ValueError):
    """The name is neither a Windows time zone id nor one of the documented IANA names."""


@lru_cache(maxsize=512)
def resolve_zone(name: str) -> tzinfo:
    """Return the tzinfo for a Graph ``timeZone`` value, or raise UnsupportedTimeZone.

    Windows ids match case-insensitively (Exchange does); IANA names must be spelled exactly.
    """
    if name is None or not isinstance(name, str) or not name.strip():
        raise UnsupportedTimeZone(str(name))
    win = _WINDOWS_IDS_LOWER.get(name.strip().lower())
    iana: str | None
    if win is not None:
        iana = WINDOWS_TO_OLSON[win]
    elif name in DOCUMENTED_IANA_ZONES:
        iana = _IANA_ALIASES.get(name, name)
    else:
        raise UnsupportedTimeZone(name)
    if iana in ("Etc/UTC", "UTC"):
        return UTC
    try:
        return ZoneInfo(iana)
    except ZoneInfoNotFoundError as exc:  # pragma: no cover - depends on the installed tzdata
        raise UnsupportedTimeZone(name) from exc


def windows_id(name: str) -> str:
    """The Windows id Graph reports in ``originalStartTimeZone`` for an accepted zone name."""
    win = _WINDOWS_IDS_LOWER.get(name.strip().lower())
    if win is not None:
        return win
    return _IANA_TO_WINDOWS.get(name, "tzone://Microsoft/Custom")


_GRAPH_DT = re.compile(
    r"^(?P<date>\d{4}-\d{2}-\d{2})"
    r"(?:T(?P<h>\d{2}):(?P<m>\d{2})(?::(?P<s>\d{2})(?:\.(?P<f>\d{1,7}))?)?"
    r"(?P<off>Z|[+-]\d{2}:?\d{2})?)?$"
)


def parse_graph_datetime(value: object, zone: tzinfo) -> datetime:
    """Parse ``dateTimeTimeZone.dateTime`` into a naive local time in ``zone``.

    Graph accepts ``2026-11-24``, ``2026-11-24T09:00``, ``2026-11-24T09:00:00.0000000``; a value
    carrying an offset or ``Z`` names an instant, which is converted into ``zone``.
    """
    if not isinstance(value, str):
        raise ValueError(f"dateTime must be a string, not {type(value).__name__}")
    m = _GRAPH_DT.match(value.strip())
    if not m:
        raise ValueError(f"'{value}' is not a valid dateTime")
    y, mo, d = (int(p) for p in m.group("date").split("-"))
    frac = (m.group("f") or "0").ljust(7, "0")
    local = datetime(
        y,
        mo,
        d,
        int(m.group("h") or 0),
        int(m.group("m") or 0),
        int(m.group("s") or 0),
        int(frac[:6]),
    )
    off = m.group("off")
    if off:
        instant = local.replace(tzinfo=_parse_offset(off))
        return instant.astimezone(zone).replace(tzinfo=None)
    return local


def _parse_offset(off: str) -> tzinfo:
    if off == "Z":
        return UTC
    sign = -1 if off[0] == "-" else 1
    digits = off[1:].replace(":", "")
    return timezone(sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:])))


def parse_query_datetime(value: str) -> datetime:
    """Parse a calendarView/delta ``startDateTime``: an ISO 8601 instant, UTC when no offset."""
    m = _GRAPH_DT.match(value.strip())
    if not m or m.group("h") is None:
        raise ValueError(value)
    local = parse_graph_datetime(value.strip(), UTC)
    return local.replace(tzinfo=UTC)


def to_utc(local: datetime, zone: tzinfo) -> datetime:
    """Aware UTC instant of a naive local time in ``zone`` (fold=0 for repeated wall times)."""
    return local.replace(tzinfo=zone).astimezone(UTC)


def from_utc(instant: datetime, zone: tzinfo) -> datetime:
    """Naive local wall time in ``zone`` of an aware instant."""
    return instant.astimezone(zone).replace(tzinfo=None)


def format_graph_datetime(local: datetime) -> str:
    """``2026-11-24T09:00:00.0000000``: the dateTimeTimeZone.dateTime format Graph emits."""
    return local.strftime("%Y-%m-%dT%H:%M:%S.") + f"{local.microsecond:06d}0"


def format_timestamp(instant: datetime) -> str:
    """``2026-11-24T09:00:00.1234567Z``: Edm.DateTimeOffset as Outlook emits it (always UTC)."""
    return format_graph_datetime(instant.astimezone(UTC).replace(tzinfo=None)) + "Z"


def is_midnight(local: datetime) -> bool:
    return (local.hour, local.minute, local.second, local.microsecond) == (0, 0, 0, 0)

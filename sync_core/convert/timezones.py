"""Time-zone names: Windows ids (Microsoft Graph) <-> IANA names (iCalendar, the model).

Graph names zones by Windows id (``originalStartTimeZone``, ``dateTimeTimeZone.timeZone``),
sometimes by an IANA name (when ``Prefer: outlook.timezone`` used one) and accepts on writes
Windows ids plus only a subset of IANA names. The model and every TZID we write use IANA
names. The mapping comes from the CLDR ``windowsZones`` table that icalendar ships
(``icalendar.timezone.windows_to_olson.WINDOWS_TO_OLSON``: the "001" territory entry, i.e. the
canonical IANA zone of each Windows id). There is deliberately no hand-written table here.

For an IANA zone that is not the canonical zone of any Windows id (``Europe/Oslo``,
``Asia/Kolkata``), :func:`iana_to_windows` picks the Windows id whose canonical zone keeps the
same UTC offsets (compared instant by instant, not by name) from the earliest year up to
:data:`CHECK_LAST`; ties go to icalendar's equivalent ids
(``icalendar.timezone.tzid.get_equivalent_tzids``), then to zones of the same region.

Names are matched case-insensitively; results use the spelling of the tables.
"""

from __future__ import annotations

import functools
import zoneinfo
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta, tzinfo

from icalendar.timezone.tzid import get_equivalent_tzids
from icalendar.timezone.windows_to_olson import WINDOWS_TO_OLSON

from sync_core.errors import UnknownTimeZone

#: The name the model uses for UTC (RFC 5545 "Z" times, Graph "UTC").
UTC_NAME = "UTC"

#: End of the window over which zones are compared for :func:`iana_to_windows` (zoneinfo
#: data is explicit up to 2037; later years repeat the last rules).
CHECK_LAST = datetime(2038, 1, 1, tzinfo=UTC)

# Names meaning a fixed zero offset. Graph also uses "tzone://Microsoft/Utc".
_UTC_ALIASES = frozenset(
    name.casefold()
    for name in (
        "UTC", "Etc/UTC", "Etc/UCT", "UCT", "Etc/Universal", "Universal", "Etc/Zulu", "Zulu",
        "GMT", "Etc/GMT", "Etc/GMT0", "Etc/GMT+0", "Etc/GMT-0", "GMT0", "GMT+0", "GMT-0",
        "Etc/Greenwich", "Greenwich", "Z", "tzone://Microsoft/Utc",
    )
)
# Keys zoneinfo may find on disk that are not zones a calendar can name.
_NOT_ZONES = frozenset({"localtime", "factory", "posixrules"})

_AGREEMENT_STARTS = (1970, 1990, 2000, 2010, 2015, 2020, 2023, 2025)
_COARSE_STEP = timedelta(days=7)
_REFINE_STEPS = (timedelta(days=1), timedelta(hours=1), timedelta(minutes=15))
_MAX_NAME = 80


def _shown(name: str) -> str:
    """A zone name for an error message, bounded in length (names are ids, not content)."""
    return repr(name[:_MAX_NAME])


@functools.cache
def _windows_ids() -> dict[str, str]:
    """casefold(Windows id) -> Windows id."""
    return {key.casefold(): key for key in WINDOWS_TO_OLSON}


@functools.cache
def _iana_names() -> dict[str, str]:
    """casefold(IANA name) -> IANA name, for every zone zoneinfo can load."""
    return {
        key.casefold(): key
        for key in zoneinfo.available_timezones()
        if key.casefold() not in _NOT_ZONES
    }


@functools.cache
def _primary_to_windows() -> dict[str, str]:
    """casefold(canonical IANA zone of a Windows id) -> Windows id (CLDR "001" entries)."""
    result: dict[str, str] = {}
    for windows_id, iana in sorted(WINDOWS_TO_OLSON.items()):
        if windows_id == "UTC":
            continue
        result.setdefault(iana.casefold(), windows_id)
    return result


def is_utc_name(name: str) -> bool:
    """True for the names of the zero-offset zone (``UTC``, ``Etc/UTC``, ``GMT``, ...)."""
    return name.strip().casefold() in _UTC_ALIASES


def is_windows_id(name: str) -> bool:
    """True when ``name`` is a Windows time-zone id of the CLDR table (``UTC`` excluded)."""
    key = name.strip().casefold()
    return key in _windows_ids() and key != "utc"


def iana_name(name: str) -> str | None:
    """The IANA spelling of ``name`` if zoneinfo knows it, else ``None`` (no Windows lookup)."""
    return _iana_names().get(name.strip().casefold())


def windows_to_iana(name: str) -> str:
    """IANA name for a Graph time-zone name.

    Graph ``dateTimeTimeZone.timeZone`` and ``originalStartTimeZone`` hold a Windows id
    (``"W. Europe Standard Time"``), ``"UTC"``, an IANA name (when ``Prefer:
    outlook.timezone`` named one) or ``"tzone://Microsoft/Custom"`` (a custom zone Graph does
    not describe). Windows ids map through CLDR ``windowsZones`` (the canonical zone of the
    id); IANA names are returned in zoneinfo's spelling; every UTC alias gives ``"UTC"``.

    Raises :class:`UnknownTimeZone` for custom or unknown names.
    """
    if not isinstance(name, str) or not name.strip():
        raise UnknownTimeZone("empty time zone name")
    if is_utc_name(name):
        return UTC_NAME
    key = name.strip().casefold()
    windows_id = _windows_ids().get(key)
    if windows_id is not None:
        return WINDOWS_TO_OLSON[windows_id]
    iana = _iana_names().get(key)
    if iana is not None:
        return iana
    raise UnknownTimeZone(f"time zone {_shown(name)} maps to no IANA zone")


def zone(name: str) -> zoneinfo.ZoneInfo:
    """The :class:`~zoneinfo.ZoneInfo` for a Windows id, IANA name or UTC alias.

    Raises :class:`UnknownTimeZone` as :func:`windows_to_iana` does.
    """
    iana = windows_to_iana(name)
    try:
        return zoneinfo.ZoneInfo(iana)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:  # tzdata missing the key
        raise UnknownTimeZone(f"time zone {_shown(name)} cannot be loaded") from exc


@functools.cache
def iana_to_windows(name: str) -> str:
    """Windows id to send to Graph for an IANA zone name.

    Graph writes accept Windows ids and only a subset of IANA names, so every write converts.
    Order: UTC aliases -> ``"UTC"``; a Windows id is returned as it is; the zone that CLDR
    lists as canonical ("001") for a Windows id -> that id; otherwise the Windows id whose
    canonical zone has had the same UTC offsets the longest, up to :data:`CHECK_LAST`
    (ties: icalendar's equivalent ids first, then the same region). A zone that only
    recently started to agree with a Windows zone maps to it; callers writing events in
    the past should check the offsets at the event (``graph_json`` does).

    Raises :class:`UnknownTimeZone` when the name is no known zone or no Windows id matches.
    """
    if not isinstance(name, str) or not name.strip():
        raise UnknownTimeZone("empty time zone name")
    if is_utc_name(name):
        return "UTC"
    key = name.strip().casefold()
    windows_id = _windows_ids().get(key)
    if windows_id is not None:
        return windows_id
    primaries = _primary_to_windows()
    if key in primaries:
        return primaries[key]
    iana = _iana_names().get(key)
    if iana is None:
        raise UnknownTimeZone(f"time zone {_shown(name)} is no IANA zone")
    tz = zoneinfo.ZoneInfo(iana)
    # Candidate order breaks ties: icalendar's equivalent ids first, then zones of the same
    # region (Europe/Oslo -> a European zone), then the rest, each alphabetically.
    region = iana.split("/", 1)[0] + "/"
    equivalent_ids: tuple[str, ...] = get_equivalent_tzids(iana)
    equivalents = [other for other in equivalent_ids[1:] if other.casefold() in primaries]
    taken = {other.casefold() for other in equivalents}
    others = sorted(
        (_canonical_spelling(primary) for primary in primaries if primary not in taken),
        key=lambda candidate: (not candidate.startswith(region), candidate),
    )
    match = _longest_agreement(tz, [*equivalents, *others])
    if match is None:
        raise UnknownTimeZone(f"time zone {_shown(name)} matches no Windows time zone")
    return primaries[match.casefold()]


def _longest_agreement(tz: tzinfo, candidates: Sequence[str]) -> str | None:
    """The candidate agreeing with ``tz`` from the earliest start year up to CHECK_LAST.

    Zones that changed rules recently (America/Chihuahua 2022, Asia/Almaty 2024) agree with
    some canonical zone only from then on; zones that always agreed win over ones that only
    agree lately (America/Toronto -> America/New_York, not America/Indianapolis).
    """
    years = sorted({*_AGREEMENT_STARTS, datetime.now(UTC).year}, reverse=True)
    alive = list(candidates)
    best: str | None = None
    for year in years:
        first = datetime(year, 1, 1, tzinfo=UTC)
        alive = list(_matching(tz, first, CHECK_LAST, alive))
        if not alive:
            break
        best = alive[0]
    return best


def _canonical_spelling(casefolded: str) -> str:
    return _iana_names().get(casefolded, casefolded)


def default_candidates() -> list[str]:
    """UTC, then the canonical IANA zone of every Windows id (sorted by Windows id)."""
    seen = {UTC_NAME.casefold()}
    result = [UTC_NAME]
    for _windows_id, iana in sorted(WINDOWS_TO_OLSON.items()):
        if iana.casefold() not in seen and iana.casefold() in _iana_names():
            seen.add(iana.casefold())
            result.append(_iana_names()[iana.casefold()])
    return result


def equivalent_zone(
    tz: tzinfo,
    first: datetime,
    last: datetime,
    candidates: Sequence[str] | None = None,
    hint: str = "",
) -> str | None:
    """The first candidate IANA zone with the same UTC offset as ``tz`` at every instant.

    Used to name a zone known only by its rules: a custom VTIMEZONE (RFC 5545 3.6.5, e.g.
    Outlook's "Customized Time Zone") or an IANA zone without a Windows id of its own.
    Offsets are compared weekly over ``first``..``last`` (aware datetimes), then, inside each
    week where the offset changes, daily, hourly and every 15 minutes, so transitions on
    different days or hours are told apart. Candidates default to :func:`default_candidates`; candidates whose
    city (last part of the name) occurs in ``hint`` (e.g. the TZID
    ``"(UTC+01:00) Amsterdam, Berlin, ..."``) are preferred. Returns ``None`` when no
    candidate matches.
    """
    names = list(candidates) if candidates is not None else default_candidates()
    if hint:
        folded_hint = hint.casefold()

        def named_in_hint(candidate: str) -> bool:
            city = candidate.rsplit("/", 1)[-1].replace("_", " ").casefold()
            return len(city) > 2 and city in folded_hint

        names.sort(key=lambda candidate: not named_in_hint(candidate))
    return next(iter(_matching(tz, first, last, names)), None)


def _matching(
    tz: tzinfo, first: datetime, last: datetime, names: Iterable[str]
) -> Iterable[str]:
    """Lazily, the names among ``names`` whose zone keeps ``tz``'s offsets over the window."""
    instants = _coarse_instants(first, last)
    try:
        wanted = _offsets(tz, instants)
    except (OverflowError, ValueError):
        return
    for candidate in names:
        try:
            other = zoneinfo.ZoneInfo(candidate)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            continue
        if _coarse_offsets(candidate, first, last) != wanted:
            continue
        if _agree_at_changes(tz, other, instants, wanted):
            yield candidate


def _coarse_instants(first: datetime, last: datetime) -> tuple[datetime, ...]:
    result = []
    at = first.astimezone(UTC)
    end = last.astimezone(UTC)
    while at <= end:
        result.append(at)
        at += _COARSE_STEP
    result.append(end)
    return tuple(result)


def _offsets(tz: tzinfo, instants: Iterable[datetime]) -> tuple[timedelta | None, ...]:
    return tuple(instant.astimezone(tz).utcoffset() for instant in instants)


@functools.lru_cache(maxsize=4096)
def _coarse_offsets(name: str, first: datetime, last: datetime) -> tuple[timedelta | None, ...]:
    return _offsets(zoneinfo.ZoneInfo(name), _coarse_instants(first, last))


def _agree_at_changes(
    tz: tzinfo,
    other: tzinfo,
    instants: Sequence[datetime],
    offsets: Sequence[timedelta | None],
) -> bool:
    """Both zones change offset at the same instants inside each sampled interval."""
    for index in range(len(instants) - 1):
        if offsets[index] != offsets[index + 1] and not _agree_within(
            tz, other, instants[index], instants[index + 1], 0
        ):
            return False
    return True


def _agree_within(tz: tzinfo, other: tzinfo, first: datetime, last: datetime, level: int) -> bool:
    """Compare at finer and finer steps (day, hour, 15 minutes) where an offset changes."""
    if level == len(_REFINE_STEPS):
        return True
    step = _REFINE_STEPS[level]
    at = first
    previous: tuple[timedelta | None, timedelta | None] | None = None
    while True:
        current = (at.astimezone(tz).utcoffset(), at.astimezone(other).utcoffset())
        if current[0] != current[1]:
            return False
        if previous is not None and previous != current and not _agree_within(
            tz, other, at - step, at, level + 1
        ):
            return False
        if at >= last:
            return True
        previous = current
        at = min(at + step, last)


__all__ = [
    "CHECK_LAST",
    "UTC_NAME",
    "default_candidates",
    "equivalent_zone",
    "iana_name",
    "iana_to_windows",
    "is_utc_name",
    "is_windows_id",
    "windows_to_iana",
    "zone",
]


def first_known_zone(candidates: Iterable[object]) -> str:
    """IANA name of the first candidate (Windows id, IANA name or UTC alias) that resolves; else UTC."""
    for candidate in candidates:
        if isinstance(candidate, str) and candidate:
            try:
                return windows_to_iana(candidate)
            except UnknownTimeZone:
                continue
    return UTC_NAME

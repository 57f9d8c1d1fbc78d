"""The bulk user CSV: one row per user, for ``davbridge users import / export`` and the admin API.

Format: UTF-8 (a leading BOM is accepted, as Excel's "CSV UTF-8" writes it), comma separated,
CRLF or LF line ends, RFC 4180 quoting (a cell holding a comma, quote or line break is quoted,
its quotes doubled), a header row naming the columns
(any order, case-insensitive). Only ``upn`` is required::

    upn, caldav_url, caldav_username, caldav_password, enabled, direction, conflict_policy,
    window_past_days, window_future_days, first_sync_cap, only_new, privacy_title, calendars

An empty cell means "leave as it is" for an existing user and "the default" for a new one.
``caldav_password`` is read on import only: it is never exported and never appears in a repr,
a report or an error message. Row numbers are the ones Excel shows: the header is row 1.

Export guards against CSV injection (OWASP): a cell starting with ``= + - @`` (or tab / CR)
gets a leading ``'``; parsing removes exactly that quote again, so export -> parse round-trips.

Pure: no state store, no network. The caller reads the store, applies each :class:`UserRow`
with :func:`apply_to_user` / :func:`apply_to_pairing`, stores the password, and reports with
:class:`RowReport` (:func:`row_result` names the outcome).
"""

from __future__ import annotations

import csv
import difflib
import io
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from sync_core.errors import DavbridgeError
from sync_core.state.base import ConflictPolicy, Direction, Pairing, UserRecord

COLUMNS: tuple[str, ...] = (
    "upn", "caldav_url", "caldav_username", "caldav_password", "enabled", "direction", "conflict_policy",
    "window_past_days", "window_future_days", "first_sync_cap", "only_new", "privacy_title", "calendars",
)
#: What export writes: every column but the password.
EXPORT_COLUMNS: tuple[str, ...] = tuple(c for c in COLUMNS if c != "caldav_password")
RESULTS: tuple[str, ...] = ("created", "updated", "unchanged", "enabled", "disabled", "failed")
REPORT_COLUMNS: tuple[str, ...] = ("row", "upn", "result", "detail")

MAX_ROWS = 10_000
MIN_WINDOW_FUTURE_DAYS = 365
#: Upper bound of both windows (ten years): a larger value is a typo, and would make every
#: run read a decade of events.
MAX_WINDOW_DAYS = 3650
MAX_TEXT = 255  # user names, privacy titles
MAX_URL = 2048

_TRUE = frozenset({"true", "yes", "1"})
_FALSE = frozenset({"false", "no", "0"})
#: OWASP CSV injection: cells a spreadsheet may take as a formula.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_ESCAPED = re.compile(r"'+[=+\-@\t\r]")
_UPN = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
                  r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+")
_DIGITS = re.compile(r"[0-9]{1,9}")
#: Control characters, lone surrogates, line and paragraph separators.
_FORBIDDEN = frozenset({"Cc", "Cs", "Zl", "Zp"})


class Calendars(StrEnum):
    """Which calendars of the mailbox are paired: the primary one, or every calendar."""

    PRIMARY = "primary"
    ALL = "all"


class BulkFileError(DavbridgeError, ValueError):
    """The file as a whole cannot be used (no header, unknown columns, too many rows, not CSV)."""


class BulkRowError(DavbridgeError, ValueError):
    """One row cannot be applied (e.g. a new user without a CalDAV URL); the message names the row."""

    def __init__(self, row: int, detail: str) -> None:
        super().__init__(f"row {row}: {detail}")
        self.row = row
        self.detail = detail


@dataclass
class UserRow:
    """One parsed, validated row. ``None``: the cell was empty (leave as it is / default)."""

    row: int
    upn: str
    caldav_url: str | None = None
    caldav_username: str | None = None
    caldav_password: str | None = field(default=None, repr=False)
    enabled: bool | None = None
    direction: Direction | None = None
    conflict_policy: ConflictPolicy | None = None
    window_past_days: int | None = None
    window_future_days: int | None = None
    first_sync_cap: int | None = None
    only_new: bool | None = None
    privacy_title: str | None = None
    calendars: Calendars | None = None


@dataclass
class RowReport:
    """The outcome of one row: ``result`` is one of :data:`RESULTS`."""

    row: int
    upn: str
    result: str
    detail: str = ""

    def __post_init__(self) -> None:
        if self.result not in RESULTS:
            raise ValueError(f"result must be one of {', '.join(RESULTS)}, not {self.result!r}")

    def __str__(self) -> str:
        if self.result == "failed":
            return f"row {self.row}: {self.detail or 'failed'}"
        return f"row {self.row}: {self.upn} {self.result}" + (f" ({self.detail})" if self.detail else "")


# -- parse ------------------------------------------------------------------------------------
def decode_csv(data: bytes) -> str:
    """The text of an uploaded file: UTF-8 with or without BOM; anything else is a clear error."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise BulkFileError("the file is UTF-16 (Excel 'Unicode Text'); save it as 'CSV UTF-8 (Comma delimited)'")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BulkFileError(f"the file is not UTF-8 (byte {exc.start}); "
                            "save it as 'CSV UTF-8 (Comma delimited)'") from None
    return text.removeprefix("\ufeff")


def parse_users_csv(text: str, *, max_rows: int = MAX_ROWS) -> tuple[list[UserRow], list[RowReport]]:
    """Parse and validate a bulk user file.

    Returns the valid rows and a ``failed`` report for every invalid row (several problems of
    one row are joined with "; "). A UPN that appears again (case-insensitive) fails on the
    later row. Raises :class:`BulkFileError` for problems of the whole file: no header, no
    ``upn`` column, unknown or repeated columns, more than ``max_rows`` user rows, broken quoting.
    """
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff"), newline=""), strict=True)
    rows: list[UserRow] = []
    reports: list[RowReport] = []
    header: list[str] | None = None
    seen: dict[str, int] = {}
    count = 0
    number = 0
    try:
        for number, cells in enumerate(reader, start=1):
            if _blank(cells):
                continue
            if header is None:
                header = _header(cells)
                continue
            count += 1
            if count > max_rows:
                raise BulkFileError(f"the file has more than {max_rows} user rows; split it into smaller files")
            parsed = _parse_row(number, header, cells)
            key = parsed.upn.casefold()  # "" when the upn is not valid
            if key and key in seen:  # a duplicate even if the first row failed on another cell
                detail = f"{parsed.upn} is already on row {seen[key]}; each user may appear once"
                if isinstance(parsed, RowReport):
                    detail += "; " + parsed.detail
                reports.append(RowReport(number, parsed.upn, "failed", detail))
                continue
            if key:
                seen[key] = number
            if isinstance(parsed, RowReport):
                reports.append(parsed)
            else:
                rows.append(parsed)
    except csv.Error as exc:
        raise BulkFileError(f"row {number + 1}: the file is not valid CSV ({exc}); a value containing "
                            "a quote must be quoted itself, with the quote doubled") from None
    if header is None:
        raise BulkFileError("the file is empty; the first row must be the header: " + ",".join(COLUMNS))
    return rows, reports


def _blank(cells: Sequence[str]) -> bool:
    return all(not c.strip() for c in cells)


def _header(cells: list[str]) -> list[str]:
    names = [c.strip().casefold() for c in cells]
    while names and not names[-1]:
        names.pop()  # trailing empty columns (a spreadsheet's formatted but unused columns)
    if "upn" not in names:
        if len(names) == 1 and ";" in names[0]:
            raise BulkFileError("the file is separated by semicolons; davbridge reads commas "
                                "(in Excel save as 'CSV UTF-8 (Comma delimited)')")
        # No column names are echoed: without a header the first row may be a user's data.
        raise BulkFileError("the first row must be the header naming the columns (at least upn): "
                            + ",".join(COLUMNS))
    problems = []
    unknown = [n for n in names if n and n not in COLUMNS]
    if unknown:
        parts = []
        for name in unknown:
            shown = _shown(name)
            close = difflib.get_close_matches(name, COLUMNS, n=1)
            parts.append(f"{shown} (did you mean {close[0]}?)" if close else shown)
        problems.append(f"unknown column{'s' if len(unknown) > 1 else ''} {', '.join(parts)}")
    empty = [str(i) for i, n in enumerate(names, start=1) if not n]
    if empty:
        problems.append(f"column{'s' if len(empty) > 1 else ''} {', '.join(empty)} of the header "
                        f"{'have' if len(empty) > 1 else 'has'} no name")
    repeated = sorted({n for n in names if n and names.count(n) > 1})
    if repeated:
        problems.append(f"column{'s' if len(repeated) > 1 else ''} {', '.join(repeated)} "
                        f"{'appear' if len(repeated) > 1 else 'appears'} more than once")
    if problems:
        raise BulkFileError("; ".join(problems) + ". The columns are: " + ",".join(COLUMNS))
    return names


def _shown(value: str, limit: int = 40) -> str:
    value = "".join(ch if unicodedata.category(ch)[0] != "C" else "?" for ch in value)
    return repr(value if len(value) <= limit else value[:limit] + "...")


def _unescape(cell: str) -> str:
    """Drop the quote export put before a formula-like cell (exactly one)."""
    return cell[1:] if _ESCAPED.match(cell) else cell


def _parse_row(number: int, header: list[str], cells: list[str]) -> UserRow | RowReport:
    extra = cells[len(header):]
    values = dict(zip(header, cells, strict=False))
    raw_password = values.get("caldav_password", "")
    password = raw_password if raw_password.strip() else None  # kept verbatim, spaces and all
    raw_upn = _unescape(values.get("upn", "").strip())
    if any(c.strip() for c in extra):
        return RowReport(number, raw_upn if _UPN.fullmatch(raw_upn) else "", "failed",
                         f"the row has {len(cells)} cells but the header has {len(header)} columns "
                         "(quote values that contain commas)")
    errors: list[str] = []
    fields: dict[str, Any] = {}
    for name in header:
        if name == "caldav_password":
            continue
        cell = _unescape(values.get(name, "").strip())
        if not cell:
            if name == "upn":
                errors.append("upn is empty")
            continue
        try:
            fields[name] = _PARSERS[name](name, cell)
        except ValueError as exc:
            # A message quotes the bad cell; not if the password is in it (a shifted row).
            errors.append(f"{name} has an invalid value" if password and password in cell else str(exc))
    if password is not None and ("\n" in password or "\r" in password or "\0" in password):
        errors.append("caldav_password contains a line break (is a quote missing?)")
    direction, privacy = fields.get("direction"), fields.get("privacy_title")
    if privacy is not None and direction is Direction.TWO_WAY:
        errors.append("privacy_title needs a one-way direction (m365-to-caldav or caldav-to-m365)")
    upn = fields.get("upn", raw_upn if _UPN.fullmatch(raw_upn) else "")
    if errors:
        return RowReport(number, upn, "failed", "; ".join(errors))
    fields.pop("upn")
    return UserRow(row=number, upn=upn, caldav_password=password, **fields)


def _upn(name: str, cell: str) -> str:
    if len(cell) > 256 or not _UPN.fullmatch(cell):
        raise ValueError(f"upn {_shown(cell)} is not an address like someone@example.com")
    return cell


def _url(name: str, cell: str) -> str:
    # The value is not echoed: a URL may carry credentials.
    parts = urlsplit(cell)
    if (parts.scheme.lower() not in ("http", "https") or not parts.hostname or len(cell) > MAX_URL
            or any(ch.isspace() for ch in cell)):
        raise ValueError(f"{name} must be an http:// or https:// URL")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{name} must not contain a user name or password; "
                         "use the caldav_username and caldav_password columns")
    return cell


def _text(name: str, cell: str) -> str:
    if any(unicodedata.category(ch) in _FORBIDDEN for ch in cell):
        raise ValueError(f"{name} contains a control character or line break")
    if len(cell) > MAX_TEXT:
        raise ValueError(f"{name} is longer than {MAX_TEXT} characters")
    return cell


def _bool(name: str, cell: str) -> bool:
    value = cell.casefold()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{name} must be true or false (or yes/no, 1/0), not {_shown(cell)}")


def _int(name: str, cell: str, low: int, high: int | None) -> int:
    if not _DIGITS.fullmatch(cell):
        if re.fullmatch(r"-[0-9]+", cell):
            raise ValueError(f"{name} must be at least {low}")
        raise ValueError(f"{name} must be a whole number, not {_shown(cell)}")
    value = int(cell)
    if value < low:
        raise ValueError(f"{name} must be at least {low}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be at most {high}")
    return value


def _choice(enum: type[StrEnum]) -> Any:
    def parse(name: str, cell: str) -> StrEnum:
        try:
            return enum(cell.casefold())
        except ValueError:
            raise ValueError(f"{name} must be one of {', '.join(e.value for e in enum)}, not {_shown(cell)}") from None
    return parse


_PARSERS: dict[str, Any] = {
    "upn": _upn,
    "caldav_url": _url,
    "caldav_username": _text,
    "enabled": _bool,
    "direction": _choice(Direction),
    "conflict_policy": _choice(ConflictPolicy),
    "window_past_days": lambda n, c: _int(n, c, 0, MAX_WINDOW_DAYS),
    "window_future_days": lambda n, c: _int(n, c, MIN_WINDOW_FUTURE_DAYS, MAX_WINDOW_DAYS),
    "first_sync_cap": lambda n, c: _int(n, c, 0, None),
    "only_new": _bool,
    "privacy_title": _text,
    "calendars": _choice(Calendars),
}


# -- export -----------------------------------------------------------------------------------
def primary_pairing(pairings: Iterable[Pairing]) -> Pairing | None:
    """The pairing of the mailbox's primary calendar (``m365_calendar_id`` None), if any."""
    return next((p for p in pairings if p.m365_calendar_id is None), None)


def export_users_csv(users: Sequence[UserRecord], pairings: Mapping[str, Sequence[Pairing]]) -> str:
    """The bulk file for ``users`` (in the given order), without passwords. Pairing settings
    come from each user's primary pairing (empty cells when it has none); ``calendars`` is
    "all" when the user has more than one pairing. CRLF line ends; no BOM (write the file
    with encoding "utf-8-sig" for Excel)."""
    by_upn = {k.casefold(): v for k, v in pairings.items()}
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(EXPORT_COLUMNS)
    for user in users:
        own = list(pairings.get(user.upn, by_upn.get(user.upn.casefold(), ())))
        writer.writerow([_escape(v) for v in _export_cells(user, own)])
    return out.getvalue()


def _export_cells(user: UserRecord, own: Sequence[Pairing]) -> list[str]:
    p = primary_pairing(own)
    cells = [user.upn, user.caldav_url, user.caldav_username, _flag(user.enabled)]
    if p is None:
        cells += [""] * 7
    else:
        cells += [p.direction.value, p.conflict_policy.value, str(p.window_past_days), str(p.window_future_days),
                  str(p.first_sync_cap), _flag(p.only_changes_after is not None), p.privacy_title or ""]
    cells.append((Calendars.ALL if len(own) > 1 else Calendars.PRIMARY).value)
    return cells


def _flag(value: bool) -> str:
    return "true" if value else "false"


def _escape(cell: str) -> str:
    """OWASP CSV injection: a leading quote makes a formula-like cell plain text. Cells that
    start with quotes before such a character get one more, so parse can always drop one."""
    return "'" + cell if cell.lstrip("'").startswith(_FORMULA_START) else cell


# -- reports ----------------------------------------------------------------------------------
def report_csv(reports: Iterable[RowReport]) -> str:
    """The reports as CSV (row, upn, result, detail), CRLF line ends, injection-safe."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(REPORT_COLUMNS)
    for r in reports:
        writer.writerow([str(r.row), _escape(r.upn), r.result, _escape(r.detail)])
    return out.getvalue()


def report_counts(reports: Iterable[RowReport]) -> dict[str, int]:
    """How many rows had each result (only results that occurred, in :data:`RESULTS` order)."""
    counts = dict.fromkeys(RESULTS, 0)
    for r in reports:
        counts[r.result] += 1
    return {k: v for k, v in counts.items() if v}


def format_report_table(reports: Sequence[RowReport]) -> str:
    """An aligned text table for the terminal, ending with a summary line."""
    headers = ["row", "user", "result", "detail"]
    rows = [[str(r.row), r.upn, r.result, r.detail] for r in sorted(reports, key=lambda r: r.row)]
    widths = [max(len(x) for x in col) for col in zip(headers, *rows, strict=False)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [headers, *rows]]
    counts = report_counts(reports)
    lines.append(", ".join(f"{v} {k}" for k, v in counts.items()) if counts else "no rows")
    return "\n".join(lines) + "\n"

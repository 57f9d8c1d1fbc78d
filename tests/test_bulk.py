"""The bulk user CSV (sync_core.bulk): parsing and validation of every column, whole-file errors,
Excel quirks (BOM, CRLF, quoted cells), CSV injection escaping, export, the export -> import
round trip (hypothesis), and that the CalDAV password never shows anywhere."""

from __future__ import annotations

import csv
import io
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sync_core.bulk import (
    COLUMNS,
    EXPORT_COLUMNS,
    BulkFileError,
    Calendars,
    RowReport,
    UserRow,
    decode_csv,
    export_users_csv,
    format_report_table,
    parse_users_csv,
    primary_pairing,
    report_csv,
)
from sync_core.errors import DavbridgeError
from sync_core.state.base import ConflictPolicy, Direction, Pairing, UserRecord

SECRET = "Hunter2-s3cr3t!"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
FULL_HEADER = ",".join(COLUMNS)


def parse(*lines: str, **kw: int) -> tuple[list[UserRow], list[RowReport]]:
    return parse_users_csv("\n".join(lines) + "\n", **kw)


def one_row(header: str, line: str) -> UserRow:
    rows, reports = parse(header, line)
    assert reports == [], [str(r) for r in reports]
    assert len(rows) == 1
    return rows[0]


def one_error(header: str, line: str) -> RowReport:
    rows, reports = parse(header, line)
    assert rows == []
    assert len(reports) == 1
    assert reports[0].result == "failed"
    return reports[0]


def pairing(upn: str, cal: str | None = None, **kw: object) -> Pairing:
    url = f"https://dav.example.com/{upn}/{cal or 'default'}/"
    return Pairing(Pairing.make_id(upn, cal, url), upn, cal, url, **kw)  # type: ignore[arg-type]


# -- parsing: every column --------------------------------------------------------------------
def test_full_row_parses_every_column_typed() -> None:
    row = one_row(FULL_HEADER, f"ann@contoso.com,https://dav.example.com/ann/,ann.dav,{SECRET},no,m365-to-caldav,"
                               "caldav-wins,14,400,250,yes,Busy,all")
    assert row == UserRow(row=2, upn="ann@contoso.com", caldav_url="https://dav.example.com/ann/",
                          caldav_username="ann.dav", caldav_password=SECRET, enabled=False,
                          direction=Direction.M365_TO_CALDAV, conflict_policy=ConflictPolicy.CALDAV_WINS,
                          window_past_days=14, window_future_days=400, first_sync_cap=250, only_new=True,
                          privacy_title="Busy", calendars=Calendars.ALL)


def test_empty_cells_are_none_meaning_leave_as_it_is() -> None:
    row = one_row(FULL_HEADER, "ann@contoso.com" + "," * (len(COLUMNS) - 1))
    assert row == UserRow(row=2, upn="ann@contoso.com")
    assert row.caldav_password is None


def test_only_upn_is_required_and_header_is_case_and_order_insensitive() -> None:
    assert one_row("upn", "bob@contoso.com") == UserRow(row=2, upn="bob@contoso.com")
    row = one_row(" Enabled , UPN ,Window_Future_Days", "0, bob@contoso.com ,  730 ")
    assert (row.upn, row.enabled, row.window_future_days) == ("bob@contoso.com", False, 730)


def test_a_row_with_fewer_cells_than_the_header_has_the_rest_empty() -> None:
    assert one_row(FULL_HEADER, "bob@contoso.com,https://dav.example.com/") == UserRow(
        row=2, upn="bob@contoso.com", caldav_url="https://dav.example.com/")


@pytest.mark.parametrize(("cell", "value"), [
    ("true", True), ("TRUE", True), ("Yes", True), ("1", True),
    ("false", False), ("FALSE", False), ("no", False), ("0", False),
])
def test_booleans(cell: str, value: bool) -> None:
    row = one_row("upn,enabled,only_new", f"a@b.co,{cell},{cell}")
    assert row.enabled is value and row.only_new is value


@pytest.mark.parametrize("direction", list(Direction))
@pytest.mark.parametrize("policy", list(ConflictPolicy))
def test_every_direction_and_policy(direction: Direction, policy: ConflictPolicy) -> None:
    row = one_row("upn,direction,conflict_policy", f"a@b.co,{direction.value.upper()},{policy.value}")
    assert (row.direction, row.conflict_policy) == (direction, policy)


@pytest.mark.parametrize("calendars", list(Calendars))
def test_calendars(calendars: Calendars) -> None:
    assert one_row("upn,calendars", f"a@b.co,{calendars.value}").calendars is calendars


def test_window_bounds_are_inclusive() -> None:
    row = one_row("upn,window_past_days,window_future_days,first_sync_cap", "a@b.co,0,365,0")
    assert (row.window_past_days, row.window_future_days, row.first_sync_cap) == (0, 365, 0)
    row = one_row("upn,window_past_days,window_future_days", "a@b.co,3650,3650")
    assert (row.window_past_days, row.window_future_days) == (3650, 3650)


@pytest.mark.parametrize(("column", "cell", "message"), [
    ("upn", "not-an-address", "upn 'not-an-address' is not an address like someone@example.com"),
    ("upn", "ann@localhost", "is not an address"),
    ("upn", "ann smith@contoso.com", "is not an address"),
    ("caldav_url", "ftp://dav.example.com/", "caldav_url must be an http:// or https:// URL"),
    ("caldav_url", "dav.example.com", "caldav_url must be an http:// or https:// URL"),
    ("caldav_url", "https://bob:pw@dav.example.com/", "caldav_url must not contain a user name or password"),
    ("caldav_username", "bob\x07", "caldav_username contains a control character"),
    ("enabled", "maybe", "enabled must be true or false (or yes/no, 1/0), not 'maybe'"),
    ("direction", "both", "direction must be one of two-way, m365-to-caldav, caldav-to-m365, not 'both'"),
    ("conflict_policy", "m365", "conflict_policy must be one of m365-wins, caldav-wins, newest-wins, not 'm365'"),
    ("window_past_days", "-1", "window_past_days must be at least 0"),
    ("window_past_days", "thirty", "window_past_days must be a whole number, not 'thirty'"),
    ("window_past_days", "3651", "window_past_days must be at most 3650"),
    ("window_future_days", "30", "window_future_days must be at least 365"),
    ("window_future_days", "365.0", "window_future_days must be a whole number, not '365.0'"),
    ("window_future_days", "99999", "window_future_days must be at most 3650"),
    ("first_sync_cap", "-5", "first_sync_cap must be at least 0"),
    ("first_sync_cap", "1e3", "first_sync_cap must be a whole number"),
    ("only_new", "perhaps", "only_new must be true or false"),
    ("privacy_title", "x" * 256, "privacy_title is longer than 255 characters"),
    ("calendars", "some", "calendars must be one of primary, all, not 'some'"),
])
def test_invalid_cells_fail_the_row_with_a_reason(column: str, cell: str, message: str) -> None:
    header = "upn" if column == "upn" else f"upn,{column}"
    line = f'"{cell}"' if column == "upn" else f'a@b.co,"{cell}"'
    report = one_error(header, line)
    assert message in report.detail
    assert report.row == 2


def test_error_reads_like_the_example() -> None:
    report = one_error("upn,window_future_days", "a@b.co,30")
    assert str(report) == "row 2: window_future_days must be at least 365"
    assert report.upn == "a@b.co"


def test_several_problems_of_one_row_are_all_named() -> None:
    report = one_error("upn,enabled,direction,window_future_days", "a@b.co,maybe,both,10")
    assert report.detail.count(";") == 2
    for column in ("enabled", "direction", "window_future_days"):
        assert column in report.detail


def test_empty_upn_fails() -> None:
    rows, reports = parse("upn,enabled", "b@c.co,true", ",false")
    assert [r.upn for r in rows] == ["b@c.co"]
    assert [(r.row, r.detail) for r in reports] == [(3, "upn is empty")]


def test_privacy_title_needs_a_one_way_direction_in_the_same_row() -> None:
    report = one_error("upn,direction,privacy_title", "a@b.co,two-way,Busy")
    assert "privacy_title needs a one-way direction" in report.detail
    assert one_row("upn,direction,privacy_title", "a@b.co,caldav-to-m365,Busy").privacy_title == "Busy"


def test_valid_rows_survive_next_to_invalid_ones_with_excel_row_numbers() -> None:
    rows, reports = parse("upn,window_future_days",
                          "a@b.co,400",
                          "",  # a blank row keeps its number, as in Excel
                          "c@d.co,12",
                          "e@f.co,")
    assert [(r.row, r.upn) for r in rows] == [(2, "a@b.co"), (5, "e@f.co")]
    assert [str(r) for r in reports] == ["row 4: window_future_days must be at least 365"]


def test_a_quoted_line_break_keeps_row_numbers_as_excel_counts_rows() -> None:
    rows, reports = parse("upn,privacy_title,direction", 'a@b.co,"two\nlines",m365-to-caldav', "c@d.co,,")
    assert [r.row for r in rows] == [3]
    assert reports[0].row == 2 and "privacy_title contains a control character or line break" in reports[0].detail


def test_rows_of_empty_cells_are_skipped() -> None:
    rows, reports = parse("upn,enabled", "a@b.co,yes", ",", " , ", "")
    assert len(rows) == 1 and reports == []


# -- duplicates and limits --------------------------------------------------------------------
def test_duplicate_upn_fails_on_the_later_row_case_insensitively() -> None:
    rows, reports = parse("upn,enabled", "Ann@Contoso.com,yes", "b@c.co,yes", "ann@contoso.COM,no")
    assert [r.upn for r in rows] == ["Ann@Contoso.com", "b@c.co"]
    assert rows[0].enabled is True
    assert [(r.row, r.upn, r.result) for r in reports] == [(4, "ann@contoso.COM", "failed")]
    assert reports[0].detail == "ann@contoso.COM is already on row 2; each user may appear once"


def test_duplicate_of_a_failed_row_is_still_a_duplicate() -> None:
    rows, reports = parse("upn,enabled", "a@b.co,maybe", "A@b.co,yes", "A@B.CO,perhaps")
    assert rows == []
    assert [(r.row, r.detail.split(";")[0]) for r in reports] == [
        (2, "enabled must be true or false (or yes/no, 1/0), not 'maybe'"),
        (3, "A@b.co is already on row 2"),
        (4, "A@B.CO is already on row 2"),
    ]
    assert "not 'perhaps'" in reports[2].detail


def test_max_rows() -> None:
    lines = [f"u{i}@b.co" for i in range(3)]
    assert len(parse("upn", *lines, max_rows=3)[0]) == 3
    assert len(parse("upn", *lines, "", "", max_rows=3)[0]) == 3  # blank rows do not count
    with pytest.raises(BulkFileError, match="more than 2 user rows"):
        parse("upn", *lines, max_rows=2)


def test_default_max_rows_is_10000() -> None:
    text = "upn\n" + "".join(f"u{i}@b.co\n" for i in range(10_001))
    with pytest.raises(BulkFileError, match="more than 10000"):
        parse_users_csv(text)
    assert len(parse_users_csv(text, max_rows=20_000)[0]) == 10_001


# -- whole-file errors ------------------------------------------------------------------------
def test_unknown_columns_fail_the_whole_file_with_a_suggestion() -> None:
    with pytest.raises(BulkFileError) as info:
        parse("upn,caldav_pasword,colour", "a@b.co,x,y")
    message = str(info.value)
    assert "unknown columns 'caldav_pasword' (did you mean caldav_password?), 'colour'" in message
    assert "The columns are: upn,caldav_url" in message
    assert isinstance(info.value, DavbridgeError)


@pytest.mark.parametrize(("text", "message"), [
    ("", "the file is empty"),
    ("\r\n\r\n", "the file is empty"),
    ("enabled\ntrue\n", "the first row must be the header"),
    ("upn,enabled,Enabled\n", "enabled appears more than once"),
    ("upn,,enabled\n", "column 2 of the header has no name"),
    ("upn;caldav_url;enabled\na@b.co;https://x/;true\n", "separated by semicolons"),
    ('upn,privacy_title\na@b.co,"unterminated\n', "row 2: the file is not valid CSV"),
    ('upn,privacy_title\na@b.co,"x"y\n', "row 2: the file is not valid CSV"),
])
def test_whole_file_errors(text: str, message: str) -> None:
    with pytest.raises(BulkFileError, match=message):
        parse_users_csv(text)


def test_trailing_unnamed_columns_are_tolerated_when_empty() -> None:
    rows, reports = parse("upn,enabled,,", "a@b.co,yes,,", "c@d.co,no")
    assert [(r.upn, r.enabled) for r in rows] == [("a@b.co", True), ("c@d.co", False)]
    assert reports == []


def test_a_row_with_more_cells_than_columns_fails() -> None:
    report = one_error("upn,privacy_title,direction", "a@b.co,Busy, out,m365-to-caldav")
    assert report.detail == "the row has 4 cells but the header has 3 columns (quote values that contain commas)"
    assert report.upn == "a@b.co"


# -- Excel: BOM, CRLF, quoting ----------------------------------------------------------------
def test_bom_and_crlf_give_the_same_rows_as_plain_lf() -> None:
    lines = ["upn,caldav_username,enabled,window_future_days", "a@b.co,ann,yes,400", "c@d.co,,no,"]
    plain = parse_users_csv("\n".join(lines) + "\n")
    excel = parse_users_csv("\ufeff" + "\r\n".join(lines) + "\r\n")
    no_final_newline = parse_users_csv("\ufeff" + "\r\n".join(lines))
    assert plain == excel == no_final_newline
    assert [r.caldav_username for r in excel[0]] == ["ann", None]
    assert excel[0][1].enabled is False


def test_excel_quoted_cells_with_commas_and_quotes() -> None:
    text = ('\ufeffupn,caldav_username,caldav_password,direction,privacy_title\r\n'
            '"a@b.co","Smith, Ann","pa,ss""word",m365-to-caldav,"Busy, ""do not disturb"""\r\n'
            '"c@b.co",,,,"   "\r\n')
    rows, reports = parse_users_csv(text)
    assert reports == []
    assert rows[0].caldav_username == "Smith, Ann"
    assert rows[0].caldav_password == 'pa,ss"word'
    assert rows[0].privacy_title == 'Busy, "do not disturb"'
    assert rows[1] == UserRow(3, "c@b.co")


def test_password_is_kept_verbatim() -> None:
    text = 'upn,caldav_password\r\na@b.co," pa,ss""w =@rd "\r\nb@b.co,=1+2\r\nc@b.co,\'=x\r\nd@b.co,"   "\r\n'
    rows, _ = parse_users_csv(text)
    assert [r.caldav_password for r in rows] == [' pa,ss"w =@rd ', "=1+2", "'=x", None]


def test_password_with_a_line_break_fails_without_showing_it() -> None:
    report = one_error("upn,caldav_password", f'a@b.co,"{SECRET}\n{SECRET}"')
    assert "caldav_password contains a line break" in report.detail
    assert SECRET not in str(report)


def test_decode_csv() -> None:
    assert decode_csv("\ufeffupn\r\nä@b.co\r\n".encode()) == "upn\r\nä@b.co\r\n"
    assert decode_csv(b"upn\n") == "upn\n"
    with pytest.raises(BulkFileError, match="not UTF-8"):
        decode_csv("upn\nä@b.co\n".encode("cp1252"))
    with pytest.raises(BulkFileError, match="UTF-16"):
        decode_csv("upn\n".encode("utf-16"))


# -- CSV injection ----------------------------------------------------------------------------
FORMULAS = ["=1+2", "+1", "-1", "@SUM(A1)", "=cmd|' /C calc'!A0", "'=already quoted", "''+two quotes",
            "'plain quote", "a=b", "-"]


@pytest.mark.parametrize("value", FORMULAS)
def test_injection_prefix_on_export_and_stripped_on_parse(value: str) -> None:
    user = UserRecord(upn="a@b.co", caldav_url="https://dav.example.com/", caldav_username=value)
    p = pairing("a@b.co", direction=Direction.M365_TO_CALDAV, privacy_title=value)
    text = export_users_csv([user], {"a@b.co": [p]})
    cells = next(r for r in csv.DictReader(io.StringIO(text, newline="")) if r)
    dangerous = value.lstrip("'")[:1] in ("=", "+", "-", "@")
    assert cells["caldav_username"] == ("'" + value if dangerous else value)
    assert cells["privacy_title"] == cells["caldav_username"]
    row = one_row(*text.splitlines())
    assert (row.caldav_username, row.privacy_title) == (value, value)


def test_upn_starting_with_a_formula_character_round_trips() -> None:
    user = UserRecord(upn="-ann@b.co", caldav_url="https://dav.example.com/", caldav_username="ann")
    text = export_users_csv([user], {})
    assert "\r\n'-ann@b.co," in text
    assert one_row(*text.splitlines()).upn == "-ann@b.co"


def test_no_exported_cell_starts_a_formula() -> None:
    users = [UserRecord(upn=f"u{i}@b.co", caldav_url="https://d/", caldav_username=v) for i, v in enumerate(FORMULAS)]
    text = export_users_csv(users, {})
    for record in csv.reader(io.StringIO(text, newline="")):
        for cell in record:
            assert not cell.startswith(("=", "+", "-", "@")), cell


# -- export -----------------------------------------------------------------------------------
def test_export_columns_settings_from_the_primary_pairing_and_calendars() -> None:
    ann = UserRecord(upn="ann@b.co", caldav_url="https://dav.example.com/ann/", caldav_username="ann")
    bob = UserRecord(upn="bob@b.co", caldav_url="https://dav.example.com/bob/", caldav_username="bob", enabled=False)
    eve = UserRecord(upn="eve@b.co", caldav_url="https://dav.example.com/eve/", caldav_username="eve")
    ann_primary = pairing("ann@b.co", direction=Direction.CALDAV_TO_M365, conflict_policy=ConflictPolicy.M365_WINS,
                          window_past_days=7, window_future_days=500, first_sync_cap=42, only_changes_after=NOW,
                          privacy_title="Blocked")
    pairings = {
        "ann@b.co": [pairing("ann@b.co", "AAMkSecondary", window_past_days=99), ann_primary],
        "bob@b.co": [pairing("bob@b.co")],
        "eve@b.co": [pairing("eve@b.co", "AAMkOther")],  # no primary pairing
    }
    text = export_users_csv([ann, bob, eve], pairings)
    assert text.endswith("\r\n") and "\n" not in text.replace("\r\n", "")
    assert not text.startswith("\ufeff")
    lines = text.split("\r\n")
    assert lines[0] == ",".join(EXPORT_COLUMNS)
    assert "caldav_password" not in lines[0]
    assert lines[1:] == [
        "ann@b.co,https://dav.example.com/ann/,ann,true,caldav-to-m365,m365-wins,7,500,42,true,Blocked,all",
        "bob@b.co,https://dav.example.com/bob/,bob,false,two-way,newest-wins,30,365,5000,false,,primary",
        "eve@b.co,https://dav.example.com/eve/,eve,true,,,,,,,,primary",
        "",
    ]


def test_export_of_no_users_is_just_the_header() -> None:
    assert export_users_csv([], {}) == ",".join(EXPORT_COLUMNS) + "\r\n"
    assert parse_users_csv(export_users_csv([], {})) == ([], [])


def test_export_finds_pairings_whatever_the_upn_case() -> None:
    user = UserRecord(upn="Ann@B.co", caldav_url="https://d/", caldav_username="ann")
    text = export_users_csv([user], {"ann@b.co": [pairing("ann@b.co", window_past_days=3)]})
    assert one_row(*text.splitlines()).window_past_days == 3


def test_primary_pairing() -> None:
    primary = pairing("a@b.co")
    assert primary_pairing([pairing("a@b.co", "X"), primary]) is primary
    assert primary_pairing([pairing("a@b.co", "X")]) is None


def test_report_csv_and_table() -> None:
    reports = [RowReport(3, "b@b.co", "failed", "=HYPERLINK(x)"), RowReport(2, "a@b.co", "created"),
               RowReport(4, "c@b.co", "created")]
    text = report_csv(reports)
    assert text.split("\r\n") == ["row,upn,result,detail", "3,b@b.co,failed,'=HYPERLINK(x)", "2,a@b.co,created,",
                                  "4,c@b.co,created,", ""]
    table = format_report_table(reports)
    lines = table.splitlines()
    assert lines[0].split() == ["row", "user", "result", "detail"]
    assert [line.split()[0] for line in lines[1:4]] == ["2", "3", "4"]
    assert lines[2].index("failed") == lines[0].index("result")
    assert lines[-1] == "2 created, 1 failed"
    assert format_report_table([]).splitlines()[-1] == "no rows"


# -- the password never shows -----------------------------------------------------------------
def test_password_is_not_in_repr_or_str() -> None:
    row = one_row("upn,caldav_password", f"a@b.co,{SECRET}")
    assert row.caldav_password == SECRET
    for text in (repr(row), str(row), f"{row}", repr([row]), str({"r": row})):
        assert SECRET not in text
    assert "caldav_password" not in repr(row)


def test_password_is_not_in_any_report_or_error() -> None:
    header = "upn,caldav_url,caldav_username,caldav_password,enabled,direction,window_future_days"
    lines = [
        f"a@b.co,ftp://x,bob,{SECRET},maybe,both,3",              # every other cell wrong
        f"b@b.co,https://d/,bob,{SECRET},true,two-way,400,extra",  # one cell too many
        f"c@b.co,https://d/,bob,{SECRET},{SECRET},{SECRET},{SECRET}",  # the password in wrong columns
        f"a@b.co,https://d/,bob,{SECRET},yes,two-way,400",         # duplicate
    ]
    rows, reports = parse(header, *lines)
    assert rows == [] and len(reports) == 4
    outputs = [report_csv(reports), format_report_table(reports), *map(str, reports), *map(repr, reports)]
    for text in outputs:
        assert SECRET not in text


def test_password_in_url_is_not_echoed() -> None:
    report = one_error("upn,caldav_url", f"a@b.co,https://bob:{SECRET}@dav.example.com/")
    assert SECRET not in str(report)


@pytest.mark.parametrize("text", [
    f"a@b.co,https://d/,bob,{SECRET}\n",         # the header forgotten: the first row is data
    f"a@b.co;https://d/;bob;{SECRET}\n",
    f"upn;caldav_password\na@b.co;{SECRET}\n",
    f'upn,caldav_password\na@b.co,"{SECRET}\n',    # unterminated quote
    f'upn,caldav_password\na@b.co,"{SECRET}"x\n',  # text after the closing quote
])
def test_password_is_not_in_file_errors(text: str) -> None:
    with pytest.raises(BulkFileError) as info:
        parse_users_csv(text)
    assert SECRET not in str(info.value)


def apply_to_user(row: UserRow, user: UserRecord | None) -> UserRecord:
    """The user record a row describes (what the admin import stores), for round trips."""
    assert user is None and row.caldav_url and row.caldav_username
    return UserRecord(upn=row.upn, caldav_url=row.caldav_url, caldav_username=row.caldav_username,
                      enabled=True if row.enabled is None else row.enabled)


def apply_to_pairing(row: UserRow, p: Pairing, *, now: datetime) -> Pairing:
    """The pairing with the row's settings (empty cells keep its values)."""
    changes = {name: getattr(row, name) for name in ("direction", "conflict_policy", "window_past_days",
                                                     "window_future_days", "first_sync_cap", "privacy_title")
               if getattr(row, name) is not None}
    if row.only_new is not None:
        changes["only_changes_after"] = now if row.only_new else None
    return replace(p, **changes)


def test_password_is_never_exported() -> None:
    rows, _ = parse("upn,caldav_url,caldav_username,caldav_password", f"a@b.co,https://d/,bob,{SECRET}")
    user = apply_to_user(rows[0], None)
    text = export_users_csv([user], {user.upn: [pairing(user.upn)]})
    assert SECRET not in text and "caldav_password" not in text


# -- round trip (hypothesis) ------------------------------------------------------------------
LOCAL = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCXYZ0123456789!#$%&'*+/=?^_`{|}~.-", min_size=1, max_size=12)
LABEL = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,6}[a-z0-9])?", fullmatch=True)
UPNS = st.builds(lambda local, labels: local + "@" + ".".join(labels), LOCAL, st.lists(LABEL, min_size=2, max_size=3))
#: Any text a cell may hold: no control characters or line separators, no surrounding spaces.
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), min_size=1, max_size=30) \
    .filter(lambda s: s == s.strip() and bool(s))
TEXT_OR_FORMULA = st.one_of(TEXT, st.sampled_from(FORMULAS))
URLS = st.builds(lambda scheme, host, path: f"{scheme}://{host}.example/{path}", st.sampled_from(["http", "https"]),
                 LABEL, st.from_regex(r"[A-Za-z0-9_.~%/-]{0,20}", fullmatch=True))
CAL_IDS = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789=+-", min_size=1,
                  max_size=20)


@st.composite
def pairings_for(draw: st.DrawFn, upn: str) -> list[Pairing]:
    result = []
    for cal in draw(st.lists(st.one_of(st.none(), CAL_IDS), max_size=3, unique=True)):
        direction = draw(st.sampled_from(list(Direction)))
        privacy = None if direction is Direction.TWO_WAY else draw(st.one_of(st.none(), TEXT_OR_FORMULA))
        policy = draw(st.sampled_from(list(ConflictPolicy)))
        result.append(pairing(upn, cal, direction=direction, conflict_policy=policy,
                              window_past_days=draw(st.integers(0, 3650)),
                              window_future_days=draw(st.integers(365, 3650)),
                              first_sync_cap=draw(st.integers(0, 10**6)),
                              only_changes_after=draw(st.one_of(st.none(), st.just(NOW))), privacy_title=privacy))
    return result


@st.composite
def populations(draw: st.DrawFn) -> tuple[list[UserRecord], dict[str, list[Pairing]]]:
    upns = draw(st.lists(UPNS, max_size=6, unique_by=str.casefold))
    users = [UserRecord(upn=upn, caldav_url=draw(URLS), caldav_username=draw(TEXT_OR_FORMULA),
                        enabled=draw(st.booleans())) for upn in upns]
    return users, {u.upn: draw(pairings_for(u.upn)) for u in users}


def expected_row(number: int, user: UserRecord, own: list[Pairing]) -> UserRow:
    p = primary_pairing(own)
    row = UserRow(number, user.upn, caldav_url=user.caldav_url, caldav_username=user.caldav_username,
                  enabled=user.enabled, calendars=Calendars.ALL if len(own) > 1 else Calendars.PRIMARY)
    if p is None:
        return row
    return replace(row, direction=p.direction, conflict_policy=p.conflict_policy, window_past_days=p.window_past_days,
                   window_future_days=p.window_future_days, first_sync_cap=p.first_sync_cap,
                   only_new=p.only_changes_after is not None, privacy_title=p.privacy_title)


def reimport(rows: list[UserRow]) -> tuple[list[UserRecord], dict[str, list[Pairing]]]:
    """What an import into an empty store makes of ``rows`` (the primary calendar paired,
    one more calendar for "all")."""
    users, pairings = [], {}
    for row in rows:
        user = apply_to_user(replace(row, caldav_password=row.caldav_password or "pw"), None)
        own = [apply_to_pairing(row, pairing(user.upn), now=NOW)]
        if row.calendars is Calendars.ALL:
            own.append(apply_to_pairing(row, pairing(user.upn, "AAMkOther"), now=NOW))
        users.append(user)
        pairings[user.upn] = own
    return users, pairings


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(populations())
def test_export_parses_back_to_the_records(population: tuple[list[UserRecord], dict[str, list[Pairing]]]) -> None:
    users, pairings = population
    text = export_users_csv(users, pairings)
    rows, reports = parse_users_csv(text)
    assert reports == []
    assert rows == [expected_row(i, u, pairings[u.upn]) for i, u in enumerate(users, start=2)]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(populations(), st.lists(TEXT, min_size=6, max_size=6))
def test_importing_then_exporting_gives_equal_rows_but_the_password(
        population: tuple[list[UserRecord], dict[str, list[Pairing]]], passwords: list[str]) -> None:
    users, pairings = population
    users = [u for u in users if primary_pairing(pairings[u.upn]) is not None]  # full rows only
    exported = export_users_csv(users, pairings)
    # An admin's import file: the exported columns plus a password per user.
    records = list(csv.reader(io.StringIO(exported, newline="")))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([*records[0], "caldav_password"])
    for record, password in zip(records[1:], passwords, strict=False):
        writer.writerow([*record, password])
    imported, reports = parse_users_csv("\ufeff" + out.getvalue())
    assert reports == []
    assert [r.caldav_password for r in imported] == passwords[:len(users)]

    again = export_users_csv(*reimport(imported))
    assert again == exported
    rows, reports = parse_users_csv(again)
    assert reports == []
    assert rows == [replace(r, caldav_password=None) for r in imported]
    assert all(r.caldav_password is None for r in rows)

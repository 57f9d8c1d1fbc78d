"""The CalDAV side against real servers (Radicale, Xandikos, Cyrus via the shared fixtures),
plus scripted-transport tests for server behaviours the test servers never show (truncated
sync results, silently restarted tokens, 418 / 410 token answers, unquoted etags, no ETag).

References: RFC 6578 3.2 / 3.6 (sync-collection, truncation), RFC 4791 5.3.2 / 7.9 (PUT
preconditions, calendar-multiget), RFC 4918 9.1 (PROPFIND), RFC 7232 3.1 / 3.2 (If-Match,
If-None-Match).
"""

from __future__ import annotations

import json
import logging
import socket
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import pytest
import requests

from sync_core.errors import (
    AlreadyExists,
    AuthenticationFailed,
    NotFound,
    PreconditionFailed,
    SideError,
    StorageEmptied,
)
from sync_core.model import Event
from sync_core.sides import caldav_side as cs
from sync_core.sides.base import ChangeBatch, SideName
from sync_core.sides.caldav_side import CalDAVCalendar, discover_calendars, open_caldav
from sync_core.sides.caldav_xml import normalize_etag, normalize_href

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


# --- helpers ------------------------------------------------------------------------------


def ics(uid: str, summary: str = "Meeting", *, start: datetime = T0, extra: str = "") -> str:
    end = start + timedelta(hours=1)
    fmt = "%Y%m%dT%H%M%SZ"
    return (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//other client//EN\r\nBEGIN:VEVENT\r\n"
        f"UID:{uid}\r\nDTSTAMP:20260101T000000Z\r\nDTSTART:{start.strftime(fmt)}\r\n"
        f"DTEND:{end.strftime(fmt)}\r\nSUMMARY:{summary}\r\n{extra}END:VEVENT\r\nEND:VCALENDAR\r\n"
    )


def todo(uid: str) -> str:
    return (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//other client//EN\r\nBEGIN:VTODO\r\n"
        f"UID:{uid}\r\nDTSTAMP:20260101T000000Z\r\nSUMMARY:a task, not an event\r\n"
        "END:VTODO\r\nEND:VCALENDAR\r\n"
    )


def uid() -> str:
    return f"{uuid.uuid4()}@test.davbridge"


class Other:
    """Another CalDAV client editing the same calendar with plain HTTP (not our code)."""

    def __init__(self, server: Any, calendar_url: str) -> None:
        self.auth = (server.username, server.password)
        self.calendar_url = calendar_url

    def put(self, name: str, body: str) -> str:
        url = urljoin(self.calendar_url, name)
        r = requests.put(url, data=body.encode(), auth=self.auth, timeout=10,
                         headers={"Content-Type": "text/calendar; charset=utf-8"})
        assert r.status_code in (201, 204), (r.status_code, r.text[:300])
        return normalize_href(urlsplit(url).path)

    def delete(self, name_or_id: str) -> None:
        r = requests.delete(urljoin(self.calendar_url, name_or_id), auth=self.auth, timeout=10)
        assert r.status_code in (200, 204), r.status_code

    def get(self, item_id: str) -> requests.Response:
        return requests.get(urljoin(self.calendar_url, item_id), auth=self.auth, timeout=10)


@pytest.fixture
def client(caldav_server: Any) -> Any:
    c = open_caldav(caldav_server.url, caldav_server.username, caldav_server.password, timeout=15)
    yield c
    c.close()


@pytest.fixture
def cal(client: Any, fresh_calendar: str) -> CalDAVCalendar:
    return CalDAVCalendar(client, fresh_calendar)


@pytest.fixture
def other(caldav_server: Any, fresh_calendar: str) -> Other:
    return Other(caldav_server, fresh_calendar)


def event(subject: str = "Planning", *, u: str | None = None, start: datetime = T0) -> Event:
    return Event(subject=subject, start=start, end=start + timedelta(hours=1), timezone="UTC", uid=u or uid())


def known_of(batch: ChangeBatch, previous: dict[str, str | None] | None = None) -> dict[str, str | None]:
    out = dict(previous or {})
    for i in batch.changed:
        out[i.id] = i.etag
    for d in batch.deleted:
        out.pop(d, None)
    return out


def by_subject(batch: ChangeBatch) -> dict[str, str]:
    return {i.event.subject: i.id for i in batch.changed if i.event is not None}


# --- connection and discovery ---------------------------------------------------------------


def test_discovery_finds_the_calendar(client: Any, fresh_calendar: str, caldav_server: Any) -> None:
    found = discover_calendars(client)
    by_path = {normalize_href(c.url): c for c in found}
    mine = by_path.get(normalize_href(fresh_calendar))
    assert mine is not None, [c.url for c in found]
    assert mine.supports_events and "VEVENT" in mine.components
    assert not mine.read_only
    assert mine.display_name
    assert sum(c.is_default for c in found) == 1
    # the server's own default calendar, not whichever the server happens to list first
    [default] = [c for c in found if c.is_default]
    assert normalize_href(default.url) == normalize_href(caldav_server.calendar_url)
    # scheduling inbox / outbox are not calendars
    assert not any(p.lower().rstrip("/").endswith(("/inbox", "/outbox")) for p in by_path)


def test_wrong_password_is_authentication_failed(caldav_server: Any, fresh_calendar: str) -> None:
    secret = "definitely-wrong-pw-123"
    bad = open_caldav(caldav_server.url, caldav_server.username, secret)
    if caldav_server.kind == "xandikos":
        # Xandikos has no authentication over plain HTTP: any password works. Pin that quirk,
        # so a Xandikos that starts checking passwords makes this test say so.
        assert CalDAVCalendar(bad, fresh_calendar).changes(None, {}).changed == []
        return
    with pytest.raises(AuthenticationFailed) as e1:
        discover_calendars(bad)
    with pytest.raises(AuthenticationFailed) as e2:
        CalDAVCalendar(bad, fresh_calendar).changes(None, {})
    for exc in (e1.value, e2.value):
        assert secret not in str(exc)
        assert "401" in str(exc)


def test_connection_refused_is_side_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    c = open_caldav(f"http://127.0.0.1:{port}/dav/", "u", "pw-not-in-message", timeout=5)
    with pytest.raises(SideError) as exc:
        CalDAVCalendar(c, f"http://127.0.0.1:{port}/dav/cal/").changes(None, {})
    assert "cannot connect" in str(exc.value)
    assert "pw-not-in-message" not in str(exc.value)
    with pytest.raises(SideError):
        discover_calendars(c)


def test_tls_error_is_side_error_with_reason(caldav_server: Any, fresh_calendar: str) -> None:
    # the test servers speak plain HTTP: a TLS handshake with them fails
    parts = urlsplit(fresh_calendar)
    url = f"https://{parts.netloc}{parts.path}"
    c = open_caldav(url, caldav_server.username, caldav_server.password, timeout=5)
    with pytest.raises(SideError) as exc:
        CalDAVCalendar(c, url).changes(None, {})
    assert "TLS error" in str(exc.value) and "wrong version number" in str(exc.value)
    assert caldav_server.password not in str(exc.value)
    with pytest.raises(SideError, match="TLS error"):
        discover_calendars(c)


def test_open_caldav_sends_basic_up_front(caldav_server: Any) -> None:
    c = open_caldav(caldav_server.url, caldav_server.username, caldav_server.password)
    assert c.auth is not None and type(c.auth).__name__ == "HTTPBasicAuth"
    with pytest.raises(SideError):
        open_caldav("caldav.example.com", "u", "p")


# --- writes ---------------------------------------------------------------------------------


def test_create_read_update_delete(cal: CalDAVCalendar, other: Other) -> None:
    ev = event("Quarterly review")
    created = cal.create(ev, idempotency_key="db-" + uuid.uuid4().hex)
    assert created.id.startswith(cal.path) and created.id.endswith(".ics")
    assert created.etag and created.etag.startswith('"')
    assert created.event.subject == "Quarterly review"
    assert other.get(created.id).status_code == 200

    [read] = cal.get([created.id])
    assert read.id == created.id and read.event is not None
    assert read.event.subject == "Quarterly review"
    assert read.etag == created.etag
    assert read.match_uids == {ev.uid}

    updated = cal.update(created.id, event("Quarterly review (moved)", u=ev.uid), etag=created.etag)
    assert updated.id == created.id and updated.etag and updated.etag != created.etag
    [read] = cal.get([created.id])
    assert read.event is not None and read.event.subject == "Quarterly review (moved)"
    assert read.etag == updated.etag

    with pytest.raises(PreconditionFailed):  # stale etag: someone (we) changed it meanwhile
        cal.update(created.id, event("lost update", u=ev.uid), etag=created.etag)
    with pytest.raises(PreconditionFailed):
        cal.delete(created.id, etag=created.etag)

    cal.delete(created.id, etag=updated.etag)
    assert other.get(created.id).status_code == 404
    cal.delete(created.id, etag=updated.etag)  # already gone: fine
    cal.delete(created.id, etag=None)
    assert cal.get([created.id]) == []
    with pytest.raises(NotFound):
        cal.update(created.id, event("gone", u=ev.uid), etag=None)


def test_update_keeps_the_stored_uid_and_create_derives_one(cal: CalDAVCalendar, other: Other) -> None:
    u = uid()
    item = other.put("keep-uid.ics", ics(u, "stored"))
    [read] = cal.changes(None, {}).changed
    written = cal.update(item, event("new subject", u="some-other-uid"), etag=read.etag)
    assert written.event.uid == u
    [again] = cal.get([item])
    assert again.match_uids == {u} and again.event is not None and again.event.subject == "new subject"
    key = "db-" + uuid.uuid4().hex
    created = cal.create(Event("no uid", T0, T0 + timedelta(hours=1), "UTC"), idempotency_key=key)
    assert created.event.uid == f"{key}@davbridge"
    [read] = cal.get([created.id])
    assert read.match_uids == {f"{key}@davbridge"}


def test_create_twice_with_same_key_is_already_exists(cal: CalDAVCalendar) -> None:
    key = "db-" + uuid.uuid4().hex
    first = cal.create(event("once"), idempotency_key=key)
    with pytest.raises(AlreadyExists):
        cal.create(event("once"), idempotency_key=key)
    assert first.id == cal.id_for_key(key)
    # a key with unsafe characters still maps to one stable, safe name
    odd = "pairing/1|uid with spaces@x"
    r = cal.create(event("odd key"), idempotency_key=odd)
    assert r.id == cal.id_for_key(odd) and "|" not in r.id and " " not in r.id
    with pytest.raises(AlreadyExists):
        cal.create(event("odd key"), idempotency_key=odd)


def test_uid_used_by_another_resource_is_already_exists(cal: CalDAVCalendar) -> None:
    # Radicale 409 / Xandikos 412 CALDAV:no-uid-conflict, Cyrus 403 unique-scheduling-object-resource
    u = uid()
    first = cal.create(event("first", u=u), idempotency_key="db-" + uuid.uuid4().hex)
    with pytest.raises(AlreadyExists) as exc:
        cal.create(event("second", u=u), idempotency_key="db-" + uuid.uuid4().hex)
    assert first.id in str(exc.value) or "UID" in str(exc.value)


def test_update_by_other_client_is_precondition_failed(cal: CalDAVCalendar, other: Other) -> None:
    u = uid()
    item = other.put("shared.ics", ics(u, "original"))
    first = cal.changes(None, {})
    [read] = first.changed
    other.put("shared.ics", ics(u, "edited elsewhere"))
    with pytest.raises(PreconditionFailed):
        cal.update(item, event("ours", u=u), etag=read.etag)
    body = other.get(item).text
    assert "edited elsewhere" in body


def test_update_keeps_properties_of_other_clients(cal: CalDAVCalendar, other: Other) -> None:
    u = uid()
    item = other.put("x-prop.ics", ics(u, "with x-prop", extra="X-OTHER-CLIENT-FLAG:keep-me\r\n"))
    [read] = cal.changes(None, {}).changed
    cal.update(item, event("renamed", u=u), etag=read.etag)
    body = other.get(item).text
    assert "renamed" in body
    assert "X-OTHER-CLIENT-FLAG" in body and "keep-me" in body


# --- changes ----------------------------------------------------------------------------------


def test_changes_initial_then_incremental(cal: CalDAVCalendar, other: Other) -> None:
    ua, ub, uc = uid(), uid(), uid()
    a = other.put("a.ics", ics(ua, "A"))
    b = other.put("b.ics", ics(ub, "B"))
    c = other.put("c.ics", ics(uc, "C"))

    first = cal.changes(None, {})
    assert not first.reset and first.deleted == []
    assert by_subject(first) == {"A": a, "B": b, "C": c}
    assert all(i.etag and i.etag.startswith('"') for i in first.changed)
    assert {u for i in first.changed for u in i.match_uids} == {ua, ub, uc}
    assert json.loads(first.cursor or "{}")["mode"] == "sync"
    known = known_of(first)

    # nothing changed: one sync-collection REPORT, nothing fetched
    before = cal.request_count
    quiet = cal.changes(first.cursor, known)
    assert (quiet.changed, quiet.deleted, quiet.reset) == ([], [], False)
    assert cal.request_count - before == 1

    # another client edits B, deletes C, adds D
    other.put("b.ics", ics(ub, "B2"))
    other.delete("c.ics")
    d = other.put("d.ics", ics(uid(), "D"))
    second = cal.changes(quiet.cursor, known)
    assert not second.reset
    assert by_subject(second) == {"B2": b, "D": d}
    assert second.deleted == [c]
    known = known_of(second, known)

    # our own write comes back with the etag we stored: not fetched, not reported
    mine = cal.create(event("own write"), idempotency_key="db-" + uuid.uuid4().hex)
    known[mine.id] = mine.etag
    before = cal.request_count
    third = cal.changes(second.cursor, known)
    assert third.changed == [] and third.deleted == []
    assert cal.request_count - before == 1


def test_etag_mode_cursor_lists_every_time(cal: CalDAVCalendar, other: Other) -> None:
    a = other.put("a.ics", ics(uid(), "A"))
    b = other.put("b.ics", ics(uid(), "B"))
    etag_cursor = json.dumps({"v": 1, "mode": "etag"})
    first = cal.changes(etag_cursor, {})
    assert by_subject(first) == {"A": a, "B": b} and not first.reset
    assert json.loads(first.cursor or "{}") == {"v": 1, "mode": "etag"}
    known = known_of(first)
    before = cal.request_count
    quiet = cal.changes(first.cursor, known)
    assert (quiet.changed, quiet.deleted) == ([], [])
    assert cal.request_count - before == 1  # one PROPFIND Depth 1
    other.delete("a.ics")
    gone = cal.changes(quiet.cursor, known)
    assert gone.deleted == [a] and gone.changed == []


def test_bogus_token_falls_back_to_listing(cal: CalDAVCalendar, other: Other, caldav_server: Any) -> None:
    a = other.put("a.ics", ics(uid(), "A"))
    b = other.put("b.ics", ics(uid(), "B"))
    first = cal.changes(None, {})
    known = known_of(first)
    other.put("c.ics", ics(uid(), "C"))
    other.delete("b.ics")
    vanished = cal.path + "never-seen-or-long-gone.ics"
    known[vanished] = '"old"'
    bogus = json.dumps({"v": 1, "mode": "sync", "token": "http://example.invalid/ns/sync/bogus-42"})
    batch = cal.changes(bogus, known)
    assert batch.reset
    assert sorted(batch.deleted) == sorted([b, vanished])
    assert set(by_subject(batch)) == {"C"}  # A is known with its etag: not fetched again
    assert a not in {i.id for i in batch.changed}
    assert json.loads(batch.cursor or "{}")["mode"] == "sync"
    # the new cursor works incrementally
    after = cal.changes(batch.cursor, known_of(batch, known))
    assert (after.changed, after.deleted, after.reset) == ([], [], False)


def test_full_answer_to_incremental_token_is_detected(cal: CalDAVCalendar, other: Other) -> None:
    empty = cal.changes(None, {})  # token of the empty calendar
    ids = [other.put(f"e{n}.ics", ics(uid(), f"E{n}")) for n in range(4)]
    current = known_of(cal.changes(None, {}))
    assert sorted(current) == sorted(ids)
    # state knows all four with their current etags, plus one id the server no longer has:
    # the old token answers "all four changed" without the removal -> looks like a restart
    ghost = cal.path + "ghost.ics"
    known = {**current, ghost: '"ghost"'}
    batch = cal.changes(empty.cursor, known)
    assert batch.reset
    assert batch.deleted == [ghost]
    assert batch.changed == []


def test_unknown_cursor_is_a_full_listing_with_reset(cal: CalDAVCalendar, other: Other) -> None:
    a = other.put("a.ics", ics(uid(), "A"))
    batch = cal.changes("not json at all", {})
    assert batch.reset and by_subject(batch) == {"A": a}


def test_broken_items_do_not_stop_the_calendar(client: Any, fresh_calendar: str, other: Other) -> None:
    good1 = other.put("good1.ics", ics(uid(), "Good 1"))
    broken = other.put("task.ics", todo(uid()))  # valid iCalendar, but no VEVENT
    good2 = other.put("good2.ics", ics(uid(), "Good 2", extra="DESCRIPTION:" + "x" * 3000 + "\r\n"))
    cal = CalDAVCalendar(client, fresh_calendar)
    batch = cal.changes(None, {})
    items = {i.id: i for i in batch.changed}
    assert set(items) == {good1, broken, good2}
    assert items[broken].event is None and items[broken].error
    assert items[broken].etag
    assert items[good1].event is not None and items[good2].event is not None
    assert items[good1].error is None

    small = CalDAVCalendar(client, fresh_calendar, max_item_bytes=2000)
    batch = small.changes(None, {})
    items = {i.id: i for i in batch.changed}
    assert items[good2].event is None and "payload too large" in (items[good2].error or "")
    assert items[good1].event is not None


def test_empty_listing_with_known_items_raises(cal: CalDAVCalendar) -> None:
    known = {cal.path + "was-here.ics": '"e1"', cal.path + "also.ics": '"e2"'}
    with pytest.raises(StorageEmptied):
        cal.changes(None, known)
    with pytest.raises(StorageEmptied):
        cal.changes(json.dumps({"v": 1, "mode": "etag"}), known)
    with pytest.raises(StorageEmptied):
        cal.changes(json.dumps({"v": 1, "mode": "sync", "token": "bogus"}), known)
    assert cal.changes(None, {}).changed == []  # empty and nothing known: fine


def test_deleted_calendar_is_side_error(cal: CalDAVCalendar, caldav_server: Any, fresh_calendar: str) -> None:
    first = cal.changes(None, {})
    r = requests.delete(fresh_calendar, auth=(caldav_server.username, caldav_server.password), timeout=10)
    assert r.status_code in (200, 204)
    for cursor in (None, first.cursor, json.dumps({"v": 1, "mode": "etag"})):
        with pytest.raises(SideError, match="not found"):
            cal.changes(cursor, {})


def test_reencoded_hrefs_give_one_id(cal: CalDAVCalendar, other: Other) -> None:
    u = uid()
    item = other.put("a%40b%20c.ics", ics(u, "at sign"))
    first = cal.changes(None, {})
    [read] = first.changed
    assert read.id == item == cal.path + "a@b%20c.ics"
    # state holding another spelling of the same href: recognised, answered in that spelling
    spelled = cal.path + "a%40b%20c.ics"
    again = cal.changes(None, {spelled: read.etag})
    assert again.changed == [] and again.deleted == []
    [got] = cal.get([spelled])
    assert got.id == spelled
    other.delete("a%40b%20c.ics")
    gone = cal.changes(first.cursor, {spelled: read.etag})
    assert gone.deleted == [spelled]


def test_many_items_are_fetched_in_multiget_chunks(client: Any, fresh_calendar: str, other: Other) -> None:
    ids = [other.put(f"m{n:02d}.ics", ics(uid(), f"M{n}")) for n in range(7)]
    cal = CalDAVCalendar(client, fresh_calendar, multiget_chunk=3)
    batch = cal.changes(None, {})
    assert sorted(i.id for i in batch.changed) == sorted(ids)
    assert all(i.event is not None for i in batch.changed)
    # token PROPFIND + listing PROPFIND + 3 multigets (3 + 3 + 1)
    assert cal.request_count == 5


def test_request_log_has_no_content(cal: CalDAVCalendar, other: Other,
                                    caplog: pytest.LogCaptureFixture) -> None:
    other.put("secret.ics", ics(uid(), "Confidential merger talk"))
    with caplog.at_level(logging.DEBUG, logger="davbridge.caldav"):
        batch = cal.changes(None, {})
        [item] = batch.changed
        assert item.event is not None
        cal.update(item.id, event("Also secret", u=item.event.uid), etag=item.etag)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "PROPFIND" in text
    assert "Confidential" not in text and "Also secret" not in text


# --- scripted transport: behaviours the local servers do not show ----------------------------


class Scripted:
    """Replaces ``_Http.send``: answers from a list of (predicate, reply) in order."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, bytes, dict[str, str]]] = []
        self.script: list[tuple[Callable[[str, bytes], bool], cs._Reply]] = []

    def on(self, method: str, contains: str, status: int, body: str = "",
           headers: dict[str, str] | None = None, url: str = "http://dav.test/cal/") -> None:
        def match(m: str, b: bytes, method: str = method, contains: str = contains) -> bool:
            return m == method and contains.encode() in b
        self.script.append((match, cs._Reply(status, headers or {}, body.encode(), url)))

    def send(self, method: str, url: str, *, body: bytes = b"", headers: Any = None) -> cs._Reply:
        self.sent.append((method, url, body, dict(headers or {})))
        for n, (match, reply) in enumerate(self.script):
            if match(method, body):
                del self.script[n]
                return reply
        raise AssertionError(f"unexpected {method} {url} {body[:200]!r}")


def ms(*responses: str, token: str | None = None) -> str:
    tok = f"<d:sync-token>{token}</d:sync-token>" if token else ""
    ns = 'xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:caldav"'
    return f'<d:multistatus {ns}>{"".join(responses)}{tok}</d:multistatus>'


def member(href: str, etag: str | None = None, data: str | None = None, status: int = 200) -> str:
    if status != 200:
        return f"<d:response><d:href>{href}</d:href><d:status>HTTP/1.1 {status} X</d:status></d:response>"
    props = (f"<d:getetag>{etag}</d:getetag>" if etag is not None else "") + (
        f"<c:calendar-data>{data}</c:calendar-data>" if data is not None else "")
    return (f"<d:response><d:href>{href}</d:href><d:propstat><d:prop>{props}</d:prop>"
            "<d:status>HTTP/1.1 200 OK</d:status></d:propstat></d:response>")


@pytest.fixture
def scripted() -> tuple[CalDAVCalendar, Scripted]:
    client = open_caldav("http://dav.test/", "u", "p")
    cal = CalDAVCalendar(client, "http://dav.test/cal/")
    fake = Scripted()
    cal._http.send = fake.send  # type: ignore[method-assign]
    return cal, fake


def sync_cursor(token: str) -> str:
    return json.dumps({"v": 1, "mode": "sync", "token": token})


def test_truncated_sync_is_followed_with_the_new_token(scripted: tuple[CalDAVCalendar, Scripted]) -> None:
    cal, fake = scripted
    fake.on("REPORT", "<d:sync-token>t1<", 207, ms(
        member("/cal/a.ics", '"1"'), member("/cal/", status=507), token="t1b"))
    fake.on("REPORT", "<d:sync-token>t1b<", 207, ms(
        member("/cal/b.ics", "2"), member("/cal/gone.ics", status=404), token="t2"))
    fake.on("REPORT", "calendar-multiget", 207, ms(
        member("/cal/a.ics", '"1"', ics("ua", "A")), member("/cal/b.ics", '"2"', ics("ub", "B"))))
    batch = cal.changes(sync_cursor("t1"), {"/cal/gone.ics": '"0"'})
    assert by_subject(batch) == {"A": "/cal/a.ics", "B": "/cal/b.ics"}
    assert batch.deleted == ["/cal/gone.ics"]
    assert json.loads(batch.cursor or "{}")["token"] == "t2"
    assert not batch.reset
    assert [m for m, *_ in fake.sent] == ["REPORT", "REPORT", "REPORT"]
    assert b"limit" not in b"".join(b for _, _, b, _ in fake.sent)  # never DAV:limit
    assert fake.sent[0][3]["Depth"] == "0"


@pytest.mark.parametrize("status", [403, 409, 410, 412, 418, 507])
def test_stale_token_statuses_fall_back(scripted: tuple[CalDAVCalendar, Scripted], status: int) -> None:
    cal, fake = scripted
    fake.on("REPORT", "sync-collection", status, "")
    fake.on("PROPFIND", "sync-token", 207, ms(
        '<d:response><d:href>/cal/</d:href><d:propstat><d:prop><d:sync-token>fresh</d:sync-token></d:prop>'
        "<d:status>HTTP/1.1 200 OK</d:status></d:propstat></d:response>"))
    fake.on("PROPFIND", "getetag", 207, ms(member("/cal/", '"c"'), member("/cal/a.ics", "same")))
    fake.on("REPORT", "calendar-multiget", 207, ms(member("/cal/b.ics", status=404)))
    batch = cal.changes(sync_cursor("old"), {"/cal/a.ics": '"same"', "/cal/b.ics": '"x"'})
    assert batch.reset and batch.changed == [] and batch.deleted == ["/cal/b.ics"]
    assert json.loads(batch.cursor or "{}") == {"v": 1, "mode": "sync", "token": "fresh"}


def test_valid_sync_token_400_falls_back_and_500_is_side_error(
        scripted: tuple[CalDAVCalendar, Scripted]) -> None:
    cal, fake = scripted
    fake.on("REPORT", "sync-collection", 400, '<d:error xmlns:d="DAV:"><d:valid-sync-token/></d:error>')
    fake.on("PROPFIND", "sync-token", 207, ms())
    fake.on("PROPFIND", "getetag", 207, ms(member("/cal/a.ics", '"1"')))
    batch = cal.changes(sync_cursor("old"), {"/cal/a.ics": '"1"'})
    assert batch.reset and batch.changed == [] and batch.deleted == []
    assert json.loads(batch.cursor or "{}") == {"v": 1, "mode": "etag"}  # server has no token
    fake.on("REPORT", "sync-collection", 500, "")
    with pytest.raises(SideError) as exc:
        cal.changes(sync_cursor("old"), {})
    assert "500" in str(exc.value)


def test_report_not_supported_switches_to_etag_mode(scripted: tuple[CalDAVCalendar, Scripted]) -> None:
    cal, fake = scripted
    fake.on("REPORT", "sync-collection", 501, "")
    fake.on("PROPFIND", "getetag", 207, ms(member("/cal/a.ics", '"1"')))
    batch = cal.changes(sync_cursor("old"), {"/cal/a.ics": '"1"'})
    assert json.loads(batch.cursor or "{}") == {"v": 1, "mode": "etag"}
    assert [m for m, *_ in fake.sent] == ["REPORT", "PROPFIND"]


def test_silent_restart_is_verified_by_listing(scripted: tuple[CalDAVCalendar, Scripted]) -> None:
    cal, fake = scripted
    known = {f"/cal/{n}.ics": f'"{n}"' for n in range(5)}
    # the server lost its log: everything "changed", unquoted etags, nothing removed
    fake.on("REPORT", "sync-collection", 207,
            ms(*(member(f"/cal/{n}.ics", str(n)) for n in range(4)), token="new"))
    fake.on("PROPFIND", "getetag", 207, ms(*(member(f"/cal/{n}.ics", f'"{n}"') for n in range(4))))
    fake.on("REPORT", "calendar-multiget", 207, ms(member("/cal/4.ics", status=404)))
    batch = cal.changes(sync_cursor("old"), known)
    assert batch.reset and batch.deleted == ["/cal/4.ics"] and batch.changed == []
    assert json.loads(batch.cursor or "{}")["token"] == "new"  # the token from before the listing


def test_missing_from_listing_but_readable_is_not_deleted(scripted: tuple[CalDAVCalendar, Scripted]) -> None:
    cal, fake = scripted
    fake.on("PROPFIND", "getetag", 207, ms(member("/cal/a.ics", '"1"')))
    fake.on("REPORT", "calendar-multiget", 207, ms(member("/cal/b.ics", '"2"', ics("ub", "B"))))
    batch = cal.changes(json.dumps({"v": 1, "mode": "etag"}), {"/cal/a.ics": '"1"', "/cal/b.ics": '"1"'})
    assert batch.deleted == [] and by_subject(batch) == {"B": "/cal/b.ics"}


def test_multiget_failure_falls_back_to_get(scripted: tuple[CalDAVCalendar, Scripted]) -> None:
    cal, fake = scripted
    fake.on("REPORT", "calendar-multiget", 400, "")
    fake.on("GET", "", 200, ics("ua", "A"), headers={"ETag": "abc"})
    fake.on("GET", "", 403, "")
    items = cal.get(["/cal/a.ics", "/cal/b.ics"])
    assert [(i.id, i.etag, i.event.subject if i.event else i.error) for i in items] == [
        ("/cal/a.ics", '"abc"', "A"), ("/cal/b.ics", None, "could not read the item: HTTP 403")]


def test_no_etag_after_put_is_read_back(scripted: tuple[CalDAVCalendar, Scripted]) -> None:
    cal, fake = scripted
    fake.on("PUT", "BEGIN:VCALENDAR", 201, "", headers={"Schedule-Tag": '"s1"'})
    fake.on("PROPFIND", "getetag", 207, ms(member("/cal/k1.ics", "unquoted-1")))
    result = cal.create(event("no etag header"), idempotency_key="k1")
    assert result.id == "/cal/k1.ics" and result.etag == '"unquoted-1"'
    method, url, _, headers = fake.sent[0]
    assert (method, url) == ("PUT", "http://dav.test/cal/k1.ics")
    assert headers["If-None-Match"] == "*" and headers["Content-Type"].startswith("text/calendar")


def test_uid_conflict_on_create_is_already_exists(scripted: tuple[CalDAVCalendar, Scripted]) -> None:
    cal, fake = scripted
    fake.on("PUT", "BEGIN:VCALENDAR", 409, '<d:error xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:caldav">'
            "<c:no-uid-conflict><d:href>/cal/other.ics</d:href></c:no-uid-conflict></d:error>")
    with pytest.raises(AlreadyExists) as exc:
        cal.create(event("dup"), idempotency_key="k2")
    assert "/cal/other.ics" in str(exc.value)


def test_update_uses_the_body_from_the_last_read(scripted: tuple[CalDAVCalendar, Scripted]) -> None:
    cal, fake = scripted
    fake.on("REPORT", "calendar-multiget", 207,
            ms(member("/cal/a.ics", "e1", ics("ua", "A", extra="X-KEEP:1\r\n"))))
    [item] = cal.get(["/cal/a.ics"])
    assert item.etag == '"e1"'
    fake.on("PUT", "BEGIN:VCALENDAR", 204, "", headers={"ETag": '"e2"'})
    result = cal.update("/cal/a.ics", event("A2", u="ua"), etag='"e1"')
    assert result.etag == '"e2"'
    method, _, body, headers = fake.sent[-1]
    assert method == "PUT" and headers["If-Match"] == '"e1"' and b"X-KEEP" in body
    assert [m for m, *_ in fake.sent] == ["REPORT", "PUT"]  # no GET: the read's body was reused
    fake.on("PUT", "BEGIN:VCALENDAR", 412, "")
    with pytest.raises(PreconditionFailed):
        cal.update("/cal/a.ics", event("A3", u="ua"), etag='"e2"')


def test_throttling_is_retried_then_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cs.time, "sleep", lambda s: None)
    client = open_caldav("http://dav.test/", "u", "p")
    http = cs._Http(client, retries=2)
    calls: list[str] = []

    def once(method: str, url: str, body: bytes, headers: Any) -> cs._Reply:
        calls.append(method)
        return cs._Reply(429 if len(calls) < 3 else 207, {"Retry-After": "1"}, b"", url)

    monkeypatch.setattr(http, "_once", once)
    assert http.send("PROPFIND", "http://dav.test/cal/").status == 207 and http.count == 3
    calls.clear()
    monkeypatch.setattr(http, "_once", lambda *a: cs._Reply(503, {}, b"", "http://dav.test/cal/"))
    with pytest.raises(cs.Throttled):
        http.send("PROPFIND", "http://dav.test/cal/")


def test_normalizers() -> None:
    assert normalize_etag("abc") == normalize_etag('"abc"') == '"abc"'
    assert normalize_etag('W/"abc"') == normalize_etag("W/abc") == 'W/"abc"'
    assert normalize_etag(" ") is None and normalize_etag(None) is None
    assert normalize_href("http://h:1/cal/a%40b%20c.ics") == normalize_href("/cal/a@b%20c.ics")
    assert normalize_href("/cal/a%40b%20c.ics") == "/cal/a@b%20c.ics"
    assert normalize_href("/cal/%c3%a9.ics") == normalize_href("/cal/é.ics") == "/cal/" + quote("é") + ".ics"
    assert cs.resource_name("db-abc_1") == "db-abc_1.ics"
    assert cs.resource_name("a/b") != cs.resource_name("a|b")
    assert CalDAVCalendar.name == SideName.CALDAV


def test_discovery_privileges_components_and_default(monkeypatch: pytest.MonkeyPatch) -> None:
    client = open_caldav("http://dav.test/", "u", "p")
    monkeypatch.setattr(cs, "_principal_url", lambda c: "http://dav.test/principals/u/")
    fake = Scripted()
    monkeypatch.setattr(cs._Http, "send", lambda self, method, url, **kw: fake.send(method, url, **kw))

    def cal_response(href: str, name: str, comps: str, privs: str, kind: str = "<c:calendar/>") -> str:
        return (f"<d:response><d:href>{href}</d:href><d:propstat><d:prop>"
                f"<d:resourcetype><d:collection/>{kind}</d:resourcetype><d:displayname>{name}</d:displayname>"
                f"{comps}<d:current-user-privilege-set>{privs}</d:current-user-privilege-set>"
                "</d:prop><d:status>HTTP/1.1 200 OK</d:status></d:propstat></d:response>")

    def comps(name: str) -> str:
        tag = "c:supported-calendar-component-set"
        return f'<{tag}><c:comp name="{name}"/></{tag}>'

    events_only, todos_only = comps("VEVENT"), comps("VTODO")
    fake.on("PROPFIND", "calendar-home-set", 207, ms(
        "<d:response><d:href>/principals/u/</d:href><d:propstat><d:prop>"
        "<c:calendar-home-set><d:href>/home/u/</d:href></c:calendar-home-set>"
        "<c:schedule-inbox-URL><d:href>/home/u/inbox/</d:href></c:schedule-inbox-URL>"
        "</d:prop><d:status>HTTP/1.1 200 OK</d:status></d:propstat></d:response>"))
    fake.on("PROPFIND", "current-user-privilege-set", 207, ms(
        cal_response("/home/u/", "home", "", "<d:privilege><d:all/></d:privilege>", kind=""),
        cal_response("/home/u/main/", "Main", events_only, "<d:privilege><d:all/></d:privilege>"),
        cal_response("/home/u/shared%20team/", "Team", "",
                     "<d:privilege><d:read/></d:privilege><d:privilege><d:read-free-busy/></d:privilege>"),
        cal_response("/home/u/tasks/", "Tasks", todos_only, "<d:privilege><d:write/></d:privilege>"),
        cal_response("/home/u/inbox/", "Inbox", "", "<d:privilege><d:all/></d:privilege>",
                     kind="<c:schedule-inbox/>")))
    fake.on("PROPFIND", "current-user-privilege-set", 207, ms())  # the client URL itself
    fake.on("PROPFIND", "schedule-default-calendar-URL", 207, ms(
        "<d:response><d:href>/home/u/inbox/</d:href><d:propstat><d:prop><c:schedule-default-calendar-URL>"
        "<d:href>/home/u/shared team</d:href></c:schedule-default-calendar-URL></d:prop>"
        "<d:status>HTTP/1.1 200 OK</d:status></d:propstat></d:response>"))
    found = {c.display_name: c for c in discover_calendars(client)}
    assert set(found) == {"Main", "Team"}  # no VTODO-only calendar, no inbox, not the home
    assert not found["Main"].read_only and found["Main"].components == {"VEVENT"}
    assert found["Team"].read_only and found["Team"].supports_events  # no set = all components
    assert found["Team"].is_default and not found["Main"].is_default
    assert found["Team"].url == "http://dav.test/home/u/shared%20team/"


def test_a_listing_is_read_response_by_response() -> None:
    """``MultistatusStream``: the same responses as the whole-document parser, the sync token
    after them, its memory that of one response (elements freed as it goes)."""
    from sync_core.sides import caldav_xml as dx

    body = ('<?xml version="1.0"?><D:multistatus xmlns:D="DAV:">'
            + "".join(f'<D:response><D:href>/c/{i}.ics</D:href><D:propstat><D:prop><D:getetag>"e{i}"</D:getetag>'
                      "</D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat></D:response>" for i in range(3))
            + '<D:response><D:href>/c/gone.ics</D:href><D:status>HTTP/1.1 404 Not Found</D:status></D:response>'
              "<D:sync-token>http://example.org/sync/7</D:sync-token></D:multistatus>").encode()
    stream = dx.MultistatusStream(body)
    read = [(r.href, r.status, r.text(dx.GETETAG)) for r in stream.responses()]
    whole = dx.parse_multistatus(body)
    assert read == [(r.href, r.status, r.text(dx.GETETAG)) for r in whole.responses]
    assert stream.sync_token == whole.sync_token == "http://example.org/sync/7"
    for bad in (b"<html><body>oops</body></html>", b"<D:multistatus xmlns:D='DAV:'><D:response>"):
        with pytest.raises(dx.XMLError):
            list(dx.MultistatusStream(bad).responses())

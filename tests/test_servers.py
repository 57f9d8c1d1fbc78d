"""The test-server harness (devtools/servers.py) against the REAL servers.

Per CalDAV kind: the server answers, principal discovery with the ``caldav``
library works, a VEVENT round-trips, sync-collection works -- and the quirks
documented in devtools/servers.py still hold (so the documentation can't rot).
Azurite: a table entity and a queue message round-trip with the Azure SDKs.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit
from xml.etree import ElementTree as ET

import pytest

from devtools import servers
from devtools.servers import CalDAVServer, HTTPResult

DAV = "{DAV:}"


def vevent(uid: str, summary: str = "davbridge test", extra: str = "") -> str:
    return (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//davbridge//tests//EN\r\n"
        f"BEGIN:VEVENT\r\nUID:{uid}\r\nDTSTAMP:20250101T000000Z\r\n"
        "DTSTART:20250102T100000Z\r\nDTEND:20250102T110000Z\r\n"
        f"SUMMARY:{summary}\r\n{extra}END:VEVENT\r\nEND:VCALENDAR\r\n"
    )


def put_event(
    srv: CalDAVServer, calendar_url: str, uid: str | None = None, name: str | None = None, extra: str = ""
) -> tuple[str, HTTPResult, str]:
    uid = uid or str(uuid.uuid4())
    href = urljoin(calendar_url, name or f"{uid}.ics")
    res = srv.request(
        "PUT", href, body=vevent(uid, extra=extra), headers={"Content-Type": "text/calendar; charset=utf-8"}
    )
    return href, res, uid


def sync_report(
    srv: CalDAVServer, calendar_url: str, token: str = "", limit: int | None = None
) -> HTTPResult:
    limit_xml = f"<D:limit><D:nresults>{limit}</D:nresults></D:limit>" if limit else ""
    body = (
        '<?xml version="1.0" encoding="utf-8"?><D:sync-collection xmlns:D="DAV:">'
        f"<D:sync-token>{token}</D:sync-token><D:sync-level>1</D:sync-level>{limit_xml}"
        "<D:prop><D:getetag/></D:prop></D:sync-collection>"
    )
    return srv.request("REPORT", calendar_url, body=body)


def parse_sync(res: HTTPResult) -> tuple[str, dict[str, str | None], bool]:
    """(new token, {decoded href path: etag or None if 404}, saw a 507 for the collection)."""
    assert res.status == 207, (res.status, res.text[:500])
    root = res.xml()
    token = root.findtext(f"{DAV}sync-token") or ""
    members: dict[str, str | None] = {}
    truncated = False
    for resp in root.iter(f"{DAV}response"):
        href = unquote(urlsplit(resp.findtext(f"{DAV}href") or "").path)
        status = resp.findtext(f"{DAV}status") or ""
        if " 507 " in status:
            truncated = True
        elif " 404 " in status:
            members[href] = None
        else:
            members[href] = resp.findtext(f".//{DAV}getetag")
    return token, members, truncated


def path_of(url: str) -> str:
    return unquote(urlsplit(url).path)


def caldav_client(srv: CalDAVServer) -> Any:
    caldav = pytest.importorskip("caldav")
    # auth_type="basic": send credentials up front -- Cyrus never challenges (see quirks).
    return caldav.DAVClient(url=srv.url, username=srv.username, password=srv.password, auth_type="basic")


# --------------------------------------------------------------------------- CalDAV basics


def test_server_answers(caldav_server: CalDAVServer) -> None:
    res = caldav_server.request(
        "PROPFIND",
        caldav_server.url,
        headers={"Depth": "0"},
        body=servers._propfind_body("<D:current-user-principal/>"),
    )
    assert res.status == 207
    principal = res.xml().findtext(f".//{DAV}current-user-principal/{DAV}href")
    assert principal and path_of(principal) == path_of(caldav_server.principal_url)
    opts = caldav_server.request("OPTIONS", caldav_server.calendar_url)
    assert opts.status == 200
    assert "calendar-access" in opts.headers.get("dav", "")


def test_unauthenticated_and_wrong_password(caldav_server: CalDAVServer) -> None:
    body = servers._propfind_body("<D:current-user-principal/>")
    anon = servers.dav_request("PROPFIND", caldav_server.url, headers={"Depth": "0"}, body=body)
    assert anon.status == servers.UNAUTHENTICATED_PROPFIND[caldav_server.kind]
    wrong = servers.dav_request(
        "PROPFIND",
        caldav_server.url,
        headers={"Depth": "0"},
        body=body,
        auth=(caldav_server.username, "wrong-password"),
    )
    assert wrong.status == servers.WRONG_PASSWORD_PROPFIND[caldav_server.kind]


def test_discovery_with_caldav_library(caldav_server: CalDAVServer) -> None:
    client = caldav_client(caldav_server)
    principal = client.principal()
    assert path_of(str(principal.url)) == path_of(caldav_server.principal_url)
    urls = {path_of(str(c.url)) for c in principal.calendars()}
    assert path_of(caldav_server.calendar_url) in urls


def test_put_and_read_back_with_caldav_library(caldav_server: CalDAVServer, fresh_calendar: str) -> None:
    client = caldav_client(caldav_server)
    cal = client.calendar(url=fresh_calendar)
    assert list(cal.events()) == []
    uid = str(uuid.uuid4())
    cal.add_event(vevent(uid, summary="Round trip"))
    events = cal.events()
    assert len(events) == 1
    got = cal.get_event_by_uid(uid)
    assert "SUMMARY:Round trip" in got.data
    assert str(got.icalendar_component["uid"]) == uid


def test_fresh_calendars_are_empty_and_isolated(caldav_server: CalDAVServer, fresh_calendar: str) -> None:
    other = caldav_server.new_calendar("other calendar")
    assert other != fresh_calendar
    put_event(caldav_server, fresh_calendar)
    _, members, _ = parse_sync(sync_report(caldav_server, other))
    assert members == {}
    _, members, _ = parse_sync(sync_report(caldav_server, fresh_calendar))
    assert len(members) == 1


def test_put_etag_matches_get_and_propfind(caldav_server: CalDAVServer, fresh_calendar: str) -> None:
    href, res, uid = put_event(caldav_server, fresh_calendar)
    assert res.status == 201
    got = caldav_server.request("GET", href)
    assert got.status == 200
    etag = got.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"'), etag  # strong, quoted
    if servers.ETAG_ON_PUT[caldav_server.kind]:
        assert res.headers.get("etag") == etag
    else:
        assert "etag" not in res.headers
    pf = caldav_server.request(
        "PROPFIND", href, headers={"Depth": "0"}, body=servers._propfind_body("<D:getetag/>")
    )
    assert pf.xml().findtext(f".//{DAV}getetag") == etag
    verbatim = got.text.replace("\r\n", "\n") == vevent(uid).replace("\r\n", "\n")
    assert verbatim == servers.STORES_BODY_VERBATIM[caldav_server.kind]
    # overwrite -> 204 with a new etag; stale If-Match -> 412
    upd = caldav_server.request(
        "PUT",
        href,
        body=vevent(uid, "changed"),
        headers={"Content-Type": "text/calendar; charset=utf-8", "If-Match": etag},
    )
    assert upd.status == 204
    stale = caldav_server.request(
        "PUT",
        href,
        body=vevent(uid, "again"),
        headers={"Content-Type": "text/calendar; charset=utf-8", "If-Match": etag},
    )
    assert stale.status == 412


def test_etag_on_put_of_scheduling_object(caldav_server: CalDAVServer, fresh_calendar: str) -> None:
    extra = "ORGANIZER:mailto:bob@example.com\r\nATTENDEE;PARTSTAT=NEEDS-ACTION:mailto:carol@example.com\r\n"
    _, res, _ = put_event(caldav_server, fresh_calendar, extra=extra)
    assert res.status == 201
    assert ("etag" in res.headers) == servers.ETAG_ON_PUT_SCHEDULING[caldav_server.kind]


def test_href_encoding(caldav_server: CalDAVServer, fresh_calendar: str) -> None:
    put_event(caldav_server, fresh_calendar, name="a%20b%40c%2Bd.ics")
    res = caldav_server.request(
        "PROPFIND", fresh_calendar, headers={"Depth": "1"}, body=servers._propfind_body("<D:getetag/>")
    )
    hrefs = [h.text or "" for h in res.xml().iter(f"{DAV}href")]
    member = [h for h in hrefs if unquote(h).endswith("/a b@c+d.ics")]
    assert len(member) == 1, hrefs
    assert member[0].startswith("/")  # absolute path, no scheme/host
    assert ("%40" in member[0]) == servers.HREF_AT_SIGN_ENCODED[caldav_server.kind]
    assert "%20" in member[0] and "%2B" in member[0]


def test_duplicate_uid_in_other_calendar(caldav_server: CalDAVServer, fresh_calendar: str) -> None:
    other = caldav_server.new_calendar("dup uid")
    _, first, uid = put_event(caldav_server, fresh_calendar)
    assert first.status == 201
    _, second, _ = put_event(caldav_server, other, uid=uid)
    assert second.status == servers.DUPLICATE_UID_OTHER_CALENDAR[caldav_server.kind]


# --------------------------------------------------------------------------- sync-collection


def test_sync_collection(caldav_server: CalDAVServer, fresh_calendar: str) -> None:
    token0, members, _ = parse_sync(sync_report(caldav_server, fresh_calendar))
    assert token0 and members == {}
    href, put, _ = put_event(caldav_server, fresh_calendar)
    assert put.status == 201
    token1, members, _ = parse_sync(sync_report(caldav_server, fresh_calendar, token0))
    assert token1 != token0
    assert list(members) == [path_of(href)] and members[path_of(href)]
    assert caldav_server.request("DELETE", href).status in (200, 204)
    token2, members, _ = parse_sync(sync_report(caldav_server, fresh_calendar, token1))
    assert members == {path_of(href): None}  # deleted -> 404 entry
    # an old (once issued) token still works
    _, members, _ = parse_sync(sync_report(caldav_server, fresh_calendar, token0))
    assert all(v is None for v in members.values())
    assert token2


@pytest.mark.parametrize("bogus", ["http://example.invalid/never-issued", "garbage"])
def test_sync_collection_bogus_token(caldav_server: CalDAVServer, fresh_calendar: str, bogus: str) -> None:
    res = sync_report(caldav_server, fresh_calendar, bogus)
    assert res.status == servers.BOGUS_SYNC_TOKEN[caldav_server.kind], res.text[:300]
    assert res.xml().find(f"{DAV}valid-sync-token") is not None


def test_sync_collection_limit(caldav_server: CalDAVServer, fresh_calendar: str) -> None:
    for _ in range(4):
        put_event(caldav_server, fresh_calendar)
    token, members, truncated = parse_sync(sync_report(caldav_server, fresh_calendar, limit=2))
    if truncated:
        behaviour = "honoured"
        seen = dict(members)
        for _ in range(5):  # continue until no 507
            token, more, truncated = parse_sync(sync_report(caldav_server, fresh_calendar, token, limit=2))
            seen.update(more)
            if not truncated:
                break
        assert len(seen) == 4
    elif len(members) == 4:
        behaviour = "ignored"
    else:
        behaviour = "truncates"
        assert len(members) == 2
        _, rest, _ = parse_sync(sync_report(caldav_server, fresh_calendar, token))
        assert rest == {}  # the other two are silently lost
    assert behaviour == servers.SYNC_LIMIT[caldav_server.kind]


def test_sync_with_caldav_library(caldav_server: CalDAVServer, fresh_calendar: str) -> None:
    client = caldav_client(caldav_server)
    cal = client.calendar(url=fresh_calendar)
    initial = cal.get_objects_by_sync_token(load_objects=False, disable_fallback=True)
    assert len(list(initial)) == 0
    cal.add_event(vevent(str(uuid.uuid4())))
    changed = cal.get_objects_by_sync_token(
        sync_token=initial.sync_token, load_objects=True, disable_fallback=True
    )
    objs = list(changed)
    assert len(objs) == 1 and "BEGIN:VEVENT" in objs[0].data


# --------------------------------------------------------------------------- harness behaviour


def _port_closed(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "", parts.port or 80), timeout=0.5):
            return False
    except OSError:
        return True


def test_start_and_stop_standalone(caldav_kind: str, tmp_path: Path) -> None:
    """A second instance starts next to the session one; stop() kills the whole process group."""
    srv = servers.start_caldav(caldav_kind, tmp_path / caldav_kind)
    try:
        assert (
            srv.request(
                "PROPFIND",
                srv.calendar_url,
                headers={"Depth": "0"},
                body=servers._propfind_body("<D:resourcetype/>"),
            ).status
            == 207
        )
        assert srv._proc is not None
        pgid = srv._proc.popen.pid
    finally:
        srv.stop()
    assert _port_closed(srv.url)
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)
    if caldav_kind == "cyrus":
        assert not (tmp_path / caldav_kind / "cyrus-root").exists()  # private /tmp tree removed


def test_start_failure_reports_log_tail(tmp_path: Path) -> None:
    proc = servers._ManagedProcess(
        "dummy",
        [sys.executable, "-c", "print('boom: bad config'); raise SystemExit(3)"],
        tmp_path / "dummy.log",
    )
    with pytest.raises(servers.ServerStartError) as info:
        proc.wait_until(lambda: False, 5, "never")
    msg = str(info.value)
    assert "exited with code 3" in msg and "boom: bad config" in msg


def test_start_timeout_is_bounded(tmp_path: Path) -> None:
    proc = servers._ManagedProcess(
        "sleeper", [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "sleeper.log"
    )
    t0 = time.monotonic()
    with pytest.raises(servers.ServerStartError, match="timed out"):
        proc.wait_until(lambda: False, 0.5, "nothing")
    assert time.monotonic() - t0 < 10
    assert proc.popen.poll() is not None  # killed on failure


def test_stale_cyrus_trees_are_swept(tmp_path: Path) -> None:
    stale, running, young = (tmp_path / f"davbridge-cyrus-{n}" for n in ("stale", "running", "young"))
    for d in (stale, running, young):
        d.mkdir()
    (running / "master.pid").write_text(f"{os.getpid()}\n")
    old = time.time() - 7200
    for d in (stale, running):
        os.utime(d, (old, old))
    servers._remove_stale_dirs(tmp_path, "davbridge-cyrus-")
    assert not stale.exists() and running.exists() and young.exists()


def test_missing_azurite_binary_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(servers.ServerStartError, match="install_test_deps"):
        servers.start_azurite(tmp_path, azurite_bin=tmp_path / "nope" / "azurite")


def test_cli_prints_details_and_stops_on_sigterm(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "devtools.servers", "xandikos", "--workdir", str(tmp_path / "cli")],
        cwd=servers.REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("}"):
                break
        info = json.loads("".join(lines))
        assert info["kind"] == "xandikos" and info["calendar_url"].startswith("http://127.0.0.1:")
    finally:
        proc.terminate()
        proc.wait(15)
    assert proc.returncode == 0
    assert _port_closed(info["url"])


# --------------------------------------------------------------------------- Azurite


def test_azurite_table_entity(azurite: servers.AzuriteServer) -> None:
    tables = pytest.importorskip("azure.data.tables")
    service = tables.TableServiceClient.from_connection_string(azurite.connection_string)
    name = "t" + uuid.uuid4().hex[:12]
    table = service.create_table(name)
    table.create_entity({"PartitionKey": "p", "RowKey": "r1", "value": 42})
    got = table.get_entity("p", "r1")
    assert got["value"] == 42
    assert name in [t.name for t in service.list_tables()]


def test_azurite_queue_message(azurite: servers.AzuriteServer) -> None:
    queues = pytest.importorskip("azure.storage.queue")
    queue = queues.QueueClient.from_connection_string(azurite.connection_string, "q" + uuid.uuid4().hex[:12])
    queue.create_queue()
    queue.send_message("hello davbridge")
    msgs = list(queue.receive_messages())
    assert [m.content for m in msgs] == ["hello davbridge"]


def test_azurite_blob_endpoint_answers(azurite: servers.AzuriteServer) -> None:
    res = servers.dav_request("GET", azurite.blob_url + "?comp=list")
    # unauthenticated -> an Azure-style XML error, but from a live blob service
    assert res.status in (200, 400, 403), res.status
    assert "x-ms-request-id" in res.headers
    ET.fromstring(res.body)

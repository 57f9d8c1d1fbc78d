"""Administration through the public paths (the ``davbridge`` CLI and the ``admin_api`` HTTP
function), on both state backends (SQLite and Table Storage on Azurite), against the Graph
stand-in and real CalDAV servers. Server-specific behaviour (401, read-only calendars) runs on
every CalDAV server; the rest on Radicale, once per state backend."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import azure.functions as func
import pytest
from admin_world import AdminWorld, make_admin_world
from scenario_world import SECRET, TENANT, day, graph_time, ical_time

from devtools.graphsim import GraphSim
from devtools.servers import READONLY_CALENDARS, CalDAVServer
from sync_core.state.base import AuditEntry


@pytest.fixture(params=["sqlite", "azurite"])
def admin_world(request: pytest.FixtureRequest, graphsim: GraphSim, _server_pool: Any, tmp_path: Path,
                monkeypatch: pytest.MonkeyPatch) -> Iterator[AdminWorld]:
    """Radicale, state on each backend."""
    server: CalDAVServer = _server_pool.caldav("radicale")
    azurite = request.getfixturevalue("azurite") if request.param == "azurite" else None
    calendar = server.new_calendar(request.node.name[:50])
    yield make_admin_world(request.param, graphsim, server, calendar, tmp_path, monkeypatch, azurite)


@pytest.fixture
def server_world(graphsim: GraphSim, caldav_server: CalDAVServer, fresh_calendar: str, tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> AdminWorld:
    """Each CalDAV server, SQLite state."""
    return make_admin_world("sqlite", graphsim, caldav_server, fresh_calendar, tmp_path, monkeypatch, None)


# -- 1. onboarding: both sides checked at once -------------------------------------------------------
def test_onboarding_checks_both_sides_with_actionable_reasons(server_world: AdminWorld) -> None:
    w = server_world
    out = w.add("--caldav-calendar", w.caldav.calendar_url)
    assert f"{w.upn}: authenticated; 1 calendar pairing(s)" in out

    other = w.new_user()
    if w.server.kind == "xandikos":  # no authentication over plain HTTP: any password works
        assert "authenticated" in w.add(upn=other, password="wrong-password")
    else:
        out = w.add(upn=other, password="wrong-password", expect=1)
        assert "authentication failed: CalDAV 401" in out
    unknown = "nobody-here@contoso.test"
    out = w.add(upn=unknown, expect=1)
    assert "authentication failed: unknown mailbox" in out
    out = w.add("--caldav-calendar", w.caldav.calendar_url + "missing-calendar/", upn=w.new_user(), expect=1)
    assert "calendar not found" in out
    _, listed, _ = w.cli("users", "list", "--json")
    statuses = {u["upn"]: u["auth_status"] for u in json.loads(listed)}
    assert statuses[w.upn] == "authenticated"
    assert statuses[other].startswith("authentication failed: CalDAV 401") or w.server.kind == "xandikos"


def test_onboarding_over_http_and_secrets_stay_out_of_state_and_logs(admin_world: AdminWorld,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    w = admin_world
    caplog.set_level("DEBUG")
    body = {"upn": w.upn, "caldav_url": w.server.url, "caldav_username": w.server.username,
            "caldav_password": w.server.password, "caldav_calendar": w.caldav.calendar_url}
    status, answer = w.http("POST", "users", body)
    assert status == 200 and answer["auth_status"] == "authenticated" and len(answer["pairings"]) == 1
    status, answer = w.http("POST", "users", {**body, "upn": w.new_user(), "caldav_password": "nope"})
    assert status == 422 and answer["auth_status"].startswith("authentication failed: CalDAV 401")
    status, answer = w.http("POST", "users", {"upn": "x"})
    assert status == 400
    # The password is in the secrets store only.
    secrets = json.loads((w.home / "secrets.json").read_text())
    assert w.server.password in secrets.values()
    assert w.server.password not in caplog.text and "nope" not in caplog.text
    if w.backend == "sqlite":
        with sqlite3.connect(w.home / "state.db") as db:
            dump = "\n".join(db.iterdump())
        assert w.server.password not in dump


# -- 2. calendar discovery and pairing ---------------------------------------------------------------
def test_all_calendars_are_paired_and_read_only_ones_are_one_way(server_world: AdminWorld) -> None:
    w = server_world
    extra = w.server.new_calendar(f"Team {w.upn[:13]}")
    read_only = w.server.new_readonly_calendar(f"Holidays {w.upn[:13]}")
    out = w.add("--caldav-calendar", w.caldav.calendar_url, "--calendars", "all")
    assert "authenticated" in out
    _, listed, _ = w.cli("pairings", "list", w.upn, "--json")
    pairings = {p["caldav_calendar"].rstrip("/"): p for p in json.loads(listed)}
    assert pairings[w.caldav.calendar_url.rstrip("/")]["m365_calendar"] == "primary"
    team = pairings[extra.rstrip("/")]
    assert team["direction"] == "two-way" and team["m365_calendar"] != "primary"
    names = {c["name"]: c for c in w.graph.calendars(w.upn)}
    assert f"Team {w.upn[:13]}" in names  # a new Microsoft 365 calendar with the same name
    if READONLY_CALENDARS[w.server.kind]:
        assert read_only is not None
        holidays = pairings[read_only.rstrip("/")]
        assert holidays["caldav_read_only"] and holidays["direction"] == "caldav-to-m365"
        _, _, err = w.cli("pairings", "set", w.upn, holidays["pairing_id"], "--direction", "two-way", expect=2)
        assert "read-only" in err
    else:
        assert read_only is None and all(not p["caldav_read_only"] for p in pairings.values())
    w.cli("sync", "--user", w.upn, "--no-progress")


def test_pairings_add_change_remove_and_a_read_only_m365_calendar(admin_world: AdminWorld) -> None:
    w = admin_world
    w.add("--caldav-calendar", w.caldav.calendar_url)
    shared = w.sim.add_calendar(w.upn, "Shared with me", can_edit=False)
    target = w.server.new_calendar(f"From shared {w.upn[:12]}")
    w.cli("pairings", "add", w.upn, "--caldav-calendar", target, "--m365-calendar", "Shared with me")
    status, pairings = w.http("GET", f"users/{w.upn}/pairings")
    assert status == 200 and len(pairings) == 2
    ro = next(p for p in pairings if p["m365_calendar"] == shared)
    assert ro["m365_read_only"] and ro["direction"] == "m365-to-caldav"

    status, changed = w.http("PATCH", f"users/{w.upn}/pairings/{ro['pairing_id']}",
                             {"settings": {"window_past_days": 7, "conflict_policy": "m365-wins"}})
    assert status == 200 and changed["window_past_days"] == 7 and changed["conflict_policy"] == "m365-wins"
    status, err = w.http("PATCH", f"users/{w.upn}/pairings/{ro['pairing_id']}",
                         {"settings": {"window_future_days": 100}})
    assert status == 400 and "365" in err["error"]
    status, err = w.http("PATCH", f"users/{w.upn}/pairings/{ro['pairing_id']}", {"settings": {"direction": "two-way"}})
    assert status == 400 and "read-only" in err["error"]
    status, _ = w.http("DELETE", f"users/{w.upn}/pairings/{ro['pairing_id']}")
    assert status == 200
    _, listed, _ = w.cli("pairings", "list", w.upn, "--json")
    assert [p["pairing_id"] for p in json.loads(listed)] == [p["pairing_id"] for p in pairings if p is not ro]
    assert w.http("DELETE", f"users/{w.upn}/pairings/nope")[0] == 404


# -- 3. per-pairing settings -------------------------------------------------------------------------
def _primary(w: AdminWorld) -> str:
    _, listed, _ = w.cli("pairings", "list", w.upn, "--json")
    return str(json.loads(listed)[0]["pairing_id"])


def test_first_sync_cap_copies_upcoming_events_first_then_the_recent_past(admin_world: AdminWorld) -> None:
    w = admin_world
    for offset in (-20, -10, -2, 1, 3, 5):
        w.caldav.put(f"Event {offset:+d}", ical_time(day(offset)), ical_time(day(offset, 10)))
    w.add("--caldav-calendar", w.caldav.calendar_url, "--first-sync-cap", "4")
    _, out, err = w.cli("sync", "--user", w.upn)
    assert "created_m365=4" in out
    assert f"sync {w.upn}" in err and "4/4" in err  # the progress bar (plain lines off a terminal)
    subjects = sorted(e["subject"] for e in w.graph.events(w.upn))
    assert subjects == sorted(["Event +1", "Event +3", "Event +5", "Event -2"])
    _, status, _ = w.cli("status", "--user", w.upn)
    assert "first-sync cap 4" in status
    _, out, _ = w.cli("sync", "--user", w.upn, "--no-progress")  # the cap is for the first sync only
    assert "no changes" in out


def test_only_new_events_and_privacy_copies(admin_world: AdminWorld) -> None:
    w = admin_world
    old = w.caldav.put("Old appointment", ical_time(day(2)), ical_time(day(2, 10)))
    time.sleep(1.1)  # LAST-MODIFIED has whole seconds
    w.add("--caldav-calendar", w.caldav.calendar_url, "--only-new", "--direction", "caldav-to-m365",
          "--privacy-title", "Blocked")
    time.sleep(1.1)
    w.caldav.put("Therapy session", ical_time(day(3)), ical_time(day(3, 10)), description="private notes",
                 location="Dr. Who's office")
    w.cli("sync", "--user", w.upn, "--no-progress")
    (copy,) = w.graph.events(w.upn)  # the old appointment stays where it is
    assert copy["subject"] == "Blocked" and copy["sensitivity"] == "private" and copy["showAs"] == "busy"
    assert "private notes" not in json.dumps(copy) and "Who" not in json.dumps(copy)
    assert copy["start"]["dateTime"].startswith(day(3).strftime("%Y-%m-%dT%H"))
    # Privacy copies never flow back: two-way is refused while a privacy title is set.
    _, _, err = w.cli("pairings", "set", w.upn, _primary(w), "--direction", "two-way", expect=2)
    assert "one-way" in err
    # The old one, changed after enabling, is copied now.
    (obj,) = w.caldav.by_summary("Old appointment")
    w.caldav.put("Old appointment", ical_time(day(2, 11)), ical_time(day(2, 12)), href=old,
                 uid=obj.prop("UID"), etag=obj.etag)
    w.cli("sync", "--user", w.upn, "--no-progress")
    assert [e["subject"] for e in w.graph.events(w.upn)] == ["Blocked", "Blocked"]


# -- 4. enable / disable, bulk CSV ---------------------------------------------------------------------
def test_disable_keeps_data_or_removes_only_the_service_copies(admin_world: AdminWorld) -> None:
    w = admin_world
    w.caldav.put("Written in CalDAV", ical_time(day(2)), ical_time(day(2, 10)))
    w.graph.create(w.upn, "Written in Outlook", graph_time(day(3)), graph_time(day(3, 10)))
    w.add("--caldav-calendar", w.caldav.calendar_url)
    w.cli("sync", "--user", w.upn, "--no-progress")
    assert len(w.caldav.objects()) == 2 and len(w.graph.events(w.upn)) == 2
    second = w.new_user()
    w.add("--caldav-calendar", w.server.new_calendar(f"second {second[:13]}"), upn=second)

    _, out, _ = w.cli("users", "disable", w.upn, second)
    assert f"{w.upn}: disabled" in out and len(w.caldav.objects()) == 2  # data kept by default
    status, answer = w.http("POST", f"users/{w.upn}/enable")
    assert status == 200 and answer["result"] == "enabled"
    status, answer = w.http("POST", f"users/{w.upn}/disable", params={"remove_copies": "true"})
    assert status == 200 and "removed 2 copies" in answer["detail"]
    assert [o.prop("SUMMARY") for o in w.caldav.objects()] == ["Written in CalDAV"]
    assert [e["subject"] for e in w.graph.events(w.upn)] == ["Written in Outlook"]
    # Re-enabled later, it starts afresh and copies both again, without duplicates.
    w.cli("users", "enable", w.upn)
    w.cli("sync", "--user", w.upn, "--no-progress")
    assert len(w.caldav.objects()) == 2 and len(w.graph.events(w.upn)) == 2
    assert w.http("POST", "users/nobody@contoso.test/disable")[0] == 404


def test_bulk_csv_import_is_idempotent_and_export_has_no_passwords(admin_world: AdminWorld, tmp_path: Path) -> None:
    w = admin_world
    a, b, c = w.new_user(), w.new_user(), w.new_user()
    rows = [
        "upn,caldav_url,caldav_username,caldav_password,direction,window_future_days",
        f"{a},{w.server.url},{w.server.username},{w.server.password},two-way,400",
        f"{b},{w.server.url},{w.server.username},{w.server.password},m365-to-caldav,",
        f"{c},{w.server.url},{w.server.username},wrong-password,,",
        f"{a.upper()},{w.server.url},{w.server.username},x,,",
    ]
    csv_path = tmp_path / "users.csv"
    csv_path.write_text("\r\n".join(rows) + "\r\n", encoding="utf-8")
    _, out, err = w.cli("users", "import", str(csv_path), "--report", str(tmp_path / "report.csv"), expect=1)
    report = (tmp_path / "report.csv").read_text()
    assert "created" in out and "CalDAV 401" in report and "already on row 2" in report
    assert w.server.password not in out + err + report
    assert "import" in err  # the progress bar (plain lines when not on a terminal)
    _rc, out, _ = w.cli("users", "import", str(csv_path), expect=1)  # again: nothing changes
    assert out.count("unchanged") >= 2 and "created" not in out.split("unchanged")[0].splitlines()[-1]

    status, exported = w.http("GET", "users/export")
    assert status == 200 and w.server.password not in exported
    lines = exported.strip().splitlines()
    assert lines[0].startswith("upn,") and "caldav_password" not in lines[0]
    assert any(line.startswith(a) and ",400," in line for line in lines)
    status, reports = w.http("POST", "users/import", raw=exported.encode())
    results = {r["user"]: r for r in reports}
    assert status == 207  # c still fails (its password is wrong); a and b are unchanged
    assert results[a]["result"] == results[b]["result"] == "unchanged"
    assert results[c]["result"] == "failed" and "CalDAV 401" in results[c]["detail"]


# -- 5. status -----------------------------------------------------------------------------------------
def test_status_table_and_json_with_counts_and_next_run(admin_world: AdminWorld) -> None:
    w = admin_world
    w.caldav.put("Status check", ical_time(day(2)), ical_time(day(2, 10)))
    w.add("--caldav-calendar", w.caldav.calendar_url)
    w.cli("sync", "--user", w.upn, "--no-progress")
    _, table, _ = w.cli("status", "--user", w.upn)
    header = table.splitlines()[0]
    for column in ("last run", "last success", "next run", "changes", "quarantined", "error"):
        assert column in header
    assert "created_m365=1" in table
    _, raw, _ = w.cli("status", "--json")
    (row,) = [r for r in json.loads(raw) if r["user"] == w.upn]
    assert row["counts"] == {"created_m365": 1} and row["ok"] is True and row["last_error"] is None
    next_run = datetime.fromisoformat(row["next_run"])
    assert timedelta(0) < next_run - datetime.now(UTC) <= timedelta(minutes=5)
    status, answer = w.http("GET", f"users/{w.upn}/status")
    assert status == 200 and answer["pairings"][0]["counts"] == {"created_m365": 1}
    status, rows = w.http("GET", "status")
    assert status == 200 and any(r["user"] == w.upn for r in rows)


# -- 6. audit ------------------------------------------------------------------------------------------
def test_audit_log_records_every_write_and_ages_out(admin_world: AdminWorld) -> None:
    w = admin_world
    w.add("--caldav-calendar", w.caldav.calendar_url)
    w.caldav.put("Audit me", ical_time(day(2)), ical_time(day(2, 10)))
    w.cli("sync", "--user", w.upn, "--no-progress")
    (ev,) = w.graph.events(w.upn)
    w.graph.update(w.upn, ev["id"], subject="Audit me, edited")
    status, _answer = w.http("POST", f"users/{w.upn}/sync", params={"wait": "true"})
    assert status == 200
    _, raw, _ = w.cli("audit", "--user", w.upn, "--json")
    entries = json.loads(raw)
    assert [(e["side"], e["action"], e["trigger"]) for e in entries] == [("m365", "create", "manual"),
                                                                          ("caldav", "update", "manual")]
    assert entries[0]["hash_before"] is None and entries[0]["hash_after"]
    assert entries[1]["hash_before"] and entries[1]["hash_after"] != entries[1]["hash_before"]
    assert entries[0]["item_id"] == ev["id"]
    _, table, _ = w.cli("audit", "--user", w.upn)
    assert "create" in table and "update" in table
    status, listed = w.http("GET", f"users/{w.upn}/audit",
                            params={"since": (datetime.now(UTC) - timedelta(minutes=10)).isoformat()})
    assert status == 200 and len(listed) == 2
    # Rows older than 30 days go.
    services = w.services()
    services.store.append_audit([AuditEntry(w.upn, "p", "m365", "create", "old", None, "h", "timer",
                                            datetime.now(UTC) - timedelta(days=31))])
    assert len(services.store.audit(w.upn, datetime.now(UTC) - timedelta(days=40), datetime.now(UTC))) == 3
    _, out, _ = w.cli("audit", "--purge")
    assert "aged out 1 audit rows" in out
    assert len(json.loads(w.cli("audit", "--user", w.upn, "--json")[1])) == 2


# -- 7. credentials ------------------------------------------------------------------------------------
def test_rotate_and_revoke(admin_world: AdminWorld) -> None:
    w = admin_world
    w.add("--caldav-calendar", w.caldav.calendar_url)
    _, _, err = w.cli("users", "password", w.upn, "--password-stdin", stdin="not-the-password\n", expect=2)
    assert "CalDAV 401" in err and "not-the-password" not in err
    _, out, _ = w.cli("users", "password", w.upn, "--password-stdin", stdin=w.server.password + "\n")
    assert "authenticated" in out
    status, answer = w.http("PUT", f"users/{w.upn}/password", {"password": w.server.password})
    assert status == 200 and answer["auth_status"] == "authenticated"

    status, answer = w.http("POST", f"users/{w.upn}/revoke")
    assert status == 200 and answer["auth_status"] == "revoked" and answer["enabled"] is False
    secrets = json.loads((w.home / "secrets.json").read_text())
    assert w.server.password not in secrets.values()
    # Re-adding the user later works (the secret name is written again).
    assert "authenticated" in w.add("--caldav-calendar", w.caldav.calendar_url)


def test_app_only_with_a_certificate(admin_world: AdminWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    import trustme

    w = admin_world
    leaf = trustme.CA(key_type=trustme.KeyType.RSA).issue_cert("davbridge", key_type=trustme.KeyType.RSA)
    pem = leaf.private_key_pem.bytes().decode() + leaf.cert_chain_pems[0].bytes().decode()
    client = f"cert-{w.upn[:13]}"
    w.sim.register_app(TENANT, client, certificate_pem=leaf.cert_chain_pems[0].bytes().decode())
    monkeypatch.setenv("GRAPH_CLIENT_ID", client)
    secrets = json.loads((w.home / "secrets.json").read_text())
    secrets.pop("graph-client-secret")
    (w.home / "secrets.json").write_text(json.dumps(secrets))
    w.cli("secrets", "set", "graph-client-certificate", stdin=pem)
    w.graph.create(w.upn, "Via certificate", graph_time(day(2)), graph_time(day(2, 10)))
    assert "authenticated" in w.add("--caldav-calendar", w.caldav.calendar_url)
    w.cli("sync", "--user", w.upn, "--no-progress")
    assert [o.prop("SUMMARY") for o in w.caldav.objects()] == ["Via certificate"]


def test_delegated_user_signs_in_through_the_http_functions(admin_world: AdminWorld,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import requests

    import function_app

    w = admin_world
    callback = "https://davbridge.example/api/auth/callback"
    client = f"deleg-{w.upn[:13]}"
    w.sim.register_app(TENANT, client, client_secret=SECRET, redirect_uris=[callback])
    monkeypatch.setenv("GRAPH_CLIENT_ID", client)
    monkeypatch.setenv("DAVBRIDGE_AUTH_REDIRECT_URL", callback)
    out = w.add("--caldav-calendar", w.caldav.calendar_url, "--delegated")
    assert "waiting for the user's sign-in" in out and "auth/start?" in out
    _, link, _ = w.cli("users", "auth-link", w.upn)
    query = dict(parse_qsl(urlsplit(link.strip()).query))

    start = function_app.auth_start.build().get_user_function()
    finish = function_app.auth_callback.build().get_user_function()
    forged = start(func.HttpRequest("GET", "/api/auth/start", body=b"", params={**query, "upn": "ceo@contoso.test"}))
    assert forged.status_code == 403
    to_microsoft = start(func.HttpRequest("GET", "/api/auth/start", body=b"", params=query))
    assert to_microsoft.status_code == 302
    # The browser at Microsoft's sign-in page, which sends it back to the callback.
    answer = requests.get(to_microsoft.headers["Location"], allow_redirects=False, verify=w.sim.ca_path, timeout=10)
    assert answer.status_code == 302 and answer.headers["Location"].startswith(callback + "?")
    back = dict(parse_qsl(urlsplit(answer.headers["Location"]).query))
    done = finish(func.HttpRequest("GET", "/api/auth/callback", body=b"", params=back))
    assert done.status_code == 200 and "authenticated" in done.get_body().decode()
    replay = finish(func.HttpRequest("GET", "/api/auth/callback", body=b"", params=back))
    assert replay.status_code == 400

    # Syncs with the user's own token now.
    w.graph.create(w.upn, "Delegated sync", graph_time(day(2)), graph_time(day(2, 10)))
    w.cli("sync", "--user", w.upn, "--no-progress")
    assert [o.prop("SUMMARY") for o in w.caldav.objects()] == ["Delegated sync"]
    token_requests = [r for r in w.sim.request_log if r["path"].endswith("/oauth2/v2.0/token")]
    assert token_requests
    # Revoked: the token cache is gone from the secrets store.
    from sync_core.delegated import token_cache_secret_name

    assert token_cache_secret_name(w.upn) in json.loads((w.home / "secrets.json").read_text())
    w.cli("users", "revoke", w.upn)
    assert token_cache_secret_name(w.upn) not in json.loads((w.home / "secrets.json").read_text())


def test_onboarding_names_a_missing_graph_permission(admin_world: AdminWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    w = admin_world
    client = f"noperm-{w.upn[:13]}"
    w.sim.register_app(TENANT, client, client_secret=SECRET, roles=())
    monkeypatch.setenv("GRAPH_CLIENT_ID", client)
    out = w.add("--caldav-calendar", w.caldav.calendar_url, expect=1)
    assert "authentication failed: missing Graph permission" in out and "Calendars.ReadWrite" in out
    # Consent granted later: `users check` turns the status around.
    w.sim.register_app(TENANT, client, client_secret=SECRET)
    status, answer = w.http("POST", f"users/{w.upn}/check")
    assert status == 200 and answer["auth_status"] == "authenticated"

"""``make demo``: the embedded defaults end to end, on 127.0.0.1 only.

Starts the Graph stand-in and one Radicale per demo user, enables two users with the real
``davbridge`` command (SQLite state, 0600 secrets file), seeds events on both sides, syncs,
then edits one event on both sides and deletes one, syncs again, and prints a before/after
table per user. Everything it started is stopped at the end.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from devtools.clients import CalDAVUserApp, GraphUserApp
from devtools.graphsim import GraphSim
from devtools.servers import CalDAVServer, start_radicale

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".demo"
TENANT, CLIENT_ID, SECRET = "demo-tenant", "davbridge-demo", "demo-client-secret"
USERS = ("ada@contoso.test", "grace@contoso.test")


def davbridge(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    print(f"\n$ davbridge {' '.join(args)}")
    done = subprocess.run([sys.executable, "-m", "sync_core", *args], env=env, input=stdin, text=True,
                          capture_output=True, timeout=300, check=False)
    out = done.stdout + done.stderr
    print(out.rstrip())
    if done.returncode != 0:
        raise SystemExit(f"davbridge {args[0]} failed with exit code {done.returncode}")
    return out


def at(days: int, hour: int) -> datetime:
    return datetime.now(UTC).replace(hour=hour, minute=0, second=0, microsecond=0) + timedelta(days=days)


def gtime(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S")


def itime(value: datetime) -> str:
    return value.strftime("%Y%m%dT%H%M%SZ")


def snapshot(graph: GraphUserApp, upn: str, caldav: CalDAVUserApp) -> dict[str, tuple[str, str]]:
    """subject -> (what Microsoft 365 shows, what CalDAV shows)."""
    rows: dict[str, list[str]] = {}
    for e in graph.events(upn):
        when = "all day " + e["start"]["dateTime"][:10] if e["isAllDay"] else e["start"]["dateTime"][:16] + " UTC"
        where = e.get("location", {}).get("displayName") or ""
        rows.setdefault(e["subject"], ["-", "-"])[0] = when + (f" @ {where}" if where else "")
    for o in caldav.objects():
        start = o.prop("DTSTART") or ""
        when = f"all day {start[:4]}-{start[4:6]}-{start[6:8]}" if len(start) == 8 else start
        where = o.prop("LOCATION") or ""
        rows.setdefault(o.prop("SUMMARY") or "(no title)", ["-", "-"])[1] = when + (f" @ {where}" if where else "")
    return {k: (v[0], v[1]) for k, v in sorted(rows.items())}


def print_table(title: str, rows: dict[str, tuple[str, str]]) -> None:
    headers = ("event", "Microsoft 365", "CalDAV")
    data = [(k, *v) for k, v in rows.items()] or [("(none)", "", "")]
    widths = [max(len(r[i]) for r in [headers, *data]) for i in range(3)]
    print(f"\n{title}")
    print("  " + "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("  " + "  ".join("-" * w for w in widths))
    for row in data:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


def main() -> int:
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    servers: list[CalDAVServer] = []
    sim = GraphSim(state_dir=WORK / "graphsim").start()
    try:
        sim.register_app(TENANT, CLIENT_ID, client_secret=SECRET)
        print(f"Graph stand-in: {sim.graph_url} (test CA {sim.ca_path})")
        env = dict(os.environ, DAVBRIDGE_HOME=str(WORK / "davbridge"), GRAPH_BASE_URL=sim.graph_url,
                   GRAPH_AUTHORITY_HOST=sim.authority_host, GRAPH_TENANT_ID=TENANT, GRAPH_CLIENT_ID=CLIENT_ID,
                   GRAPH_CA_BUNDLE=sim.ca_path, PYTHONPATH=str(ROOT))
        graph = GraphUserApp(sim.graph_url, sim.authority_host, TENANT, CLIENT_ID, SECRET, sim.ca_path)
        calendars: dict[str, CalDAVUserApp] = {}
        for upn in USERS:
            sim.add_user(upn)
            name = upn.split("@")[0]
            server = start_radicale(WORK / f"radicale-{name}", username=name, password=f"{name}-app-password")
            servers.append(server)
            print(f"Radicale for {name}: {server.url}")
            calendars[upn] = CalDAVUserApp(server, server.calendar_url)

        davbridge(env, "secrets", "set", "graph-client-secret", stdin=SECRET + "\n")
        for upn, server in zip(USERS, servers, strict=True):
            davbridge(dict(env, DAVBRIDGE_CALDAV_PASSWORD=server.password), "users", "add", upn,
                      "--caldav-url", server.url, "--caldav-user", server.username)

        ids: dict[str, dict[str, str]] = {upn: {} for upn in USERS}
        for upn in USERS:
            cal = calendars[upn]
            ids[upn]["standup"] = graph.create(upn, "Team standup", gtime(at(1, 8)), gtime(at(1, 8) + timedelta(
                minutes=15)), tz="UTC", location="Teams")["id"]
            ids[upn]["review"] = graph.create(upn, "Quarterly review", gtime(at(3, 13)), gtime(at(3, 14)),
                                              body="Numbers for Q4", location="Room 4")["id"]
            ids[upn]["lunch"] = graph.create(upn, "Lunch with Sam", gtime(at(2, 11)), gtime(at(2, 12)))["id"]
            cal.put("Dentist", itime(at(4, 7)), itime(at(4, 8)), location="Main street 1")
            cal.put("Conference", at(10, 0).strftime("%Y%m%d"), at(12, 0).strftime("%Y%m%d"))
        before = {upn: snapshot(graph, upn, calendars[upn]) for upn in USERS}

        davbridge(env, "sync", "--dry-run")
        davbridge(env, "sync")

        print("\nNow edits between syncs: 'Quarterly review' changed in Outlook AND in the CalDAV app"
              " (the CalDAV edit is newer: newest-wins); 'Lunch with Sam' deleted in Outlook.")
        for upn in USERS:
            cal = calendars[upn]
            graph.update(upn, ids[upn]["review"], subject="Quarterly review (moved)")
            time.sleep(1.1)  # LAST-MODIFIED has whole seconds: make the CalDAV edit clearly newer
            (obj,) = [o for o in cal.objects() if o.prop("SUMMARY") == "Quarterly review"]
            cal.put("Quarterly review", itime(at(3, 15)), itime(at(3, 16)), uid=obj.prop("UID"), href=obj.href,
                    etag=obj.etag, location="Room 7", description="Numbers for Q4")
            graph.delete(upn, ids[upn]["lunch"])
        davbridge(env, "sync")
        davbridge(env, "sync")  # nothing changed: no writes
        davbridge(env, "status")

        for upn in USERS:
            print_table(f"{upn}: before the first sync", before[upn])
            print_table(f"{upn}: after", snapshot(graph, upn, calendars[upn]))
        print(f"\nState: {WORK / 'davbridge' / 'state.db'}; secrets file mode "
              f"{oct((WORK / 'davbridge' / 'secrets.json').stat().st_mode & 0o777)}")
        return 0
    finally:
        for server in servers:
            server.stop()
        sim.stop()
        print("\nstopped Radicale and the Graph stand-in")


if __name__ == "__main__":
    raise SystemExit(main())

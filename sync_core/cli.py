"""The ``davbridge`` command (also ``python -m sync_core``): the admin's tool.

    davbridge users add UPN --caldav-url URL --caldav-user NAME [--caldav-calendar URL]
                            [--calendars primary|all] [--delegated] [PAIRING SETTINGS]
    davbridge users list [--json] | check UPN | enable UPN... | disable UPN... [--remove-copies]
    davbridge users import FILE.csv [--report FILE] | export [FILE]
    davbridge users password UPN | revoke UPN | auth-link UPN
    davbridge pairings list UPN [--json] | add UPN --caldav-calendar URL [--m365-calendar X] [SETTINGS]
    davbridge pairings set UPN PAIRING [SETTINGS] | remove UPN PAIRING [--remove-copies]
    davbridge confirm UPN PAIRING       (after the mass-deletion guard stopped a pairing)
    davbridge sync [--user UPN] [--dry-run]
    davbridge status [--user UPN] [--json]
    davbridge audit --user UPN [--since ISO] [--until ISO] [--json] | audit --purge
    davbridge secrets set NAME          (value from stdin: the Graph client secret, ...)
    davbridge --version

    PAIRING SETTINGS: --direction --conflict-policy --window-past-days --window-future-days
                      --first-sync-cap --only-new/--all-events --privacy-title TITLE / --no-privacy

Passwords are read from stdin or ``DAVBRIDGE_CALDAV_PASSWORD``, never from arguments (they
would show in the process list and shell history). Exit codes: 0 done, 1 something failed
(printed), 2 the request itself was refused.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sync_core import admin
from sync_core.bulk import decode_csv, format_report_table, report_csv
from sync_core.engine import PairingOutcome, UserOutcome
from sync_core.errors import DavbridgeError
from sync_core.progress import Progress
from sync_core.reconcile import CreateOn, DeleteOn, Plan, Quarantine, UpdateOn
from sync_core.services import Services
from sync_core.settings import Settings
from sync_core.state.base import ConflictPolicy, Direction


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    services = Services(Settings.from_env())
    try:
        return int(args.func(services, args) or 0)
    except DavbridgeError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    finally:
        services.close()


def _settings_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--direction", choices=[d.value for d in Direction])
    p.add_argument("--conflict-policy", choices=[c.value for c in ConflictPolicy])
    p.add_argument("--window-past-days", type=int, help="days back (default 30)")
    p.add_argument("--window-future-days", type=int, help="days ahead (default 365, at least 365)")
    p.add_argument("--first-sync-cap", type=int, help="events copied by the first sync (default 5000)")
    new = p.add_mutually_exclusive_group()
    new.add_argument("--only-new", dest="only_new", action="store_true", default=None,
                     help="copy only events created or changed from now on")
    new.add_argument("--all-events", dest="only_new", action="store_false", help="copy every event")
    privacy = p.add_mutually_exclusive_group()
    privacy.add_argument("--privacy-title", help="copies are busy-only blocks with this title (one-way only)")
    privacy.add_argument("--no-privacy", dest="privacy_title", action="store_const", const="",
                         help="copies carry the full event again")


def _settings(args: argparse.Namespace) -> admin.PairingSettings:
    return admin.PairingSettings(
        Direction(args.direction) if args.direction else None,
        ConflictPolicy(args.conflict_policy) if args.conflict_policy else None,
        args.window_past_days, args.window_future_days, args.first_sync_cap, args.only_new, args.privacy_title)


class _VersionAction(argparse.Action):
    """``--version``: print the installed package's version and exit (looked up only when asked)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        from importlib import metadata

        try:
            version = metadata.version("davbridge")
        except metadata.PackageNotFoundError:  # a source tree that was never installed
            version = "unknown"
        print(f"davbridge {version}")
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="davbridge", description="Microsoft 365 <-> CalDAV calendar sync")
    parser.add_argument("--version", action=_VersionAction, nargs=0, help="print the version and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (no event contents)")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    users = sub.add_parser("users", help="onboard, list, enable, disable, import users").add_subparsers(
        required=True, metavar="ACTION")
    add = users.add_parser("add", help="onboard a mailbox and its CalDAV account (both checked now)")
    add.add_argument("upn", help="Microsoft 365 user principal name")
    add.add_argument("--caldav-url", required=True, help="CalDAV server or principal URL")
    add.add_argument("--caldav-user", required=True, help="CalDAV user name")
    add.add_argument("--caldav-calendar", help="CalDAV calendar URL (default: discover the primary)")
    add.add_argument("--calendars", choices=["primary", "all"], default="primary",
                     help="pair only the primary calendars, or every CalDAV calendar too")
    add.add_argument("--delegated", action="store_true",
                     help="use the user's own sign-in instead of the application permission")
    add.add_argument("--password-stdin", action="store_true", help="read the CalDAV password from stdin")
    _settings_arguments(add)
    add.set_defaults(func=_users_add)
    lst = users.add_parser("list", help="list users")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=_users_list)
    check = users.add_parser("check", help="check both sides of a user again")
    check.add_argument("upn")
    check.set_defaults(func=_users_check)
    for name, enabled in (("enable", True), ("disable", False)):
        p = users.add_parser(name, help=f"{name} sync for users")
        p.add_argument("upns", nargs="+", metavar="UPN")
        if not enabled:
            p.add_argument("--remove-copies", action="store_true",
                           help="also delete the copies the service made (never events a person created)")
        p.set_defaults(func=_users_enable, enabled=enabled)
    imp = users.add_parser("import", help="onboard or update users from a CSV file (idempotent)")
    imp.add_argument("file", type=Path)
    imp.add_argument("--report", type=Path, help="write the per-row report as CSV here")
    imp.set_defaults(func=_users_import)
    exp = users.add_parser("export", help="write every user as CSV (no passwords)")
    exp.add_argument("file", nargs="?", type=Path)
    exp.set_defaults(func=_users_export)
    pw = users.add_parser("password", help="rotate a user's CalDAV app password (checked first)")
    pw.add_argument("upn")
    pw.add_argument("--password-stdin", action="store_true")
    pw.set_defaults(func=_users_password)
    rev = users.add_parser("revoke", help="stop syncing a user and remove its secrets")
    rev.add_argument("upn")
    rev.set_defaults(func=_users_revoke)
    link = users.add_parser("auth-link", help="the sign-in link for a delegated user")
    link.add_argument("upn")
    link.set_defaults(func=_users_auth_link)

    pairings = sub.add_parser("pairings", help="list, add, change, remove calendar pairings").add_subparsers(
        required=True, metavar="ACTION")
    pl = pairings.add_parser("list", help="a user's pairings")
    pl.add_argument("upn")
    pl.add_argument("--json", action="store_true")
    pl.set_defaults(func=_pairings_list)
    pa = pairings.add_parser("add", help="pair one more CalDAV calendar")
    pa.add_argument("upn")
    pa.add_argument("--caldav-calendar", required=True)
    pa.add_argument("--m365-calendar", help="'primary', a calendar id or name (default: a new one, same name)")
    _settings_arguments(pa)
    pa.set_defaults(func=_pairings_add)
    ps = pairings.add_parser("set", help="change a pairing's settings")
    ps.add_argument("upn")
    ps.add_argument("pairing")
    _settings_arguments(ps)
    ps.set_defaults(func=_pairings_set)
    pr = pairings.add_parser("remove", help="remove a pairing (both calendars keep their events)")
    pr.add_argument("upn")
    pr.add_argument("pairing")
    pr.add_argument("--remove-copies", action="store_true", help="also delete the copies the service made")
    pr.set_defaults(func=_pairings_remove)

    confirm = sub.add_parser("confirm", help="let a pairing stopped by the mass-deletion guard delete once")
    confirm.add_argument("upn")
    confirm.add_argument("pairing")
    confirm.set_defaults(func=_confirm)

    sync = sub.add_parser("sync", help="sync enabled users now")
    sync.add_argument("--user", help="only this user (enabled or not)")
    sync.add_argument("--dry-run", action="store_true", help="print the plan, write nothing")
    sync.add_argument("--no-progress", action="store_true", help="no progress bar")
    sync.set_defaults(func=_sync)

    status = sub.add_parser("status", help="last run, next run and counts per user and pairing")
    status.add_argument("--user")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=_status)

    aud = sub.add_parser("audit", help="every write the service made (30 days)")
    aud.add_argument("--user")
    aud.add_argument("--since", type=_instant, help="ISO date or time (UTC if no zone)")
    aud.add_argument("--until", type=_instant)
    aud.add_argument("--json", action="store_true")
    aud.add_argument("--purge", action="store_true", help="age out rows older than 30 days now")
    aud.set_defaults(func=_audit)

    secrets = sub.add_parser("secrets", help="store a secret").add_subparsers(required=True, metavar="ACTION")
    put = secrets.add_parser("set", help="store NAME with the value read from stdin")
    put.add_argument("name")
    put.set_defaults(func=_secrets_set)
    return parser


def _instant(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# -- users ------------------------------------------------------------------------------------
def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    env = os.environ.get("DAVBRIDGE_CALDAV_PASSWORD")
    if env is not None:
        return env
    return getpass.getpass("CalDAV password: ")


def _users_add(services: Services, args: argparse.Namespace) -> int:
    password = _read_password(args.password_stdin)
    report = admin.add_user(services, args.upn, caldav_url=args.caldav_url, caldav_username=args.caldav_user,
                            caldav_password=password, caldav_calendar=args.caldav_calendar,
                            calendars=args.calendars, settings=_settings(args),
                            auth_mode="delegated" if args.delegated else "app")
    user = report.user
    print(f"{user.upn}: {user.auth_status}; {len(report.pairings)} calendar pairing(s)")
    for p in report.pairings:
        print(f"  {p.pairing_id}  {p.name}: Microsoft 365 {p.m365_calendar_id or 'primary'} "
              f"<-> {p.caldav_calendar_url} ({p.direction.value})")
    for note in report.notes:
        print(f"  note: {note}")
    if user.auth_mode == "delegated":
        print(f"  the user signs in at: {services.delegated_sign_in_link(user.upn)}")
    return 0 if report.ok else 1


def _users_list(services: Services, args: argparse.Namespace) -> int:
    users = services.store.list_users()
    if args.json:
        print(json.dumps([{"upn": u.upn, "enabled": u.enabled, "auth_status": u.auth_status,
                           "auth_mode": u.auth_mode, "caldav_url": u.caldav_url,
                           "caldav_username": u.caldav_username} for u in users], indent=2))
        return 0
    _table(["user", "enabled", "auth", "caldav"],
           [[u.upn, "yes" if u.enabled else "no", u.auth_status, u.caldav_url] for u in users])
    return 0


def _users_check(services: Services, args: argparse.Namespace) -> int:
    user = admin.check_user(services, args.upn)
    print(f"{user.upn}: {user.auth_status}")
    return 0 if user.auth_status == admin.AUTHENTICATED else 1


def _users_enable(services: Services, args: argparse.Namespace) -> int:
    failed = 0
    for upn in args.upns:
        report = admin.set_enabled(services, upn, args.enabled, remove_mirrors=getattr(args, "remove_copies", False))
        if report.result == "failed":
            print(f"{upn}: {report.detail}", file=sys.stderr)
            failed += 1
            continue
        print(f"{report.upn}: {'enabled' if args.enabled else 'disabled'}" + (f"; {report.detail}" if report.detail
                                                                               else ""))
    return 1 if failed else 0


def _users_import(services: Services, args: argparse.Namespace) -> int:
    text = decode_csv(args.file.read_bytes())
    rows = max(0, sum(1 for line in text.splitlines() if line.strip()) - 1)
    with Progress(rows, "import") as bar:
        reports = admin.import_users(services, text, on_row=lambda _: bar.advance())
    print(format_report_table(reports))
    if args.report:
        args.report.write_text(report_csv(reports), encoding="utf-8")
    return 1 if any(r.result == "failed" for r in reports) else 0


def _users_export(services: Services, args: argparse.Namespace) -> int:
    text = admin.export_users(services)
    if args.file:
        args.file.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def _users_password(services: Services, args: argparse.Namespace) -> int:
    user = admin.rotate_password(services, args.upn, _read_password(args.password_stdin))
    print(f"{user.upn}: new CalDAV password stored; {user.auth_status}")
    return 0


def _users_revoke(services: Services, args: argparse.Namespace) -> int:
    user = admin.revoke(services, args.upn)
    print(f"{user.upn}: revoked (disabled, secrets removed; both calendars keep their events)")
    return 0


def _users_auth_link(services: Services, args: argparse.Namespace) -> int:
    admin.get_user(services, args.upn)
    print(services.delegated_sign_in_link(args.upn))
    return 0


# -- pairings -------------------------------------------------------------------------------------
def _pairings_list(services: Services, args: argparse.Namespace) -> int:
    admin.get_user(services, args.upn)
    pairings = [admin.pairing_json(p) for p in services.store.list_pairings(args.upn)]
    if args.json:
        print(json.dumps(pairings, indent=2))
        return 0
    _table(["pairing", "name", "microsoft 365", "caldav", "direction", "policy", "window", "cap", "privacy"],
           [[p["pairing_id"], p["name"], p["m365_calendar"], p["caldav_calendar"],
             p["direction"] + (" (read-only side)" if p["m365_read_only"] or p["caldav_read_only"] else ""),
             p["conflict_policy"], f"-{p['window_past_days']}/+{p['window_future_days']}d",
             str(p["first_sync_cap"]), p["privacy_title"] or "-"] for p in pairings])
    return 0


def _pairings_add(services: Services, args: argparse.Namespace) -> int:
    p = admin.add_pairing(services, args.upn, args.caldav_calendar, m365_calendar=args.m365_calendar,
                          settings=_settings(args))
    print(f"{p.pairing_id}  {p.name}: Microsoft 365 {p.m365_calendar_id or 'primary'} <-> {p.caldav_calendar_url} "
          f"({p.direction.value})")
    return 0


def _pairings_set(services: Services, args: argparse.Namespace) -> int:
    p = admin.change_pairing(services, args.upn, args.pairing, _settings(args))
    print(json.dumps(admin.pairing_json(p), indent=2))
    return 0


def _pairings_remove(services: Services, args: argparse.Namespace) -> int:
    print(admin.remove_pairing(services, args.upn, args.pairing, remove_mirrors=args.remove_copies))
    return 0


def _confirm(services: Services, args: argparse.Namespace) -> int:
    p = admin.confirm_deletions(services, args.upn, args.pairing)
    print(f"{p.pairing_id}: the next run may delete up to {p.confirmed_deletes} items per side (once)")
    return 0


# -- sync -------------------------------------------------------------------------------------
def _sync(services: Services, args: argparse.Namespace) -> int:
    upns = [args.user] if args.user else [u.upn for u in services.store.list_users(enabled_only=True)]
    failed = 0
    for upn in upns:
        with services.user_lease(upn) as held:
            if not held:
                print(f"{upn}: skipped, another sync of this user is running")
                failed += 1
                continue
            with Progress(None, f"sync {upn}", enabled=False if args.no_progress or args.dry_run else None) as bar:
                outcome = services.sync_user(upn, dry_run=args.dry_run, trigger="manual",
                                             on_plan=_plan_total(bar), on_write=_advance(bar))
        _print_outcome(outcome, dry_run=args.dry_run)
        failed += 0 if outcome.ok else 1
    return 1 if failed else 0


def _plan_total(bar: Progress) -> Callable[[Plan], None]:
    return lambda plan: bar.set_total(len(plan.writes()))


def _advance(bar: Progress) -> Callable[[Any, Any], None]:
    return lambda _action, _written: bar.advance()


def _print_outcome(outcome: UserOutcome, *, dry_run: bool) -> None:
    for p in outcome.pairings:
        head = f"{outcome.upn} [{p.pairing.name}]"
        if p.error:
            print(f"{head}: FAILED {p.error}")
            continue
        if dry_run:
            print(f"{head}: plan (dry run, nothing written)")
            for line in _describe_plan(p):
                print(f"  {line}")
            continue
        assert p.applied is not None
        counts = ", ".join(f"{k}={v}" for k, v in sorted(p.applied.counts.items())) or "no changes"
        extra = f"; {len(p.applied.failed)} deferred" if p.applied.failed else ""
        extra += f"; {p.applied.quarantined} quarantined" if p.applied.quarantined else ""
        print(f"{head}: {counts}{extra}")


def _describe_plan(outcome: PairingOutcome) -> list[str]:
    plan: Plan | None = outcome.plan
    assert plan is not None
    lines = []
    for action in plan.actions:
        if isinstance(action, CreateOn | UpdateOn):
            verb = "create" if isinstance(action, CreateOn) else "update"
            lines.append(f"{verb} on {action.target.value}: link {action.link.link_id[:12]} ({action.reason})")
        elif isinstance(action, DeleteOn):
            lines.append(f"delete on {action.target.value}: link {action.link.link_id[:12]}")
        elif isinstance(action, Quarantine):
            lines.append(f"quarantine {action.side.value} {action.item_id}: {action.reason}")
    if plan.over_first_sync_cap:
        lines.append(f"not copied: {plan.over_first_sync_cap} events over the first-sync cap")
    return lines or ["nothing to do"]


# -- status and audit ------------------------------------------------------------------------------
def _status(services: Services, args: argparse.Namespace) -> int:
    rows = admin.status_rows(services, [args.user] if args.user else None)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        if r["user_error"]:
            print(f"error: {r['user']}: {r['user_error']}")
    _table(["user", "enabled", "auth", "pairing", "last run", "last success", "next run", "changes",
            "quarantined", "error"],
           [[r["user"], "yes" if r["enabled"] else "no", r["auth_status"], r["pairing"] or "-",
             r.get("last_run") or "-", r.get("last_success") or "-", r["next_run"] or "-",
             ", ".join(f"{k}={v}" for k, v in sorted(r.get("counts", {}).items())) or "-",
             str(r.get("quarantined", 0)), r.get("last_error") or ""] for r in rows])
    for r in rows:
        for notice in r.get("notices", []):
            print(f"note: {r['user']} / {r['pairing']}: {notice}")
    return 0


def _audit(services: Services, args: argparse.Namespace) -> int:
    if args.purge:
        print(f"aged out {services.purge_audit()} audit rows")
        return 0
    if not args.user:
        print("error: --user is required (or --purge)", file=sys.stderr)
        return 2
    entries = [admin.audit_json(e) for e in admin.audit(services, args.user, args.since, args.until)]
    if args.json:
        print(json.dumps(entries, indent=2))
        return 0
    _table(["time", "pairing", "side", "action", "item", "before", "after", "trigger"],
           [[e["at"][:19], e["pairing_id"][:12], e["side"], e["action"], _short(e["item_id"]),
             (e["hash_before"] or "-")[:12], (e["hash_after"] or "-")[:12], e["trigger"]] for e in entries])
    return 0


def _short(value: Any) -> str:
    text = str(value or "-")
    return text if len(text) <= 40 else text[:18] + "..." + text[-18:]


def _secrets_set(services: Services, args: argparse.Namespace) -> int:
    # All of stdin (a certificate PEM has many lines); a prompt when typing at a terminal.
    value = sys.stdin.read().rstrip("\r\n") if not sys.stdin.isatty() else getpass.getpass(f"{args.name}: ")
    services.secrets.set(args.name, value)
    print(f"stored secret {args.name}")
    return 0


def _table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


if __name__ == "__main__":
    raise SystemExit(main())

"""The ``davbridge`` command (also ``python -m sync_core``).

    davbridge users add UPN --caldav-url URL --caldav-user NAME [--caldav-calendar URL]
    davbridge users list [--json] | enable UPN... | disable UPN...
    davbridge sync [--user UPN] [--dry-run]
    davbridge status [--json]
    davbridge secrets set NAME          (value from stdin: the Graph client secret, ...)

Passwords are read from stdin or ``DAVBRIDGE_CALDAV_PASSWORD``, never from arguments (they
would show in the process list and shell history).
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from sync_core.engine import PairingOutcome, UserOutcome
from sync_core.errors import DavbridgeError
from sync_core.reconcile import CreateOn, DeleteOn, Quarantine, UpdateOn
from sync_core.services import Services
from sync_core.settings import Settings


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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="davbridge", description="Microsoft 365 <-> CalDAV calendar sync")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (no event contents)")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    users = sub.add_parser("users", help="add, list, enable, disable users").add_subparsers(required=True,
                                                                                             metavar="ACTION")
    add = users.add_parser("add", help="enable sync for a mailbox and its CalDAV account")
    add.add_argument("upn", help="Microsoft 365 user principal name")
    add.add_argument("--caldav-url", required=True, help="CalDAV server or principal URL")
    add.add_argument("--caldav-user", required=True, help="CalDAV user name")
    add.add_argument("--caldav-calendar", help="CalDAV calendar URL (default: discover the primary)")
    add.add_argument("--password-stdin", action="store_true", help="read the CalDAV password from stdin")
    add.set_defaults(func=_users_add)
    lst = users.add_parser("list", help="list users")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=_users_list)
    for name, enabled in (("enable", True), ("disable", False)):
        p = users.add_parser(name, help=f"{name} sync for users")
        p.add_argument("upns", nargs="+", metavar="UPN")
        p.set_defaults(func=_users_enable, enabled=enabled)

    sync = sub.add_parser("sync", help="sync enabled users now")
    sync.add_argument("--user", help="only this user (enabled or not)")
    sync.add_argument("--dry-run", action="store_true", help="print the plan, write nothing")
    sync.set_defaults(func=_sync)

    status = sub.add_parser("status", help="last run per user and pairing")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=_status)

    secrets = sub.add_parser("secrets", help="store a secret").add_subparsers(required=True, metavar="ACTION")
    put = secrets.add_parser("set", help="store NAME with the value read from stdin")
    put.add_argument("name")
    put.set_defaults(func=_secrets_set)
    return parser


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
    user, pairings = services.add_user(args.upn, caldav_url=args.caldav_url, caldav_username=args.caldav_user,
                                       caldav_password=password, caldav_calendar=args.caldav_calendar)
    print(f"{user.upn}: {user.auth_status}; {len(pairings)} calendar pairing(s)")
    for p in pairings:
        print(f"  {p.name}: Microsoft 365 {p.m365_calendar_id or 'primary'} <-> {p.caldav_calendar_url}")
    return 0


def _users_list(services: Services, args: argparse.Namespace) -> int:
    users = services.store.list_users()
    if args.json:
        print(json.dumps([{"upn": u.upn, "enabled": u.enabled, "auth_status": u.auth_status,
                           "caldav_url": u.caldav_url, "caldav_username": u.caldav_username} for u in users],
                         indent=2))
        return 0
    _table(["user", "enabled", "auth", "caldav"],
           [[u.upn, "yes" if u.enabled else "no", u.auth_status, u.caldav_url] for u in users])
    return 0


def _users_enable(services: Services, args: argparse.Namespace) -> int:
    missing = 0
    for upn in args.upns:
        user = services.set_enabled(upn, args.enabled)
        if user is None:
            print(f"{upn}: unknown user", file=sys.stderr)
            missing += 1
            continue
        print(f"{user.upn}: {'enabled' if args.enabled else 'disabled'}")
    return 1 if missing else 0


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
            outcome = services.sync_user(upn, dry_run=args.dry_run, trigger="manual")
        _print_outcome(outcome, dry_run=args.dry_run)
        failed += 0 if outcome.ok else 1
    return 1 if failed else 0


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
    assert outcome.plan is not None
    lines = []
    for action in outcome.plan.actions:
        if isinstance(action, CreateOn | UpdateOn):
            verb = "create" if isinstance(action, CreateOn) else "update"
            lines.append(f"{verb} on {action.target.value}: link {action.link.link_id[:12]} ({action.reason})")
        elif isinstance(action, DeleteOn):
            lines.append(f"delete on {action.target.value}: link {action.link.link_id[:12]}")
        elif isinstance(action, Quarantine):
            lines.append(f"quarantine {action.side.value} {action.item_id}: {action.reason}")
    return lines or ["nothing to do"]


# -- status -----------------------------------------------------------------------------------
def _status(services: Services, args: argparse.Namespace) -> int:
    rows: list[dict[str, Any]] = []
    user_errors: list[str] = []
    for user in services.store.list_users():
        if user.last_error:
            when = user.last_error_at.isoformat(timespec="seconds") if user.last_error_at else "?"
            user_errors.append(f"error: {user.upn} ({when}): {user.last_error}")
        for pairing in services.store.list_pairings(user.upn):
            st = services.store.get_status(pairing.pairing_id)
            rows.append({
                "user": user.upn, "enabled": user.enabled, "auth_status": user.auth_status,
                "pairing": pairing.name, "direction": pairing.direction.value,
                "last_run": st.finished_at.isoformat(timespec="seconds") if st and st.finished_at else None,
                "last_success": (st.last_success_at.isoformat(timespec="seconds")
                                 if st and st.last_success_at else None),
                "ok": st.ok if st else None, "counts": st.counts if st else {},
                "quarantined": st.quarantined if st else 0, "last_error": st.error if st else None,
                "notices": st.notices if st else [], "user_error": user.last_error,
            })
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for line in user_errors:
        print(line)
    _table(["user", "enabled", "auth", "pairing", "last run", "last success", "changes", "quarantined", "error"],
           [[r["user"], "yes" if r["enabled"] else "no", r["auth_status"], r["pairing"], r["last_run"] or "-",
             r["last_success"] or "-", ", ".join(f"{k}={v}" for k, v in sorted(r["counts"].items())) or "-",
             str(r["quarantined"]), r["last_error"] or ""] for r in rows])
    for r in rows:
        for notice in r["notices"]:
            print(f"note: {r['user']} / {r['pairing']}: {notice}")
    return 0


def _secrets_set(services: Services, args: argparse.Namespace) -> int:
    value = sys.stdin.readline().rstrip("\r\n") if not sys.stdin.isatty() else getpass.getpass(f"{args.name}: ")
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

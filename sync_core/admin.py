"""Administration: what the ``davbridge`` CLI and the admin HTTP functions both do.

One function per admin operation, on :class:`~sync_core.services.Services`, so the CLI and
HTTP give the same results on both state backends:

- onboarding (both sides checked at once, with a reason an admin can act on), calendar
  discovery and pairing (primary <-> primary; each extra CalDAV calendar gets a Microsoft 365
  calendar of the same name; read-only calendars become one-way pairings);
- pairing settings, enable / disable (optionally removing the copies the service made, never
  anything a user authored), bulk CSV import / export, password rotation and revocation;
- status (with the next timer run) and the audit log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from sync_core import checks
from sync_core.bulk import RowReport, UserRow, export_users_csv, parse_users_csv
from sync_core.errors import DavbridgeError, PreconditionFailed
from sync_core.schedule import next_run
from sync_core.services import Services
from sync_core.sides.base import SideName
from sync_core.state.base import (
    AUDIT_RETENTION,
    AuditEntry,
    ConflictPolicy,
    Direction,
    Pairing,
    UserRecord,
    utcnow,
)

log = logging.getLogger("davbridge.admin")

AUTHENTICATED = "authenticated"
WAITING_FOR_SIGN_IN = "waiting for the user's sign-in"
MIN_FUTURE_DAYS = 365


class AdminError(DavbridgeError):
    """An admin request that cannot be carried out (unknown user, invalid setting...)."""


@dataclass
class PairingSettings:
    """Per-pairing settings an admin may set; None = leave as it is (or the default)."""

    direction: Direction | None = None
    conflict_policy: ConflictPolicy | None = None
    window_past_days: int | None = None
    window_future_days: int | None = None
    first_sync_cap: int | None = None
    only_new: bool | None = None
    privacy_title: str | None = None  # "" turns privacy copies off

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> PairingSettings:
        """From JSON / CSV-like values (strings accepted); :class:`AdminError` when invalid."""
        def integer(key: str) -> int | None:
            value = data.get(key)
            if value in (None, ""):
                return None
            try:
                return int(value)
            except (TypeError, ValueError) as exc:
                raise AdminError(f"{key} must be a whole number") from exc

        try:
            direction = Direction(data["direction"]) if data.get("direction") else None
            policy = ConflictPolicy(data["conflict_policy"]) if data.get("conflict_policy") else None
        except ValueError as exc:
            raise AdminError(str(exc)) from exc
        only_new = data.get("only_new")
        if isinstance(only_new, str):
            only_new = only_new.strip().lower() in ("1", "true", "yes")
        title = data.get("privacy_title")
        return cls(direction, policy, integer("window_past_days"), integer("window_future_days"),
                   integer("first_sync_cap"), bool(only_new) if only_new is not None else None,
                   None if title is None else str(title))

    def apply(self, pairing: Pairing, *, now: datetime) -> Pairing:
        """The pairing with these settings, validated; read-only sides stay unwritten."""
        p = replace(pairing)
        if self.direction is not None:
            p.direction = self.direction
        if self.conflict_policy is not None:
            p.conflict_policy = self.conflict_policy
        if self.window_past_days is not None:
            if not 0 <= self.window_past_days <= 3650:
                raise AdminError("window_past_days must be between 0 and 3650")
            p.window_past_days = self.window_past_days
        if self.window_future_days is not None:
            if not MIN_FUTURE_DAYS <= self.window_future_days <= 3650:
                raise AdminError(f"window_future_days must be between {MIN_FUTURE_DAYS} and 3650")
            p.window_future_days = self.window_future_days
        if self.first_sync_cap is not None:
            if self.first_sync_cap < 0:
                raise AdminError("first_sync_cap must not be negative")
            p.first_sync_cap = self.first_sync_cap
        if self.only_new is not None:
            p.only_changes_after = (p.only_changes_after or now) if self.only_new else None
        if self.privacy_title is not None:
            p.privacy_title = self.privacy_title.strip() or None
        _check_pairing(p)
        return p


def _check_pairing(p: Pairing) -> None:
    if p.caldav_read_only and p.m365_read_only:
        raise AdminError("both calendars are read-only: nothing can be synced")
    if p.caldav_read_only and p.direction is not Direction.CALDAV_TO_M365:
        raise AdminError("the CalDAV calendar is read-only: the direction must be caldav-to-m365")
    if p.m365_read_only and p.direction is not Direction.M365_TO_CALDAV:
        raise AdminError("the Microsoft 365 calendar is read-only: the direction must be m365-to-caldav")
    if p.privacy_title is not None and p.direction is Direction.TWO_WAY:
        raise AdminError("privacy copies need a one-way direction (the busy blocks must never flow back)")
    if p.privacy_title is not None and len(p.privacy_title) > 255:
        raise AdminError("privacy_title is longer than 255 characters")


@dataclass
class OnboardReport:
    user: UserRecord
    pairings: list[Pairing] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.user.auth_status in (AUTHENTICATED, WAITING_FOR_SIGN_IN)

    def as_json(self) -> dict[str, Any]:
        return {"user": self.user.upn, "enabled": self.user.enabled, "auth_status": self.user.auth_status,
                "auth_mode": self.user.auth_mode, "pairings": [pairing_json(p) for p in self.pairings],
                "notes": self.notes}


def pairing_json(p: Pairing) -> dict[str, Any]:
    return {"pairing_id": p.pairing_id, "name": p.name, "m365_calendar": p.m365_calendar_id or "primary",
            "caldav_calendar": p.caldav_calendar_url, "direction": p.direction.value,
            "conflict_policy": p.conflict_policy.value, "window_past_days": p.window_past_days,
            "window_future_days": p.window_future_days, "first_sync_cap": p.first_sync_cap,
            "only_changes_after": p.only_changes_after.isoformat() if p.only_changes_after else None,
            "privacy_title": p.privacy_title, "m365_read_only": p.m365_read_only,
            "caldav_read_only": p.caldav_read_only, "blocked_deletes": p.blocked_deletes,
            "confirmed_deletes": p.confirmed_deletes}


# -- users -----------------------------------------------------------------------------------------
def get_user(services: Services, upn: str) -> UserRecord:
    user = services.store.get_user(upn)
    if user is None:
        raise AdminError(f"unknown user {upn}")
    return user


def add_user(services: Services, upn: str, *, caldav_url: str, caldav_username: str, caldav_password: str,
             caldav_calendar: str | None = None, calendars: str = "primary",
             settings: PairingSettings | None = None, auth_mode: str = "app") -> OnboardReport:
    """Onboard (or re-onboard) a user: store the password, check both sides now, pair the
    calendars. A failed check is recorded as ``authentication failed: <reason>``, not raised."""
    if "@" not in upn or len(upn) > 320:
        raise AdminError("the user must be a Microsoft 365 user principal name (name@domain)")
    if calendars not in ("primary", "all"):
        raise AdminError("calendars must be 'primary' or 'all'")
    if auth_mode not in ("app", "delegated"):
        raise AdminError("auth mode must be 'app' or 'delegated'")
    existing = services.store.get_user(upn)
    user = existing or UserRecord(upn=upn, caldav_url=caldav_url, caldav_username=caldav_username)
    user.caldav_url, user.caldav_username, user.enabled, user.auth_mode = caldav_url, caldav_username, True, auth_mode
    services.secrets.set(user.caldav_secret_name(), caldav_password)
    report = OnboardReport(user)
    found, reason = checks.check_caldav(caldav_url, caldav_username, caldav_password,
                                        calendar_url=caldav_calendar,
                                        timeout=services.settings.caldav_timeout_seconds)
    graph_reason = _graph_reason(services, user)
    reasons = [r for r in (reason, graph_reason) if r]
    user.auth_status = AUTHENTICATED if not reasons else "authentication failed: " + "; ".join(reasons)
    if not reasons and auth_mode == "delegated" and services.delegated_token_missing(user.upn):
        user.auth_status = WAITING_FOR_SIGN_IN
    services.store.save_user(user)
    if user.auth_status == WAITING_FOR_SIGN_IN:
        # Primary <-> primary needs nothing from Graph; more calendars once the user signed in.
        report.pairings = _pair_calendars(services, user, found, caldav_calendar, "primary", settings, report,
                                          graph_known=False)
        report.notes.append("the user signs in once with the link from `davbridge users auth-link`")
    elif reason is None and graph_reason is None:
        report.pairings = _pair_calendars(services, user, found, caldav_calendar, calendars, settings, report)
    elif existing is not None:
        report.pairings = services.store.list_pairings(user.upn)
    return report


def _graph_reason(services: Services, user: UserRecord, *, fresh_token: bool = False) -> str | None:
    if user.auth_mode == "delegated" and services.delegated_token_missing(user.upn):
        return None  # checked when the user has signed in (davbridge users auth-link)
    try:
        graph = services.graph_for(user)
        invalidate = getattr(graph.auth, "invalidate", None)
        if fresh_token and invalidate is not None:
            # Roles are fixed in a token when it is issued: after an admin granted consent, an
            # explicit check must not be answered with the token from before.
            invalidate()
    except DavbridgeError as exc:
        return f"Graph sign-in failed: {exc}"
    return checks.check_graph_mailbox(graph, user.upn)


def check_user(services: Services, upn: str) -> UserRecord:
    """Check both sides again (after a fix) and record the result in the user's status."""
    user = get_user(services, upn)
    try:
        password = services.caldav_password(user)
    except DavbridgeError as exc:
        reasons = [str(exc)]
    else:
        _, reason = checks.check_caldav(user.caldav_url, user.caldav_username, password,
                                        timeout=services.settings.caldav_timeout_seconds)
        reasons = [r for r in (reason, _graph_reason(services, user, fresh_token=True)) if r]
    user.auth_status = AUTHENTICATED if not reasons else "authentication failed: " + "; ".join(reasons)
    if not reasons and user.auth_mode == "delegated" and services.delegated_token_missing(user.upn):
        user.auth_status = WAITING_FOR_SIGN_IN
    services.store.save_user(user)
    if user.auth_status == AUTHENTICATED and not services.store.list_pairings(user.upn):
        found, _ = checks.check_caldav(user.caldav_url, user.caldav_username, services.caldav_password(user),
                                       timeout=services.settings.caldav_timeout_seconds)
        _pair_calendars(services, user, found, None, "primary", None, OnboardReport(user))
    return user


def _pair_calendars(services: Services, user: UserRecord, found: list[Any], caldav_calendar: str | None,
                    calendars: str, settings: PairingSettings | None, report: OnboardReport, *,
                    graph_known: bool = True) -> list[Pairing]:
    now = utcnow()
    existing = {p.pairing_id: p for p in services.store.list_pairings(user.upn)}
    events = [c for c in found if c.supports_events]
    if caldav_calendar:
        primary = next((c for c in events if _same_url(c.url, caldav_calendar)), None)
    else:
        primary = next((c for c in events if c.is_default), events[0] if events else None)
    if primary is None:
        report.notes.append("no CalDAV event calendar to pair")
        return list(existing.values())
    if not graph_known:
        wanted: list[tuple[Any, Any]] = [(primary, None)]
        calendars = "primary"
    else:
        graph = services.graph_for(user)
        graph_cals = checks.graph_calendars(graph, user.upn)
        wanted = [(primary, next((c for c in graph_cals if c.is_default), None))]
    if calendars == "all":
        for cal in events:
            if cal is primary:
                continue
            name = cal.display_name or "Calendar"
            wanted.append((cal, checks.create_graph_calendar(graph, user.upn, name)))
    for cal, graph_cal in wanted:
        m365_id = None if graph_cal is None or graph_cal.is_default else graph_cal.id
        pid = Pairing.make_id(user.upn, m365_id, cal.url)
        pairing = existing.get(pid) or Pairing(pid, user.upn, m365_id, cal.url,
                                               name=cal.display_name or "Calendar")
        pairing.caldav_read_only = bool(cal.read_only)
        pairing.m365_read_only = bool(graph_cal is not None and not graph_cal.can_edit)
        if pairing.caldav_read_only and pairing.m365_read_only:
            report.notes.append(f"{pairing.name}: both calendars are read-only, not paired")
            continue
        if pairing.caldav_read_only:
            pairing.direction = Direction.CALDAV_TO_M365
            report.notes.append(f"{pairing.name}: the CalDAV calendar is read-only, synced one way into Microsoft 365")
        elif pairing.m365_read_only:
            pairing.direction = Direction.M365_TO_CALDAV
            report.notes.append(f"{pairing.name}: the Microsoft 365 calendar is read-only, synced one way to CalDAV")
        if settings is not None:
            pairing = _settings_keeping_read_only(settings, pairing, now)
        services.store.save_pairing(pairing)
        existing[pid] = pairing
    return services.store.list_pairings(user.upn)


def _settings_keeping_read_only(settings: PairingSettings, pairing: Pairing, now: datetime) -> Pairing:
    if pairing.caldav_read_only or pairing.m365_read_only:
        settings = replace(settings, direction=None)  # a read-only side fixes the direction
    return settings.apply(pairing, now=now)


def _same_url(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


def set_enabled(services: Services, upn: str, enabled: bool, *, remove_mirrors: bool = False) -> RowReport:
    user = services.store.get_user(upn)
    if user is None:
        return RowReport(0, upn, "failed", "unknown user")
    was = user.enabled
    services.set_enabled(user.upn, enabled)
    detail = ""
    if not enabled and remove_mirrors:
        removed, kept = 0, 0
        for pairing in services.store.list_pairings(user.upn):
            r, k = remove_copies(services, user, pairing)
            removed, kept = removed + r, kept + k
        detail = f"removed {removed} copies the service made" + (f", kept {kept} changed since" if kept else "")
    result = "unchanged" if was == enabled and not detail else ("enabled" if enabled else "disabled")
    return RowReport(0, user.upn, result, detail)


def remove_copies(services: Services, user: UserRecord, pairing: Pairing) -> tuple[int, int]:
    """Delete the copies the service created for ``pairing`` (links with an ``origin``), each
    only if unchanged since the service wrote it (If-Match); the pairing's sync state is then
    cleared, so a later enable starts afresh instead of reading the removals as deletions."""
    links = services.store.links(pairing.pairing_id)
    now = utcnow()
    sides = services.open_sides(user, pairing, (now - timedelta(days=1), now + timedelta(days=1)))
    removed = kept = 0
    for link in links:
        if link.origin not in ("m365", "caldav"):
            continue  # found on both sides: neither is a mere copy
        mirror = SideName(link.origin).other()
        item_id = link.id_on(mirror)
        if not item_id:
            continue
        try:
            sides[mirror].delete(item_id, etag=link.etag_on(mirror))
            removed += 1
        except PreconditionFailed:
            kept += 1  # edited since the last sync: a person's change, left alone
    services.store.delete_pairing(pairing)
    services.store.save_pairing(pairing)
    return removed, kept


def rotate_password(services: Services, upn: str, password: str) -> UserRecord:
    """Store a new CalDAV app password (after checking the server accepts it)."""
    user = get_user(services, upn)
    _, reason = checks.check_caldav(user.caldav_url, user.caldav_username, password,
                                    timeout=services.settings.caldav_timeout_seconds)
    if reason is not None:
        raise AdminError(f"the new password was not stored: {reason}")
    services.secrets.set(user.caldav_secret_name(), password)
    return check_user(services, upn)


def revoke(services: Services, upn: str) -> UserRecord:
    """Stop syncing a user and remove its secrets (overwritten with a tombstone in Key Vault, so
    the same names can be written again when the user is re-added)."""
    user = get_user(services, upn)
    services.set_enabled(user.upn, False)
    services.secrets.delete(user.caldav_secret_name())
    services.forget_delegated(user.upn)
    user = get_user(services, upn)
    user.auth_status = "revoked"
    services.store.save_user(user)
    return user


# -- bulk ------------------------------------------------------------------------------------------
def import_users(services: Services, text: str, *,
                 on_row: Callable[[RowReport], None] | None = None) -> list[RowReport]:
    """Bulk onboarding from CSV (``sync_core/bulk.py``), idempotent: a row equal to what is
    stored reports ``unchanged`` and checks nothing again."""
    rows, reports = parse_users_csv(text)
    for report in reports:
        if on_row:
            on_row(report)
    for row in rows:
        report = _import_row(services, row)
        reports.append(report)
        if on_row:
            on_row(report)
    return sorted(reports, key=lambda r: r.row)


def _import_row(services: Services, row: UserRow) -> RowReport:
    try:
        existing = services.store.get_user(row.upn)
        settings = PairingSettings.from_mapping({
            "direction": row.direction, "conflict_policy": row.conflict_policy,
            "window_past_days": row.window_past_days, "window_future_days": row.window_future_days,
            "first_sync_cap": row.first_sync_cap, "only_new": row.only_new, "privacy_title": row.privacy_title})
        if existing is not None and _row_unchanged(services, existing, row, settings):
            return RowReport(row.row, row.upn, "unchanged")
        if existing is None and not (row.caldav_url and row.caldav_username and row.caldav_password):
            return RowReport(row.row, row.upn, "failed", "a new user needs caldav_url, caldav_username and "
                                                         "caldav_password")
        password = row.caldav_password or (services.caldav_password(existing) if existing else "")
        report = add_user(services, row.upn, caldav_url=row.caldav_url or (existing.caldav_url if existing else ""),
                          caldav_username=row.caldav_username or (existing.caldav_username if existing else ""),
                          caldav_password=password, calendars=row.calendars or "primary", settings=settings)
        if row.enabled is False:
            services.set_enabled(row.upn, False)
        if not report.ok:
            return RowReport(row.row, row.upn, "failed", report.user.auth_status)
        return RowReport(row.row, row.upn, "updated" if existing else "created")
    except DavbridgeError as exc:
        return RowReport(row.row, row.upn, "failed", str(exc))


def _row_unchanged(services: Services, user: UserRecord, row: UserRow, settings: PairingSettings) -> bool:
    if row.caldav_url and row.caldav_url != user.caldav_url:
        return False
    if row.caldav_username and row.caldav_username != user.caldav_username:
        return False
    if row.caldav_password and row.caldav_password != services.secrets.get(user.caldav_secret_name()):
        return False
    if row.enabled is not None and row.enabled != user.enabled:
        return False
    if user.auth_status != AUTHENTICATED:
        return False
    pairings = services.store.list_pairings(user.upn)
    if not pairings:
        return False
    primary = next((p for p in pairings if p.m365_calendar_id is None), pairings[0])
    try:
        return _settings_keeping_read_only(settings, primary, utcnow()) == primary
    except AdminError:
        return False


def export_users(services: Services) -> str:
    users = services.store.list_users()
    return export_users_csv(users, {u.upn: services.store.list_pairings(u.upn) for u in users})


# -- pairings --------------------------------------------------------------------------------------
def find_pairing(services: Services, upn: str, pairing_id: str) -> Pairing:
    for pairing in services.store.list_pairings(upn):
        if pairing.pairing_id == pairing_id:
            return pairing
    raise AdminError(f"user {upn} has no pairing {pairing_id}")


def add_pairing(services: Services, upn: str, caldav_calendar: str, *, m365_calendar: str | None = None,
                settings: PairingSettings | None = None) -> Pairing:
    """Pair one more CalDAV calendar; with a new Microsoft 365 calendar of the same name unless
    ``m365_calendar`` names one ("primary", a calendar id or a calendar name)."""
    user = get_user(services, upn)
    found, reason = checks.check_caldav(user.caldav_url, user.caldav_username, services.caldav_password(user),
                                        calendar_url=caldav_calendar,
                                        timeout=services.settings.caldav_timeout_seconds)
    if reason is not None:
        raise AdminError(reason)
    cal = next(c for c in found if _same_url(c.url, caldav_calendar))
    graph = services.graph_for(user)
    graph_cals = checks.graph_calendars(graph, user.upn)
    target: checks.GraphCalendarInfo | None
    if m365_calendar in (None, ""):
        target = checks.create_graph_calendar(graph, user.upn, cal.display_name or "Calendar")
    elif m365_calendar == "primary":
        target = next(c for c in graph_cals if c.is_default)
    else:
        target = next((c for c in graph_cals if m365_calendar in (c.id, c.name)), None)
    if target is None:
        raise AdminError(f"no Microsoft 365 calendar {m365_calendar!r} in this mailbox")
    m365_id = None if target.is_default else target.id
    pid = Pairing.make_id(user.upn, m365_id, cal.url)
    pairing = Pairing(pid, user.upn, m365_id, cal.url, name=cal.display_name or target.name,
                      caldav_read_only=bool(cal.read_only), m365_read_only=not target.can_edit)
    if pairing.caldav_read_only:
        pairing.direction = Direction.CALDAV_TO_M365
    elif pairing.m365_read_only:
        pairing.direction = Direction.M365_TO_CALDAV
    pairing = _settings_keeping_read_only(settings or PairingSettings(), pairing, utcnow())
    services.store.save_pairing(pairing)
    return pairing


def change_pairing(services: Services, upn: str, pairing_id: str, settings: PairingSettings) -> Pairing:
    pairing = settings.apply(find_pairing(services, upn, pairing_id), now=utcnow())
    services.store.save_pairing(pairing)
    return pairing


def confirm_deletions(services: Services, upn: str, pairing_id: str) -> Pairing:
    """Let the next run of a pairing stopped by the mass-deletion guard delete what it wanted
    (up to that many items per side, once). Anything more is stopped again."""
    pairing = find_pairing(services, upn, pairing_id)
    if not pairing.blocked_deletes:
        raise AdminError("nothing to confirm: the last run of this pairing was not stopped by the deletion guard")
    pairing.confirmed_deletes = pairing.blocked_deletes
    services.store.save_pairing(pairing)
    return pairing


def remove_pairing(services: Services, upn: str, pairing_id: str, *, remove_mirrors: bool = False) -> str:
    pairing = find_pairing(services, upn, pairing_id)
    detail = ""
    if remove_mirrors:
        removed, kept = remove_copies(services, get_user(services, upn), pairing)
        detail = f"removed {removed} copies" + (f", kept {kept} changed since" if kept else "")
    services.store.delete_pairing(pairing)
    return detail or "pairing removed; both calendars keep their events"


# -- status and audit ------------------------------------------------------------------------------
def status_rows(services: Services, upns: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """One row per user and pairing (a user without pairings gets one row too)."""
    now = utcnow()
    upcoming = next_run(services.settings.sync_schedule, now)
    users = ([u for u in (services.store.get_user(x) for x in upns) if u is not None] if upns is not None
             else services.store.list_users())
    rows: list[dict[str, Any]] = []
    for user in users:
        base = {"user": user.upn, "enabled": user.enabled, "auth_status": user.auth_status,
                "auth_mode": user.auth_mode, "user_error": user.last_error,
                "next_run": upcoming.isoformat(timespec="seconds") if upcoming and user.enabled else None}
        pairings = services.store.list_pairings(user.upn)
        if not pairings:
            rows.append({**base, "pairing": None})
        for pairing in pairings:
            st = services.store.get_status(pairing.pairing_id)
            rows.append({
                **base, "pairing": pairing.name, "pairing_id": pairing.pairing_id,
                "direction": pairing.direction.value,
                "last_run": st.finished_at.isoformat(timespec="seconds") if st and st.finished_at else None,
                "last_success": (st.last_success_at.isoformat(timespec="seconds")
                                 if st and st.last_success_at else None),
                "ok": st.ok if st else None, "counts": st.counts if st else {},
                "quarantined": st.quarantined if st else 0, "last_error": st.error if st else None,
                "notices": st.notices if st else [],
            })
    return rows


def audit(services: Services, upn: str, since: datetime | None = None,
          until: datetime | None = None) -> list[AuditEntry]:
    now = utcnow()
    return services.store.audit(get_user(services, upn).upn, since or now - AUDIT_RETENTION,
                                until or now + timedelta(seconds=1))


def audit_json(entry: AuditEntry) -> dict[str, Any]:
    return {"at": entry.at.isoformat(), "user": entry.upn, "pairing_id": entry.pairing_id, "side": entry.side,
            "action": entry.action, "item_id": entry.item_id, "hash_before": entry.hash_before,
            "hash_after": entry.hash_after, "trigger": entry.trigger}

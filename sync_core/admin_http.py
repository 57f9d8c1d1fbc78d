"""The admin HTTP API (function-key protected): the same operations as the ``davbridge`` CLI.

One function app route, ``/api/admin/{*path}``, dispatched here by method and path, so the
CLI and HTTP share ``admin.py`` and answer alike. JSON in and out, except the CSV import
(``text/csv`` body) and export. Errors: 400 invalid request, 404 unknown user or pairing,
409 a sync of the user is running, 502 a side failed.

    GET    users                          list users
    POST   users                          onboard {upn, caldav_url, caldav_username, caldav_password,
                                          caldav_calendar?, calendars?, delegated?, settings?}
    POST   users/import                   CSV body -> per-row report
    GET    users/export                   CSV (no passwords)
    GET    status                         every user's status rows
    GET    users/{upn}/status             one user's status
    POST   users/{upn}/sync[?wait=true]   queue a sync (202) or run it now
    POST   users/{upn}/check              check both sides again
    POST   users/{upn}/enable | disable[?remove_copies=true]
    PUT    users/{upn}/password           {password}
    POST   users/{upn}/revoke
    GET    users/{upn}/auth-link          the delegated sign-in link
    GET    users/{upn}/pairings           list;  POST: add {caldav_calendar, m365_calendar?, settings?}
    PATCH  users/{upn}/pairings/{id}      {settings}
    DELETE users/{upn}/pairings/{id}[?remove_copies=true]
    POST   users/{upn}/pairings/{id}/confirm   after the mass-deletion guard stopped it
    GET    users/{upn}/audit[?since&until]
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

from sync_core import admin, handlers
from sync_core.bulk import RowReport, decode_csv
from sync_core.errors import AuthenticationFailed, DavbridgeError
from sync_core.services import Services

MAX_BODY = 5 * 1024 * 1024


def _json(status: int, body: Any) -> handlers.WebResponse:
    return handlers.WebResponse(status, json.dumps(body), "application/json")


def _flag(params: dict[str, str], name: str) -> bool:
    return params.get(name, "").lower() in ("1", "true", "yes")


def _instant(params: dict[str, str], name: str) -> datetime | None:
    text = params.get(name)
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise admin.AdminError(f"{name} is not an ISO date or time") from exc
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _body(raw: bytes) -> dict[str, Any]:
    if len(raw) > MAX_BODY:
        raise admin.AdminError("request body too large")
    try:
        data = json.loads(raw.decode("utf-8") or "{}")
    except (UnicodeDecodeError, ValueError) as exc:
        raise admin.AdminError("the body must be a JSON object") from exc
    if not isinstance(data, dict):
        raise admin.AdminError("the body must be a JSON object")
    return data


def _text(data: dict[str, Any], key: str, *, required: bool = True) -> str:
    value = data.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise admin.AdminError(f"'{key}' is required (a string)")
    return value


def _reports(reports: list[RowReport]) -> list[dict[str, Any]]:
    return [{"row": r.row, "user": r.upn, "result": r.result, "detail": r.detail} for r in reports]


def handle(services: Services, method: str, path: str, params: dict[str, str], body: bytes) -> handlers.WebResponse:
    """Dispatch one admin request; never raises for a bad request."""
    parts = [unquote(p) for p in path.strip("/").split("/") if p]
    try:
        return _route(services, method.upper(), parts, params, body)
    except admin.AdminError as exc:
        status = 404 if str(exc).startswith(("unknown user", "user ")) else 400
        return _json(status, {"error": str(exc)})
    except AuthenticationFailed as exc:
        return _json(502, {"error": f"authentication failed: {exc}"})
    except DavbridgeError as exc:
        return _json(502, {"error": f"{type(exc).__name__}: {exc}"})


def _route(services: Services, method: str, parts: list[str], params: dict[str, str],
           body: bytes) -> handlers.WebResponse:
    match (method, parts):
        case ("GET", ["users"]):
            return _json(200, [{"upn": u.upn, "enabled": u.enabled, "auth_status": u.auth_status,
                                "auth_mode": u.auth_mode, "caldav_url": u.caldav_url,
                                "caldav_username": u.caldav_username} for u in services.store.list_users()])
        case ("POST", ["users"]):
            data = _body(body)
            report = admin.add_user(
                services, _text(data, "upn"), caldav_url=_text(data, "caldav_url"),
                caldav_username=_text(data, "caldav_username"), caldav_password=_text(data, "caldav_password"),
                caldav_calendar=_text(data, "caldav_calendar", required=False) or None,
                calendars=str(data.get("calendars") or "primary"),
                settings=admin.PairingSettings.from_mapping(dict(data.get("settings") or {})),
                auth_mode="delegated" if data.get("delegated") else "app")
            answer = report.as_json()
            if report.user.auth_mode == "delegated":
                answer["sign_in_link"] = services.delegated_sign_in_link(report.user.upn)
            return _json(200 if report.ok else 422, answer)
        case ("POST", ["users", "import"]):
            if len(body) > MAX_BODY:
                raise admin.AdminError("the CSV is too large")
            reports = admin.import_users(services, decode_csv(body))
            failed = any(r.result == "failed" for r in reports)
            return _json(207 if failed else 200, _reports(reports))
        case ("GET", ["users", "export"]):
            return handlers.WebResponse(200, admin.export_users(services), "text/csv")
        case ("GET", ["status"]):
            return _json(200, admin.status_rows(services))
        case (_, ["users", upn, *rest]):
            return _user_route(services, method, upn, rest, params, body)
    return _json(404, {"error": f"no admin endpoint {method} /{'/'.join(parts)}"})


def _user_route(services: Services, method: str, upn: str, rest: list[str], params: dict[str, str],
                body: bytes) -> handlers.WebResponse:
    simple: dict[tuple[str, str], Callable[[], handlers.WebResponse]] = {
        ("GET", "status"): lambda: _json(*handlers.user_status(services, upn)),
        ("POST", "sync"): lambda: _json(*handlers.sync_now(services, upn, wait=_flag(params, "wait"))),
        ("POST", "check"): lambda: _user_json(admin.check_user(services, upn)),
        ("POST", "enable"): lambda: _row(admin.set_enabled(services, upn, True)),
        ("POST", "disable"): lambda: _row(admin.set_enabled(services, upn, False,
                                                            remove_mirrors=_flag(params, "remove_copies"))),
        ("PUT", "password"): lambda: _user_json(admin.rotate_password(services, upn,
                                                                      _text(_body(body), "password"))),
        ("POST", "revoke"): lambda: _user_json(admin.revoke(services, upn)),
        ("GET", "auth-link"): lambda: _json(200, {"user": admin.get_user(services, upn).upn,
                                                  "sign_in_link": services.delegated_sign_in_link(upn)}),
        ("GET", "pairings"): lambda: _json(200, [admin.pairing_json(p) for p in
                                                 services.store.list_pairings(admin.get_user(services, upn).upn)]),
        ("GET", "audit"): lambda: _json(200, [admin.audit_json(e) for e in admin.audit(
            services, upn, _instant(params, "since"), _instant(params, "until"))]),
    }
    if len(rest) == 1 and (method, rest[0]) in simple:
        return simple[(method, rest[0])]()
    if method == "POST" and rest == ["pairings"]:
        data = _body(body)
        pairing = admin.add_pairing(services, upn, _text(data, "caldav_calendar"),
                                    m365_calendar=_text(data, "m365_calendar", required=False) or None,
                                    settings=admin.PairingSettings.from_mapping(dict(data.get("settings") or {})))
        return _json(201, admin.pairing_json(pairing))
    if method == "POST" and len(rest) == 3 and rest[0] == "pairings" and rest[2] == "confirm":
        return _json(200, admin.pairing_json(admin.confirm_deletions(services, upn, rest[1])))
    if len(rest) == 2 and rest[0] == "pairings":
        if method == "PATCH":
            settings = admin.PairingSettings.from_mapping(dict(_body(body).get("settings") or {}))
            return _json(200, admin.pairing_json(admin.change_pairing(services, upn, rest[1], settings)))
        if method == "DELETE":
            detail = admin.remove_pairing(services, upn, rest[1], remove_mirrors=_flag(params, "remove_copies"))
            return _json(200, {"result": detail})
    return _json(404, {"error": f"no admin endpoint {method} users/{{upn}}/{'/'.join(rest)}"})


def _user_json(user: Any) -> handlers.WebResponse:
    return _json(200, {"user": user.upn, "enabled": user.enabled, "auth_status": user.auth_status,
                       "auth_mode": user.auth_mode})


def _row(report: RowReport) -> handlers.WebResponse:
    return _json(404 if report.result == "failed" else 200, {"user": report.upn, "result": report.result,
                                                             "detail": report.detail})

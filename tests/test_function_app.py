"""function_app.py: bindings as the Functions host sees them, and each handler driven directly."""

from __future__ import annotations

import json
from pathlib import Path

import azure.functions as func
import pytest
from azure.functions.timer import TimerRequest

import function_app
from sync_core.services import Services
from sync_core.settings import Settings
from sync_core.state.base import Pairing, UserRecord


def _functions() -> dict[str, dict]:
    out = {}
    for f in function_app.app.get_functions():
        out[f.get_function_name()] = json.loads(f.get_function_json())
    return out


def test_bindings_schedule_routes_and_auth_levels() -> None:
    functions = _functions()
    assert set(functions) == {"sync_timer", "admin_sync_now", "admin_status"}
    (timer,) = functions["sync_timer"]["bindings"]
    assert timer["type"] == "timerTrigger" and timer["schedule"] == "%SYNC_SCHEDULE%"
    assert timer["runOnStartup"] is False
    for name, route, method in (("admin_sync_now", "admin/users/{upn}/sync", "post"),
                                ("admin_status", "admin/users/{upn}/status", "get")):
        trigger = next(b for b in functions[name]["bindings"] if b["type"] == "httpTrigger")
        assert trigger["route"] == route and [m.lower() for m in trigger["methods"]] == [method]
        assert trigger["authLevel"].lower() == "function"


@pytest.fixture
def embedded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Services:
    monkeypatch.setenv("DAVBRIDGE_HOME", str(tmp_path))
    function_app.services.cache_clear()
    services = function_app.services()
    assert isinstance(services, Services) and services.settings == Settings.from_env()
    return services


def test_admin_status_handler(embedded: Services) -> None:
    embedded.store.save_user(UserRecord("ada@contoso.test", "http://127.0.0.1:9/", "ada"))
    embedded.store.save_pairing(Pairing("p1", "ada@contoso.test", None, "http://127.0.0.1:9/cal/"))
    handler = function_app.admin_status.build().get_user_function()
    req = func.HttpRequest("GET", "/api/admin/users/ada@contoso.test/status", body=b"",
                           route_params={"upn": "ada@contoso.test"})
    resp = handler(req)
    assert resp.status_code == 200
    body = json.loads(resp.get_body())
    assert body["user"] == "ada@contoso.test" and body["pairings"][0]["last_run"] is None
    missing = handler(func.HttpRequest("GET", "/x", body=b"", route_params={"upn": "nobody@contoso.test"}))
    assert missing.status_code == 404


def test_sync_now_reports_a_failing_side_without_raising(embedded: Services) -> None:
    """No Graph app configured: the pairing fails with a clear error, the handler answers 502."""
    embedded.store.save_user(UserRecord("ada@contoso.test", "http://127.0.0.1:9/", "ada"))
    embedded.secrets.set(UserRecord("ada@contoso.test", "", "").caldav_secret_name(), "pw")
    embedded.store.save_pairing(Pairing("p1", "ada@contoso.test", None, "http://127.0.0.1:9/cal/"))
    handler = function_app.admin_sync_now.build().get_user_function()
    resp = handler(func.HttpRequest("POST", "/x", body=b"", route_params={"upn": "ada@contoso.test"}))
    assert resp.status_code == 502
    body = json.loads(resp.get_body())
    assert "GRAPH_TENANT_ID" in body["pairings"][0]["error"]
    status = embedded.store.get_status("p1")
    assert status is not None and not status.ok and "GRAPH_TENANT_ID" in (status.error or "")


def test_timer_handler_runs_every_enabled_user(embedded: Services) -> None:
    embedded.store.save_user(UserRecord("ada@contoso.test", "http://127.0.0.1:9/", "ada"))
    embedded.store.save_user(UserRecord("off@contoso.test", "http://127.0.0.1:9/", "off", enabled=False))
    embedded.store.save_pairing(Pairing("p1", "ada@contoso.test", None, "http://127.0.0.1:9/cal/"))
    handler = function_app.sync_timer.build().get_user_function()
    handler(TimerRequest(past_due=False))
    status = embedded.store.get_status("p1")
    assert status is not None and not status.ok  # ran, and recorded why it could not sync
    assert [u.upn for u in embedded.store.list_users(enabled_only=True)] == ["ada@contoso.test"]

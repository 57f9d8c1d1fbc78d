"""function_app.py: bindings as the Functions host sees them, and each handler driven directly
with constructed ``HttpRequest`` / ``TimerRequest`` / ``QueueMessage`` objects (embedded
defaults: SQLite state, 0600 secrets file, in-memory queue)."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import azure.functions as func
import pytest
from azure.functions.queue import QueueMessage
from azure.functions.timer import TimerRequest

import function_app
from sync_core import handlers
from sync_core.queue import MemorySyncQueue, SyncMessage
from sync_core.services import Services
from sync_core.settings import Settings
from sync_core.state.base import AuditEntry, Pairing, Subscription, UserRecord
from sync_core.webhooks import client_state

ADA = "ada@contoso.test"


def _functions() -> dict[str, dict]:
    return {f.get_function_name(): json.loads(f.get_function_json()) for f in function_app.app.get_functions()}


def _trigger(bindings: list[dict]) -> dict:
    (trigger,) = [b for b in bindings if b["type"].endswith("Trigger")]
    return trigger


def test_every_trigger_binding_schedule_route_and_auth_level() -> None:
    functions = _functions()
    assert set(functions) == {"sync_timer", "sync_worker", "sync_poison", "graph_notifications",
                              "graph_lifecycle", "admin_api", "auth_start", "auth_callback"}
    timer = _trigger(functions["sync_timer"]["bindings"])
    assert timer["type"] == "timerTrigger" and timer["schedule"] == "%SYNC_SCHEDULE%"
    assert timer["runOnStartup"] is False and timer["useMonitor"] is True
    for name, queue in (("sync_worker", "%DAVBRIDGE_SYNC_QUEUE%"), ("sync_poison", "%DAVBRIDGE_SYNC_QUEUE%-poison")):
        q = _trigger(functions[name]["bindings"])
        assert q["type"] == "queueTrigger" and q["queueName"] == queue and q["connection"] == "AzureWebJobsStorage"
    for name, route, methods, auth in (
        ("graph_notifications", "graph/notifications", ["post"], "anonymous"),
        ("graph_lifecycle", "graph/lifecycle", ["post"], "anonymous"),
        ("admin_api", "admin/{*path}", ["get", "post", "put", "patch", "delete"], "function"),
        ("auth_start", "auth/start", ["get"], "anonymous"),
        ("auth_callback", "auth/callback", ["get"], "anonymous"),
    ):
        trigger = _trigger(functions[name]["bindings"])
        assert trigger["type"] == "httpTrigger" and trigger["route"] == route
        assert sorted(m.lower() for m in trigger["methods"]) == sorted(methods)
        assert trigger["authLevel"].lower() == auth
        assert any(b["type"] == "http" and b["direction"].lower() == "out" for b in functions[name]["bindings"])
    host = json.loads(Path(function_app.__file__).with_name("host.json").read_text())
    assert host["extensions"]["queues"]["maxDequeueCount"] == 5
    assert host["extensions"]["queues"]["messageEncoding"] == "base64"


@pytest.fixture
def embedded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Services:
    monkeypatch.setenv("DAVBRIDGE_HOME", str(tmp_path))
    monkeypatch.setenv("DAVBRIDGE_WEBHOOK_URL", "https://davbridge.example/api/graph/notifications")
    monkeypatch.setenv("DAVBRIDGE_LIFECYCLE_URL", "https://davbridge.example/api/graph/lifecycle")
    for name in ("DAVBRIDGE_QUEUE_URL", "DAVBRIDGE_STATE_URL", "DAVBRIDGE_SECRETS_URL", "GRAPH_TENANT_ID"):
        monkeypatch.delenv(name, raising=False)
    function_app.services.cache_clear()
    services = function_app.services()
    assert isinstance(services, Services) and services.settings == Settings.from_env()
    services.store.save_user(UserRecord(ADA, "http://127.0.0.1:9/", "ada"))
    services.secrets.set(UserRecord(ADA, "", "").caldav_secret_name(), "pw")
    services.store.save_pairing(Pairing("p1", ADA, None, "http://127.0.0.1:9/cal/"))
    yield services
    function_app.services.cache_clear()


def _queue(services: Services) -> MemorySyncQueue:
    assert isinstance(services.queue, MemorySyncQueue)
    return services.queue


def _subscribe(services: Services, sub_id: str = "7f105c7d-2dc5-4530-97cd-4e7ae6534c07") -> str:
    key = services.client_state_key(create=True)
    assert key
    services.store.save_subscription(Subscription(sub_id, ADA, f"/users/{ADA}/events",
                                                  datetime.now(UTC) + timedelta(days=3)))
    return client_state(key, ADA)


def _post(handler_name: str, body: bytes, params: dict[str, str] | None = None) -> func.HttpResponse:
    handler = getattr(function_app, handler_name).build().get_user_function()
    return handler(func.HttpRequest("POST", f"https://x/api/graph/{handler_name}", body=body, params=params or {}))


def _notification(sub_id: str, state: str, change: str = "updated", **extra: str) -> bytes:
    item = {"subscriptionId": sub_id, "clientState": state, "changeType": change,
            "resource": "Users/1/Events/AAMk", "tenantId": "t", **extra}
    return json.dumps({"value": [item]}).encode()


def test_validation_handshake_answers_the_decoded_token_as_plain_text(embedded: Services) -> None:
    token = "Validation: Testing client application reachability for subscription Request-Id: 42 <b>&</b>"
    for name in ("graph_notifications", "graph_lifecycle"):
        resp = _post(name, b"", {"validationToken": token})
        assert resp.status_code == 200 and resp.get_body().decode() == token
        assert resp.mimetype == "text/plain" and resp.headers["X-Content-Type-Options"] == "nosniff"
    assert _post("graph_notifications", b"", {"validationToken": "x" * 5000}).status_code == 400
    assert _post("graph_notifications", b"", {"validationToken": "a\r\nSet-Cookie: x"}).status_code == 400
    assert len(_queue(embedded)) == 0


def test_notifications_are_checked_and_coalesced_into_one_queue_message(embedded: Services) -> None:
    state = _subscribe(embedded)
    sub_id = "7f105c7d-2dc5-4530-97cd-4e7ae6534c07"
    assert _post("graph_notifications", _notification(sub_id, state, "created")).status_code == 202
    assert _post("graph_notifications", _notification(sub_id, state, "updated")).status_code == 202
    assert _queue(embedded).drain() == [SyncMessage(ADA, "webhook")]
    request = embedded.store.take_sync_request(ADA)
    assert request is not None and request.triggers == ["webhook"]

    # Spoofed: wrong clientState, unknown subscription, garbage, oversized -> nothing queued.
    forged = state[:-1] + ("B" if state.endswith("A") else "A")
    assert _post("graph_notifications", _notification(sub_id, forged)).status_code == 202
    assert _post("graph_notifications", _notification("00000000-0000-0000-0000-000000000000", state)).status_code == 202
    assert _post("graph_notifications", b"<xml/>").status_code == 400
    assert _post("graph_notifications", b'{"value": "x"}').status_code == 400
    assert _post("graph_notifications", b" " * (1024 * 1024 + 1)).status_code == 413
    assert len(_queue(embedded)) == 0 and embedded.store.take_sync_request(ADA) is None


def test_a_burst_of_500_concurrent_notifications_queues_one_message(embedded: Services) -> None:
    state = _subscribe(embedded)
    body = _notification("7f105c7d-2dc5-4530-97cd-4e7ae6534c07", state)
    statuses: list[int] = []
    lock = threading.Lock()

    def post(n: int) -> None:
        for _ in range(n):
            code = _post("graph_notifications", body).status_code
            with lock:
                statuses.append(code)

    threads = [threading.Thread(target=post, args=(50,)) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert statuses == [202] * 500
    assert _queue(embedded).drain() == [SyncMessage(ADA, "webhook")]


def test_lifecycle_events(embedded: Services) -> None:
    sub_id = "7f105c7d-2dc5-4530-97cd-4e7ae6534c07"
    state = _subscribe(embedded, sub_id)
    resp = _post("graph_lifecycle", _notification(sub_id, state, lifecycleEvent="reauthorizationRequired"))
    assert resp.status_code == 202
    request = embedded.store.take_sync_request(ADA)
    assert request is not None and request.check_subscription and request.triggers == ["lifecycle"]
    _post("graph_lifecycle", _notification(sub_id, state, lifecycleEvent="missed"))
    request = embedded.store.take_sync_request(ADA)
    assert request is not None and not request.check_subscription
    _post("graph_lifecycle", _notification(sub_id, state, lifecycleEvent="subscriptionRemoved"))
    assert embedded.store.get_subscription(sub_id) is None
    request = embedded.store.take_sync_request(ADA)
    assert request is not None and request.check_subscription
    assert len(_queue(embedded).drain()) == 3
    # A lifecycle event with a wrong clientState changes nothing.
    _post("graph_lifecycle", _notification(sub_id, "forged", lifecycleEvent="subscriptionRemoved"))
    assert embedded.store.take_sync_request(ADA) is None


def _queue_message(body: str, dequeue_count: int = 1) -> QueueMessage:
    return QueueMessage(id="m1", body=body.encode(), dequeue_count=dequeue_count)


def test_queue_worker_syncs_under_the_lease_and_records_failures(embedded: Services) -> None:
    worker = function_app.sync_worker.build().get_user_function()
    # No Graph app configured: the pairing fails with a clear error, the worker does not crash.
    handlers.request_user_sync(embedded, ADA, "manual")
    _queue(embedded).drain()
    worker(_queue_message(SyncMessage(ADA, "manual").encode()))
    status = embedded.store.get_status("p1")
    assert status is not None and not status.ok and "GRAPH_TENANT_ID" in (status.error or "")

    # Its request was served: a duplicate delivery does nothing.
    before = embedded.store.get_status("p1")
    worker(_queue_message(SyncMessage(ADA, "webhook").encode()))
    assert embedded.store.get_status("p1") == before

    # Another sync holds the lease: the message comes back later, the request stays pending.
    handlers.request_user_sync(embedded, ADA, "webhook")
    _queue(embedded).drain()
    assert embedded.store.try_lease(ADA, "someone-else", ttl=timedelta(minutes=5))
    assert handlers.run_queued_sync(embedded, SyncMessage(ADA, "webhook").encode())["result"] == "busy"
    assert _queue(embedded).drain() == [SyncMessage(ADA, "retry")]
    embedded.store.release_lease(ADA, "someone-else")
    assert handlers.run_queued_sync(embedded, SyncMessage(ADA, "retry").encode())["result"] == "synced"

    # Garbage is dropped, not retried forever.
    worker(_queue_message("not json"))
    assert handlers.run_queued_sync(embedded, '{"upn": "x", "trigger": "timer"}')["result"] == "dropped"


def test_poison_message_is_recorded_in_the_users_status(embedded: Services) -> None:
    poison = function_app.sync_poison.build().get_user_function()
    poison(_queue_message(SyncMessage(ADA, "webhook").encode(), dequeue_count=1))
    user = embedded.store.get_user(ADA)
    assert user is not None and "poison queue" in (user.last_error or "")
    resp = _admin("GET", f"users/{ADA}/status")
    assert "poison queue" in json.loads(resp.get_body())["last_error"]


def test_timer_enqueues_each_enabled_user_once(embedded: Services) -> None:
    embedded.store.save_user(UserRecord("bob@contoso.test", "http://127.0.0.1:9/", "bob"))
    embedded.store.save_user(UserRecord("off@contoso.test", "http://127.0.0.1:9/", "off", enabled=False))
    tick = function_app.sync_timer.build().get_user_function()
    tick(TimerRequest(past_due=False))
    sent = _queue(embedded).drain()
    assert sorted(m.upn for m in sent) == [ADA, "bob@contoso.test"] and {m.trigger for m in sent} == {"timer"}
    # Nobody has a subscription yet: the worker is asked to create them.
    request = embedded.store.take_sync_request("bob@contoso.test")
    assert request is not None and request.check_subscription
    tick(TimerRequest(past_due=False))  # Ada's request is still pending: merged, not re-sent
    assert [m.upn for m in _queue(embedded).drain()] == ["bob@contoso.test"]
    assert embedded.secrets.get(embedded.settings.client_state_key_name)  # the timer made the key
    # ... and ages out the audit log.
    old = datetime.now(UTC) - timedelta(days=31)
    embedded.store.append_audit([AuditEntry(ADA, "p1", "m365", "create", "x", None, "h", "timer", old)])
    tick(TimerRequest(past_due=False))
    assert embedded.store.audit(ADA, old - timedelta(days=1), datetime.now(UTC)) == []


def _admin(method: str, path: str, params: dict[str, str] | None = None) -> func.HttpResponse:
    handler = function_app.admin_api.build().get_user_function()
    return handler(func.HttpRequest(method, f"/api/admin/{path}", body=b"", params=params or {},
                                    route_params={"path": path}))


def test_admin_sync_now_queues_or_waits(embedded: Services) -> None:
    resp = _admin("POST", f"users/{ADA}/sync")
    assert resp.status_code == 202 and json.loads(resp.get_body())["queued"] is True
    assert _queue(embedded).drain() == [SyncMessage(ADA, "manual")]
    resp = _admin("POST", f"users/{ADA}/sync", {"wait": "true"})
    assert resp.status_code == 502 and "GRAPH_TENANT_ID" in json.loads(resp.get_body())["pairings"][0]["error"]
    assert embedded.store.try_lease(ADA, "other", ttl=timedelta(minutes=1))
    assert _admin("POST", f"users/{ADA}/sync", {"wait": "1"}).status_code == 409
    assert _admin("POST", "users/nobody@contoso.test/sync").status_code == 404
    assert _admin("GET", "nothing/here").status_code == 404


def test_admin_status_handler(embedded: Services) -> None:
    resp = _admin("GET", f"users/{ADA}/status")
    assert resp.status_code == 200
    body = json.loads(resp.get_body())
    assert body["user"] == ADA and body["pairings"][0]["last_run"] is None and body["last_error"] is None
    assert _admin("GET", "users/nobody@contoso.test/status").status_code == 404


def test_cli_sync_respects_the_lease_of_a_running_sync(embedded: Services, capsys: pytest.CaptureFixture[str]) -> None:
    from sync_core import cli

    assert embedded.store.try_lease(ADA, "queue-worker", ttl=timedelta(minutes=5))
    assert cli.main(["sync", "--user", ADA]) == 1
    assert "skipped, another sync of this user is running" in capsys.readouterr().out
    assert embedded.store.get_status("p1") is None  # nothing ran
    embedded.store.release_lease(ADA, "queue-worker")
    cli.main(["sync", "--user", ADA])
    assert embedded.store.get_status("p1") is not None

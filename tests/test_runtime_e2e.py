"""End to end in the Azure runtime shape: the project's own ``function_app`` run by the local
Functions host stand-in (``devtools/funchost.py``) on Azurite (Tables state, Storage queue),
with the Graph stand-in delivering real HTTPS notifications and a real Radicale.

- an edit in Microsoft 365 reaches CalDAV through notification -> queue -> worker without
  any timer tick, while the timer path syncs everyone else;
- subscriptions are created by the worker (validation handshake through the webhook),
  renewed, recreated after ``subscriptionRemoved`` and deleted when a user is disabled;
- a burst of 500 notifications for one user costs at most two syncs, and every notification
  is answered 202 well inside Graph's 3 s.
"""

from __future__ import annotations

import json
import ssl
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import function_app
from devtools.clients import CalDAVUserApp, GraphUserApp
from devtools.funchost import FunctionHost
from devtools.graphsim.remote import RemoteGraphSim
from devtools.servers import AzuriteServer, CalDAVServer
from sync_core.services import Services
from sync_core.state.base import UserRecord

TENANT, CLIENT_ID, SECRET = "contoso-e2e", "davbridge-e2e", "e2e-app-secret"
HOST_JSON = json.loads((Path(function_app.__file__).with_name("host.json")).read_text())


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@dataclass
class Runtime:
    sim: RemoteGraphSim
    host: FunctionHost
    services: Services
    graph: GraphUserApp
    calendars: dict[str, CalDAVUserApp]
    syncs: list[tuple[str, str]] = field(default_factory=list)  # (upn, trigger) of every sync run

    def syncs_of(self, upn: str) -> list[str]:
        return [trigger for who, trigger in list(self.syncs) if who == upn]

    def tick(self) -> None:
        invocation = self.host.tick("sync_timer")
        assert invocation.ok, invocation.error
        self.settle()

    def settle(self, timeout: float = 60.0) -> None:
        """Wait until Graph delivered everything and the host ran every queued sync."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.sim.wait_for_notifications(timeout=5) and self.host.wait_idle(timeout=5) \
                    and self.sim.wait_for_notifications(timeout=0.2):
                return
        raise AssertionError("the runtime did not settle")

    def subscription_of(self, upn: str) -> dict[str, Any] | None:
        mine = [s for s in self.sim.subscriptions() if upn in s["resource"]]
        assert len(mine) <= 1, mine
        return mine[0] if mine else None


@pytest.fixture
def runtime(azurite: AzuriteServer, _server_pool: Any, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[Runtime]:
    radicale: CalDAVServer = _server_pool.caldav("radicale")
    suffix = uuid.uuid4().hex[:8]
    with RemoteGraphSim(tmp_path / "graphsim") as sim:
        sim.register_app(TENANT, CLIENT_ID, client_secret=SECRET)
        cert, key = sim.issue_server_certificate()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        settings = {
            "AzureWebJobsStorage": azurite.connection_string,
            "SYNC_SCHEDULE": "0 */5 * * * *",
            "DAVBRIDGE_HOME": str(tmp_path / "home"),
            "DAVBRIDGE_STATE_URL": "azuretables:" + azurite.connection_string,
            "DAVBRIDGE_TABLE_PREFIX": f"e2e{suffix}",
            "DAVBRIDGE_QUEUE_URL": "azurequeue:" + azurite.connection_string,
            "DAVBRIDGE_SYNC_QUEUE": f"sync-{suffix}",
            "DAVBRIDGE_BUSY_RETRY_SECONDS": "1",
            "GRAPH_BASE_URL": sim.graph_url, "GRAPH_AUTHORITY_HOST": sim.authority_host,
            "GRAPH_TENANT_ID": TENANT, "GRAPH_CLIENT_ID": CLIENT_ID, "GRAPH_CA_BUNDLE": sim.ca_path,
        }
        host_json = json.loads(json.dumps(HOST_JSON))
        host_json["extensions"]["queues"]["visibilityTimeout"] = "00:00:01"
        host = FunctionHost(function_app.app, settings=settings, host_json=host_json, ssl_context=context)
        host.start()
        try:
            settings["DAVBRIDGE_WEBHOOK_URL"] = host.url("graph/notifications")
            settings["DAVBRIDGE_LIFECYCLE_URL"] = host.url("graph/lifecycle")
            for name, value in settings.items():
                monkeypatch.setenv(name, value)
            function_app.services.cache_clear()
            services = function_app.services()
            services.secrets.set("graph-client-secret", SECRET)
            rt = Runtime(sim, host, services,
                         GraphUserApp(sim.graph_url, sim.authority_host, TENANT, CLIENT_ID, SECRET, sim.ca_path), {})
            original = Services.sync_user

            def counting(self: Services, upn: str, **kwargs: Any) -> Any:
                rt.syncs.append((upn, str(kwargs.get("trigger"))))
                return original(self, upn, **kwargs)

            monkeypatch.setattr(Services, "sync_user", counting)
            for name in ("ada", "bob", "cy"):
                upn = f"{name}-{suffix}@contoso.test"
                sim.add_user(upn)
                calendar = radicale.new_calendar(f"e2e {name} {suffix}")
                services.add_user(upn, caldav_url=radicale.url, caldav_username=radicale.username,
                                  caldav_password=radicale.password, caldav_calendar=calendar)
                rt.calendars[upn] = CalDAVUserApp(radicale, calendar)
            yield rt
        finally:
            host.stop()
            function_app.services.cache_clear()


def _upn(rt: Runtime, name: str) -> str:
    return next(u for u in rt.calendars if u.startswith(name + "-"))


def _slot(hours: int) -> tuple[str, str]:
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(days=2, hours=hours)
    return start.strftime("%Y-%m-%dT%H:%M:%S"), (start + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S")


def test_notification_reaches_caldav_without_the_timer_and_the_timer_syncs_the_rest(runtime: Runtime) -> None:
    rt = runtime
    ada, bob, cy = _upn(rt, "ada"), _upn(rt, "bob"), _upn(rt, "cy")

    # First tick: one message per user; each worker creates the user's subscription (Graph
    # validates the webhook through the host first) and runs the first sync.
    rt.tick()
    assert sorted(u for u, _ in rt.syncs) == sorted([ada, bob, cy])
    for upn in (ada, bob, cy):
        sub = rt.subscription_of(upn)
        assert sub is not None and sub["notificationUrl"] == rt.services.settings.webhook_url
        stored = rt.services.store.get_subscription(sub["id"])
        assert stored is not None and stored.upn == upn
        (pairing,) = rt.services.store.list_pairings(upn)
        status = rt.services.store.get_status(pairing.pairing_id)
        assert status is not None and status.ok, status
    assert all(v["ok"] for v in rt.sim.validation_log)

    # Bob edits his CalDAV calendar; nothing pushes that, so only the timer will carry it.
    start, end = _slot(1)
    rt.calendars[bob].put("Bob's dentist", start.replace("-", "").replace(":", "") + "Z",
                          end.replace("-", "").replace(":", "") + "Z")
    rt.syncs.clear()

    # Ada edits in Outlook: the notification alone brings it to her CalDAV calendar.
    start, end = _slot(3)
    rt.graph.create(ada, "Board meeting", start, end)
    _wait(lambda: bool(rt.calendars[ada].by_summary("Board meeting")), 30, "Ada's event on CalDAV")
    assert rt.syncs_of(ada) and all("webhook" in t for t in rt.syncs_of(ada))
    assert rt.syncs_of(bob) == [] and rt.syncs_of(cy) == []
    assert not [e for e in rt.graph.events(bob) if e["subject"] == "Bob's dentist"]
    deliveries = [d for d in rt.sim.notification_log if d["kind"] == "change"]
    assert deliveries and {d["status"] for d in deliveries} == {202}

    rt.settle()
    rt.syncs.clear()
    rt.tick()  # the timer path syncs everyone
    for upn in (ada, bob, cy):
        assert rt.syncs_of(upn)[0] == "timer"
    assert [e for e in rt.graph.events(bob) if e["subject"] == "Bob's dentist"]
    # Bob's copy written to Microsoft 365 fires notifications too: at most one echo sync,
    # which writes nothing.
    assert rt.syncs_of(bob)[1:] in ([], ["webhook"])
    (pairing,) = rt.services.store.list_pairings(bob)
    status = rt.services.store.get_status(pairing.pairing_id)
    assert status is not None and status.ok and not status.counts


def test_subscription_lifecycle_and_disable(runtime: Runtime) -> None:
    rt = runtime
    ada, cy = _upn(rt, "ada"), _upn(rt, "cy")
    rt.tick()
    first = rt.subscription_of(ada)
    assert first is not None

    # reauthorizationRequired -> renewed (same subscription, later expiry), and a resync
    rt.syncs.clear()
    time.sleep(1.1)  # expiry has whole-second resolution in the payload
    assert rt.sim.send_lifecycle(first["id"], "reauthorizationRequired")
    rt.settle()
    renewed = rt.subscription_of(ada)
    assert renewed is not None and renewed["id"] == first["id"]
    assert renewed["expirationDateTime"] > first["expirationDateTime"]
    assert rt.syncs_of(ada) == ["lifecycle"]

    # subscriptionRemoved -> recreated (new id, stored), then resynced
    rt.syncs.clear()
    assert rt.sim.send_lifecycle(first["id"], "subscriptionRemoved")
    rt.settle()
    again = rt.subscription_of(ada)
    assert again is not None and again["id"] != first["id"]
    assert rt.services.store.get_subscription(first["id"]) is None
    assert rt.services.store.get_subscription(again["id"]) is not None
    assert rt.syncs_of(ada) == ["lifecycle"]

    # missed -> resync only
    rt.syncs.clear()
    assert rt.sim.send_lifecycle(again["id"], "missed")
    rt.settle()
    assert rt.syncs_of(ada) == ["lifecycle"] and rt.subscription_of(ada) == again

    # A forged lifecycle POST (right subscription id, wrong clientState) does nothing.
    rt.syncs.clear()
    import requests

    forged = {"value": [{"subscriptionId": again["id"], "clientState": "guess", "lifecycleEvent":
                         "subscriptionRemoved", "resource": again["resource"], "tenantId": TENANT,
                         "subscriptionExpirationDateTime": again["expirationDateTime"]}]}
    reply = requests.post(rt.host.url("graph/lifecycle"), json=forged, verify=rt.sim.ca_path, timeout=10)
    assert reply.status_code == 202
    rt.settle()
    assert rt.syncs_of(ada) == [] and rt.subscription_of(ada) == again

    # Disabling a user deletes its subscription in Graph and in state.
    sub_cy = rt.subscription_of(cy)
    assert sub_cy is not None
    rt.services.set_enabled(cy, False)
    assert rt.subscription_of(cy) is None and rt.services.store.list_subscriptions(cy) == []
    rt.syncs.clear()
    rt.tick()
    assert cy not in {u for u, _ in rt.syncs}
    user: UserRecord | None = rt.services.store.get_user(cy)
    assert user is not None and not user.enabled


def test_a_burst_of_500_notifications_costs_at_most_two_syncs(runtime: Runtime) -> None:
    rt = runtime
    ada = _upn(rt, "ada")
    rt.tick()
    events = []
    for i in range(10):
        start, end = _slot(10 + i)
        events.append(rt.graph.create(ada, f"Standup {i}", start, end))
    rt.settle()
    assert len(rt.calendars[ada].by_summary("Standup 9")) == 1
    rt.syncs.clear()
    rt.sim.reset_notification_log()

    # 500 edits by another app (Outlook; Graph allows 4 concurrent requests per app and
    # mailbox), 4 at a time: each fires one `updated` notification.
    errors: list[BaseException] = []
    rt.sim.register_app(TENANT, "outlook-client", client_secret="outlook-secret")

    def edit(worker: int) -> None:
        try:
            app = GraphUserApp(rt.sim.graph_url, rt.sim.authority_host, TENANT, "outlook-client",
                               "outlook-secret", rt.sim.ca_path)
            for n in range(worker, 500, 4):
                ev = events[n % len(events)]
                app.update(ada, ev["id"], subject=f"Standup {n % len(events)} v{n}")
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    burst_started = time.monotonic()
    threads = [threading.Thread(target=edit, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    burst_seconds = time.monotonic() - burst_started
    assert not errors, errors
    rt.settle(timeout=90)

    deliveries = [d for d in rt.sim.notification_log if d["kind"] == "change" and d["attempt"] == 1]
    assert len(deliveries) >= 500
    assert {d["status"] for d in deliveries} == {202}
    seconds = sorted(d["seconds"] for d in deliveries)
    assert seconds[-1] < 3.0, f"slowest answer {seconds[-1]:.2f} s"
    print(f"\nburst of {len(deliveries)} notifications: answer median {statistics.median(seconds) * 1000:.0f} ms, "
          f"p99 {seconds[int(len(seconds) * 0.99) - 1] * 1000:.0f} ms, max {seconds[-1] * 1000:.0f} ms; "
          f"burst lasted {burst_seconds:.1f} s; syncs of the user: {len(rt.syncs_of(ada))}")
    handled = sorted(i.duration for i in rt.host.invocations if i.function == "graph_notifications")
    print(f"handler time median {statistics.median(handled) * 1000:.0f} ms, max {handled[-1] * 1000:.0f} ms")
    assert 1 <= len(rt.syncs_of(ada)) <= 2, rt.syncs_of(ada)
    # ... and what each event holds in Microsoft 365 after the burst is on CalDAV.
    for ev in events:
        final = rt.graph.get(ada, ev["id"])["subject"]
        assert final.split(" v")[0] in {f"Standup {i}" for i in range(10)}
        assert len(rt.calendars[ada].by_summary(final)) == 1, final

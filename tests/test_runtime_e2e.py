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

import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import requests

from devtools.runtime import TENANT, AzureRuntime, slot, wait_for
from devtools.sendhook import watching_requests
from devtools.servers import AzuriteServer
from sync_core import handlers
from sync_core.services import Services
from sync_core.state.base import UserRecord

Runtime = AzureRuntime


@pytest.fixture
def runtime(azurite: AzuriteServer, _server_pool: Any, tmp_path: Path) -> Iterator[AzureRuntime]:
    with AzureRuntime(azurite, _server_pool.caldav("radicale"), tmp_path) as rt:
        yield rt


def test_notification_reaches_caldav_without_the_timer_and_the_timer_syncs_the_rest(runtime: Runtime) -> None:
    rt = runtime
    ada, bob, cy = rt.upn("ada"), rt.upn("bob"), rt.upn("cy")

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
    start, end = slot(1)
    rt.calendars[bob].put("Bob's dentist", start.replace("-", "").replace(":", "") + "Z",
                          end.replace("-", "").replace(":", "") + "Z")
    rt.syncs.clear()

    # Ada edits in Outlook: the notification alone brings it to her CalDAV calendar.
    start, end = slot(3)
    rt.graph.create(ada, "Board meeting", start, end)
    wait_for(lambda: bool(rt.calendars[ada].by_summary("Board meeting")), 30, "Ada's event on CalDAV")
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
    ada, cy = rt.upn("ada"), rt.upn("cy")
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
    ada = rt.upn("ada")
    rt.tick()
    events = []
    for i in range(10):
        start, end = slot(10 + i)
        events.append(rt.graph.create(ada, f"Standup {i}", start, end))
    rt.settle()
    assert len(rt.calendars[ada].by_summary("Standup 9")) == 1

    report = rt.burst(ada, events, edits=500)
    print(f"\nburst: {report.summary()}")
    assert report.notifications >= 500 and report.statuses == {202}
    assert report.answer_seconds[-1] < 3.0, report.summary()  # Graph: answer within 3 s
    assert 1 <= report.syncs <= 2, rt.syncs_of(ada)
    # ... and what each event holds in Microsoft 365 after the burst is on CalDAV.
    for ev in events:
        final = rt.graph.get(ada, ev["id"])["subject"]
        assert final.split(" v")[0] in {f"Standup {i}" for i in range(10)}
        assert len(rt.calendars[ada].by_summary(final)) == 1, final


def test_timer_renews_subscriptions_due_within_a_day_and_recreates_gone_ones(runtime: Runtime) -> None:
    rt = runtime
    ada, bob = rt.upn("ada"), rt.upn("bob")
    rt.tick()
    (sub_ada,) = rt.services.store.list_subscriptions(ada)
    (sub_bob,) = rt.services.store.list_subscriptions(bob)
    now = datetime.now(UTC)
    # Six days later, as far as the state knows: both fall due; Bob's is gone from Graph.
    sub_ada.expires_at = now + timedelta(hours=2)
    sub_bob.expires_at = now + timedelta(hours=3)
    rt.services.store.save_subscription(sub_ada)
    rt.services.store.save_subscription(sub_bob)
    rt.sim.expire_subscription(sub_bob.subscription_id)
    before = rt.subscription_of(ada)
    assert before is not None and rt.subscription_of(bob) is None

    rt.tick()
    renewed = rt.subscription_of(ada)
    assert renewed is not None and renewed["id"] == sub_ada.subscription_id
    (row,) = rt.services.store.list_subscriptions(ada)
    assert row.expires_at > now + timedelta(days=6)
    recreated = rt.subscription_of(bob)
    assert recreated is not None and recreated["id"] != sub_bob.subscription_id
    assert [s.subscription_id for s in rt.services.store.list_subscriptions(bob)] == [recreated["id"]]


def test_a_crashing_sync_lands_in_the_poison_queue_and_in_status(runtime: Runtime,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    rt = runtime
    cy = rt.upn("cy")
    rt.tick()
    counting = Services.sync_user

    def crash_for_cy(self: Services, upn: str, **kwargs: Any) -> Any:
        if upn == cy:
            raise RuntimeError("simulated bug")
        return counting(self, upn, **kwargs)

    monkeypatch.setattr(Services, "sync_user", crash_for_cy)
    assert handlers.request_user_sync(rt.services, cy, "manual")

    def poisoned() -> bool:
        user = rt.services.store.get_user(cy)
        return user is not None and "poison queue" in (user.last_error or "")

    wait_for(poisoned, 60, "the poison record")
    failed = [i for i in rt.host.invocations if i.function == "sync_worker" and not i.ok]
    assert len(failed) == 5 and all("RuntimeError" in (i.error or "") for i in failed)
    # The status row is written inside sync_poison; its invocation is recorded once it returns.
    wait_for(lambda: any(i.function == "sync_poison" and i.ok for i in rt.host.invocations), 10,
             "the sync_poison invocation")

    # The admin status endpoint (function key) shows it; without the key: 401.
    status_url = rt.host.function_url("admin_api", path=f"users/{cy}/status")
    reply = requests.get(status_url, verify=rt.sim.ca_path, timeout=10)
    assert reply.status_code == 200 and "poison queue" in reply.json()["last_error"]
    assert requests.get(rt.host.url(f"admin/users/{cy}/status"), verify=rt.sim.ca_path, timeout=10).status_code == 401

    # Fixed: an admin "sync now" runs through the queue and a clean run clears the error.
    monkeypatch.setattr(Services, "sync_user", counting)
    reply = requests.post(rt.host.function_url("admin_api", path=f"users/{cy}/sync"), verify=rt.sim.ca_path,
                          timeout=10)
    assert reply.status_code == 202 and reply.json()["queued"] is True
    rt.settle()
    user = rt.services.store.get_user(cy)
    assert user is not None and user.last_error is None


#: Table requests of one user in a steady tick: the timer's insert of the sync request, then the
#: sync's user read, lease insert, request read and delete, pairings, cursors, pending, status
#: read, status write, new delta cursor, lease delete (18 before issue 8's changes).
USER_TABLE_REQUESTS = 12
TIMER_TABLE_REQUESTS = 4


def test_a_steady_tick_costs_each_user_one_insert_and_a_few_table_requests(runtime: Runtime) -> None:
    """Issue 8, tick: in steady state a user's timer request is one insert and its sync about
    ten Table requests (user, lease, request, pairings, cursors, pending, status; no link
    rows read), one delta GET and one sync-collection REPORT."""
    rt = runtime
    rt.tick()
    rt.tick()  # the first tick's copies echo once; after this one nothing is left to write
    table = urlsplit(rt.azurite.table_url).netloc
    seen: list[tuple[str, str]] = []

    def record(method: str, url: str, _seconds: float) -> None:
        where = urlsplit(url)
        if where.netloc == table:
            seen.append((method, unquote(where.path)))

    rt.syncs.clear()
    with watching_requests(record):
        rt.tick()
    users = len(rt.user_names)
    assert sorted(rt.syncs) == sorted((rt.upn(n), "timer") for n in rt.user_names)
    assert not [path for _, path in seen if "links" in path]  # nothing changed: no link rows read
    # The timer lists users and subscriptions and ages out the audit log (a few requests), and
    # each user costs one insert there plus its sync's requests.
    assert len(seen) <= TIMER_TABLE_REQUESTS + users * USER_TABLE_REQUESTS, Counter(m for m, _ in seen)

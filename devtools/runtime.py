"""The Azure runtime shape on one machine, for end-to-end tests and ``make bench``.

The project's own ``function_app`` runs in the local Functions host stand-in
(``devtools/funchost.py``, HTTPS with a certificate the Graph stand-in trusts) on Azurite
(Tables state, Storage queue), against the Graph stand-in in its own process (so Graph and
the app do not share one interpreter) and a real CalDAV server. Settings reach the app as in
Azure: through environment variables, set for the runtime's lifetime and restored after.

Observation only: :attr:`AzureRuntime.syncs` records every ``Services.sync_user`` call
(user, trigger) by wrapping the method while the runtime runs.
"""

from __future__ import annotations

import json
import os
import ssl
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import function_app
from devtools.clients import CalDAVUserApp, GraphUserApp
from devtools.funchost import FunctionHost
from devtools.graphsim.remote import RemoteGraphSim
from devtools.servers import AzuriteServer, CalDAVServer
from sync_core import admin
from sync_core.services import Services

TENANT, CLIENT_ID, SECRET = "contoso-e2e", "davbridge-e2e", "e2e-app-secret"
EDITOR_ID, EDITOR_SECRET = "outlook-client", "outlook-secret"


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def slot(hours: int) -> tuple[str, str]:
    """A one-hour slot two days ahead, as Graph local date-times (UTC)."""
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(days=2, hours=hours)
    return start.strftime("%Y-%m-%dT%H:%M:%S"), (start + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S")


@dataclass
class BurstReport:
    notifications: int
    statuses: set[int]
    answer_seconds: list[float]  # as Graph measured them, sorted
    handler_seconds: list[float]  # inside the function, sorted
    burst_seconds: float
    syncs: int

    def summary(self) -> dict[str, float | int]:
        a, h = self.answer_seconds, self.handler_seconds
        return {
            "notifications": self.notifications, "syncs": self.syncs, "burst_seconds": round(self.burst_seconds, 2),
            "answer_median_ms": round(statistics.median(a) * 1000),
            "answer_p99_ms": round(a[int(len(a) * .99) - 1] * 1000),
            "answer_max_ms": round(a[-1] * 1000), "handler_median_ms": round(statistics.median(h) * 1000),
            "handler_max_ms": round(h[-1] * 1000),
        }


class AzureRuntime:
    """Start with :meth:`start`; stop with :meth:`stop` (or use as a context manager)."""

    def __init__(self, azurite: AzuriteServer, caldav: CalDAVServer, workdir: Path, *,
                 users: Iterable[str] = ("ada", "bob", "cy"), setup_workers: int = 1,
                 host_workers: int | None = None) -> None:
        """``setup_workers``: users onboarded (calendar made, ``admin.add_user``) that many at
        a time, for benchmarks with many users; the Graph stand-in learns of them one by one.
        ``host_workers``: the host's thread pool, shared by every function as in the Python
        worker (``PYTHON_THREADPOOL_THREAD_COUNT``; None: its default, ``min(32, cpu + 4)``)."""
        self.azurite, self.caldav, self.workdir = azurite, caldav, Path(workdir)
        self.user_names = list(users)
        self.setup_workers = max(1, setup_workers)
        self.host_workers = host_workers
        self.suffix = uuid.uuid4().hex[:8]
        self.calendars: dict[str, CalDAVUserApp] = {}
        self.syncs: list[tuple[str, str]] = []
        self._saved_env: dict[str, str | None] = {}
        self._original_sync_user = Services.sync_user
        self.sim: RemoteGraphSim
        self.host: FunctionHost
        self.services: Services
        self.graph: GraphUserApp

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> AzureRuntime:
        self.sim = RemoteGraphSim(self.workdir / "graphsim")
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        sim, conn = self.sim, self.azurite.connection_string
        sim.register_app(TENANT, CLIENT_ID, SECRET)
        sim.register_app(TENANT, EDITOR_ID, EDITOR_SECRET)
        cert, key = sim.issue_server_certificate()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        settings = {
            "AzureWebJobsStorage": conn, "SYNC_SCHEDULE": "0 */5 * * * *",
            "DAVBRIDGE_HOME": str(self.workdir / "home"),
            "DAVBRIDGE_STATE_URL": "azuretables:" + conn, "DAVBRIDGE_TABLE_PREFIX": f"rt{self.suffix}",
            "DAVBRIDGE_QUEUE_URL": "azurequeue:" + conn, "DAVBRIDGE_SYNC_QUEUE": f"sync-{self.suffix}",
            "DAVBRIDGE_BUSY_RETRY_SECONDS": "1",
            "GRAPH_BASE_URL": sim.graph_url, "GRAPH_AUTHORITY_HOST": sim.authority_host,
            "GRAPH_TENANT_ID": TENANT, "GRAPH_CLIENT_ID": CLIENT_ID, "GRAPH_CA_BUNDLE": sim.ca_path,
        }
        host_json = json.loads(Path(function_app.__file__).with_name("host.json").read_text())
        host_json["extensions"]["queues"]["visibilityTimeout"] = "00:00:01"  # fast retries in tests
        self.host = FunctionHost(function_app.app, settings=settings, host_json=host_json, ssl_context=context,
                                 max_workers=self.host_workers)
        self.host.start()
        settings["DAVBRIDGE_WEBHOOK_URL"] = self.host.url("graph/notifications")
        settings["DAVBRIDGE_LIFECYCLE_URL"] = self.host.url("graph/lifecycle")
        for name, value in settings.items():
            self._saved_env.setdefault(name, os.environ.get(name))
            os.environ[name] = value
        self._observe_syncs()
        function_app.services.cache_clear()
        self.services = function_app.services()
        self.services.secrets.set("graph-client-secret", SECRET)
        self.graph = GraphUserApp(sim.graph_url, sim.authority_host, TENANT, CLIENT_ID, SECRET, sim.ca_path)
        for name in self.user_names:
            sim.add_user(self.upn(name))
        first, rest = self.user_names[:1], self.user_names[1:]
        for name in first if self.setup_workers > 1 else self.user_names:
            self._onboard(name)  # the first one alone: it makes the shared Graph client and token
        if self.setup_workers > 1 and rest:
            with ThreadPoolExecutor(self.setup_workers, thread_name_prefix="runtime-setup") as pool:
                list(pool.map(self._onboard, rest))  # re-raises the first failure
            self.calendars = {self.upn(name): self.calendars[self.upn(name)] for name in self.user_names}

    def _onboard(self, name: str) -> None:
        upn = self.upn(name)
        calendar = self.caldav.new_calendar(f"rt {name} {self.suffix}")
        report = admin.add_user(self.services, upn, caldav_url=self.caldav.url,
                                caldav_username=self.caldav.username, caldav_password=self.caldav.password,
                                caldav_calendar=calendar)
        assert report.ok, report.user.auth_status
        self.calendars[upn] = CalDAVUserApp(self.caldav, calendar)

    def _observe_syncs(self) -> None:
        original, record = self._original_sync_user, self.syncs

        def counting(services: Services, upn: str, **kwargs: Any) -> Any:
            record.append((upn, str(kwargs.get("trigger"))))
            return original(services, upn, **kwargs)

        Services.sync_user = counting  # type: ignore[method-assign,assignment]

    def stop(self) -> None:
        Services.sync_user = self._original_sync_user  # type: ignore[method-assign]
        if hasattr(self, "host"):
            self.host.stop()
        function_app.services.cache_clear()
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_env.clear()
        self.sim.stop()

    def __enter__(self) -> AzureRuntime:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- driving and observing -----------------------------------------------------------------
    def upn(self, name: str) -> str:
        return f"{name}-{self.suffix}@contoso.test"

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
            if (self.sim.wait_for_notifications(timeout=5) and self.host.wait_idle(timeout=5)
                    and self.sim.wait_for_notifications(timeout=0.2)):
                return
        raise AssertionError("the runtime did not settle")

    def subscription_of(self, upn: str) -> dict[str, Any] | None:
        mine = [s for s in self.sim.subscriptions() if upn in s["resource"]]
        assert len(mine) <= 1, mine
        return mine[0] if mine else None

    def burst(self, upn: str, events: list[dict[str, Any]], edits: int = 500, workers: int = 4) -> BurstReport:
        """``edits`` subject changes by another app (Outlook; Graph allows 4 concurrent requests
        per app and mailbox), ``workers`` at a time: each fires one ``updated`` notification."""
        self.syncs.clear()
        self.sim.reset_notification_log()
        handled_before = len(self.host.invocations)
        errors: list[BaseException] = []

        def edit(worker: int) -> None:
            try:
                app = GraphUserApp(self.sim.graph_url, self.sim.authority_host, TENANT, EDITOR_ID, EDITOR_SECRET,
                                   self.sim.ca_path)
                for n in range(worker, edits, workers):
                    ev = events[n % len(events)]
                    app.update(upn, ev["id"], subject=f"{ev['subject'].split(' v')[0]} v{n}")
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        started = time.monotonic()
        threads = [threading.Thread(target=edit, args=(w,)) for w in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        took = time.monotonic() - started
        if errors:
            raise errors[0]
        self.settle(timeout=90)
        deliveries = [d for d in self.sim.notification_log if d["kind"] == "change" and d["attempt"] == 1]
        handled = [i.duration for i in self.host.invocations[handled_before:] if i.function == "graph_notifications"]
        return BurstReport(len(deliveries), {d["status"] for d in deliveries},
                           sorted(float(d["seconds"]) for d in deliveries), sorted(handled), took,
                           len(self.syncs_of(upn)))

"""Azure Functions entry point (Python v2 model). Wiring only: every handler is in sync_core.

- ``sync_timer`` (``%SYNC_SCHEDULE%``, e.g. every 5 minutes): one queue message per enabled
  user, and Graph subscription upkeep.
- ``sync_worker`` (queue ``%DAVBRIDGE_SYNC_QUEUE%``): syncs one user under its lease;
  ``sync_poison`` records messages that failed ``maxDequeueCount`` times (host.json).
- ``graph_notifications`` / ``graph_lifecycle``: Graph webhooks (anonymous; authenticated by
  the HMAC ``clientState`` of every item), answered 202 at once.
- ``admin_api`` (``/api/admin/...``, function key): the admin operations of the CLI
  (``sync_core/admin_http.py``).
- ``auth_start`` / ``auth_callback``: the delegated sign-in of one user (auth-code flow; the
  start link is signed, the callback checks msal's state).
"""

from __future__ import annotations

from functools import lru_cache

import azure.functions as func

from sync_core import admin_http, handlers
from sync_core.services import Services
from sync_core.settings import Settings

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)

SYNC_QUEUE = "%DAVBRIDGE_SYNC_QUEUE%"
STORAGE_CONNECTION = "AzureWebJobsStorage"


@lru_cache(maxsize=1)
def services() -> Services:
    """One set of clients per worker process (msal, HTTP sessions and caches are reused)."""
    return Services(Settings.from_env())


def _web(resp: handlers.WebResponse) -> func.HttpResponse:
    return func.HttpResponse(resp.body, status_code=resp.status, mimetype=resp.mimetype,
                             charset="utf-8", headers=resp.headers)


@app.timer_trigger(schedule="%SYNC_SCHEDULE%", arg_name="timer", run_on_startup=False, use_monitor=True)
def sync_timer(timer: func.TimerRequest) -> None:
    handlers.timer_tick(services())


@app.queue_trigger(arg_name="msg", queue_name=SYNC_QUEUE, connection=STORAGE_CONNECTION)
def sync_worker(msg: func.QueueMessage) -> None:
    handlers.run_queued_sync(services(), msg.get_body(),
                             busy_retry_seconds=services().settings.busy_retry_seconds)


@app.queue_trigger(arg_name="msg", queue_name=SYNC_QUEUE + "-poison", connection=STORAGE_CONNECTION)
def sync_poison(msg: func.QueueMessage) -> None:
    handlers.record_poison(services(), msg.get_body())


@app.route(route="graph/notifications", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
def graph_notifications(req: func.HttpRequest) -> func.HttpResponse:
    return _web(handlers.graph_notifications(services(), dict(req.params), req.get_body()))


@app.route(route="graph/lifecycle", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
def graph_lifecycle(req: func.HttpRequest) -> func.HttpResponse:
    return _web(handlers.graph_lifecycle(services(), dict(req.params), req.get_body()))


@app.route(route="admin/{*path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
           auth_level=func.AuthLevel.FUNCTION)
def admin_api(req: func.HttpRequest) -> func.HttpResponse:
    return _web(admin_http.handle(services(), req.method, req.route_params.get("path", ""), dict(req.params),
                                  req.get_body()))


@app.route(route="auth/start", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def auth_start(req: func.HttpRequest) -> func.HttpResponse:
    return _web(handlers.delegated_start(services(), dict(req.params)))


@app.route(route="auth/callback", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def auth_callback(req: func.HttpRequest) -> func.HttpResponse:
    return _web(handlers.delegated_callback(services(), dict(req.params)))

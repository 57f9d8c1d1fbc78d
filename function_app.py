"""Azure Functions entry point (Python v2 model). Wiring only: every handler is in sync_core.

- ``sync_timer`` (``%SYNC_SCHEDULE%``, e.g. every 5 minutes): one queue message per enabled
  user, and Graph subscription upkeep.
- ``sync_worker`` (queue ``%DAVBRIDGE_SYNC_QUEUE%``): syncs one user under its lease;
  ``sync_poison`` records messages that failed ``maxDequeueCount`` times (host.json).
- ``graph_notifications`` / ``graph_lifecycle``: Graph webhooks (anonymous; authenticated by
  the HMAC ``clientState`` of every item), answered 202 at once.
- ``admin_sync_now`` / ``admin_status``: function-key protected admin endpoints for one user.
"""

from __future__ import annotations

import json
from functools import lru_cache

import azure.functions as func

from sync_core import handlers
from sync_core.services import Services
from sync_core.settings import Settings

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)

SYNC_QUEUE = "%DAVBRIDGE_SYNC_QUEUE%"
STORAGE_CONNECTION = "AzureWebJobsStorage"


@lru_cache(maxsize=1)
def services() -> Services:
    """One set of clients per worker process (msal, HTTP sessions and caches are reused)."""
    return Services(Settings.from_env())


def _json(status: int, body: object) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(body), status_code=status, mimetype="application/json")


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


@app.route(route="admin/users/{upn}/sync", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def admin_sync_now(req: func.HttpRequest) -> func.HttpResponse:
    wait = req.params.get("wait", "").lower() in ("1", "true", "yes")
    return _json(*handlers.sync_now(services(), req.route_params["upn"], wait=wait))


@app.route(route="admin/users/{upn}/status", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def admin_status(req: func.HttpRequest) -> func.HttpResponse:
    return _json(*handlers.user_status(services(), req.route_params["upn"]))

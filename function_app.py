"""Azure Functions entry point (Python v2 model). Wiring only: every handler is in sync_core.

- ``sync_timer``: every ~5 minutes (``%SYNC_SCHEDULE%``), syncs every enabled user.
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


@lru_cache(maxsize=1)
def services() -> Services:
    """One set of clients per worker process (msal and HTTP sessions are reused)."""
    return Services(Settings.from_env())


def _json(status: int, body: object) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(body), status_code=status, mimetype="application/json")


@app.timer_trigger(schedule="%SYNC_SCHEDULE%", arg_name="timer", run_on_startup=False, use_monitor=True)
def sync_timer(timer: func.TimerRequest) -> None:
    handlers.run_timer(services())


@app.route(route="admin/users/{upn}/sync", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def admin_sync_now(req: func.HttpRequest) -> func.HttpResponse:
    return _json(*handlers.sync_now(services(), req.route_params["upn"]))


@app.route(route="admin/users/{upn}/status", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def admin_status(req: func.HttpRequest) -> func.HttpResponse:
    return _json(*handlers.user_status(services(), req.route_params["upn"]))

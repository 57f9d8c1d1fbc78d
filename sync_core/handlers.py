"""Function handlers: what each Azure Functions trigger does, free of the Functions SDK.

``function_app.py`` only binds triggers to these functions; tests call them directly.
Responses are (status code, JSON-able body) pairs.
"""

from __future__ import annotations

import logging
from typing import Any

from sync_core.engine import UserOutcome
from sync_core.services import Services

log = logging.getLogger("davbridge.handlers")


def outcome_json(outcome: UserOutcome) -> dict[str, Any]:
    return {
        "user": outcome.upn,
        "ok": outcome.ok,
        "pairings": [
            {
                "pairing": p.pairing.name,
                "pairing_id": p.pairing.pairing_id,
                "ok": p.ok,
                "error": p.error,
                "counts": p.applied.counts if p.applied else {},
                "deferred": len(p.applied.failed) if p.applied else 0,
                "quarantined": p.applied.quarantined if p.applied else 0,
            }
            for p in outcome.pairings
        ],
    }


def run_timer(services: Services, *, max_users: int | None = None) -> dict[str, int]:
    """Timer tick: sync every enabled user; one user's failure never stops the others."""
    done = failed = 0
    for user in services.store.list_users(enabled_only=True)[:max_users]:
        try:
            outcome = services.sync_user(user.upn, trigger="timer")
        except Exception:  # a bug for one user must not starve the rest
            log.exception("sync of one user crashed")
            failed += 1
            continue
        done += 1
        failed += 0 if outcome.ok else 1
    log.info("timer tick: %d users synced, %d with errors", done, failed)
    return {"synced": done, "failed": failed}


def sync_now(services: Services, upn: str) -> tuple[int, dict[str, Any]]:
    """Admin "sync now" for one user (HTTP, function-key auth)."""
    if services.store.get_user(upn) is None:
        return 404, {"error": "unknown user"}
    outcome = services.sync_user(upn, trigger="manual")
    return (200 if outcome.ok else 502), outcome_json(outcome)


def user_status(services: Services, upn: str) -> tuple[int, dict[str, Any]]:
    """Admin status of one user: auth state and the last run of each pairing."""
    user = services.store.get_user(upn)
    if user is None:
        return 404, {"error": "unknown user"}
    pairings = []
    for pairing in services.store.list_pairings(user.upn):
        st = services.store.get_status(pairing.pairing_id)
        pairings.append({
            "pairing": pairing.name,
            "direction": pairing.direction.value,
            "last_run": st.finished_at.isoformat() if st and st.finished_at else None,
            "last_success": st.last_success_at.isoformat() if st and st.last_success_at else None,
            "ok": st.ok if st else None,
            "counts": st.counts if st else {},
            "quarantined": st.quarantined if st else 0,
            "last_error": st.error if st else None,
            "notices": st.notices if st else [],
        })
    return 200, {"user": user.upn, "enabled": user.enabled, "auth_status": user.auth_status,
                 "pairings": pairings}

"""Function handlers: what each Azure Functions trigger does, free of the Functions SDK.

``function_app.py`` only binds triggers to these functions; tests call them directly and
through ``devtools/funchost.py``. HTTP handlers return a :class:`WebResponse`.

How one user's syncs are kept apart (Graph: "answer within 3 s", Functions: queue fan-out):

- every trigger calls :func:`request_user_sync`: the user's ``SyncRequest`` row coalesces
  requests, so at most one message per user waits in the queue;
- the queue worker (:func:`run_queued_sync`) takes the per-user lease, takes the pending
  request and syncs; a second message meeting a held lease is re-sent with a delay;
  a message whose request was already served by another run does nothing. So a burst of
  notifications costs at most one running and one queued sync of that user.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sync_core.engine import UserOutcome
from sync_core.errors import DavbridgeError
from sync_core.queue import BadMessage, SyncMessage
from sync_core.services import Services
from sync_core.state.base import UserRecord, utcnow
from sync_core.subscriptions import RENEW_WITHIN
from sync_core.webhooks import (
    BadNotification,
    Notification,
    client_state_matches,
    parse_notifications,
    validation_answer,
)

log = logging.getLogger("davbridge.handlers")

#: A pending request older than this lost its message: the next trigger enqueues a new one.
REQUEST_STALE_AFTER = timedelta(minutes=15)
#: At most this many distinct subscriptions are looked up per notification POST.
MAX_SUBSCRIPTIONS_PER_POST = 200


@dataclass
class WebResponse:
    status: int
    body: str = ""
    mimetype: str = "text/plain"
    headers: dict[str, str] = field(default_factory=dict)


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


# -- coalesced enqueue ---------------------------------------------------------------------------
def request_user_sync(services: Services, upn: str, trigger: str, *, check_subscription: bool = False,
                      delay_seconds: int = 0) -> bool:
    """Ask for a sync of ``upn``; True when a queue message was sent, False when the request
    was merged into one already waiting. ``delay_seconds`` keeps the message invisible that
    long, so everything arriving meanwhile merges into the same sync (webhook debounce)."""
    store = services.store
    if not store.request_sync(upn, trigger, check_subscription=check_subscription,
                              stale_after=REQUEST_STALE_AFTER):
        return False
    try:
        services.queue.send(SyncMessage(upn, trigger), delay_seconds=delay_seconds)
    except Exception:
        store.take_sync_request(upn)  # no message carries it: let the next trigger try again
        raise
    return True


def _record_user_error(services: Services, upn: str, text: str) -> None:
    user = services.store.get_user(upn)
    if user is not None:
        user.last_error, user.last_error_at = text, utcnow()
        services.store.save_user(user)


# -- timer -----------------------------------------------------------------------------------------
def timer_tick(services: Services, *, now: datetime | None = None, workers: int = 16,
               renew_budget_seconds: float = 120.0) -> dict[str, int]:
    """Every ~5 minutes: one coalesced sync request per enabled user, then subscription upkeep
    (renew those expiring within 24 h, remove those of disabled users, ask the worker to
    create missing ones) and aging out the audit log. One user's failure never stops the others."""
    now = now or utcnow()
    store = services.store
    users = store.list_users(enabled_only=True)
    webhooks = services.settings.webhooks_enabled
    subs = store.list_subscriptions() if webhooks else []
    if webhooks:
        services.client_state_key(create=True)
    live_owners = {s.upn.casefold() for s in subs if s.expires_at > now}

    def enqueue(user: UserRecord) -> str:
        try:
            sent = request_user_sync(services, user.upn, "timer",
                                     check_subscription=webhooks and user.upn.casefold() not in live_owners)
        except Exception:
            log.exception("could not enqueue the sync of one user")
            return "failed"
        return "enqueued" if sent else "merged"

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(enqueue, users))
    counts = {k: results.count(k) for k in ("enqueued", "merged", "failed")}
    counts.update(_subscription_upkeep(services, users, subs, now, renew_budget_seconds) if webhooks else {})
    try:  # the audit log keeps 30 days: old day partitions go (an empty range when nothing is due)
        counts["audit_aged_out"] = services.purge_audit()
    except Exception:
        log.exception("aging out the audit log failed; the next tick tries again")
    log.info("timer tick: %s", counts)
    return counts


def _subscription_upkeep(services: Services, users: list[UserRecord], subs: list[Any], now: datetime,
                         budget_seconds: float) -> dict[str, int]:
    enabled = {u.upn.casefold() for u in users}
    try:
        manager = services.subscriptions()
    except DavbridgeError as exc:
        log.warning("subscription upkeep skipped: %s", type(exc).__name__)
        return {"renew_failed": len(subs)}
    if manager is None:
        return {}
    removed = 0
    for sub in subs:
        if sub.upn.casefold() not in enabled:
            try:
                removed += manager.delete_all(sub.upn)
            except DavbridgeError as exc:
                log.warning("could not delete a disabled user's subscription: %s", type(exc).__name__)
    due = [s for s in subs if s.upn.casefold() in enabled and now < s.expires_at <= now + RENEW_WITHIN]
    report = manager.renew_due(due, budget_seconds=budget_seconds)
    for upn in report.recreated_later:
        request_user_sync(services, upn, "timer", check_subscription=True)
    return {"renewed": report.renewed, "renew_failed": report.failed, "subscriptions_removed": removed,
            "renew_left": report.left_for_next_tick, "subscriptions_gone": len(report.recreated_later)}


# -- queue worker ----------------------------------------------------------------------------------
def run_queued_sync(services: Services, body: bytes | str, *, busy_retry_seconds: int = 30) -> dict[str, Any]:
    """Sync the user named by one queue message, under the user's lease.

    Raises only when the sync itself crashed (not a recorded pairing failure): the host then
    retries the message and, after ``maxDequeueCount`` attempts, moves it to the poison queue
    (:func:`record_poison`)."""
    try:
        message = SyncMessage.decode(body)
    except BadMessage as exc:
        log.warning("dropped a queue message that is not a sync request: %s", exc)
        return {"result": "dropped"}
    store = services.store
    user = store.get_user(message.upn)
    if user is None or not user.enabled:
        store.take_sync_request(message.upn)
        return {"result": "skipped"}
    with services.user_lease(user.upn) as held:
        if not held:
            # Another sync of this user is running: keep the pending request alive and come back.
            store.request_sync(user.upn, "retry", stale_after=REQUEST_STALE_AFTER)
            services.queue.send(SyncMessage(user.upn, "retry"), delay_seconds=busy_retry_seconds)
            return {"result": "busy"}
        request = store.take_sync_request(user.upn)
        if request is None:  # another run already served it (or a duplicate delivery)
            return {"result": "already-synced"}
        problem = _check_subscription(services, user.upn) if request.check_subscription else None
        try:
            outcome = services.sync_user(user.upn, trigger="+".join(request.triggers) or message.trigger, user=user)
        except Exception as exc:
            store.request_sync(user.upn, "retry", stale_after=REQUEST_STALE_AFTER)  # the retry needs it
            _record_user_error(services, user.upn, f"the sync crashed ({type(exc).__name__}); it is retried")
            raise
        if problem:
            _record_user_error(services, user.upn, problem)
        return {"result": "synced", "ok": outcome.ok, "triggers": request.triggers}


def _check_subscription(services: Services, upn: str) -> str | None:
    """Create or renew the user's subscription; the problem text when that failed."""
    try:
        manager = services.subscriptions()
        if manager is not None:
            manager.ensure(upn)
    except DavbridgeError as exc:
        log.warning("subscription of one user could not be created or renewed: %s", type(exc).__name__)
        return f"change notifications are off for now (the timer retries): {type(exc).__name__}: {exc}"
    return None


def record_poison(services: Services, body: bytes | str) -> dict[str, Any]:
    """A sync message failed ``maxDequeueCount`` times: say so in that user's status."""
    try:
        message = SyncMessage.decode(body)
    except BadMessage:
        return {"result": "dropped"}
    user = services.store.get_user(message.upn)
    if user is None:
        return {"result": "unknown user"}
    # The crashed attempts left the request pending for their retries; drop it so the next
    # trigger (timer tick, notification, admin) enqueues a fresh message at once.
    services.store.take_sync_request(user.upn)
    before = f" (last: {user.last_error})" if user.last_error else ""
    _record_user_error(services, user.upn,
                       f"a {message.trigger} sync request failed 5 times and went to the poison queue{before}; "
                       "the next timer tick tries again")
    return {"result": "recorded"}


# -- Graph webhooks -----------------------------------------------------------------------------
def _validation(token: str) -> WebResponse:
    """Graph's validation handshake: 200, text/plain, the decoded token (never markup)."""
    answer = validation_answer(token)
    if answer is None:
        return WebResponse(400, "invalid validation token")
    return WebResponse(200, answer, "text/plain", {"X-Content-Type-Options": "nosniff"})


def _verified(services: Services, items: list[Notification]) -> list[tuple[Notification, str]]:
    """Items whose subscription is ours and whose clientState matches its user."""
    key = services.client_state_key()
    accepted: list[tuple[Notification, str]] = []
    looked_up: set[str] = set()
    rejected = 0
    for item in items:
        if key is None:
            rejected += 1
            continue
        if item.subscription_id not in looked_up and len(looked_up) >= MAX_SUBSCRIPTIONS_PER_POST:
            rejected += 1
            continue
        looked_up.add(item.subscription_id)
        upn = services.subscription_owner(item.subscription_id)
        if upn is None or not client_state_matches(key, upn, item.client_state):
            rejected += 1
            continue
        accepted.append((item, upn))
    if rejected:
        log.info("ignored %d notification item(s): unknown subscription or wrong clientState", rejected)
    return accepted


def _accepted(services: Services, params: dict[str, str], body: bytes) -> WebResponse | list[tuple[Notification, str]]:
    """The answer to send at once (validation handshake, bad body), or the verified items."""
    if "validationToken" in params:
        return _validation(params["validationToken"])
    try:
        items = parse_notifications(body)
    except BadNotification as exc:
        return WebResponse(413 if "too large" in str(exc) else 400, "not a change notification")
    return _verified(services, items)


def graph_notifications(services: Services, params: dict[str, str], body: bytes) -> WebResponse:
    """POST from Graph: validation handshake, or change notifications -> coalesced, debounced
    sync requests, answered 202 at once (Graph wants 2xx within 3 s)."""
    accepted = _accepted(services, params, body)
    if isinstance(accepted, WebResponse):
        return accepted
    for upn in sorted({upn for _, upn in accepted}):
        # Graph sends a burst per change (a create fires created + updated): wait a few
        # seconds so the whole burst is one sync, and changes during that sync one more.
        request_user_sync(services, upn, "webhook", delay_seconds=services.settings.webhook_debounce_seconds)
    return WebResponse(202)


def graph_lifecycle(services: Services, params: dict[str, str], body: bytes) -> WebResponse:
    """Lifecycle notifications (Graph "Reduce missing subscriptions and change notifications"):
    ``reauthorizationRequired`` -> renew, ``subscriptionRemoved`` -> recreate then resync,
    ``missed`` -> resync. The worker does the Graph calls; this only records and enqueues."""
    accepted = _accepted(services, params, body)
    if isinstance(accepted, WebResponse):
        return accepted
    for item, upn in accepted:
        if item.lifecycle_event == "subscriptionRemoved":
            services.store.delete_subscription(item.subscription_id)
            services.forget_subscription(item.subscription_id)
            request_user_sync(services, upn, "lifecycle", check_subscription=True)
        elif item.lifecycle_event == "reauthorizationRequired":
            request_user_sync(services, upn, "lifecycle", check_subscription=True)
        elif item.lifecycle_event == "missed":
            request_user_sync(services, upn, "lifecycle")
    return WebResponse(202)


# -- admin HTTP --------------------------------------------------------------------------------
def sync_now(services: Services, upn: str, *, wait: bool = False) -> tuple[int, dict[str, Any]]:
    """Admin "sync now" for one user: queued (202) by default; ``wait`` syncs inline under the
    user's lease (409 while another sync of the user runs)."""
    user = services.store.get_user(upn)
    if user is None:
        return 404, {"error": "unknown user"}
    if not wait:
        sent = request_user_sync(services, user.upn, "manual")
        return 202, {"user": user.upn, "queued": True, "merged_with_pending": not sent}
    with services.user_lease(user.upn) as held:
        if not held:
            return 409, {"user": user.upn, "error": "a sync of this user is running; try again shortly"}
        outcome = services.sync_user(user.upn, trigger="manual")
    return (200 if outcome.ok else 502), outcome_json(outcome)


def user_status(services: Services, upn: str) -> tuple[int, dict[str, Any]]:
    """Admin status of one user: auth state, the last error and the last run of each pairing."""
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
    expiry = max((s.expires_at for s in services.store.list_subscriptions(user.upn)), default=None)
    return 200, {
        "user": user.upn, "enabled": user.enabled, "auth_status": user.auth_status,
        "last_error": user.last_error,
        "last_error_at": user.last_error_at.isoformat() if user.last_error_at else None,
        "subscription_expires": expiry.isoformat() if expiry else None,
        "pairings": pairings,
    }


# -- delegated sign-in ---------------------------------------------------------------------------
def delegated_start(services: Services, params: dict[str, str]) -> WebResponse:
    """GET auth/start?upn&exp&sig (the signed link from ``davbridge users auth-link``): 302 to
    the Microsoft sign-in page (auth-code flow with PKCE; msal keeps the flow 15 minutes)."""
    upn, expires, signature = params.get("upn", ""), params.get("exp", ""), params.get("sig", "")
    if not upn or not services.sign_in_link_valid(upn, expires, signature):
        return WebResponse(403, "This sign-in link is not valid or has expired; ask your administrator for a new one.")
    user = services.store.get_user(upn)
    auth = services.delegated()
    if user is None or user.auth_mode != "delegated" or auth is None:
        return WebResponse(404, "This mailbox is not set up for delegated sign-in.")
    url, _state = auth.start(user.upn)
    return WebResponse(302, "", "text/plain", {"Location": url, "Cache-Control": "no-store"})


def delegated_callback(services: Services, params: dict[str, str]) -> WebResponse:
    """GET auth/callback?code&state (Microsoft's redirect): keep the user's token cache in the
    secrets store, then check both sides so status says ``authenticated``."""
    auth = services.delegated()
    if auth is None:
        return WebResponse(404, "Delegated sign-in is not configured.")
    try:
        upn = auth.finish(params)
    except DavbridgeError as exc:
        return WebResponse(400, f"Sign-in did not complete: {exc}")
    from sync_core import admin  # admin imports handlers' neighbours; keep the import local

    user = admin.check_user(services, upn)
    return WebResponse(200, f"Signed in as {user.upn}: {user.auth_status}. You can close this page.",
                       "text/plain", {"Cache-Control": "no-store"})

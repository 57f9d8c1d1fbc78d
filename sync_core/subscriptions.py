"""Graph change-notification subscriptions: one per enabled user, created, renewed, removed.

Graph behaviour implemented here ("subscription resource type", "Create subscription",
"Update subscription", "Change notifications for Outlook resources"):

- resource ``/users/{upn}/events`` covers every event of the mailbox, so one subscription per
  user serves every pairing (1,000 subscriptions per mailbox across all apps: one is cheap);
- ``POST /subscriptions`` makes Graph validate ``notificationUrl`` and
  ``lifecycleNotificationUrl`` *before* it answers 201 (our webhook answers the handshake);
- event subscriptions live at most 10,080 minutes; renewal is ``PATCH expirationDateTime``;
  a 404 on renewal means the subscription is gone and must be created again;
- ``lifecycleNotificationUrl`` can only be set at creation.

Every request goes through :class:`~sync_core.sides.graph_http.GraphClient`, so it carries
``Prefer: IdType="ImmutableId"`` and the same retry / typed-error rules as the sync itself.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

from sync_core.errors import DavbridgeError, NotFound, SideError
from sync_core.sides.graph_http import GraphClient
from sync_core.state.base import StateStore, Subscription, utcnow

log = logging.getLogger("davbridge.subscriptions")

#: Graph's limit for Outlook event subscriptions is 10,080 minutes; ask for a little less so
#: clock skew never makes the request exceed it.
LIFETIME = timedelta(minutes=10_080 - 15)
#: The timer renews subscriptions expiring within this horizon.
RENEW_WITHIN = timedelta(hours=24)
CHANGE_TYPES = "created,updated,deleted"


def _graph_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.0000000Z")


def _parse_graph_time(value: object, fallback: datetime) -> datetime:
    if not isinstance(value, str):
        return fallback
    text = value.replace("Z", "+00:00")
    if "." in text:  # Graph sends 7 fractional digits; Python reads at most 6
        head, _, rest = text.partition(".")
        digits = "".join(c for c in rest if c.isdigit())
        zone = rest[len(digits):]
        text = f"{head}.{digits[:6]}{zone}"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return fallback
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass
class RenewReport:
    renewed: int = 0
    recreated_later: list[str] = field(default_factory=list)  # gone: their users need a new one
    failed: int = 0
    left_for_next_tick: int = 0


class GraphSubscriptions:
    """Creates, renews and deletes the per-user subscriptions and keeps their state rows."""

    def __init__(self, graph: GraphClient, store: StateStore, *, notification_url: str,
                 lifecycle_url: str, client_state_for: Callable[[str], str],
                 now: Callable[[], datetime] = utcnow) -> None:
        self.graph = graph
        self.store = store
        self.notification_url = notification_url
        self.lifecycle_url = lifecycle_url
        self.client_state_for = client_state_for
        self.now = now

    @staticmethod
    def resource_for(upn: str) -> str:
        return f"/users/{quote(upn, safe='@')}/events"

    def create(self, upn: str) -> Subscription:
        """POST /subscriptions (Graph validates both URLs before answering 201)."""
        now = self.now()
        body = {
            "changeType": CHANGE_TYPES,
            "notificationUrl": self.notification_url,
            "lifecycleNotificationUrl": self.lifecycle_url,
            "resource": self.resource_for(upn),
            "expirationDateTime": _graph_time(now + LIFETIME),
            "clientState": self.client_state_for(upn),
        }
        answer = self.graph.request_json("POST", "/subscriptions", json=body)
        sub_id = answer.get("id")
        if not isinstance(sub_id, str) or not sub_id:
            raise SideError("Graph created a subscription without an id")
        sub = Subscription(sub_id, upn, body["resource"],
                           _parse_graph_time(answer.get("expirationDateTime"), now + LIFETIME), created_at=now)
        self.store.save_subscription(sub)
        log.info("subscription created (expires %s)", sub.expires_at.isoformat())
        return sub

    def renew(self, sub: Subscription) -> Subscription | None:
        """PATCH the expiry; None (and the row deleted) when Graph no longer has it."""
        wanted = self.now() + LIFETIME
        try:
            answer = self.graph.request_json("PATCH", f"/subscriptions/{quote(sub.subscription_id)}",
                                             json={"expirationDateTime": _graph_time(wanted)})
        except NotFound:
            self.store.delete_subscription(sub.subscription_id)
            return None
        sub.expires_at = _parse_graph_time(answer.get("expirationDateTime"), wanted)
        self.store.save_subscription(sub)
        return sub

    def ensure(self, upn: str) -> Subscription:
        """Make sure ``upn`` has a live subscription, renewing an existing one now (used after
        ``reauthorizationRequired`` / ``subscriptionRemoved`` and when the timer saw none)."""
        now = self.now()
        for sub in self.store.list_subscriptions(upn):
            if sub.expires_at <= now:
                self.store.delete_subscription(sub.subscription_id)
                continue
            renewed = self.renew(sub)
            if renewed is not None:
                return renewed
        return self.create(upn)

    def delete_all(self, upn: str) -> int:
        """DELETE every subscription of ``upn`` (user disabled); a 404 counts as deleted."""
        done = 0
        for sub in self.store.list_subscriptions(upn):
            with contextlib.suppress(NotFound):
                self.graph.request("DELETE", f"/subscriptions/{quote(sub.subscription_id)}")
            self.store.delete_subscription(sub.subscription_id)
            done += 1
        return done

    def renew_due(self, subs: Iterable[Subscription], *, budget_seconds: float = 120.0,
                  workers: int = 8) -> RenewReport:
        """Renew every subscription in ``subs`` (those due within :data:`RENEW_WITHIN`),
        concurrently and within a time budget; what is left waits for the next tick (due
        ones stay due for 24 h, i.e. hundreds of ticks)."""
        report = RenewReport()
        deadline = time.monotonic() + budget_seconds
        pending = list(subs)

        def one(sub: Subscription) -> tuple[Subscription, str]:
            if time.monotonic() > deadline:
                return sub, "skipped"
            try:
                return sub, "renewed" if self.renew(sub) is not None else "gone"
            except DavbridgeError as exc:
                log.warning("renewing a subscription failed: %s", type(exc).__name__)
                return sub, "failed"

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for sub, result in pool.map(one, pending):
                if result == "renewed":
                    report.renewed += 1
                elif result == "gone":
                    report.recreated_later.append(sub.upn)
                elif result == "failed":
                    report.failed += 1
                else:
                    report.left_for_next_tick += 1
        return report

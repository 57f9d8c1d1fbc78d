"""The objects one worker shares: settings, state, secrets, one Graph credential and client.

Built once per process (CLI run, Functions worker) and handed to the engine as its
:class:`~sync_core.engine.SideFactory`. This is the only module that knows which concrete
side, state and secrets classes exist.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets as token_source
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from sync_core.apply import WriteHook
from sync_core.convert.recurrence import graph_unsupported_reason
from sync_core.delegated import DelegatedAuth
from sync_core.engine import WRITES_IN_FLIGHT, PlanHook, UserOutcome, sync_user
from sync_core.errors import AuthenticationFailed, DavbridgeError
from sync_core.queue import SyncQueue, open_queue
from sync_core.secrets import SecretStore, open_secrets
from sync_core.settings import Settings
from sync_core.sides.base import Side, SideName
from sync_core.sides.caldav_side import CalDAVCalendar, open_caldav
from sync_core.sides.graph_http import GraphAuth, GraphClient, GraphCredentials
from sync_core.sides.graph_side import GraphCalendar
from sync_core.state import StateStore, open_state
from sync_core.state.base import AUDIT_RETENTION, Pairing, Subscription, UserRecord, utcnow
from sync_core.subscriptions import GraphSubscriptions
from sync_core.webhooks import client_state

log = logging.getLogger("davbridge.services")

#: Longer than host.json's functionTimeout (10 min), so a crashed worker's lease runs out.
LEASE_TTL = timedelta(minutes=12)


class Services:
    """Everything a sync needs, created lazily and reused across users."""

    def __init__(self, settings: Settings, *, store: StateStore | None = None,
                 secrets: SecretStore | None = None, queue: SyncQueue | None = None) -> None:
        self.settings = settings
        self._store = store
        self._secrets = secrets
        self._queue = queue
        self._graph: GraphClient | None = None
        self._lock = threading.Lock()
        self._client_state_key: str | None = None
        #: subscription id -> (owner UPN, looked up at); notifications are point lookups
        self._subscription_owner: dict[str, tuple[str, float]] = {}
        self._delegated: DelegatedAuth | None = None
        self._user_graph: dict[str, GraphClient] = {}

    @property
    def store(self) -> StateStore:
        if self._store is None:
            with self._lock:
                if self._store is None:
                    self._store = open_state(self.settings.state_url, table_prefix=self.settings.table_prefix)
        return self._store

    @property
    def queue(self) -> SyncQueue:
        if self._queue is None:
            with self._lock:
                if self._queue is None:
                    self._queue = open_queue(self.settings.queue_url, self.settings.sync_queue_name)
        return self._queue

    @property
    def secrets(self) -> SecretStore:
        if self._secrets is None:
            with self._lock:
                if self._secrets is None:
                    self._secrets = open_secrets(self.settings.secrets_url)
        return self._secrets

    # -- change notifications ------------------------------------------------------------------
    def client_state_key(self, *, create: bool = False) -> str | None:
        """The HMAC key behind every subscription's ``clientState`` (secrets store).

        Only the timer creates it (``create=True``): the timer fires on one instance and never
        overlaps itself, so two workers can never race to create different keys."""
        if self._client_state_key is None:
            name = self.settings.client_state_key_name
            key = self.secrets.get(name)
            if key is None and create:
                self.secrets.set(name, token_source.token_urlsafe(32))
                key = self.secrets.get(name)
            self._client_state_key = key
        return self._client_state_key

    # -- delegated sign-in (optional per user) ---------------------------------------------------
    def delegated(self) -> DelegatedAuth | None:
        """The auth-code flow helper, when ``DAVBRIDGE_AUTH_REDIRECT_URL`` is configured."""
        s = self.settings
        if not s.auth_redirect_url:
            return None
        if self._delegated is None:
            if not s.graph_tenant_id or not s.graph_client_id:
                raise AuthenticationFailed("GRAPH_TENANT_ID and GRAPH_CLIENT_ID are not set")
            secret = self.secrets.get(s.graph_secret_name)
            certificate = None if secret else self.secrets.get(s.graph_certificate_name)
            self._delegated = DelegatedAuth(
                s.graph_tenant_id, s.graph_client_id, client_secret=secret, certificate_pem=certificate,
                authority_host=s.graph_authority_host, redirect_uri=s.auth_redirect_url, secrets=self.secrets,
                verify=s.graph_ca_bundle or True)
        return self._delegated

    def _sign_in_signature(self, upn: str, expires: int) -> str:
        key = self.client_state_key(create=True) or ""
        mac = hmac.new(key.encode(), f"davbridge-sign-in|{upn.casefold()}|{expires}".encode(), hashlib.sha256)
        return mac.hexdigest()

    def delegated_sign_in_link(self, upn: str, *, valid_for: timedelta = timedelta(days=7)) -> str:
        """The link a delegated user opens to sign in: the ``auth/start`` function, signed
        (HMAC under the webhook key) so nobody can start a sign-in for another mailbox."""
        s = self.settings
        if not s.auth_redirect_url:
            raise AuthenticationFailed("delegated mode needs DAVBRIDGE_AUTH_REDIRECT_URL (the auth/callback URL)")
        expires = int((utcnow() + valid_for).timestamp())
        start = s.auth_redirect_url.rsplit("/callback", 1)[0] + "/start"
        query = urlencode({"upn": upn, "exp": expires, "sig": self._sign_in_signature(upn, expires)})
        return f"{start}?{query}"

    def sign_in_link_valid(self, upn: str, expires: str, signature: str) -> bool:
        if not expires.isdigit() or int(expires) < utcnow().timestamp():
            return False
        return hmac.compare_digest(self._sign_in_signature(upn, int(expires)), signature)

    def delegated_token_missing(self, upn: str) -> bool:
        auth = self.delegated()
        return auth is None or not auth.is_signed_in(upn)

    def forget_delegated(self, upn: str) -> None:
        auth = self.delegated()
        if auth is not None:
            auth.forget(upn)
        self._user_graph.pop(upn.casefold(), None)

    def graph_for(self, user: UserRecord) -> GraphClient:
        """App-only for most users; the user's own delegated token in delegated mode."""
        if user.auth_mode != "delegated":
            return self.graph()
        auth = self.delegated()
        if auth is None:
            raise AuthenticationFailed("delegated mode needs DAVBRIDGE_AUTH_REDIRECT_URL (the auth/callback URL)")
        if not auth.is_signed_in(user.upn):
            raise AuthenticationFailed("the user has not signed in yet: send them `davbridge users auth-link` output")
        key = user.upn.casefold()
        if key not in self._user_graph:
            s = self.settings
            self._user_graph[key] = GraphClient(auth.token_provider(user.upn), base_url=s.graph_base_url,
                                                verify=s.graph_ca_bundle or True, **self._graph_limits())
        return self._user_graph[key]

    def subscriptions(self) -> GraphSubscriptions | None:
        """The subscription manager, or None when webhooks are not configured (embedded use)."""
        s = self.settings
        if not s.webhooks_enabled or not s.webhook_url or not s.lifecycle_url:
            return None
        key = self.client_state_key()
        if key is None:
            raise AuthenticationFailed(f"no webhook clientState key ({s.client_state_key_name}) in the "
                                       "secrets store yet; the timer creates it on its next tick")
        return GraphSubscriptions(self.graph(), self.store, notification_url=s.webhook_url,
                                  lifecycle_url=s.lifecycle_url,
                                  client_state_for=lambda upn: client_state(key, upn))

    def subscription_owner(self, subscription_id: str, *, max_age: float = 300.0) -> str | None:
        """The UPN a subscription belongs to (point lookup, cached a few minutes per process)."""
        hit = self._subscription_owner.get(subscription_id)
        if hit is not None and time.monotonic() - hit[1] < max_age:
            return hit[0]
        sub: Subscription | None = self.store.get_subscription(subscription_id)
        if sub is None:
            self._subscription_owner.pop(subscription_id, None)
            return None
        if len(self._subscription_owner) > 50_000:
            self._subscription_owner.clear()
        self._subscription_owner[subscription_id] = (sub.upn, time.monotonic())
        return sub.upn

    def forget_subscription(self, subscription_id: str) -> None:
        self._subscription_owner.pop(subscription_id, None)

    # -- Microsoft Graph -----------------------------------------------------------------------
    def graph(self) -> GraphClient:
        """One credential object and one HTTP session for every mailbox (app-only)."""
        if self._graph is None:
            s = self.settings
            if not s.graph_tenant_id or not s.graph_client_id:
                raise AuthenticationFailed("GRAPH_TENANT_ID and GRAPH_CLIENT_ID are not set")
            secret = self.secrets.get(s.graph_secret_name)
            certificate = None if secret else self.secrets.get(s.graph_certificate_name)
            if not secret and not certificate:
                raise AuthenticationFailed(
                    f"no Graph client secret ({s.graph_secret_name}) or certificate "
                    f"({s.graph_certificate_name}) in the secrets store")
            creds = GraphCredentials(tenant_id=s.graph_tenant_id, client_id=s.graph_client_id,
                                     client_secret=secret, certificate_pem=certificate,
                                     authority_host=s.graph_authority_host)
            verify: bool | str = s.graph_ca_bundle or True
            self._graph = GraphClient(GraphAuth(creds, verify=verify), base_url=s.graph_base_url, verify=verify,
                                      **self._graph_limits())
        return self._graph

    def _graph_limits(self) -> dict[str, Any]:
        s = self.settings
        return {"timeout": (10.0, s.graph_timeout_seconds), "max_attempts": s.graph_max_attempts,
                "max_wait": s.graph_max_wait_seconds}

    # -- sides ------------------------------------------------------------------------------------
    def caldav_password(self, user: UserRecord) -> str:
        password = self.secrets.get(user.caldav_secret_name())
        if password is None:
            raise AuthenticationFailed("no CalDAV password stored for this user")
        return password

    def open_sides(self, user: UserRecord, pairing: Pairing,
                   window: tuple[datetime, datetime]) -> Mapping[SideName, Side]:
        client = open_caldav(user.caldav_url, user.caldav_username, self.caldav_password(user),
                             timeout=self.settings.caldav_timeout_seconds)
        return {
            SideName.M365: GraphCalendar(self.graph_for(user), user.upn, pairing.m365_calendar_id, window=window),
            SideName.CALDAV: CalDAVCalendar(client, pairing.caldav_calendar_url, window=window,
                                            expand_when=graph_unsupported_reason),
        }

    # -- operations -------------------------------------------------------------------------------
    def set_enabled(self, upn: str, enabled: bool) -> UserRecord | None:
        """Enable or disable one user; disabling deletes its Graph subscription (a failure to
        reach Graph leaves the row, and the timer removes subscriptions of disabled users)."""
        user = self.store.get_user(upn)
        if user is None:
            return None
        user.enabled = enabled
        self.store.save_user(user)
        if not enabled and self.store.list_subscriptions(user.upn):
            try:
                manager = self.subscriptions()
                if manager is not None:
                    manager.delete_all(user.upn)
            except DavbridgeError as exc:
                log.warning("could not delete the subscription of a disabled user yet: %s", type(exc).__name__)
        return user

    @contextmanager
    def user_lease(self, upn: str) -> Iterator[bool]:
        """Hold ``upn``'s lease for the block (yields False, holding nothing, when another
        sync of the user — timer, webhook, admin or CLI — holds it)."""
        owner = uuid.uuid4().hex
        if not self.store.try_lease(upn, owner, ttl=LEASE_TTL):
            yield False
            return
        try:
            yield True
        finally:
            self.store.release_lease(upn, owner)

    def sync_user(self, upn: str, *, dry_run: bool = False, trigger: str = "manual",
                  on_write: WriteHook | None = None, on_plan: PlanHook | None = None,
                  user: UserRecord | None = None) -> UserOutcome:
        log.info("sync %s (trigger=%s, dry_run=%s)", "user", trigger, dry_run)
        return sync_user(upn, store=self.store, sides=self, dry_run=dry_run, on_write=on_write, trigger=trigger,
                         on_plan=on_plan, workers=WRITES_IN_FLIGHT, user=user)

    def purge_audit(self) -> int:
        """Age out audit rows older than the retention (30 days)."""
        return self.store.purge_audit(utcnow() - AUDIT_RETENTION)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()

"""The objects one worker shares: settings, state, secrets, one Graph credential and client.

Built once per process (CLI run, Functions worker) and handed to the engine as its
:class:`~sync_core.engine.SideFactory`. This is the only module that knows which concrete
side, state and secrets classes exist.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime

from sync_core.apply import WriteHook
from sync_core.convert.recurrence import graph_unsupported_reason
from sync_core.engine import UserOutcome, sync_user
from sync_core.errors import AuthenticationFailed, DavbridgeError, SideError
from sync_core.secrets import SecretStore, open_secrets
from sync_core.settings import Settings
from sync_core.sides.base import Side, SideName
from sync_core.sides.caldav_side import CalDAVCalendar, discover_calendars, open_caldav
from sync_core.sides.graph_http import GraphAuth, GraphClient, GraphCredentials
from sync_core.sides.graph_side import GraphCalendar
from sync_core.state import StateStore, open_state
from sync_core.state.base import Pairing, UserRecord

log = logging.getLogger("davbridge.services")


class Services:
    """Everything a sync needs, created lazily and reused across users."""

    def __init__(self, settings: Settings, *, store: StateStore | None = None,
                 secrets: SecretStore | None = None) -> None:
        self.settings = settings
        self._store = store
        self._secrets = secrets
        self._graph: GraphClient | None = None

    @property
    def store(self) -> StateStore:
        if self._store is None:
            self._store = open_state(self.settings.state_url)
        return self._store

    @property
    def secrets(self) -> SecretStore:
        if self._secrets is None:
            self._secrets = open_secrets(self.settings.secrets_url)
        return self._secrets

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
            self._graph = GraphClient(GraphAuth(creds, verify=verify), base_url=s.graph_base_url, verify=verify)
        return self._graph

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
            SideName.M365: GraphCalendar(self.graph(), user.upn, pairing.m365_calendar_id, window=window),
            SideName.CALDAV: CalDAVCalendar(client, pairing.caldav_calendar_url, window=window,
                                            expand_when=graph_unsupported_reason),
        }

    # -- operations -------------------------------------------------------------------------------
    def add_user(self, upn: str, *, caldav_url: str, caldav_username: str, caldav_password: str,
                 caldav_calendar: str | None = None) -> tuple[UserRecord, list[Pairing]]:
        """Enable a user: store the password, pair the primary calendars (discovered if not given)."""
        user = self.store.get_user(upn) or UserRecord(upn=upn, caldav_url=caldav_url,
                                                      caldav_username=caldav_username)
        user.caldav_url, user.caldav_username, user.enabled = caldav_url, caldav_username, True
        self.secrets.set(user.caldav_secret_name(), caldav_password)
        try:
            calendar_url = caldav_calendar or self._primary_caldav_calendar(user, caldav_password)
            user.auth_status = "authenticated"
        except DavbridgeError as exc:
            user.auth_status = f"authentication failed: {exc}"
            self.store.save_user(user)
            raise
        self.store.save_user(user)
        pairing_id = Pairing.make_id(user.upn, None, calendar_url)
        existing = {p.pairing_id: p for p in self.store.list_pairings(user.upn)}
        pairing = existing.get(pairing_id) or Pairing(pairing_id, user.upn, None, calendar_url)
        self.store.save_pairing(pairing)
        return user, self.store.list_pairings(user.upn)

    def _primary_caldav_calendar(self, user: UserRecord, password: str) -> str:
        client = open_caldav(user.caldav_url, user.caldav_username, password,
                             timeout=self.settings.caldav_timeout_seconds)
        calendars = [c for c in discover_calendars(client) if c.supports_events]
        if not calendars:
            raise SideError("calendar not found: the CalDAV account has no event calendar")
        primary = next((c for c in calendars if c.is_default), calendars[0])
        return primary.url

    def sync_user(self, upn: str, *, dry_run: bool = False, trigger: str = "manual",
                  on_write: WriteHook | None = None) -> UserOutcome:
        log.info("sync %s (trigger=%s, dry_run=%s)", "user", trigger, dry_run)
        return sync_user(upn, store=self.store, sides=self, dry_run=dry_run, on_write=on_write)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()

"""Settings, read once from the environment (Azure app settings in production).

Every base URL is a setting so the same code runs against Microsoft Graph and Entra ID or
against the local Graph stand-in. Secrets are never settings: only the *names* under which
the secrets store holds them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    state_url: str
    secrets_url: str
    graph_base_url: str = "https://graph.microsoft.com/v1.0"
    graph_authority_host: str = "https://login.microsoftonline.com"
    graph_tenant_id: str | None = None
    graph_client_id: str | None = None
    graph_ca_bundle: str | None = None
    graph_secret_name: str = "graph-client-secret"
    graph_certificate_name: str = "graph-client-certificate"
    caldav_timeout_seconds: float = 30.0
    #: Graph: read timeout per request, tries per request, and seconds of retry waiting per
    #: request; together they bound one sync well inside the function timeout.
    graph_timeout_seconds: float = 60.0
    graph_max_attempts: int = 5
    graph_max_wait_seconds: float = 60.0
    table_prefix: str = "davbridge"
    queue_url: str = "memory:"
    sync_queue_name: str = "davbridge-sync"
    webhook_url: str | None = None
    lifecycle_url: str | None = None
    client_state_key_name: str = "webhook-client-state-key"
    busy_retry_seconds: int = 30
    webhook_debounce_seconds: int = 5
    sync_schedule: str | None = None
    auth_redirect_url: str | None = None

    @property
    def webhooks_enabled(self) -> bool:
        """Graph change notifications are used when both public URLs are configured."""
        return bool(self.webhook_url and self.lifecycle_url)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        home = Path(env.get("DAVBRIDGE_HOME", ".davbridge")).resolve()
        return cls(
            state_url=env.get("DAVBRIDGE_STATE_URL", f"sqlite:///{home / 'state.db'}"),
            secrets_url=env.get("DAVBRIDGE_SECRETS_URL", f"file://{home / 'secrets.json'}"),
            graph_base_url=env.get("GRAPH_BASE_URL", cls.graph_base_url).rstrip("/"),
            graph_authority_host=env.get("GRAPH_AUTHORITY_HOST", cls.graph_authority_host).rstrip("/"),
            graph_tenant_id=env.get("GRAPH_TENANT_ID") or None,
            graph_client_id=env.get("GRAPH_CLIENT_ID") or None,
            graph_ca_bundle=env.get("GRAPH_CA_BUNDLE") or None,
            graph_secret_name=env.get("GRAPH_CLIENT_SECRET_NAME", cls.graph_secret_name),
            graph_certificate_name=env.get("GRAPH_CERTIFICATE_NAME", cls.graph_certificate_name),
            caldav_timeout_seconds=float(env.get("CALDAV_TIMEOUT_SECONDS", cls.caldav_timeout_seconds)),
            graph_timeout_seconds=float(env.get("GRAPH_TIMEOUT_SECONDS", cls.graph_timeout_seconds)),
            graph_max_attempts=int(env.get("GRAPH_MAX_ATTEMPTS", cls.graph_max_attempts)),
            graph_max_wait_seconds=float(env.get("GRAPH_MAX_WAIT_SECONDS", cls.graph_max_wait_seconds)),
            table_prefix=env.get("DAVBRIDGE_TABLE_PREFIX", cls.table_prefix),
            queue_url=env.get("DAVBRIDGE_QUEUE_URL", cls.queue_url),
            sync_queue_name=env.get("DAVBRIDGE_SYNC_QUEUE", cls.sync_queue_name),
            webhook_url=env.get("DAVBRIDGE_WEBHOOK_URL") or None,
            lifecycle_url=env.get("DAVBRIDGE_LIFECYCLE_URL") or None,
            client_state_key_name=env.get("DAVBRIDGE_CLIENT_STATE_KEY_NAME", cls.client_state_key_name),
            busy_retry_seconds=int(env.get("DAVBRIDGE_BUSY_RETRY_SECONDS", cls.busy_retry_seconds)),
            sync_schedule=env.get("SYNC_SCHEDULE") or None,
            auth_redirect_url=env.get("DAVBRIDGE_AUTH_REDIRECT_URL") or None,
            webhook_debounce_seconds=int(env.get("DAVBRIDGE_WEBHOOK_DEBOUNCE_SECONDS",
                                                 cls.webhook_debounce_seconds)),
        )

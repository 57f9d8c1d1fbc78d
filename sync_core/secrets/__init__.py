"""Secrets backends behind one interface (:class:`~sync_core.secrets.base.SecretStore`)."""

from __future__ import annotations

from sync_core.secrets.base import SecretStore


def open_secrets(url: str) -> SecretStore:
    """Open the backend named by a secrets URL: ``file:///path/secrets.json`` (embedded default)."""
    if url.startswith("file://"):
        from sync_core.secrets.localfile import LocalFileSecretStore

        return LocalFileSecretStore(url[len("file://"):])
    raise ValueError(f"unsupported secrets backend URL scheme: {url.split(':', 1)[0]!r}")

"""Secrets backends behind one interface (:class:`~sync_core.secrets.base.SecretStore`)."""

from __future__ import annotations

from urllib.parse import urlsplit

from sync_core.secrets.base import SecretStore

# DNS suffixes of Key Vault in the public and sovereign clouds ("Azure Key Vault DNS suffixes").
KEY_VAULT_DNS_SUFFIXES = (".vault.azure.net", ".vault.azure.cn", ".vault.usgovcloudapi.net", ".vault.microsoftazure.de")


def _vault_url(url: str, *, any_host: bool) -> str:
    """``https://<name>.vault.azure.net`` from a vault URL (a trailing ``/`` is allowed, nothing else)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme != "https" or not host or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"a Key Vault secrets URL is https://<vault-name>.vault.azure.net, not {url!r}")
    if parts.username or parts.password:
        raise ValueError("a Key Vault secrets URL must not carry credentials")
    if not any_host and not host.endswith(KEY_VAULT_DNS_SUFFIXES):
        raise ValueError(
            f"{url!r} is not a Key Vault URL (expected https://<vault-name>.vault.azure.net); "
            "prefix it with 'keyvault:' to use another host"
        )
    return f"https://{parts.netloc}"


def open_secrets(url: str) -> SecretStore:
    """Open the backend named by a secrets URL.

    * ``file:///path/secrets.json`` -- the embedded default, a 0600 JSON file;
    * ``https://<vault-name>.vault.azure.net[/]`` or ``keyvault:https://<vault-name>.vault.azure.net``
      -- Azure Key Vault through the managed identity (``DefaultAzureCredential``).  The plain form
      accepts Key Vault's DNS suffixes only; the ``keyvault:`` form any https host.
    """
    if url.startswith("file://"):
        from sync_core.secrets.localfile import LocalFileSecretStore

        return LocalFileSecretStore(url[len("file://"):])
    if url.startswith("keyvault:") or url.startswith("https://"):
        from sync_core.secrets.keyvault import KeyVaultSecretStore

        explicit = url.startswith("keyvault:")
        return KeyVaultSecretStore(_vault_url(url.removeprefix("keyvault:"), any_host=explicit))
    raise ValueError(f"unsupported secrets backend URL scheme: {url.split(':', 1)[0]!r}")

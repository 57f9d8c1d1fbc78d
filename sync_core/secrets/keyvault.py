"""Azure Key Vault secrets backend (the serverless deployment's default).

Key Vault behaviour this module is built around (Key Vault REST reference, "About secrets",
"Soft-delete overview", "Authentication"):

* **Names** are 1-127 characters of ``0-9a-zA-Z-`` and compared case-insensitively; other names
  are mapped by :func:`key_vault_name`.
* **Values** are at most 25 KB; a larger value is refused with ``400 BadParameter``.
* **Soft-delete is always on.**  ``DELETE /secrets/{name}`` moves the secret to the deleted
  collection for the retention period (7-90 days) and blocks its name: a later ``PUT`` gets
  ``409 Conflict`` / ``ObjectIsDeletedButRecoverable``.  So this store never deletes: ``set()``
  adds a version and ``delete()`` adds a disabled *tombstone* version (see
  :meth:`KeyVaultSecretStore.delete`).
* **Disabled versions** cannot be read: ``GET`` answers ``403 Forbidden`` with inner code
  ``SecretDisabled`` -- which is not a permission problem and is told apart from one.
* **Authentication** is the Key Vault challenge protocol, handled by the SDK's policy: the first
  request is answered 401 with the tenant and resource, the credential (managed identity in
  Azure, via ``DefaultAzureCredential``) gets a token for ``https://vault.azure.net/.default``.
  Data-plane access needs an RBAC role: davbridge reads *and* writes, so the function app's
  identity needs **Key Vault Secrets Officer** (b86a8fe4-44ce-4948-aee5-eccb2c155cd7).
* Create one client per worker and cache values: Key Vault throttles per vault
  (service limits), and a function run reads the same few secrets many times.

Secret values are never logged and never put into exception messages.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any, NoReturn

from azure.core.credentials import TokenCredential
from azure.core.exceptions import AzureError, ClientAuthenticationError, HttpResponseError, ResourceNotFoundError
from azure.core.pipeline.transport import HttpTransport
from azure.keyvault.secrets import SecretClient

from sync_core.errors import SecretStoreError

log = logging.getLogger(__name__)

KEY_VAULT_SECRETS_OFFICER = "b86a8fe4-44ce-4948-aee5-eccb2c155cd7"
MAX_VALUE_BYTES = 25 * 1024  # "secrets ... with a maximum size of 25 KB each"
TOMBSTONE_TAG = "davbridge-state"
TOMBSTONE_STATE = "deleted"
TOMBSTONE_CONTENT_TYPE = "application/vnd.davbridge.tombstone"
MISS_CACHE_SECONDS = 30.0

_VALID_NAME = re.compile(r"^[0-9a-zA-Z-]{1,127}$")
_INVALID_RUN = re.compile(r"[^0-9a-zA-Z-]+")
_HASH_HEX = 16
_PREFIX_MAX = 127 - 1 - _HASH_HEX  # "<prefix>-<16 hex>" fits Key Vault's 127 characters


def key_vault_name(name: str) -> str:
    """The Key Vault secret name for a davbridge secret name.

    A name that already is a valid Key Vault name (``^[0-9a-zA-Z-]{1,127}$``) is used unchanged.
    Any other non-empty name becomes ``<prefix>-<h>``: ``prefix`` is the name with each run of
    characters outside ``0-9a-zA-Z-`` replaced by ``-`` (trimmed of ``-``, cut to 110 characters,
    ``x`` when nothing is left) and ``h`` is the first 16 hex digits (64 bits) of SHA-256 of the
    UTF-8 name -- at most 127 characters, deterministic across processes and versions.

    Collisions: the prefix is only a readable hint; the hash decides.  Two different mapped names
    meet only if their 64-bit SHA-256 prefixes are equal (chance about n**2 / 2**65 for n names:
    below 1e-9 for 100,000 secrets).  A mapped name could equal a caller's *valid* name only if
    that caller picked a name ending in ``-`` plus the hash of another name, which does not happen
    by accident.  Note that Key Vault compares names case-insensitively, so valid names differing
    only in case ("Foo", "foo") are one secret; mapped names differ in their (lower-case) hash.
    """
    if not name:
        raise ValueError("secret names must not be empty")
    if _VALID_NAME.match(name):
        return name
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_HEX]
    prefix = _INVALID_RUN.sub("-", name).strip("-")[:_PREFIX_MAX].rstrip("-") or "x"
    return f"{prefix}-{digest}"


def _field(obj: object, key: str) -> object:
    """``obj[key]`` of a JSON object, matching the key case-insensitively (None if absent)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(k, str) and k.lower() == key:
                return v
    return None


def _error_details(exc: HttpResponseError) -> tuple[int | None, str | None, str | None, str]:
    """(status, error code, inner error code, server message) of a Key Vault error response.

    Key Vault errors are ``{"error": {"code", "message", "innererror": {"code"}}}``; the body is
    parsed directly (keys case-insensitively) so the inner code is found whatever the SDK's model does.
    """
    body: object = None
    try:
        if exc.response is not None:
            body = json.loads(exc.response.text())
    except Exception:  # not JSON (or no body): fall back to what the SDK parsed
        body = None
    error = _field(body, "error")
    code, message, inner = _field(error, "code"), _field(error, "message"), _field(_field(error, "innererror"), "code")
    if not isinstance(code, str) and exc.error is not None:
        code, message = exc.error.code, exc.error.message
    return (
        exc.status_code,
        code if isinstance(code, str) else None,
        inner if isinstance(inner, str) else None,
        message if isinstance(message, str) else "",
    )


class KeyVaultSecretStore:
    """:class:`~sync_core.secrets.base.SecretStore` on Azure Key Vault.

    ``credential`` defaults to ``azure.identity.DefaultAzureCredential()`` (the function app's
    managed identity in Azure); ``transport`` is handed to the SDK's ``SecretClient`` (tests pass
    ``devtools.keyvault_transport.FakeKeyVaultTransport``).  Values are cached in process for
    ``cache_seconds`` (misses for at most 30 s) so a rotated secret is picked up; ``0`` disables
    the cache.  Names: see :func:`key_vault_name`.  Thread-safe; one instance per worker.
    """

    def __init__(
        self,
        vault_url: str,
        *,
        credential: TokenCredential | None = None,
        transport: HttpTransport[Any, Any] | None = None,
        cache_seconds: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not vault_url.startswith("https://"):
            raise ValueError(f"Key Vault URLs are https://<name>.vault.azure.net, not {vault_url!r}")
        self.vault_url = vault_url.rstrip("/")
        self._owns_credential = credential is None
        if credential is None:
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential()
        self.credential: TokenCredential = credential
        options: dict[str, Any] = {}
        if transport is not None:
            options["transport"] = transport
        self._client = SecretClient(self.vault_url, credential, **options)
        self.cache_seconds = max(0.0, float(cache_seconds))
        self.miss_cache_seconds = min(MISS_CACHE_SECONDS, self.cache_seconds)
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[str | None, float]] = {}
        self._name_locks: dict[str, threading.Lock] = {}

    # -- SecretStore ------------------------------------------------------------------------
    def get(self, name: str) -> str | None:
        """The value, or None when the secret is absent, tombstoned or disabled.

        ``GET /secrets/{name}/`` reads the latest version: 404 -> None; 403 with inner code
        ``SecretDisabled`` (the latest version is disabled, e.g. davbridge's tombstone) -> None;
        an enabled version tagged ``davbridge-state=deleted`` -> None.  Concurrent misses for one
        name send one request; the others wait for its answer.
        """
        kv_name = key_vault_name(name)
        key = kv_name.lower()  # Key Vault names are case-insensitive
        found, value = self._cached(key)
        if found:
            return value
        with self._name_lock(key):
            found, value = self._cached(key)
            if found:
                return value
            value = self._fetch(kv_name)
            self._remember(key, value)
            return value

    def set(self, name: str, value: str) -> None:
        """Store ``value`` as a new version (``PUT /secrets/{name}``); the cache then holds it.

        If someone deleted the secret outside davbridge, Key Vault answers ``409 Conflict`` /
        ``ObjectIsDeletedButRecoverable``: the secret is recovered (``POST
        /deletedsecrets/{name}/recover``, waiting until it is back) and the value set again.
        """
        kv_name = key_vault_name(name)
        key = kv_name.lower()
        with self._name_lock(key):
            self._forget(key)
            try:
                self._put(kv_name, value)
            except HttpResponseError as exc:
                _status, _code, inner, _message = _error_details(exc)
                if exc.status_code != 409 or inner != "ObjectIsDeletedButRecoverable":
                    self._raise(exc, "write", kv_name, value)
                log.warning("Key Vault secret %s was deleted outside davbridge; recovering it", kv_name)
                self._recover(kv_name)
                try:
                    self._put(kv_name, value)
                except HttpResponseError as again:
                    self._raise(again, "write", kv_name, value)
            self._remember(key, value)

    def delete(self, name: str) -> None:
        """Make ``get`` return None -- without ``DELETE``, which would block the name for the
        soft-delete retention period.

        Writes a *tombstone* version: empty value, ``enabled=False``, tag
        ``davbridge-state=deleted``.  Key Vault refuses to read a disabled version (403
        ``SecretDisabled``), which ``get`` reads as "absent"; a later ``set`` simply adds a new
        enabled version on top.  Older versions stay in the vault's history (Key Vault keeps
        every version; ``az keyvault secret purge`` after a real delete removes them).  A secret
        already soft-deleted outside davbridge counts as deleted (409 is not an error here).
        """
        kv_name = key_vault_name(name)
        key = kv_name.lower()
        with self._name_lock(key):
            self._forget(key)
            try:
                self._client.set_secret(
                    kv_name,
                    "",
                    enabled=False,
                    tags={TOMBSTONE_TAG: TOMBSTONE_STATE},
                    content_type=TOMBSTONE_CONTENT_TYPE,
                )
            except HttpResponseError as exc:
                _status, _code, inner, _message = _error_details(exc)
                if exc.status_code != 409 or inner != "ObjectIsDeletedButRecoverable":
                    self._raise(exc, "delete", kv_name)
                log.info("Key Vault secret %s is already soft-deleted; nothing to do", kv_name)
            except AzureError as exc:
                self._raise(exc, "delete", kv_name)
            else:
                log.info("Key Vault secret %s tombstoned", kv_name)
            self._remember(key, None)

    # -- housekeeping -----------------------------------------------------------------------
    def invalidate(self, name: str | None = None) -> None:
        """Drop one cached entry, or all of them."""
        with self._lock:
            if name is None:
                self._cache.clear()
            else:
                self._cache.pop(key_vault_name(name).lower(), None)

    def close(self) -> None:
        """Close the SDK client (and the default credential this store created)."""
        self._client.close()
        if self._owns_credential and hasattr(self.credential, "close"):
            self.credential.close()

    def __enter__(self) -> KeyVaultSecretStore:
        return self

    def __exit__(self, *args: object) -> None:
        self.close()

    # -- Key Vault calls ----------------------------------------------------------------------
    def _fetch(self, kv_name: str) -> str | None:
        try:
            secret = self._client.get_secret(kv_name)
        except ResourceNotFoundError:
            return None
        except HttpResponseError as exc:
            status, _code, inner, _message = _error_details(exc)
            if status == 403 and inner == "SecretDisabled":
                return None
            self._raise(exc, "read", kv_name)
        except AzureError as exc:
            self._raise(exc, "read", kv_name)
        props = secret.properties
        if props.enabled is False or (props.tags or {}).get(TOMBSTONE_TAG) == TOMBSTONE_STATE:
            return None
        return secret.value

    def _put(self, kv_name: str, value: str) -> None:
        try:
            self._client.set_secret(kv_name, value, enabled=True)
        except HttpResponseError:
            raise
        except AzureError as exc:
            self._raise(exc, "write", kv_name, value)

    def _recover(self, kv_name: str) -> None:
        try:
            poller = self._client.begin_recover_deleted_secret(kv_name)
            poller.wait(timeout=120)
        except AzureError as exc:
            self._raise(exc, "recover", kv_name)
        if not poller.done():
            raise SecretStoreError(
                f"Key Vault {self.vault_url}: secret {kv_name!r} was deleted outside davbridge and its recovery "
                "did not finish within 120 s; retry later"
            )

    def _raise(self, exc: AzureError, action: str, kv_name: str, value: str | None = None) -> NoReturn:
        """Raise :class:`SecretStoreError` for an SDK error; the message names the fix.

        Chaining is suppressed (``from None``): the SDK exception holds the request, whose body
        carries the value on writes.
        """
        vault = self.vault_url
        role = (
            f"the function app's identity needs the Key Vault Secrets Officer role "
            f"({KEY_VAULT_SECRETS_OFFICER}) on {vault}"
        )
        if isinstance(exc, HttpResponseError) and exc.status_code is not None:
            status, code, inner, message = _error_details(exc)
            detail = f"{status} {code or exc.reason or ''}{f'/{inner}' if inner else ''}: {message}".strip()
            if status in (401, 403):
                text = f"Key Vault {vault} refused to {action} secret {kv_name!r} ({detail}); {role}."
            elif status == 400 and value is not None and len(value.encode("utf-8")) > MAX_VALUE_BYTES:
                text = (
                    f"Key Vault {vault} refused to {action} secret {kv_name!r}: the value is "
                    f"{len(value.encode('utf-8'))} bytes and Key Vault stores at most 25 KB "
                    f"({MAX_VALUE_BYTES} bytes) per secret ({detail})"
                )
            else:
                text = f"Key Vault {vault} failed to {action} secret {kv_name!r} ({detail})"
        elif isinstance(exc, ClientAuthenticationError):
            text = (
                f"could not get a token for Key Vault {vault} to {action} secret {kv_name!r} "
                f"({type(exc).__name__}: {exc.message}); in Azure, enable the function app's managed identity; "
                f"{role}."
            )
        else:
            text = f"Key Vault {vault}: could not {action} secret {kv_name!r} ({type(exc).__name__}: {exc.message})"
        if value:
            text = text.replace(value, "***")
        raise SecretStoreError(text) from None

    # -- cache ----------------------------------------------------------------------------------
    def _cached(self, key: str) -> tuple[bool, str | None]:
        now = self._clock()
        with self._lock:
            entry = self._cache.get(key)
            if entry is None:
                return False, None
            value, expires = entry
            if now >= expires:
                del self._cache[key]
                return False, None
            return True, value

    def _remember(self, key: str, value: str | None) -> None:
        ttl = self.cache_seconds if value is not None else self.miss_cache_seconds
        with self._lock:
            if ttl > 0:
                self._cache[key] = (value, self._clock() + ttl)
            else:
                self._cache.pop(key, None)

    def _forget(self, key: str) -> None:
        with self._lock:
            self._cache.pop(key, None)

    def _name_lock(self, key: str) -> threading.Lock:
        with self._lock:
            lock = self._name_locks.get(key)
            if lock is None:
                lock = self._name_locks[key] = threading.Lock()
            return lock

    def __repr__(self) -> str:
        return f"KeyVaultSecretStore({self.vault_url!r})"

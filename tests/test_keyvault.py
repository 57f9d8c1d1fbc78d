"""KeyVaultSecretStore through the real azure-keyvault-secrets SecretClient and an in-memory vault.

The fake (devtools/keyvault_transport.py) sits at the SDK's transport, so serialisation, the Key
Vault challenge-authentication policy, error mapping and the recover poller all run for real.
Each test uses its own vault host: the SDK caches authentication challenges per host process-wide.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceExistsError
from azure.identity import DefaultAzureCredential
from azure.keyvault.secrets import SecretClient

from devtools.keyvault_transport import (
    DEFAULT_TENANT_ID,
    KEY_VAULT_RESOURCE,
    MAX_VALUE_BYTES,
    FakeCredential,
    FakeKeyVaultTransport,
)
from sync_core.errors import DavbridgeError, SecretStoreError
from sync_core.secrets import open_secrets
from sync_core.secrets.keyvault import KeyVaultSecretStore, key_vault_name
from sync_core.secrets.localfile import LocalFileSecretStore

VALID = re.compile(r"^[0-9a-zA-Z-]{1,127}$")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Vault:
    url: str
    transport: FakeKeyVaultTransport
    credential: FakeCredential
    clock: FakeClock

    def store(self, **kwargs: object) -> KeyVaultSecretStore:
        return KeyVaultSecretStore(
            self.url, credential=self.credential, transport=self.transport, clock=self.clock, **kwargs  # type: ignore[arg-type]
        )

    def client(self) -> SecretClient:
        """Someone else's SecretClient on the same vault (the portal, an operator's script)."""
        return SecretClient(self.url, self.credential, transport=self.transport)

    def gets(self) -> list[tuple[str, str]]:
        return self.transport.sent("GET")


@pytest.fixture
def vault() -> Vault:
    url = f"https://davbridge-test-{uuid.uuid4().hex[:8]}.vault.azure.net"
    credential = FakeCredential()
    return Vault(url, FakeKeyVaultTransport(url, accept_token=credential.accepts), credential, FakeClock())


# --- round trip and authentication ---------------------------------------------------------
def test_round_trip_with_challenge_authentication(vault: Vault) -> None:
    store = vault.store()
    assert store.get("graph-client-secret") is None
    store.set("graph-client-secret", "s3cr3t")
    assert store.get("graph-client-secret") == "s3cr3t"
    assert vault.store().get("graph-client-secret") == "s3cr3t"  # read back from the vault, not the cache
    store.delete("graph-client-secret")
    assert store.get("graph-client-secret") is None
    assert vault.store().get("graph-client-secret") is None

    first = vault.transport.requests[0]
    assert (first.method, first.path, first.authorized, first.status) == ("GET", "/secrets/graph-client-secret/",
                                                                         False, 401)
    assert all(r.authorized for r in vault.transport.requests[1:])
    # each store's client asked the credential once, for the challenge's resource in its tenant
    assert [(c.scopes, c.tenant_id) for c in vault.credential.calls] == [
        ((f"{KEY_VAULT_RESOURCE}/.default",), DEFAULT_TENANT_ID)
    ] * 3
    assert {r.api_version for r in vault.transport.requests} <= {"2026-04-01", "2025-07-01"} | {
        f"7.{i}" for i in range(7)
    }


# --- names -----------------------------------------------------------------------------------
def test_key_vault_name_mapping() -> None:
    for ok in ("graph-client-secret", "caldav-password-0123abcd", "A", "x" * 127, "Mixed-Case-9"):
        assert key_vault_name(ok) == ok

    digest = hashlib.sha256(b"caldav/password").hexdigest()[:16]
    assert key_vault_name("caldav/password") == f"caldav-password-{digest}"
    bad = ["caldav/password", "o'brien+test@contoso.test", "with space", "ünïcødé", "___", "a" * 128,
           "-" * 200 + "/", "x/" * 300, "Caldav/Password", "caldav/password "]
    mapped = [key_vault_name(n) for n in bad]
    for original, name in zip(bad, mapped, strict=True):
        assert VALID.match(name), name
        assert len(name) <= 127
        assert key_vault_name(original) == name  # deterministic
        assert name.endswith("-" + hashlib.sha256(original.encode()).hexdigest()[:16])
    assert key_vault_name("___").startswith("x-")
    # distinct inputs -> distinct secrets, also for Key Vault's case-insensitive comparison
    assert len({n.lower() for n in mapped}) == len(bad)
    with pytest.raises(ValueError):
        key_vault_name("")


def test_store_maps_any_name_and_the_vault_accepts_every_name_sent(vault: Vault) -> None:
    names = ["caldav/password", "user@contoso.test", "ünïcødé", "a" * 300, "with space", "Ok-Name", "x" * 127]
    store = vault.store()
    for i, name in enumerate(names):
        store.set(name, f"value-{i}")
    reader = vault.store()
    assert [reader.get(name) for name in names] == [f"value-{i}" for i in range(len(names))]
    assert all(r.status != 400 for r in vault.transport.requests)
    assert all(r.name is not None and VALID.match(r.name) for r in vault.transport.requests)
    assert vault.transport.secret_names() == sorted(key_vault_name(n) for n in names)
    with pytest.raises(ValueError):
        store.get("")
    # the local file keeps requiring valid names
    with pytest.raises(ValueError):
        LocalFileSecretStore(Path("/nonexistent/secrets.json")).set("caldav/password", "x")


# --- cache -----------------------------------------------------------------------------------
def test_cache_hits_expiry_and_misses(vault: Vault) -> None:
    vault.store().set("token-cache", "v1")
    reader = vault.store(cache_seconds=300)
    vault.transport.clear_requests()

    assert reader.get("token-cache") == "v1"
    assert reader.get("token-cache") == "v1"
    assert len(vault.gets()) == 1  # second get answered from the cache

    vault.store().set("token-cache", "v2")  # rotated by another worker
    vault.clock.now += 299
    assert reader.get("token-cache") == "v1"
    assert len(vault.gets()) == 1
    vault.clock.now += 2  # past 300 s
    assert reader.get("token-cache") == "v2"
    assert len(vault.gets()) == 2

    # a miss is cached too, for at most 30 s
    assert reader.get("absent") is None
    assert reader.get("absent") is None
    assert len(vault.gets()) == 3
    vault.clock.now += 31
    assert reader.get("absent") is None
    assert len(vault.gets()) == 4

    # cache_seconds=0 disables caching
    uncached = vault.store(cache_seconds=0)
    uncached.get("token-cache")
    uncached.get("token-cache")
    assert len(vault.gets()) == 6


def test_set_and_delete_update_the_cache(vault: Vault) -> None:
    store = vault.store()
    assert store.get("caldav-password-1") is None
    store.set("caldav-password-1", "first")
    store.set("caldav-password-1", "second")
    assert store.get("caldav-password-1") == "second"
    store.delete("caldav-password-1")
    assert store.get("caldav-password-1") is None
    assert len(vault.gets()) == 1  # only the very first get went to the vault
    # names are case-insensitive in Key Vault, and so in the cache
    store.set("Caldav-Password-1", "third")
    assert store.get("caldav-password-1") == "third"
    assert len(vault.gets()) == 1


def test_concurrent_gets_from_8_threads_send_one_request(vault: Vault) -> None:
    vault.store().set("shared", "value")
    vault.transport.latency = 0.05  # widen the race window
    reader = vault.store()
    vault.transport.clear_requests()
    barrier = threading.Barrier(8)
    results: list[str | None] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker() -> None:
        try:
            barrier.wait()
            value = reader.get("shared")
            with lock:
                results.append(value)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not errors
    assert results == ["value"] * 8
    assert vault.gets() == [("GET", "/secrets/shared/")]


# --- overwrite, tombstones, soft-delete ---------------------------------------------------------
def test_set_overwrites_with_new_versions_and_never_deletes(vault: Vault) -> None:
    store = vault.store()
    store.set("graph-client-secret", "one")
    store.set("graph-client-secret", "two")
    assert vault.transport.sent("PUT") == [("PUT", "/secrets/graph-client-secret")] * 2
    assert [(v.value, v.enabled) for v in vault.transport.versions("graph-client-secret")] == [
        ("one", True), ("two", True)
    ]
    assert vault.store().get("graph-client-secret") == "two"
    assert vault.transport.sent("DELETE", authorized_only=False) == []


def test_delete_writes_a_tombstone_and_set_works_again(vault: Vault) -> None:
    store = vault.store()
    store.set("caldav-password-x", "old")
    store.delete("caldav-password-x")

    tomb = vault.transport.versions("caldav-password-x")[-1]
    assert (tomb.value, tomb.enabled, tomb.tags) == ("", False, {"davbridge-state": "deleted"})
    vault.transport.clear_requests()
    assert vault.store().get("caldav-password-x") is None
    (read,) = [r for r in vault.transport.requests if r.method == "GET"]
    assert read.status == 403  # Key Vault: SecretDisabled, read as "absent"

    store.set("caldav-password-x", "new")  # a new enabled version; no 409
    assert all(r.status != 409 for r in vault.transport.requests)
    assert vault.store().get("caldav-password-x") == "new"
    store.delete("never-existed")  # deleting an unknown name is fine too
    assert vault.store().get("never-existed") is None
    assert vault.transport.sent("DELETE", authorized_only=False) == []
    assert vault.transport.deleted_names() == []


def test_disabled_or_tombstoned_secrets_read_as_absent(vault: Vault) -> None:
    store = vault.store()
    store.set("disabled-by-operator", "v")
    store.set("tombstone-re-enabled", "v")
    store.delete("tombstone-re-enabled")
    other = vault.client()
    other.update_secret_properties("disabled-by-operator", enabled=False)
    other.update_secret_properties("tombstone-re-enabled", enabled=True)  # the tag still says deleted
    reader = vault.store()
    assert reader.get("disabled-by-operator") is None
    assert reader.get("tombstone-re-enabled") is None


def test_secret_soft_deleted_outside_davbridge_is_recovered_on_set(vault: Vault) -> None:
    store = vault.store()
    store.set("graph-client-secret", "v1")
    vault.client().begin_delete_secret("graph-client-secret").wait()
    assert vault.transport.deleted_names() == ["graph-client-secret"]
    vault.transport.clear_requests()

    store.set("graph-client-secret", "v2")
    assert [(r.method, r.path, r.status) for r in vault.transport.requests] == [
        ("PUT", "/secrets/graph-client-secret", 409),
        ("POST", "/deletedsecrets/graph-client-secret/recover", 200),
        ("GET", "/secrets/graph-client-secret/", 404),  # the poller waits until recovery finished
        ("GET", "/secrets/graph-client-secret/", 200),
        ("PUT", "/secrets/graph-client-secret", 200),
    ]
    assert vault.transport.deleted_names() == []
    assert [v.value for v in vault.transport.versions("graph-client-secret")] == ["v1", "v2"]
    assert vault.store().get("graph-client-secret") == "v2"

    # delete() of a secret someone soft-deleted is not an error: it is already gone
    vault.client().begin_delete_secret("graph-client-secret").wait()
    store.delete("graph-client-secret")
    assert store.get("graph-client-secret") is None


# --- errors ----------------------------------------------------------------------------------
def test_permission_403_is_not_secret_disabled(vault: Vault) -> None:
    store = vault.store()
    store.set("caldav-password-y", "hunter2-very-secret")
    vault.transport.permissions.discard("get")
    with pytest.raises(SecretStoreError) as info:
        vault.store().get("caldav-password-y")
    message = str(info.value)
    assert "Key Vault Secrets Officer" in message and vault.url in message
    assert "403" in message and "ForbiddenByRbac" in message
    assert "hunter2-very-secret" not in message
    assert isinstance(info.value, DavbridgeError)

    vault.transport.permissions.discard("set")
    with pytest.raises(SecretStoreError) as info:
        store.set("caldav-password-y", "an0ther-very-secret")
    assert "Key Vault Secrets Officer" in str(info.value)
    assert "an0ther-very-secret" not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_rejected_token_and_failing_credential_raise_secret_store_error(vault: Vault) -> None:
    vault.transport.accept_token = lambda token: False
    with pytest.raises(SecretStoreError) as info:
        vault.store().set("graph-client-secret", "s3cr3t-value")
    assert "401" in str(info.value) and "Key Vault Secrets Officer" in str(info.value)
    assert "s3cr3t-value" not in str(info.value)

    url = f"https://davbridge-test-{uuid.uuid4().hex[:8]}.vault.azure.net"
    failing = FakeCredential(error=ClientAuthenticationError("ManagedIdentityCredential: no identity endpoint"))
    store = KeyVaultSecretStore(url, credential=failing, transport=FakeKeyVaultTransport(url))
    with pytest.raises(SecretStoreError) as info:
        store.get("graph-client-secret")
    assert "managed identity" in str(info.value) and "Key Vault Secrets Officer" in str(info.value)
    assert failing.call_count == 1


def test_value_over_25_kb_gets_a_clear_error(vault: Vault) -> None:
    store = vault.store()
    store.set("big-ok", "x" * MAX_VALUE_BYTES)  # exactly 25 KB is allowed
    too_big = "é" * (MAX_VALUE_BYTES // 2 + 1)  # 25,602 bytes in UTF-8
    with pytest.raises(SecretStoreError) as info:
        store.set("big-too-much", too_big)
    message = str(info.value)
    assert "25 KB" in message and "25602 bytes" in message and "big-too-much" in message
    assert too_big not in message and len(message) < 1000
    assert ("PUT", "/secrets/big-too-much", 400) in [(r.method, r.path, r.status) for r in vault.transport.requests]
    assert store.get("big-too-much") is None


def test_secret_values_are_never_logged(vault: Vault, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    store = vault.store()
    store.set("graph-client-secret", "Zq9-unique-secret-value")
    vault.client().begin_delete_secret("graph-client-secret").wait()
    store.set("graph-client-secret", "Zq9-unique-secret-value")
    vault.store().get("graph-client-secret")
    store.delete("graph-client-secret")
    assert caplog.records  # something was logged (the SDK's HTTP log, our warnings)
    assert "Zq9-unique-secret-value" not in caplog.text


# --- the fake vault itself ---------------------------------------------------------------------
def test_fake_vault_enforces_key_vault_rules(vault: Vault) -> None:
    client = vault.client()
    with pytest.raises(HttpResponseError) as bad_name:
        client.set_secret("not/valid", "x")
    assert bad_name.value.status_code == 400
    client.set_secret("Gone", "x")
    assert client.get_secret("gone").value == "x"  # names are case-insensitive
    client.begin_delete_secret("gone").wait()
    with pytest.raises(ResourceExistsError) as conflict:
        client.set_secret("gone", "y")
    assert conflict.value.error is not None
    assert conflict.value.error.innererror == {"code": "ObjectIsDeletedButRecoverable"}
    client.purge_deleted_secret("gone")
    client.set_secret("gone", "y")  # purged: the name is free again
    assert client.get_secret("gone").value == "y"


# --- open_secrets and construction ---------------------------------------------------------------
def test_open_secrets_url_forms(tmp_path: Path) -> None:
    assert isinstance(open_secrets(f"file://{tmp_path / 's.json'}"), LocalFileSecretStore)
    for url in (
        "keyvault:https://davbridge-test.vault.azure.net",
        "https://davbridge-test.vault.azure.net",
        "https://davbridge-test.vault.azure.net/",
    ):
        store = open_secrets(url)
        assert isinstance(store, KeyVaultSecretStore)
        assert store.vault_url == "https://davbridge-test.vault.azure.net"
        store.close()
    explicit = open_secrets("keyvault:https://kv.privatelink.example.test")
    assert isinstance(explicit, KeyVaultSecretStore)
    explicit.close()
    for bad in (
        "https://example.com",
        "https://davbridge-test.vault.azure.net/secrets/x",
        "https://davbridge-test.vault.azure.net/?a=b",
        "keyvault:http://davbridge-test.vault.azure.net",
        "keyvault:davbridge-test",
        "ftp://davbridge-test.vault.azure.net",
    ):
        with pytest.raises(ValueError):
            open_secrets(bad)


def test_default_credential_is_default_azure_credential(vault: Vault) -> None:
    store = KeyVaultSecretStore(vault.url, transport=vault.transport)
    assert isinstance(store.credential, DefaultAzureCredential)
    assert vault.transport.requests == []  # constructing sends nothing
    store.close()

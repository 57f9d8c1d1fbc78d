"""The local secrets file and Key Vault-safe secret names.

The state repository contract (every backend) is in ``test_state_contract.py``.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from sync_core.secrets import open_secrets
from sync_core.secrets.localfile import LocalFileSecretStore
from sync_core.state.base import UserRecord


def test_secrets_file_is_0600_and_round_trips(tmp_path: Path) -> None:
    secrets = open_secrets(f"file://{tmp_path / 'dir' / 'secrets.json'}")
    assert secrets.get("graph-client-secret") is None
    secrets.set("graph-client-secret", "s3cr3t")
    path = tmp_path / "dir" / "secrets.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert secrets.get("graph-client-secret") == "s3cr3t"
    secrets.delete("graph-client-secret")
    assert secrets.get("graph-client-secret") is None


def test_secrets_file_refuses_bad_names_and_loose_permissions(tmp_path: Path) -> None:
    secrets = LocalFileSecretStore(tmp_path / "secrets.json")
    with pytest.raises(ValueError):
        secrets.set("caldav/password", "x")  # not a valid Key Vault name
    secrets.set("ok-name", "x")
    os.chmod(tmp_path / "secrets.json", 0o644)
    with pytest.raises(PermissionError):
        secrets.get("ok-name")


def test_user_secret_names_are_key_vault_safe() -> None:
    name = UserRecord("o'brien+test@contoso.test", "https://dav/", "x").caldav_secret_name()
    assert name.startswith("caldav-password-") and name.replace("-", "").isalnum() and len(name) <= 127

"""State repository contract (run against every backend; SQLite today) and the local secrets file."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sync_core.secrets import open_secrets
from sync_core.secrets.localfile import LocalFileSecretStore
from sync_core.state import StateStore, open_state
from sync_core.state.base import ConflictPolicy, Direction, ItemLink, Pairing, PendingItem, RunStatus, UserRecord


@pytest.fixture(params=["sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    s = open_state(f"sqlite:///{tmp_path / 'state.db'}")
    yield s
    s.close()


def test_users_round_trip_and_filter(store: StateStore) -> None:
    store.save_user(UserRecord("Ada@Contoso.test", "https://dav/", "ada"))
    store.save_user(UserRecord("bob@contoso.test", "https://dav/", "bob", enabled=False))
    assert store.get_user("ada@contoso.test") is not None  # UPNs are case-insensitive
    assert [u.upn for u in store.list_users(enabled_only=True)] == ["Ada@Contoso.test"]
    assert len(store.list_users()) == 2


def test_pairings_links_cursors_pending_status(store: StateStore) -> None:
    p = Pairing("p1", "ada@contoso.test", None, "https://dav/cal/", direction=Direction.M365_TO_CALDAV,
                conflict_policy=ConflictPolicy.CALDAV_WINS)
    store.save_pairing(p)
    assert store.list_pairings("ADA@contoso.test") == [p]

    link = ItemLink("p1", "uid/with#odd?chars", "m1", "e1", "f1", "/c/1.ics", '"c1"', "f2")
    store.save_link(link)
    (back,) = store.links("p1")
    assert back == link and back.updated_at.tzinfo is not None
    store.delete_link("p1", "uid/with#odd?chars")
    assert store.links("p1") == []

    assert store.get_cursor("p1", "m365") is None
    store.save_cursor("p1", "m365", "https://graph/delta?token=abc")
    assert store.get_cursor("p1", "m365") == "https://graph/delta?token=abc"

    store.save_pending(PendingItem("p1", "caldav", "/c/2.ics", "PreconditionFailed"))
    store.save_pending(PendingItem("p1", "caldav", "/c/3.ics", "bad", quarantined=True))
    assert {i.item_id for i in store.pending("p1")} == {"/c/2.ics", "/c/3.ics"}
    store.clear_pending("p1", "caldav", ["/c/2.ics"])
    assert [i.item_id for i in store.pending("p1")] == ["/c/3.ics"]

    st = RunStatus("p1", "ada@contoso.test", datetime(2026, 11, 24, tzinfo=UTC), counts={"created_m365": 2})
    store.save_status(st)
    assert store.get_status("p1") == st


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

"""One StateStore contract, run against every backend: SQLite and Azure Table Storage (Azurite).

The ``store`` fixture is parametrized over the backends; ``open_store()`` opens another,
independent store object on the same state (another SQLite connection to the file, or
another Table service client), which is how the concurrency tests stand in for separate
processes. The Azurite-only tests at the end read the raw entities to check the documented
layout and key escaping of ``sync_core/state/tables.py``.
"""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from azure.data.tables import TableClient, TableServiceClient

from devtools.servers import AzuriteServer
from sync_core.state import StateStore, open_state
from sync_core.state.base import (
    AUDIT_RETENTION,
    AuditEntry,
    ConflictPolicy,
    Direction,
    ItemLink,
    Pairing,
    PendingItem,
    RunStatus,
    Subscription,
    UserRecord,
    link_id_for,
    utcnow,
)
from sync_core.state.records import time_key
from sync_core.state.sqlite import SQLiteStateStore
from sync_core.state.tables import (
    KINDS,
    StateTooLarge,
    TableStateStore,
    audit_partition,
    escape_key,
    unescape_key,
    user_key,
)

Opener = Callable[[], StateStore]
OPENER = pytest.StashKey[Opener]()

T0 = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)
#: Every character Table Storage forbids in keys, plus '%' (and our escape character '~').
NASTY = "a/b\\c#d?e%f'g|h~i\x00j\x1fk\x7fl\x9fm\tn\r\no"
FORBIDDEN = set("/\\#?%") | {chr(c) for c in range(0x20)} | {chr(c) for c in range(0x7F, 0xA0)}


def _prefix() -> str:
    """A table prefix unique per test: letters and digits, starting with a letter."""
    return "t" + uuid.uuid4().hex[:16]


@pytest.fixture(params=["sqlite", "azurite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    opened: list[StateStore] = []
    if request.param == "sqlite":
        path = tmp_path / "state.db"

        def open_new() -> StateStore:
            opened.append(open_state(f"sqlite:///{path}"))
            return opened[-1]
    else:
        azurite: AzuriteServer = request.getfixturevalue("azurite")
        prefix = _prefix()

        def open_new() -> StateStore:
            opened.append(TableStateStore.from_connection_string(azurite.connection_string, table_prefix=prefix))
            return opened[-1]

    request.node.stash[OPENER] = open_new
    try:
        yield open_new()
    finally:
        for s in opened:
            s.close()


@pytest.fixture
def open_store(store: StateStore, request: pytest.FixtureRequest) -> Opener:
    """Opens another store object on the same state as ``store``."""
    return request.node.stash[OPENER]


def _run_at_once(n: int, stores: list[StateStore], call: Callable[[int, StateStore], Any]) -> list[Any]:
    """``call(i, stores[i])`` on ``n`` threads released together; the results in order."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[i] = call(i, stores[i])
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)
    return results


# --- users and pairings ---------------------------------------------------------------------

def test_users_case_insensitive_filter_and_last_error(store: StateStore) -> None:
    store.save_user(UserRecord("Ada@Contoso.test", "https://dav/", "ada"))
    store.save_user(UserRecord("bob@contoso.test", "https://dav/", "bob", enabled=False))
    assert store.get_user("ada@contoso.test") is not None  # UPNs are case-insensitive
    assert store.get_user("ADA@CONTOSO.TEST") == store.get_user("Ada@Contoso.test")
    assert store.get_user("carol@contoso.test") is None
    assert [u.upn for u in store.list_users(enabled_only=True)] == ["Ada@Contoso.test"]
    assert [u.upn for u in store.list_users()] == ["Ada@Contoso.test", "bob@contoso.test"]

    ada = store.get_user("ada@contoso.test")
    assert ada is not None and ada.last_error is None and ada.last_error_at is None
    ada.last_error, ada.last_error_at, ada.enabled = "PoisonMessage: sync request failed 5 times", T0, False
    store.save_user(ada)
    back = store.get_user("ada@contoso.test")
    assert back == ada and back.last_error_at == T0 and back.created_at.tzinfo is not None
    assert store.list_users(enabled_only=True) == []
    assert len(store.list_users()) == 2  # saved again, not added


def test_pairings_per_user(store: StateStore) -> None:
    p1 = Pairing("p2", "Ada@Contoso.test", None, "https://dav/cal/", direction=Direction.M365_TO_CALDAV,
                 conflict_policy=ConflictPolicy.CALDAV_WINS)
    p2 = Pairing("p1", "ada@contoso.test", "AAMk/+=", "https://dav/work/", name="Work")
    other = Pairing("p3", "bob@contoso.test", None, "https://dav/bob/")
    for p in (p1, p2, other):
        store.save_pairing(p)
    assert store.list_pairings("ADA@contoso.test") == [p2, p1]  # ordered by pairing id
    assert store.list_pairings("bob@contoso.test") == [other]
    assert store.list_pairings("carol@contoso.test") == []
    p1.window_future_days = 30
    store.save_pairing(p1)
    assert store.list_pairings("ada@contoso.test")[1].window_future_days == 30


# --- links ----------------------------------------------------------------------------------

ODD_UIDS = ["plain-uid@example.com", "uid/with/slash", "back\\slash", "hash#tag", "what?", "100%",
            "ctl\x01\x1f\x7f\x9f", "tab\tnew\nline", NASTY, "ünïcødé-😀"]


def test_links_round_trip_with_odd_uids_and_delete(store: StateStore) -> None:
    links = [ItemLink("p1", uid, f"m{i}", f"e{i}", "f1", f"/c/{i}.ics", f'"c{i}"', "f2")
             for i, uid in enumerate(ODD_UIDS)]
    for link in links:
        store.save_link(link)
    store.save_link(ItemLink("p2", "uid/with/slash", "other"))  # other pairing, same UID
    back = {link.uid: link for link in store.links("p1")}
    assert back == {link.uid: link for link in links}
    assert all(link.updated_at.tzinfo is not None for link in back.values())

    store.delete_link("p1", NASTY)
    store.delete_link("p1", "uid/with/slash")
    store.delete_link("p1", "never-saved")  # no error
    assert {link.uid for link in store.links("p1")} == set(ODD_UIDS) - {NASTY, "uid/with/slash"}
    assert [link.m365_id for link in store.links("p2")] == ["other"]


def test_save_links_in_chunked_transactions(store: StateStore) -> None:
    links = [ItemLink("p1", f"uid-{i}/{NASTY}", f"m{i}", caldav_href=f"/c/{i}.ics") for i in range(250)]
    store.save_links(links)
    store.save_links([])
    assert sorted(store.links("p1"), key=lambda x: x.uid) == sorted(links, key=lambda x: x.uid)

    # Saving again replaces; a link given twice in one call ends as its last version.
    changed = [ItemLink("p1", f"uid-{i}/{NASTY}", f"m{i}", m365_etag="new") for i in range(120)]
    store.save_links([*changed, ItemLink("p1", f"uid-0/{NASTY}", "m0", m365_etag="last")])
    back = {link.uid: link for link in store.links("p1")}
    assert len(back) == 250
    assert back[f"uid-0/{NASTY}"].m365_etag == "last"
    assert back[f"uid-0/{NASTY}"].caldav_href is None  # replaced, not merged
    assert back[f"uid-119/{NASTY}"].m365_etag == "new" and back[f"uid-120/{NASTY}"].m365_etag is None


def test_links_page_over_a_thousand_rows(store: StateStore) -> None:
    store.save_links([ItemLink("big", f"uid-{i:05d}", f"m{i}") for i in range(1200)])
    store.save_link(ItemLink("other", "uid-x"))
    back = store.links("big")
    assert len(back) == 1200
    assert {link.uid for link in back} == {f"uid-{i:05d}" for i in range(1200)}


# --- cursors, pending, status ---------------------------------------------------------------

def test_cursors(store: StateStore) -> None:
    delta = "https://graph.microsoft.com/v1.0/users/x/calendars/y/events/delta?$deltatoken=" + "a%2Fb" * 300
    assert store.cursors("p/1").get("m365") is None
    store.save_cursor("p/1", "m365", delta)
    store.save_cursor("p/1", "caldav", "http://radicale.org/ns/sync/42")
    assert store.cursors("p/1") == {"m365": delta, "caldav": "http://radicale.org/ns/sync/42"}
    assert store.cursors("p/2") == {}
    store.save_cursor("p/1", "m365", None)  # reset: full resync next run
    assert store.cursors("p/1") == {"caldav": "http://radicale.org/ns/sync/42"}


def test_pending_with_forbidden_characters_and_long_ids(store: StateStore) -> None:
    long_id = "/calendars/ada/" + "x" * 1985
    assert len(long_id) == 2000
    ids = ["/c/2.ics", NASTY, long_id, long_id + "y", "AAMkAGI2T/+=="]
    for item_id in ids:
        store.save_pending(PendingItem("p1", "caldav", item_id, "PreconditionFailed", first_seen=T0))
    store.save_pending(PendingItem("p1", "m365", "/c/2.ics", "same id, other side"))
    store.save_pending(PendingItem("p1", "caldav", NASTY, "bad", attempts=3, quarantined=True, first_seen=T0))
    back = {(i.side, i.item_id): i for i in store.pending("p1")}
    assert set(back) == {("caldav", i) for i in ids} | {("m365", "/c/2.ics")}
    assert back[("caldav", NASTY)] == PendingItem("p1", "caldav", NASTY, "bad", 3, True, T0)
    assert back[("caldav", long_id)].item_id == long_id

    store.clear_pending("p1", "caldav", [NASTY, long_id, "/c/2.ics", "never-pending"])
    assert {(i.side, i.item_id) for i in store.pending("p1")} == {
        ("caldav", long_id + "y"), ("caldav", "AAMkAGI2T/+=="), ("m365", "/c/2.ics")}
    store.clear_pending("p1", "caldav", [])
    assert store.pending("p2") == []


def test_clear_pending_many(store: StateStore) -> None:
    for i in range(160):
        store.save_pending(PendingItem("p1", "m365", f"AAMk/{i}?#", "r"))
    store.clear_pending("p1", "m365", (f"AAMk/{i}?#" for i in range(150)))  # any iterable
    assert sorted(i.item_id for i in store.pending("p1")) == sorted(f"AAMk/{i}?#" for i in range(150, 160))


def test_status_with_long_notices(store: StateStore) -> None:
    notices = [f"caldav /calendars/ada/{i}-{'x' * 2000}.ics: series expanded into single events 😀 "
               + "y" * 3000 for i in range(20)]
    assert sum(len(n) for n in notices) > 64 * 1024  # more than one Table string property holds
    st = RunStatus("p/1", "ada@contoso.test", T0, finished_at=T0 + timedelta(seconds=3), ok=True,
                   last_success_at=T0, counts={"created_m365": 2, "updated_caldav": 1}, quarantined=1,
                   notices=notices)
    assert store.get_status("p/1") is None
    store.save_status(st)
    assert store.get_status("p/1") == st
    short = RunStatus("p/1", "ada@contoso.test", T0, error="SideError: boom")
    store.save_status(short)  # replaced: no stale continuation of the long one
    assert store.get_status("p/1") == short


# --- audit ----------------------------------------------------------------------------------

def _entry(upn: str, at: datetime, *, pairing_id: str = "p1", item_id: str | None = "/c/1.ics",
           action: str = "update", side: str = "caldav") -> AuditEntry:
    return AuditEntry(upn, pairing_id, side, action, item_id, "h-before", "h-after", "timer", at)


def _midnight(at: datetime) -> datetime:
    return at.replace(hour=0, minute=0, second=0, microsecond=0)


def test_audit_by_user_and_range(store: StateStore) -> None:
    day = _midnight(utcnow())  # today, so no day of the range lies beyond the store's clock
    us = timedelta(microseconds=1)
    times = [day - timedelta(days=1) - us, day - timedelta(days=1), day - us, day, day + timedelta(hours=9),
             day + timedelta(hours=9, microseconds=1), day + timedelta(hours=10), day + timedelta(days=1)]
    mine = [_entry("Ada@Contoso.test", at, item_id=f"ada-{i}") for i, at in enumerate(times)]
    theirs = [_entry("bob@contoso.test", at, item_id=f"bob-{i}") for i, at in enumerate(times)]
    shuffled = mine + theirs
    random.Random(7).shuffle(shuffled)
    store.append_audit(shuffled[:5])
    store.append_audit(shuffled[5:])
    store.append_audit([])

    def ids(upn: str, since: datetime, until: datetime) -> list[str | None]:
        return [e.item_id for e in store.audit(upn, since, until)]

    # since inclusive, until exclusive, oldest first, only the user's rows (UPN case-insensitive)
    assert ids("ada@contoso.test", day - timedelta(days=1), day + timedelta(hours=9, microseconds=1)) == [
        "ada-1", "ada-2", "ada-3", "ada-4"]
    assert ids("ADA@CONTOSO.TEST", day - timedelta(days=2), day + timedelta(days=2)) == [
        f"ada-{i}" for i in range(len(times))]
    assert store.audit("ada@contoso.test", day - timedelta(days=2), day + timedelta(days=2)) == mine
    assert ids("bob@contoso.test", day - us, day + us) == ["bob-2", "bob-3"]
    assert ids("ada@contoso.test", day + timedelta(hours=9), day + timedelta(hours=9)) == []  # empty range
    assert ids("ada@contoso.test", day + timedelta(hours=10), day) == []  # reversed range
    assert ids("carol@contoso.test", day - timedelta(days=2), day + timedelta(days=2)) == []
    # Another zone names the same instants; the UTC day boundaries are the stored ones.
    plus2 = timezone(timedelta(hours=2))
    assert ids("ada@contoso.test", (day - us).astimezone(plus2), (day + timedelta(hours=10)).astimezone(plus2)) == [
        "ada-2", "ada-3", "ada-4", "ada-5"]
    # Open-ended ranges; a row stamped far ahead of the clock is found too.
    store.append_audit([_entry("ada@contoso.test", day + timedelta(days=40), item_id="ahead")])
    everything = ids("ada@contoso.test", datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC))
    assert everything == [*(f"ada-{i}" for i in range(len(times))), "ahead"]
    assert ids("ada@contoso.test", day + timedelta(days=2), day + timedelta(days=41)) == ["ahead"]
    assert ids("ada@contoso.test", day + timedelta(days=40, microseconds=1), datetime.max.replace(tzinfo=UTC)) == []


def test_audit_many_rows_in_one_day(store: StateStore) -> None:
    start = _midnight(utcnow()) - timedelta(days=3) + timedelta(hours=6)
    entries = [_entry("ada@contoso.test", start + timedelta(seconds=i), item_id=f"i{i}",
                      action=("create", "update", "delete")[i % 3]) for i in range(250)]
    store.append_audit(entries)
    assert store.audit("ada@contoso.test", start, start + timedelta(days=1)) == entries
    assert [e.item_id for e in store.audit("ada@contoso.test", start + timedelta(seconds=100),
                                           start + timedelta(seconds=200))] == [f"i{i}" for i in range(100, 200)]


def test_purge_audit_by_age(store: StateStore) -> None:
    now = utcnow()
    cutoff = now - AUDIT_RETENTION
    us = timedelta(microseconds=1)
    ages = {"31d": now - timedelta(days=31), "just-older": cutoff - us, "30d": cutoff,
            "just-newer": cutoff + us, "2d": now - timedelta(days=2)}
    for upn in ("ada@contoso.test", "bob@contoso.test"):
        store.append_audit([_entry(upn, at, item_id=name) for name, at in ages.items()])

    # A cutoff at midnight: the previous day's rows go, the day's first microsecond stays.
    midnight = _midnight(now - timedelta(days=40))
    store.append_audit([_entry("ada@contoso.test", midnight - us, item_id="before"),
                        _entry("ada@contoso.test", midnight, item_id="at")])
    assert store.purge_audit(midnight) == 1
    assert [e.item_id for e in store.audit("ada@contoso.test", midnight - timedelta(days=1), cutoff)] == [
        "at", "31d", "just-older"]

    assert store.purge_audit(cutoff) == 5  # every row with at < older_than, of every user
    assert store.purge_audit(cutoff) == 0
    for upn in ("ada@contoso.test", "bob@contoso.test"):
        assert [e.item_id for e in store.audit(upn, now - timedelta(days=41), now)] == ["30d", "just-newer", "2d"]


# --- pairing removal and record versions ---------------------------------------------------

def _fill_pairing(store: StateStore, pairing: Pairing, n_links: int) -> None:
    store.save_pairing(pairing)
    pid = pairing.pairing_id
    store.save_links([ItemLink(pid, f"uid-{i}/{NASTY}", f"m{i}") for i in range(n_links)])
    store.save_cursor(pid, "m365", "delta")
    store.save_cursor(pid, "caldav", "token")
    store.save_pending(PendingItem(pid, "caldav", NASTY, "r"))
    store.save_pending(PendingItem(pid, "m365", "AAMk/1", "r", quarantined=True))
    store.save_status(RunStatus(pid, pairing.upn, T0, ok=True))


def test_delete_pairing_removes_everything_of_it_only(store: StateStore) -> None:
    gone = Pairing(NASTY, "Ada@Contoso.test", None, "https://dav/cal/")
    kept = Pairing("p/2", "ada@contoso.test", "AAMk", "https://dav/work/")
    other = Pairing("p3", "bob@contoso.test", None, "https://dav/bob/")
    _fill_pairing(store, gone, 230)  # more links than one transaction holds
    _fill_pairing(store, kept, 3)
    _fill_pairing(store, other, 1)
    store.append_audit([_entry("ada@contoso.test", T0, pairing_id=NASTY)])

    store.delete_pairing(gone)
    assert store.list_pairings("ada@contoso.test") == [kept]
    assert store.links(NASTY) == [] and store.pending(NASTY) == [] and store.get_status(NASTY) is None
    assert store.cursors(NASTY).get("m365") is None and store.cursors(NASTY).get("caldav") is None
    for p, n in ((kept, 3), (other, 1)):
        pid = p.pairing_id
        assert len(store.links(pid)) == n and len(store.pending(pid)) == 2
        assert store.cursors(pid).get("m365") == "delta" and store.cursors(pid).get("caldav") == "token"
        assert store.get_status(pid) is not None
    assert store.list_pairings("bob@contoso.test") == [other]
    # The audit log is history: it ages out on its own.
    assert len(store.audit("ada@contoso.test", T0, T0 + timedelta(seconds=1))) == 1

    store.delete_pairing(gone)  # again: nothing left, no error
    store.delete_pairing(Pairing("never-saved", "carol@contoso.test", None, "https://dav/"))
    assert store.list_pairings("ada@contoso.test") == [kept]


def test_new_fields_round_trip(store: StateStore) -> None:
    user = UserRecord("ada@contoso.test", "https://dav/", "ada", auth_mode="delegated")
    store.save_user(user)
    assert store.get_user("ada@contoso.test") == user

    after = datetime(2026, 11, 1, 9, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2)))
    full = Pairing("p1", "ada@contoso.test", None, "https://dav/cal/", direction=Direction.M365_TO_CALDAV,
                   first_sync_cap=250, only_changes_after=after, privacy_title="Busy 😀",
                   m365_read_only=True, caldav_read_only=True)
    defaults = Pairing("p2", "ada@contoso.test", "AAMk", "https://dav/work/")
    store.save_pairing(full)
    store.save_pairing(defaults)
    back = {p.pairing_id: p for p in store.list_pairings("ada@contoso.test")}
    assert back == {"p1": full, "p2": defaults}
    assert back["p1"].only_changes_after == after and back["p1"].only_changes_after.utcoffset() is not None
    assert back["p2"].only_changes_after is None and back["p2"].privacy_title is None
    assert back["p2"].first_sync_cap == 5000 and not back["p2"].m365_read_only

    store.save_link(ItemLink("p1", "u1", "m1", origin="m365"))
    store.save_links([ItemLink("p1", "u2", caldav_href="/c/2.ics", origin="caldav"), ItemLink("p1", "u3")])
    assert {link.uid: link.origin for link in store.links("p1")} == {"u1": "m365", "u2": "caldav", "u3": None}


def _put_raw(store: StateStore, kind: str, data: dict[str, Any]) -> None:
    """Store ``data`` as the record JSON of ``kind`` exactly as given, bypassing the codec
    (a record an older version wrote)."""
    raw = json.dumps(data)
    if isinstance(store, SQLiteStateStore):
        params = {"users": (data.get("upn", "").casefold(), int(data.get("enabled", True)), raw),
                  "pairings": (data.get("pairing_id"), data.get("upn", "").casefold(), raw),
                  "links": (data.get("pairing_id"), link_id_for(data.get("uid", "")), raw)}[kind]
        db = sqlite3.connect(store.path)
        try:
            with db:
                db.execute(f"INSERT OR REPLACE INTO {kind} VALUES (?, ?, ?)", params)
        finally:
            db.close()
        return
    assert isinstance(store, TableStateStore)
    keys = {"users": (user_key(data.get("upn", "")), "user"),
            "pairings": (user_key(data.get("upn", "")), escape_key(data.get("pairing_id", ""))),
            "links": (escape_key(data.get("pairing_id", "")), escape_key(link_id_for(data.get("uid", ""))))}[kind]
    props: dict[str, Any] = {"enabled": data.get("enabled", True)} if kind == "users" else {}
    if kind != "links":
        props["upn"] = data["upn"].casefold()
    store._table(kind).upsert_entity({"PartitionKey": keys[0], "RowKey": keys[1], "data": raw, **props})


def test_records_written_before_the_new_fields_load_with_defaults(store: StateStore) -> None:
    _put_raw(store, "users", {"upn": "Ada@Contoso.test", "caldav_url": "https://dav/", "caldav_username": "ada",
                              "enabled": True, "auth_status": "ok", "created_at": "2026-01-02T03:04:05+00:00",
                              "last_error": None, "last_error_at": None})
    _put_raw(store, "pairings", {"pairing_id": "p1", "upn": "Ada@Contoso.test", "m365_calendar_id": None,
                                 "caldav_calendar_url": "https://dav/cal/", "name": "Work",
                                 "direction": "two-way", "conflict_policy": "caldav-wins",
                                 "window_past_days": 7, "window_future_days": 90})
    _put_raw(store, "links", {"pairing_id": "p1", "uid": "u1", "m365_id": "m1", "m365_etag": "e",
                              "m365_fingerprint": "f", "caldav_href": "/c/1.ics", "caldav_etag": '"c"',
                              "caldav_fingerprint": "g", "updated_at": "2026-01-02T03:04:05+00:00",
                              "a_field_of_a_newer_version": 1})

    user = store.get_user("ada@contoso.test")
    assert user == UserRecord("Ada@Contoso.test", "https://dav/", "ada", auth_status="ok",
                              created_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    assert user.auth_mode == "app"
    assert store.list_pairings("ada@contoso.test") == [
        Pairing("p1", "Ada@Contoso.test", None, "https://dav/cal/", name="Work",
                conflict_policy=ConflictPolicy.CALDAV_WINS, window_past_days=7, window_future_days=90,
                first_sync_cap=5000, only_changes_after=None, privacy_title=None,
                m365_read_only=False, caldav_read_only=False)]
    (link,) = store.links("p1")
    assert link == ItemLink("p1", "u1", "m1", "e", "f", "/c/1.ics", '"c"', "g",
                            datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), origin=None)

    # Saved again, the record carries the new fields.
    assert user is not None
    user.auth_mode = "delegated"
    store.save_user(user)
    assert store.get_user("ada@contoso.test") == user


# --- subscriptions --------------------------------------------------------------------------

def test_subscriptions(store: StateStore) -> None:
    s1 = Subscription("7f105c7d-2dc5-4530-97cd-4e7ae6534c07", "Ada@Contoso.test", "/users/ada/events", T0)
    s2 = Subscription("0a5e6b1e-aaaa-4530-97cd-4e7ae6534c07", "ada@contoso.test", "/users/ada/events", T0)
    s3 = Subscription("odd/id#1?", "bob@contoso.test", "/users/bob/events", T0, created_at=T0)
    for s in (s1, s2, s3):
        store.save_subscription(s)
    assert store.get_subscription(s1.subscription_id) == s1
    assert store.get_subscription("odd/id#1?") == s3
    assert store.get_subscription("missing") is None
    assert store.list_subscriptions() == [s2, s1, s3]
    assert store.list_subscriptions("ADA@contoso.test") == [s2, s1]
    assert store.list_subscriptions("carol@contoso.test") == []

    s1.expires_at = T0 + timedelta(days=7)  # renewed
    store.save_subscription(s1)
    assert store.get_subscription(s1.subscription_id) == s1
    store.delete_subscription(s2.subscription_id)
    store.delete_subscription("missing")  # no error
    assert store.list_subscriptions("ada@contoso.test") == [s1]
    assert store.list_subscriptions() == [s1, s3]


# --- coordination ---------------------------------------------------------------------------

def test_request_sync_coalesces_until_taken(store: StateStore) -> None:
    upn = "Ada@Contoso.test"
    assert store.take_sync_request(upn) is None
    assert store.request_sync(upn, "timer", now=T0) is True  # enqueue
    assert store.request_sync("ada@contoso.test", "webhook", check_subscription=True,
                              now=T0 + timedelta(minutes=1)) is False
    assert store.request_sync(upn, "timer", now=T0 + timedelta(minutes=2)) is False  # no duplicate
    assert store.request_sync(upn, "admin", now=T0 + timedelta(minutes=14)) is False  # not yet stale
    req = store.take_sync_request("ADA@contoso.test")
    assert req is not None
    assert (req.upn, req.triggers, req.check_subscription, req.requested_at) == (
        upn, ["timer", "webhook", "admin"], True, T0)
    assert store.take_sync_request(upn) is None
    assert store.request_sync(upn, "webhook", now=T0 + timedelta(minutes=20)) is True  # after the take

    # A request older than stale_after lost its message: replaced, enqueue again.
    assert store.request_sync(upn, "timer", now=T0 + timedelta(minutes=36)) is True
    req = store.take_sync_request(upn)
    assert req is not None
    assert req.requested_at == T0 + timedelta(minutes=36) and req.triggers == ["webhook", "timer"]
    assert not req.check_subscription
    assert store.request_sync("bob@contoso.test", "timer", now=T0) is True  # per user


def test_request_sync_custom_stale_after(store: StateStore) -> None:
    assert store.request_sync("ada@contoso.test", "timer", now=T0) is True
    assert store.request_sync("ada@contoso.test", "timer", now=T0 + timedelta(seconds=61),
                              stale_after=timedelta(minutes=1)) is True
    assert store.request_sync("ada@contoso.test", "timer", now=T0 + timedelta(seconds=62),
                              stale_after=timedelta(minutes=1)) is False


def test_lease(store: StateStore) -> None:
    upn, ttl = "Ada@Contoso.test", timedelta(minutes=5)
    assert store.try_lease(upn, "A", ttl=ttl, now=T0) is True
    assert store.try_lease("ada@contoso.test", "B", ttl=ttl, now=T0 + timedelta(minutes=1)) is False
    assert store.try_lease(upn, "A", ttl=ttl, now=T0 + timedelta(minutes=2)) is True  # renewed to 0:07
    assert store.try_lease(upn, "B", ttl=ttl, now=T0 + timedelta(minutes=6)) is False
    assert store.try_lease("bob@contoso.test", "B", ttl=ttl, now=T0) is True  # per user
    store.release_lease(upn, "B")  # not B's: no effect
    assert store.try_lease(upn, "C", ttl=ttl, now=T0 + timedelta(minutes=6)) is False
    store.release_lease(upn, "A")
    assert store.try_lease(upn, "B", ttl=ttl, now=T0 + timedelta(minutes=6)) is True

    # B's lease expires (0:11); A takes it over; B's late release must not free A's lease.
    assert store.try_lease(upn, "A", ttl=ttl, now=T0 + timedelta(minutes=12)) is True
    store.release_lease(upn, "B")
    assert store.try_lease(upn, "C", ttl=ttl, now=T0 + timedelta(minutes=13)) is False
    store.release_lease(upn, "A")
    assert store.try_lease(upn, "C", ttl=ttl, now=T0 + timedelta(minutes=13)) is True


def test_concurrent_request_sync_enqueues_once(store: StateStore, open_store: Opener) -> None:
    n = 12
    stores = [open_store() for _ in range(n)]  # separate connections / clients
    results = _run_at_once(n, stores, lambda i, s: s.request_sync("ada@contoso.test", f"webhook-{i}", now=T0))
    assert results.count(True) == 1 and results.count(False) == n - 1
    req = store.take_sync_request("ada@contoso.test")
    assert req is not None and sorted(req.triggers) == sorted(f"webhook-{i}" for i in range(n))  # none lost
    assert store.take_sync_request("ada@contoso.test") is None


def test_concurrent_try_lease_has_one_winner(store: StateStore, open_store: Opener) -> None:
    n = 12
    stores = [open_store() for _ in range(n)]
    ttl = timedelta(minutes=5)
    # Rounds: free leases of fresh users (insert race), then an expired lease (update race).
    rounds = [("ada@contoso.test", T0), ("bob@contoso.test", T0), ("carol@contoso.test", T0),
              ("ada@contoso.test", T0 + timedelta(minutes=6))]
    for upn, now in rounds:
        def take(i: int, s: StateStore, upn: str = upn, now: datetime = now) -> bool:
            return s.try_lease(upn, f"worker-{i}", ttl=ttl, now=now)

        results = _run_at_once(n, stores, take)
        assert results.count(True) == 1, (upn, now, results)
        winner = f"worker-{results.index(True)}"
        assert store.try_lease(upn, winner, ttl=ttl, now=now) is True
        assert store.try_lease(upn, "late", ttl=ttl, now=now) is False

    # Concurrent take of one request: exactly one worker gets it.
    assert store.request_sync("ada@contoso.test", "timer", now=T0) is True
    taken = _run_at_once(n, stores, lambda i, s: s.take_sync_request("ada@contoso.test"))
    assert sum(r is not None for r in taken) == 1


# --- Azure Table Storage specifics (raw entities on Azurite) -----------------------------

@pytest.fixture
def tables(azurite: AzuriteServer) -> Iterator[tuple[TableStateStore, TableServiceClient]]:
    prefix = _prefix()
    store = TableStateStore.from_connection_string(azurite.connection_string, table_prefix=prefix)
    service = TableServiceClient.from_connection_string(azurite.connection_string)
    yield store, service
    store.close()
    service.close()


def _raw(service: TableServiceClient, store: TableStateStore, kind: str) -> list[dict[str, Any]]:
    return list(service.get_table_client(store.table_name(kind)).list_entities())


def test_table_layout_partitions_per_user_and_per_pairing(tables: tuple[TableStateStore, TableServiceClient]) -> None:
    store, service = tables
    upn, pid = "O'Brien/Ada@Contoso.test", "pair/1"
    store.save_user(UserRecord(upn, "https://dav/", "ada"))
    store.save_pairing(Pairing(pid, upn, None, "https://dav/cal/"))
    store.save_link(ItemLink(pid, "uid#1"))
    store.save_cursor(pid, "m365", "https://graph/delta")
    store.save_pending(PendingItem(pid, "caldav", "/c/1.ics", "r"))
    store.save_status(RunStatus(pid, upn, T0))
    store.save_subscription(Subscription("sub-1", upn, "/users/x/events", T0))
    assert store.request_sync(upn, "timer", now=T0)
    assert store.try_lease(upn, "A", ttl=timedelta(minutes=5), now=T0)
    store.append_audit([_entry(upn, T0, pairing_id=pid)])

    ukey, pkey = user_key(upn), escape_key(pid)
    assert ukey == "o~27brien~2Fada@contoso.test" and pkey == "pair~2F1"
    assert unescape_key(ukey) == upn.casefold()

    def keys(kind: str) -> list[tuple[str, str]]:
        return [(e["PartitionKey"], e["RowKey"]) for e in _raw(service, store, kind)]

    assert keys("users") == [(ukey, "user")]
    (user,) = _raw(service, store, "users")
    assert user["enabled"] is True and user["upn"] == upn.casefold() and '"upn": "O\'Brien/Ada' in user["data"]
    assert keys("pairings") == [(ukey, pkey)]
    assert sorted(keys("coordination")) == [(ukey, "lease"), (ukey, "sync-request")]
    assert [pk for pk, _ in keys("links")] == [pkey]
    assert keys("cursors") == [(pkey, "m365")]
    assert keys("pending") == [(pkey, "caldav|~2Fc~2F1.ics")]
    assert keys("status") == [(pkey, "status")]
    ((audit_pk, audit_rk),) = keys("audit")
    assert audit_pk == "20261124~" + ukey and audit_rk.startswith("20261124T080000.000000Z~")
    (sub,) = _raw(service, store, "subscriptions")
    assert (sub["PartitionKey"], sub["RowKey"], sub["upn"]) == ("sub-1", "subscription", upn.casefold())
    names = {t.name for t in service.list_tables()}
    assert {store.table_name(k) for k in KINDS} <= names


def test_keys_hold_no_forbidden_character(tables: tuple[TableStateStore, TableServiceClient]) -> None:
    store, service = tables
    long_id = "/c/" + NASTY * 150
    for value in (NASTY, long_id, "%7E~7E", "x" * 2000, "😀" * 600):
        key = escape_key(value)
        assert not FORBIDDEN & set(key)
        assert len(key.encode("utf-16-le")) <= 1024
    for value in (NASTY, "%7E~7E", "~~", "|", ""):
        assert unescape_key(escape_key(value)) == value
    assert escape_key("x" * 2000) != escape_key("x" * 2001)  # hashed, still unique
    with pytest.raises(ValueError):
        unescape_key(escape_key("x" * 2000))

    upn = NASTY + "@contoso.test"
    store.save_user(UserRecord(upn, "https://dav/", "u"))
    store.save_pairing(Pairing(NASTY, upn, None, "https://dav/"))
    store.save_link(ItemLink(NASTY, NASTY))
    store.save_cursor(NASTY, NASTY, "c")
    store.save_pending(PendingItem(NASTY, "caldav", long_id, "r"))
    store.save_pending(PendingItem(NASTY, NASTY, NASTY, "r"))
    store.save_status(RunStatus(NASTY, upn, T0))
    store.save_subscription(Subscription(NASTY, upn, "/r", T0))
    assert store.request_sync(upn, NASTY, now=T0)
    assert store.try_lease(upn, NASTY, ttl=timedelta(minutes=1), now=T0)
    store.append_audit([_entry(upn, T0, pairing_id=NASTY, item_id=NASTY)])

    rows = [e for kind in KINDS for e in _raw(service, store, kind)]
    assert len(rows) == 11
    for e in rows:
        for key in (e["PartitionKey"], e["RowKey"]):
            assert not FORBIDDEN & set(key), key
            assert len(key.encode("utf-16-le")) <= 1024
    assert {(p.side, p.item_id) for p in store.pending(NASTY)} == {("caldav", long_id), (NASTY, NASTY)}
    assert store.cursors(NASTY).get(NASTY) == "c"
    assert store.get_subscription(NASTY) is not None and store.list_pairings(upn)[0].pairing_id == NASTY
    assert [e.item_id for e in store.audit(upn, T0, T0 + timedelta(seconds=1))] == [NASTY]


def test_transactions_stay_within_100_operations(tables: tuple[TableStateStore, TableServiceClient],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    store, _ = tables
    sizes: list[tuple[int, set[str]]] = []
    real = TableClient.submit_transaction

    def spy(self: TableClient, operations: Any, **kwargs: Any) -> Any:
        ops = list(operations)
        sizes.append((len(ops), {op[1]["PartitionKey"] for op in ops}))
        return real(self, ops, **kwargs)

    monkeypatch.setattr(TableClient, "submit_transaction", spy)
    store.save_links([ItemLink("p1", f"u{i}") for i in range(250)] + [ItemLink("p2", f"u{i}") for i in range(30)])
    assert sorted(n for n, _ in sizes) == [30, 50, 100, 100]
    assert all(len(pks) == 1 for _, pks in sizes)  # one partition per transaction
    for i in range(150):
        store.save_pending(PendingItem("p1", "m365", f"i{i}", "r"))
    sizes.clear()
    store.clear_pending("p1", "m365", [f"i{i}" for i in range(150)] + ["never"])
    assert sorted(n for n, _ in sizes) == [50, 100]
    assert store.pending("p1") == []


def test_queries_page_past_a_thousand(tables: tuple[TableStateStore, TableServiceClient]) -> None:
    store, service = tables
    store.save_links([ItemLink("p1", f"u{i}") for i in range(1100)])
    client = service.get_table_client(store.table_name("links"))
    pages = [list(page) for page in client.query_entities("PartitionKey eq 'p1'").by_page()]
    assert len(pages) >= 2 and max(len(p) for p in pages) <= 1000  # the service really pages
    assert len(store.links("p1")) == 1100


def test_oversized_record_raises_typed_error_without_data(tables: tuple[TableStateStore, TableServiceClient]) -> None:
    store, _ = tables
    secretish = "NOTICE-TEXT-" + "z" * 30_000
    st = RunStatus("p1", "ada@contoso.test", T0, notices=[secretish] * 40)  # ~1.2M characters
    with pytest.raises(StateTooLarge) as info:
        store.save_status(st)
    assert "NOTICE-TEXT" not in str(info.value) and "1 MiB" in str(info.value)
    assert store.get_status("p1") is None


def test_open_state_urls(azurite: AzuriteServer, tmp_path: Path) -> None:
    sqlite = open_state(f"sqlite:///{tmp_path / 's.db'}", table_prefix="ignored")
    assert isinstance(sqlite, SQLiteStateStore)
    sqlite.close()

    prefix = _prefix()
    store = open_state("azuretables:" + azurite.connection_string, table_prefix=prefix)
    assert isinstance(store, TableStateStore) and store.table_name("users") == prefix + "users"
    store.save_user(UserRecord("ada@contoso.test", "https://dav/", "ada"))
    again = TableStateStore.from_connection_string(azurite.connection_string, table_prefix=prefix)
    assert again.get_user("ADA@contoso.test") is not None
    store.close()
    again.close()

    ident = open_state("azuretables:https://acct.table.core.windows.net", table_prefix=prefix)
    assert isinstance(ident, TableStateStore)  # DefaultAzureCredential; no request made yet
    ident.close()
    with pytest.raises(ValueError) as info:
        open_state("azuretables:AccountKey=c2VjcmV0")
    assert "c2VjcmV0" not in str(info.value)
    with pytest.raises(ValueError):
        TableStateStore.from_connection_string(azurite.connection_string, table_prefix="bad-prefix")


class _Spy:
    """Records the transactions and queries a TableClient makes (still performing them)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.transactions: list[list[tuple[str, str, str]]] = []  # (op, PartitionKey, RowKey)
        self.queries: list[tuple[str, dict[str, Any]]] = []  # (filter with parameters, kwargs)
        real_submit, real_query = TableClient.submit_transaction, TableClient.query_entities
        real_list = TableClient.list_entities
        spy = self

        def submit(self: TableClient, operations: Any, **kwargs: Any) -> Any:
            ops = list(operations)
            spy.transactions.append([(op[0], op[1]["PartitionKey"], op[1]["RowKey"]) for op in ops])
            return real_submit(self, ops, **kwargs)

        def query(self: TableClient, query_filter: str, **kwargs: Any) -> Any:
            text = query_filter
            for name, value in (kwargs.get("parameters") or {}).items():
                text = text.replace(f"@{name}", f"'{value}'")
            spy.queries.append((text, kwargs))
            return real_query(self, query_filter, **kwargs)

        def list_all(self: TableClient, **kwargs: Any) -> Any:
            spy.queries.append(("<all>", kwargs))
            return real_list(self, **kwargs)

        monkeypatch.setattr(TableClient, "submit_transaction", submit)
        monkeypatch.setattr(TableClient, "query_entities", query)
        monkeypatch.setattr(TableClient, "list_entities", list_all)

    def clear(self) -> None:
        self.transactions.clear()
        self.queries.clear()


def test_audit_partitions_per_day_and_user(tables: tuple[TableStateStore, TableServiceClient],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    store, service = tables
    upn = "O'Brien/Ada@Contoso.test"
    day = _midnight(utcnow()) - timedelta(days=2)
    plus2 = timezone(timedelta(hours=2))
    entries = [_entry(upn, day + timedelta(hours=3, seconds=i, microseconds=7)) for i in range(250)]
    entries.append(_entry(upn, (day + timedelta(days=1, hours=1)).astimezone(plus2)))  # stored by its UTC day
    entries += [_entry("bob@contoso.test", day + timedelta(hours=5, seconds=i)) for i in range(30)]
    spy = _Spy(monkeypatch)
    store.append_audit(entries)
    sizes = sorted(len(t) for t in spy.transactions)
    assert sizes == [1, 30, 50, 100, 100]  # <= 100 per transaction, one partition each
    assert all(len({pk for _, pk, _ in t}) == 1 for t in spy.transactions)

    rows = _raw(service, store, "audit")
    ada_day, ada_next = day.strftime("%Y%m%d"), (day + timedelta(days=1)).strftime("%Y%m%d")
    assert {e["PartitionKey"] for e in rows} == {
        f"{ada_day}~o~27brien~2Fada@contoso.test", f"{ada_next}~o~27brien~2Fada@contoso.test",
        f"{ada_day}~bob@contoso.test"}
    assert audit_partition(day.date(), upn) == f"{ada_day}~{user_key(upn)}"
    first = next(e for e in rows if e["RowKey"].startswith(time_key(entries[0].at)))
    assert first["RowKey"].startswith(ada_day + "T030000.000007Z~") and len(first["RowKey"]) == 23 + 1 + 8
    assert first["upn"] == upn.casefold() and '"trigger": "timer"' in first["data"]
    assert len({e["RowKey"] for e in rows}) == len(rows) == 281  # unique, also within one second

    # A user's range is one partition query per day (a single-entity probe finds the first
    # stored day), never a scan.
    spy.clear()
    back = store.audit(upn, day - timedelta(days=10), day + timedelta(days=1, hours=2))
    assert back == entries[:251]
    probe, *per_day = spy.queries
    assert probe[0] == f"PartitionKey ge '{(day - timedelta(days=10)).strftime('%Y%m%d')}'"
    assert probe[1]["results_per_page"] == 1 and probe[1]["select"] == ["PartitionKey"]
    assert [q for q, _ in per_day] == [
        f"PartitionKey eq '{ada_day}~{user_key(upn)}'",
        f"PartitionKey eq '{ada_next}~{user_key(upn)}' and RowKey lt '{time_key(day + timedelta(days=1, hours=2))}'"]
    spy.clear()
    assert store.audit(upn, entries[10].at, entries[12].at) == entries[10:12]
    assert [q for q, _ in spy.queries][1:] == [
        f"PartitionKey eq '{ada_day}~{user_key(upn)}' and RowKey ge '{time_key(entries[10].at)}' "
        f"and RowKey lt '{time_key(entries[12].at)}'"]


def test_purge_deletes_whole_old_partitions(tables: tuple[TableStateStore, TableServiceClient],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    store, service = tables
    now = utcnow()
    cutoff = now - AUDIT_RETENTION
    old_days = [_midnight(cutoff) - timedelta(days=d) for d in (1, 2, 5)]
    entries = [_entry(upn, d + timedelta(hours=h)) for d in old_days for h in (1, 23)
               for upn in ("ada@contoso.test", "bob@contoso.test")]
    # One partition of more than a query page (1,000): deleted page by page while paging on.
    entries += [_entry("carol@contoso.test", old_days[0] + timedelta(seconds=i)) for i in range(1150)]
    entries += [_entry("ada@contoso.test", cutoff - timedelta(microseconds=1)),  # cutoff day, older: goes
                _entry("ada@contoso.test", cutoff), _entry("bob@contoso.test", now)]
    store.append_audit(entries)
    spy = _Spy(monkeypatch)

    assert store.purge_audit(cutoff) == 12 + 1150 + 1
    (whole, *rest) = spy.queries
    assert whole == (f"PartitionKey lt '{cutoff.strftime('%Y%m%d')}'", {
        "parameters": {"day": cutoff.strftime("%Y%m%d")}, "select": ["PartitionKey", "RowKey"]})
    assert len(rest) == 1 and f"RowKey lt '{time_key(cutoff)}'" in rest[0][0]  # the cutoff day's rows
    assert all(op == "delete" for t in spy.transactions for op, _, _ in t)
    assert all(len(t) <= 100 and len({pk for _, pk, _ in t}) == 1 for t in spy.transactions)
    deleted_pks = {pk for t in spy.transactions for _, pk, _ in t}
    assert {pk[:8] for pk in deleted_pks} == {d.strftime("%Y%m%d") for d in old_days} | {cutoff.strftime("%Y%m%d")}
    left = _raw(service, store, "audit")
    assert sorted(e["RowKey"][:23] for e in left) == [time_key(cutoff), time_key(now)]
    assert all(e["PartitionKey"][:8] >= cutoff.strftime("%Y%m%d") for e in left)

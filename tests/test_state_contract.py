"""One StateStore contract, run against every backend: SQLite and Azure Table Storage (Azurite).

The ``store`` fixture is parametrized over the backends; ``open_store()`` opens another,
independent store object on the same state (another SQLite connection to the file, or
another Table service client), which is how the concurrency tests stand in for separate
processes. The Azurite-only tests at the end read the raw entities to check the documented
layout and key escaping of ``sync_core/state/tables.py``.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.data.tables import TableClient, TableServiceClient

from devtools.servers import AzuriteServer
from sync_core.state import StateStore, open_state
from sync_core.state.base import (
    ConflictPolicy,
    Direction,
    ItemLink,
    Pairing,
    PendingItem,
    RunStatus,
    Subscription,
    UserRecord,
)
from sync_core.state.sqlite import SQLiteStateStore
from sync_core.state.tables import KINDS, StateTooLarge, TableStateStore, escape_key, unescape_key, user_key

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
    assert store.get_cursor("p/1", "m365") is None
    store.save_cursor("p/1", "m365", delta)
    store.save_cursor("p/1", "caldav", "http://radicale.org/ns/sync/42")
    assert store.get_cursor("p/1", "m365") == delta
    assert store.get_cursor("p/1", "caldav") == "http://radicale.org/ns/sync/42"
    assert store.get_cursor("p/2", "m365") is None
    store.save_cursor("p/1", "m365", None)  # reset: full resync next run
    assert store.get_cursor("p/1", "m365") is None
    assert store.get_cursor("p/1", "caldav") == "http://radicale.org/ns/sync/42"


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

    rows = [e for kind in KINDS for e in _raw(service, store, kind)]
    assert len(rows) == 10
    for e in rows:
        for key in (e["PartitionKey"], e["RowKey"]):
            assert not FORBIDDEN & set(key), key
            assert len(key.encode("utf-16-le")) <= 1024
    assert {(p.side, p.item_id) for p in store.pending(NASTY)} == {("caldav", long_id), (NASTY, NASTY)}
    assert store.get_cursor(NASTY, NASTY) == "c"
    assert store.get_subscription(NASTY) is not None and store.list_pairings(upn)[0].pairing_id == NASTY


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

"""Embedded state backend: one SQLite file, one table per record kind.

Every record is stored as JSON beside its key columns, the same shape the Table Storage
backend stores, so both backends share ``records.py``. WAL mode; each save is its own
transaction, so a crash between two item writes keeps every earlier item's state.

Several processes may share the file (e.g. the CLI beside a running worker): the sync
request and lease rows are read-modified-written inside ``BEGIN IMMEDIATE`` transactions,
which take SQLite's write lock before the read, so two processes never both see the row
free (SQLite "Locking And Concurrency": a RESERVED lock admits one writer at a time).
Within one process the store's lock serialises the shared connection.

Audit rows keep ``at`` as fixed-width UTC text (``records.time_key``), so the ``(upn, at)``
index answers a user's time range and the ``at`` index the purge by age.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

from sync_core.state.base import (
    AuditEntry,
    ItemLink,
    Pairing,
    PendingItem,
    RunStatus,
    Subscription,
    SyncRequest,
    UserRecord,
    link_id_for,
    utcnow,
)
from sync_core.state.records import LeaseRecord, dumps, lease_takeable, loads, merge_sync_request, time_key

_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (upn TEXT PRIMARY KEY, enabled INTEGER NOT NULL, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pairings (pairing_id TEXT PRIMARY KEY, upn TEXT NOT NULL, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS pairings_upn ON pairings(upn);
CREATE TABLE IF NOT EXISTS links (pairing_id TEXT NOT NULL, link_id TEXT NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (pairing_id, link_id));
CREATE TABLE IF NOT EXISTS cursors (pairing_id TEXT NOT NULL, side TEXT NOT NULL, cursor TEXT,
    PRIMARY KEY (pairing_id, side));
CREATE TABLE IF NOT EXISTS pending (pairing_id TEXT NOT NULL, side TEXT NOT NULL, item_id TEXT NOT NULL,
    data TEXT NOT NULL, PRIMARY KEY (pairing_id, side, item_id));
CREATE TABLE IF NOT EXISTS status (pairing_id TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS subscriptions (subscription_id TEXT PRIMARY KEY, upn TEXT NOT NULL,
    data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS subscriptions_upn ON subscriptions(upn);
CREATE TABLE IF NOT EXISTS sync_requests (upn TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS leases (upn TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS audit (upn TEXT NOT NULL, at TEXT NOT NULL, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS audit_upn_at ON audit(upn, at);
CREATE INDEX IF NOT EXISTS audit_at ON audit(at);
"""

#: How long a statement waits for another process's write lock before "database is locked".
BUSY_TIMEOUT_SECONDS = 30.0


class SQLiteStateStore:
    """:class:`~sync_core.state.base.StateStore` on a local SQLite file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None,
                                   timeout=BUSY_TIMEOUT_SECONDS)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def _exec(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    @contextmanager
    def _write_tx(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction: the write lock is held from the first read,
        so a read-modify-write is atomic across every connection to the file."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # users
    def save_user(self, user: UserRecord) -> None:
        self._exec("INSERT OR REPLACE INTO users VALUES (?, ?, ?)",
                   (user.upn.casefold(), int(user.enabled), dumps(user)))

    def get_user(self, upn: str) -> UserRecord | None:
        rows = self._exec("SELECT data FROM users WHERE upn = ?", (upn.casefold(),))
        return loads(UserRecord, str(rows[0][0])) if rows else None

    def list_users(self, *, enabled_only: bool = False) -> list[UserRecord]:
        sql = "SELECT data FROM users" + (" WHERE enabled = 1" if enabled_only else "") + " ORDER BY upn"
        return [loads(UserRecord, str(r[0])) for r in self._exec(sql)]

    # pairings
    def save_pairing(self, pairing: Pairing) -> None:
        self._exec("INSERT OR REPLACE INTO pairings VALUES (?, ?, ?)",
                   (pairing.pairing_id, pairing.upn.casefold(), dumps(pairing)))

    def list_pairings(self, upn: str) -> list[Pairing]:
        rows = self._exec("SELECT data FROM pairings WHERE upn = ? ORDER BY pairing_id", (upn.casefold(),))
        return [loads(Pairing, str(r[0])) for r in rows]

    # links
    def links(self, pairing_id: str) -> list[ItemLink]:
        rows = self._exec("SELECT data FROM links WHERE pairing_id = ?", (pairing_id,))
        return [loads(ItemLink, str(r[0])) for r in rows]

    def save_link(self, link: ItemLink) -> None:
        self._exec("INSERT OR REPLACE INTO links VALUES (?, ?, ?)",
                   (link.pairing_id, link.link_id, dumps(link)))

    def save_links(self, links: Sequence[ItemLink]) -> None:
        """All links in one transaction: either every row is written or none."""
        rows = [(link.pairing_id, link.link_id, dumps(link)) for link in links]
        if not rows:
            return
        with self._write_tx() as db:
            db.executemany("INSERT OR REPLACE INTO links VALUES (?, ?, ?)", rows)

    def delete_link(self, pairing_id: str, uid: str) -> None:
        self._exec("DELETE FROM links WHERE pairing_id = ? AND link_id = ?", (pairing_id, link_id_for(uid)))

    def delete_pairing(self, pairing: Pairing) -> None:
        """The pairing row, its links, cursors, pending rows and status in one transaction."""
        pid = (pairing.pairing_id,)
        with self._write_tx() as db:
            for table in ("links", "cursors", "pending", "status", "pairings"):
                db.execute(f"DELETE FROM {table} WHERE pairing_id = ?", pid)

    # cursors
    def cursors(self, pairing_id: str) -> dict[str, str]:
        rows = self._exec("SELECT side, cursor FROM cursors WHERE pairing_id = ?", (pairing_id,))
        return {str(side): str(cursor) for side, cursor in rows if cursor is not None}

    def save_cursor(self, pairing_id: str, side: str, cursor: str | None) -> None:
        self._exec("INSERT OR REPLACE INTO cursors VALUES (?, ?, ?)", (pairing_id, side, cursor))

    # pending
    def pending(self, pairing_id: str) -> list[PendingItem]:
        rows = self._exec("SELECT data FROM pending WHERE pairing_id = ?", (pairing_id,))
        return [loads(PendingItem, str(r[0])) for r in rows]

    def save_pending(self, item: PendingItem) -> None:
        self._exec("INSERT OR REPLACE INTO pending VALUES (?, ?, ?, ?)",
                   (item.pairing_id, item.side, item.item_id, dumps(item)))

    def clear_pending(self, pairing_id: str, side: str, item_ids: Iterable[str]) -> None:
        rows = [(pairing_id, side, i) for i in item_ids]
        if not rows:
            return
        with self._write_tx() as db:
            db.executemany("DELETE FROM pending WHERE pairing_id = ? AND side = ? AND item_id = ?", rows)

    # status
    def save_status(self, status: RunStatus) -> None:
        self._exec("INSERT OR REPLACE INTO status VALUES (?, ?)", (status.pairing_id, dumps(status)))

    def get_status(self, pairing_id: str) -> RunStatus | None:
        rows = self._exec("SELECT data FROM status WHERE pairing_id = ?", (pairing_id,))
        return loads(RunStatus, str(rows[0][0])) if rows else None

    # audit
    def append_audit(self, entries: Sequence[AuditEntry]) -> None:
        """All rows in one transaction."""
        rows = [(e.upn.casefold(), time_key(e.at), dumps(e)) for e in entries]
        if not rows:
            return
        with self._write_tx() as db:
            db.executemany("INSERT INTO audit VALUES (?, ?, ?)", rows)

    def audit(self, upn: str, since: datetime, until: datetime) -> list[AuditEntry]:
        rows = self._exec("SELECT data FROM audit WHERE upn = ? AND at >= ? AND at < ? ORDER BY at, rowid",
                          (upn.casefold(), time_key(since), time_key(until)))
        return [loads(AuditEntry, str(r[0])) for r in rows]

    def purge_audit(self, older_than: datetime) -> int:
        with self._write_tx() as db:
            return db.execute("DELETE FROM audit WHERE at < ?", (time_key(older_than),)).rowcount

    # subscriptions
    def save_subscription(self, subscription: Subscription) -> None:
        self._exec("INSERT OR REPLACE INTO subscriptions VALUES (?, ?, ?)",
                   (subscription.subscription_id, subscription.upn.casefold(), dumps(subscription)))

    def get_subscription(self, subscription_id: str) -> Subscription | None:
        rows = self._exec("SELECT data FROM subscriptions WHERE subscription_id = ?", (subscription_id,))
        return loads(Subscription, str(rows[0][0])) if rows else None

    def list_subscriptions(self, upn: str | None = None) -> list[Subscription]:
        if upn is None:
            rows = self._exec("SELECT data FROM subscriptions ORDER BY subscription_id")
        else:
            rows = self._exec("SELECT data FROM subscriptions WHERE upn = ? ORDER BY subscription_id",
                              (upn.casefold(),))
        return [loads(Subscription, str(r[0])) for r in rows]

    def delete_subscription(self, subscription_id: str) -> None:
        self._exec("DELETE FROM subscriptions WHERE subscription_id = ?", (subscription_id,))

    # coordination
    def request_sync(self, upn: str, trigger: str, *, check_subscription: bool = False,
                     stale_after: timedelta = timedelta(minutes=15), now: datetime | None = None) -> bool:
        key = upn.casefold()
        with self._write_tx() as db:
            rows = db.execute("SELECT data FROM sync_requests WHERE upn = ?", (key,)).fetchall()
            existing = loads(SyncRequest, str(rows[0][0])) if rows else None
            request, enqueue = merge_sync_request(existing, upn, trigger, check_subscription=check_subscription,
                                                  now=now or utcnow(), stale_after=stale_after)
            if request != existing:
                db.execute("INSERT OR REPLACE INTO sync_requests VALUES (?, ?)", (key, dumps(request)))
        return enqueue

    def take_sync_request(self, upn: str) -> SyncRequest | None:
        key = upn.casefold()
        with self._write_tx() as db:
            rows = db.execute("SELECT data FROM sync_requests WHERE upn = ?", (key,)).fetchall()
            if not rows:
                return None
            db.execute("DELETE FROM sync_requests WHERE upn = ?", (key,))
        return loads(SyncRequest, str(rows[0][0]))

    def try_lease(self, upn: str, owner: str, *, ttl: timedelta, now: datetime | None = None) -> bool:
        key, now = upn.casefold(), now or utcnow()
        with self._write_tx() as db:
            rows = db.execute("SELECT data FROM leases WHERE upn = ?", (key,)).fetchall()
            lease = loads(LeaseRecord, str(rows[0][0])) if rows else None
            if not lease_takeable(lease, owner, now):
                return False
            db.execute("INSERT OR REPLACE INTO leases VALUES (?, ?)",
                       (key, dumps(LeaseRecord(upn, owner, now + ttl))))
        return True

    def release_lease(self, upn: str, owner: str) -> None:
        key = upn.casefold()
        with self._write_tx() as db:
            rows = db.execute("SELECT data FROM leases WHERE upn = ?", (key,)).fetchall()
            if rows and loads(LeaseRecord, str(rows[0][0])).owner == owner:
                db.execute("DELETE FROM leases WHERE upn = ?", (key,))

    def close(self) -> None:
        with self._lock:
            self._db.close()

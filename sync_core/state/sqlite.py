"""Embedded state backend: one SQLite file, one table per record kind.

Every record is stored as JSON beside its key columns, the same shape the Table Storage
backend stores, so both backends share ``records.py``. WAL mode; each save is its own
transaction, so a crash between two item writes keeps every earlier item's state.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path

from sync_core.state.base import ItemLink, Pairing, PendingItem, RunStatus, UserRecord, link_id_for
from sync_core.state.records import dumps, loads

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
"""


class SQLiteStateStore:
    """:class:`~sync_core.state.base.StateStore` on a local SQLite file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def _exec(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

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

    def delete_link(self, pairing_id: str, uid: str) -> None:
        self._exec("DELETE FROM links WHERE pairing_id = ? AND link_id = ?", (pairing_id, link_id_for(uid)))

    # cursors
    def get_cursor(self, pairing_id: str, side: str) -> str | None:
        rows = self._exec("SELECT cursor FROM cursors WHERE pairing_id = ? AND side = ?", (pairing_id, side))
        return str(rows[0][0]) if rows and rows[0][0] is not None else None

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
        with self._lock:
            self._db.executemany(
                "DELETE FROM pending WHERE pairing_id = ? AND side = ? AND item_id = ?",
                [(pairing_id, side, i) for i in item_ids],
            )

    # status
    def save_status(self, status: RunStatus) -> None:
        self._exec("INSERT OR REPLACE INTO status VALUES (?, ?)", (status.pairing_id, dumps(status)))

    def get_status(self, pairing_id: str) -> RunStatus | None:
        rows = self._exec("SELECT data FROM status WHERE pairing_id = ?", (pairing_id,))
        return loads(RunStatus, str(rows[0][0])) if rows else None

    def close(self) -> None:
        with self._lock:
            self._db.close()

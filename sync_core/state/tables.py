"""Azure Table Storage state backend: :class:`TableStateStore` on ``azure-data-tables``.

Entity layout (``{p}`` = ``table_prefix``, default ``davbridge``; *user* = the escaped
case-folded UPN; *pid* = the escaped pairing id)::

    table              PartitionKey      RowKey                    filter properties
    {p}users           user              "user"                    enabled (bool), upn
    {p}pairings        user              pairing id                upn
    {p}coordination    user              "lease" | "sync-request"  -
    {p}links           pid               link id (SHA-256 of UID)  -
    {p}cursors         pid               side                      -
    {p}pending         pid               side "|" item id          side
    {p}status          pid               "status"                  -
    {p}subscriptions   subscription id   "subscription"            upn (case-folded)
    {p}audit           day "~" user      time "~" random           upn (case-folded)

Every entity keeps its record as the same JSON the SQLite backend stores (``records.py``)
in the string property ``data``, continued in ``data1``, ``data2``, ... when longer than
one string property may be. Everything of one user (user row, pairings, lease, sync
request) shares a partition, and so does everything of one pairing (a pairing belongs to
exactly one user), so each read is a point lookup or a single-partition query and each
batch is one entity group transaction. A subscription is partitioned by its own id
because every Graph change notification looks it up by id alone.

Audit rows are partitioned by UTC day *and* user: PartitionKey ``yyyymmdd~<user>`` (the
escaped user key never holds a bare ``~``, and the day is fixed width), RowKey the row's
``at`` as fixed-width UTC text with microseconds (``records.time_key``) + ``~`` + 8 random
hex digits, so rows are unique and sort by time within the partition (rows of one
microsecond in no particular order). A user's time range is one partition query per day
(a RowKey range on the first and last day), never a scan: the days start at the first
stored partition on or after ``since`` (one single-entity probe) and run to tomorrow; days
beyond that (rows stamped ahead of this clock) are one key-range query, normally empty.
Aging out deletes whole day partitions found by ``PartitionKey lt '<day>'``, plus the
older rows of the cutoff day itself (a RowKey range over that day's partitions).

Table Storage rules implemented here (Microsoft Learn, "Understanding the Table service
data model", "Performing entity group transactions", "Query timeout and pagination"):

* Keys may not hold ``/ \\ # ?`` or control characters U+0000-U+001F / U+007F-U+009F and
  are at most 1 KiB: :func:`escape_key`.
* A string property holds at most 64 KiB (UTF-16), an entity at most 1 MiB and 255
  properties: :func:`_entity` splits ``data`` and raises :class:`StateTooLarge` beyond.
* A transaction is at most 100 operations on one partition, each entity at most once,
  payload at most 4 MiB: :meth:`TableStateStore._submit`.
* A query returns at most 1,000 entities per response plus a continuation token; the SDK
  pagers follow it, and nothing here caps them.
* Optimistic concurrency: an update or delete with ``If-Match: <etag>`` fails with 412 when
  the entity changed, an insert fails with 409 when it exists; the coordination rows
  (lease, sync request) are read-modified-written that way, so concurrent workers in any
  number of processes never both win. Both rows are normally absent (the worker deletes
  them), so they are inserted first and read only after a 409; the lease is released with
  the etag its insert returned. A steady-state sync costs 12 Table requests in all (see
  ``tests/test_runtime_e2e.py``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import re
import secrets
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from azure.core import MatchConditions
from azure.core.exceptions import (
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.data.tables import TableClient, TableEntity, TableServiceClient, TableTransactionError, UpdateMode

from sync_core.errors import DavbridgeError
from sync_core.http_sessions import azure_transport
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
from sync_core.state.records import (
    LeaseRecord,
    as_utc,
    dumps,
    lease_takeable,
    loads,
    merge_sync_request,
    time_key,
)

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

T = TypeVar("T")


class StateTooLarge(DavbridgeError):
    """A record does not fit in one Table Storage entity (1 MiB, 255 properties, 64 KiB per
    string property). The message names the record kind and sizes, never the data."""


class StateContention(DavbridgeError):
    """A coordination row kept changing under us past the retry budget (many concurrent
    writers); the caller may simply try again later."""


# --- keys ---------------------------------------------------------------------------------

#: Escape character: ``~XX`` (two upper-case hex digits) stands for the character U+00XX.
#: Not ``%``: the service double-decodes the URL path of point operations, so a ``%`` in a
#: key breaks Get/Update/Delete/Upsert Entity (Azure Storage blog, 2012-05-28, "PartitionKey
#: or RowKey containing the percent '%' character causes some Windows Azure Tables APIs to
#: fail"), and Azurite URI-decodes batch sub-request URLs. ``~`` is an RFC 3986 unreserved
#: character, so it reaches the service unencoded.
_ESC = "~"
#: Marks a key replaced by prefix + SHA-256; never produced by escaping (``~`` is always
#: followed by two hex digits there), so hashed and plain keys cannot collide.
_HASH_MARK = "~~"
#: Besides the forbidden characters: ``%`` (above), ``'`` (quoted as ``''`` in the OData
#: key literal of the URL; Azurite has mishandled it), ``|`` (our separator of compound
#: keys) and the escape character itself.
_EXTRA_ESCAPED = frozenset("/\\#?%'|~")
#: Keys are at most 1 KiB = 512 UTF-16 code units; longer escaped keys are hashed.
_MAX_KEY_UNITS = 500
_HASHED_PREFIX_UNITS = 400
_UNESCAPE = re.compile(r"~([0-9A-F]{2})")


def _must_escape(ch: str) -> bool:
    code = ord(ch)
    return ch in _EXTRA_ESCAPED or code <= 0x1F or 0x7F <= code <= 0x9F


def _escape_chars(value: str) -> str:
    return "".join(f"{_ESC}{ord(ch):02X}" if _must_escape(ch) else ch for ch in value)


def _utf16_units(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-16-le", "surrogatepass")) // 2


def _utf16_prefix(text: str, max_units: int) -> str:
    """The longest prefix of ``text`` of at most ``max_units`` UTF-16 code units."""
    if text.isascii():
        return text[:max_units]
    units = 0
    for i, ch in enumerate(text):
        units += 2 if ord(ch) > 0xFFFF else 1
        if units > max_units:
            return text[:i]
    return text


def _fit_key(escaped: str, original: str) -> str:
    if _utf16_units(escaped) <= _MAX_KEY_UNITS:
        return escaped
    digest = hashlib.sha256(original.encode("utf-8", "surrogatepass")).hexdigest()
    return _utf16_prefix(escaped, _HASHED_PREFIX_UNITS) + _HASH_MARK + digest


def escape_key(value: str) -> str:
    """``value`` as a legal PartitionKey / RowKey ("Characters disallowed in key fields").

    ``/ \\ # ?``, U+0000-U+001F, U+007F-U+009F, ``% ' |`` and ``~`` become ``~XX``; the
    result is reversible (:func:`unescape_key`). A result over 500 UTF-16 code units (the
    limit is 1 KiB = 512 units) becomes its first 400 units + ``~~`` + SHA-256 of ``value``:
    unique but not reversible, which is why every entity keeps the original in ``data``.
    """
    return _fit_key(_escape_chars(value), value)


def unescape_key(key: str) -> str:
    """The value :func:`escape_key` escaped; ValueError for a hashed (shortened) key."""
    if _HASH_MARK in key:
        raise ValueError("a hashed key cannot be reversed; read the value from the entity's data")
    return _UNESCAPE.sub(lambda m: chr(int(m.group(1), 16)), key)


def user_key(upn: str) -> str:
    """Partition of everything of one user: the escaped case-folded UPN."""
    return escape_key(upn.casefold())


def compound_key(*parts: str) -> str:
    """Parts escaped one by one and joined by ``|`` (always escaped inside a part, so the
    join is unambiguous); hashed like :func:`escape_key` when too long."""
    return _fit_key("|".join(_escape_chars(p) for p in parts), json.dumps(list(parts)))


def day_key(day: date) -> str:
    """``yyyymmdd``: the day part of an audit PartitionKey."""
    return f"{day.year:04d}{day.month:02d}{day.day:02d}"


def audit_partition(day: date, upn: str) -> str:
    """PartitionKey of one user's audit rows of one UTC day: ``yyyymmdd~<user key>``."""
    return day_key(day) + _ESC + user_key(upn)


def _parse_day(key: str) -> date:
    return date(int(key[:4]), int(key[4:6]), int(key[6:8]))


def _next_day(day: date) -> date | None:
    return day + timedelta(days=1) if day < date.max else None


def _day_after_key(day: date) -> str:
    """A key above every audit PartitionKey of ``day`` (and below the next day's)."""
    nxt = _next_day(day)
    return day_key(nxt) if nxt is not None else "99999999~~"


# --- entities -----------------------------------------------------------------------------

#: A string property holds at most 64 KiB = 32,768 UTF-16 code units; chunks stay below.
_MAX_STRING_UNITS = 32 * 1024
_CHUNK_UNITS = 32_000
#: "The combined size of all data in an entity can't exceed 1 MiB"; at most 255 properties
#: including the system properties PartitionKey, RowKey and Timestamp.
_MAX_ENTITY_BYTES = 1024 * 1024
_MAX_PROPERTIES = 255 - 3
#: "A change set [...] can include at most 100 entities, and its total payload may be no
#: more than 4 MiB": our estimate of a batch's payload stays well below.
_MAX_BATCH_OPERATIONS = 100
_MAX_BATCH_BYTES = 3 * 1024 * 1024
_BATCH_OP_OVERHEAD = 1024


def _split_units(text: str, size: int) -> list[str]:
    if text.isascii():
        return [text[i:i + size] for i in range(0, len(text), size)] or [""]
    parts: list[str] = []
    while text:
        head = _utf16_prefix(text, size)
        parts.append(head)
        text = text[len(head):]
    return parts or [""]


def _entity_size(entity: dict[str, Any]) -> int:
    """The entity's size as the service counts it ("Understanding the Table service data
    model", entity size): 4 + 2 per key code unit + per property 8 + 2 per name character +
    the value (string: 4 + 2 per code unit; bool: 1)."""
    size = 4 + 2 * (_utf16_units(entity["PartitionKey"]) + _utf16_units(entity["RowKey"]))
    for name, value in entity.items():
        if name in ("PartitionKey", "RowKey"):
            continue
        size += 8 + 2 * len(name)
        size += 4 + 2 * _utf16_units(value) if isinstance(value, str) else 8
    return size


def _entity(kind: str, pk: str, rk: str, data: str, **props: str | bool) -> dict[str, Any]:
    """One entity: keys, the filter ``props`` and ``data`` split into string properties
    ``data``, ``data1``, ... of at most 32,000 UTF-16 code units each."""
    entity: dict[str, Any] = {"PartitionKey": pk, "RowKey": rk}
    for name, value in props.items():
        if isinstance(value, str) and _utf16_units(value) > _MAX_STRING_UNITS:
            raise StateTooLarge(f"{kind}: property {name!r} exceeds the 64 KiB Table Storage string limit")
        entity[name] = value
    for i, chunk in enumerate(_split_units(data, _CHUNK_UNITS)):
        entity["data" if i == 0 else f"data{i}"] = chunk
    size = _entity_size(entity)
    if size > _MAX_ENTITY_BYTES or len(entity) - 2 > _MAX_PROPERTIES:
        raise StateTooLarge(f"{kind}: record of {size:,} bytes in {len(entity) - 2} properties exceeds the "
                            f"Table Storage entity limits (1 MiB, 255 properties)")
    return entity


def _data(entity: dict[str, Any]) -> str:
    parts = [str(entity["data"])]
    i = 1
    while f"data{i}" in entity:
        parts.append(str(entity[f"data{i}"]))
        i += 1
    return "".join(parts)


def _batch_size(entity: dict[str, Any]) -> int:
    return len(json.dumps(entity).encode()) + _BATCH_OP_OVERHEAD


def _batches(ops: list[tuple[str, dict[str, Any]]]) -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """``ops`` (one partition) cut into transactions of <= 100 operations and <= 3 MiB."""
    batch: list[tuple[str, dict[str, Any]]] = []
    size = 0
    for op in ops:
        op_size = _batch_size(op[1])
        if batch and (len(batch) >= _MAX_BATCH_OPERATIONS or size + op_size > _MAX_BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(op)
        size += op_size
    if batch:
        yield batch


def _lost_race(exc: HttpResponseError) -> bool:
    """409 on insert, 412 on a conditional update/delete, 404 when the row went away: another
    worker wrote first. Re-read and decide again."""
    return isinstance(exc, (ResourceExistsError, ResourceModifiedError, ResourceNotFoundError)) \
        or exc.status_code in (404, 409, 412)


# --- the store ----------------------------------------------------------------------------

KINDS = ("users", "pairings", "links", "cursors", "pending", "status", "subscriptions", "coordination", "audit")
#: The tables kept per pairing, all partitioned by the pairing id.
_PAIRING_KINDS = ("links", "cursors", "pending", "status")
_KEYS_ONLY = ["PartitionKey", "RowKey"]
#: Table names: 3-63 alphanumeric characters, starting with a letter.
_PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9]{0,49}")
_USER_ROW = "user"
_STATUS_ROW = "status"
_SUBSCRIPTION_ROW = "subscription"
_LEASE_ROW = "lease"
_SYNC_REQUEST_ROW = "sync-request"
#: Attempts of one coordination read-modify-write before StateContention.
RACE_ATTEMPTS = 30

#: Tables known to exist, per service URL: created at most once per process.
_created: set[tuple[str, str]] = set()
_created_lock = threading.Lock()


class TableStateStore:
    """:class:`~sync_core.state.base.StateStore` on Azure Table Storage (layout: module doc)."""

    def __init__(self, service: TableServiceClient, table_prefix: str = "davbridge") -> None:
        if not _PREFIX.fullmatch(table_prefix):
            raise ValueError("table_prefix must be 1-50 letters and digits, starting with a letter")
        self._service = service
        self.table_prefix = table_prefix
        self._clients: dict[str, TableClient] = {}
        self._clients_lock = threading.Lock()
        #: (user key, owner) -> etag of the lease row this store wrote (release: one request)
        self._lease_etags: dict[tuple[str, str], str] = {}
        self._lease_lock = threading.Lock()

    @classmethod
    def from_connection_string(cls, conn_str: str, table_prefix: str = "davbridge") -> TableStateStore:
        """Account key / SAS connection string, or ``UseDevelopmentStorage=true`` (Azurite)."""
        return cls(TableServiceClient.from_connection_string(conn_str, transport=azure_transport()), table_prefix)

    @classmethod
    def from_endpoint(cls, url: str, credential: TokenCredential | None = None,
                      table_prefix: str = "davbridge") -> TableStateStore:
        """``https://<account>.table.core.windows.net`` with an Entra ID credential (default:
        ``DefaultAzureCredential``, i.e. the managed identity inside Azure; the identity
        needs "Storage Table Data Contributor")."""
        if credential is None:
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential()
        return cls(TableServiceClient(endpoint=url, credential=credential, transport=azure_transport()), table_prefix)

    def table_name(self, kind: str) -> str:
        return self.table_prefix + kind

    def _table(self, kind: str) -> TableClient:
        client = self._clients.get(kind)
        if client is not None:
            return client
        with self._clients_lock:
            client = self._clients.get(kind)
            if client is None:
                name = self.table_name(kind)
                client = self._service.get_table_client(name)
                with _created_lock:
                    if (self._service.url, name) not in _created:
                        with contextlib.suppress(ResourceExistsError):  # another process made it
                            client.create_table()
                        _created.add((self._service.url, name))
                self._clients[kind] = client
            return client

    # primitives
    def _get(self, kind: str, pk: str, rk: str) -> TableEntity | None:
        try:
            return self._table(kind).get_entity(pk, rk)
        except ResourceNotFoundError:
            return None

    def _load(self, cls: type[T], kind: str, pk: str, rk: str) -> T | None:
        entity = self._get(kind, pk, rk)
        return loads(cls, _data(entity)) if entity is not None else None

    def _query(self, kind: str, query: str | None = None, **params: Any) -> Iterable[dict[str, Any]]:
        """Every matching entity; the pager follows continuation tokens past 1,000 rows."""
        table = self._table(kind)
        if query is None:
            return table.list_entities()
        return table.query_entities(query, parameters=params)

    def _partition(self, cls: type[T], kind: str, pk: str) -> list[T]:
        return [loads(cls, _data(e)) for e in self._query(kind, "PartitionKey eq @pk", pk=pk)]

    def _upsert(self, kind: str, entity: dict[str, Any]) -> None:
        self._table(kind).upsert_entity(entity, mode=UpdateMode.REPLACE)

    def _submit(self, kind: str, ops: Iterable[tuple[str, dict[str, Any]]]) -> None:
        """Upserts / deletes as entity group transactions: grouped by partition, each entity
        once (the last operation on it wins), <= 100 operations and <= 3 MiB each."""
        partitions: dict[str, dict[str, tuple[str, dict[str, Any]]]] = {}
        for op, entity in ops:
            partitions.setdefault(entity["PartitionKey"], {})[entity["RowKey"]] = (op, entity)
        table = self._table(kind)
        for rows in partitions.values():
            for batch in _batches(list(rows.values())):
                table.submit_transaction(
                    [("upsert", e, {"mode": UpdateMode.REPLACE}) if op == "upsert" else (op, e) for op, e in batch])

    def _keys(self, kind: str, query: str, **params: Any) -> Iterable[dict[str, Any]]:
        """PartitionKey and RowKey of every matching entity (nothing else is transferred)."""
        return self._table(kind).query_entities(query, parameters=params, select=_KEYS_ONLY)

    def _first_key(self, kind: str, query: str, **params: Any) -> str | None:
        """PartitionKey of the first matching entity (results come in key order): one entity
        read, however many match."""
        rows = self._table(kind).query_entities(query, parameters=params, select=["PartitionKey"],
                                                results_per_page=1)
        first = next(iter(rows), None)
        return str(first["PartitionKey"]) if first is not None else None

    def _delete_rows(self, kind: str, rows: Iterable[Mapping[str, Any]]) -> int:
        """Delete the rows with the keys of ``rows`` in transactions of <= 100 per partition,
        consuming ``rows`` as it goes (a query pager: memory stays one page; a continuation
        token points past the rows already returned, so deleting them does not disturb it).
        Returns how many rows this call deleted.

        A transaction fails as a whole on a missing entity: a row deleted concurrently makes
        that batch fall back to single deletes, which ignore 404 (and are not counted)."""
        table = self._table(kind)
        deleted = 0
        group: list[tuple[str, dict[str, Any]]] = []

        def flush() -> int:
            done = 0
            for batch in _batches(group):
                try:
                    table.submit_transaction(batch)
                    done += len(batch)
                except TableTransactionError as exc:
                    if exc.status_code != 404 and getattr(exc, "error_code", None) != "ResourceNotFound":
                        raise
                    done += sum(self._delete_one(kind, e["PartitionKey"], e["RowKey"]) for _, e in batch)
            group.clear()
            return done

        for row in rows:
            if group and (group[0][1]["PartitionKey"] != row["PartitionKey"] or len(group) >= _MAX_BATCH_OPERATIONS):
                deleted += flush()
            group.append(("delete", {"PartitionKey": row["PartitionKey"], "RowKey": row["RowKey"]}))
        return deleted + flush()

    def _delete_one(self, kind: str, pk: str, rk: str) -> bool:
        """Delete one row; False when it was already gone."""
        deleted: list[bool] = []
        # delete_entity swallows 404; the response callback runs only on 204 (deleted).
        self._table(kind).delete_entity(pk, rk, cls=lambda *_: deleted.append(True))
        return bool(deleted)

    def _attempts(self) -> Iterator[int]:
        for attempt in range(RACE_ATTEMPTS):
            if attempt:
                time.sleep(random.uniform(0, 0.01 * min(attempt, 8)))
            yield attempt

    def _write(self, kind: str, new: dict[str, Any], current: TableEntity | None) -> str | None:
        """Insert ``new`` if there was no row, else replace ``current`` only if unchanged
        (If-Match its etag). Returns the new row's etag ("" if the reply had none); None:
        another worker wrote first."""
        table = self._table(kind)
        try:
            if current is None:
                written = table.create_entity(new)
            else:
                written = table.update_entity(new, mode=UpdateMode.REPLACE, etag=current.metadata["etag"],
                                              match_condition=MatchConditions.IfNotModified)
        except HttpResponseError as exc:
            if _lost_race(exc):
                return None
            raise
        return str(written.get("etag") or "")

    def _delete_if_unchanged(self, kind: str, pk: str, rk: str, etag: str) -> bool | None:
        """Delete the row only if its etag is still ``etag``. True: we deleted it; None: it
        was already gone (404); False: it changed (412)."""
        deleted: list[bool] = []
        try:
            self._table(kind).delete_entity(
                pk, rk, etag=etag, match_condition=MatchConditions.IfNotModified,
                # delete_entity swallows 404; the response callback runs only on 204 (deleted).
                cls=lambda *_: deleted.append(True))
        except HttpResponseError as exc:
            if _lost_race(exc):
                return False
            raise
        return True if deleted else None

    def _delete_current(self, kind: str, current: TableEntity) -> bool | None:
        return self._delete_if_unchanged(kind, current["PartitionKey"], current["RowKey"],
                                         str(current.metadata["etag"]))

    # users
    def save_user(self, user: UserRecord) -> None:
        self._upsert("users", _entity("users", user_key(user.upn), _USER_ROW, dumps(user),
                                      enabled=user.enabled, upn=user.upn.casefold()))

    def get_user(self, upn: str) -> UserRecord | None:
        return self._load(UserRecord, "users", user_key(upn), _USER_ROW)

    def list_users(self, *, enabled_only: bool = False) -> list[UserRecord]:
        rows = self._query("users", "enabled eq @on", on=True) if enabled_only else self._query("users")
        return sorted((loads(UserRecord, _data(e)) for e in rows), key=lambda u: u.upn.casefold())

    # pairings
    def save_pairing(self, pairing: Pairing) -> None:
        self._upsert("pairings", _entity("pairings", user_key(pairing.upn), escape_key(pairing.pairing_id),
                                         dumps(pairing), upn=pairing.upn.casefold()))

    def list_pairings(self, upn: str) -> list[Pairing]:
        return sorted(self._partition(Pairing, "pairings", user_key(upn)), key=lambda p: p.pairing_id)

    # links
    def _link_entity(self, link: ItemLink) -> dict[str, Any]:
        return _entity("links", escape_key(link.pairing_id), escape_key(link.link_id), dumps(link))

    def links(self, pairing_id: str) -> list[ItemLink]:
        return self._partition(ItemLink, "links", escape_key(pairing_id))

    def save_link(self, link: ItemLink) -> None:
        self._upsert("links", self._link_entity(link))

    def save_links(self, links: Sequence[ItemLink]) -> None:
        self._submit("links", [("upsert", self._link_entity(link)) for link in links])

    def delete_link(self, pairing_id: str, uid: str) -> None:
        self._table("links").delete_entity(escape_key(pairing_id), escape_key(link_id_for(uid)))

    def delete_pairing(self, pairing: Pairing) -> None:
        """The pairing's partitions of links, cursors, pending and status (batched deletes),
        then the pairing row last: a crash half-way leaves the pairing listed, so deleting it
        again finishes the job (every step ignores what is already gone)."""
        pk = escape_key(pairing.pairing_id)
        for kind in _PAIRING_KINDS:
            self._delete_rows(kind, self._keys(kind, "PartitionKey eq @pk", pk=pk))
        self._table("pairings").delete_entity(user_key(pairing.upn), pk)

    # cursors
    def cursors(self, pairing_id: str) -> dict[str, str]:
        found: dict[str, str] = {}
        for entity in self._query("cursors", "PartitionKey eq @pk", pk=escape_key(pairing_id)):
            record = json.loads(_data(entity))
            if record.get("cursor") is not None:
                found[str(record["side"])] = str(record["cursor"])
        return found

    def save_cursor(self, pairing_id: str, side: str, cursor: str | None) -> None:
        data = json.dumps({"pairing_id": pairing_id, "side": side, "cursor": cursor}, sort_keys=True)
        self._upsert("cursors", _entity("cursors", escape_key(pairing_id), escape_key(side), data))

    # pending
    def pending(self, pairing_id: str) -> list[PendingItem]:
        return self._partition(PendingItem, "pending", escape_key(pairing_id))

    def save_pending(self, item: PendingItem) -> None:
        self._upsert("pending", _entity("pending", escape_key(item.pairing_id),
                                        compound_key(item.side, item.item_id), dumps(item), side=item.side))

    def clear_pending(self, pairing_id: str, side: str, item_ids: Iterable[str]) -> None:
        """Delete the rows of ``item_ids`` that exist (a transaction fails as a whole on a
        missing entity, so only present rows are batched; a row deleted concurrently makes
        that batch fall back to single deletes, which ignore 404)."""
        wanted = {compound_key(side, i) for i in item_ids}
        if not wanted:
            return
        present = self._keys("pending", "PartitionKey eq @pk and side eq @side", pk=escape_key(pairing_id), side=side)
        self._delete_rows("pending", [e for e in present if e["RowKey"] in wanted])

    # status
    def save_status(self, status: RunStatus) -> None:
        self._upsert("status", _entity("status", escape_key(status.pairing_id), _STATUS_ROW, dumps(status)))

    def get_status(self, pairing_id: str) -> RunStatus | None:
        return self._load(RunStatus, "status", escape_key(pairing_id), _STATUS_ROW)

    # audit
    def append_audit(self, entries: Sequence[AuditEntry]) -> None:
        """Transactions of <= 100 rows per (day, user) partition."""
        self._submit("audit", [("upsert", _entity(
            "audit", audit_partition(as_utc(e.at).date(), e.upn), time_key(e.at) + _ESC + secrets.token_hex(4),
            dumps(e), upn=e.upn.casefold())) for e in entries])

    def audit(self, upn: str, since: datetime, until: datetime) -> list[AuditEntry]:
        since, until = as_utc(since), as_utc(until)
        if since >= until:
            return []
        first, last = since.date(), (until - timedelta(microseconds=1)).date()
        lo, hi = time_key(since), time_key(until)
        stored = self._first_key("audit", "PartitionKey ge @pk", pk=day_key(first))
        if stored is None:
            return []
        day: date | None = max(first, _parse_day(stored))
        horizon = min(last, (utcnow() + timedelta(days=1)).date())
        entities: list[dict[str, Any]] = []
        while day is not None and day <= horizon:
            query, params = "PartitionKey eq @pk", {"pk": audit_partition(day, upn)}
            if day == first:
                query, params["lo"] = query + " and RowKey ge @lo", lo
            if day == last:
                query, params["hi"] = query + " and RowKey lt @hi", hi
            entities.extend(self._query("audit", query, **params))
            day = _next_day(day)
        if day is not None and day <= last:  # rows stamped ahead of this clock
            entities.extend(e for e in self._query(
                "audit", "PartitionKey ge @lo and PartitionKey lt @hi and upn eq @upn",
                lo=day_key(day), hi=_day_after_key(last), upn=upn.casefold())
                if lo <= e["RowKey"] < hi)
        entities.sort(key=lambda e: str(e["RowKey"]))  # RowKey starts with the time
        return [loads(AuditEntry, _data(e)) for e in entities]

    def purge_audit(self, older_than: datetime) -> int:
        """Whole partitions of the days before ``older_than``'s day, then the older rows of
        that day itself; returns how many rows this call deleted."""
        cutoff = as_utc(older_than)
        day = cutoff.date()
        purged = self._delete_rows("audit", self._keys("audit", "PartitionKey lt @day", day=day_key(day)))
        if cutoff.time() != datetime.min.time():
            purged += self._delete_rows("audit", self._keys(
                "audit", "PartitionKey gt @day and PartitionKey lt @next and RowKey lt @at",
                day=day_key(day), next=_day_after_key(day), at=time_key(cutoff)))
        return purged

    # subscriptions
    def save_subscription(self, subscription: Subscription) -> None:
        self._upsert("subscriptions", _entity("subscriptions", escape_key(subscription.subscription_id),
                                              _SUBSCRIPTION_ROW, dumps(subscription),
                                              upn=subscription.upn.casefold()))

    def get_subscription(self, subscription_id: str) -> Subscription | None:
        return self._load(Subscription, "subscriptions", escape_key(subscription_id), _SUBSCRIPTION_ROW)

    def list_subscriptions(self, upn: str | None = None) -> list[Subscription]:
        rows = self._query("subscriptions") if upn is None \
            else self._query("subscriptions", "upn eq @upn", upn=upn.casefold())
        return sorted((loads(Subscription, _data(e)) for e in rows), key=lambda s: s.subscription_id)

    def delete_subscription(self, subscription_id: str) -> None:
        self._table("subscriptions").delete_entity(escape_key(subscription_id), _SUBSCRIPTION_ROW)

    # coordination (etag optimistic concurrency; see the module docstring)
    def request_sync(self, upn: str, trigger: str, *, check_subscription: bool = False,
                     stale_after: timedelta = timedelta(minutes=15), now: datetime | None = None) -> bool:
        """Insert first: a user's request row is normally absent when the timer asks (the
        worker took it), so the common case is one insert; a 409 reads and merges."""
        now, pk = now or utcnow(), user_key(upn)
        current: TableEntity | None = None
        for attempt in self._attempts():
            if attempt:
                current = self._get("coordination", pk, _SYNC_REQUEST_ROW)
            existing = loads(SyncRequest, _data(current)) if current is not None else None
            request, enqueue = merge_sync_request(existing, upn, trigger, check_subscription=check_subscription,
                                                  now=now, stale_after=stale_after)
            if request == existing:
                return enqueue  # already recorded: nothing to write
            if self._write("coordination", _entity("coordination", pk, _SYNC_REQUEST_ROW, dumps(request)),
                           current) is not None:
                return enqueue
        raise StateContention(f"sync request of one user kept changing over {RACE_ATTEMPTS} attempts")

    def take_sync_request(self, upn: str) -> SyncRequest | None:
        pk = user_key(upn)
        for _ in self._attempts():
            current = self._get("coordination", pk, _SYNC_REQUEST_ROW)
            if current is None:
                return None
            outcome = self._delete_current("coordination", current)
            if outcome:
                return loads(SyncRequest, _data(current))
            # False: merged into meanwhile, take the newer one; None: taken by another worker,
            # look again (a new request may already be there).
        raise StateContention(f"sync request of one user kept changing over {RACE_ATTEMPTS} attempts")

    def try_lease(self, upn: str, owner: str, *, ttl: timedelta, now: datetime | None = None) -> bool:
        """Insert first (the row exists only while a sync holds the lease or after a crash):
        one request when the user is free; a 409 reads the row and takes it over only if
        it expired. The etag written is kept so :meth:`release_lease` is one request too."""
        now, pk = now or utcnow(), user_key(upn)
        new = _entity("coordination", pk, _LEASE_ROW, dumps(LeaseRecord(upn, owner, now + ttl)))
        current: TableEntity | None = None
        for attempt in self._attempts():
            if attempt:
                current = self._get("coordination", pk, _LEASE_ROW)
                lease = loads(LeaseRecord, _data(current)) if current is not None else None
                if not lease_takeable(lease, owner, now):
                    return False
            etag = self._write("coordination", new, current)
            if etag is not None:
                if etag:
                    with self._lease_lock:
                        self._lease_etags[(pk, owner)] = etag
                return True
        raise StateContention(f"lease of one user kept changing over {RACE_ATTEMPTS} attempts")

    def release_lease(self, upn: str, owner: str) -> None:
        pk = user_key(upn)
        with self._lease_lock:
            etag = self._lease_etags.pop((pk, owner), None)
        if etag is not None and self._delete_if_unchanged("coordination", pk, _LEASE_ROW, etag) is not False:
            return  # deleted, or already gone; changed (412): read it and look whose it is
        for _ in self._attempts():
            current = self._get("coordination", pk, _LEASE_ROW)
            if current is None or loads(LeaseRecord, _data(current)).owner != owner:
                return
            if self._delete_current("coordination", current) is not False:
                return
        raise StateContention(f"lease of one user kept changing over {RACE_ATTEMPTS} attempts")

    def close(self) -> None:
        with self._clients_lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()
        self._service.close()

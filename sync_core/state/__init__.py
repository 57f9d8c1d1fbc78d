"""State backends behind one interface (:class:`~sync_core.state.base.StateStore`)."""

from __future__ import annotations

from sync_core.state.base import StateStore

_TABLES = "azuretables:"


def open_state(url: str, *, table_prefix: str = "davbridge") -> StateStore:
    """Open the backend named by a state URL.

    * ``sqlite:///path/state.db`` -- the embedded SQLite file (default).
    * ``azuretables:https://<account>.table.core.windows.net`` -- Azure Table Storage with
      the Entra ID identity of ``DefaultAzureCredential`` (the managed identity in Azure).
    * ``azuretables:<connection string>`` -- Azure Table Storage (or Azurite) by connection
      string: anything holding ``AccountName=`` or ``UseDevelopmentStorage=``.

    ``table_prefix`` names the Table Storage tables (``<prefix>users`` ...); SQLite ignores it.
    """
    if url.startswith("sqlite:///"):
        from sync_core.state.sqlite import SQLiteStateStore

        return SQLiteStateStore(url[len("sqlite:///"):])
    if url.startswith(_TABLES):
        from sync_core.state.tables import TableStateStore

        target = url[len(_TABLES):].strip()
        lowered = target.lower()
        if "accountname=" in lowered or "usedevelopmentstorage=" in lowered:
            return TableStateStore.from_connection_string(target, table_prefix=table_prefix)
        if lowered.startswith(("https://", "http://")):
            return TableStateStore.from_endpoint(target, table_prefix=table_prefix)
        raise ValueError("azuretables: needs an https:// table endpoint or a connection string "
                         "(AccountName=... or UseDevelopmentStorage=true)")
    raise ValueError(f"unsupported state backend URL scheme: {url.split(':', 1)[0]!r}")

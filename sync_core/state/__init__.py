"""State backends behind one interface (:class:`~sync_core.state.base.StateStore`)."""

from __future__ import annotations

from sync_core.state.base import StateStore


def open_state(url: str) -> StateStore:
    """Open the backend named by a state URL: ``sqlite:///path/state.db`` (embedded default)."""
    if url.startswith("sqlite:///"):
        from sync_core.state.sqlite import SQLiteStateStore

        return SQLiteStateStore(url[len("sqlite:///"):])
    raise ValueError(f"unsupported state backend URL scheme: {url.split(':', 1)[0]!r}")

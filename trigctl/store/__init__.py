"""State: one interface (:class:`trigctl.store.base.Store`), SQLite behind it (PostgreSQL to follow)."""

from __future__ import annotations

from trigctl.store.base import StateError, StateLocked, Store


def open_store(location: str, *, readonly: bool = False) -> Store:
    """Open the state at a SQLite path (or a postgresql:// URL, once that store exists)."""
    if location.startswith(("postgresql://", "postgres://")):
        raise StateError("PostgreSQL state is not available in this version (use a SQLite path)")
    from trigctl.store.sqlite import SQLiteStore

    return SQLiteStore(location, readonly=readonly)


__all__ = ["StateError", "StateLocked", "Store", "open_store"]

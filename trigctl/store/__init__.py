"""State: one interface (:class:`trigctl.store.base.Store`), SQLite or PostgreSQL behind it."""

from __future__ import annotations

from trigctl.store.base import StateError, StateLocked, Store


def open_store(location: str, *, readonly: bool = False, lease_seconds: float | None = None) -> Store:
    """Open the state at a SQLite path or a postgresql:// URL (needs the extra trigctl[postgres])."""
    if location.startswith(("postgresql://", "postgres://")):
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise StateError("a postgresql:// state needs psycopg: install trigctl[postgres]") from None
        from trigctl.store.postgres import DEFAULT_LEASE, PostgresStore

        return PostgresStore(location, readonly=readonly, lease_seconds=lease_seconds or DEFAULT_LEASE)
    from trigctl.store.sqlite import SQLiteStore

    return SQLiteStore(location, readonly=readonly)


__all__ = ["StateError", "StateLocked", "Store", "open_store"]

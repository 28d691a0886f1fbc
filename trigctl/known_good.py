"""Which YAML files are known to pass `validate`, so that quick commands refuse a bad file without
paying the full check each time.

`trigctl run`, and every command that fully checked a file, saves in the state the summary that
`list` shows of it (:meth:`Store.save_config_snapshot`), keyed by the file's fingerprint (its bytes
and the environment variables it reads, :mod:`trigctl.snapshot`). A snapshot is saved only for a
config that passed the full check, so a matching one means "these bytes are valid": the file is
not parsed again. Any other file is checked fully, with the errors `validate` gives. With SQLite the
snapshot is also saved as rows that `list --json` is written from (docs/design.md).

What the fingerprint cannot see (a module a `python` trigger imports was deleted since) is found
by `validate` and `run`, which always check fully.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trigctl.config import Config
    from trigctl.store.base import Store


def snapshot_key(config_path: str) -> str:
    """The snapshot's key in the state: the file's resolved path."""
    return str(Path(config_path).resolve())


def _exists(location: str) -> bool:
    return "://" in location or Path(location).is_file()


def known_summaries(config_path: str, fingerprint: str | None, store: Store | None, location: str) -> list[dict[str, Any]] | None:
    """The saved summary of these bytes, if they were found valid before: from ``store``, else from
    the state at ``location`` when it exists (opened read-only, created by nobody)."""
    if fingerprint is None:
        return None
    reader = store
    if reader is None:
        if not _exists(location):
            return None
        from trigctl.api import open_state

        try:
            reader = open_state(location, readonly=True)
        except Exception:
            return None  # the command's own open of the state says what is wrong with it
    try:
        return reader.config_snapshot(snapshot_key(config_path), fingerprint)
    finally:
        if reader is not store:
            reader.close()


def remember(config: Config, fingerprint: str | None, store: Store | None, location: str) -> bool:
    """Save that ``config`` (fully checked) is valid, in ``store`` (a writer's) or, for a reader, in
    the state at ``location`` if it exists already (False if it does not). Best effort: a read-only
    state is fine."""
    if fingerprint is None:
        return True
    from trigctl.config import trigger_summaries

    writer = store
    try:
        if writer is None:
            if not _exists(location):
                return False
            from trigctl.api import open_state

            writer = open_state(location)
        writer.save_config_snapshot(str(config.path), fingerprint, trigger_summaries(config))
    except Exception:  # noqa: S110 - a cache: the command goes on without it
        pass
    finally:
        if writer is not None and writer is not store:
            writer.close()
    return True

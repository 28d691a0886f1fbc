"""The state interface every backend implements, and the records it hands out."""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

ACTIVE_STATUSES = ("queued", "running")
RUN_STATUSES = ("queued", "running", "succeeded", "failed", "interrupted", "cancelled")


class StateError(Exception):
    """The state cannot be opened or written (locked by another run, read-only, disk full...)."""


class StateLocked(StateError):
    pass


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def dedupe_hash(trigger_name: str, context: dict[str, Any], keys: tuple[str, ...] | None) -> str:
    """SHA-256 of the canonical JSON of the trigger name and the context (or its `keys` subset).

    ``keys=()`` is one fixed key per trigger (schedule triggers; an empty context gives the same).
    Lone surrogates (a file name that is not UTF-8, a ``"\\udcff"`` in a JSON body) hash as their
    surrogatepass bytes: every valid string hashes exactly as before, and no string can fail.
    """
    subset = context if keys is None else {k: context.get(k) for k in keys}
    return hashlib.sha256(canonical_json([trigger_name, subset]).encode("utf-8", "surrogatepass")).hexdigest()


def safe_text(value: str | None, limit: int | None = None) -> str | None:
    """Text that any UTF-8 sink accepts: lone surrogates become visible ``\\udcff`` escapes.

    For free text that is only read by people (errors, reasons, output tails), optionally cut to
    ``limit`` characters."""
    if value is None:
        return None
    if not isinstance(value, str):
        value = str(value)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "backslashreplace").decode("utf-8")
    if limit is not None and len(value) > limit:
        value = value[: limit - 3] + "..."
    return value


def exact_text(value: str) -> str | bytes:
    """A string to store byte-exact (a cursor, a file trigger's remembered path): itself if it is
    valid Unicode, else its surrogatepass UTF-8 bytes (read back with :func:`from_exact_text`)."""
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogatepass")


def from_exact_text(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogatepass")
    return value


@dataclass
class FireRequest:
    context: dict[str, Any]
    context_hash: str
    dedupe: str  # running | once | none
    max_attempts: int = 3
    rerun_of: int | None = None
    state: dict[str, Any] | None = None  # trigger state this fire consumes (PollOutcome.fire_state)


@dataclass
class FireResult:
    run_id: int | None  # the new run, or the run that blocked it
    suppressed: bool
    reason: str = ""
    #: suppressed because an active run holds the key with a *different* context (a `dedupe_key`
    #: subset): the trigger's state and cursor are not advanced past it, so it is offered again.
    deferred: bool = False


@dataclass(slots=True)
class PollStats:
    """In-memory counters of a trigger, flushed in batches (skips write no rows)."""

    name: str
    last_poll_at: float | None = None
    last_result: str | None = None
    next_poll_at: float | None = None
    polls: int = 0
    consecutive_errors: int = 0


@dataclass
class TriggerRow:
    name: str
    enabled: bool | None  # stored override, None = the YAML's value
    cursor: str | None
    next_poll_at: float | None
    last_poll_at: float | None
    last_result: str | None
    fires: int
    polls: int
    consecutive_errors: int
    error_alerted: bool
    last_error: str | None
    active_runs: int = 0


@dataclass
class RunRow:
    id: int
    trigger_name: str
    workflow: str
    status: str
    context: dict[str, Any]
    context_hash: str | None
    dedupe: str
    attempt: int
    rerun_of: int | None
    queued_at: float
    started_at: float | None
    completed_at: float | None
    error: str | None
    triggered_at: float
    tasks: list[dict[str, Any]] = field(default_factory=list)
    owner_pid: int | None = None  # the process that started it (None while queued)
    owner_start: str | None = None  # that process's kernel start time (PID-reuse guard)


class Store(ABC):
    """One owner of the state. All methods are thread-safe within a process."""

    # -- lifecycle
    @abstractmethod
    def close(self) -> None: ...

    # -- triggers
    @abstractmethod
    def sync_triggers(self, names: Iterable[str]) -> None: ...
    @abstractmethod
    def trigger_rows(self) -> dict[str, TriggerRow]: ...
    @abstractmethod
    def set_enabled(self, names: Iterable[str], enabled: bool) -> None: ...
    @abstractmethod
    def flush_stats(self, stats: Iterable[PollStats]) -> None: ...
    @abstractmethod
    def load_kv(self, trigger: str) -> dict[str, Any]: ...
    @abstractmethod
    def load_all_kv(self) -> dict[str, dict[str, Any]]: ...
    @abstractmethod
    def update_kv(self, trigger: str, updates: dict[str, Any]) -> None:
        """Set (or, with None, delete) keys of a trigger's persisted state, in one transaction."""

    def save_config_snapshot(self, config_path: str, fingerprint: str, triggers: list[dict[str, Any]]) -> None:  # noqa: B027
        """Remember what `list` shows of a YAML file (optional for a backend)."""

    def config_snapshot(self, config_path: str, fingerprint: str) -> list[dict[str, Any]] | None:
        return None
    @abstractmethod
    def lock_for_run(self) -> None:
        """Make this process the one that runs this state's loop, or raise StateLocked."""
    @abstractmethod
    def change_token(self) -> int:
        """A number that changes when another process commits (enable/disable/cancel)."""

    # -- polls
    @abstractmethod
    def record_fires(
        self, trigger: str, workflow: str, fires: list[FireRequest], stats: PollStats, now: float,
        cursor: str | None, state_updates: dict[str, Any],
    ) -> list[FireResult]: ...
    @abstractmethod
    def record_error(self, trigger: str, message: str, stats: PollStats, now: float) -> int: ...
    @abstractmethod
    def dedupe_status(self, trigger: str, key: str, dedupe: str) -> tuple[bool, str]: ...
    @abstractmethod
    def enqueue_run(self, trigger: str, workflow: str, context: dict[str, Any], now: float, *, rerun_of: int | None = None,
                    dedupe: str = "none", context_hash: str | None = None, max_attempts: int = 3) -> FireResult:
        """A run not started by a poll (an on_error alert, a rerun after a crash)."""
    @abstractmethod
    def set_error_alerted(self, trigger: str, alerted: bool) -> None: ...

    # -- runs
    @abstractmethod
    def claim_next_queued(self, now: float) -> RunRow | None: ...
    def claim_queued(self, now: float, limit: int) -> list[RunRow]:
        """Up to ``limit`` queued runs, oldest first, marked running (a backend may do it in one go)."""
        runs: list[RunRow] = []
        while len(runs) < limit:
            run = self.claim_next_queued(now)
            if run is None:
                break
            runs.append(run)
        return runs
    @abstractmethod
    def task_started(self, run_id: int, idx: int, name: str, now: float, pid: int | None, pgid: int | None,
                     proc_start: str | None) -> None: ...
    @abstractmethod
    def task_finished(self, run_id: int, idx: int, status: str, exit_code: int | None, now: float,
                      output_tail: str, attempts: int) -> None: ...
    @abstractmethod
    def finish_run(self, run_id: int, status: str, now: float, error: str | None = None,
                   only_if: str | None = None) -> bool: ...
    @abstractmethod
    def request_cancel(self, run_id: int, now: float) -> str | None: ...
    @abstractmethod
    def cancel_requested(self) -> set[int]: ...
    @abstractmethod
    def active_runs(self) -> list[RunRow]: ...

    # -- reading
    @abstractmethod
    def history(self, trigger: str | None, limit: int, statuses: list[str] | None, since: float | None) -> list[dict]: ...
    @abstractmethod
    def get_run(self, run_id: int) -> RunRow | None: ...
    @abstractmethod
    def prune(self, before: float) -> int: ...

"""The state interface every backend implements, and the records it hands out."""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

ACTIVE_STATUSES = ("queued", "running")
RUN_STATUSES = ("queued", "running", "succeeded", "failed", "interrupted", "cancelled")


class StateError(Exception):
    """The state cannot be opened or written (locked by another run, read-only, disk full...)."""


class StateLocked(StateError):
    """Another live process runs this state's loop (SQLite: one process per state)."""


class LeaseLost(StateError):
    """A write about a trigger this process no longer holds (its lease expired or moved): nothing
    was written. The loop stops polling that trigger."""


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
    """Text that any UTF-8 sink accepts: lone surrogates and NULs become visible escapes (``\\udcff``).

    For free text that is only read by people (errors, reasons, output tails), optionally cut to
    ``limit`` characters."""
    if value is None:
        return None
    if not isinstance(value, str):
        value = str(value)
    if limit is not None and len(value) > limit:  # cut first: a 50 MB message costs no more than a short one
        value = value[: limit - 3] + "..."
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "backslashreplace").decode("utf-8")
    if "\x00" in value:  # no environment variable or argument can carry a NUL (an alert's $TRIGCTL_ERROR)
        value = value.replace("\x00", "\\x00")
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
    last_reason: str | None = None  # why the last poll skipped (or its error's message)


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
    last_reason: str | None = None
    holder: str | None = None  # the process holding its lease (PostgreSQL; None: none, or SQLite)


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
    owner_process: str | None = None  # the ProcessInfo.id of that process


@dataclass(frozen=True)
class ProcessInfo:
    """One start of a loop process: a fresh id each time (never the host name or the PID alone)."""

    id: str
    pid: int
    host: str
    started_at: float
    labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class Lease:
    """A trigger held by a process. ``token`` grows each time the trigger changes hands (a fencing
    token: a write carrying an older token is refused); ``expires_at`` is on the store's clock
    (None: held as long as the process holds the state, as with SQLite's file lock)."""

    trigger: str
    token: int
    expires_at: float | None = None


@dataclass(frozen=True)
class Changes:
    """What other processes changed since the last look (``Store.changes``)."""

    enabled: dict[str, bool | None]  # trigger -> its stored override (None: the YAML's value)
    cancel_requested: frozenset[int]  # active runs whose cancel was requested


@dataclass(frozen=True)
class HistoryEntry:
    """One history row: a fire (with its run's status and times), a duplicate streak or an error streak."""

    id: int
    trigger_name: str
    kind: str  # fire | duplicate | error
    context: dict[str, Any] | None
    context_hash: str | None
    run_id: int | None
    run_status: str | None  # fires only
    run_started_at: float | None
    run_completed_at: float | None
    error: str | None  # the run's error for a fire; the reason or error otherwise
    count: int
    created_at: float
    updated_at: float


def run_row(r: dict[str, Any]) -> RunRow:
    """A ``runs`` row (a dict of its columns, either backend) as a :class:`RunRow`."""
    return RunRow(
        id=r["id"], trigger_name=r["trigger_name"], workflow=r["workflow"], status=r["status"],
        context=json.loads(r["context"]), context_hash=r["context_hash"], dedupe=r["dedupe"], attempt=r["attempt"],
        rerun_of=r["rerun_of"], queued_at=r["queued_at"], started_at=r["started_at"], completed_at=r["completed_at"],
        error=r["error"], triggered_at=r["triggered_at"], owner_pid=r.get("owner_pid"), owner_start=r.get("owner_start"),
        owner_process=r.get("owner_process"),
    )


def history_row(r: dict[str, Any]) -> HistoryEntry:
    """A history query's row (events joined with their run's status and times) as a :class:`HistoryEntry`."""
    return HistoryEntry(
        id=r["id"], trigger_name=r["trigger_name"], kind=r["kind"],
        context=json.loads(r["context"]) if r["context"] else None, context_hash=r["context_hash"],
        run_id=r["run_id"], run_status=r["run_status"], run_started_at=r["run_started"],
        run_completed_at=r["run_completed"], error=r["run_error"] if r["kind"] == "fire" else r["error"],
        count=r["count"], created_at=r["created_at"], updated_at=r["updated_at"],
    )


class Store(ABC):
    """The state contract every backend implements (SQLite today; PostgreSQL with leases next).

    All methods are thread-safe within a process. Times are seconds since the epoch. The loop never
    knows which backend it talks to; the invariants below are what it relies on.

    **Processes.** A `trigctl run` calls :meth:`start_process` once; from then on this store object
    *is* that process: it holds triggers (:meth:`acquire_triggers`) and runs (claimed by
    :meth:`claim_queued`). Commands that only read or flip flags (`list`, `enable`...) never start a
    process.

    **Fencing.** In a started process, every write about a trigger (:meth:`record_fires`,
    :meth:`record_error`, :meth:`flush_stats`, :meth:`update_kv`, :meth:`set_error_alerted`,
    :meth:`enqueue_run`) is conditional on holding that trigger's lease, checked inside the write's
    own transaction; a write for a trigger not held raises :class:`LeaseLost` and writes nothing.
    Every write about a run of this process (:meth:`task_started`, :meth:`task_finished`,
    :meth:`finish_run`) is conditional on this process owning the run: a run that another process
    owns is left alone (``finish_run`` returns False).

    **Dedupe** is enforced by a constraint inside the write that records a fire, never by a read
    before it: two processes firing one key at once start one run.

    **Recovery** applies to dead owners only: :meth:`orphaned_runs` lists the running runs whose
    owner process is not alive; a live owner's runs are never touched.
    """

    process: ProcessInfo | None = None
    #: Several processes share this state (PostgreSQL): the loop leases its triggers through
    #: :mod:`trigctl.scaleout` rather than holding them all, and recovers only dead processes' runs.
    shared: bool = False

    # -- lifecycle
    @abstractmethod
    def close(self) -> None:
        """Release what this process holds (its leases, its process record) and close."""

    @abstractmethod
    def start_process(self, labels: Iterable[str] = ()) -> ProcessInfo:
        """Become a loop process: record a fresh :class:`ProcessInfo`. SQLite allows one per state
        and raises :class:`StateLocked` while another live process has it."""

    # -- leases
    @abstractmethod
    def acquire_triggers(self, names: Iterable[str], now: float) -> dict[str, Lease]:
        """Take the leases of those of ``names`` that no live process holds; return those held now.
        SQLite: all of them, with a constant token, as long as the process holds the state."""

    @abstractmethod
    def renew_leases(self, now: float) -> dict[str, Lease]:
        """Extend every lease this process holds; return those still held (a lost one is gone)."""

    @abstractmethod
    def release_triggers(self, names: Iterable[str]) -> None:
        """Give leases up (a trigger removed by a reload, a shutdown)."""

    def holds(self, trigger: str) -> bool:
        """Whether this process holds the trigger's lease (always, outside a started process)."""
        return True

    # -- triggers
    @abstractmethod
    def sync_triggers(self, names: Iterable[str]) -> None:
        """Make sure every named trigger has a state row (existing rows are kept)."""
    @abstractmethod
    def trigger_rows(self) -> dict[str, TriggerRow]: ...
    def list_rows(self) -> dict[str, tuple[Any, ...]]:
        """What `list --json` shows of each trigger's row: (enabled, last_poll_at, last_result,
        next_poll_at, active_runs, fires, consecutive_errors, last_reason, holder), values as
        :meth:`trigger_rows` has them (``enabled`` may be 0/1 for False/True)."""
        return {name: (r.enabled, r.last_poll_at, r.last_result, r.next_poll_at, r.active_runs, r.fires,
                       r.consecutive_errors, r.last_reason, r.holder) for name, r in self.trigger_rows().items()}

    @abstractmethod
    def set_enabled(self, names: Iterable[str], enabled: bool) -> None:
        """Store the enable/disable override (seen by the loop through :meth:`changes`)."""
    @abstractmethod
    def flush_stats(self, stats: Iterable[PollStats]) -> None:
        """Write skipped polls' counters (fenced per trigger), each trigger at most once per call.
        Called by the counter writer's thread (trigctl.counters) while the loop goes on; a backend
        may split a big call into several transactions (SQLite: grouped by row)."""
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

    def has_config_snapshot(self, config_path: str, fingerprint: str) -> bool:
        """Whether a snapshot of these bytes is saved (without reading it: 50,000 triggers, ~5 MB)."""
        return self.config_snapshot(config_path, fingerprint) is not None

    def list_json_text(self, config_path: str, fingerprint: str, tail: str) -> str | None:
        """`list --json` (compact) of the YAML whose snapshot of these bytes is saved, written by the
        backend; ``tail`` closes each object (``, "loop_alive": ...}``). An object the backend leaves
        to the caller is ``"\\0<its position in the snapshot>"``. None: no such snapshot, or the
        backend does not write it (PostgreSQL: trigctl.api.list_json builds it in Python)."""
        return None

    @abstractmethod
    def changes(self) -> Changes | None:
        """What other processes changed since the previous call (None: nothing). The first call
        returns the current overrides and cancel requests."""

    # -- polls
    @abstractmethod
    def record_fires(
        self, trigger: str, workflow: str, fires: list[FireRequest], stats: PollStats, now: float,
        cursor: str | None, state_updates: dict[str, Any],
    ) -> list[FireResult]:
        """One poll's fires, its counters, its cursor and its state, in one transaction.

        Each fire is deduplicated by a constraint inside its insert (one result per request, in
        order); a fire suppressed by an active run of another context is ``deferred``: its
        ``state`` is not applied and the cursor is not stored."""
    @abstractmethod
    def record_error(self, trigger: str, message: str, stats: PollStats, now: float) -> int:
        """An error of a poll: a new history row, or the streak's row counted up. Returns the streak."""
    @abstractmethod
    def dedupe_status(self, trigger: str, key: str, dedupe: str) -> tuple[bool, str]:
        """Would a fire with this key be suppressed now, and why (read-only, for `trigctl poll`)."""
    @abstractmethod
    def enqueue_run(self, trigger: str, workflow: str, context: dict[str, Any], now: float, *, rerun_of: int | None = None,
                    dedupe: str = "none", context_hash: str | None = None, max_attempts: int = 3) -> FireResult:
        """A run not started by a poll (an on_error alert, a rerun after a crash)."""
    @abstractmethod
    def set_error_alerted(self, trigger: str, alerted: bool) -> None: ...

    # -- runs
    #: Set by the loop (Runner) where the backend claims in the fire's own transaction: how many
    #: runs a poll's fires may start at once (0: none), and the time they start (taken inside the
    #: transaction: after the end of a run whose key a fire takes over). The runs so claimed are
    #: running and owned by this process when record_fires returns; :meth:`take_claimed` hands
    #: them to the runner.
    claim_room: Callable[[], tuple[int, float]] | None = None

    def take_claimed(self) -> list[RunRow]:
        """The runs claimed by fires (see :attr:`claim_room`) since the last call, oldest first."""
        return []

    def requeue_unstarted(self, run_id: int) -> bool:
        """Put a dead owner's running run back in the queue if none of its tasks started (claimed by
        its fire or by claim_queued, the process died before a worker began it): it did nothing,
        and queued runs survive restarts. False: left to recovery (interrupted, maybe rerun); a
        backend whose task records may be missing (the database away) always leaves it."""
        return False

    @abstractmethod
    def claim_next_queued(self, now: float) -> RunRow | None: ...
    def claim_queued(self, now: float, limit: int) -> list[RunRow]:
        """Up to ``limit`` queued runs, oldest first, marked running and owned by this process."""
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
    def task_output(self, run_id: int, idx: int, output_tail: str) -> None:  # noqa: B027 - optional
        """The output so far of a running task (its row from `task_started`), for `show` (optional
        for a backend: without it, `show` has a task's output once it ended)."""

    @abstractmethod
    def finish_run(self, run_id: int, status: str, now: float, error: str | None = None,
                   only_if: str | None = None, take_over: bool = False) -> bool:
        """End an active run, releasing its key in the same statement. With ``only_if``, only from
        that status. A run another process owns is ended only with ``take_over`` (its owner is
        dead: recovery, or `cancel` with no live owner). True if this call ended it."""
    #: The writes a run's own thread makes (trigctl.runlog batches them): name -> method.
    RUN_STEPS = frozenset({"task_started", "task_output", "task_finished", "finish_run"})

    def apply_run_steps(self, steps: list[tuple[str, tuple]]) -> list[Any]:
        """Apply these run writes (each a RUN_STEPS method's name and positional arguments) in this
        order; each one's result, or the exception it raised, in a list. A backend may commit them
        together (SQLite: one transaction); if that fails, each is applied on its own so that every
        step gets its own outcome. This default applies them one by one."""
        out: list[Any] = []
        for name, args in steps:
            if name not in self.RUN_STEPS:
                raise ValueError(f"not a run step: {name!r}")
            try:
                out.append(getattr(self, name)(*args))
            except Exception as e:  # noqa: BLE001 - handed to the step's own caller
                out.append(e)
        return out

    @abstractmethod
    def request_cancel(self, run_id: int, now: float) -> str | None: ...
    @abstractmethod
    def active_runs(self) -> list[RunRow]: ...
    def queued_runs(self) -> int:
        """How many runs wait in the queue now (``trigctl_queue_depth``; a scrape asks it on a
        reader of its own). A backend counts them without reading the rows where it can."""
        return sum(1 for run in self.active_runs() if run.status == "queued")
    @abstractmethod
    def orphaned_runs(self) -> list[RunRow]:
        """Running runs whose owner process is dead (with their tasks): what recovery takes over."""
    @abstractmethod
    def owner_alive(self, run: RunRow) -> bool:
        """Whether the process that owns ``run`` is alive (this process included)."""

    def loop_alive(self) -> bool | None:
        """Whether a `trigctl run` process is alive for this state (None: this store cannot tell)."""
        return None

    # -- reading
    @abstractmethod
    def history(self, trigger: str | None, limit: int, statuses: list[str] | None,
                since: float | None) -> list[HistoryEntry]: ...
    @abstractmethod
    def get_run(self, run_id: int) -> RunRow | None: ...
    @abstractmethod
    def prune(self, before: float) -> int:
        """Delete history entries last updated before ``before`` (not the fires of active runs) and
        ended runs completed before it, with their tasks; how many history entries went."""

    def count_prunable(self, before: float) -> int:
        """How many history entries ``prune(before)`` would delete now (`prune --dry-run`)."""
        raise StateError("this state backend cannot count what prune would delete (--dry-run)")


# ------------------------------------------------------------------ SQL shared by both SQL stores

#: a history row prune may delete: not the fire of a queued or running run (no placeholders)
PRUNABLE_EVENT = "(run_id IS NULL OR kind <> 'fire' OR run_id NOT IN (SELECT id FROM runs WHERE status IN ('queued','running')))"


def sql_dedupe_status(query: Callable[[str, tuple[Any, ...]], list[dict[str, Any]]], p: str,
                      trigger: str, key: str, dedupe: str) -> tuple[bool, str]:
    """Store.dedupe_status for a SQL store: ``query(sql, params)`` runs a read, ``p`` is its driver's
    placeholder (``?`` or ``%s``)."""
    if dedupe == "none":
        return False, ""
    rows = query(f"SELECT id FROM runs WHERE trigger_name = {p} AND active_key = {p}", (trigger, key))
    if rows:
        return True, f"run {rows[0]['id']} with this key is still active"
    if dedupe == "once":
        st = query(f"SELECT succeeded_run, failures, given_up FROM dedupe_once WHERE trigger_name = {p} AND key = {p}",
                   (trigger, key))
        if st and st[0]["succeeded_run"] is not None:
            return True, f"already succeeded in run {st[0]['succeeded_run']} (dedupe: once)"
        if st and st[0]["given_up"]:
            return True, f"given up after {st[0]['failures']} failed attempts (dedupe: once)"
    return False, ""

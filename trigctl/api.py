"""What the commands do, as functions: plain arguments in, typed results out, domain errors raised.

Nothing here prints or knows about click: :mod:`trigctl.cli` parses, calls one function and
renders the result (:mod:`trigctl.render`). Errors are :class:`UsageError` (a bad argument or
path), :class:`NotFound` (no such trigger or run), :class:`Conflict` (the run already ended),
``ConfigError`` (the YAML) and ``StateError`` (the state file).

`trigctl list` and `history` must start fast: heavy modules (the config loader, the store, the
scheduler, the triggers) are imported inside the functions that use them. The result records are
plain dataclasses: a frozen one costs twice as much to define, at every start.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trigctl.config import Config
    from trigctl.store.base import HistoryEntry as StoredEntry
    from trigctl.store.base import RunRow, Store


class Error(Exception):
    """A domain error: its message is one line for the user."""


class UsageError(Error):
    """A bad argument: an empty path, a file that exists, a path that cannot be a state file."""


class NotFound(Error):
    """No trigger or run by that name or id."""


class Conflict(Error):
    """The request is valid but the state says no: the run to cancel has already ended."""


# The largest rowid SQLite stores: a larger id names no run (and cannot even be a query parameter).
MAX_RUN_ID = 2**63 - 1

CANCELLED_BY = "cancelled by `trigctl cancel`"

# ------------------------------------------------------------------------- finding config and state

_NOT_A_PATH = {"", "~", "null", "true", "false", "yes", "no", "on", "off", "y", "n"}


def state_from_yaml(path: str) -> str | None:
    """The state location of a YAML file, found without parsing it (commands that need only the
    state, such as `history` and `show`, skip loading the whole file: ~0.1 s at 1,000 triggers).

    Only the plain cases: one top-level `state: PATH` line, a plain or simply quoted value, no
    `${...}`; or no `state` anywhere in the file (the default). Anything else returns None and the
    caller loads the file, which gives the same answer (or the error)."""
    import re

    from trigctl.bounded import TooLarge, read_at_most

    try:
        text = read_at_most(path).decode("utf-8-sig")
    except (OSError, UnicodeDecodeError, TooLarge):
        return None  # the loader explains
    base = Path(path).resolve().parent
    found = re.findall(r"(?m)^state[ \t]*:(.*)$", text)
    if not found:
        return None if "state" in text else str(base / ".trigctl/state.db")
    if len(found) > 1:
        return None
    value = re.sub(r"(^|[ \t])#.*$", "", found[0]).strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]
        if not value or any(c in value for c in "'\"\\"):
            return None
    elif value.lower() in _NOT_A_PATH or not re.fullmatch(r"[A-Za-z0-9_./@%+=,-][A-Za-z0-9_./@%+=,:~-]*", value) \
            or re.fullmatch(r"[-+]?[0-9_.]+(?:[eE][-+]?[0-9]+)?", value):
        return None
    if "$" in value:
        return None
    return value if "://" in value else str(base / value)


class Project:
    """The config and the state a command works on: from FILE, -c/--config, --state and the
    environment (the caller passes what it parsed; None is unset)."""

    def __init__(self, config_path: str | None, state: str | None, file_arg: str | None = None):
        # An empty environment variable counts as unset (click); an empty argument is a mistake.
        for value, what in ((file_arg, "FILE"), (config_path, "-c/--config"), (state, "--state")):
            if value == "":
                raise UsageError(f"{what}: empty path")
        self.explicit_config = file_arg or config_path
        self.config_path = self.explicit_config or "triggers.yaml"
        self.state_arg = state
        self._config: Config | None = None

    def config(self, light: bool = False) -> Config:
        if self._config is None:
            from trigctl.config import load_config

            self._config = load_config(self.config_path, light=light)
        return self._config

    def has_config(self) -> bool:
        return Path(self.config_path).is_file()

    def state_location(self, need_config: bool = True) -> str:
        if self.state_arg:
            return self.state_arg
        if not need_config and not self.has_config():
            if self.explicit_config and os.path.lexists(self.config_path):
                self.config(light=True)  # a directory, a device...: the loader says what is wrong with it
            if self.explicit_config:
                raise UsageError(f"{self.config_path}: no such file (or give --state PATH to read a state without its YAML)")
            raise UsageError(f"no {self.config_path} here: give -c/--config PATH or --state PATH")
        if not need_config and self._config is None:
            quick = state_from_yaml(self.config_path)
            if quick is not None:
                return quick
        return self.config(light=True).state_location()

    def store(self, readonly: bool = False, need_config: bool = True) -> Store:
        return open_state(self.state_location(need_config), readonly=readonly)


def open_state(location: str, *, readonly: bool = False, lease_seconds: float | None = None) -> Store:
    """The store at ``location``, once the path is something a SQLite file can be: SQLite itself
    says "unable to open database file" of a directory and "disk I/O error" of a FIFO or a device."""
    import stat

    from trigctl.store import open_store

    if "://" not in location and location != ":memory:":
        try:
            mode = os.stat(location).st_mode
        except (FileNotFoundError, NotADirectoryError):
            mode = None  # created by writers (or "cannot create state directory"); readers answer empty
        except (OSError, ValueError) as e:
            raise UsageError(f"state {location}: {getattr(e, 'strerror', None) or e}") from None
        if mode is not None and stat.S_ISDIR(mode):
            raise UsageError(f"state {location} is a directory, not a state file (give a file path such as {location}/state.db)")
        if mode is not None and not stat.S_ISREG(mode):
            raise UsageError(f"state {location} is not a regular file (a FIFO, a socket or a device): give the path of a state file")
    return open_store(location, readonly=readonly, lease_seconds=lease_seconds)


# ------------------------------------------------------------------------------------------- init

STARTER = Path(__file__).with_name("starter.yaml")


def init(path: str) -> Path:
    """Write the commented starter YAML at ``path`` and an ``inbox/`` beside it; never overwrites."""
    if not path:
        raise UsageError("PATH: empty path")
    target = Path(path)
    if os.path.lexists(target):
        raise UsageError(f"{path} already exists; not overwriting it")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "x") as f:  # "x": a file that appeared meanwhile is not overwritten either
            f.write(STARTER.read_text())
        (target.parent / "inbox").mkdir(exist_ok=True)  # the starter's file trigger watches it
    except FileExistsError:
        raise UsageError(f"{path} already exists; not overwriting it") from None
    except OSError as e:
        raise UsageError(f"cannot write {e.filename or path}: {e.strerror or e}") from None
    return target


# --------------------------------------------------------------------------------------- validate


@dataclass
class Validated:
    config_path: str
    triggers: int
    workflows: int


def validate(file: str | None = None, *, config_path: str | None = None, state: str | None = None) -> Validated:
    """Load the YAML fully (schema, workflows, names, crons, callables, env vars); ConfigError if not valid."""
    from trigctl.config import load_config

    project = Project(config_path, state, file)
    cfg = load_config(project.config_path)
    return Validated(project.config_path, len(cfg.triggers), len(cfg.workflows))


# -------------------------------------------------------------------------------------------- run


@dataclass
class RunPlan:
    """What `run` will run: the loaded config, the state location, the triggers to run (None: all)."""

    config: Config
    state_location: str
    only: set[str] | None


def plan_run(file: str | None = None, *, config_path: str | None = None, state: str | None = None,
             only: tuple[str, ...] | list[str] = ()) -> RunPlan:
    """Load the config and check the trigger names, before the loop's logging is set up."""
    project = Project(config_path, state, file)
    cfg = project.config()
    for name in only:
        if cfg.trigger(name) is None:
            raise NotFound(f"unknown trigger {name!r} (known: {', '.join(t.name for t in cfg.triggers) or 'none'})")
    return RunPlan(cfg, project.state_location(), set(only) if only else None)


def run(plan: RunPlan, *, once: bool = False, grace: float = 30.0, labels: tuple[str, ...] = (),
        lease: float | None = None) -> int:
    """The polling loop in this thread until it stops; its exit code. It logs to the `trigctl` logger.
    ``labels`` and ``lease`` matter with a PostgreSQL state (docs/scale-out.md)."""
    from trigctl.runner import Runner

    store = open_state(plan.state_location, lease_seconds=lease)
    try:
        return Runner(plan.config, store, only=plan.only, once=once, grace=grace, labels=tuple(labels)).run()
    finally:
        store.close()


# ------------------------------------------------------------------------------------------- poll


@dataclass
class FirePreview:
    """A context the poll returned, and what the state would make of it now."""

    context: Any
    dedupe_key: str
    suppressed: bool
    reason: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"context": self.context, "dedupe_key": self.dedupe_key, "suppressed": self.suppressed, "reason": self.reason}


@dataclass
class PollPreview:
    trigger_name: str
    result: str  # fired | duplicate | skipped | error
    fires: list[FirePreview]
    duration: float  # seconds
    error: str | None = None
    reason: str | None = None  # why it skipped (the trigger's reason) or erred (the error's message)

    def as_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"trigger_name": self.trigger_name, "result": self.result, "reason": self.reason,
                               "fires": [f.as_dict() for f in self.fires], "duration": round(self.duration, 6)}
        if self.error:
            doc["error"] = self.error
        return doc


def poll_once(name: str, *, config_path: str | None = None, state: str | None = None) -> PollPreview:
    """Evaluate trigger ``name`` once, now, and say what it would fire. Starts nothing, records nothing.

    A trigger that raises or times out is a preview with result "error", not an exception."""
    from trigctl.scheduler import Scheduler, describe_error

    project = Project(config_path, state)
    cfg = project.config()
    if cfg.trigger(name) is None:
        raise NotFound(f"unknown trigger {name!r}")
    store = project.store(readonly=True)
    sched = Scheduler(cfg, store, only={name})
    poll = sched.one_off_poll(name, time.time())
    slot = poll.slot
    started = time.monotonic()
    fires: list[FirePreview] = []
    result, error, reason = "skipped", None, None
    try:
        if slot.impl is None:
            raise RuntimeError(slot.load_error)
        outcome = sched.apply_cooldown(slot, _call_with_timeout(sched, poll), time.time())
        any_fired = False
        for ctx, req in zip(outcome.fires, sched.fire_requests(slot, outcome.fires)):
            suppressed, why = store.dedupe_status(name, req.context_hash, req.dedupe)
            any_fired = any_fired or not suppressed
            fires.append(FirePreview(cfg.redactor.scrub(ctx), req.context_hash, suppressed, why or None))
        if fires:
            result = "fired" if any_fired else "duplicate"
            if not any_fired:  # as `list` shows a duplicate: why the first was suppressed
                reason = fires[0].reason
        else:
            reason = cfg.redactor.text(outcome.skip_reason) if outcome.skip_reason else None
    except _PollRaised as e:
        result, error = "error", cfg.redactor.text(describe_error(e.error))
    except Exception as e:
        result, error = "error", cfg.redactor.text(describe_error(e))
    finally:
        if slot.impl is not None:
            try:
                slot.impl.close()
            except BaseException as e:  # noqa: BLE001 - the trigger's own close(): its SystemExit is not ours
                if error is None:
                    result, error = "error", cfg.redactor.text(f"close() raised {describe_error(e)}")
    if error is not None:
        reason = error
    return PollPreview(name, result, fires, time.monotonic() - started, error, reason)


def _call_with_timeout(sched, poll) -> Any:
    """The trigger's poll on a daemon thread (an async callable awaited there), given up on after
    the trigger's timeout: a call that never returns must not hold up the command's exit."""
    import asyncio
    import inspect
    import threading

    from trigctl.triggers.base import PollOutcome

    box: dict[str, Any] = {}

    def target():
        try:
            value = sched.execute(poll)
            if inspect.isawaitable(value):
                async def wrap():
                    return await value
                value = poll.slot.impl.finish(asyncio.run(wrap()))
            elif not isinstance(value, PollOutcome):
                value = poll.slot.impl.finish(value)
            box["value"] = value  # made a PollOutcome here: reading a Skip's reason runs the trigger's code too
        except BaseException as e:  # noqa: BLE001 - SystemExit, KeyboardInterrupt...: the poll's error
            box["error"] = e

    timeout = poll.slot.config.timeout
    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise TimeoutError(f"poll timed out after {timeout:g}s")
    if "error" in box:
        error = box["error"]
        if isinstance(error, Exception):
            raise error
        raise _PollRaised(error)  # not re-raised as itself: the command would exit with the trigger's SystemExit
    return box["value"]


class _PollRaised(Exception):
    """A trigger's poll raised a BaseException that is not an Exception (SystemExit, KeyboardInterrupt,
    GeneratorExit) on its thread: that is the poll's error, reported like any other."""

    def __init__(self, error: BaseException):
        super().__init__()
        self.error = error


# ------------------------------------------------------------------------------------------- list


@dataclass
class TriggerStatus:
    """One trigger as `list` shows it: its configuration and its state."""

    name: str
    type: str
    workflow: str
    interval: float | None  # None for schedule triggers
    schedule: str | None  # "0 * * * *", "every 1h"
    enabled: bool
    dedupe: str
    last_poll_at: float | None
    last_result: str | None
    next_poll_at: float | None  # None while disabled
    active_runs: int
    fires: int
    consecutive_errors: int
    last_reason: str | None = None  # why the last poll skipped, or its error's message
    holder: str | None = None  # PostgreSQL: the process holding its lease (None: nobody now)
    shared: bool = False  # the state is shared by several processes (PostgreSQL): `holder` is shown

    def as_dict(self) -> dict[str, Any]:
        from trigctl.render import iso

        doc = {
            "name": self.name, "type": self.type, "workflow": self.workflow, "interval": self.interval,
            "enabled": self.enabled, "dedupe": self.dedupe, "last_poll_at": iso(self.last_poll_at),
            "last_result": self.last_result, "next_poll_at": iso(self.next_poll_at), "active_runs": self.active_runs,
            "fires": self.fires, "consecutive_errors": self.consecutive_errors, "last_reason": self.last_reason,
        }
        if self.shared:
            doc["holder"] = self.holder
        return doc


def list_triggers(*, config_path: str | None = None, state: str | None = None) -> list[TriggerStatus]:
    """Every trigger of the YAML, in its order, with what the state knows of it."""
    project = Project(config_path, state)
    summaries, store = _listing_source(project)
    try:
        rows = store.trigger_rows()
        shared = store.shared
    finally:
        store.close()
    out = []
    for tc in summaries:
        row = rows.get(tc["name"])
        enabled = tc["enabled"] if row is None or row.enabled is None else row.enabled
        out.append(TriggerStatus(
            name=tc["name"], type=tc["type"], workflow=tc["workflow"], interval=tc["interval"],
            schedule=tc["schedule"], enabled=enabled, dedupe=tc["dedupe"],
            last_poll_at=row.last_poll_at if row else None, last_result=row.last_result if row else None,
            next_poll_at=row.next_poll_at if row and enabled else None,
            active_runs=row.active_runs if row else 0, fires=row.fires if row else 0,
            consecutive_errors=row.consecutive_errors if row else 0,
            last_reason=row.last_reason if row else None,
            holder=row.holder if row else None, shared=shared,
        ))
    return out


def list_processes(*, config_path: str | None = None, state: str | None = None) -> list[Any]:
    """The live `trigctl run` processes of a PostgreSQL state (trigctl.store.postgres.ProcessRow)."""
    store = Project(config_path, state).store(readonly=True, need_config=False)
    try:
        if not store.shared:
            raise UsageError("`trigctl processes` needs a PostgreSQL state (a SQLite state has one `trigctl run` at a time)")
        return store.processes()  # type: ignore[attr-defined]
    finally:
        store.close()


def _listing_source(project: Project) -> tuple[list[dict[str, Any]], Store]:
    """The triggers to list and the state. A big YAML is parsed only when it changed since `run`
    last saved what list shows of it (same bytes, same environment variables)."""
    if project.has_config():
        location = project.state_arg or state_from_yaml(project.config_path)
        if location is not None and ("://" in location or Path(location).exists()):
            from trigctl.snapshot import config_fingerprint

            store = open_state(location, readonly=True)
            fingerprint = config_fingerprint(project.config_path)
            cached = store.config_snapshot(str(Path(project.config_path).resolve()), fingerprint) if fingerprint else None
            if cached is not None:
                return cached, store
            store.close()
    from trigctl.config import trigger_summaries

    return trigger_summaries(project.config(light=True)), project.store(readonly=True)


# ------------------------------------------------------------------------------- enable / disable


def set_enabled(names: list[str], enabled: bool, *, config_path: str | None = None, state: str | None = None) -> list[str]:
    """Persist ``enabled`` for these triggers (a running loop honours it within a second)."""
    project = Project(config_path, state)
    if project.has_config() or not state:
        known = {t.name for t in project.config(light=True).triggers}
    else:
        reader = project.store(readonly=True, need_config=False)
        try:
            known = set(reader.trigger_rows())
        finally:
            reader.close()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise NotFound(f"unknown trigger {unknown[0]!r}" + (f" (known: {', '.join(sorted(known))})" if known else ""))
    store = project.store(need_config=False)
    try:
        store.set_enabled(names, enabled)
    finally:
        store.close()
    return names


# ---------------------------------------------------------------------------------------- history


@dataclass
class HistoryEntry:
    """One line of history: a fire (with its run's status), a suppressed duplicate or an error."""

    id: int
    trigger_name: str
    kind: str  # fire | duplicate | error
    context: Any
    context_hash: str | None
    run_id: int | None
    status: str | None  # the run's, for fires
    started_at: float | None
    completed_at: float | None
    error: str | None
    count: int  # repeats folded into this line
    when: float  # what WHEN shows: a fire's time, a duplicate's or an error's latest repeat

    @property
    def duration(self) -> float | None:
        completed, started = self.completed_at, self.started_at
        return round(completed - started, 6) if completed and started else None

    def as_dict(self) -> dict[str, Any]:
        from trigctl.render import iso

        return {
            "id": self.id, "trigger_name": self.trigger_name, "kind": self.kind, "context": self.context,
            "context_hash": self.context_hash, "run_id": self.run_id, "status": self.status,
            "started_at": iso(self.started_at), "completed_at": iso(self.completed_at), "duration": self.duration,
            "error": self.error, "count": self.count,
        }


def history_entry(r: StoredEntry) -> HistoryEntry:
    """A store record (trigctl.store.base.HistoryEntry) as what `history` shows: a fire's times are
    its run's (its own creation while queued), a duplicate's or an error's its latest repeat."""
    is_fire = r.kind == "fire"
    return HistoryEntry(
        id=r.id, trigger_name=r.trigger_name, kind=r.kind, context=r.context, context_hash=r.context_hash,
        run_id=r.run_id, status=r.run_status if is_fire else None,
        started_at=(r.run_started_at if is_fire else None) or r.created_at,
        completed_at=r.run_completed_at if is_fire else None,
        error=r.error, count=r.count,
        when=r.created_at if is_fire else r.updated_at,
    )


def history(name: str | None = None, *, limit: int = 20, statuses: list[str] | None = None, since: float | None = None,
            config_path: str | None = None, state: str | None = None) -> list[HistoryEntry]:
    """Newest first, at most ``limit``; only ``name``'s, these statuses (run statuses, "duplicate",
    "error") and entries at or after ``since`` (a timestamp) when given."""
    project = Project(config_path, state)
    store = project.store(readonly=True, need_config=False)
    try:
        if name is not None:
            known = set(store.trigger_rows())
            if name not in known and project.has_config():  # a trigger of the file that has no row yet
                known |= {t.name for t in project.config(light=True).triggers}
            if name not in known:
                raise NotFound(f"unknown trigger {name!r}")
        rows = store.history(name, limit, statuses, since)
    finally:
        store.close()
    return [history_entry(r) for r in rows]  # the store's records, as `history` shows them


def history_statuses() -> tuple[str, ...]:
    """What ``history(statuses=...)`` accepts."""
    from trigctl.store.base import RUN_STATUSES

    return RUN_STATUSES + ("duplicate", "error")


# ------------------------------------------------------------------------------------ show/cancel


def _get_run(store: Store, run_id: int) -> RunRow | None:
    return store.get_run(run_id) if 0 < run_id <= MAX_RUN_ID else None


def show_run(run_id: int, *, config_path: str | None = None, state: str | None = None) -> RunRow:
    """Run ``run_id`` with its tasks."""
    store = Project(config_path, state).store(readonly=True, need_config=False)
    try:
        run = _get_run(store, run_id)
    finally:
        store.close()
    if run is None:
        raise NotFound(f"no run {run_id}")
    return run


@dataclass
class CancelResult:
    run_id: int
    # "queued": it had not started, it is cancelled; "requested": the running `trigctl run` stops
    # it; "killed": no loop was alive, this call killed its tasks and ended it.
    how: str


def cancel_run(run_id: int, *, config_path: str | None = None, state: str | None = None) -> CancelResult:
    """End a queued or running run as cancelled: a queued one at once; a running one through the
    `trigctl run` that owns it, or, when none is alive (its state lock is free), by killing its
    tasks' process groups here. Conflict if it has already ended."""
    from trigctl.procs import kill_recorded_group
    from trigctl.store import StateLocked

    store = Project(config_path, state).store(need_config=False)
    try:
        run = _get_run(store, run_id)
        if run is None:
            raise NotFound(f"no run {run_id}")
        if run.status not in ("queued", "running"):
            raise Conflict(f"run {run_id} already ended ({run.status}); nothing to cancel")
        if run.status == "queued":
            if store.finish_run(run_id, "cancelled", time.time(), CANCELLED_BY, only_if="queued"):
                return CancelResult(run_id, "queued")
            run = store.get_run(run_id)  # started meanwhile: cancel it as a running run
            if run is None or run.status != "running":
                raise Conflict(f"run {run_id} already ended ({run.status if run else 'gone'}); nothing to cancel")
        store.request_cancel(run_id, time.time())
        if store.shared:  # PostgreSQL: the owner, on whichever host, stops it; a dead owner's run is ended here
            if store.owner_alive(run):
                return CancelResult(run_id, "requested")
            store.finish_run(run_id, "cancelled", time.time(), CANCELLED_BY, take_over=True)
            return CancelResult(run_id, "killed")
        try:
            store.start_process()  # no `trigctl run` alive: this process ends the run itself
        except StateLocked:
            return CancelResult(run_id, "requested")
        for t in run.tasks:
            kill_recorded_group(t.get("pid"), t.get("pgid"), t.get("proc_start"))
        store.finish_run(run_id, "cancelled", time.time(), CANCELLED_BY, take_over=True)
        return CancelResult(run_id, "killed")
    finally:
        store.close()


# ------------------------------------------------------------------------------------------ prune


def prune(older_than: float, *, config_path: str | None = None, state: str | None = None) -> int:
    """Delete history entries older than ``older_than`` seconds (active runs and dedupe state are
    kept); how many."""
    store = Project(config_path, state).store(need_config=False)
    try:
        return store.prune(time.time() - older_than)
    finally:
        store.close()

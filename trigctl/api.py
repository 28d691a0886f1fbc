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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator

    from trigctl.config import Config
    from trigctl.runner import Runner
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
    found = state_lines(text)
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


def state_lines(text: str) -> list[str]:
    """What follows ``state:`` on each line that starts with it: re.findall(r"(?m)^state[ \t]*:(.*)$"),
    with a literal first ("\n" before the text for its first line), which the regex engine skips to
    (a 5 MB file: ~10 ms instead of ~140)."""
    import re

    return re.findall(r"\nstate[ \t]*:([^\n]*)", "\n" + text)


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
        self.always_reads_yaml = False  # `list` shows the YAML's triggers even with --state
        self.summaries: list[dict[str, Any]] | None = None  # the known-good snapshot, when it was one
        self._checked = False
        self._unremembered: str | None = None  # a fingerprint checked here, not saved yet (no state yet)

    def config(self) -> Config:
        """The YAML, fully checked: a file `validate` refuses is refused here with the same errors."""
        if self._config is None:
            from trigctl.config import load_config

            self._config = load_config(self.config_path)
        return self._config

    def reads_yaml(self) -> bool:
        """Whether the command consults the YAML (to find the state, or because it was named)."""
        return self.has_config() and (self.explicit_config is not None or not self.state_arg or self.always_reads_yaml)

    def trigger_names(self) -> set[str]:
        if self.summaries is not None:
            return {t["name"] for t in self.summaries}
        return {t.name for t in self.config().triggers}

    def _check_yaml(self, store: Store | None, location: str) -> str | None:
        """Refuse a YAML that `validate` refuses, without parsing bytes known to be valid; the
        fingerprint to remember when the file was checked here."""
        from trigctl.known_good import known_summaries
        from trigctl.snapshot import config_fingerprint

        self._checked = True
        fingerprint = config_fingerprint(self.config_path)
        self.summaries = known_summaries(self.config_path, fingerprint, store, location)
        if self.summaries is not None:
            return None
        self.config()
        return fingerprint

    def has_config(self) -> bool:
        return Path(self.config_path).is_file()

    def state_location(self, need_config: bool = True) -> str:
        if self.state_arg:
            return self.state_arg
        if not need_config and not self.has_config():
            if self.explicit_config and os.path.lexists(self.config_path):
                self.config()  # a directory, a device...: the loader says what is wrong with it
            if self.explicit_config:
                raise UsageError(f"{self.config_path}: no such file (or give --state PATH to read a state without its YAML)")
            raise UsageError(f"no {self.config_path} here: give -c/--config PATH or --state PATH")
        if not need_config and self._config is None:
            quick = state_from_yaml(self.config_path)
            if quick is not None:
                return quick
        return self.config().state_location()

    def state_exists(self) -> bool:
        """Whether the state has been created (a URL: assumed so), or could never be (a path below
        a file: the writer's open says so)."""
        location = self.state_location(need_config=False)
        if "://" in location or os.path.lexists(location):
            return True
        existing = next((p for p in Path(location).absolute().parents if os.path.lexists(p)), None)
        return existing is not None and not existing.is_dir()

    def store(self, readonly: bool = False, need_config: bool = True) -> Store:
        """The state; a YAML the command reads is checked first (before a writer creates anything)."""
        from trigctl.known_good import remember

        location = self.state_location(need_config)
        if self._checked or not self.reads_yaml():
            opened = open_state(location, readonly=readonly)
            if self._unremembered is not None and self._config is not None and not readonly:
                remember(self._config, self._unremembered, opened, location)  # checked before the state existed
                self._unremembered = None
            return opened
        store: Store | None = None
        if readonly:
            store = open_state(location, readonly=True)
        try:
            fingerprint = self._check_yaml(store, location)
            if store is None:
                store = open_state(location)
        except BaseException:
            if store is not None:
                store.close()
            raise
        if fingerprint is not None and self._config is not None:
            if remember(self._config, fingerprint, None if readonly else store, location) is False:
                self._unremembered = fingerprint
        return store


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
    for parent in target.parents:
        if os.path.lexists(parent):
            if not parent.is_dir():
                raise UsageError(f"cannot write {path}: {parent} is not a directory")
            break
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
    cfg = load_config(project.config_path, cached=False)  # the full check, whatever the config cache holds
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
        lease: float | None = None, observers: Iterable[Callable[[Runner], Any]] = ()) -> int:
    """The polling loop in this thread until it stops; its exit code. It logs to the `trigctl` logger.
    Each of ``observers`` is called with the runner before it starts (to subscribe to its bus).
    ``labels`` and ``lease`` matter with a PostgreSQL state (docs/scale-out.md)."""
    from trigctl.runner import Runner

    store = open_state(plan.state_location, lease_seconds=lease)
    try:
        runner = Runner(plan.config, store, only=plan.only, once=once, grace=grace, labels=tuple(labels))
        for observe in observers:
            observe(runner)
        return runner.run()
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
    loop_alive: bool | None = None  # a `trigctl run` is alive for this state (None: cannot tell)
    holder: str | None = None  # PostgreSQL: the process holding its lease (None: nobody now)
    shared: bool = False  # the state is shared by several processes (PostgreSQL): `holder` is shown

    def as_dict(self) -> dict[str, Any]:
        from trigctl.render import iso

        return status_doc(vars(self), self.enabled, iso(self.last_poll_at), self.last_result, iso(self.next_poll_at),
                          self.active_runs, self.fires, self.consecutive_errors, self.last_reason, self.loop_alive,
                          self.shared, self.holder)


def list_triggers(*, config_path: str | None = None, state: str | None = None) -> list[TriggerStatus]:
    """Every trigger of the YAML, in its order, with what the state knows of it."""
    project = Project(config_path, state)
    store = _listing_store(project)
    try:
        return _statuses(project, store)
    finally:
        store.close()


def list_json(*, config_path: str | None = None, state: str | None = None, indent: int | None = None) -> str:
    """`list --json`: the JSON text of ``[t.as_dict() for t in list_triggers()]`` as
    trigctl.render.json_text writes it, from the state's rows as tuples: no record per trigger
    (50,000 triggers: a TriggerRow, a TriggerStatus and its dict each took ~1 s together)."""
    from trigctl.render import json_text

    project = Project(config_path, state)
    if indent is None:
        text = _stored_list_json(project)
        if text is not None:
            return text
    store = _listing_store(project)
    try:
        summaries = _summaries(project)
        rows = store.list_rows()
        alive, shared = store.loop_alive(), store.shared
    finally:
        store.close()
    return json_text([_list_doc(tc, rows.get(tc["name"]), alive, shared) for tc in summaries], indent)


def _list_doc(tc: dict[str, Any], row: tuple[Any, ...] | None, alive: bool | None, shared: bool) -> dict[str, Any]:
    """One trigger of `list --json` from its YAML summary and its Store.list_rows row (None: none)."""
    from trigctl.render import iso

    if row is None:
        return status_doc(tc, tc["enabled"], None, None, None, 0, 0, 0, None, alive, shared, None)
    stored, last_poll_at, last_result, next_poll_at, active, fires, errors, reason, holder = row
    enabled = tc["enabled"] if stored is None else bool(stored)
    return status_doc(tc, enabled, iso(last_poll_at), last_result, iso(next_poll_at) if enabled else None,
                      active, fires, errors, reason, alive, shared, holder)


def _stored_list_json(project: Project) -> str | None:
    """Compact `list --json` as the state's backend writes it from the YAML's snapshot (one SQLite
    query instead of ~1 s of Python at 50,000 triggers); None where it cannot (no snapshot of these
    bytes, which is also when the YAML must be checked; PostgreSQL), and list_json builds it."""
    import re

    from trigctl.known_good import snapshot_key
    from trigctl.render import json_text, safe_json
    from trigctl.snapshot import config_fingerprint

    project.always_reads_yaml = True
    if not project.has_config():
        return None
    fingerprint = config_fingerprint(project.config_path)
    if fingerprint is None:
        return None
    key = snapshot_key(project.config_path)
    store = open_state(project.state_location(need_config=False), readonly=True)
    try:
        alive, shared = store.loop_alive(), store.shared
        text = store.list_json_text(key, fingerprint, f', "loop_alive": {json_text(alive)}}}')
        if text is None:
            return None
        if "\0" not in text:
            return safe_json(text)
        # Objects the query left to Python (a value it does not write as json_text would).
        summaries = store.config_snapshot(key, fingerprint)
        rows = store.list_rows()
    finally:
        store.close()
    if summaries is None:
        return None

    def written(m: re.Match[str]) -> str:
        tc = summaries[int(m.group(1))]
        return json_text(_list_doc(tc, rows.get(tc["name"]), alive, shared))

    return safe_json(re.sub("\0([0-9]+)", written, text))


def status_doc(tc: dict[str, Any], enabled: Any, last_poll_at: str | None, last_result: str | None, next_poll_at: str | None,
               active_runs: int, fires: int, errors: int, reason: str | None, alive: bool | None, shared: bool,
               holder: str | None) -> dict[str, Any]:
    """One trigger of `list --json`: ``tc`` the YAML's summary (name, type, workflow, interval,
    dedupe), the times as ISO text, the rest as stored."""
    doc = {
        "name": tc["name"], "type": tc["type"], "workflow": tc["workflow"], "interval": tc["interval"],
        "enabled": enabled, "dedupe": tc["dedupe"], "last_poll_at": last_poll_at, "last_result": last_result,
        "next_poll_at": next_poll_at, "active_runs": active_runs, "fires": fires, "consecutive_errors": errors,
        "last_reason": reason, "loop_alive": alive,
    }
    if shared:
        doc["holder"] = holder
    return doc


def _summaries(project: Project) -> list[dict[str, Any]]:
    if project.summaries is not None:
        return project.summaries
    from trigctl.config import trigger_summaries

    return trigger_summaries(project.config())


def _statuses(project: Project, store: Store) -> list[TriggerStatus]:
    summaries = _summaries(project)
    rows = store.trigger_rows()
    alive = store.loop_alive()
    shared = store.shared
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
            last_reason=row.last_reason if row else None, loop_alive=alive,
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


def _listing_store(project: Project) -> Store:
    """The state, once the YAML is known valid: it is parsed (and fully checked) only when its
    bytes are not known to be valid (:mod:`trigctl.known_good`)."""
    project.always_reads_yaml = True
    if not project.has_config():
        project.config()  # says what is missing
    return project.store(readonly=True, need_config=False)


# ------------------------------------------------------------------------------- enable / disable


def set_enabled(names: list[str], enabled: bool, *, config_path: str | None = None, state: str | None = None) -> list[str]:
    """Persist ``enabled`` for these triggers (a running loop honours it within a second)."""
    project = Project(config_path, state)
    project.always_reads_yaml = project.has_config()  # its trigger names, also with --state
    reader = project.store(readonly=True, need_config=False)  # checks the YAML: nothing is created for a bad one
    try:
        known = project.trigger_names() if project.has_config() or not state else set(reader.trigger_rows())
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
    return _history(Project(config_path, state), name, limit, statuses, since)[0]


def _history(project: Project, name: str | None, limit: int, statuses: list[str] | None,
             since: float | None) -> tuple[list[HistoryEntry], str]:
    """`history` of ``project``, and the state's location it read."""
    store = project.store(readonly=True, need_config=False)
    try:
        if name is not None:
            known = set(store.trigger_rows())
            if name not in known and project.has_config():  # a trigger of the file that has no row yet
                known |= project.trigger_names()
            if name not in known:
                raise NotFound(f"unknown trigger {name!r}")
        rows = store.history(name, limit, statuses, since)
    finally:
        store.close()
    return [history_entry(r) for r in rows], project.state_location(need_config=False)  # as `history` shows them


FOLLOW_WINDOW = 1000  # rows looked at per look: more new rows than this between two looks show only the newest


def follow_history(name: str | None = None, *, limit: int = 20, statuses: list[str] | None = None,
                   since: float | None = None, config_path: str | None = None, state: str | None = None,
                   every: float = 0.5, looks: int | None = None) -> Iterator[list[HistoryEntry]]:
    """Batches of history rows, oldest first: the last ``limit`` first, then every ``every`` seconds
    the rows that are new or changed since the last look (a fire whose run ended, a duplicate or an
    error counted up). The YAML is read and checked once, at the first look; each later look opens
    the state afresh, read-only, so it may not exist yet and a running loop is never held up.
    ``looks`` bounds the looks (tests); None follows until interrupted."""
    window = max(limit, FOLLOW_WINDOW)
    first, location = _history(Project(config_path, state), name, window, statuses, since)
    seen = {e.id: _version(e) for e in first}
    yield list(reversed(first[:limit]))
    n = 0
    while looks is None or n < looks:
        n += 1
        time.sleep(every)
        store = open_state(location, readonly=True)
        try:
            rows = [history_entry(r) for r in store.history(name, window, statuses, since)]
        finally:
            store.close()
        changed = [e for e in reversed(rows) if seen.get(e.id) != _version(e)]
        seen = {e.id: _version(e) for e in rows}  # what left the window is not looked at again
        if changed:
            yield changed


def _version(e: HistoryEntry) -> tuple[Any, ...]:
    return (e.status, e.count, e.completed_at, e.when, e.error)


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

    project = Project(config_path, state)
    store = project.store(readonly=not project.state_exists(), need_config=False)  # none is made to say "no run"
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


@dataclass
class Pruned:
    entries: int  # history entries deleted (with dry_run: that would be)
    before: float  # the cut-off, a timestamp


def prune(older_than: float, *, dry_run: bool = False, config_path: str | None = None, state: str | None = None) -> Pruned:
    """Delete history entries older than ``older_than`` seconds (active runs and dedupe state are
    kept); with ``dry_run``, only count them (and create no state)."""
    before = time.time() - older_than
    project = Project(config_path, state)
    exists = project.state_exists()
    store = project.store(readonly=dry_run or not exists, need_config=False)  # nothing to delete: none is made
    try:
        if not exists:
            return Pruned(0, before)
        return Pruned(store.count_prunable(before) if dry_run else store.prune(before), before)
    finally:
        store.close()

"""Running a workflow: its tasks in order, as subprocesses (shell or argv), callables (in a child
process) or HTTP calls, with timeouts, retries and cancellation."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Generator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from trigctl.config import Config, TaskConfig, WorkflowConfig
from trigctl.events import EventBus, RunFinished, RunStarted, TaskFinished
from trigctl.gate import SHELL_GATE_LINE, gate_argv
from trigctl.procs import (
    OUTPUT_TAIL_BYTES,
    OutputTail,
    drain,
    group_alive,
    kill_group,
    proc_start_time,
    spawn,
    tail_text,
    terminate_group,
)
from trigctl.reaper import Blocking, Reaper, Sleep, Steps, WaitExit
from trigctl.runlog import RunLog
from trigctl.store.base import RunRow, Store

log = logging.getLogger("trigctl.workflows")

# What trigctl reads back from a task: TRIGCTL_OUTPUT and a call's result. Past this the task fails
# (truncating would silently drop key=value lines that later tasks rely on). The same order as a
# context's limit (MAX_CONTEXT_BYTES), which is what these grow.
MAX_TASK_RESULT_BYTES = 1 << 20
MAX_TASK_RESULT_TEXT = "1 MiB"
# Linux refuses one environment string over 128 KiB (MAX_ARG_STRLEN) and a whole environment over
# ~2 MiB: larger values reach tasks only through TRIGCTL_CONTEXT_FILE.
MAX_ENV_VALUE = 32 * 1024
# Two reapers: one spends most of its time starting processes (the vfork until the start gate
# execs), and the second overlaps its starts with the first's; three gave less on two cores
# (bench/README.md, "### The reaper").
REAPERS = 2
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_.-]+)\s*\}\}")


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat().replace("+00:00", "Z")


def env_name(key: str) -> str:
    return "TRIGCTL_" + re.sub(r"[^A-Za-z0-9]", "_", key).upper()


#: Variables trigctl itself reads (a task that runs `trigctl history` uses them): a context key that
#: maps onto one (`state`, `config`, `debug`) does not set it, so data cannot re-point those commands.
#: The variables trigctl sets for every task are reserved as well; they are set last.
CONFIG_VARS = frozenset({"TRIGCTL_CONFIG", "TRIGCTL_STATE", "TRIGCTL_DEBUG"})


def task_env(run: RunRow, context: dict[str, Any], output_file: str, context_file: str,
             extra: dict[str, str] | None = None, whole: str | None = None) -> dict[bytes, bytes]:
    """The parent environment, the task's `env:`, TRIGCTL_<KEY> per scalar context key, then the
    reserved names (which win over everything). ``whole``: the context as JSON, if the caller has it.

    As bytes, the form the OS takes: the parent's is copied as it is stored (os.environb), not
    decoded name by name and encoded again when the process starts; that round trip of a few dozen
    inherited variables was a sixth of what a short task cost trigctl."""
    env = parent_environ()
    fsencode = os.fsencode
    for name, value in (extra or {}).items():
        try:
            env[fsencode(name)] = fsencode(value)
        except UnicodeEncodeError as e:
            raise TaskError(f"env: {_short(name)} cannot be passed to a process ({e.reason})") from None
    for key, value in context.items():
        name = env_name(key)
        if name in CONFIG_VARS:
            continue
        if isinstance(value, bool):
            env[fsencode(name)] = b"true" if value else b"false"
        elif isinstance(value, (str, int, float)):
            text = env_text(str(value))
            if "\x00" not in text and len(text) <= MAX_ENV_VALUE:
                env[fsencode(name)] = fsencode(text)
        elif value is None:
            env[fsencode(name)] = b""
    env.update({
        b"TRIGCTL_RUN_ID": str(run.id).encode(),
        b"TRIGCTL_TRIGGER": fsencode(env_text(run.trigger_name)),
        b"TRIGCTL_WORKFLOW": fsencode(env_text(run.workflow)),
        b"TRIGCTL_TRIGGERED_AT": (iso(run.triggered_at) or "").encode(),
        b"TRIGCTL_CONTEXT_FILE": fsencode(context_file),
        b"TRIGCTL_OUTPUT": fsencode(output_file),
    })
    if whole is None:
        whole = json.dumps(context)
    if len(whole) <= MAX_ENV_VALUE:
        env[b"TRIGCTL_CONTEXT"] = whole.encode()
    else:
        env.pop(b"TRIGCTL_CONTEXT", None)
    return env


def parent_environ() -> dict[bytes, bytes]:
    """A copy of trigctl's environment as bytes (what a child process inherits)."""
    data = getattr(os.environ, "_data", None)  # CPython's store behind os.environb (POSIX): bytes to bytes
    if os.name == "posix" and isinstance(data, dict):
        return dict(data)
    return {os.fsencode(k): os.fsencode(v) for k, v in os.environ.items()}


def env_text(text: str) -> str:
    """A value the OS can take: a name that is not UTF-8 (surrogateescape, as os.fsdecode gives it)
    reaches the task byte-exact; any other lone surrogate becomes a visible ``\\ud800`` escape."""
    try:
        os.fsencode(text)
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def fill_argv(argv: tuple[str, ...], context: dict[str, Any]) -> list[str]:
    """{{key}} is replaced inside its one argument; no shell ever sees the result.

    One pass: a value that contains ``{{other}}`` is not filled again. Values reach the program
    exactly, also ones that start with ``-`` (a file named ``--help``): only the program knows its
    options (``grep -e "{{pattern}}"`` must get ``-foo``), so argv should put ``--`` before
    placeholders that could start with ``-``. The program itself (the first argument) never comes
    out of data starting with ``-``: the start gate's ``exec`` (bash's) would read it as an option."""

    def sub(m: re.Match) -> str:
        key = m.group(1)
        if key not in context:
            raise TaskError(f"argv refers to {{{{{key}}}}}, which the context does not have")
        value = context[key]
        return env_text(value) if isinstance(value, str) else json.dumps(value)

    out = [_PLACEHOLDER.sub(sub, a) for a in argv]
    if out and out[0].startswith("-") and out[0] != argv[0]:
        raise TaskError(f"argv: the program {argv[0]!r} is {_short(out[0])}, which starts with '-'; "
                        "a program path from the context must not (write \"./{{...}}\" for a relative one)")
    return out


def _short(text: str, limit: int = 60) -> str:
    return json.dumps(text if len(text) <= limit else text[:limit] + "...")


class ResultTooLarge(Exception):
    pass


def read_capped(path: str, what: str, limit: int = MAX_TASK_RESULT_BYTES) -> bytes:
    """A file a task wrote for trigctl, at most ``limit`` bytes: a larger one raises ResultTooLarge
    without being read (a task can write gigabytes; trigctl's memory must not follow)."""
    # os-level calls: a file object adds an isatty ioctl, a second fstat and reads (once per task)
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        data = b""
        if size <= limit:
            while len(data) <= limit:
                chunk = os.read(fd, limit + 1 - len(data))
                if not chunk:
                    break
                data += chunk
    finally:
        os.close(fd)
    if size > limit or len(data) > limit:
        raise ResultTooLarge(f"{what} is larger than {MAX_TASK_RESULT_TEXT} ({max(size, len(data))} bytes); "
                             f"trigctl reads at most {limit} bytes of it")
    return data


def read_output_vars(path: str) -> dict[str, str]:
    """`key=value` lines of a TRIGCTL_OUTPUT file; ResultTooLarge past MAX_TASK_RESULT_BYTES."""
    out: dict[str, str] = {}
    try:
        data = read_capped(path, "TRIGCTL_OUTPUT")
    except OSError:
        return out
    text = data.decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "\n")
    for line in text.split("\n"):
        if "=" in line and not line.startswith("#"):
            k, _, v = line.partition("=")
            if k.strip():
                out[k.strip()] = v
    return out


def tail(path: str, limit: int = OUTPUT_TAIL_BYTES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            data = f.read(limit)
    except OSError:
        return ""
    return tail_text(data, size, limit)


def _write_file(path: str, text: str) -> None:
    """A small private file (owner-only, like the directory it is in)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        if text:
            os.write(fd, text.encode())
    finally:
        os.close(fd)


def _private_dir(parent: str | None) -> str:
    base = tempfile.mkdtemp(prefix="trigctl-runs-", dir=parent)  # mode 0700
    weakref.finalize(_private_dir, shutil.rmtree, base, True)  # at exit: whatever tasks left there
    return base


class RunFiles:
    """A run's files, flat in per-process private directories (no directory per run): `files / name`
    gives a path (a str) and remembers it, remove() deletes them all.

    Creating and deleting files is most of what a short run costs on a journaling filesystem (ext4
    allocating inodes while others are being deleted): the small ones (TRIGCTL_OUTPUT,
    TRIGCTL_CONTEXT_FILE, a call's result) go to /dev/shm (tmpfs) unless TMPDIR says where
    temporary files go; task output logs, which can be large, stay in the temporary directory."""

    def __init__(self, small_dir: str, log_dir: str, run_id: int):
        self._small = os.path.join(small_dir, f"run{run_id}-")
        self._log = os.path.join(log_dir, f"run{run_id}-")
        self.created: list[str] = []

    def __truediv__(self, name: str) -> str:
        path = (self._log if name.endswith(".log") else self._small) + name
        self.created.append(path)
        return path

    def remove(self) -> None:
        for path in self.created:
            try:
                os.unlink(path)
            except OSError:
                pass


# The `call:` child. `-I`: nothing from the task's working directory (which may be an inbox that
# others write to) or from PYTHON* variables is on sys.path or configures the interpreter. The
# python that starts is the one running trigctl; trigctl's own location is appended (last: it cannot
# shadow anything) in case trigctl runs from a checkout rather than site-packages.
_CALL_BOOT = ("import sys; sys.path.append(sys.argv[1]); "
              "from trigctl._calltask import main; sys.exit(main(sys.argv[2:]))")
_TRIGCTL_ROOT = str(Path(__file__).resolve().parent.parent)


def call_argv(dotted: str, base_dir: Path, context_file: str, result_file: str, env: dict[bytes, bytes],
              pythonpath_from_task: bool) -> list[str]:
    """The command line of a `call:` child. Its sys.path is the interpreter's own (standard library,
    site-packages, and the user's site-packages when trigctl's interpreter has them), after it
    PYTHONPATH's entries as absolute paths (empty entries dropped; relative ones resolved against
    the YAML file's directory when the task's `env:` sets PYTHONPATH, else against trigctl's
    working directory, as trigctl's own interpreter read them), and, while the callable is
    imported, the YAML file's directory first. Never the task's `cwd`."""
    import site

    anchor = str(base_dir) if pythonpath_from_task else os.getcwd()
    pythonpath = os.fsdecode(env.get(b"PYTHONPATH", b""))
    extra = [os.path.normpath(os.path.join(anchor, e)) for e in pythonpath.split(os.pathsep) if e]
    user_site = ""
    if site.ENABLE_USER_SITE and site.USER_SITE and site.USER_SITE in sys.path:
        user_site = site.USER_SITE
    spec = json.dumps({"pythonpath": extra, "user_site": user_site})
    return [sys.executable, "-I", "-c", _CALL_BOOT, _TRIGCTL_ROOT, dotted, str(base_dir), context_file, result_file, spec]


def read_call_result(path: str, dotted: str) -> dict[str, Any] | None:
    """The dict a `call:` child wrote (None: none written); ResultTooLarge past the cap."""
    try:
        data = read_capped(path, f"the result of {dotted}")
    except OSError:
        return None
    try:
        result = json.loads(data or b"null")
    except (ValueError, RecursionError):
        return None
    return result if isinstance(result, dict) else None




class TaskError(Exception):
    pass


@dataclass
class TaskOutcome:
    status: str  # succeeded | failed | cancelled
    exit_code: int | None
    error: str | None = None
    output_vars: dict[str, Any] | None = None
    output: str | None = None  # a process task's output tail (an http task's is in its log file)


OUTPUT_SAVE_EVERY = 1.0  # seconds: how often a running task's output so far is saved for `show`


class _OutputSoFar:
    """Saves a running task's output tail (first output at once, then at most every
    OUTPUT_SAVE_EVERY), so that `show` of a running run has it (the `progress` of wait_reading)."""

    def __init__(self, sink: OutputTail, save: Callable[[str], None]):
        self.sink, self.save = sink, save
        self._saved = 0
        self._next = 0.0

    def __call__(self) -> float | None:
        if self.sink.total == self._saved:
            return None  # nothing new: woken by the next output
        now = time.monotonic()
        if now >= self._next:
            self._saved = self.sink.total
            self._next = now + OUTPUT_SAVE_EVERY
            self.save(self.sink.text())
            return None
        return self._next


class _Gate:
    """A task's start gate, opened by whichever thread commits the task's row."""

    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: BaseException | None = None


class RunExecution:
    """One run: ``steps()`` is driven by the reaper (trigctl.reaper), which waits where it yields."""

    def __init__(self, runner: WorkflowRunner, run: RunRow, workflow: WorkflowConfig):
        self.runner = runner
        self.run = run
        self.workflow = workflow
        self.cancel_event = threading.Event()
        self.cancel_status = "cancelled"
        self._proc_lock = threading.Lock()
        self._pgid: int | None = None
        self._recorded = False  # the current task's row is written
        # A task's end, written with the run's next write (the next task's start, a retry's wait,
        # the run's end): one transaction fewer per task.
        self._deferred: list[tuple[str, tuple]] = []
        self.started = time.monotonic()
        self.failed_output: str | None = None  # the output tail of the task that failed the run

    # -- control, from other threads
    def cancel(self, status: str = "cancelled") -> None:
        self.cancel_status = status
        self.cancel_event.set()
        with self._proc_lock:
            pgid = self._pgid
            exchange = getattr(self, "_exchange", None)  # set by _http while a request is in flight
        if pgid:
            self._kill_soon(pgid)
        if exchange is not None:
            exchange.abort()  # its sockets are shut down: the request ends now, not at its timeout
        self.runner.reapers[self.run.id % len(self.runner.reapers)].cancelled(self)  # a retry's wait ends now

    def _kill_soon(self, pgid: int) -> None:
        threading.Thread(target=kill_group, args=(pgid, self.runner.kill_grace), daemon=True).start()

    def _save_output(self, idx: int, text: str) -> None:
        if not self._recorded:
            return
        # Not waited for; if it fails (a full disk), `show` has the output when the task ends.
        self.runner.runlog.post([("task_output", (self.run.id, idx, self.runner.redact(text) or ""))])

    def _task_started(self, idx: int, name: str, started_at: float, pid: int | None, proc_start: str | None) -> None:
        """The task's row, written (with what was deferred before it) before this returns."""
        deferred, self._deferred = self._deferred, []
        self.runner.runlog.call("task_started", self.run.id, idx, name, started_at, pid, pid, proc_start, before=deferred)

    def _open_gate_once_recorded(self, idx: int, name: str, started_at: float, pid: int, gate_w: int) -> _Gate:
        """Write the task's row (with what was deferred before it) and, once it is committed, let
        the task pass its start gate (on the thread that committed it: this thread goes on to wait
        for the task, not for the commit). If the row cannot be written, the gate's pipe is closed
        unwritten (the gate exits 125, the task never runs) and the error is in ``error``."""
        gate = _Gate()
        deferred, self._deferred = self._deferred, []

        def written(_result: Any, error: BaseException | None) -> None:
            try:
                if error is None:
                    self._recorded = True
                    try:
                        os.write(gate_w, b"\n")
                    except BrokenPipeError:  # cancelled (killed) at the gate
                        pass
                gate.error = error
            finally:
                os.close(gate_w)
                gate.done.set()

        step = ("task_started", (self.run.id, idx, name, started_at, pid, pid, proc_start_time(pid)))
        self.runner.runlog.post([*deferred, step], written)
        return gate

    # -- the run
    def steps(self) -> Steps:
        clock = self.runner.clock
        run = self.run
        status, error = "succeeded", None
        context = dict(run.context)
        deadline = time.monotonic() + self.workflow.timeout if self.workflow.timeout else None
        try:
            tmp = self.runner.run_files(run.id)
            try:
                for idx, task in enumerate(self.workflow.tasks):
                    if self.cancel_event.is_set():
                        status, error = self.cancel_status, "cancelled"
                        break
                    outcome, attempts = yield from self._run_task(idx, task, context, tmp, deadline)
                    if outcome.output_vars:
                        context.update(outcome.output_vars)
                    if outcome.status == "cancelled":
                        status, error = self.cancel_status, outcome.error or "cancelled"
                        break
                    if outcome.status == "failed" and not task.continue_on_error:
                        status, error = "failed", f"task {task.name!r} failed: {outcome.error}"
                        self.failed_output = outcome.output
                        break
            finally:
                tmp.remove()
        except Exception as e:  # a bug or an OS failure must still end the run and release its key
            log.debug("run %s crashed", run.id, exc_info=True)
            status, error = "failed", f"internal error: {type(e).__name__}: {e}"
        error = self.runner.redact(error) if error else None
        steps, self._deferred = self._deferred + [("finish_run", (run.id, status, clock(), error))], []

        def written(_result, e: BaseException | None) -> None:
            if e is not None:  # a full disk: the run stays `running` in the state until the next start
                log.warning("run %s ended %s, which cannot be recorded (%s); the next start marks it interrupted",
                            run.id, status, e)
            self.runner._finished(self, status, error)

        # The end is written (with other runs' steps of the moment) and then announced: the run
        # leaves `active` only once its end is in the state.
        self.runner.runlog.post(steps, written)

    def _run_task(self, idx: int, task: TaskConfig, context: dict[str, Any], tmp: RunFiles,
                  deadline: float | None) -> Generator[Any, Any, tuple[TaskOutcome, int]]:
        clock = self.runner.clock
        attempts = 0
        delay = task.retry_delay
        while True:
            attempts += 1
            started_at = clock()
            # A process task's row is written once, right after Popen, with its process group; other
            # tasks (and a process that could not start) get theirs here.
            self._recorded = False
            if task.kind == "http":
                yield Blocking(self._task_started, idx, task.name, started_at, None, None)
                self._recorded = True
            out_path = tmp / f"task{idx}.log" if task.kind == "http" else ""  # a process's output: a pipe
            try:
                outcome = yield from self._attempt(idx, task, context, tmp, out_path, deadline, started_at)
            except TaskError as e:
                outcome = TaskOutcome("failed", None, str(e))
            if not self._recorded:
                yield Blocking(self._task_started, idx, task.name, started_at, None, None)
            output = self.runner.redact(outcome.output if outcome.output is not None or not out_path else tail(out_path)) or ""
            if outcome.status == "failed" and outcome.error and not output:
                output = outcome.error
            finished_at = clock()
            self._deferred.append(("task_finished", (self.run.id, idx, outcome.status, outcome.exit_code, finished_at,
                                                     output, attempts)))
            bus = self.runner.bus
            if bus.wants(TaskFinished):
                run = self.run
                bus.publish(TaskFinished(run.id, run.trigger_name, run.workflow, task.name, outcome.status,
                                         outcome.exit_code, attempts, finished_at - started_at,
                                         self.runner.redact(outcome.error)))
            if outcome.status != "failed" or attempts > task.retries:
                return outcome, attempts
            if deadline is not None and time.monotonic() + delay >= deadline:
                return outcome, attempts
            log.info("run %s task %s failed (%s); retrying in %ss", self.run.id, task.name, outcome.error, delay)
            deferred, self._deferred = self._deferred, []

            def written(_result: Any, error: BaseException | None, run_id: int = self.run.id, name: str = task.name) -> None:
                if error is not None:  # the retry goes on; the attempt's row stays `running` in the state
                    log.warning("run %s task %s: its failed attempt cannot be recorded (%s)", run_id, name, error)

            self.runner.runlog.post(deferred, written)  # `show` has the failed attempt while the retry waits
            if (yield Sleep(delay, self.cancel_event)):
                return TaskOutcome("cancelled", None, "cancelled"), attempts
            delay *= 2

    def _timeout_for(self, task: TaskConfig, deadline: float | None) -> tuple[float | None, str]:
        limits = []
        if task.timeout is not None:
            limits.append((task.timeout, f"task timed out after {task.timeout:g}s"))
        if deadline is not None:
            limits.append((max(0.0, deadline - time.monotonic()), f"workflow timed out after {self.workflow.timeout:g}s"))
        if not limits:
            return None, ""
        return min(limits, key=lambda x: x[0])

    def _attempt(self, idx, task: TaskConfig, context, tmp: RunFiles, out_path: str, deadline,
                 started_at: float) -> Generator[Any, Any, TaskOutcome]:
        timeout, timeout_msg = self._timeout_for(task, deadline)
        if timeout is not None and timeout <= 0:
            return TaskOutcome("failed", None, timeout_msg)
        if task.kind == "http":
            return (yield Blocking(self._http, task, context, out_path, timeout, timeout_msg))
        output_file = tmp / f"task{idx}.vars"
        context_file = tmp / f"task{idx}.context.json"
        whole = json.dumps(context)
        _write_file(output_file, "")
        _write_file(context_file, whole)
        env = task_env(self.run, context, output_file, context_file, dict(task.env), whole)
        cwd = self.runner.resolve_cwd(task.cwd)
        if task.kind == "run":
            argv = ["/bin/sh", "-c", SHELL_GATE_LINE + (task.run or ""), "/bin/sh"]
        elif task.kind == "argv":
            argv = fill_argv(task.argv or (), context)
        else:  # call: a child process, so a timeout can stop it
            result_file = tmp / f"task{idx}.result.json"
            argv = call_argv(task.call or "", self.runner.config.base_dir, context_file, result_file, env,
                             bool(task.env and "PYTHONPATH" in task.env))
        # The task waits at a gate until its process group is recorded: if trigctl dies before that,
        # the gate reads EOF and the task never starts, so no unrecorded task outlives a crash (the
        # next start could not stop it, and its rerun would overlap it).
        # Its output goes through a pipe of which only the tail is kept (OutputTail). The exit is
        # waited for, not the end of the output: a background child holding the pipe open does
        # not hold up the run (and is terminated with the group). If trigctl dies, a task that
        # writes more output gets SIGPIPE; the next start would terminate it anyway.
        if task.kind != "run" and not self.runner.gate_known():
            yield Blocking(self.runner.gate)  # found once (it tries the static gate): not on the reaper
        sink = OutputTail()
        gate_r, gate_w = os.pipe()
        out_r, out_w = os.pipe()
        try:
            gated = argv if task.kind == "run" else [*self.runner.gate(), *argv]
            proc = spawn(gated, cwd, env, gate_r, out_w)
        except (OSError, ValueError) as e:  # ValueError: a NUL byte in an argument
            os.close(gate_w)
            os.close(out_r)
            return TaskOutcome("failed", None, f"cannot start {argv[0]!r}: {getattr(e, 'strerror', None) or e}")
        finally:
            os.close(gate_r)
            os.close(out_w)
        gate: _Gate | None = None
        try:
            with self._proc_lock:
                self._pgid = proc.pid
            gate = self._open_gate_once_recorded(idx, task.name, started_at, proc.pid, gate_w)
            if self.cancel_event.is_set():
                self._kill_soon(proc.pid)
            try:
                code = yield WaitExit(proc, out_r, sink, timeout,
                                      _OutputSoFar(sink, lambda text: self._save_output(idx, text)))
            except subprocess.TimeoutExpired:
                drain({out_r: sink})
                yield Blocking(terminate_group, proc, self.runner.kill_grace)
                drain({out_r: sink})
                return TaskOutcome("failed", None, timeout_msg, output=sink.text())
            finally:
                with self._proc_lock:
                    self._pgid = None
            drain({out_r: sink})
            # Children left in the group (a backgrounded `sleep &`) must not outlive the task.
            if group_alive(proc.pid):  # one signal, inline; kill_group's /proc scans go to a thread
                yield Blocking(kill_group, proc.pid, 0.5)
            drain({out_r: sink})
        finally:
            os.close(out_r)
            if gate is not None and not gate.done.is_set():
                yield Blocking(gate.done.wait)  # the task was killed before its record was written
        if gate.error is not None:  # not recorded: the gate exited 125 without running the task
            raise gate.error
        output = sink.text()
        if self.cancel_event.is_set():
            return TaskOutcome("cancelled", code, "cancelled", output=output)
        try:
            vars_out: dict[str, Any] = read_output_vars(output_file)
            if task.kind == "call" and code == 0:
                result = read_call_result(result_file, task.call or "")
                if result:
                    vars_out.update(result)
        except ResultTooLarge as e:
            return TaskOutcome("failed", code, str(e), None, output)
        if code != 0:
            return TaskOutcome("failed", code, f"exit code {code}" if code > 0 else f"killed by signal {-code}", vars_out,
                               output)
        return TaskOutcome("succeeded", 0, None, vars_out, output)

    def _http(self, task: TaskConfig, context, out_path: str, timeout: float | None, timeout_msg: str) -> TaskOutcome:
        # The trigger types' request helper: one deadline for the whole exchange, a body cap, and
        # error messages that never quote header values or query strings (requests' own messages do).
        # cancel() aborts the exchange.
        from trigctl.net.http import (
            Exchange,
            HttpError,
            RequestAborted,
            RequestTimeout,
            http_request,
            new_session,
        )

        spec = task.http or {}
        method = str(spec.get("method", "POST")).upper()
        headers = {str(k): str(v) for k, v in (spec.get("headers") or {}).items()}
        session = new_session()
        exchange = Exchange()
        with self._proc_lock:
            self._exchange: Exchange | None = exchange
        if self.cancel_event.is_set():  # cancelled before cancel() could see the exchange
            exchange.abort()
        try:
            resp = http_request(session, method, spec["url"], json_body=context, headers=headers,
                                timeout=timeout or 30, verify=bool(spec.get("verify_tls", True)), exchange=exchange)
        except RequestAborted:
            return TaskOutcome("cancelled", None, "cancelled")
        except RequestTimeout:
            return TaskOutcome("failed", None, timeout_msg or "timed out")
        except HttpError as e:
            if self.cancel_event.is_set():
                return TaskOutcome("cancelled", None, "cancelled")
            return TaskOutcome("failed", None, self.runner.redact(str(e)))
        finally:
            with self._proc_lock:
                self._exchange = None
            session.close()
        Path(out_path).write_bytes(f"{method} -> {resp.status}\n".encode() + resp.body[-OUTPUT_TAIL_BYTES:])
        if not 200 <= resp.status < 300:
            return TaskOutcome("failed", resp.status, f"HTTP {resp.status}")
        vars_out = None
        if "json" in resp.content_type.lower():  # application/json, application/problem+json, ...
            body = resp.json()
            vars_out = body if isinstance(body, dict) else None
        return TaskOutcome("succeeded", resp.status, None, {"http_response": vars_out} if vars_out else None)


class WorkflowRunner:
    """Starts queued runs up to ``max_concurrent_runs``; the queue itself lives in the store (FIFO)."""

    def __init__(self, config: Config, store: Store, clock: Callable[[], float] = time.time,
                 on_finished: Callable[[RunFinished], None] | None = None, kill_grace: float = 5.0,
                 bus: EventBus | None = None):
        self.config = config
        self.store = store
        self.clock = clock
        # Called on the run's worker thread when a run ends; without it, RunFinished is published
        # there. (The loop passes one: it publishes RunFinished on its own thread, after RunStarted.)
        self.on_finished = on_finished
        self.bus = bus if bus is not None else EventBus()
        self.kill_grace = kill_grace
        self.runlog = RunLog(store)  # the runs' writes, in shared transactions
        self.active: dict[int, RunExecution] = {}
        self._lock = threading.Lock()
        self._idle_cond = threading.Condition(self._lock)  # notified when a run ends
        self.paused = False
        # Runs are driven by reaper threads (trigctl.reaper), not a thread per run; a run stays on
        # one reaper (its id decides which).
        self.reapers = [Reaper() for _ in range(REAPERS)]
        self._dirs: tuple[str, str] | None = None  # (small files, output logs)
        self._gate: tuple[str, ...] | None = None  # the start gate (trigctl.gate), found on first use

    def redact(self, text: str | None) -> str | None:
        return self.config.redactor.text(text) if text else text

    def resolve_cwd(self, cwd: str | None) -> str:
        if not cwd:
            return str(self.config.base_dir)
        p = Path(cwd)
        return str(p if p.is_absolute() else self.config.base_dir / p)

    def run_files(self, run_id: int) -> RunFiles:
        """Where one run's files go (see RunFiles); the directories are made on first use."""
        if self._dirs is None:
            with self._lock:
                if self._dirs is None:
                    logs = _private_dir(None)
                    small = logs
                    if not os.environ.get("TMPDIR") and os.access("/dev/shm", os.W_OK | os.X_OK):
                        try:
                            small = _private_dir("/dev/shm")
                        except OSError:
                            pass
                    self._dirs = (small, logs)
        return RunFiles(self._dirs[0], self._dirs[1], run_id)

    def gate_known(self) -> bool:
        return self._gate is not None

    def gate(self) -> tuple[str, ...]:
        """The start gate's argv, put before a task's own (see trigctl.gate)."""
        if self._gate is None:
            with self._lock:
                if self._gate is None:
                    assert self._dirs is not None  # made by run_files(), before any task starts
                    self._gate = gate_argv(list(dict.fromkeys(self._dirs)))
        return self._gate

    def claim_room(self) -> int:
        """How many runs may start now (the store's claim_room: fires claim their runs at once)."""
        if self.paused:
            return 0
        with self._lock:
            return self.config.max_concurrent_runs - len(self.active)

    def pump(self, stop: Callable[[], bool] | None = None) -> list[RunRow]:
        """Start the runs that fires claimed (Store.take_claimed: they are running in the state
        already), then queued runs while there is room (and ``stop()`` is not true: a signal
        arrived). Returns the runs started."""
        started = [run for run in self.store.take_claimed() if self._start(run)]
        while not self.paused and not (stop is not None and stop()):
            room = self.claim_room()
            if room <= 0:
                break
            runs = self.store.claim_queued(self.clock(), room)
            if not runs:
                break
            started += [run for run in runs if self._start(run)]
            if len(runs) < room:
                break
        return started

    def _start(self, run: RunRow) -> bool:
        """Hand a claimed run to the reaper (False: its workflow is gone; the run failed)."""
        workflow = self.config.workflows.get(run.workflow)
        if workflow is None:
            self.store.finish_run(run.id, "failed", self.clock(), f"workflow {run.workflow!r} is no longer in the config")
            return False
        ex = RunExecution(self, run, workflow)
        with self._lock:
            self.active[run.id] = ex
        self.reapers[run.id % len(self.reapers)].start(ex.steps(), ex)
        if self.bus.wants(RunStarted):
            self.bus.publish(RunStarted(run.id, run.trigger_name, run.workflow))
        return True

    def _finished(self, ex: RunExecution, status: str, error: str | None) -> None:
        with self._lock:
            self.active.pop(ex.run.id, None)
            self._idle_cond.notify_all()
        run = ex.run
        output = self.redact(ex.failed_output) if ex.failed_output and status == "failed" else None
        event = RunFinished(run.id, run.trigger_name, run.workflow, status, time.monotonic() - ex.started, error, output)
        if self.on_finished:
            self.on_finished(event)
        elif self.bus.wants(RunFinished):
            self.bus.publish(event)

    def cancel(self, run_id: int, status: str = "cancelled") -> bool:
        with self._lock:
            ex = self.active.get(run_id)
        if ex is None:
            return False
        ex.cancel(status)
        return True

    def cancel_all(self, status: str = "cancelled") -> None:
        with self._lock:
            runs = list(self.active.values())
        for ex in runs:
            ex.cancel(status)

    def count(self) -> int:
        with self._lock:
            return len(self.active)

    def active_runs(self) -> list[RunRow]:
        with self._lock:
            return [ex.run for ex in self.active.values()]

    def join(self, timeout: float | None = None) -> bool:
        """Wait until no run is active; False if ``timeout`` passed first."""
        with self._idle_cond:
            return self._idle_cond.wait_for(lambda: not self.active, timeout)

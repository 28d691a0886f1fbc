"""Running a workflow: its tasks in order, as subprocesses (shell or argv), callables (in a child
process) or HTTP calls, with timeouts, retries and cancellation."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from trigctl.config import Config, TaskConfig, WorkflowConfig
from trigctl.procs import kill_group, proc_start_time, terminate_group
from trigctl.store.base import RunRow, Store

log = logging.getLogger("trigctl.workflows")

OUTPUT_TAIL_BYTES = 4096
# Linux refuses one environment string over 128 KiB (MAX_ARG_STRLEN) and a whole environment over
# ~2 MiB: larger values reach tasks only through TRIGCTL_CONTEXT_FILE.
MAX_ENV_VALUE = 32 * 1024
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_.-]+)\s*\}\}")


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat().replace("+00:00", "Z")


def env_name(key: str) -> str:
    return "TRIGCTL_" + re.sub(r"[^A-Za-z0-9]", "_", key).upper()


def task_env(run: RunRow, context: dict[str, Any], output_file: str, context_file: str,
             extra: dict[str, str] | None = None) -> dict[str, str]:
    """The parent environment, the task's `env:`, TRIGCTL_<KEY> per scalar context key, then the
    reserved names (which win over everything)."""
    env = dict(os.environ)
    env.update(extra or {})
    for key, value in context.items():
        if isinstance(value, bool):
            env[env_name(key)] = "true" if value else "false"
        elif isinstance(value, (str, int, float)):
            text = str(value)
            if "\x00" not in text and len(text) <= MAX_ENV_VALUE:
                env[env_name(key)] = text
        elif value is None:
            env[env_name(key)] = ""
    env.update(
        TRIGCTL_RUN_ID=str(run.id),
        TRIGCTL_TRIGGER=run.trigger_name,
        TRIGCTL_WORKFLOW=run.workflow,
        TRIGCTL_TRIGGERED_AT=iso(run.triggered_at) or "",
        TRIGCTL_CONTEXT_FILE=context_file,
        TRIGCTL_OUTPUT=output_file,
    )
    whole = json.dumps(context)
    if len(whole) <= MAX_ENV_VALUE:
        env["TRIGCTL_CONTEXT"] = whole
    else:
        env.pop("TRIGCTL_CONTEXT", None)
    return env


def fill_argv(argv: tuple[str, ...], context: dict[str, Any]) -> list[str]:
    """{{key}} is replaced inside its one argument; no shell ever sees the result."""

    def sub(m: re.Match) -> str:
        key = m.group(1)
        if key not in context:
            raise TaskError(f"argv refers to {{{{{key}}}}}, which the context does not have")
        value = context[key]
        return value if isinstance(value, str) else json.dumps(value)

    return [_PLACEHOLDER.sub(sub, a) for a in argv]


def read_output_vars(path: str) -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                line = line.rstrip("\n")
                if "=" in line and not line.startswith("#"):
                    k, _, v = line.partition("=")
                    if k.strip():
                        out[k.strip()] = v
    except OSError:
        pass
    return out


def tail(path: str, limit: int = OUTPUT_TAIL_BYTES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            data = f.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace")
    if size > limit and "\n" in text:
        text = text[text.index("\n") + 1 :]
    return text


class TaskError(Exception):
    pass


@dataclass
class TaskOutcome:
    status: str  # succeeded | failed | cancelled
    exit_code: int | None
    error: str | None = None
    output_vars: dict[str, Any] | None = None


class RunExecution:
    """One run, on its own thread."""

    def __init__(self, runner: WorkflowRunner, run: RunRow, workflow: WorkflowConfig):
        self.runner = runner
        self.run = run
        self.workflow = workflow
        self.cancel_event = threading.Event()
        self.cancel_status = "cancelled"
        self._proc_lock = threading.Lock()
        self._pgid: int | None = None
        self.thread = threading.Thread(target=self._main, name=f"run-{run.id}", daemon=True)

    # -- control, from other threads
    def cancel(self, status: str = "cancelled") -> None:
        self.cancel_status = status
        self.cancel_event.set()
        with self._proc_lock:
            pgid = self._pgid
        if pgid:
            threading.Thread(target=kill_group, args=(pgid, self.runner.kill_grace), daemon=True).start()

    # -- the run
    def _main(self) -> None:
        store, clock = self.runner.store, self.runner.clock
        run = self.run
        status, error = "succeeded", None
        context = dict(run.context)
        deadline = time.monotonic() + self.workflow.timeout if self.workflow.timeout else None
        try:
            with tempfile.TemporaryDirectory(prefix=f"trigctl-run{run.id}-") as tmp:
                for idx, task in enumerate(self.workflow.tasks):
                    if self.cancel_event.is_set():
                        status, error = self.cancel_status, "cancelled"
                        break
                    outcome, attempts = self._run_task(idx, task, context, Path(tmp), deadline)
                    if outcome.output_vars:
                        context.update(outcome.output_vars)
                    if outcome.status == "cancelled":
                        status, error = self.cancel_status, outcome.error or "cancelled"
                        break
                    if outcome.status == "failed" and not task.continue_on_error:
                        status, error = "failed", f"task {task.name!r} failed: {outcome.error}"
                        break
        except Exception as e:  # a bug or an OS failure must still end the run and release its key
            log.debug("run %s crashed", run.id, exc_info=True)
            status, error = "failed", f"internal error: {type(e).__name__}: {e}"
        error = self.runner.redact(error) if error else None
        store.finish_run(run.id, status, clock(), error)
        self.runner._finished(self, status, error)

    def _run_task(self, idx: int, task: TaskConfig, context: dict[str, Any], tmp: Path, deadline: float | None):
        store, clock = self.runner.store, self.runner.clock
        attempts = 0
        delay = task.retry_delay
        while True:
            attempts += 1
            store.task_started(self.run.id, idx, task.name, clock(), None, None, None)
            out_path = str(tmp / f"task{idx}.log")
            try:
                outcome = self._attempt(idx, task, context, tmp, out_path, deadline)
            except TaskError as e:
                outcome = TaskOutcome("failed", None, str(e))
            output = self.runner.redact(tail(out_path))
            if outcome.status == "failed" and outcome.error and not output:
                output = outcome.error
            store.task_finished(self.run.id, idx, outcome.status, outcome.exit_code, clock(), output, attempts)
            if outcome.status != "failed" or attempts > task.retries:
                return outcome, attempts
            if deadline is not None and time.monotonic() + delay >= deadline:
                return outcome, attempts
            log.info("run %s task %s failed (%s); retrying in %ss", self.run.id, task.name, outcome.error, delay)
            if self.cancel_event.wait(delay):
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

    def _attempt(self, idx, task: TaskConfig, context, tmp: Path, out_path: str, deadline) -> TaskOutcome:
        timeout, timeout_msg = self._timeout_for(task, deadline)
        if timeout is not None and timeout <= 0:
            return TaskOutcome("failed", None, timeout_msg)
        if task.kind == "http":
            return self._http(task, context, out_path, timeout, timeout_msg)
        output_file = str(tmp / f"task{idx}.vars")
        context_file = str(tmp / f"task{idx}.context.json")
        Path(output_file).write_text("")
        Path(context_file).write_text(json.dumps(context))
        env = task_env(self.run, context, output_file, context_file, dict(task.env))
        cwd = self.runner.resolve_cwd(task.cwd)
        stdin = subprocess.DEVNULL
        if task.kind == "run":
            argv, shell = ["/bin/sh", "-c", task.run], False
        elif task.kind == "argv":
            argv, shell = fill_argv(task.argv or (), context), False
        else:  # call: a child process, so a timeout can stop it
            result_file = str(tmp / f"task{idx}.result.json")
            argv = [sys.executable, "-m", "trigctl._calltask", task.call or "", str(self.runner.config.base_dir), context_file, result_file]
            shell = False
        with open(out_path, "wb") as out:
            try:
                proc = subprocess.Popen(argv, shell=shell, cwd=cwd, env=env, stdin=stdin, stdout=out, stderr=subprocess.STDOUT,
                                        start_new_session=True)
            except (OSError, ValueError) as e:  # ValueError: a NUL byte in an argument
                return TaskOutcome("failed", None, f"cannot start {argv[0]!r}: {getattr(e, 'strerror', None) or e}")
            with self._proc_lock:
                self._pgid = proc.pid
            self.runner.store.task_started(self.run.id, idx, task.name, self.runner.clock(), proc.pid, proc.pid,
                                           proc_start_time(proc.pid))
            if self.cancel_event.is_set():
                kill_group(proc.pid, self.runner.kill_grace)
            try:
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                terminate_group(proc, self.runner.kill_grace)
                return TaskOutcome("failed", None, timeout_msg)
            finally:
                with self._proc_lock:
                    self._pgid = None
            # Children left in the group (a backgrounded `sleep &`) must not outlive the task.
            kill_group(proc.pid, 0.5)
        if self.cancel_event.is_set():
            return TaskOutcome("cancelled", code, "cancelled")
        vars_out = read_output_vars(output_file)
        if task.kind == "call" and code == 0:
            try:
                result = json.loads(Path(result_file).read_text() or "null")
            except (OSError, ValueError):
                result = None
            if isinstance(result, dict):
                vars_out.update(result)
        if code != 0:
            return TaskOutcome("failed", code, f"exit code {code}" if code > 0 else f"killed by signal {-code}", vars_out)
        return TaskOutcome("succeeded", 0, None, vars_out)

    def _http(self, task: TaskConfig, context, out_path: str, timeout: float | None, timeout_msg: str) -> TaskOutcome:
        # The trigger types' request helper: a total deadline, a body cap, and error messages that
        # never quote header values or query strings (requests' own messages do).
        from trigctl.triggers._util import RequestTimeout, http_request, new_session
        from trigctl.triggers.base import PollError

        spec = task.http or {}
        method = str(spec.get("method", "POST")).upper()
        headers = {str(k): str(v) for k, v in (spec.get("headers") or {}).items()}
        session = new_session()
        try:
            resp = http_request(session, method, spec["url"], json_body=context, headers=headers,
                                timeout=timeout or 30, verify=bool(spec.get("verify_tls", True)))
        except RequestTimeout:
            return TaskOutcome("failed", None, timeout_msg or "timed out")
        except PollError as e:
            return TaskOutcome("failed", None, self.runner.redact(str(e)))
        finally:
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
                 on_finished: Callable[[int, str, str | None], None] | None = None, kill_grace: float = 5.0):
        self.config = config
        self.store = store
        self.clock = clock
        self.on_finished = on_finished
        self.kill_grace = kill_grace
        self.active: dict[int, RunExecution] = {}
        self._lock = threading.Lock()
        self.paused = False

    def redact(self, text: str | None) -> str | None:
        return self.config.redactor.text(text) if text else text

    def resolve_cwd(self, cwd: str | None) -> str:
        if not cwd:
            return str(self.config.base_dir)
        p = Path(cwd)
        return str(p if p.is_absolute() else self.config.base_dir / p)

    def pump(self) -> list[RunRow]:
        """Start queued runs while there is room. Returns the runs started."""
        started = []
        while not self.paused:
            with self._lock:
                if len(self.active) >= self.config.max_concurrent_runs:
                    break
            run = self.store.claim_next_queued(self.clock())
            if run is None:
                break
            workflow = self.config.workflows.get(run.workflow)
            if workflow is None:
                self.store.finish_run(run.id, "failed", self.clock(), f"workflow {run.workflow!r} is no longer in the config")
                continue
            ex = RunExecution(self, run, workflow)
            with self._lock:
                self.active[run.id] = ex
            ex.thread.start()
            started.append(run)
        return started

    def _finished(self, ex: RunExecution, status: str, error: str | None) -> None:
        with self._lock:
            self.active.pop(ex.run.id, None)
        if self.on_finished:
            self.on_finished(ex.run.id, status, error)

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

    def join(self, timeout: float | None = None) -> bool:
        """Wait until no run is active; False if ``timeout`` passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                threads = [ex.thread for ex in self.active.values()]
            if not threads:
                return True
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            threads[0].join(remaining)

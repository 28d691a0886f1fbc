"""Helpers shared by the built-in `http`, `queue_depth` and `command` trigger types.

* :func:`run_process`: a subprocess in its own session, killed as a whole process group (SIGTERM,
  then SIGKILL) when the poll's timeout passes.
* :func:`http_request`: :func:`trigctl.net.http.http_request` (one deadline for the whole
  exchange, a body size cap, error messages without header values, URL passwords or query
  strings) at the trigger boundary: its :class:`~trigctl.net.http.HttpError` becomes the
  PollError a poll raises, with the same message.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trigctl.net import http as _http
from trigctl.net.http import (  # noqa: F401 - re-exported for the trigger types
    MAX_BODY,
    NOT_JSON,
    HttpResponse,
    new_session,
    parse_json,
    safe_url,
)
from trigctl.procs import OutputHead, OutputTail, drain, terminate_group, wait_reading
from trigctl.triggers.base import PollError

KILL_GRACE = 2.0  # seconds between SIGTERM and SIGKILL when a poll's command times out
LEFTOVER_GRACE = 0.5  # for children a finished command left running in its group
MAX_STDOUT = 1_048_576  # bytes of stdout kept (a context is limited to 1 MB anyway)
STDERR_TAIL = 4096


def resolve_path(value: str, base_dir: Path) -> Path:
    """A path option: ``~`` expanded, relative to the YAML file's directory unless absolute."""
    p = Path(value).expanduser()
    return p if p.is_absolute() else base_dir / p


# ------------------------------------------------------------------------------------ processes


@dataclass
class ProcessResult:
    returncode: int
    stdout: bytes  # at most max_stdout + 1 bytes (one more than the cap tells "truncated")
    stderr_tail: str

    def last_stderr_line(self, limit: int = 300) -> str:
        lines = [ln.strip() for ln in self.stderr_tail.splitlines() if ln.strip()]
        line = lines[-1] if lines else ""
        return line if len(line) <= limit else line[: limit - 3] + "..."

    def describe_exit(self) -> str:
        """`exit code 3: <last line of stderr>` (or `killed by signal 9`)."""
        code = self.returncode
        text = f"exit code {code}" if code >= 0 else f"killed by signal {-code}"
        last = self.last_stderr_line()
        return f"{text}: {last}" if last else text


class RunningProcesses:
    """The commands a trigger has running, so that its close() (shutdown, reload) can stop them
    instead of leaving them, and trigctl's exit, waiting for the poll timeout."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: set[subprocess.Popen] = set()
        self._closed = False

    def add(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._procs.add(proc)
            closed = self._closed
        if closed:
            _stop_groups([proc])

    def discard(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._procs.discard(proc)

    def terminate_all(self) -> None:
        """SIGTERM every running command's group, and SIGKILL what is left KILL_GRACE later (on a
        thread: this does not wait; shutdown waits with :func:`wait_for_stops`)."""
        with self._lock:
            self._closed = True
            procs = list(self._procs)
        _stop_groups(procs)


_stoppers: set[threading.Thread] = set()


def _stop_groups(procs: list[subprocess.Popen], grace: float = KILL_GRACE) -> None:
    procs = [p for p in procs if p.returncode is None]
    if not procs:
        return
    for proc in procs:
        _signal_group(proc, signal.SIGTERM)

    def escalate() -> None:
        # The poll's own thread reaps the command (its returncode is set then); one that ignores
        # SIGTERM is killed now rather than at its poll timeout, which may be long after trigctl exited.
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(p.returncode is None for p in procs):
            time.sleep(0.02)
        for proc in procs:
            _signal_group(proc, signal.SIGKILL)
        _stoppers.discard(threading.current_thread())

    t = threading.Thread(target=escalate, name="trigctl-stop-command", daemon=True)
    _stoppers.add(t)
    t.start()


def wait_for_stops(timeout: float = KILL_GRACE + 1) -> None:
    """Wait until the commands stopped by terminate_all() are gone (or SIGKILLed)."""
    deadline = time.monotonic() + timeout
    for t in list(_stoppers):
        t.join(max(0.0, deadline - time.monotonic()))


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    if proc.returncode is not None:
        return  # reaped: its PID may belong to someone else by now
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def run_process(argv: Sequence[str], *, cwd: str | Path, timeout: float, env: Mapping[str, str] | None = None,
                max_stdout: int = MAX_STDOUT, grace: float = KILL_GRACE,
                running: RunningProcesses | None = None) -> ProcessResult:
    """Run ``argv`` (no shell unless argv says so) in a new session; stdin is /dev/null.

    Output goes through pipes that are read while the command runs: the first ``max_stdout`` + 1
    bytes of stdout and the last STDERR_TAIL bytes of stderr are kept, the rest is read and
    dropped, so a command printing gigabytes costs neither memory nor disk. The exit is waited
    for, not the end of output: a background child that keeps a pipe open cannot make the poll
    hang. Past ``timeout`` the whole process group is killed and PollError("command timed out after
    Xs") raised. Children left running in the group after the command exits are terminated too: a
    poll leaves nothing behind.
    """
    argv = [str(a) for a in argv]
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    sinks: dict[int, OutputTail | OutputHead] = {out_r: OutputHead(max_stdout + 1), err_r: OutputTail(STDERR_TAIL)}
    try:
        try:
            proc = subprocess.Popen(argv, cwd=str(cwd), env=dict(env) if env is not None else None,
                                    stdin=subprocess.DEVNULL, stdout=out_w, stderr=err_w, start_new_session=True)
        except (OSError, ValueError) as e:  # ValueError: a NUL byte in an argument
            raise PollError(f"cannot start {argv[0]!r}: {getattr(e, 'strerror', None) or e}") from None
        finally:
            os.close(out_w)
            os.close(err_w)
        if running is not None:
            running.add(proc)
        try:
            code = wait_reading(proc, sinks, max(timeout, 0.001))
        except subprocess.TimeoutExpired:
            terminate_group(proc, grace)
            raise PollError(f"command timed out after {timeout:g}s") from None
        except BaseException:
            terminate_group(proc, grace)
            raise
        finally:
            if running is not None:
                running.discard(proc)
        drain(sinks)
        terminate_group(proc, LEFTOVER_GRACE)
        drain(sinks)
    finally:
        os.close(out_r)
        os.close(err_r)
    head = sinks[out_r]
    tail = sinks[err_r]
    assert isinstance(head, OutputHead) and isinstance(tail, OutputTail)
    return ProcessResult(code, head.data(), tail.text())


# ----------------------------------------------------------------------------------------- HTTP


def http_request(session: Any, method: str, url: str, **kwargs: Any) -> HttpResponse:
    """:func:`trigctl.net.http.http_request` for a poll: an HttpError (a timeout too) becomes a
    PollError with the same message, which the scheduler records as it reads."""
    try:
        return _http.http_request(session, method, url, **kwargs)
    except _http.HttpError as e:
        raise PollError(str(e)) from None


# ----------------------------------------------------------------------------------------- JSON


def jmes_search(expr: Any, data: Any, what: str) -> Any:
    """``expr.search(data)``; an expression that fails on this data (``length(null)``) is a PollError."""
    from jmespath.exceptions import JMESPathError

    try:
        return expr.search(data)
    except JMESPathError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PollError(f"{what} {expr.expression!r} failed on the response: {first}") from None


def as_number(value: Any) -> int | float | None:
    """A finite JSON number as int (when integral) or float; None for anything else (bools too)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return int(value) if value.is_integer() else value
    return value

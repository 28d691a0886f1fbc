"""A real `trigctl run` child for fault-injection tests: its stderr is read by a thread (the pipe never
fills, lines are kept), and the test waits on log lines or conditions with deadlines."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path


class RunProc:
    """`python -m trigctl run ...` in ``cwd``; every stderr line is kept in ``lines``."""

    def __init__(self, cwd: Path, *args: str, env: dict | None = None, preexec_fn=None, log: Path | None = None):
        self.cwd = Path(cwd)
        self.log = open(log, "a") if log else None  # noqa: SIM115 - every line, for a post-mortem
        self.started = time.monotonic()
        # SIGUSR1 dumps every thread's stack to stderr (faulthandler): a post-mortem of a stall.
        boot = ("import faulthandler, signal; faulthandler.register(signal.SIGUSR1, all_threads=True); "
                "from trigctl.cli import main; main(prog_name='trigctl')")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", boot, "run", *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env={**os.environ, **(env or {})}, preexec_fn=preexec_fn,
        )
        self.lines: list[str] = []
        self.stdout = ""
        self._cond = threading.Condition()
        self._eof = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._out_reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._out_reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
            if self.log:
                self.log.write(line)
                self.log.flush()
        if self.log:
            self.log.close()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def _read_stdout(self) -> None:
        self.stdout = self.proc.stdout.read()

    def wait_line(self, text: str | tuple[str, ...], timeout: float = 15.0, start: int = 0) -> int:
        """Index of the first stderr line (from ``start``) containing ``text`` (or one of several);
        fails at the deadline or EOF."""
        texts = (text,) if isinstance(text, str) else text
        deadline = time.monotonic() + timeout
        with self._cond:
            i = start
            while True:
                while i < len(self.lines):
                    if any(t in self.lines[i] for t in texts):
                        return i
                    i += 1
                if self._eof:
                    raise AssertionError(f"trigctl exited before logging {text!r}:\n" + self.stderr[-3000:])
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout}s waiting for {text!r}:\n" + self.stderr[-3000:])
                self._cond.wait(left)

    def wait_until(self, predicate, timeout: float) -> bool:
        """Wait until ``predicate(stderr so far)`` is true (True), the process exits or the deadline
        passes (False): a condition with a deadline, re-checked at each new line."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if predicate("\n".join(self.lines)):
                    return True
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    return False
                self._cond.wait(left)

    def count(self, text: str) -> int:
        with self._cond:
            return sum(1 for ln in self.lines if text in ln)

    @property
    def stderr(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._reader.join(timeout=10)

    def wait(self, timeout: float) -> int:
        """Wait for the exit (and the end of its output); fails at the deadline."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"trigctl did not exit within {timeout}s:\n" + self.stderr[-3000:]) from None
        self._reader.join(timeout=10)
        self._out_reader.join(timeout=10)
        return code

    def stop(self, timeout: float = 30.0) -> int:
        self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.kill()


def integrity(db: Path | str) -> str:
    """PRAGMA integrity_check, with sqlite3 directly (not through trigctl)."""
    conn = sqlite3.connect(str(db), timeout=30)
    try:
        return "; ".join(r[0] for r in conn.execute("PRAGMA integrity_check").fetchall())
    finally:
        conn.close()


def query(db: Path | str, sql: str, params=()) -> list[tuple]:
    conn = sqlite3.connect(str(db), timeout=30)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


class Lines:
    """The lines of a text stream (a child's stdout), read by a thread, so a test takes the next line
    with a deadline: a stream that goes quiet fails the test instead of hanging it."""

    def __init__(self, stream):
        import queue

        self._queue: queue.Queue[str | None] = queue.Queue()
        self._stream = stream
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self._stream:
            self._queue.put(line)
        self._queue.put(None)

    def next(self, timeout: float = 15.0) -> str:
        """The next line (with its newline); fails at EOF or when none came within ``timeout``."""
        import queue

        try:
            line = self._queue.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line within {timeout}s") from None
        if line is None:
            raise AssertionError("the stream ended")
        return line

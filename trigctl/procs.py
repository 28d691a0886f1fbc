"""Process groups: start tasks in their own group, kill whole groups, and recognise them after a crash."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from collections.abc import Callable


def proc_start_time(pid: int) -> str | None:
    """The kernel's start time of a process (field 22 of /proc/PID/stat), to tell a reused PID apart."""
    try:  # os-level calls: this runs once per task started (a file object costs as much again)
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
        try:
            data = os.read(fd, 4096).decode(errors="replace")
        finally:
            os.close(fd)
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    rest = data[data.rfind(")") + 2 :].split()
    return rest[19] if len(rest) > 19 else None


def process_alive(pid: int, start: str | None) -> bool:
    """Whether process ``pid`` is alive and is the one that started at ``start`` (not a reused PID)."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
    except FileNotFoundError:
        return False
    except OSError:
        data = ""
    if data:
        rest = data[data.rfind(")") + 2 :].split()  # state, ppid, ..., starttime (field 22)
        if not rest or rest[0] in ("Z", "X"):  # a zombie is dead: its owner only has not reaped it
            return False
        return start is None or (len(rest) > 19 and rest[19] == start)
    try:  # no /proc: the PID alone
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def group_running(pgid: int) -> bool:
    """Whether the group has a member that is not a zombie.

    ``killpg(pgid, 0)`` alone also counts zombies: the unreaped leader, and orphaned children that
    an init which reaps late (or trigctl itself as PID 1 in a container) has not collected yet.
    Where /proc is readable, members in state Z are not counted.
    """
    if not group_alive(pgid):
        return False
    try:
        names = os.listdir("/proc")
    except OSError:
        return True
    want = str(pgid).encode()
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        fields = data[data.rfind(b")") + 2 :].split()  # state, ppid, pgrp, ...
        if len(fields) > 2 and fields[2] == want and fields[0] != b"Z":
            return True
    return False


def kill_group(pgid: int, grace: float = 5.0, proc: subprocess.Popen | None = None) -> None:
    """SIGTERM the group, then SIGKILL whatever is left after ``grace`` seconds.

    With ``proc`` (the group's leader, our child) it is reaped while waiting, so a group that dies
    at SIGTERM is done at once instead of after the whole grace period.
    """
    try:
        os.killpg(pgid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + grace
    while True:
        if proc is not None:
            proc.poll()
        if not group_running(pgid):
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(0.02)  # polling a group: there is no handle to wait on for its other members
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def terminate_group(proc: subprocess.Popen, grace: float) -> None:
    """Kill the group led by our child ``proc`` (see :func:`kill_group`) and reap ``proc``.

    Also after ``proc`` exited: children it left in its group are terminated (the group id cannot
    be handed out again while any member lives)."""
    kill_group(proc.pid, grace, proc)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:  # stuck in the kernel (uninterruptible I/O): leave it
        pass


def kill_recorded_group(pid: int | None, pgid: int | None, proc_start: str | None, grace: float = 5.0) -> bool:
    """Kill a task group recorded before a crash, unless its leader's PID now belongs to another process."""
    if not pgid:
        return False
    if pid and proc_start is not None:
        now_start = proc_start_time(pid)
        if now_start is not None and now_start != proc_start:
            return False  # PID reused by an unrelated process
        if now_start is None and not group_alive(pgid):
            return False
    if not group_running(pgid):
        return False
    kill_group(pgid, grace)
    return True


# ------------------------------------------------------------------------------ reading output

OUTPUT_TAIL_BYTES = 4096
_READ_CHUNK = 65536


def tail_text(data: bytes, total: int, limit: int) -> str:
    """The kept bytes of an output as text; when the output was cut, its cut first line is dropped."""
    text = data.decode("utf-8", errors="replace")
    if total > limit:
        cut = text.find("\n")
        if 0 <= cut < len(text.rstrip("\n")):  # only when a whole line follows the cut one
            text = text[cut + 1 :]
    return text


class OutputTail:
    """The last ``limit`` bytes of an output, in memory: the output itself goes through a pipe and
    is never stored, so a process that prints gigabytes costs no disk and ``limit`` bytes of memory."""

    def __init__(self, limit: int = OUTPUT_TAIL_BYTES):
        self.limit = limit
        self.total = 0
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        self._buf += data[-self.limit :]
        if len(self._buf) > self.limit:
            del self._buf[: len(self._buf) - self.limit]

    def text(self) -> str:
        return tail_text(bytes(self._buf), self.total, self.limit)


class OutputHead:
    """The first ``limit`` bytes of an output (and its total size); the rest is read and dropped."""

    def __init__(self, limit: int):
        self.limit = limit
        self.total = 0
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        room = self.limit - len(self._buf)
        if room > 0:
            self._buf += data[:room]

    def data(self) -> bytes:
        return bytes(self._buf)


def wait_reading(proc: subprocess.Popen, sinks: dict[int, OutputTail | OutputHead], timeout: float | None,
                 progress: Callable[[], float | None] | None = None) -> int:
    """Wait for ``proc`` to exit (TimeoutExpired after ``timeout``) while reading its output pipes,
    each into its sink. Woken by the exit itself (a pidfd) and by output; the end of the output is
    not waited for: a child the process left in the background may hold a pipe open for ever.
    ``progress`` is called after each wake-up and returns when (monotonic) it wants to be called
    again, or None (at the next output)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        pidfd: int | None = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # not Linux >= 5.3, or the process is already reaped
        pidfd = None
    poller = select.poll()
    for fd in sinks:
        poller.register(fd, select.POLLIN)
    if pidfd is not None:
        poller.register(pidfd, select.POLLIN)
    try:
        while True:
            if pidfd is None and proc.poll() is not None:
                break
            wait_ms: float | None = None
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise subprocess.TimeoutExpired(proc.args, timeout or 0)
                wait_ms = left * 1000
            if pidfd is None:  # no exit notification: look every 50 ms
                wait_ms = 50 if wait_ms is None else min(wait_ms, 50)
            again = progress() if progress is not None else None
            if again is not None:
                until = max(0.0, (again - time.monotonic()) * 1000)
                wait_ms = until if wait_ms is None else min(wait_ms, until)
            exited = False
            for fd, _ in poller.poll(wait_ms):
                if fd in sinks:
                    data = os.read(fd, _READ_CHUNK)
                    if data:
                        sinks[fd].feed(data)
                    else:  # every writer closed it: only the exit is left to wait for
                        poller.unregister(fd)
                else:
                    exited = True
            if exited:
                break
    finally:
        if pidfd is not None:
            os.close(pidfd)
    return proc.wait()


def drain(sinks: dict[int, OutputTail | OutputHead], limit: int = 16 * _READ_CHUNK) -> None:
    """Read what is in the pipes now, without waiting for writers (at most ``limit`` bytes each: a
    writer that keeps writing must not keep trigctl reading)."""
    for fd, sink in sinks.items():
        os.set_blocking(fd, False)
        read = 0
        while read < limit:
            try:
                data = os.read(fd, _READ_CHUNK)
            except OSError:  # BlockingIOError: nothing more now
                break
            if not data:
                break
            sink.feed(data)
            read += len(data)

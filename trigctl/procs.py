"""Process groups: start tasks in their own group, kill whole groups, and recognise them after a crash."""

from __future__ import annotations

import builtins
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

try:
    import _posixsubprocess
except ImportError:  # not POSIX
    _posixsubprocess = None  # type: ignore[assignment]


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


def kill_group(pgid: int, grace: float = 5.0, proc: subprocess.Popen | Child | None = None) -> None:
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


def terminate_group(proc: subprocess.Popen | Child, grace: float) -> None:
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


# ------------------------------------------------------------------------------ starting tasks

# The argument list of _posixsubprocess.fork_exec that Popen passes on CPython 3.11 to 3.13 (3.10's
# lacks process_group and allow_vfork; later ones may change it): elsewhere spawn() is Popen.
_FORK_EXEC = (_posixsubprocess is not None and sys.implementation.name == "cpython"
              and (3, 11) <= sys.version_info[:2] <= (3, 13))
_reap_lock = threading.Lock()
_unreaped: list[int] = []  # children whose Child was dropped before they were reaped (see Child.__del__)


class Child:
    """A started process (what spawn() gives): ``pid``, ``args``, ``returncode``, ``poll()`` and
    ``wait(timeout)`` as Popen's, for a child whose pipes the caller owns."""

    __slots__ = ("pid", "args", "returncode")

    def __init__(self, pid: int, args: list[str]):
        self.pid, self.args = pid, args
        self.returncode: int | None = None

    def _reaped(self, flags: int) -> int | None:
        try:
            pid, status = os.waitpid(self.pid, flags)
        except ChildProcessError:  # reaped elsewhere (SIGCHLD ignored): the exit status is lost, as with Popen
            self.returncode = 0
            return 0
        if pid == self.pid:
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def poll(self) -> int | None:
        return self.returncode if self.returncode is not None else self._reaped(os.WNOHANG)

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is not None:
            return self.returncode
        if timeout is not None:
            deadline = time.monotonic() + timeout
            delay = 0.0005
            while self._reaped(os.WNOHANG) is None:  # as Popen.wait(timeout): look with a growing pause
                left = deadline - time.monotonic()
                if left <= 0:
                    raise subprocess.TimeoutExpired(self.args, timeout)
                delay = min(delay * 2, left, 0.05)
                time.sleep(delay)
            return self.returncode  # type: ignore[return-value]
        code = self._reaped(0)
        assert code is not None
        return code

    def __del__(self) -> None:
        if self.returncode is None:  # not reaped (stuck in the kernel past its grace): the next spawn tries
            _unreaped.append(self.pid)


def _reap_dropped() -> None:
    # One thread at a time, and a PID leaves the list as it is reaped: once reaped, the PID can be
    # handed to a new child, whose exit another thread must not collect.
    if not _reap_lock.acquire(blocking=False):
        return
    try:
        for pid in list(_unreaped):
            try:
                done = os.waitpid(pid, os.WNOHANG)[0] == pid
            except ChildProcessError:
                done = True
            if done:
                _unreaped.remove(pid)
    finally:
        _reap_lock.release()


def spawn(argv: list[str], cwd: str, env: dict[bytes, bytes], stdin: int, stdout: int) -> Child | subprocess.Popen:
    """Start ``argv`` in a new session (its own process group) with stdin and stdout (stderr: the
    same) on these descriptors and no other descriptor open: ``Popen(argv, cwd=cwd, env=env,
    stdin=stdin, stdout=stdout, stderr=STDOUT, start_new_session=True)``, the same errors
    (OSError, with the program or ``cwd`` as its filename; ValueError for a NUL byte).

    On CPython 3.11-3.13 without Popen's Python side: Popen encodes every environment variable
    (two ``os.fsencode`` calls each, ~100 a task) and builds its object, about half of what
    starting a short task cost trigctl's parent process. The child is started the same way
    (``_posixsubprocess.fork_exec``: vfork, signals restored, descriptors closed)."""
    if not _FORK_EXEC:
        return subprocess.Popen(argv, cwd=cwd, env=env, stdin=stdin, stdout=stdout, stderr=subprocess.STDOUT,
                                start_new_session=True)
    if _unreaped:
        _reap_dropped()
    sys.audit("subprocess.Popen", argv[0], argv, cwd, env)
    env_list = []
    for k, v in env.items():
        if b"=" in k:
            raise ValueError("illegal environment variable name")
        env_list.append(k + b"=" + v)
    executable = os.fsencode(argv[0])
    if os.path.dirname(executable):
        executables: tuple[bytes, ...] = (executable,)
    else:  # as Popen (os._execvpe): looked up in the PATH the child gets
        executables = tuple(os.path.join(os.fsencode(d), executable) for d in os.get_exec_path(env))  # type: ignore[arg-type]
    err_r, err_w = os.pipe()  # the child's exec failure, as "ExceptionName:hex errno:message"
    low = []
    while err_w < 3:  # must not land on a standard descriptor of the child
        low.append(err_w)
        err_w = os.dup(err_w)
    for fd in low:
        os.close(fd)
    try:
        try:
            pid = _posixsubprocess.fork_exec(
                argv, executables, True, (err_w,), cwd, env_list,
                stdin, -1, -1, stdout, -1, stdout, err_r, err_w,
                True, True, -1, None, None, None, -1, None,  # type: ignore[arg-type]
                getattr(subprocess, "_USE_VFORK", True))
        finally:
            os.close(err_w)
        data = bytearray()
        while True:
            part = os.read(err_r, 50000)
            data += part
            if not part or len(data) > 50000:
                break
    finally:
        os.close(err_r)
    child = Child(pid, argv)
    if data:
        child.wait()
        raise _child_error(bytes(data), argv[0], cwd)
    return child


def _child_error(data: bytes, program: str, cwd: str) -> Exception:
    """The exception Popen raises for what the child wrote to its error pipe."""
    try:
        name, hex_errno, message = data.split(b":", 2)
        text = message.decode()
    except ValueError:
        return subprocess.SubprocessError(f"Bad exception data from child: {data!r}")
    kind = getattr(builtins, name.decode("ascii", "replace"), subprocess.SubprocessError)
    if not (isinstance(kind, type) and issubclass(kind, Exception)):
        kind = subprocess.SubprocessError
    if issubclass(kind, OSError) and hex_errno:
        number = int(hex_errno, 16)
        filename = cwd if text == "noexec" else program  # "noexec": chdir(cwd) failed
        return kind(number, os.strerror(number) if number else ("" if text == "noexec" else text), filename)
    return kind(text)


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


def wait_reading(proc: subprocess.Popen | Child, sinks: dict[int, OutputTail | OutputHead], timeout: float | None,
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

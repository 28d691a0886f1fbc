"""Process groups: start tasks in their own group, kill whole groups, and recognise them after a crash."""

from __future__ import annotations

import os
import signal
import time


def proc_start_time(pid: int) -> str | None:
    """The kernel's start time of a process (field 22 of /proc/PID/stat), to tell a reused PID apart."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    rest = data[data.rfind(")") + 2 :].split()
    return rest[19] if len(rest) > 19 else None


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_group(pgid: int, grace: float = 5.0) -> None:
    """SIGTERM the group, then SIGKILL whatever is left after ``grace`` seconds."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not group_alive(pgid):
            return
        time.sleep(0.02)  # polling a foreign group: there is no handle to wait on
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
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
    if not group_alive(pgid):
        return False
    kill_group(pgid, grace)
    return True

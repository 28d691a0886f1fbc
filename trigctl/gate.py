"""The start gate of a task process: it waits for trigctl's go before it becomes the task.

A task must not run before its process group is recorded in the state: if trigctl died in between,
the next start could neither stop the task nor keep its rerun from overlapping it. CPython starts
processes with vfork (or posix_spawn), which leave no room for waiting between the fork and the
exec, so the process trigctl starts first is a gate: it reads one byte from its stdin (a pipe that
trigctl writes once the record is committed), then makes /dev/null its stdin and execs the task.
If trigctl dies first, the gate reads EOF and exits 125 without running anything.

The gate was ``/bin/sh -c 'read -r _ || exit 125; exec "$@" </dev/null'``: one more exec of a
dynamically linked shell per task, which cost about as much CPU as starting the task itself. On
x86-64 Linux it is now a 1.5 KB static program (``_gate/gate.c``, no libc; built with the command
below) that does the same with a handful of system calls, and execs the program as a shell's exec
would: a name without ``/`` is looked up in the task's PATH, a file without ``#!`` runs through
/bin/sh, "not found" exits 127 and "cannot run" 126 with a line on the task's output. It is
copied into trigctl's private run directory (mode 0700) and tried once; where it cannot run there
(another architecture, a ``noexec`` mount) the shell gate is used. A ``run:`` task is a shell
already: its gate goes before its own script, on its first line (:data:`SHELL_GATE_LINE`).

Build (gcc 12, x86-64)::

    gcc -Os -static -nostdlib -ffreestanding -fno-builtin -fno-stack-protector \\
        -fno-asynchronous-unwind-tables -fno-pie -no-pie -fcf-protection=none \\
        -Wl,--build-id=none -Wl,-z,noseparate-code -s -o trigctl/_gate/gate-x86_64 trigctl/_gate/gate.c
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

SHELL_GATE = 'read -r _ || exit 125; exec "$@" </dev/null'
SHELL_GATE_ARGV = ("/bin/sh", "-c", SHELL_GATE, "trigctl-task")
# Put before a `run:` task's script, on its first line (so the shell's line numbers in its messages
# stay the script's own): the same gate, then the script with stdin from /dev/null.
SHELL_GATE_LINE = "read -r _ || exit 125; exec </dev/null; "
BINARY = Path(__file__).resolve().parent / "_gate" / "gate-x86_64"
SOURCE = BINARY.parent / "gate.c"
# The build command of the docstring: the committed binary is what these give of SOURCE (a test
# rebuilds it where gcc is found and compares the bytes).
BUILD_ARGS = ("-Os", "-static", "-nostdlib", "-ffreestanding", "-fno-builtin", "-fno-stack-protector",
              "-fno-asynchronous-unwind-tables", "-fno-pie", "-no-pie", "-fcf-protection=none",
              "-Wl,--build-id=none", "-Wl,-z,noseparate-code", "-s")


def native_gate(dirs: list[str]) -> str | None:
    """The static gate, copied into the first of ``dirs`` where it runs; None where none does."""
    if not sys.platform.startswith("linux") or platform.machine() not in ("x86_64", "AMD64") or not BINARY.is_file():
        return None
    for d in dirs:
        path = os.path.join(d, "gate")
        try:
            shutil.copyfile(BINARY, path)
            os.chmod(path, 0o700)
            done = subprocess.run([path, "true"], input=b"\n", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  timeout=10)
        except (OSError, subprocess.SubprocessError):
            continue
        if done.returncode == 0:
            return path
    return None


def gate_argv(dirs: list[str]) -> tuple[str, ...]:
    """What goes before a task's argv: the static gate where it runs, else the shell gate."""
    path = native_gate(dirs)
    return (path,) if path else SHELL_GATE_ARGV

"""trigctl.procs.spawn: a task's start without Popen's Python side, compared with Popen itself
(real processes): the same child (its session, descriptors, environment, working directory), the
same exit codes, the same errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from conftest import wait_for

from trigctl import procs
from trigctl.procs import Child, spawn

ENV = {b"PATH": os.environb.get(b"PATH", b"/usr/bin:/bin"), b"ONE": b"1", b"SPACED": b"a b=c"}


def _popen(argv, cwd, env, stdin, stdout):
    return subprocess.Popen(argv, cwd=cwd, env=env, stdin=stdin, stdout=stdout, stderr=subprocess.STDOUT,
                            start_new_session=True)


STARTS = [pytest.param(spawn, id="spawn"), pytest.param(_popen, id="popen")]


def _run(start, argv, cwd, env=ENV, stdin_data=b""):
    """Start through ``start``, feed stdin, return (exit code, output, pid, pgid, sid of the child)."""
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    try:
        proc = start(argv, cwd, env, in_r, out_w)
    finally:
        os.close(in_r)
        os.close(out_w)
    os.write(in_w, stdin_data)
    os.close(in_w)
    with os.fdopen(out_r, "rb") as f:
        out = f.read()
    return proc.wait(), out, proc


def test_fork_exec_is_used_where_its_arguments_are_known():
    assert procs._FORK_EXEC == ((3, 11) <= sys.version_info[:2] <= (3, 13) and sys.implementation.name == "cpython")


@pytest.mark.parametrize("start", STARTS)
def test_the_child_is_the_same(start, tmp_path):
    """Own session and group, cwd, exactly the given environment, stdin and stdout (stderr too) on
    the given descriptors, no other descriptor of the parent open, default signal dispositions."""
    leak_r, leak_w = os.pipe()  # not inheritable anyway; an inheritable one must not leak either
    os.set_inheritable(leak_w, True)
    try:
        script = ("import os, sys; d = sys.stdin.read(); "
                  "print(os.getcwd(), os.getpgid(0) == os.getpid(), os.getsid(0) == os.getpid()); "
                  "print(sorted(k for k in os.environ if k not in ('LC_CTYPE', 'PATH'))); "
                  "print(repr(d), sorted(int(f) for f in os.listdir('/proc/self/fd'))[:4]); "
                  "sys.stdout.flush(); print('err', file=sys.stderr)")
        code, out, proc = _run(start, [sys.executable, "-I", "-c", script], str(tmp_path), stdin_data=b"in")
    finally:
        os.close(leak_r)
        os.close(leak_w)
    assert code == 0
    lines = out.decode().splitlines()
    assert lines[0] == f"{tmp_path} True True"
    assert lines[1] == "['ONE', 'SPACED']"
    assert lines[2].startswith("'in' [0, 1, 2, 3]")  # 3: listdir's own descriptor
    assert lines[3] == "err"
    # SIGPIPE, which Python ignores, is restored for the child (as Popen's restore_signals)
    code, out, _ = _run(start, ["grep", "SigIgn", "/proc/self/status"], str(tmp_path))
    assert code == 0 and int(out.split()[1], 16) & (1 << (signal.SIGPIPE - 1)) == 0


@pytest.mark.parametrize("start", STARTS)
def test_exit_codes_and_signals(start, tmp_path):
    assert _run(start, ["/bin/sh", "-c", "exit 7"], str(tmp_path))[0] == 7
    assert _run(start, ["/bin/sh", "-c", "kill -KILL $$"], str(tmp_path))[0] == -signal.SIGKILL


@pytest.mark.parametrize("start", STARTS)
def test_a_program_is_looked_up_in_the_path_it_gets(start, tmp_path):
    code, out, _ = _run(start, ["sh", "-c", "echo found"], str(tmp_path))
    assert (code, out) == (0, b"found\n")


def _error(start, argv, cwd, env=ENV) -> BaseException:
    in_r, in_w = os.pipe()
    try:
        with pytest.raises((OSError, ValueError)) as e:
            start(argv, cwd, env, in_r, in_w)
    finally:
        os.close(in_r)
        os.close(in_w)
    return e.value


def _same(a: BaseException, b: BaseException) -> None:
    assert (type(a), str(a), getattr(a, "errno", None), getattr(a, "strerror", None), getattr(a, "filename", None)) == \
        (type(b), str(b), getattr(b, "errno", None), getattr(b, "strerror", None), getattr(b, "filename", None))


def test_errors_are_popens(tmp_path):
    missing = str(tmp_path / "no-such-dir")
    cases = [
        (["/bin/true"], missing, ENV),  # chdir fails: the filename is the cwd
        ([str(tmp_path / "no-such-program")], str(tmp_path), ENV),  # exec fails: the program
        (["no-such-program-xyz"], str(tmp_path), ENV),  # not in PATH
        ([str(tmp_path)], str(tmp_path), ENV),  # a directory: permission denied
        (["/bin/echo", "a\x00b"], str(tmp_path), ENV),  # NUL in an argument
        (["/bin/true"], str(tmp_path), {**ENV, b"A=B": b"1"}),  # '=' in a name
        (["/bin/true"], str(tmp_path), {**ENV, b"NUL": b"a\x00b"}),  # NUL in a value
    ]
    for argv, cwd, env in cases:
        _same(_error(spawn, argv, cwd, env), _error(_popen, argv, cwd, env))


def test_wait_with_a_timeout_and_poll(tmp_path):
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    proc = spawn(["/bin/sh", "-c", "read -r _; exit 3"], str(tmp_path), ENV, in_r, out_w)
    os.close(in_r)
    os.close(out_w)
    try:
        assert proc.poll() is None
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=0.05)
        os.write(in_w, b"\n")
        assert proc.wait(timeout=30) == 3
        assert proc.poll() == 3 and proc.returncode == 3
    finally:
        os.close(in_w)
        os.close(out_r)


def test_a_child_dropped_unreaped_is_reaped_by_a_later_spawn(tmp_path):
    if not procs._FORK_EXEC:
        pytest.skip("Popen reaps its own")
    in_r, in_w = os.pipe()
    null = os.open(os.devnull, os.O_WRONLY)
    proc = spawn(["/bin/sh", "-c", "read -r _"], str(tmp_path), ENV, in_r, null)
    os.close(in_r)
    os.close(null)
    pid = proc.pid
    assert isinstance(proc, Child)
    del proc  # dropped while running (as a group stuck past its grace)
    assert pid in procs._unreaped
    os.close(in_w)  # EOF: it exits
    wait_for(lambda: _state(pid) == "Z", message="the dropped child to exit")
    r, w = os.pipe()
    spawn(["/bin/true"], str(tmp_path), ENV, r, w).wait()
    os.close(r)
    os.close(w)
    assert pid not in procs._unreaped
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    return data[data.rfind(b")") + 2:].split()[0].decode()

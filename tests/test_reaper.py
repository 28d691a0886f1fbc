"""The reaper (trigctl.reaper): runs as generators on a few threads, real processes, no thread per run."""

from __future__ import annotations

import os
import subprocess
import threading
import time

from conftest import wait_for

from trigctl import reaper as reaper_mod
from trigctl.config import load_config
from trigctl.procs import OutputTail, spawn
from trigctl.reaper import Blocking, Reaper, Sleep, WaitExit
from trigctl.store.sqlite import SQLiteStore
from trigctl.workflows import REAPERS, WorkflowRunner


def _start(argv, at: int | None = None):
    """A real child whose output is a pipe: (child, the pipe's read end, as number ``at`` if given)."""
    gate_r, gate_w = os.pipe()
    out_r, out_w = os.pipe()
    if at is not None:
        os.dup2(out_r, at, inheritable=False)
        os.close(out_r)
        out_r = at
    os.close(gate_w)
    try:
        child = spawn(argv, "/", dict(os.environb), gate_r, out_w)
    finally:
        os.close(gate_r)
        os.close(out_w)
    return child, out_r


def _drive(reaper, gen_fn, key=None):
    """Start a generator on the reaper; returns a dict that gets its 'result' (or 'error')."""
    box: dict = {}

    def gen():
        try:
            box["result"] = yield from gen_fn()
        except BaseException as e:  # noqa: BLE001 - the test reads it
            box["error"] = e
        finally:
            box["done"] = True

    reaper.start(gen(), key)
    return box


def test_a_process_exit_its_output_and_its_timeout():
    r = Reaper()

    def task():
        child, fd = _start(["/bin/sh", "-c", "echo hello; echo world; exit 3"])
        sink = OutputTail()
        try:
            code = yield WaitExit(child, fd, sink, 30)
        finally:
            os.close(fd)
        return code, sink.text()

    def hang():
        child, fd = _start(["sleep", "30"])
        try:
            yield WaitExit(child, fd, OutputTail(), 0.1)
        except subprocess.TimeoutExpired:
            child_pid = child.pid
            os.kill(child_pid, 9)
            child.wait()
            return "timed out"
        finally:
            os.close(fd)
        return "exited"

    a, b = _drive(r, task), _drive(r, hang)
    wait_for(lambda: a.get("done") and b.get("done"), message="both generators")
    assert a["result"] == (3, "hello\nworld\n")
    assert b["result"] == "timed out"


def test_progress_is_called_while_output_comes_and_again_when_it_asks():
    r = Reaper()
    calls: list[float] = []

    def task():
        child, fd = _start(["/bin/sh", "-c", "echo a; sleep 0.3; echo b"])
        sink = OutputTail()

        def progress():
            calls.append(time.monotonic())
            return time.monotonic() + 0.05 if len(calls) < 5 else None

        try:
            return (yield WaitExit(child, fd, sink, 30, progress))
        finally:
            os.close(fd)

    box = _drive(r, task)
    wait_for(lambda: box.get("done"), message="the task")
    assert box["result"] == 0
    assert len(calls) >= 5  # at the start, at output, and at the times it asked for


def test_a_sleep_ends_at_its_time_or_at_once_on_cancel():
    r = Reaper()
    ev = threading.Event()
    key = object()

    def sleeper(seconds, event):
        return (yield Sleep(seconds, event))

    short = _drive(r, lambda: sleeper(0.05, threading.Event()))
    long_ = _drive(r, lambda: sleeper(60, ev), key)
    wait_for(lambda: short.get("done"), message="the short sleep")
    assert short["result"] is False
    time.sleep(0.05)  # not a timing assertion: let the long sleep reach its wait (either order works)
    ev.set()
    r.cancelled(key)
    wait_for(lambda: long_.get("done"), timeout=5, message="the cancelled sleep")
    assert long_["result"] is True


def test_a_cancel_before_the_sleep_begins_is_not_missed():
    r = Reaper()
    ev = threading.Event()
    ev.set()  # cancelled() was called before the run slept: nobody will call it again

    def sleeper():
        return (yield Sleep(60, ev))

    box = _drive(r, sleeper, object())
    wait_for(lambda: box.get("done"), timeout=5, message="the sleep")
    assert box["result"] is True


def test_blocking_calls_run_elsewhere_and_their_errors_are_thrown_in():
    r = Reaper()
    release = threading.Event()

    def fails():
        raise ValueError("from the call")

    def waits():
        return (yield Blocking(release.wait, 30))

    def raises():
        return (yield Blocking(fails))

    w = _drive(r, waits)
    e = _drive(r, raises)
    wait_for(lambda: e.get("done"), message="the failing call")  # not held up by the waiting one
    assert isinstance(e["error"], ValueError)
    assert not w.get("done")
    release.set()
    wait_for(lambda: w.get("done"), message="the waiting call")
    assert w["result"] is True


def test_a_generator_that_fails_outside_its_handling_does_not_stop_the_others():
    r = Reaper()

    def broken():
        yield Sleep(0.01, threading.Event())
        raise RuntimeError("a bug")

    def unknown():
        yield "not a request"

    r.start(broken())
    r.start(unknown())
    box = _drive(r, lambda: (yield Sleep(0.02, threading.Event())))
    wait_for(lambda: box.get("done"), message="a healthy generator")
    assert box["result"] is False


def test_an_exit_then_its_eof_in_one_batch_never_block_on_the_next_process():
    """A process exits, and its pipe's EOF comes (a background child closing it) while the reaper is
    busy, so both are in one epoll batch, the exit first. The run resumes on the exit, closes the
    pipe and starts its next process, whose pipe gets the same number: the EOF event left in the
    batch must not become a blocking read of the new pipe (which stays open for 30 s)."""
    r = Reaper()
    state: dict = {}

    def run():
        child, fd = _start(["/bin/sh", "-c", "(sleep 0.2) & exit 0"], at=900)
        try:
            yield WaitExit(child, fd, OutputTail(), 30)
        finally:
            os.close(fd)
        state["old_fd"] = fd
        child, fd = _start(["sleep", "30"], at=900)
        state["new_fd"], state["child"] = fd, child
        try:
            yield WaitExit(child, fd, OutputTail(), 60)
        finally:
            os.close(fd)

    def busy():  # holds the reaper thread while the first process exits and its pipe closes
        child, fd = _start(["true"])
        try:
            yield WaitExit(child, fd, OutputTail(), 30, lambda: time.sleep(0.5))
        finally:
            os.close(fd)

    first = _drive(r, run)
    _drive(r, busy)
    wait_for(lambda: "child" in state, message="the second process")
    probe = _drive(r, lambda: (yield Sleep(0, threading.Event())))
    try:
        wait_for(lambda: probe.get("done"), timeout=5, message="the reaper to answer")
    finally:
        os.kill(state["child"].pid, 9)
    wait_for(lambda: first.get("done"), message="the run")


def test_the_thread_exits_when_idle_and_the_next_run_starts_another(monkeypatch):
    monkeypatch.setattr(reaper_mod, "IDLE_EXIT", 0.05)
    r = Reaper()
    box = _drive(r, lambda: (yield Sleep(0, threading.Event())))
    wait_for(lambda: box.get("done"), message="the first")
    wait_for(lambda: r._thread is None, message="the idle reaper to exit")
    again = _drive(r, lambda: (yield Sleep(0, threading.Event())))
    wait_for(lambda: again.get("done"), message="a run after the exit")


def test_sixteen_running_tasks_take_no_thread_each(write_yaml):
    cfg = load_config(write_yaml("version: 1\nmax_concurrent_runs: 16\nworkflows:\n"
                                 "  wf:\n    tasks:\n      - argv: [sleep, '30']\n"))
    store = SQLiteStore(cfg.state_location())
    store.sync_triggers(["t"])
    runner = WorkflowRunner(cfg, store, kill_grace=1.0)
    before = threading.active_count()
    for n in range(16):
        store.enqueue_run("t", "wf", {"n": n}, time.time())
    assert len(runner.pump()) == 16

    def all_running():
        runs = [store.get_run(i) for i in range(1, 17)]
        return all(run.tasks and run.tasks[0].get("pid") for run in runs)

    wait_for(all_running, message="16 tasks started")
    # the reapers and the run log's writer: not one thread per run
    assert threading.active_count() - before <= REAPERS + 1
    runner.cancel_all()
    assert runner.join(30)
    assert {store.get_run(i).status for i in range(1, 17)} == {"cancelled"}


def test_an_exit_seen_late_is_not_a_timeout():
    """The reaper was busy (another run's callback) while a task exited before its deadline; when it
    looks, the deadline has passed too: the exit wins (a timeout would fail it and maybe rerun it)."""
    r = Reaper()

    def quick():
        child, fd = _start(["sleep", "0.05"])
        try:
            return (yield WaitExit(child, fd, OutputTail(), 0.5))
        except subprocess.TimeoutExpired:
            return "timed out"
        finally:
            os.close(fd)

    def hold():  # holds the reaper for 1.5 s, past the quick task's exit and its deadline
        child, fd = _start(["true"])
        try:
            yield WaitExit(child, fd, OutputTail(), 30, lambda: time.sleep(1.5))
        finally:
            os.close(fd)

    box = _drive(r, quick)
    _drive(r, hold)
    wait_for(lambda: box.get("done"), message="the quick task")
    assert box["result"] == 0


def test_without_a_pidfd_the_exit_is_looked_for_and_timers_do_not_pile_up(monkeypatch):
    def no_pidfd(pid, flags=0):
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    r = Reaper()
    heap_sizes: list[int] = []

    def task():
        child, fd = _start(["/bin/sh", "-c", "for i in 1 2 3 4 5 6; do echo $i; sleep 0.1; done"])
        sink = OutputTail()

        def progress():
            assert r._loop is not None
            heap_sizes.append(len(r._loop.timers))
            return time.monotonic() + 0.01

        try:
            code = yield WaitExit(child, fd, sink, 30, progress)
        finally:
            os.close(fd)
        return code, sink.text()

    box = _drive(r, task)
    wait_for(lambda: box.get("done"), message="the task")
    assert box["result"] == (0, "1\n2\n3\n4\n5\n6\n")
    assert len(heap_sizes) > 20  # progress was asked for again and again
    assert max(heap_sizes) <= 8  # one poll timer, one progress timer, a deadline: not a chain per call


def test_stale_deadlines_of_quick_tasks_are_dropped():
    r = Reaper()

    def quick():
        child, fd = _start(["true"])
        try:
            return (yield WaitExit(child, fd, OutputTail(), 3600))
        finally:
            os.close(fd)

    for _ in range(200):
        box = _drive(r, quick)
        wait_for(lambda b=box: b.get("done"), message="a quick task")
    assert r._loop is not None
    assert len(r._loop.timers) <= 65  # 200 hour-long deadlines were set; the dead ones went


def test_a_failing_progress_callback_is_logged_and_the_task_still_ends(caplog):
    r = Reaper()

    def task():
        child, fd = _start(["/bin/sh", "-c", "echo out; exit 4"])
        sink = OutputTail()

        def progress():
            raise RuntimeError("the state is gone")

        try:
            code = yield WaitExit(child, fd, sink, 30, progress)
        finally:
            os.close(fd)
        return code, sink.text()

    box = _drive(r, task)
    wait_for(lambda: box.get("done"), message="the task")
    assert box["result"] == (4, "out\n")
    assert "saving a task's output so far failed" in caplog.text

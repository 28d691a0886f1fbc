"""The run threads' shared writes (trigctl.runlog) and the start gate (trigctl.gate), with a real
SQLite state and real processes."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import threading
import time

import pytest
from conftest import wait_for

from trigctl.gate import SHELL_GATE_ARGV, native_gate
from trigctl.runlog import RunLog
from trigctl.store.base import FireRequest, PollStats, dedupe_hash
from trigctl.store.sqlite import SQLiteStore

NOW = 1_800_000_000.0


def _store(tmp_path) -> SQLiteStore:
    store = SQLiteStore(str(tmp_path / "state.db"))
    store.sync_triggers(["t"])
    store.start_process()
    store.acquire_triggers(["t"], NOW)
    return store


def _running(store, n: int) -> list[int]:
    reqs = [FireRequest({"n": i}, dedupe_hash("t", {"n": i}, None), "running", 3) for i in range(n)]
    store.record_fires("t", "w", reqs, PollStats("t"), NOW, None, {})
    return [r.id for r in store.claim_queued(NOW, n)]


def test_steps_posted_while_a_write_is_under_way_share_the_next_commit(tmp_path):
    """The first thread writes its own step at once; the others, arriving meanwhile, are written
    together in one transaction after it, each run's steps in the order they were posted."""
    store = _store(tmp_path)
    runs = _running(store, 6)
    batches: list[list[str]] = []
    first_in, release = threading.Event(), threading.Event()
    apply = store.apply_run_steps

    writers: list[threading.Thread] = []

    def apply_run_steps(steps):
        batches.append([f"{name}:{args[0]}" for name, args in steps])
        writers.append(threading.current_thread())
        if len(batches) == 1:
            first_in.set()
            assert release.wait(10)
        return apply(steps)

    store.apply_run_steps = apply_run_steps  # type: ignore[method-assign]
    log = RunLog(store)
    done: list[tuple[int, object]] = []
    writer = threading.Thread(target=log.call, args=("task_started", runs[0], 0, "a", NOW, None, None, None))
    writer.start()
    assert first_in.wait(10)
    for rid in runs[1:]:  # posted while the first write is under way: they only queue
        log.post([("task_started", (rid, 0, "a", NOW, None, None, None)),
                  ("task_finished", (rid, 0, "succeeded", 0, NOW + 1, "out", 1)),
                  ("finish_run", (rid, "succeeded", NOW + 1, None))],
                 lambda result, error, rid=rid: done.append((rid, result if error is None else error)))
    assert done == [] and len(batches) == 1
    release.set()
    writer.join(10)
    assert not writer.is_alive()
    wait_for(lambda: len(done) == 5, message="the drain thread's write")
    assert len(batches) == 2 and log.commits == 2 and log.steps == 1 + 3 * 5
    # The run thread wrote its own step only; what came meanwhile was written by another thread, so
    # a run thread never keeps writing for the others while its task waits.
    assert writers[0] is writer and writers[1] is not writer and writers[1].name == "trigctl-runlog"
    assert batches[1] == [f"{s}:{rid}" for rid in runs[1:] for s in ("task_started", "task_finished", "finish_run")]
    assert done == [(rid, True) for rid in runs[1:]]  # each run's callback once its end is written
    for rid in runs[1:]:
        run = store.get_run(rid)
        assert run.status == "succeeded" and run.tasks[0]["output_tail"] == "out"
    assert store.get_run(runs[0]).tasks[0]["status"] == "running"
    store.close()


def test_a_waited_step_raises_its_own_error_and_the_others_are_written(tmp_path):
    store = _store(tmp_path)
    (rid,) = _running(store, 1)
    log = RunLog(store)
    with pytest.raises(Exception):  # noqa: B017 - the driver's own error type
        log.call("task_started", object(), 0, "a", NOW, None, None, None,
                 before=[("task_started", (rid, 0, "a", NOW, 123, 123, "9"))])
    assert store.get_run(rid).tasks[0]["pgid"] == 123
    assert log.call("finish_run", rid, "succeeded", NOW + 1, None) is True
    errors = []
    log.post([("finish_run", (object(), "failed", NOW, None))], lambda r, e: errors.append(e))
    assert len(errors) == 1 and isinstance(errors[0], Exception)
    store.close()


# ------------------------------------------------------------------- runs claimed by their fire


def _fires(store, ns):
    reqs = [FireRequest({"n": i}, dedupe_hash("t", {"n": i}, None), "running", 3) for i in ns]
    return [r.run_id for r in store.record_fires("t", "w", reqs, PollStats("t"), NOW, None, {})]


def test_fires_claim_their_runs_in_their_own_transaction_oldest_queued_first(tmp_path):
    """With room (Store.claim_room), record_fires marks runs running and owned in the fire's own
    transaction, the oldest queued first (a run queued before keeps its turn), up to the room less
    what was claimed and not yet taken; take_claimed hands each claimed run over once."""
    store = _store(tmp_path)
    old = _fires(store, [0])  # no claim_room: queued
    room = [2]
    store.claim_room = lambda: (room[0], NOW + 5)
    new = _fires(store, [1, 2, 3])
    assert [store.get_run(r).status for r in old + new] == ["running", "running", "queued", "queued"]
    room[0] = 3  # two claimed, not taken yet: one more, the oldest queued (not this fire's)
    (fourth,) = _fires(store, [4])
    claimed = store.take_claimed()
    assert [r.id for r in claimed] == old + new[:2]
    assert store.get_run(new[2]).status == "queued" and store.get_run(fourth).status == "queued"
    assert all(r.status == "running" and r.started_at == NOW + 5 and r.owner_pid == os.getpid() for r in claimed)
    assert store.take_claimed() == []
    room[0] = 0
    (later,) = _fires(store, [5])
    assert store.get_run(later).status == "queued" and store.take_claimed() == []
    store.close()


def test_a_claim_after_the_queue_was_seen_empty_needs_no_transaction_until_a_run_may_be_queued(tmp_path):
    """claim_queued that found the queue empty remembers it: the pump asks after every fire and
    every run's end, and those asks no longer cost a write transaction each. Anything that may queue
    a run ends that: a fire without room, a requeue, a commit by another connection."""
    store = _store(tmp_path)
    statements: list[str] = []
    store._conn.set_trace_callback(statements.append)

    def claim() -> tuple[list[int], bool]:
        statements.clear()
        ids = [r.id for r in store.claim_queued(NOW, 4)]
        return ids, any(s.startswith("BEGIN") for s in statements)

    assert claim() == ([], True)  # at start: runs may be queued from before
    assert claim() == ([], False)  # seen empty
    queued = _fires(store, [0, 1])  # no claim_room: both queued
    assert claim() == (queued, True)
    assert claim() == ([], False)
    room = [2]
    store.claim_room = lambda: (room[0], NOW)
    (a,) = _fires(store, [2])  # claimed by its fire, with room left: nothing else was queued
    assert store.take_claimed()[0].id == a and claim() == ([], False)
    room[0] = 1
    (d,) = _fires(store, [5])  # the room taken exactly: more may be queued, so the next claim looks
    assert store.take_claimed()[0].id == d and claim() == ([], True)
    b, c = _fires(store, [3, 4])  # room for one: the other is queued
    assert store.take_claimed()[0].id == b and claim() == ([c], True)
    assert claim() == ([], False)
    assert store.requeue_unstarted(c)  # (a run none of whose tasks started)
    assert claim() == ([c], True)
    assert claim() == ([], False)
    other = SQLiteStore(str(tmp_path / "state.db"))  # another connection queues a run
    other._conn.execute("UPDATE runs SET status = 'queued' WHERE id = ?", (a,))
    other.close()
    assert claim() == ([a], True)
    store.close()


def test_a_run_claimed_by_its_fire_is_started_by_the_next_pump(tmp_path, write_yaml):
    from trigctl.config import load_config
    from trigctl.workflows import WorkflowRunner

    cfg = load_config(write_yaml("""
        version: 1
        max_concurrent_runs: 1
        workflows:
          w:
            tasks:
              - argv: ['true']
        triggers:
          - {name: t, type: python, callable: "os:getpid", workflow: w}
    """))
    store = SQLiteStore(cfg.state_location())
    store.sync_triggers(["t"])
    runner = WorkflowRunner(cfg, store)
    store.claim_room = lambda: (runner.claim_room(), time.time())
    first, second = _fires(store, [1, 2])  # room for one
    assert store.get_run(second).status == "queued"
    assert [r.id for r in runner.pump()] == [first]
    assert runner.join(30)
    assert store.get_run(first).status == "succeeded"
    assert [r.id for r in runner.pump()] == [second]  # the queued one, by claim_queued
    assert runner.join(30)
    assert store.get_run(second).status == "succeeded"
    store.close()


_CRASH_AFTER_THE_FIRE = """
import os, sys, time
from trigctl.store.base import FireRequest, PollStats, dedupe_hash
from trigctl.store.sqlite import SQLiteStore
store = SQLiteStore(sys.argv[1])
store.sync_triggers(["t"]); store.start_process(); store.acquire_triggers(["t"], time.time())
store.claim_room = lambda: (1, time.time())  # as the loop sets it: room for the fire's run
(res,) = store.record_fires("t", "w", [FireRequest({"n": 1}, dedupe_hash("t", {"n": 1}, None), "running", 3)],
                            PollStats("t"), time.time(), None, {})
assert store.get_run(res.run_id).status == "running"
print(res.run_id)
os._exit(0)  # the loop dies before its pump hands the claimed run to a worker
"""


def test_a_run_its_fire_claimed_that_never_started_is_run_after_a_crash(tmp_path, write_yaml):
    """A fire's run claimed in the fire's transaction is `running` before any task of it starts:
    a crash before the runner takes it leaves a run that did nothing. The next start queues it
    again (queued runs survive restarts) rather than marking it interrupted, which with
    `on_interrupt: mark` would drop the fire."""
    from conftest import run_trigctl

    from trigctl.config import load_config

    path = write_yaml("""
        version: 1
        workflows:
          w:
            tasks:
              - argv: ['true']
        triggers:
          - {name: t, type: python, callable: "os:sync", workflow: w, on_interrupt: mark}
    """)
    state = load_config(path).state_location()
    crashed = subprocess.run([sys.executable, "-c", _CRASH_AFTER_THE_FIRE, state], capture_output=True, text=True, timeout=60)
    assert crashed.returncode == 0, crashed.stderr
    run_id = int(crashed.stdout)
    done = run_trigctl("run", "--once", "-c", str(path), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    store = SQLiteStore(state)
    run = store.get_run(run_id)
    assert (run.status, run.attempt, run.rerun_of) == ("succeeded", 1, None)
    assert [t["status"] for t in run.tasks] == ["succeeded"]
    store.close()


# ------------------------------------------------------------------------------------ the gate

@pytest.fixture(params=["shell", "native"])
def gate(request, tmp_path):
    if request.param == "shell":
        return list(SHELL_GATE_ARGV)
    d = tmp_path / "gatedir"
    d.mkdir()
    path = native_gate([str(d)])
    if path is None:
        pytest.skip("the static gate does not run here (not x86-64 Linux, or a noexec directory)")
    return [path]


def _start(gate, argv, cwd, env=None):
    r, w = os.pipe()
    proc = subprocess.Popen([*gate, *argv], stdin=r, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=cwd,
                            env=env, start_new_session=True)
    os.close(r)
    return proc, w


def test_the_task_runs_only_after_the_go_with_stdin_from_dev_null(gate, tmp_path):
    proc, w = _start(gate, ["sh", "-c", 'touch ran; cat; echo "args:$#:$1"', "x", "one two"], tmp_path)
    time.sleep(0.2)  # no condition to wait on: the point is that nothing happens before the go
    assert not (tmp_path / "ran").exists() and proc.poll() is None
    os.write(w, b"\nmore bytes that the task must not read\n")
    os.close(w)
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0 and (tmp_path / "ran").exists()
    assert out == b"args:1:one two\n"  # cat read /dev/null; arguments arrive exactly


def test_eof_at_the_gate_exits_125_and_runs_nothing(gate, tmp_path):
    proc, w = _start(gate, ["touch", "ran"], tmp_path)
    os.close(w)  # trigctl died before recording the process
    assert proc.wait(timeout=10) == 125
    assert not (tmp_path / "ran").exists()


def test_the_program_is_found_and_run_as_a_shell_exec_would(gate, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "hello-task"
    script.write_text('echo "no shebang: $1"\n')  # no #!: run by /bin/sh
    script.chmod(0o755)
    (bin_dir / "not-exec").write_text("echo never\n")
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}")

    def run(argv):
        proc, w = _start(gate, argv, tmp_path, env)
        os.write(w, b"\n")
        os.close(w)
        out, _ = proc.communicate(timeout=10)
        return proc.returncode, out.decode()

    assert run(["hello-task", "x"]) == (0, "no shebang: x\n")
    assert run([str(script), "y"]) == (0, "no shebang: y\n")
    code, out = run(["no-such-program-xyz"])
    assert code == 127 and "no-such-program-xyz" in out and "not found" in out
    code, out = run([str(bin_dir / "not-exec")])
    assert code == 126 and "not-exec" in out
    code, out = run([f"{script}/below-a-file"])  # ENOTDIR: "not found", as dash says it
    assert code == 127 and "below-a-file" in out


def test_gated_tasks_of_a_real_run_keep_their_shell_semantics(tmp_path, write_yaml, callables):
    """Through WorkflowRunner: a `run:` script's own line numbers, stdin from /dev/null, argv found in
    PATH through the gate; every task row and the run's end written (in shared transactions)."""
    from trigctl.config import load_config

    callables("def f():\n    return None\n", "gatetasks")
    cfg = load_config(write_yaml("""
        version: 1
        workflows:
          w:
            tasks:
              - {name: stdin, run: 'cat; echo "stdin-done $0"'}
              - {name: found, argv: [sh, -c, 'echo "argv {{n}}"']}
              - {name: broken, run: 'no-such-cmd-xyz', continue_on_error: true}
              - {name: last, argv: ['true']}
        triggers:
          - {name: x, type: python, callable: "gatetasks:f", workflow: w}
    """))
    store = SQLiteStore(cfg.state_location())
    batches: list[list[str]] = []
    apply = store.apply_run_steps

    def apply_run_steps(steps):
        # A task's output so far (saved while it runs, when it prints) may come in between: left out.
        batches.append([f"{name}:{args[1]}" for name, args in steps if name != "task_output"])
        return apply(steps)

    store.apply_run_steps = apply_run_steps  # type: ignore[method-assign]
    run = _run_to_its_end(cfg, store, {"n": 5})
    tasks = {t["name"]: t for t in run.tasks}
    assert run.status == "succeeded" and list(tasks) == ["stdin", "found", "broken", "last"]
    assert tasks["stdin"]["output_tail"] == "stdin-done /bin/sh\n"  # cat read /dev/null, not the gate's pipe
    assert tasks["found"]["output_tail"] == "argv 5\n"
    broken = tasks["broken"]
    assert broken["status"] == "failed" and broken["exit_code"] == 127
    assert "no-such-cmd-xyz" in broken["output_tail"] and "1:" in broken["output_tail"]  # the script's own line 1
    assert tasks["last"]["status"] == "succeeded" and all(t["pgid"] is None for t in run.tasks)
    # Each task's end went with the run's next write: the next task's start, or the run's end.
    assert [b for b in batches if b] == [["task_started:0"], ["task_finished:0", "task_started:1"],
                                         ["task_finished:1", "task_started:2"], ["task_finished:2", "task_started:3"],
                                         ["task_finished:3", "finish_run:succeeded"]]
    store.close()


@pytest.mark.skipif(shutil.which("gcc") is None or platform.machine() != "x86_64",
                    reason="no gcc for x86-64 here to rebuild the static gate from its source")
def test_the_committed_gate_is_what_its_source_builds_to(tmp_path):
    """The prebuilt gate-x86_64 is not trusted blindly: built again from gate.c with the documented
    flags, it is the same bytes (the build is reproducible with Debian 12's gcc 12)."""
    from trigctl.gate import BINARY, BUILD_ARGS, SOURCE

    built = tmp_path / "gate"
    done = subprocess.run(["gcc", *BUILD_ARGS, "-o", str(built), str(SOURCE)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert built.read_bytes() == BINARY.read_bytes(), "rebuild trigctl/_gate/gate-x86_64 (see trigctl/gate.py)"


def test_a_cancel_of_a_run_its_fire_claimed_is_not_lost_before_the_pump_takes_it(tmp_path, write_yaml):
    """The loop looks at the state's changes (cancel requests) before its pump in a tick: a `trigctl
    cancel` of a run its fire claimed moments before (running in the state, not yet with a worker)
    still stops it; the request is not dropped for a run the runner does not hold yet."""
    from trigctl.config import load_config
    from trigctl.runner import Runner

    cfg = load_config(write_yaml("""
        version: 1
        workflows:
          w:
            tasks:
              - argv: ['sleep', '30']  # a cancel that came too late would wait for it
        triggers:
          - {name: t, type: python, callable: "os:sync", workflow: w}
    """))
    store = SQLiteStore(cfg.state_location())
    store.sync_triggers(["t"])
    store.start_process()
    store.acquire_triggers(["t"], time.time())
    runner = Runner(cfg, store, install_signals=False)
    store.changes()  # the change feed's baseline, as the loop takes it at start
    (run_id,) = _fires(store, [1])
    assert store.get_run(run_id).status == "running" and runner.workflows.count() == 0
    other = SQLiteStore(cfg.state_location())  # `trigctl cancel`, from another connection
    assert other.request_cancel(run_id, time.time()) == "running"
    other.close()
    runner._watch_state(time.time())
    runner.workflows.pump()
    assert runner.workflows.join(30)
    assert store.get_run(run_id).status == "cancelled"
    store.close()


def test_a_task_whose_row_cannot_be_written_never_runs(tmp_path, write_yaml, callables):
    """The gate opens on the thread that commits the task's row; if that write fails (a full disk),
    the gate's pipe is closed unwritten: the task never runs, its gate is reaped, and the run ends
    failed with the error (a later task does not start either)."""
    from trigctl.config import load_config
    from trigctl.store.base import StateError

    callables("def f():\n    return None\n", "gatefail")
    cfg = load_config(write_yaml("""
        version: 1
        workflows:
          w: {tasks: [{name: t, argv: [touch, "ran-{{n}}"]}, {name: u, run: 'touch after'}]}
        triggers:
          - {name: x, type: python, callable: "gatefail:f", workflow: w}
    """))
    store = SQLiteStore(cfg.state_location())
    record = store.apply_run_steps
    gates: list[int] = []

    def apply_run_steps(steps):
        for name, args in steps:
            if name == "task_started" and args[4] is not None:
                gates.append(args[4])
                raise StateError("cannot write the state: disk full")
        return record(steps)

    store.apply_run_steps = apply_run_steps  # type: ignore[method-assign]
    run = _run_to_its_end(cfg, store, {"n": 7})
    assert run.status == "failed" and "disk full" in (run.error or "")
    assert not (tmp_path / "ran-7").exists() and not (tmp_path / "after").exists()
    assert len(gates) == 1
    with pytest.raises(ChildProcessError):  # the gate was reaped
        os.waitpid(gates[0], os.WNOHANG)
    store.close()


def _run_to_its_end(cfg, store, context):
    """One run of trigger x's workflow, started by a WorkflowRunner and waited for; its row at the end."""
    from trigctl.workflows import WorkflowRunner

    run_id = store.enqueue_run("x", "w", context, time.time()).run_id
    runner = WorkflowRunner(cfg, store)
    assert [r.id for r in runner.pump()] == [run_id]
    assert runner.join(30)
    return store.get_run(run_id)

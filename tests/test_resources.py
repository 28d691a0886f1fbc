"""Bounded resources: what a task writes (TRIGCTL_OUTPUT, a call's result, its output) costs trigctl
a bounded amount of memory and disk, and a big first poll does not hold the loop."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from pathlib import Path

from conftest import run_trigctl, wait_for
from helpers import drive, make_scheduler, workflow_yaml
from realproc import RunProc, query

from trigctl.config import load_config
from trigctl.store.sqlite import SQLiteStore
from trigctl.triggers import file as filemod
from trigctl.workflows import WorkflowRunner

MB = 1 << 20


def vm_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def project(tmp_path: Path, tasks: str) -> Path:
    """One file in an inbox fires one run of `wf` (a file trigger fires a file once)."""
    (tmp_path / "inbox").mkdir()
    (tmp_path / "inbox" / "go").write_text("x")
    (tmp_path / "triggers.yaml").write_text(workflow_yaml(
        tasks, "{name: inbox, type: file, path: inbox, workflow: wf, interval: 1s, settle: 0s}"))
    return tmp_path / ".trigctl" / "state.db"


def finished_tasks(db: Path) -> list[tuple]:
    if not db.exists():
        return []
    try:
        return query(db, "SELECT t.status, t.output_tail, r.status, r.error FROM tasks t JOIN runs r ON r.id = t.run_id "
                         "WHERE r.status NOT IN ('queued', 'running') ORDER BY t.idx")
    except sqlite3.OperationalError:  # the state is being created
        return []


def test_huge_trigctl_output_fails_the_task_and_trigctl_memory_stays_small(tmp_path):
    """A task that writes 300 MB into $TRIGCTL_OUTPUT fails with a clear error; trigctl's peak RSS
    (VmHWM of the real `trigctl run` process) stays under 150 MB (it read it whole: 2.2 GB)."""
    db = project(tmp_path, """
        - name: flood
          run: 'yes "key=a value of some length" | head -c 300000000 >> "$TRIGCTL_OUTPUT"'
        - name: not-reached
          run: 'touch reached'
        """)
    proc = RunProc(tmp_path)
    try:
        rows = wait_for(lambda: finished_tasks(db), timeout=120, message="the run to end")
        peak_mb = vm_kb(proc.pid, "VmHWM") / 1024
    finally:
        proc.stop()
    (task_status, _, run_status, error), = rows
    assert (task_status, run_status) == ("failed", "failed")
    assert "TRIGCTL_OUTPUT is larger than 1 MiB" in error
    assert not (tmp_path / "reached").exists()
    assert peak_mb < 150, f"trigctl peaked at {peak_mb:.0f} MB"


def test_trigctl_output_at_the_cap_is_read_whole(tmp_path, write_yaml):
    """Just under the cap every line is merged (the cap is no truncation)."""
    cfg = load_config(write_yaml("""
        version: 1
        workflows:
          wf:
            tasks:
              - run: 'python3 -c "import os; f = open(os.environ[\\"TRIGCTL_OUTPUT\\"], \\"a\\"); [f.write(\\"k%d=%s\\\\n\\" % (i, \\"v\\" * 90)) for i in range(10000)]; f.write(\\"last=yes\\\\n\\")"'
              - run: 'printf "%s|%s" "$TRIGCTL_K9999" "$TRIGCTL_LAST" > seen.txt'
        """))
    run = run_workflow(cfg)
    assert run.status == "succeeded", run.error
    assert (tmp_path / "seen.txt").read_text() == "v" * 90 + "|yes"


def run_workflow(cfg):
    """Run workflow `wf` once (for trigger `t`) with the real runner; the finished run."""
    store = SQLiteStore(cfg.state_location())
    store.sync_triggers(["t"])
    runner = WorkflowRunner(cfg, store, kill_grace=1.0)
    run_id = store.enqueue_run("t", "wf", {}, time.time()).run_id
    runner.pump()
    assert runner.join(60)
    return store.get_run(run_id)


def test_call_result_over_the_cap_fails_the_task(tmp_path, write_yaml):
    (tmp_path / "steps.py").write_text("def big(context):\n    return {'blob': 'x' * 2_000_000}\n")
    cfg = load_config(write_yaml("""
        version: 1
        workflows:
          wf: {tasks: [{call: 'steps:big'}, {run: 'touch reached'}]}
        """))
    run = run_workflow(cfg)
    assert run.status == "failed"
    assert "larger than 1 MiB" in run.tasks[0]["output_tail"]
    assert not (tmp_path / "reached").exists()


def disk_bytes(root: Path) -> int:
    """Allocated bytes of every file under root (st_blocks: what the disk really holds)."""
    total = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                pass
    return total


def test_task_output_is_not_spooled_to_disk(tmp_path):
    """A task that prints 200 MB: while it runs, trigctl's temporary directory holds less than 1 MB
    (the whole output went to a file there); `show` keeps the last 4 KiB, the end intact."""
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    db = project(tmp_path, """
        - name: chatty
          run: 'head -c 200000000 /dev/zero | tr "\\0" x; echo; echo THE-END; touch written; while [ ! -e release ]; do sleep 0.05; done'
        """)
    proc = RunProc(tmp_path, env={"TMPDIR": str(tmpdir)})
    try:
        wait_for(lambda: (tmp_path / "written").exists(), timeout=120, message="the task to write its output")
        held = disk_bytes(tmpdir)
        (tmp_path / "release").touch()
        rows = wait_for(lambda: finished_tasks(db), timeout=60, message="the run to end")
    finally:
        proc.stop()
    assert held < MB, f"{held} bytes of output on disk"
    (task_status, tail, run_status, _), = rows
    assert (task_status, run_status) == ("succeeded", "succeeded")
    assert tail.endswith("THE-END\n") and len(tail.encode()) <= 4096


def test_background_children_holding_the_output_do_not_hold_the_run(tmp_path, write_yaml):
    """A task that leaves children with its stdout open — one in its group, one that escaped it with
    setsid — ends when its main process ends; the output written before is kept."""
    cfg = load_config(write_yaml("""
        version: 1
        workflows:
          wf:
            tasks:
              - run: 'sleep 60 & setsid sh -c "echo \\$\\$ > escaped.pid; exec sleep 60" & echo main-done; while [ ! -s escaped.pid ]; do sleep 0.01; done'
        """))
    store = SQLiteStore(cfg.state_location())
    store.sync_triggers(["t"])
    runner = WorkflowRunner(cfg, store, kill_grace=1.0)
    run_id = store.enqueue_run("t", "wf", {}, time.time()).run_id
    t0 = time.monotonic()
    runner.pump()
    try:
        assert runner.join(30)
        took = time.monotonic() - t0
    finally:
        pid_file = tmp_path / "escaped.pid"
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
    run = store.get_run(run_id)
    assert run.status == "succeeded", run.error
    assert run.tasks[0]["output_tail"].strip() == "main-done"
    assert took < 20  # not the 60 s the children would hold the pipe


# ------------------------------------------------------------------------- a big first poll


def test_first_poll_of_a_big_directory_is_recorded_in_shares(tmp_path, write_yaml):
    """2,500 files at the first poll: no poll records more than FIRES_PER_POLL fires (the loop is
    held for one share, not for all), each poll asks for the next at once, and every file fires
    exactly once, oldest first."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    n = 2_500
    for i in range(n):
        p = inbox / f"f{i:05d}.dat"
        p.write_bytes(b"x")
        os.utime(p, (1000 + i, 1000 + i))
    path = write_yaml("""
        version: 1
        workflows: {wf: {tasks: [{argv: ['true']}]}}
        triggers:
          - {name: big, type: file, path: inbox, pattern: '*.dat', workflow: wf, interval: 1h, watch: false}
        """)
    now = time.time()
    sched, store = make_scheduler(path, now)
    woken: list[str] = []
    sched.start_triggers(woken.append)
    per_poll = []
    for _ in range(n // filemod.FIRES_PER_POLL + 2):
        woken.clear()
        reports = drive(sched, now)
        per_poll.append(sum(1 for _ in reports[0].fires) if reports else 0)
        if not woken:
            break
        sched.wake("big", now)
    assert max(per_poll) <= filemod.FIRES_PER_POLL
    assert sum(per_poll) == n and per_poll[-1] > 0
    fired = query(path.parent / ".trigctl" / "state.db", "SELECT context FROM runs ORDER BY id")
    assert [json.loads(c)["name"] for (c,) in fired] == [f"f{i:05d}.dat" for i in range(n)]
    # Nothing is left: the next poll scans, finds every file remembered, and fires nothing.
    sched.wake("big", now)
    reports = drive(sched, now + 1)
    assert not reports or not reports[0].fires


def test_first_poll_with_ignore_existing_remembers_in_shares_and_then_fires_new_files(tmp_path, write_yaml):
    """ignore_existing over more files than one share: none fires, even those remembered by a later
    share; a file that arrives afterwards fires."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    n = filemod.UPDATES_PER_POLL * 2 + 10
    for i in range(n):
        (inbox / f"f{i:05d}.dat").write_bytes(b"x")
        os.utime(inbox / f"f{i:05d}.dat", (1000, 1000))
    path = write_yaml("""
        version: 1
        workflows: {wf: {tasks: [{argv: ['true']}]}}
        triggers:
          - {name: big, type: file, path: inbox, pattern: '*.dat', workflow: wf, interval: 1h, watch: false,
             ignore_existing: true}
        """)
    now = time.time()
    sched, store = make_scheduler(path, now)
    woken: list[str] = []
    sched.start_triggers(woken.append)
    polls = 0
    while True:
        woken.clear()
        reports = drive(sched, now)
        polls += 1
        assert not reports or not reports[0].fires
        if not woken:
            break
        sched.wake("big", now)
    assert polls == 3
    (inbox / "new.dat").write_bytes(b"y")
    os.utime(inbox / "new.dat", (1000, 1000))
    sched.wake("big", now)
    reports = drive(sched, now + 1)
    assert [f[0]["name"] for f in reports[0].fires] == ["new.dat"]


def test_run_once_still_polls_a_small_inbox_whole(tmp_path):
    """Under the share, `run --once` fires every file of the inbox (nothing changes for small inboxes)."""
    n = 3
    project(tmp_path, "- run: 'true'\n")
    for i in range(1, n):
        (tmp_path / "inbox" / f"more{i}").write_text("x")
    proc = run_trigctl("run", "--once", cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    hist = json.loads(run_trigctl("history", "--json", cwd=tmp_path).stdout)
    assert sum(1 for h in hist if h["kind"] == "fire" and h["status"] == "succeeded") == n


def test_command_trigger_output_goes_through_pipes_not_disk(tmp_path):
    """A `command` trigger's output is read as it comes (first 1 MiB of stdout, tail of stderr):
    its stdout and stderr are pipes, not spool files, and 100 MB of output still makes a clean poll."""
    from trigctl.triggers._util import MAX_STDOUT, run_process

    script = ('printf "kinds: %s %s\\n" "$(stat -L -c %F /proc/self/fd/1)" "$(stat -L -c %F /proc/self/fd/2)" >&2; '
              'head -c 100000000 /dev/zero; yes | head -c 50000000 >&2; echo "the last line" >&2; exit 3')
    result = run_process(["/bin/sh", "-c", script], cwd=tmp_path, timeout=60)
    assert result.returncode == 3
    assert len(result.stdout) == MAX_STDOUT + 1  # capped: enough to tell "too large for a context"
    assert result.last_stderr_line() == "the last line"
    kinds = run_process(["/bin/sh", "-c", 'stat -L -c %F /proc/self/fd/1 /proc/self/fd/2 >&2'], cwd=tmp_path,
                        timeout=60).stderr_tail.split()
    assert kinds == ["fifo", "fifo"], kinds

"""Fault injection: SIGKILL a real `trigctl run` at many moments while fires stream in; prove that
nothing is lost, nothing runs twice where dedupe forbids it, and the state file survives every crash.

Set TRIGCTL_CRASH_ROUNDS (default 30) for a longer soak, TRIGCTL_CRASH_SUMMARY=PATH to keep the
summary (it is printed too: run pytest with -s to see it).
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from conftest import run_trigctl, wait_for
from realproc import RunProc, integrity, query

pytestmark = pytest.mark.slow

ROUNDS = int(os.environ.get("TRIGCTL_CRASH_ROUNDS", "30"))
ONCE_JOBS = 20  # `once` jobs are never consumed (a succeeded key must stay suppressed): keep the set small

YAML = """
version: 1
max_concurrent_runs: 8
defaults:
  interval: 50ms
  timeout: 10s
workflows:
  work:
    tasks:
      - name: work
        run: ./task.sh
        timeout: 30s
triggers:
  - name: jobs            # a work queue: the task consumes the job file
    type: python
    callable: feeds:jobs
    workflow: work
    dedupe_key: [job]
  - name: once            # never consumed: each key must succeed exactly once
    type: python
    callable: feeds:once
    workflow: work
    dedupe: once
    max_attempts: 1000
    dedupe_key: [job]
  - name: marked          # on_interrupt: mark only releases the key; the file fires again if unconsumed
    type: python
    callable: feeds:marked
    workflow: work
    on_interrupt: mark
    dedupe_key: [job]
  - name: seq             # a cursor trigger: it has moved past what it fired, so only a rerun saves work
    type: python
    callable: feeds:seq
    workflow: work
    dedupe_key: [job]
"""

FEEDS = r'''
import os, time
from trigctl import Fire

def _slow(name):
    # The test sets `slowpoll` to aim its kill at a poll in progress (or at the recording after it).
    if os.path.exists("slowpoll"):
        marker = "markers/inpoll-" + name
        open(marker, "w").close()
        time.sleep(0.03)
        try:
            os.unlink(marker)
        except FileNotFoundError:
            pass

def _jobs(d, limit=16):
    # The oldest few, as a queue consumer takes a batch: every pending key returned on every poll
    # would cost a duplicate row update each, and the backlog would slow the loop down for ever.
    try:
        return sorted(n[:-4] for n in os.listdir(d) if n.endswith(".job"))[:limit]
    except FileNotFoundError:
        return []

def jobs():
    _slow("jobs")
    return [{"job": j, "dir": "queue"} for j in _jobs("queue")]

def once():
    _slow("once")
    return [{"job": j, "dir": ""} for j in _jobs("once", 100)]

def marked():
    _slow("marked")
    return [{"job": j, "dir": "mark"} for j in _jobs("mark")]

def seq(cursor=None):
    _slow("seq")
    try:
        top = int(open("seq.txt").read() or 0)
    except (FileNotFoundError, ValueError):
        top = 0
    last = int(cursor or 0)
    return [Fire({"job": "s%05d" % n, "dir": ""}, cursor=str(n)) for n in range(last + 1, top + 1)]
'''

# One line per step, so each run's effect can be checked: a run id starts and ends at most once, and
# a lock per job proves no two runs of one key ever overlap (a leftover of a crashed trigctl holds it).
TASK = r"""#!/bin/sh
exec 9>>"locks/$TRIGCTL_JOB"
if ! flock -n 9; then
  echo "OVERLAP $TRIGCTL_JOB $TRIGCTL_RUN_ID" >> violations.txt
  exit 3
fi
echo "start $TRIGCTL_JOB $TRIGCTL_RUN_ID" >> results.txt
if [ -e slowtask ]; then sleep 3; else sleep 0.005; fi
echo "end $TRIGCTL_JOB $TRIGCTL_RUN_ID" >> results.txt
if [ -n "$TRIGCTL_DIR" ]; then rm -f "$TRIGCTL_DIR/$TRIGCTL_JOB.job"; fi
"""

MODES = ["random", "startup", "mid-poll", "mid-record", "mid-task", "after-fired", "shutdown"]


class Producer(threading.Thread):
    """Adds work every few ms: a queue job each tick, a marked job every 3rd, a seq number every 2nd,
    a once job every 8th (up to ONCE_JOBS). Files appear atomically (written aside, then renamed)."""

    def __init__(self, root: Path, tick: float = 0.08):
        super().__init__(daemon=True)
        self.root = root
        self.tick = tick
        self.stop_event = threading.Event()
        self.produced: dict[str, list[str]] = defaultdict(list)
        self.seq = 0
        self.n = 0

    def _add(self, trigger: str, d: str, prefix: str) -> None:
        job = f"{prefix}{len(self.produced[trigger]) + 1:05d}"
        tmp = self.root / "tmp" / f"{job}.job"
        tmp.write_text("")
        os.rename(tmp, self.root / d / f"{job}.job")
        self.produced[trigger].append(job)

    def step(self) -> None:
        self.n += 1
        self._add("jobs", "queue", "q")
        if self.n % 3 == 0:
            self._add("marked", "mark", "m")
        if self.n % 2 == 0:
            self.seq += 1
            (self.root / "tmp" / "seq.txt").write_text(str(self.seq))
            os.rename(self.root / "tmp" / "seq.txt", self.root / "seq.txt")
            self.produced["seq"].append(f"s{self.seq:05d}")
        if self.n % 8 == 0 and len(self.produced["once"]) < ONCE_JOBS:
            self._add("once", "once", "o")

    def run(self) -> None:
        while not self.stop_event.wait(self.tick):
            self.step()

    def stop(self) -> None:
        self.stop_event.set()
        self.join(10)


@pytest.fixture
def project(tmp_path):
    (tmp_path / "triggers.yaml").write_text(YAML)
    (tmp_path / "feeds.py").write_text(FEEDS)
    task = tmp_path / "task.sh"
    task.write_text(TASK)
    task.chmod(0o755)
    for d in ("queue", "once", "mark", "tmp", "locks", "markers"):
        (tmp_path / d).mkdir()
    (tmp_path / "results.txt").write_text("")
    return tmp_path


def results(project: Path) -> list[tuple[str, str, int]]:
    out = []
    for line in (project / "results.txt").read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:  # a task killed mid-write may leave a partial line: ignore it
            out.append((parts[0], parts[1], int(parts[2])))
    return out


def check_state(project: Path, db: Path) -> dict:
    """Invariants that hold at every moment, also right after a SIGKILL. Returns a snapshot."""
    assert integrity(db) == "ok"
    leaked = query(db, "SELECT count(*) FROM runs WHERE active_key IS NOT NULL AND status NOT IN ('queued','running')")
    assert leaked == [(0,)], "a finished run still holds its dedupe key"
    # Every run was recorded with its fire, in one transaction; every fire has its run.
    orphans = query(db, "SELECT r.id FROM runs r WHERE (SELECT count(*) FROM events e WHERE e.kind = 'fire' "
                        "AND e.run_id = r.id) != 1")
    assert orphans == [], f"runs without exactly one fire row: {orphans[:10]}"
    lost = query(db, "SELECT e.id FROM events e LEFT JOIN runs r ON r.id = e.run_id WHERE e.kind = 'fire' AND r.id IS NULL")
    assert lost == [], f"fire rows without a run: {lost[:10]}"
    twice = query(db, "SELECT trigger_name, context_hash, count(*) FROM runs WHERE dedupe = 'once' AND status = 'succeeded' "
                      "GROUP BY 1, 2 HAVING count(*) > 1")
    assert twice == [], f"dedupe: once keys that succeeded twice: {twice}"
    # The seq cursor was stored in the same transaction as its fires: every number up to it was fired.
    cursor = query(db, "SELECT cursor FROM triggers WHERE name = 'seq'")
    top = int(cursor[0][0]) if cursor and cursor[0][0] else 0
    fired_seq = {json.loads(c)["job"] for (c,) in query(db, "SELECT context FROM events WHERE trigger_name = 'seq' "
                                                             "AND kind = 'fire'")}
    missing = [n for n in range(1, top + 1) if f"s{n:05d}" not in fired_seq]
    assert not missing, f"the seq cursor is at {top} but these were never fired: {missing[:10]}"
    # No two runs of one key overlapped (the next starts after the previous one was finished).
    runs = query(db, "SELECT id, trigger_name, context_hash, status, started_at, completed_at FROM runs "
                     "WHERE dedupe != 'none' AND started_at IS NOT NULL ORDER BY started_at")
    last: dict[tuple, tuple] = {}
    for rid, trig, key, status, started, completed in runs:
        prev = last.get((trig, key))
        if prev is not None:
            assert prev[2] is not None and started >= prev[2], f"runs {prev[0]} and {rid} of one key overlap"
        last[(trig, key)] = (rid, status, completed)
    violations = project / "violations.txt"
    assert not violations.exists() or not violations.read_text(), violations.read_text()
    starts = Counter(r for kind, _, r in results(project) if kind == "start")
    assert not [r for r, n in starts.items() if n > 1], "a run's task was started twice"
    return {
        "runs": dict(Counter(s for (s,) in query(db, "SELECT status FROM runs"))),
        "seq_cursor": top,
    }


def _kill_when(proc: RunProc, project: Path, mode: str, rng: random.Random) -> float:
    """Wait for the moment ``mode`` aims at, then SIGKILL. Returns the seconds since the process started."""
    if mode == "startup":
        time.sleep(rng.uniform(0.0, 0.5))  # the injected delay itself: mid-import, -migration or -recovery
    elif mode == "random":
        proc.wait_line('"event": "start"')
        time.sleep(rng.uniform(0.02, 0.6))
    elif mode in ("mid-poll", "mid-record"):
        proc.wait_line('"event": "start"')
        (project / "slowpoll").touch()
        markers = project / "markers"
        wait_for(lambda: any(markers.iterdir()), timeout=15, interval=0.001, message="a poll in progress")
        if mode == "mid-record":
            time.sleep(rng.uniform(0.028, 0.04))  # the call returns after 30 ms: hit its recording
    elif mode == "mid-task":
        size = (project / "results.txt").stat().st_size
        (project / "slowtask").touch()
        proc.wait_line('"event": "start"')

        def new_start():
            with open(project / "results.txt") as f:
                f.seek(size)
                return any(line.startswith("start ") and line.endswith("\n") for line in f)

        wait_for(new_start, timeout=15, interval=0.002, message="a task in progress")
    elif mode == "after-fired":
        i = proc.wait_line('"event": "start"')
        proc.wait_line(('"event": "fired"', '"event": "run_started"'), start=i)
        time.sleep(rng.uniform(0.0, 0.005))  # right after a fire was recorded or a run claimed
    elif mode == "shutdown":
        i = proc.wait_line('"event": "start"')
        proc.wait_line('"event": "run_started"', start=i)
        proc.signal(signal.SIGTERM)
        time.sleep(rng.uniform(0.0, 0.6))  # somewhere in the grace period, the cancelling or the flush
    at = time.monotonic() - proc.started
    proc.kill()
    return at


def dropped_by_chain_limit(db: Path) -> set[str]:
    """Jobs of runs interrupted 3 times in a row, which by the rules are not rerun again (a run that
    keeps dying with trigctl must not loop for ever). A `seq` item is then lost on purpose: its cursor
    has moved past it; the others' files are still there and fire again."""
    runs = {r[0]: r for r in query(db, "SELECT id, status, context, rerun_of FROM runs")}
    rerun = {r[3] for r in runs.values() if r[3] is not None}
    out = set()
    for rid, status, context, _ in runs.values():
        if status != "interrupted" or rid in rerun:
            continue
        chain, cur = 0, runs[rid]
        while cur is not None and cur[1] == "interrupted":
            chain += 1
            cur = runs.get(cur[3]) if cur[3] is not None else None
        if chain >= 3:
            out.add(json.loads(context)["job"])
    return out


def accounted(db: Path) -> Counter:
    """Every fire's run ended, or was interrupted and then fired again (or, by the rules, only marked)."""
    runs = {r[0]: r for r in query(db, "SELECT id, trigger_name, status, context, rerun_of FROM runs")}
    mark = {"marked"}
    reruns: dict[int, int] = {}
    for rid, _, _, _, rerun_of in runs.values():
        if rerun_of is not None:
            reruns[rerun_of] = rid
    out: Counter = Counter()
    for (run_id,) in query(db, "SELECT run_id FROM events WHERE kind = 'fire'"):
        rid, trig, status, context, _ = runs[run_id]
        if status in ("succeeded", "failed", "cancelled"):
            out[status] += 1
            continue
        assert status == "interrupted", f"run {rid} is still {status} after a clean shutdown and `run --once`"
        if trig in mark:
            out["interrupted, marked (on_interrupt: mark)"] += 1
        elif rid in reruns:
            assert runs[reruns[rid]][3] == context, f"rerun {reruns[rid]} of run {rid} has another context"
            out["interrupted, rerun"] += 1
        else:
            chain, cur = 0, runs[rid]
            while cur is not None and cur[2] == "interrupted":
                chain += 1
                cur = runs.get(cur[4]) if cur[4] is not None else None
            assert chain >= 3, f"interrupted run {rid} ({trig}) was neither rerun nor marked"
            out["interrupted, not rerun (3 in a row)"] += 1
    return out


def test_sigkill_at_many_moments_loses_nothing(project, tmp_path):
    rng = random.Random(int(os.environ.get("TRIGCTL_CRASH_SEED", "0")) or None)
    db = project / ".trigctl" / "state.db"
    args = ("triggers.yaml", "--grace", "1s", "--log-format", "json")
    producer = Producer(project)
    producer.start()
    rounds = []
    began = time.monotonic()
    try:
        for i in range(ROUNDS):
            mode = MODES[i % len(MODES)] if i < len(MODES) else rng.choice(MODES)
            for flag in ("slowpoll", "slowtask"):
                (project / flag).unlink(missing_ok=True)
            for m in (project / "markers").iterdir():
                m.unlink(missing_ok=True)
            proc = RunProc(project, *args, log=tmp_path / "trigctl.log")
            try:
                at = _kill_when(proc, project, mode, rng)
            finally:
                proc.cleanup()
            assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
            snap = check_state(project, db) if db.exists() else {"runs": {}, "seq_cursor": 0}
            rounds.append({"round": i + 1, "mode": mode, "killed_after_s": round(at, 3), "exit": proc.proc.returncode,
                           "started": proc.count('"event": "start"') > 0,
                           "recovered": proc.count('"event": "interrupted"'),
                           "leftovers_killed": proc.count("left over from the previous process"),
                           "fired": proc.count('"event": "fired"'), **snap})
        for flag in ("slowpoll", "slowtask"):
            (project / flag).unlink(missing_ok=True)
        producer.stop()

        # A clean run drains everything that was produced, then stops with SIGTERM.
        expected: set[str] = set()
        proc = RunProc(project, *args, log=tmp_path / "trigctl.log")
        try:
            # Its signal handlers are in place once it logs its start: a SIGTERM sent before (the work
            # may all be done already) would kill the interpreter while it still imports.
            proc.wait_line('"event": "start"', timeout=30)
            produced = {j for jobs in producer.produced.values() for j in jobs}

            def drained():
                nonlocal expected
                expected = produced - {j for j in dropped_by_chain_limit(db) if j.startswith("s")}
                done = {job for kind, job, _ in results(project) if kind == "end"}
                active = query(db, "SELECT count(*) FROM runs WHERE status IN ('queued','running')")[0][0]
                return expected <= done and active == 0 and not any((project / "queue").iterdir()) \
                    and not any((project / "mark").iterdir())

            try:
                wait_for(drained, timeout=40, interval=0.1, message="all produced work done")
            except AssertionError:
                proc.signal(signal.SIGUSR1)  # the threads' stacks go to the log
                time.sleep(0.5)
                done = {job for kind, job, _ in results(project) if kind == "end"}
                active = query(db, "SELECT id, trigger_name, status, context FROM runs WHERE status IN ('queued','running')")
                raise AssertionError(f"not drained: missing {sorted(expected - done)[:20]}, active {active[:10]}, "
                                     f"queue {sorted(os.listdir(project / 'queue'))[:10]}, "
                                     f"mark {sorted(os.listdir(project / 'mark'))[:10]}; log: {tmp_path / 'trigctl.log'}"
                                     ) from None
            final_recovered = proc.count('"event": "interrupted"')
            code = proc.stop(timeout=20)
        finally:
            proc.cleanup()
        assert code == 0, proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr
        once = run_trigctl("run", "triggers.yaml", "--once", cwd=project, timeout=60)
        assert once.returncode == 0, once.stderr
    finally:
        producer.stop()

    # ---- the whole history, after the last clean shutdown
    snap = check_state(project, db)
    assert query(db, "SELECT count(*) FROM runs WHERE status IN ('queued','running')") == [(0,)]
    assert query(db, "SELECT count(*) FROM runs WHERE active_key IS NOT NULL") == [(0,)]
    outcome = accounted(db)
    status = dict(query(db, "SELECT id, status FROM runs"))
    job_of = {rid: json.loads(c)["job"] for rid, c in query(db, "SELECT id, context FROM runs")}
    ends = [(job, rid) for kind, job, rid in results(project) if kind == "end"]
    assert len({rid for _, rid in ends}) == len(ends), "a run's task completed twice"
    for job, rid in ends:
        assert job_of[rid] == job
        # A task that completed belongs to a run that succeeded, or that a crash (or a shutdown's
        # cancel) cut short after the task's own effect: at-least-once, never a run recorded failed.
        assert status[rid] in ("succeeded", "interrupted", "cancelled"), (job, rid, status[rid])
    succeeded = {rid for rid, s in status.items() if s == "succeeded"}
    assert succeeded <= {rid for _, rid in ends}, "a run is recorded succeeded but its task never completed"
    done = {job for job, _ in ends}
    dropped = dropped_by_chain_limit(db)
    for trigger, jobs in producer.produced.items():
        missing = [j for j in jobs if j not in done and not (trigger == "seq" and j in dropped)]
        assert not missing, f"{trigger}: work lost: {missing[:10]}"
    once_ok = Counter(job_of[rid] for rid in succeeded if job_of[rid].startswith("o"))
    assert set(once_ok) == set(producer.produced["once"]) and set(once_ok.values()) <= {1}
    once_lines = Counter(job for job, rid in ends if job.startswith("o") and status[rid] == "succeeded")
    assert set(once_lines.values()) <= {1}, "a dedupe: once key completed successfully twice"

    summary = {
        "rounds": len(rounds),
        "seconds": round(time.monotonic() - began, 1),
        "modes": dict(Counter(r["mode"] for r in rounds)),
        "killed_before_start_logged": sum(1 for r in rounds if not r["started"]),
        "runs_recovered_at_restart": sum(r["recovered"] for r in rounds) + final_recovered,
        "leftover_task_groups_killed": sum(r["leftovers_killed"] for r in rounds),
        "produced": {k: len(v) for k, v in producer.produced.items()},
        "fires_by_outcome": dict(outcome),
        "runs_by_status": snap["runs"],
        "seq_items_not_rerun_after_3_interruptions_in_a_row": len([j for j in dropped if j.startswith("s")
                                                                     and j not in done]),
        "task_completions": len(ends),
        "completions_of_runs_not_recorded_succeeded": sum(1 for _, rid in ends if status[rid] != "succeeded"),
        "integrity_checks_ok": len(rounds) + 1,
        "per_round": rounds,
    }
    text = json.dumps(summary, indent=1)
    (tmp_path / "crash_summary.json").write_text(text)
    if os.environ.get("TRIGCTL_CRASH_SUMMARY"):
        Path(os.environ["TRIGCTL_CRASH_SUMMARY"]).write_text(text)
    print("\ncrash-safety summary:", json.dumps({k: v for k, v in summary.items() if k != "per_round"}, indent=1))
    assert summary["rounds"] == ROUNDS >= 1
    assert outcome["interrupted, rerun"] + outcome["interrupted, marked (on_interrupt: mark)"] > 0, \
        "no round interrupted a run: the kills aimed at nothing"


def test_a_task_does_not_start_before_its_process_group_is_recorded(tmp_path, write_yaml, callables):
    """If trigctl died between starting a task and recording its process group, the next start could
    neither stop that task nor keep its rerun from overlapping it: so the task waits for the record."""
    from trigctl.config import load_config
    from trigctl.store.sqlite import SQLiteStore
    from trigctl.workflows import WorkflowRunner

    callables("def f():\n    return None\n", "gatemod")
    cfg = load_config(write_yaml("""
        version: 1
        workflows:
          w: {tasks: [{name: t, run: 'touch "ran-$TRIGCTL_RUN_ID"'}, {name: u, argv: [touch, "argv-{{n}}"]}]}
        triggers:
          - {name: x, type: python, callable: "gatemod:f", workflow: w}
    """))
    store = SQLiteStore(cfg.state_location())
    seen = []
    record = store.apply_run_steps  # the run threads write through it (trigctl.runlog), batched

    def apply_run_steps(steps):
        if any(name == "task_started" and args[4] is not None for name, args in steps):
            # The moment a crash could hit: the process exists, its group is not recorded yet.
            time.sleep(0.3)
            seen.append(sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("ran-", "argv-"))))
        return record(steps)

    store.apply_run_steps = apply_run_steps
    run_id = store.enqueue_run("x", "w", {"n": 7}, time.time()).run_id
    runner = WorkflowRunner(cfg, store)
    assert [r.id for r in runner.pump()] == [run_id]
    assert runner.join(30)
    assert seen == [[], [f"ran-{run_id}"]]  # nothing ran before its record; each ran after it
    assert (tmp_path / "argv-7").exists()
    assert store.get_run(run_id).status == "succeeded"
    store.close()

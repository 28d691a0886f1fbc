"""The state under contention and under hostile storage: readers and writers from other processes
while `run` fires continuously; a read-only state directory; a full disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import run_trigctl, wait_for
from realproc import RunProc, integrity, query

pytestmark = pytest.mark.slow

YAML = """
version: 1
state: st/state.db
workflows:
  w: {tasks: [{run: "true"}]}
triggers:
  - {name: tick, type: python, callable: "ticks:tick", workflow: w, interval: 50ms, dedupe: none}
  - {name: other, type: python, callable: "ticks:skip", workflow: w, interval: 100ms}
"""

TICKS = """
def tick():
    return True

def skip():
    return None
"""

# Runs in its own process: many CLI invocations in-process (fast), each opening the state afresh as a
# separate `trigctl` would. Prints one JSON line: how many ran, and every failure.
WORKER = r'''
import json, random, sqlite3, sys
from click.testing import CliRunner
from trigctl.cli import main

n, seed, db = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
rng = random.Random(seed)
runner = CliRunner()
failures, counts = [], {}

def run(*args):
    r = runner.invoke(main, list(args), catch_exceptions=True)
    return r.exit_code, r.stdout, r.stderr, r.exception

for i in range(n):
    cmd = rng.choice(["list", "history", "show", "enable", "disable", "prune", "list", "history"])
    counts[cmd] = counts.get(cmd, 0) + 1
    if cmd == "list":
        args = ["list", "--json"]
    elif cmd == "history":
        args = ["history", "--json", "--limit", str(rng.choice([1, 20, 200]))]
    elif cmd == "show":
        code, out, err, exc = run("history", "--json", "--limit", "1", "--status", "succeeded,running,queued")
        rows = json.loads(out) if code == 0 else []
        if not rows:
            counts["show"] -= 1
            continue
        args = ["show", str(rows[0]["run_id"]), "--json"]
    elif cmd in ("enable", "disable"):
        args = [cmd, "other"]
    else:
        args = ["prune", "--older-than", "1s"]
    code, out, err, exc = run(*args)
    problem = None
    if code != 0:
        problem = "exit %s" % code
        if cmd == "show" and code == 2 and err.strip() == "trigctl: no run %s" % args[1]:
            # A concurrent prune may delete the run between `history` and `show`: only then is it fine.
            conn = sqlite3.connect(db, timeout=30)
            gone = conn.execute("SELECT count(*) FROM runs WHERE id = ?", (int(args[1]),)).fetchone()[0] == 0
            conn.close()
            problem = None if gone else problem
    elif "locked" in out + err or "Traceback" in out + err:
        problem = "noise"
    elif "--json" in args:
        try:
            doc = json.loads(out)
            if cmd == "list" and [t["name"] for t in doc] != ["tick", "other"]:
                problem = "wrong list"
        except ValueError:
            problem = "bad JSON"
    if problem:
        failures.append({"args": args, "problem": problem, "exit": code, "stdout": out[-500:], "stderr": err[-500:],
                         "exception": repr(exc)})
print(json.dumps({"ran": sum(counts.values()), "counts": counts, "failures": failures}))
'''


@pytest.fixture
def project(tmp_path):
    (tmp_path / "triggers.yaml").write_text(YAML)
    (tmp_path / "ticks.py").write_text(TICKS)
    (tmp_path / "worker.py").write_text(WORKER)
    return tmp_path


def _fires(db: Path) -> int:
    """Runs started by `tick` (its counter: prune deletes old history rows, not counters)."""
    rows = query(db, "SELECT fires FROM triggers WHERE name = 'tick'") if db.exists() else []
    return rows[0][0] if rows else 0


def test_readers_and_writers_from_other_processes_while_run_fires(project):
    db = project / "st" / "state.db"
    proc = RunProc(project, "triggers.yaml", "--grace", "5s", "--log-format", "json")
    try:
        proc.wait_line('"event": "start"', timeout=20)
        wait_for(lambda: _fires(db) >= 5, message="the run firing")
        fires_before, began = _fires(db), time.monotonic()

        # 3 worker processes x 120 in-process CLI invocations, plus real `python -m trigctl` subprocesses.
        workers = [subprocess.Popen([sys.executable, "worker.py", "120", str(seed), str(db)], cwd=project,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for seed in (1, 2, 3)]
        real: list[tuple[list[str], subprocess.CompletedProcess]] = []
        stop = threading.Event()

        def real_calls(commands):
            i = 0
            while not stop.is_set() or i < len(commands):
                args = commands[i % len(commands)]
                real.append((args, run_trigctl(*args, cwd=project, timeout=60)))
                i += 1

        cmds_a = [["list", "--json"], ["history", "--json", "--limit", "50"], ["disable", "other"], ["enable", "other"]]
        cmds_b = [["prune", "--older-than", "1s"], ["history", "--json"], ["list", "--json"],
                  ["show", "1", "--json"]]
        threads = [threading.Thread(target=real_calls, args=(c,)) for c in (cmds_a, cmds_b)]
        for t in threads:
            t.start()
        outputs = []
        for w in workers:
            out, err = w.communicate(timeout=120)
            assert w.returncode == 0, err[-3000:]
            outputs.append(json.loads(out.strip().splitlines()[-1]))
        stop.set()
        for t in threads:
            t.join(120)
        span = time.monotonic() - began
        fires_during = _fires(db) - fires_before
        assert proc.proc.poll() is None, "trigctl run died under contention:\n" + proc.stderr[-3000:]
        code = proc.stop(timeout=30)
    finally:
        proc.cleanup()

    failures = [f for o in outputs for f in o["failures"]]
    assert not failures, json.dumps(failures[:5], indent=1)
    in_process = sum(o["ran"] for o in outputs)
    assert in_process >= 300
    assert len(real) >= 8
    for args, out in real:
        if args[0] == "show" and out.returncode == 2 and out.stderr.strip() == "trigctl: no run 1":
            continue  # run 1 was pruned (prune --older-than 1s runs alongside): a clean answer
        assert out.returncode == 0, (args, out.stderr)
        assert "locked" not in out.stdout + out.stderr and "Traceback" not in out.stderr, (args, out.stderr)
        if "--json" in args:
            json.loads(out.stdout)
    print(f"\ncontention: {in_process} in-process + {len(real)} real CLI invocations in {span:.1f}s, "
          f"{fires_during} fires meanwhile")

    assert code == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "locked" not in proc.stderr
    assert '"level": "error"' not in proc.stderr and '"event": "error"' not in proc.stderr
    # The loop kept firing every 50 ms through it all (generous slack: a loaded 2-CPU box).
    assert fires_during >= 0.3 * span / 0.05, (fires_during, span)
    assert integrity(db) == "ok"
    assert query(db, "SELECT count(*) FROM runs WHERE status = 'running'") == [(0,)]
    assert query(db, "SELECT count(*) FROM runs WHERE active_key IS NOT NULL AND status NOT IN ('queued','running')") \
        == [(0,)]
    once = run_trigctl("run", "triggers.yaml", "--once", "--trigger", "other", cwd=project, timeout=60)
    assert once.returncode == 0, once.stderr
    assert query(db, "SELECT count(*) FROM runs WHERE status NOT IN ('succeeded','failed','cancelled','interrupted')") \
        == [(0,)]


# ---------------------------------------------------------------------------- hostile storage


def _can_mount() -> bool:
    return os.geteuid() == 0 and sys.platform.startswith("linux")


@contextmanager
def read_only(directory: Path):
    """Make ``directory`` read-only for everyone, root included: a read-only bind mount of itself.
    (chmod does not stop root, and the tests run as root here.)"""
    if not _can_mount():
        pytest.skip("needs root to make a read-only bind mount (chmod does not stop root)")
    subprocess.run(["mount", "--bind", str(directory), str(directory)], check=True, capture_output=True)
    try:
        r = subprocess.run(["mount", "-o", "remount,ro,bind", str(directory)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot remount read-only: {r.stderr.strip()}")
        yield
    finally:
        subprocess.run(["umount", str(directory)], check=True, capture_output=True)


def _one_clean_line(out: subprocess.CompletedProcess, code: int = 2) -> str:
    assert out.returncode == code, (out.returncode, out.stderr)
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    return lines[0]


def test_read_only_state_directory(project):
    st = project / "st"
    st.mkdir()
    with read_only(st):  # no state yet: it cannot even be created
        line = _one_clean_line(run_trigctl("run", "triggers.yaml", "--once", cwd=project))
        assert "read-only" in line.lower() and "st/state.db" in line, line
    assert run_trigctl("run", "triggers.yaml", "--once", cwd=project).returncode == 0  # some history
    history = run_trigctl("history", "--json", cwd=project).stdout
    assert json.loads(history)
    with read_only(st):
        for args in (["run", "triggers.yaml"], ["run", "triggers.yaml", "--once"], ["enable", "other"],
                     ["disable", "tick"], ["prune", "--older-than", "1s"]):
            line = _one_clean_line(run_trigctl(*args, cwd=project, timeout=30))
            assert line.startswith("trigctl: ") and "read-only" in line.lower() and "state.db" in line, (args, line)
        # Readers still read it (a snapshot, a backup mount...).
        for args in (["list", "--json"], ["history", "--json"], ["show", "1", "--json"]):
            out = run_trigctl(*args, cwd=project)
            assert out.returncode == 0, (args, out.stderr)
            json.loads(out.stdout)
        assert run_trigctl("history", "--json", cwd=project).stdout == history
    assert integrity(st / "state.db") == "ok"


def test_state_parent_is_a_file(project):
    (project / "st").write_text("not a directory")
    line = _one_clean_line(run_trigctl("run", "triggers.yaml", "--once", cwd=project))
    assert "cannot create state" in line and "Not a directory" in line, line


@contextmanager
def small_disk(directory: Path, size: str = "16m"):
    if not _can_mount():
        pytest.skip("needs root to mount a small tmpfs")
    directory.mkdir(exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=True, capture_output=True)


def _fill(directory: Path) -> Path:
    """Fill the file system up to the last byte; unlink the returned path to free it again."""
    filler = directory / "filler"
    try:
        with open(filler, "ab") as f:
            for size in (65536, 4096, 512, 1):
                try:
                    while True:
                        f.write(b"\0" * size)
                        f.flush()
                except OSError:
                    pass
    except OSError:  # already full: not even the file could be made
        pass
    assert os.statvfs(directory).f_bavail == 0
    return filler


def test_full_disk_at_start_and_while_running(project):
    st = project / "st"
    db = st / "state.db"
    with small_disk(st):
        first = run_trigctl("run", "triggers.yaml", "--once", cwd=project)
        assert first.returncode == 0, first.stderr
        before = query(db, "SELECT id, kind, run_id, count FROM events ORDER BY id")
        runs_before = query(db, "SELECT id, status FROM runs ORDER BY id")
        assert before and runs_before

        # Full before start: one clear line, exit 2.
        filler = _fill(st)
        line = _one_clean_line(run_trigctl("run", "triggers.yaml", "--once", cwd=project, timeout=60))
        assert "disk is full" in line and "state.db" in line, line
        line = _one_clean_line(run_trigctl("enable", "other", cwd=project, timeout=60))
        assert "disk is full" in line, line
        filler.unlink(missing_ok=True)
        assert integrity(db) == "ok"
        assert query(db, "SELECT id, kind, run_id, count FROM events ORDER BY id")[: len(before)] == before

        # Full while running: one clear error line, a clean stop (exit 1), nothing half-written.
        proc = RunProc(project, "triggers.yaml", "--grace", "2s", "--log-format", "json")
        try:
            proc.wait_line('"event": "start"', timeout=20)
            fired = _fires(db)
            wait_for(lambda: _fires(db) > fired + 3, message="firing")
            filler = _fill(st)
            code = proc.wait(timeout=30)
        finally:
            proc.cleanup()
        err = proc.stderr
        assert code == 1, err[-3000:]
        assert "Traceback" not in err, err[-3000:]
        errors = [json.loads(ln) for ln in err.splitlines() if '"level": "error"' in ln]
        assert len(errors) == 1 and "disk is full" in errors[0]["message"] and "stopping" in errors[0]["message"], errors
        assert '"event": "stopped"' in err
        filler.unlink(missing_ok=True)
        assert integrity(db) == "ok"
        assert query(db, "SELECT id, kind, run_id, count FROM events ORDER BY id")[: len(before)] == before
        assert query(db, "SELECT id, status FROM runs ORDER BY id")[: len(runs_before)] == runs_before
        # With space again, the next start recovers whatever the stop cut short, and everything ends.
        again = run_trigctl("run", "triggers.yaml", "--once", cwd=project, timeout=60)
        assert again.returncode == 0, again.stderr
        assert query(db, "SELECT count(*) FROM runs WHERE status IN ('queued','running')") == [(0,)]
        assert integrity(db) == "ok"

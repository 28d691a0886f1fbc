"""One `trigctl run` per state, whatever path reaches it: a symlink, a hard link, a deleted lock
file; a planted symlink at the lock path is refused, not followed; a live owner's run is never
interrupted by a second process."""

from __future__ import annotations

import os
import signal

import pytest
from conftest import run_trigctl, wait_for
from test_run_process import add_job, fires, make_project, start, stop

pytestmark = pytest.mark.slow


@pytest.fixture
def project(tmp_path):
    return make_project(tmp_path)


def _second_run(project, state: str):
    return run_trigctl("run", "triggers.yaml", "--state", state, cwd=project, timeout=60)


@pytest.mark.parametrize("alias", ["symlink", "symlinked_dir", "hardlink", "lock_removed"])
def test_a_second_run_through_another_path_is_refused_and_the_live_run_is_untouched(project, alias):
    add_job(project, "a", 60)
    proc = start(project, "--grace", "30s")
    real = project / ".trigctl" / "state.db"
    try:
        wait_for(lambda: (project / "started-a").exists(), message="task started")
        task_pid = int((project / "task-a.pid").read_text())
        if alias == "symlink":
            os.symlink(real, project / "alias.db")
            other = str(project / "alias.db")
        elif alias == "symlinked_dir":
            os.symlink(project / ".trigctl", project / "statedir")
            other = str(project / "statedir" / "state.db")
        elif alias == "hardlink":
            os.link(real, project / "hard.db")
            for suffix in ("-wal", "-shm"):  # SQLite finds its WAL beside the path it was given
                os.link(str(real) + suffix, str(project / "hard.db") + suffix)
            other = str(project / "hard.db")
        else:
            (project / ".trigctl" / "state.db.lock").unlink()  # an operator "cleaning up"
            other = str(real)
        second = _second_run(project, other)
        assert second.returncode == 2, second.stderr
        assert "another `trigctl run`" in second.stderr, second.stderr
        # A hard link is refused as such (its own -wal would hide the holder row); the others name the PID.
        assert ("2 hard links" if alias == "hardlink" else f"pid {proc.pid}") in second.stderr, second.stderr
        assert second.stderr.count("\n") == 1 and "Traceback" not in second.stderr
        # The first run's task was not killed, and its run is not interrupted.
        assert os.path.exists(f"/proc/{task_pid}") and open(f"/proc/{task_pid}/stat").read().split()[2] != "Z"
        assert [h["status"] for h in fires(project)] == ["running"]
    finally:
        os.kill(task_pid, signal.SIGTERM) if os.path.exists(f"/proc/{task_pid}") else None
        stop(proc, timeout=60)
    assert "interrupted" not in [h["status"] for h in fires(project)]


def test_a_symlink_planted_at_the_lock_path_is_not_followed(project, tmp_path_factory):
    victim = tmp_path_factory.mktemp("victim") / "important.txt"
    victim.write_text("keep me\n")
    (project / ".trigctl").mkdir(mode=0o700)
    os.symlink(victim, project / ".trigctl" / "state.db.lock")
    out = run_trigctl("run", "--once", "triggers.yaml", cwd=project, timeout=60)
    assert out.returncode == 2, out.stderr
    assert "symbolic link" in out.stderr and out.stderr.count("\n") == 1, out.stderr
    assert victim.read_text() == "keep me\n"


def test_after_a_crash_the_dead_owners_runs_are_recovered(project):
    """The holder row of a SIGKILLed run does not lock the state forever: its process is dead."""
    add_job(project, "a", 60)
    proc = start(project)
    wait_for(lambda: (project / "started-a").exists(), message="task started")
    proc.kill()
    proc.wait()
    (project / "started-a").unlink()
    proc = start(project)
    try:
        wait_for(lambda: (project / "started-a").exists(), message="rerun started")
    finally:
        stop(proc, timeout=60)
    assert sorted(h["status"] for h in fires(project))[-1] == "interrupted"


def _v3_state(path, owner_pid: int) -> None:
    """A state as trigctl wrote it before owners had start times (schema 3), with a run left running."""
    import sqlite3

    from trigctl.store.sqlite import MIGRATIONS

    conn = sqlite3.connect(path)
    conn.executescript("".join(MIGRATIONS[:3]) + "; PRAGMA user_version = 3;")
    conn.execute("INSERT INTO runs (trigger_name, workflow, status, context, context_hash, dedupe, active_key, "
                 "triggered_at, queued_at, started_at, owner_pid) VALUES ('jobs', 'work', 'running', '{}', 'k', "
                 "'running', 'k', 1, 1, 1, ?)", (owner_pid,))
    conn.commit()
    conn.close()


def test_a_run_left_by_an_older_trigctl_is_recovered_even_if_its_pid_is_reused(tmp_path):
    """Schema 3 recorded only the owner's PID: after a reboot that PID may be anyone's (here pid 1).
    The upgraded state opens, and the run is the dead owner's, not a live one's."""
    from trigctl.store.sqlite import SQLiteStore

    db = tmp_path / "state.db"
    _v3_state(str(db), owner_pid=1)
    store = SQLiteStore(str(db))
    store.start_process()
    (orphan,) = store.orphaned_runs()
    assert orphan.owner_pid == 1 and not store.owner_alive(orphan)
    store.close()


def test_a_clean_stop_removes_the_holder_row(tmp_path):
    import sqlite3

    from trigctl.store.sqlite import SQLiteStore

    db = str(tmp_path / "state.db")
    store = SQLiteStore(db)
    store.start_process()
    store.close()
    assert sqlite3.connect(db).execute("SELECT count(*) FROM run_holder").fetchone() == (0,)


def test_two_processes_opening_an_old_state_at_once_migrate_it_once(tmp_path):
    import threading

    from trigctl.store.sqlite import SQLiteStore

    for round_ in range(5):
        db = str(tmp_path / f"state{round_}.db")
        _v3_state(db, owner_pid=1)
        errors: list[BaseException] = []

        def open_it(path=db, errors=errors) -> None:
            try:
                SQLiteStore(path).close()
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=open_it) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors, errors

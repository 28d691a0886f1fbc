"""A real `trigctl run` process: signals, grace, crash and restart, reload, control from other shells."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from conftest import run_trigctl, trigctl_cmd, wait_for

pytestmark = pytest.mark.slow

YAML = """
version: 1
workflows:
  work:
    tasks:
      - name: work
        run: 'echo $$ > "task-$TRIGCTL_JOB.pid"; touch "started-$TRIGCTL_JOB"; sleep "$TRIGCTL_SECONDS"; touch "done-$TRIGCTL_JOB"'
triggers:
  - name: jobs
    type: python
    callable: jobs:poll
    workflow: work
    interval: 200ms
    dedupe_key: [job]
"""

JOBS = """
import json, pathlib
def poll():
    out = []
    for p in sorted(pathlib.Path("queue").glob("*.json")):
        out.append(json.loads(p.read_text()))
    return out
"""


def make_project(tmp_path):
    (tmp_path / "triggers.yaml").write_text(YAML)
    (tmp_path / "jobs.py").write_text(JOBS)
    (tmp_path / "queue").mkdir()
    return tmp_path


@pytest.fixture
def project(tmp_path):
    return make_project(tmp_path)


def add_job(project, job: str, seconds: float = 0):
    (project / "queue" / f"{job}.json").write_text(json.dumps({"job": job, "seconds": seconds}))


def remove_job(project, job: str):
    (project / "queue" / f"{job}.json").unlink()


def start(project, *args: str) -> subprocess.Popen:
    if "--grace" not in args:
        args = (*args, "--grace", "1s")
    return subprocess.Popen(trigctl_cmd("run", "triggers.yaml", *args), cwd=project, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def history(project):
    state = str(project / ".trigctl" / "state.db")
    out = run_trigctl("history", "--json", "--limit", "100", "--state", state, cwd=project)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def fires(project):
    return [h for h in history(project) if h["kind"] == "fire"]


def wait_for_log(proc: subprocess.Popen, text: str, timeout: float = 30.0) -> None:
    """Read the run's stderr until a line contains ``text``; fails when it exits first or at the
    deadline (the reading thread ends with the killed process, so stderr is free again after)."""
    found = threading.Event()

    def read() -> None:
        for line in proc.stderr:
            if text in line:
                found.set()
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    if reader.is_alive():
        proc.kill()
        reader.join(10)
        raise AssertionError(f"trigctl did not log {text!r} within {timeout}s")
    assert found.is_set(), f"trigctl exited before logging {text!r}"


def stop(proc: subprocess.Popen, sig=signal.SIGTERM, timeout: float = 30) -> tuple[int, str]:
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def test_sigterm_lets_running_runs_finish(project):
    add_job(project, "a", 1)
    proc = start(project, "--grace", "30s")
    try:
        wait_for(lambda: (project / "started-a").exists(), message="task started")
        code, err = stop(proc)
    finally:
        proc.kill()
    assert code == 0, err
    assert (project / "done-a").exists()
    assert fires(project)[0]["status"] == "succeeded"
    assert "Traceback" not in err


def test_grace_expiry_cancels_and_kills_the_task(project):
    add_job(project, "a", 60)
    proc = start(project, "--grace", "500ms")
    try:
        wait_for(lambda: (project / "started-a").exists(), message="task started")
        task_pid = int((project / "task-a.pid").read_text())
        code, err = stop(proc)
    finally:
        proc.kill()
    assert code == 0, err
    assert fires(project)[0]["status"] == "cancelled"
    wait_for(lambda: not os.path.exists(f"/proc/{task_pid}"), message="task killed")


def test_second_signal_terminates_at_once(project):
    add_job(project, "a", 60)
    proc = start(project, "--grace", "10m")
    try:
        wait_for(lambda: (project / "started-a").exists(), message="task started")
        proc.send_signal(signal.SIGINT)
        wait_for_log(proc, "stopping")  # the first signal is handled; now the second one
        code, err = stop(proc, signal.SIGINT)
    finally:
        proc.kill()
    assert code == 0, err
    assert fires(project)[0]["status"] == "cancelled"


def test_second_run_on_the_same_state_is_refused(project):
    proc = start(project)
    try:
        wait_for(lambda: (project / ".trigctl" / "state.db.lock").exists() and
                 (project / ".trigctl" / "state.db.lock").read_text().strip() == str(proc.pid), message="lock taken")
        other = run_trigctl("run", "triggers.yaml", cwd=project, timeout=30)
        assert other.returncode == 2
        assert "another `trigctl run`" in other.stderr and f"pid {proc.pid}" in other.stderr
        assert other.stderr.count("\n") == 1
    finally:
        stop(proc)


def test_kill_9_mid_run_marks_interrupted_and_reruns_after_killing_leftovers(project):
    add_job(project, "a", 60)
    proc = start(project)
    wait_for(lambda: (project / "started-a").exists(), message="task started")
    task_pid = int((project / "task-a.pid").read_text())
    proc.kill()  # SIGKILL: no cleanup at all
    proc.wait()
    assert os.path.exists(f"/proc/{task_pid}")  # the task outlived the crash
    (project / "started-a").unlink()
    remove_job(project, "a")  # the trigger has moved past it: only the rerun can bring it back
    (project / "queue" / "b.json").write_text(json.dumps({"job": "b", "seconds": 0}))
    proc = start(project)
    try:
        wait_for(lambda: (project / "started-a").exists(), message="rerun started")
        wait_for(lambda: not os.path.exists(f"/proc/{task_pid}")
                 or open(f"/proc/{task_pid}/stat").read().split()[2] == "Z", message="leftover task killed")
    finally:
        stop(proc, timeout=90)
    runs = {h["run_id"]: h for h in fires(project)}
    statuses = sorted((h["context"]["job"], h["status"]) for h in runs.values())
    assert ("a", "interrupted") in statuses
    assert [s for j, s in statuses if j == "a"].count("interrupted") == 1
    assert len([j for j, _ in statuses if j == "a"]) == 2  # fired again exactly once


def test_enable_disable_from_another_shell_within_a_second(project):
    proc = start(project)
    try:
        wait_for(lambda: run_trigctl("list", "--json", cwd=project).stdout.count('"skipped"') == 1, message="polling")
        assert run_trigctl("disable", "jobs", cwd=project).returncode == 0
        wait_for_log(proc, "disabled trigger=jobs")  # honoured (the promise is: within a second)
        add_job(project, "x", 0)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:  # while disabled (give it 2 s of chances), nothing fires
            assert fires(project) == []
            time.sleep(0.1)
        assert run_trigctl("enable", "jobs", cwd=project).returncode == 0
        wait_for(lambda: fires(project), timeout=5, message="fires after enable")
    finally:
        stop(proc)


def test_cancel_from_another_shell(project):
    add_job(project, "a", 60)
    proc = start(project)
    try:
        wait_for(lambda: (project / "started-a").exists(), message="task started")
        run_id = fires(project)[0]["run_id"]
        remove_job(project, "a")
        out = run_trigctl("cancel", str(run_id), cwd=project)
        assert out.returncode == 0, out.stderr
        wait_for(lambda: {h["run_id"]: h["status"] for h in fires(project)}[run_id] == "cancelled", timeout=10,
                 message="cancelled")
    finally:
        stop(proc)


def test_sighup_reloads_and_refuses_an_invalid_file(project):
    proc = start(project)
    try:
        wait_for(lambda: json.loads(run_trigctl("list", "--json", cwd=project).stdout)[0]["last_result"], message="polled")
        good = YAML + "  - name: extra\n    type: python\n    callable: jobs:poll\n    workflow: work\n"
        (project / "triggers.yaml").write_text(good)
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: len(json.loads(run_trigctl("list", "--json", cwd=project).stdout)) == 2
                 and json.loads(run_trigctl("list", "--json", cwd=project).stdout)[1]["last_result"], message="reloaded")
        (project / "triggers.yaml").write_text(good.replace("interval: 200ms", "interval: soon"))
        proc.send_signal(signal.SIGHUP)
        add_job(project, "after", 0)
        wait_for(lambda: fires(project), message="old config still running")
        code, err = stop(proc)
    finally:
        proc.kill()
    assert code == 0
    assert "reload_refused" in err and "is not a duration" in err
    assert "reloaded" in err


def test_run_once_exit_code_and_log_format_json(project):
    add_job(project, "a", 0)
    out = run_trigctl("run", "--once", "--log-format", "json", cwd=project)
    assert out.returncode == 0, out.stderr
    events = [json.loads(line) for line in out.stderr.splitlines()]
    assert {"start", "fired", "run_started", "run_finished", "stopped"} <= {e["event"] for e in events}
    assert out.stdout == ""


def test_python_m_trigctl_and_no_traceback_on_bad_config(project):
    (project / "triggers.yaml").write_text("version: 1\ntriggers: [\n")
    out = subprocess.run([sys.executable, "-m", "trigctl", "run"], cwd=project, capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.startswith("triggers.yaml:")


def test_run_once_polls_every_trigger_even_when_the_first_is_slow(tmp_path):
    """A hand-off during --once's single tick must not leave the remaining triggers unpolled."""
    (tmp_path / "slow.py").write_text("import time\ndef slow():\n    time.sleep(0.3)\n    return True\ndef fast():\n    return True\n")
    lines = ["version: 1", "workflows:", "  w:", "    tasks:", "      - argv: ['true']", "triggers:"]
    for name, fn in (("a-slow", "slow"), ("b-fast", "fast"), ("c-fast", "fast")):
        lines += [f"  - name: {name}", "    type: python", f"    callable: slow:{fn}", "    workflow: w"]
    (tmp_path / "triggers.yaml").write_text("\n".join(lines) + "\n")
    out = run_trigctl("run", "--once", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    fired = {h["trigger_name"] for h in json.loads(run_trigctl("history", "--json", cwd=tmp_path).stdout)}
    assert fired == {"a-slow", "b-fast", "c-fast"}

"""`command` triggers with real subprocesses."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from conftest import run_trigctl, wait_for

from trigctl.config import TriggerConfig
from trigctl.triggers.base import PollContext, PollError, PollOutcome, trigger_types
from trigctl.triggers.command import CommandTrigger


def make(tmp_path: Path, **options) -> CommandTrigger:
    return CommandTrigger(TriggerConfig(name="t", type="command", workflow="w", options=options), tmp_path)


def poll(trigger, timeout: float = 5) -> PollOutcome:
    return trigger.poll(PollContext(due_at=0, now=0, cursor=None, state={}, timeout=timeout))


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan may wait a moment for init to reap it)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return False
    return data[data.rfind(b")") + 2 :].split()[0] != b"Z"


def test_registered_and_blocking():
    cls = trigger_types()["command"]
    assert cls is CommandTrigger and cls.blocking is True and cls.default_dedupe_key is None


def test_exit_0_fires_with_json_object_as_context(tmp_path):
    out = poll(make(tmp_path, run='echo \'{"host": "db1", "lag": 12}\''))
    assert out.fires == [{"host": "db1", "lag": 12}]


@pytest.mark.parametrize("stdout", ["", "hello", "[1, 2]", "42", '"text"', "{not json", '{"x": NaN}'])
def test_exit_0_with_other_output_fires_with_empty_context(tmp_path, stdout):
    (tmp_path / "out.txt").write_text(stdout)
    assert poll(make(tmp_path, run="cat out.txt")).fires == [{}]


def test_exit_1_skips(tmp_path):
    out = poll(make(tmp_path, run="echo 'not yet' >&2; exit 1"))
    assert not out.fired and out.skip_reason == "exit code 1: not yet"


def test_other_exit_codes_are_errors_with_last_stderr_line(tmp_path):
    with pytest.raises(PollError) as e:
        poll(make(tmp_path, run="echo first >&2; echo 'disk not mounted' >&2; exit 7"))
    assert str(e.value) == "command failed: exit code 7: disk not mounted"
    with pytest.raises(PollError, match="killed by signal 9"):
        poll(make(tmp_path, run="kill -9 $$"))


def test_argv_runs_without_a_shell(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    script = "import json, sys; print(json.dumps({'arg': sys.argv[1], 'n': sys.argv[2]}))"
    out = poll(make(tmp_path, argv=[sys.executable, "-c", script, "$(touch pwned); `touch pwned2`", 5]))
    assert out.fires == [{"arg": "$(touch pwned); `touch pwned2`", "n": "5"}]
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()


def test_argv_missing_program_is_an_error(tmp_path):
    with pytest.raises(PollError, match="cannot start 'no-such-program-xyz'"):
        poll(make(tmp_path, argv=["no-such-program-xyz"]))


def test_env_is_added_to_the_parent_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("FROM_PARENT", "p")
    script = ("import json, os; print(json.dumps({k: os.environ.get(k) for k in "
              "('FROM_PARENT', 'EXTRA', 'TRIGCTL_TRIGGER')}))")
    out = poll(make(tmp_path, argv=[sys.executable, "-c", script], env={"EXTRA": "e"}))
    assert out.fires == [{"FROM_PARENT": "p", "EXTRA": "e", "TRIGCTL_TRIGGER": "t"}]


def test_cwd_defaults_to_base_dir_and_is_relative_to_it(tmp_path, monkeypatch):
    monkeypatch.chdir("/")
    (tmp_path / "sub").mkdir()
    (tmp_path / "marker").write_text("base")
    (tmp_path / "sub" / "marker").write_text("sub")
    assert poll(make(tmp_path, run="printf '{\"m\": \"%s\"}' \"$(cat marker)\"")).fires == [{"m": "base"}]
    assert poll(make(tmp_path, run="printf '{\"m\": \"%s\"}' \"$(cat marker)\"", cwd="sub")).fires == [{"m": "sub"}]
    with pytest.raises(PollError, match="cwd nope is not a directory"):
        poll(make(tmp_path, run="true", cwd="nope"))


def test_huge_json_output_is_refused(tmp_path):
    with pytest.raises(PollError, match="too large"):
        poll(make(tmp_path, argv=[sys.executable, "-c", "print('{\"x\": \"' + 'a' * 2_000_000 + '\"}')"]))


def test_sigterm_ignoring_command_is_killed_at_timeout(tmp_path):
    t = make(tmp_path, run='trap "" TERM; sleep 30 & echo $! > sleep.pid; wait; wait')
    started = time.monotonic()
    with pytest.raises(PollError, match=r"^command timed out after 1s$"):
        poll(t, timeout=1)
    elapsed = time.monotonic() - started
    assert elapsed < 7, elapsed
    pid = int((tmp_path / "sleep.pid").read_text())
    wait_for(lambda: not running(pid), timeout=3, message="the sleep child to be killed")


def test_background_child_left_behind_is_terminated(tmp_path):
    t = make(tmp_path, run='sleep 30 & echo $! > bg.pid; echo \'{"ok": true}\'')
    started = time.monotonic()
    assert poll(t).fires == [{"ok": True}]  # the child holding stdout open does not stall the poll
    assert time.monotonic() - started < 3
    pid = int((tmp_path / "bg.pid").read_text())
    wait_for(lambda: not running(pid), timeout=3, message="the background child to be terminated")


def test_close_stops_a_running_command(tmp_path):
    """Shutdown or reload closes the trigger: a command still running is terminated, not waited for."""
    t = make(tmp_path, run="echo $$ > cmd.pid; exec sleep 30")
    result: dict = {}

    def run():
        try:
            poll(t, timeout=30)
        except PollError as e:
            result["error"] = str(e)

    thread = threading.Thread(target=run)
    started = time.monotonic()
    thread.start()
    wait_for(lambda: (tmp_path / "cmd.pid").exists() and (tmp_path / "cmd.pid").read_text().strip(),
             timeout=5, message="the command to start")
    t.close()
    thread.join(10)
    assert not thread.is_alive()
    assert time.monotonic() - started < 5
    assert result["error"] == "command failed: killed by signal 15"


def test_end_to_end_command_context_reaches_workflow(tmp_path):
    (tmp_path / "check.py").write_text(textwrap.dedent("""
        import json, os
        print(json.dumps({"name": "report.csv", "rows": 3, "env": os.environ["CHECK_ENV"]}))
        """))
    (tmp_path / "triggers.yaml").write_text(textwrap.dedent(f"""
        version: 1
        workflows:
          load:
            tasks:
              - run: 'printf "%s %s %s" "$TRIGCTL_NAME" "$TRIGCTL_ROWS" "$TRIGCTL_ENV" > out.txt'
        triggers:
          - name: ready
            type: command
            workflow: load
            argv: ["{sys.executable}", check.py]
            env: {{CHECK_ENV: from-yaml}}
          - name: not-ready
            type: command
            workflow: load
            run: exit 1
        """))
    proc = run_trigctl("run", "--once", "triggers.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out.txt").read_text() == "report.csv 3 from-yaml"
    hist = run_trigctl("history", "--json", "-c", "triggers.yaml", cwd=tmp_path)
    rows = json.loads(hist.stdout)
    assert [r["trigger_name"] for r in rows if r["kind"] == "fire"] == ["ready"]


def test_end_to_end_error_exit_code_fails_once(tmp_path):
    (tmp_path / "triggers.yaml").write_text(textwrap.dedent("""
        version: 1
        workflows:
          w: {tasks: [{run: "touch ran"}]}
        triggers:
          - name: broken
            type: command
            workflow: w
            run: 'echo "permission denied" >&2; exit 4'
        """))
    proc = run_trigctl("run", "--once", "triggers.yaml", cwd=tmp_path)
    assert proc.returncode == 1
    assert "exit code 4" in proc.stderr and "permission denied" in proc.stderr
    assert not (tmp_path / "ran").exists()
    assert os.path.exists(tmp_path / ".trigctl" / "state.db")

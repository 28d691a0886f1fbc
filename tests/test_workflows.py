"""Workflows run real subprocesses: environment, argv, output passing, timeouts, retries, queue."""

from __future__ import annotations

import json
import os
import sys
import time

import pytest
from conftest import wait_for

from trigctl.config import load_config
from trigctl.store.sqlite import SQLiteStore
from trigctl.workflows import WorkflowRunner


@pytest.fixture
def setup(write_yaml, tmp_path):
    def make(workflows: str, max_concurrent: int = 8):
        cfg = load_config(write_yaml(f"version: 1\nmax_concurrent_runs: {max_concurrent}\nworkflows:\n{workflows}\n"))
        store = SQLiteStore(cfg.state_location())
        store.sync_triggers(["t"])
        runner = WorkflowRunner(cfg, store, kill_grace=1.0)
        return cfg, store, runner

    return make


def run_one(store, runner, context, workflow="wf"):
    run_id = store.enqueue_run("t", workflow, context, time.time()).run_id
    runner.pump()
    assert runner.join(60)
    return store.get_run(run_id)


def test_environment_context_and_output_passing(setup, tmp_path):
    _, store, runner = setup("""
  wf:
    tasks:
      - name: first
        run: 'echo "path=$TRIGCTL_PATH n=$TRIGCTL_N_ITEMS trig=$TRIGCTL_TRIGGER wf=$TRIGCTL_WORKFLOW"; echo "extra=from first" >> "$TRIGCTL_OUTPUT"'
      - name: second
        run: 'echo "extra=$TRIGCTL_EXTRA run=$TRIGCTL_RUN_ID"; cat "$TRIGCTL_CONTEXT_FILE"; echo; echo "$TRIGCTL_CONTEXT"'
""")
    run = run_one(store, runner, {"path": "/data/in.csv", "n-items": 3, "run_id": "spoofed"})
    assert run.status == "succeeded", run
    first, second = run.tasks
    assert "path=/data/in.csv n=3 trig=t wf=wf" in first["output_tail"]
    assert f"extra=from first run={run.id}" in second["output_tail"]  # the reserved name wins over context
    assert '"extra": "from first"' in second["output_tail"]


def test_argv_placeholders_are_data_never_shell(setup, tmp_path):
    _, store, runner = setup("""
  wf:
    tasks:
      - argv: [python3, -c, "import sys; print(repr(sys.argv[1:]))", "{{name}}", "pre-{{n}}-post"]
      - run: 'printf "%s" "$TRIGCTL_NAME" > seen.txt'
""")
    hostile = '$(touch pwned1); `touch pwned2`; rm -rf / "quoted"\n--option'
    run = run_one(store, runner, {"name": hostile, "n": 7})
    assert run.status == "succeeded", run.tasks
    assert repr([hostile, "pre-7-post"]) in run.tasks[0]["output_tail"]
    assert (tmp_path / "seen.txt").read_text() == hostile
    assert not (tmp_path / "pwned1").exists() and not (tmp_path / "pwned2").exists()


def test_missing_placeholder_fails_the_task(setup):
    _, store, runner = setup("  wf:\n    tasks:\n      - argv: [echo, '{{nope}}']\n")
    run = run_one(store, runner, {})
    assert run.status == "failed" and "nope" in run.error


def test_task_timeout_kills_the_whole_process_group(setup, tmp_path):
    _, store, runner = setup("""
  wf:
    tasks:
      - run: 'sh -c "trap \\"\\" TERM; sleep 30" & echo $! > child.pid; sleep 30'
        timeout: 1s
""")
    started = time.monotonic()
    run = run_one(store, runner, {})
    assert run.status == "failed" and "timed out after 1s" in run.error
    assert time.monotonic() - started < 15
    child = int((tmp_path / "child.pid").read_text())
    wait_for(lambda: not os.path.exists(f"/proc/{child}") or open(f"/proc/{child}/stat").read().split()[2] == "Z",
             message="child process killed")


def test_retries_with_doubling_delay_then_success(setup, tmp_path):
    _, store, runner = setup("""
  wf:
    tasks:
      - run: 'echo x >> attempts; [ $(wc -l < attempts) -ge 3 ]'
        retries: 3
        retry_delay: 100ms
""")
    started = time.monotonic()
    run = run_one(store, runner, {})
    assert run.status == "succeeded"
    assert run.tasks[0]["attempts"] == 3
    assert time.monotonic() - started >= 0.3  # 100ms + 200ms between the three attempts


def test_continue_on_error_and_failure_stops_the_run(setup):
    _, store, runner = setup("""
  wf:
    tasks:
      - {name: a, run: 'exit 3', continue_on_error: true}
      - {name: b, run: 'echo b'}
      - {name: c, run: 'exit 4'}
      - {name: d, run: 'echo never'}
""")
    run = run_one(store, runner, {})
    assert run.status == "failed"
    assert [(t["name"], t["status"], t["exit_code"]) for t in run.tasks] == [
        ("a", "failed", 3), ("b", "succeeded", 0), ("c", "failed", 4)]
    assert "task 'c' failed: exit code 4" in run.error


def test_workflow_timeout(setup):
    _, store, runner = setup("""
  wf:
    timeout: 1s
    tasks:
      - run: 'sleep 0.2'
      - run: 'sleep 30'
""")
    run = run_one(store, runner, {})
    assert run.status == "failed" and "workflow timed out after 1s" in run.error


def test_max_concurrent_runs_queue_is_fifo(setup, tmp_path):
    _, store, runner = setup("  wf:\n    tasks:\n      - run: 'echo $TRIGCTL_I >> order.txt; sleep 0.05'\n", max_concurrent=1)
    ids = [store.enqueue_run("t", "wf", {"i": i}, time.time(), dedupe="none").run_id for i in range(4)]
    runner.pump()
    assert runner.count() == 1
    for _ in range(4):
        assert runner.join(30)
        runner.pump()
    assert (tmp_path / "order.txt").read_text().split() == ["0", "1", "2", "3"]
    assert [store.get_run(i).status for i in ids] == ["succeeded"] * 4


def test_cancel_terminates_a_running_run(setup, tmp_path):
    _, store, runner = setup("  wf:\n    tasks:\n      - run: 'touch started; sleep 30'\n")
    run_id = store.enqueue_run("t", "wf", {}, time.time()).run_id
    runner.pump()
    wait_for(lambda: (tmp_path / "started").exists(), message="task started")
    assert runner.cancel(run_id)
    assert runner.join(15)
    run = store.get_run(run_id)
    assert run.status == "cancelled"
    assert store.active_runs() == []  # key released


def test_output_tail_is_bounded(setup):
    _, store, runner = setup("  wf:\n    tasks:\n      - run: 'seq 1 100000'\n")
    run = run_one(store, runner, {})
    tail = run.tasks[0]["output_tail"]
    assert len(tail) <= 4096 and tail.rstrip().endswith("100000")


def test_big_context_goes_through_the_file(setup):
    _, store, runner = setup("  wf:\n    tasks:\n      - run: 'python3 -c \"import json,os; print(len(json.load(open(os.environ[\\\"TRIGCTL_CONTEXT_FILE\\\"]))[\\\"blob\\\"]))\"'\n")
    run = run_one(store, runner, {"blob": "x" * 500_000})
    assert run.status == "succeeded", run.tasks
    assert "500000" in run.tasks[0]["output_tail"]
    assert json.loads(json.dumps(run.context))["blob"] == "x" * 500_000


def test_task_env_cannot_override_reserved_names(setup):
    _, store, runner = setup("  wf:\n    tasks:\n      - run: 'echo $TRIGCTL_TRIGGER $MINE'\n        env: {TRIGCTL_TRIGGER: spoofed, MINE: 'yes'}\n")
    run = run_one(store, runner, {})
    assert run.tasks[0]["output_tail"].strip() == "t yes"


def test_the_task_environment_is_the_parent_one_byte_exact_with_the_config_and_context_over_it(setup, tmp_path, monkeypatch):
    # task_env copies os.environ's bytes (workflows.parent_environ): a value that is not UTF-8
    # reaches the task as it is; the task's env: and the context override the parent's variables,
    # and the reserved names win over both.
    monkeypatch.setitem(os.environb, b"I13_RAW", b"caf\xe9\xff")
    monkeypatch.setitem(os.environb, b"I13_MINE", b"parent")
    monkeypatch.setitem(os.environb, b"TRIGCTL_N", b"parent")
    monkeypatch.setitem(os.environb, b"TRIGCTL_WORKFLOW", b"parent")
    out = tmp_path / "env.bin"
    dump = ("import os; open(os.environ['OUT'], 'wb').write(b'\\\\0'.join(k + b'=' + v for k, v in sorted(os.environb.items())))")
    _, store, runner = setup(f"  wf:\n    tasks:\n      - argv: ['{sys.executable}', '-c', \"{dump}\"]\n"
                             f"        env: {{OUT: '{out}', I13_MINE: 'config', TRIGCTL_N: 'config'}}\n")
    run = run_one(store, runner, {"n": 7, "w": "caf\udce9"})
    assert run.status == "succeeded", run.tasks
    env = dict(item.split(b"=", 1) for item in out.read_bytes().split(b"\0"))
    assert env[b"I13_RAW"] == b"caf\xe9\xff" and env[b"I13_MINE"] == b"config"
    assert env[b"TRIGCTL_N"] == b"7" and env[b"TRIGCTL_W"] == b"caf\xe9" and env[b"TRIGCTL_WORKFLOW"] == b"wf"

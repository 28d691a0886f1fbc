"""Nothing from a peer executes: files others drop into a task's working directory, and values
that reach a task from outside (file names, contexts, TRIGCTL_OUTPUT lines), stay data."""

from __future__ import annotations

import json
import os
import textwrap
import time
from pathlib import Path

import pytest
from conftest import run_trigctl
from helpers import workflow_yaml

from trigctl.config import load_config
from trigctl.store.sqlite import SQLiteStore
from trigctl.workflows import WorkflowRunner, fill_argv

# Modules a peer could plant in an inbox, named like ones the call child (or the interpreter
# starting it, or runpy for -m) imports: each one leaves a marker file if it is ever executed.
PLANTED = ["json", "typing", "site", "runpy", "types", "inspect", "pathlib", "asyncio", "dataclasses",
           "importlib", "enum", "re", "collections", "sitecustomize", "usercustomize", "peer_mod"]


def plant(inbox: Path, markers: Path) -> None:
    for name in PLANTED:
        (inbox / f"{name}.py").write_text(
            f"open({str(markers / ('PWNED-' + name))!r}, 'w').close()\n"
            f"raise SystemExit('peer module {name} ran')\n")
    pkg = inbox / "trigctl"
    pkg.mkdir()  # a fake trigctl package, too: the child must import the real one
    (pkg / "__init__.py").write_text(f"open({str(markers / 'PWNED-trigctl')!r}, 'w').close()\n")
    (pkg / "_calltask.py").write_text(f"open({str(markers / 'PWNED-calltask')!r}, 'w').close()\n")


def write_project(tmp_path: Path, tasks: str, module: str | None = None) -> None:
    (tmp_path / "triggers.yaml").write_text(workflow_yaml(
        tasks, """{name: once, type: command, workflow: wf, run: "echo '{\\"n\\": 1}'"}"""))
    if module is not None:
        (tmp_path / "steps.py").write_text(textwrap.dedent(module))


def show_last(tmp_path: Path) -> dict:
    hist = json.loads(run_trigctl("history", "--json", cwd=tmp_path).stdout)
    run_id = next(h["run_id"] for h in hist if h["kind"] == "fire")
    return json.loads(run_trigctl("show", str(run_id), "--json", cwd=tmp_path).stdout)


def test_call_task_in_a_directory_peers_write_imports_nothing_from_it(tmp_path):
    """A `call:` task whose cwd is an inbox: no module planted there runs (not json.py, typing.py,
    site.py, runpy.py, a fake trigctl package...), and the callable cannot import from it."""
    inbox, markers = tmp_path / "inbox", tmp_path / "markers"
    inbox.mkdir()
    markers.mkdir()
    plant(inbox, markers)
    write_project(tmp_path, """
        - name: work
          call: steps:work
          cwd: inbox
        - name: after
          run: 'printf "%s|%s|%s" "$TRIGCTL_CWD_IS_INBOX" "$TRIGCTL_PEER_IMPORTABLE" "$TRIGCTL_JSON_FROM" > after.txt'
        """, module="""
        import importlib.util, json, os, sys, typing, asyncio, dataclasses, enum, re, collections

        def work(context):
            return {"cwd_is_inbox": os.getcwd().endswith("/inbox"),
                    "peer_importable": importlib.util.find_spec("peer_mod") is not None,
                    "json_from": os.path.dirname(json.__file__) == os.getcwd()}
        """)
    proc = run_trigctl("run", "--once", cwd=tmp_path, timeout=120)
    assert sorted(p.name for p in markers.iterdir()) == []
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "after.txt").read_text() == "true|false|false"
    assert show_last(tmp_path)["status"] == "succeeded"


def test_call_task_keeps_pythonpath_and_the_yaml_directory_but_not_empty_entries(tmp_path):
    """PYTHONPATH still reaches the callable (absolute entries, and relative ones resolved against
    where trigctl runs); an empty entry, which Python reads as the working directory, does not make
    the task's cwd importable."""
    inbox, lib, markers = tmp_path / "inbox", tmp_path / "lib", tmp_path / "markers"
    for d in (inbox, lib, markers):
        d.mkdir()
    plant(inbox, markers)
    (lib / "extlib.py").write_text("VALUE = 'from PYTHONPATH'\n")
    (tmp_path / "helper.py").write_text("VALUE = 'from the YAML directory'\n")
    write_project(tmp_path, """
        - name: work
          call: steps:work
          cwd: inbox
        - name: after
          run: 'printf "%s|%s|%s" "$TRIGCTL_EXT" "$TRIGCTL_HELPER" "$TRIGCTL_PEER" > after.txt'
        """, module="""
        import importlib.util
        import extlib, helper

        def work(context):
            return {"ext": extlib.VALUE, "helper": helper.VALUE,
                    "peer": importlib.util.find_spec("peer_mod") is not None}
        """)
    proc = run_trigctl("run", "--once", cwd=tmp_path, timeout=120, env={"PYTHONPATH": f":lib::{os.pathsep}"})
    assert sorted(p.name for p in markers.iterdir()) == []
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "after.txt").read_text() == "from PYTHONPATH|from the YAML directory|false"


# --------------------------------------------------------------------------- values stay data


@pytest.fixture
def setup(write_yaml):
    def make(workflows: str):
        cfg = load_config(write_yaml(f"version: 1\nworkflows:\n{workflows}\n"))
        store = SQLiteStore(cfg.state_location())
        store.sync_triggers(["t"])
        return store, WorkflowRunner(cfg, store, kill_grace=1.0)

    return make


def run_one(store, runner, context):
    run_id = store.enqueue_run("t", "wf", context, time.time()).run_id
    runner.pump()
    assert runner.join(60)
    return store.get_run(run_id)


def test_argv_program_from_data_may_not_look_like_an_option(setup):
    """`argv: ["{{prog}}", ...]` with a value `-a`: the task fails with a clear error before any
    shell's `exec` (bash's reads -a NAME as an option) sees it."""
    store, runner = setup("  wf:\n    tasks:\n      - argv: ['{{prog}}', hello]\n")
    run = run_one(store, runner, {"prog": "-a"})
    assert run.status == "failed" and "the program" in run.error and "starts with '-'" in run.error


def test_argv_placeholders_are_filled_once():
    """A value that contains `{{other}}` is not filled again (no second expansion of data)."""
    out = fill_argv(("echo", "{{a}}", "[{{b}}]"), {"a": "{{b}}", "b": "secret", "c": "x"})
    assert out == ["echo", "{{b}}", "[secret]"]


def test_run_shell_string_is_never_templated(setup, tmp_path):
    """`run:` gets context values only through the environment: `{{name}}` and `$(...)` in a value
    reach the shell as data."""
    store, runner = setup("""
  wf:
    tasks:
      - run: 'printf "%s|%s" "{{name}}" "$TRIGCTL_NAME" > out.txt'
""")
    run = run_one(store, runner, {"name": "$(touch pwned)`touch pwned2`"})
    assert run.status == "succeeded", run.error
    assert (tmp_path / "out.txt").read_text() == "{{name}}|$(touch pwned)`touch pwned2`"
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()


def test_context_keys_cannot_set_the_variables_trigctl_commands_read(setup, tmp_path, monkeypatch):
    """A context key `state`, `config` or `debug` (from a peer's JSON, or a TRIGCTL_OUTPUT line) does
    not become TRIGCTL_STATE / TRIGCTL_CONFIG / TRIGCTL_DEBUG, which a `trigctl` command in the task
    would obey; nor do output lines override the reserved names. The values stay in TRIGCTL_CONTEXT."""
    for name in ("TRIGCTL_STATE", "TRIGCTL_CONFIG", "TRIGCTL_DEBUG"):
        monkeypatch.delenv(name, raising=False)
    store, runner = setup("""
  wf:
    tasks:
      - run: 'printf "state=/tmp/other.db\\nrun_id=666\\nconfig=/tmp/evil.yaml\\n" >> "$TRIGCTL_OUTPUT"'
      - run: 'printf "%s|%s|%s|%s" "${TRIGCTL_STATE-unset}" "${TRIGCTL_CONFIG-unset}" "${TRIGCTL_DEBUG-unset}" "$TRIGCTL_RUN_ID" > env.txt; printf "%s" "$TRIGCTL_CONTEXT" > ctx.json'
""")
    run = run_one(store, runner, {"debug": "1", "state": "x"})
    assert run.status == "succeeded", run.error
    assert (tmp_path / "env.txt").read_text() == f"unset|unset|unset|{run.id}"
    assert json.loads((tmp_path / "ctx.json").read_text())["state"] == "/tmp/other.db"

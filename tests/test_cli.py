"""The command line through click's CliRunner: exit codes, output shapes, and the state afterwards."""

from __future__ import annotations

import json
import os
import stat
import time

import pytest
from conftest import cli_json, open_state

from trigctl.cli import main

COMMANDS = ["init", "validate", "run", "poll", "list", "processes", "enable", "disable", "history", "show", "cancel", "prune"]

YAML = """
version: 1
workflows:
  ok:
    tasks:
      - run: 'echo "hello $TRIGCTL_WHO"'
  bad:
    tasks:
      - run: 'exit 3'
triggers:
  - name: greet
    type: python
    callable: mytriggers:greet
    workflow: ok
    interval: 1m
  - name: broken
    type: python
    callable: mytriggers:greet
    workflow: bad
    interval: 1m
"""


@pytest.fixture
def project(write_yaml, callables):
    callables("def greet():\n    return {'who': 'world'}\n")
    return write_yaml(YAML)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(cli, command):
    result = cli(command, "--help")
    assert result.exit_code == 0 and "Usage:" in result.output


def test_every_command_is_documented():
    from pathlib import Path

    doc = (Path(__file__).parent.parent / "docs" / "cli.md").read_text()
    for command in COMMANDS:
        assert f"## trigctl {command}" in doc, command
    assert set(COMMANDS) == set(main.commands)


def test_validate_ok_and_errors(cli, project, tmp_path):
    assert cli("validate").exit_code == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\ntriggers:\n  - name: x\n    type: python\n    workflow: nope\n    interval: 5 sec\n")
    result = cli("validate", str(bad))
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert all(line.startswith(f"{bad}:") for line in lines), lines
    assert "Traceback" not in result.output
    doc = json.loads(cli("validate", str(bad), "--json").stdout)
    assert doc["valid"] is False
    assert set(doc["errors"][0]) == {"file", "line", "column", "path", "message"}
    assert cli_json(cli, "validate") == {"valid": True, "errors": []}


def test_run_once_list_history_show(cli, project, tmp_path):
    result = cli("run", "--once", "--trigger", "greet")
    assert result.exit_code == 0, result.output
    listing = cli_json(cli, "list")
    assert [set(r) for r in listing] == [{"name", "type", "workflow", "interval", "enabled", "dedupe", "last_poll_at",
                                          "last_result", "next_poll_at", "active_runs", "fires", "consecutive_errors", "last_reason",
                                          "loop_alive"}] * 2
    greet = listing[0]
    assert (greet["name"], greet["last_result"], greet["fires"], greet["interval"]) == ("greet", "fired", 1, 60.0)
    assert listing[1]["last_result"] is None  # not polled: --trigger greet only
    hist = cli_json(cli, "history")
    assert len(hist) == 1
    assert set(hist[0]) == {"id", "trigger_name", "kind", "context", "context_hash", "run_id", "status", "started_at",
                            "completed_at", "duration", "error", "count"}
    assert (hist[0]["kind"], hist[0]["status"], hist[0]["context"]) == ("fire", "succeeded", {"who": "world"})
    assert hist[0]["started_at"].endswith("Z") and isinstance(hist[0]["duration"], float)
    run = cli_json(cli, "show", str(hist[0]["run_id"]))
    assert set(run) == {"id", "trigger_name", "workflow", "status", "context", "started_at", "completed_at", "tasks"}
    assert run["tasks"][0]["output_tail"] == "hello world\n"
    assert set(run["tasks"][0]) == {"name", "status", "exit_code", "started_at", "completed_at", "duration", "output_tail"}
    text = cli("show", str(hist[0]["run_id"]))
    assert "hello world" in text.output and "succeeded" in text.output


def test_run_once_exits_1_when_a_run_fails(cli, project):
    result = cli("run", "--once")
    assert result.exit_code == 1
    statuses = {h["trigger_name"]: h["status"] for h in cli_json(cli, "history")}
    assert statuses == {"greet": "succeeded", "broken": "failed"}
    failed = cli_json(cli, "history", "--status", "failed")
    assert [h["trigger_name"] for h in failed] == ["broken"]
    assert cli_json(cli, "history", "greet", "--limit", "5")[0]["trigger_name"] == "greet"
    assert cli_json(cli, "history", "--since", "1h") and cli_json(cli, "history", "--since", "2999-01-01T00:00:00Z") == []


def test_unknown_trigger_names_exit_2(cli, project):
    for args in (["enable", "nope"], ["disable", "greet", "nope"], ["poll", "nope"], ["history", "nope"],
                 ["run", "--once", "--trigger", "nope"]):
        result = cli(*args)
        assert result.exit_code == 2, args
        assert "unknown trigger 'nope'" in result.stderr


def test_enable_disable_persist_and_work_with_only_state(cli, project, tmp_path):
    assert cli("disable", "broken").exit_code == 0
    assert [r["enabled"] for r in cli_json(cli, "list")] == [True, False]
    state = str(tmp_path / ".trigctl" / "state.db")
    os.rename(project, tmp_path / "elsewhere.yaml")
    assert cli("enable", "broken", "--state", state).exit_code == 0
    assert cli("disable", "nope", "--state", state).exit_code == 2
    os.rename(tmp_path / "elsewhere.yaml", project)
    assert [r["enabled"] for r in cli_json(cli, "list")] == [True, True]


def test_poll_shows_but_records_nothing(cli, project):
    doc = cli_json(cli, "poll", "greet")
    assert doc["trigger_name"] == "greet" and doc["result"] == "fired"
    assert doc["fires"][0]["context"] == {"who": "world"} and doc["fires"][0]["suppressed"] is False
    assert len(doc["fires"][0]["dedupe_key"]) == 64 and isinstance(doc["duration"], float)
    assert cli_json(cli, "history") == []


def test_poll_reports_suppression(cli, project):
    store = open_state(project)
    store.sync_triggers(["greet"])
    from trigctl.store.base import FireRequest, PollStats, dedupe_hash

    ctx = {"who": "world"}
    store.record_fires("greet", "ok", [FireRequest(ctx, dedupe_hash("greet", ctx, None), "running")], PollStats("greet"),
                       time.time(), None, {})
    store.close()
    doc = cli_json(cli, "poll", "greet")
    assert doc["result"] == "duplicate" and doc["fires"][0]["suppressed"] is True
    assert "still active" in doc["fires"][0]["reason"]


def test_cancel_queued_run_and_prune(cli, project):
    store = open_state(project)
    run_id = store.enqueue_run("greet", "ok", {"a": 1}, time.time() - 100 * 86400).run_id
    store.close()
    assert cli("cancel", str(run_id)).exit_code == 0
    assert cli_json(cli, "show", str(run_id))["status"] == "cancelled"
    assert cli("cancel", str(run_id)).exit_code == 1  # no longer active
    assert cli("cancel", "9999").exit_code == 2
    assert "pruned" in cli("prune", "--older-than", "30d").output
    assert cli("prune", "--older-than", "soon").exit_code == 2


def test_state_file_is_owner_only(cli, project, tmp_path):
    cli("run", "--once", "--trigger", "greet")
    state = tmp_path / ".trigctl" / "state.db"
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.parent.stat().st_mode) == 0o700


def test_config_and_state_from_environment(cli, project, tmp_path, monkeypatch):
    other = tmp_path / "sub"
    other.mkdir()
    monkeypatch.chdir(other)
    monkeypatch.setenv("TRIGCTL_CONFIG", str(project))
    monkeypatch.setenv("TRIGCTL_STATE", str(tmp_path / "custom.db"))
    assert cli("run", "--once", "--trigger", "greet").exit_code == 0
    assert (tmp_path / "custom.db").exists() and not (tmp_path / ".trigctl").exists()


def test_missing_config_is_one_line_exit_2(cli, tmp_path):
    result = cli("list")
    assert result.exit_code == 2
    assert result.stderr.strip() == "triggers.yaml:1:1: no such file (create one with `trigctl init`)"


def test_init_writes_a_valid_starter_and_refuses_to_overwrite(cli, tmp_path):
    assert cli("init").exit_code == 0
    assert cli("validate").exit_code == 0, cli("validate").stderr
    assert cli("init").exit_code == 2


def test_history_and_show_with_no_state_yet(cli, tmp_path):
    state = str(tmp_path / "none.db")
    assert cli_json(cli, "history", "--state", state) == []
    assert cli("show", "1", "--state", state).exit_code == 2
    assert not os.path.exists(state)  # reading never creates the state


def test_list_uses_the_snapshot_run_saved_and_notices_edits(cli, project, tmp_path):
    assert cli("run", "--once", "--trigger", "greet").exit_code == 0
    store = open_state(project)
    from trigctl.snapshot import config_fingerprint

    assert store.config_snapshot(str(project.resolve()), config_fingerprint(project)) is not None
    store.close()
    assert [r["name"] for r in cli_json(cli, "list")] == ["greet", "broken"]
    project.write_text(project.read_text().replace("interval: 1m\n  - name: broken", "interval: 2m\n  - name: broken"))
    assert cli_json(cli, "list")[0]["interval"] == 120.0  # the edited file, not the snapshot
    project.write_text(project.read_text().replace("interval: 2m\n  - name: broken", "interval: ${GREET_EVERY:-3m}\n  - name: broken"))
    assert cli_json(cli, "list")[0]["interval"] == 180.0

"""docs/deployment.md for real: the systemd unit it shows is examples/trigctl.service and its
command line is one trigctl accepts, the stop timeout leaves the grace period room, the online
backup it documents works against a live loop, and shell completion (through bash itself)
completes trigger names and run ids."""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_trigctl
from realproc import RunProc

from trigctl.durations import parse_duration

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "examples" / "trigctl.service"
DOC = ROOT / "docs" / "deployment.md"

YAML = """
version: 1
state: state.db
workflows:
  ok:
    tasks:
      - run: 'true'
triggers:
  - name: nightly-report
    type: python
    callable: mytriggers:go
    workflow: ok
    interval: 200ms
    dedupe: none
  - name: inbox
    type: python
    callable: mytriggers:go
    workflow: ok
    interval: 1h
"""


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return parser


def _project(tmp_path: Path) -> Path:
    (tmp_path / "triggers.yaml").write_text(YAML)
    (tmp_path / "mytriggers.py").write_text("def go():\n    return True\n")
    return tmp_path


def test_the_documented_unit_is_the_example_file():
    shown = re.search(r"```ini\n(.*?)```", DOC.read_text(), re.S)
    assert shown
    without_comments = "\n".join(ln for ln in UNIT.read_text().splitlines() if not ln.startswith("#"))
    assert shown.group(1).strip() == without_comments.strip()


def test_the_unit_gives_runs_their_grace_before_systemd_kills():
    service = _unit()["Service"]
    assert service["Type"] == "simple" and service["KillSignal"] == "SIGTERM" and service["Restart"] == "on-failure"
    assert service["KillMode"] == "mixed"  # SIGTERM to trigctl only, not to every task at once
    argv = shlex.split(service["ExecStart"])
    grace = parse_duration(argv[argv.index("--grace") + 1])
    assert parse_duration(service["TimeoutStopSec"]) >= grace + 10
    assert service["StateDirectory"] == "trigctl" and "/var/lib/trigctl/state.db" in DOC.read_text()


def test_the_units_command_line_is_one_trigctl_accepts(tmp_path):
    project = _project(tmp_path)
    argv = shlex.split(_unit()["Service"]["ExecStart"])
    assert Path(argv[0]).name == "trigctl" and argv[1] == "run"
    args = [str(project / "triggers.yaml") if a == "/etc/trigctl/triggers.yaml" else a for a in argv[2:]]
    done = run_trigctl("run", *args, "--once", cwd=project)
    assert done.returncode == 0, done.stderr
    events = [json.loads(line)["event"] for line in done.stderr.splitlines()]
    assert events[0] == "start" and "fired" in events  # JSON lines, as journald stores them


def test_the_documented_online_backup_works_while_the_loop_writes(tmp_path):
    project = _project(tmp_path)
    snippet = re.search(r"python -c '(import sqlite3, sys; [^']+)'", DOC.read_text())
    assert snippet
    loop = RunProc(project, "triggers.yaml", "--log-format", "json")
    try:
        assert loop.wait_until(lambda log: log.count('"event": "run_finished"') >= 3, timeout=30), loop.stderr
        backup = tmp_path / "backup.db"
        done = subprocess.run([sys.executable, "-c", snippet.group(1), str(project / "state.db"), str(backup)],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    finally:
        assert loop.stop() == 0, loop.stderr
    with sqlite3.connect(backup) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    history = run_trigctl("history", "--state", str(backup), "--json", cwd=tmp_path)
    assert history.returncode == 0 and len(json.loads(history.stdout)) >= 3, history.stderr


def _bash_complete(cwd: Path, words: list[str]) -> list[str]:
    """What bash offers at Tab after ``words`` (the last one being typed), with the completion
    script trigctl generates sourced as the docs say."""
    script = ('eval "$(_TRIGCTL_COMPLETE=bash_source trigctl)"; COMP_WORDS=(' + " ".join(shlex.quote(w) for w in words)
              + f"); COMP_CWORD={len(words) - 1}; _trigctl_completion trigctl; printf '%s\\n' \"${{COMPREPLY[@]}}\"")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(["bash", "-c", script], cwd=cwd, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return [line for line in done.stdout.splitlines() if line]


@pytest.mark.skipif(not (Path(sys.executable).parent / "trigctl").exists(), reason="trigctl is not installed beside this Python")
def test_bash_completes_trigger_names_and_run_ids(tmp_path):
    project = _project(tmp_path)
    assert _bash_complete(project, ["trigctl", "dis"]) == ["disable"]
    assert _bash_complete(project, ["trigctl", "enable", ""]) == ["nightly-report", "inbox"]
    assert _bash_complete(project, ["trigctl", "history", "ni"]) == ["nightly-report"]
    assert _bash_complete(project, ["trigctl", "disable", "inbox", ""]) == ["nightly-report"]  # not twice
    assert _bash_complete(project, ["trigctl", "show", ""]) == []  # no runs yet, no state: nothing, no error
    assert run_trigctl("run", "--once", cwd=project).returncode == 0
    assert run_trigctl("run", "--once", "--trigger", "nightly-report", cwd=project).returncode == 0
    assert _bash_complete(project, ["trigctl", "show", ""]) == ["3", "2", "1"]  # newest first
    assert _bash_complete(project, ["trigctl", "cancel", ""]) == []  # none queued or running
    (project / "triggers.yaml").write_text("version: 1\ntriggers: [\n")  # broken: completes nothing, quietly
    assert _bash_complete(project, ["trigctl", "enable", ""]) == []


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_systemd_accepts_the_unit(tmp_path):
    """`systemd-analyze verify` parses every line (a misspelt setting or value is reported), with the
    venv's trigctl for /opt/trigctl/bin/trigctl and this user for trigctl (which it checks exist)."""
    import pwd

    me = pwd.getpwuid(os.getuid())
    text = (UNIT.read_text().replace("/opt/trigctl/bin/trigctl", str(Path(sys.executable).parent / "trigctl"))
            .replace("User=trigctl", f"User={me.pw_name}").replace("Group=trigctl", f"Group={me.pw_gid}"))
    unit = tmp_path / "trigctl.service"
    unit.write_text(text)
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr.strip() == "", done.stderr

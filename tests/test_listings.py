"""`history` and `list` as people read them: rows that fit 100 columns (a terminal: its width) with
the long parts cut, colour only on a terminal and never with NO_COLOR, `--wide` for everything,
`--follow` streaming rows as they are recorded, and `list` saying when no loop is running."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

from conftest import run_trigctl
from realproc import Lines, RunProc

LONG = "a-trigger-with-a-name-much-longer-than-twenty-characters"
YAML = f"""
version: 1
state: state.db
workflows:
  ok:
    tasks:
      - run: 'true'
  slow:
    tasks:
      - run: 'sleep 1'
  bad:
    tasks:
      - run: 'exit 3'
triggers:
  - name: {LONG}
    type: python
    callable: mytriggers:wordy
    workflow: ok
    interval: 1h
  - name: fails
    type: python
    callable: mytriggers:wordy
    workflow: bad
    interval: 1h
  - name: slow
    type: python
    callable: mytriggers:wordy
    workflow: slow
    interval: 300ms
    dedupe: none
"""
CALLABLES = "def wordy():\n    return {'words': ' '.join(['lorem ipsum dolor sit amet'] * 20)}\n"
SGR = re.compile(r"\x1b\[[0-9;]*m")


def _project(tmp_path: Path) -> Path:
    (tmp_path / "triggers.yaml").write_text(YAML)
    (tmp_path / "mytriggers.py").write_text(CALLABLES)
    return tmp_path


def _with_history(tmp_path: Path) -> Path:
    project = _project(tmp_path)
    once = run_trigctl("run", "--once", "--trigger", LONG, "--trigger", "fails", cwd=project)
    assert once.returncode == 1, once.stderr  # the `fails` run failed
    return project


def _on_a_terminal(cwd: Path, *args: str, columns: int = 120, env: dict | None = None) -> str:
    """``trigctl ARGS`` with stdout on a real pseudo-terminal of ``columns`` columns: what it printed."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    environ = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "COLUMNS", "LINES", "TERM")}
    proc = subprocess.Popen([sys.executable, "-m", "trigctl", *args], cwd=cwd, stdout=follower, stderr=subprocess.PIPE,
                            env={**environ, "TERM": "xterm-256color", **(env or {})})
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: the other side closed
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    assert proc.wait(30) == 0, proc.stderr.read() if proc.stderr else ""
    return b"".join(chunks).decode().replace("\r\n", "\n")


def test_history_fits_100_columns_when_piped_and_wide_shows_everything(tmp_path):
    project = _with_history(tmp_path)
    out = run_trigctl("history", cwd=project)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["ID", "WHEN", "TRIGGER", "KIND", "RUN", "STATUS", "DURATION", "COUNT", "CONTEXT", "/", "ERROR"]
    assert len(lines) == 3 and all(len(line) <= 100 for line in lines), out.stdout
    assert all(line.endswith("…") for line in lines[1:]), out.stdout  # the context, cut with an ellipsis
    assert LONG not in out.stdout and LONG[:19] + "…" in out.stdout  # a long name is cut too, not wrapped
    assert "\x1b" not in out.stdout  # no colour into a pipe
    wide = run_trigctl("history", "--wide", cwd=project)
    squeezed = "".join(wide.stdout.split())  # folded over lines, in its column
    assert LONG in wide.stdout and "loremipsumdolorsitamet" * 20 in squeezed, wide.stdout


def test_history_on_a_terminal_fits_its_width_and_is_in_colour_unless_no_color(tmp_path):
    project = _with_history(tmp_path)
    for columns in (80, 140):
        screen = _on_a_terminal(project, "history", columns=columns)
        plain = SGR.sub("", screen)
        assert all(len(line) <= columns for line in plain.splitlines()), plain
        assert max(len(line) for line in plain.splitlines()) > columns - 5  # the context takes what is left
        succeeded = re.search(r"\x1b\[[0-9;]*32m(succeeded)", screen)  # green
        failed = re.search(r"\x1b\[[0-9;]*31m(failed)", screen)  # red
        assert succeeded and failed, repr(screen)
    no_color = _on_a_terminal(project, "history", env={"NO_COLOR": "1"})
    assert "succeeded" in no_color and not re.search(r"\x1b\[[0-9;]*3[0-9]m", no_color), repr(no_color)


def test_history_follow_streams_rows_as_they_are_recorded_and_change(tmp_path):
    project = _project(tmp_path)
    follow = subprocess.Popen([sys.executable, "-m", "trigctl", "history", "--follow", "--json", "slow"], cwd=project,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    loop = RunProc(project, "triggers.yaml", "--trigger", "slow", "--log-format", "json")
    try:
        seen: dict[int, list[str]] = {}
        deadline = time.monotonic() + 30
        lines = Lines(follow.stdout)
        # each fire shows up while its run is queued or running, then again when the run has ended
        while not any(statuses[0] in ("queued", "running") and statuses[-1] == "succeeded" for statuses in seen.values()):
            assert time.monotonic() < deadline, seen
            doc = json.loads(lines.next(timeout=max(0.1, deadline - time.monotonic())))
            assert doc["trigger_name"] == "slow" and doc["kind"] == "fire"
            seen.setdefault(doc["id"], []).append(doc["status"])
    finally:
        assert loop.stop() == 0, loop.stderr
        follow.send_signal(signal.SIGINT)
        _, err = follow.communicate(timeout=10)
    assert follow.returncode == 0 and err == "", err  # Ctrl-C ends it quietly


def test_history_follow_prints_a_table_that_grows(tmp_path):
    project = _with_history(tmp_path)
    follow = subprocess.Popen([sys.executable, "-m", "trigctl", "history", "-f"], cwd=project,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = Lines(follow.stdout)
        header = lines.next()
        old = [lines.next(), lines.next()]
        assert header.split()[:3] == ["ID", "WHEN", "TRIGGER"] and "fails" in old[1]  # oldest first, as `tail -f`
        assert run_trigctl("run", "--once", "--trigger", "fails", cwd=project).returncode == 1
        new = lines.next()
        assert new.split()[0] == "3" and "fails" in new and len(new.rstrip("\n")) <= 100, new
    finally:
        follow.send_signal(signal.SIGINT)
        follow.communicate(timeout=10)
    assert follow.returncode == 0


def test_list_says_when_no_loop_is_running(tmp_path):
    project = _project(tmp_path)
    fresh = run_trigctl("list", cwd=project)
    assert fresh.stdout.splitlines()[-1] == "not running: no `trigctl run` has polled with this state yet", fresh.stdout
    loop = RunProc(project, "triggers.yaml", "--trigger", "slow", "--log-format", "json")
    try:
        loop.wait_line('"event": "fired"')
        alive = run_trigctl("list", cwd=project)
        assert "not running" not in alive.stdout and re.search(r"^slow +python +slow +300ms +yes +(now|\S+ ago) +\w+ +(now|in \S+) ", alive.stdout, re.M), alive.stdout
        assert {t["loop_alive"] for t in json.loads(run_trigctl("list", "--json", cwd=project).stdout)} == {True}
    finally:
        assert loop.stop() == 0, loop.stderr
    stopped = run_trigctl("list", cwd=project)
    assert re.fullmatch(r"not running since \S+ \S+ \((now|[0-9.]+s ago)\): polls resume when `trigctl run` starts",
                        stopped.stdout.splitlines()[-1]), stopped.stdout
    slow = next(line for line in stopped.stdout.splitlines() if line.startswith("slow "))
    assert " in " not in slow and " ago " in slow  # no next poll that will not come
    assert {t["loop_alive"] for t in json.loads(run_trigctl("list", "--json", cwd=project).stdout)} == {False}

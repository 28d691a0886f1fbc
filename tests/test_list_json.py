"""`list --json` is written without a record per trigger (api.list_json): its bytes must stay what
the earlier code wrote, ``[TriggerStatus.as_dict() ...]`` through render.json_text, on a varied
project and state (trigger types, enabled overrides both ways, errors, active runs, triggers never
polled, unicode, markup and terminal controls in messages, times on rounding edges), on
SQLite and PostgreSQL, with the YAML's snapshot in the state and after the YAML changed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import run_trigctl

from trigctl import api, render
from trigctl.store.base import PollStats

NAMES = ["plain", "cron-5min", "every-1m", "inbox-files", "never-polled"]
YAML = """
version: 1
state: {state}
workflows:
  wf:
    tasks:
      - run: 'true'
  wf-2:
    tasks:
      - run: 'true'
triggers:
  - name: plain
    type: python
    callable: mytriggers:noop
    workflow: wf
    interval: 1.5s
  - name: cron-5min
    type: schedule
    cron: "*/5 * * * *"
    workflow: wf-2
  - name: every-1m
    type: schedule
    every: 1m
    workflow: wf
    enabled: false
  - name: inbox-files
    type: file
    path: {inbox}
    pattern: "*.txt"
    workflow: wf
    interval: 250ms
    dedupe: none
  - name: never-polled
    type: python
    callable: mytriggers:noop
    workflow: wf
    interval: 1h
    enabled: false
"""


def old_doc(t: api.TriggerStatus) -> dict[str, Any]:
    """TriggerStatus.as_dict as it was before list_json (the reference)."""
    doc = {
        "name": t.name, "type": t.type, "workflow": t.workflow, "interval": t.interval,
        "enabled": t.enabled, "dedupe": t.dedupe, "last_poll_at": render.iso(t.last_poll_at),
        "last_result": t.last_result, "next_poll_at": render.iso(t.next_poll_at), "active_runs": t.active_runs,
        "fires": t.fires, "consecutive_errors": t.consecutive_errors, "last_reason": t.last_reason,
        "loop_alive": t.loop_alive,
    }
    if t.shared:
        doc["holder"] = t.holder
    return doc


def _project(tmp_path: Path, state: str) -> Path:
    (tmp_path / "inbox").mkdir()
    (tmp_path / "mytriggers.py").write_text("def noop():\n    return None\n")
    (tmp_path / "triggers.yaml").write_text(YAML.format(state=state, inbox=tmp_path / "inbox"))
    return tmp_path


def _fill(location: str) -> None:
    """A state with something of everything; `never-polled` has no row."""
    store = api.open_state(location)
    try:
        store.sync_triggers(NAMES[:4])
        store.flush_stats([
            PollStats("plain", last_poll_at=1764650000.0005, last_result="skipped", next_poll_at=1764650001.9999996,
                      polls=3, last_reason="no news \x1b[31mred\x1b[0m \u202eevil\u202c [link]x[/link] \x7f\x85"),
            PollStats(NAMES[1], last_poll_at=1764650000.123456, last_result="fired", next_poll_at=1764650300.0, polls=1),
            PollStats(NAMES[2], last_poll_at=-1.25, last_result="duplicate", next_poll_at=1764650060.5, polls=2,
                      last_reason="café ☕ 日本 [bold red]markup[/] <b>html</b> & \"quotes\" \\ 😀"),
        ])
        store.record_error(NAMES[3], "RuntimeError: 数据库 unreachable\nsecond line\t<tab>",
                           PollStats(NAMES[3], last_poll_at=1764650002.0, last_result="error",
                                     next_poll_at=1764650002.25, polls=1, consecutive_errors=2), 1764650002.0)
        store.set_enabled(["plain"], False)  # YAML enabled, stored disabled: no next poll
        store.set_enabled([NAMES[2]], True)  # YAML disabled, stored enabled
        store.enqueue_run(NAMES[1], "wf-2", {"k": "v"}, 1764650000.2)
        store.enqueue_run(NAMES[1], "wf-2", {"k": "w"}, 1764650000.3)
    finally:
        store.close()


def _assert_same_as_before(project: Path) -> str:
    """The new bytes (a piped `trigctl list --json`, and indented as at a terminal) against the
    reference, in the same state: the new text."""
    piped = run_trigctl("list", "--json", cwd=project)
    assert piped.returncode == 0, piped.stderr
    config = str(project / "triggers.yaml")
    reference = [old_doc(t) for t in api.list_triggers(config_path=config)]
    assert piped.stdout == render.json_text(reference) + "\n"
    assert api.list_json(config_path=config, indent=2) == render.json_text(reference, 2)
    return piped.stdout


def _check(project: Path) -> None:
    first = _assert_same_as_before(project)  # the YAML parsed and its snapshot saved
    assert _assert_same_as_before(project) == first  # from the snapshot
    for name in NAMES:
        assert f'"name": "{name}"' in first
    assert 'café ☕ 日本 [bold red]markup[/] <b>html</b> & \\"quotes\\" \\\\ 😀' in first
    assert "\\u001b[31m" in first and "\\u202e" in first and "\\u007f" in first and "\\u0085" in first
    assert '"last_poll_at": "2025-12-02T04:33:20.000Z"' in first  # .0005 s: 500 µs, cut to the ms
    assert '"next_poll_at": "2025-12-02T04:33:22.000Z"' not in first  # `plain` is disabled: null
    assert '"last_poll_at": "1969-12-31T23:59:58.750Z"' in first
    yaml = project / "triggers.yaml"
    yaml.write_text(yaml.read_text().replace("interval: 1h", "interval: 90s").replace("dedupe: none", "dedupe: running"))
    changed = _assert_same_as_before(project)
    assert changed != first and '"interval": 90.0' in changed


def test_list_json_is_byte_for_byte_what_it_was_on_sqlite(tmp_path):
    project = _project(tmp_path, "state.db")
    _fill(str(tmp_path / "state.db"))
    _check(project)


def test_list_json_is_byte_for_byte_what_it_was_on_postgresql(tmp_path, pg_url):
    project = _project(tmp_path, pg_url)
    _fill(pg_url)
    _check(project)


@pytest.mark.parametrize("stamp", [0.0, 0.0004999, 0.0005, 0.9994999, 0.9995, 0.9999995, 1.5e-7, -0.0005, -1e-7,
                                   1764650000.9999995, 253402300799.9999, -62135596800.0, 1e300])
def test_list_json_times_round_as_iso_does(tmp_path, stamp):
    project = _project(tmp_path, "state.db")
    store = api.open_state(str(tmp_path / "state.db"))
    try:
        store.sync_triggers(["plain"])
        store.flush_stats([PollStats("plain", last_poll_at=stamp, last_result="skipped", next_poll_at=stamp, polls=1)])
    finally:
        store.close()
    out = _assert_same_as_before(project)
    assert f'"last_poll_at": {render.json_text(render.iso(stamp))}' in out


def test_state_lines_are_those_of_the_multiline_pattern():
    """`list` finds the state's line with a faster pattern (api.state_lines): the same matches."""
    import random
    import re

    rng = random.Random(13)
    parts = ["state: a\n", "state:b\r\n", "  state: x\n", "xstate: y\n", "state\t:z", "\n", "statex: q\n",
             "state : w\n", "#state: c\n", "state:\n", "\r\n", "\r", "stat e: 1\n", "state: é # c\n"]
    for _ in range(5000):
        text = "".join(rng.choice(parts) for _ in range(rng.randint(0, 8)))
        assert api.state_lines(text) == re.findall(r"(?m)^state[ \t]*:(.*)$", text), repr(text)

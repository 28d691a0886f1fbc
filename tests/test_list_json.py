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


def _stored(project: Path) -> str | None:
    """What the state's query writes (api._stored_list_json), None when list_json builds it."""
    return api._stored_list_json(api.Project(str(project / "triggers.yaml"), None))


def _reference(project: Path) -> str:
    return render.json_text([old_doc(t) for t in api.list_triggers(config_path=str(project / "triggers.yaml"))])


def test_list_json_is_written_by_the_sqlite_query_once_the_snapshot_is_saved(tmp_path):
    project = _project(tmp_path, "state.db")
    _fill(str(tmp_path / "state.db"))
    assert _stored(project) is None  # no snapshot yet: the YAML is checked, then remembered
    _assert_same_as_before(project)
    text = _stored(project)
    assert text is not None and "\0" not in text
    assert text == _reference(project)


def test_list_json_is_built_in_python_on_postgresql(tmp_path, pg_url):
    """PostgreSQL has no such query: the slower path, documented in docs/design.md."""
    project = _project(tmp_path, pg_url)
    _fill(pg_url)
    _assert_same_as_before(project)
    assert _stored(project) is None


EDGE_TIMES = [None, 0, 0.0, 1, 0.0004999, 0.0005, 0.0009995, 0.9995, 0.9999995, 0.99999949, 1764650000.0005,
              1764650000.9999995, 1764650001.0004995, 1764650000.123456, 1764650059.9995, 1764719999.9999996,
              253402300798.9999, 253402300799.0, -0.0005, -1.25, 1e300, float("inf")]  # text there fails in iso (also before)
EDGE_TEXT = [None, "skipped", "fired", "plain ascii", 'quote " backslash \\ slash /', "tab\there\nnew\rline\b\f\x01\x1f",
             "DEL \x7f C1 \x85 \x9b", "bidi \u202e\u2066 \u061c \u200e \u2028", "café ☕ 日本 😀", "\x00nul", "", 7, 2.5,
             b"\xff\xfe not utf-8 \xc3", "[bold]x[/] <b>&amp;</b>"]


def test_list_json_query_writes_what_python_writes_for_any_stored_value(tmp_path):
    """Values that another tool, clock or damage could leave in the state: each trigger's object is
    the same bytes as the reference, whether the query writes it or leaves it to Python."""
    import random
    import sqlite3

    rng = random.Random(14)
    names = [f"t{i}" for i in range(300)]
    (tmp_path / "mytriggers.py").write_text("def noop():\n    return None\n")
    lines = ["version: 1", "state: state.db", "workflows:", "  wf:", "    tasks:", "      - run: 'true'", "  wf-2:",
             "    tasks:", "      - run: 'true'", "triggers:"]
    for i, name in enumerate(names):
        lines += [f"  - name: {name}", "    type: python", "    callable: mytriggers:noop",
                  f"    workflow: {'wf' if i % 3 else 'wf-2'}",
                  f"    interval: {rng.choice(['1s', '1.5s', '250ms', '1h'])}", f"    enabled: {rng.choice(['true', 'false'])}"]
    (tmp_path / "triggers.yaml").write_text("\n".join(lines) + "\n")
    state = tmp_path / "state.db"
    store = api.open_state(str(state))
    store.sync_triggers(names[:-20])  # the last 20: no row
    store.enqueue_run("t1", "wf", {"k": 1}, 1764650000.0)
    store.close()
    _assert_same_as_before(tmp_path)  # checks the YAML and saves its snapshot
    conn = sqlite3.connect(state)
    with conn:
        for name in names[:-20]:
            values = {
                "enabled": rng.choice([None, None, 0, 1, 1, 2, "x", 0.5]),
                "last_poll_at": rng.choice(EDGE_TIMES + [rng.uniform(0, 4e9) for _ in range(10)]),
                "next_poll_at": rng.choice(EDGE_TIMES + [rng.uniform(1.7e9, 1.8e9) for _ in range(10)]),
                "last_result": rng.choice(EDGE_TEXT[:8] + [None] * 4),
                "last_reason": rng.choice(EDGE_TEXT + [None] * 4),
                "fires": rng.choice([0, 3, 12345678901, 1.5]),
                "consecutive_errors": rng.choice([0, 2, 2.0]),
            }
            if any(isinstance(v, float) and v != v for v in values.values()):
                continue
            sets = ", ".join(f"{k} = CAST(? AS TEXT)" if isinstance(v, bytes) else f"{k} = ?" for k, v in values.items())
            conn.execute(f"UPDATE triggers SET {sets} WHERE name = ?", [*values.values(), name])
        # A row that moved (deleted and written again, as a VACUUM or another tool may leave it):
        # the saved rowid is a hint, checked against the name.
        conn.execute("DELETE FROM triggers WHERE name = 't5'")
        conn.execute("INSERT INTO triggers (name, fires, last_poll_at) VALUES ('t5', 9, 1764650000.25)")
        conn.execute("UPDATE triggers SET name = 't6-old' WHERE name = 't6'")
        conn.execute("INSERT INTO triggers (name, fires) VALUES ('t6', 4)")
    conn.close()
    from trigctl.known_good import snapshot_key
    from trigctl.snapshot import config_fingerprint
    from trigctl.store.sqlite import SQLiteStore

    reader = SQLiteStore(str(state), readonly=True)
    try:
        raw = reader.list_json_text(snapshot_key(str(tmp_path / "triggers.yaml")), config_fingerprint(tmp_path / "triggers.yaml"), "}")
    finally:
        reader.close()
    assert raw is not None and 20 < raw.count("\0") < 200, raw.count("\0")  # both ways are taken
    text = _stored(tmp_path)
    assert text is not None
    assert text == _reference(tmp_path)
    assert _assert_same_as_before(tmp_path) == text + "\n"


def test_a_snapshot_saved_before_schema_6_is_saved_again_by_run(tmp_path):
    """A state of an earlier trigctl: `list` answers from its snapshot as before, and `run` saves
    the snapshot again with its rows (has_config_snapshot says it lacks them)."""
    import json
    import sqlite3

    from trigctl.known_good import snapshot_key
    from trigctl.snapshot import config_fingerprint
    from trigctl.store.sqlite import MIGRATIONS, SQLiteStore

    project = _project(tmp_path, "state.db")
    state = tmp_path / "state.db"
    conn = sqlite3.connect(state)
    conn.executescript("".join(MIGRATIONS[:5]) + "; PRAGMA user_version = 5;")
    config = project / "triggers.yaml"
    key, fingerprint = snapshot_key(str(config)), config_fingerprint(config)
    from trigctl.config import load_config, trigger_summaries

    summaries = trigger_summaries(load_config(config, light=True))  # no import: another test's mytriggers may be loaded
    conn.execute("INSERT INTO config_snapshot VALUES (?, ?, ?)", (key, fingerprint, json.dumps(summaries)))
    conn.commit()
    conn.close()
    _fill(str(state))  # migrates
    assert _stored(project) is None
    first = _assert_same_as_before(project)
    store = SQLiteStore(str(state))
    try:
        assert store.config_snapshot(key, fingerprint) == summaries
        assert not store.has_config_snapshot(key, fingerprint)
        store.save_config_snapshot(key, fingerprint, summaries)  # as Runner._save_snapshot does
        assert store.has_config_snapshot(key, fingerprint)
    finally:
        store.close()
    assert _stored(project) + "\n" == first

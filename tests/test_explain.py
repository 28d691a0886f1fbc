"""A poll explains itself: every skip carries its reason (`poll`, `poll --json`), `list` shows the
last one (stored with the batched counters), and history's error rows keep the message."""

from __future__ import annotations

import re
import sqlite3

from conftest import cli_json, open_state
from helpers import drive, make_scheduler

from trigctl.store.sqlite import SQLiteStore

HEAD = """
version: 1
workflows:
  wf:
    tasks:
      - run: "true"
triggers:
"""

TYPES = HEAD + """
  - name: backlog
    type: queue_depth
    queue: orders
    source: {directory: queue}
    above: 5
    workflow: wf
    interval: 1m
  - name: cmd
    type: command
    run: "echo first >&2; echo 'not ready yet' >&2; exit 1"
    workflow: wf
    interval: 1m
  - name: inbox
    type: file
    path: inbox
    pattern: "*.csv"
    watch: false
    workflow: wf
    interval: 1m
  - name: nightly
    type: schedule
    cron: "0 3 * * *"
    workflow: wf
  - name: later
    type: python
    callable: mytriggers:later
    workflow: wf
    interval: 1m
  - name: nothing
    type: python
    callable: mytriggers:nothing
    workflow: wf
    interval: 1m
  - name: broken
    type: python
    callable: mytriggers:broken
    workflow: wf
    interval: 1m
  - name: greet
    type: python
    callable: mytriggers:greet
    workflow: wf
    interval: 1m
"""

CALLABLES = """
import trigctl

def later():
    return trigctl.Skip("waiting for the 10:00 export")

def nothing():
    return None

def broken():
    raise RuntimeError("database is down")

def greet():
    return {"who": "world"}
"""

EXPECTED = {
    "backlog": "depth 3 (fires at >= 5)",
    "cmd": "exit code 1: not ready yet",
    "inbox": "no new or changed files",
    "later": "waiting for the 10:00 export",
    "nothing": "the callable returned None",
}


def _project(write_yaml, callables, tmp_path):
    callables(CALLABLES)
    (tmp_path / "queue").mkdir()
    for i in range(3):
        (tmp_path / "queue" / f"m{i}").write_text("x")
    (tmp_path / "inbox").mkdir()
    return write_yaml(TYPES)


def test_poll_json_carries_each_types_skip_reason(cli, write_yaml, callables, tmp_path):
    _project(write_yaml, callables, tmp_path)
    for name, reason in EXPECTED.items():
        doc = cli_json(cli, "poll", name)
        assert set(doc) >= {"trigger_name", "result", "reason", "fires", "duration"}
        assert (doc["result"], doc["reason"], doc["fires"]) == ("skipped", reason, []), name
    doc = cli_json(cli, "poll", "nightly")
    assert doc["result"] == "skipped" and doc["reason"].startswith("no slot due (next: ")
    doc = cli_json(cli, "poll", "greet")
    assert doc["result"] == "fired" and doc["reason"] is None


def test_poll_prints_the_reason_after_the_duration(cli, write_yaml, callables, tmp_path):
    _project(write_yaml, callables, tmp_path)
    result = cli("poll", "backlog")
    assert result.exit_code == 0
    assert re.fullmatch(r"backlog: skipped in \d+ms: depth 3 \(fires at >= 5\)\n", result.output)


def test_a_polls_error_is_its_reason_too(cli, write_yaml, callables, tmp_path):
    _project(write_yaml, callables, tmp_path)
    result = cli("poll", "broken", "--json")
    assert result.exit_code == 1
    import json

    doc = json.loads(result.stdout)
    assert doc["result"] == "error" and "database is down" in doc["reason"] and doc["reason"] == doc["error"]
    text = cli("poll", "broken").output
    assert re.match(r"broken: error in \d+ms: .*database is down", text)


def test_list_shows_the_last_reason_and_history_keeps_the_error(cli, write_yaml, callables, tmp_path):
    cfg = _project(write_yaml, callables, tmp_path)
    assert cli("run", "--once").exit_code == 1  # `broken` errs
    listing = {r["name"]: r for r in cli_json(cli, "list")}
    for name, reason in EXPECTED.items():
        assert (listing[name]["last_result"], listing[name]["last_reason"]) == ("skipped", reason), name
    assert listing["nightly"]["last_reason"].startswith("no slot due")
    assert listing["broken"]["last_result"] == "error" and "database is down" in listing["broken"]["last_reason"]
    assert listing["greet"]["last_result"] == "fired" and listing["greet"]["last_reason"] is None
    errors = cli_json(cli, "history", "broken", "--status", "error")
    assert len(errors) == 1 and "database is down" in errors[0]["error"]
    assert "database is down" in cli("history", "broken").output
    # the reason survives a restart of the loop, and the next poll replaces it
    store = open_state(cfg)
    assert store.trigger_rows()["backlog"].last_reason == "depth 3 (fires at >= 5)"
    store.close()
    for i in range(3, 6):
        (tmp_path / "queue" / f"m{i}").write_text("x")
    assert cli("run", "--once", "--trigger", "backlog").exit_code == 0
    row = {r["name"]: r for r in cli_json(cli, "list")}["backlog"]
    assert row["last_result"] == "fired" and row["last_reason"] is None


def test_list_table_has_a_reason_column_cut_to_100_columns(cli, write_yaml, callables, tmp_path):
    callables("import trigctl\n\ndef slow():\n    return trigctl.Skip('upstream ' + 'very ' * 40 + 'late\\x1b[31m')\n")
    write_yaml(HEAD + "  - name: slow\n    type: python\n    callable: mytriggers:slow\n    workflow: wf\n    interval: 1m\n")
    assert cli("run", "--once").exit_code == 0
    lines = cli("list").output.splitlines()
    assert lines[0].split()[-1] == "REASON"
    assert all(len(line.rstrip()) <= 100 for line in lines), lines
    assert "upstream very very" in lines[1] and lines[1].rstrip().endswith("…") and "\x1b" not in lines[1]
    assert "late" in cli_json(cli, "list")[0]["last_reason"]  # JSON has all of it


def test_skips_are_stored_with_the_batched_counters_not_per_poll(write_yaml, callables, clock):
    callables(CALLABLES)
    cfg = write_yaml(HEAD + "  - name: later\n    type: python\n    callable: mytriggers:later\n    workflow: wf\n    interval: 10s\n")
    sched, store = make_scheduler(cfg, clock.now)
    writes = []
    for method in ("flush_stats", "record_fires", "record_error"):
        real = getattr(store, method)
        setattr(store, method, lambda *a, _real=real, _m=method, **k: (writes.append(_m), _real(*a, **k))[1])
    for i in range(5):
        for poll in sched.tick(clock.now + 10 * i):
            sched.complete(poll, sched.execute(poll), None, clock.now + 10 * i)
    assert writes == []  # five skips, no transaction of their own
    drive(sched, clock.now + 50)  # a tick that flushes
    assert writes == ["flush_stats"]
    assert store.trigger_rows()["later"].last_reason == "waiting for the 10:00 export"
    store.close()


def test_a_version_4_state_is_migrated_to_carry_last_reason(tmp_path):
    from trigctl.store.sqlite import MIGRATIONS

    path = tmp_path / "state.db"
    conn = sqlite3.connect(path)
    conn.executescript("".join(MIGRATIONS[:4]) + "; PRAGMA user_version = 4;")  # as trigctl wrote it then
    conn.execute("INSERT INTO triggers (name) VALUES ('t')")
    conn.commit()
    conn.close()
    store = SQLiteStore(str(path))
    try:
        assert store.trigger_rows()["t"].last_reason is None
        assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    finally:
        store.close()


def test_a_duplicate_polls_reason_is_why_it_was_suppressed(cli, write_yaml, callables, tmp_path):
    import time

    from trigctl.store.base import FireRequest, PollStats, dedupe_hash

    cfg = _project(write_yaml, callables, tmp_path)
    store = open_state(cfg)
    store.sync_triggers(["greet"])
    ctx = {"who": "world"}
    store.record_fires("greet", "wf", [FireRequest(ctx, dedupe_hash("greet", ctx, None), "running")], PollStats("greet"),
                       time.time(), None, {})
    store.close()
    doc = cli_json(cli, "poll", "greet")
    assert doc["result"] == "duplicate" and "still active" in doc["reason"]

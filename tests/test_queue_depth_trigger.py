"""`queue_depth` triggers with real sources: a directory, a subprocess, a local HTTP server, an SQLite file."""

from __future__ import annotations

import sqlite3
import textwrap
import time
from pathlib import Path

import pytest
from conftest import run_trigctl
from test_http_trigger import LocalServer

from trigctl.config import ConfigError, TriggerConfig, load_config
from trigctl.store.base import dedupe_hash
from trigctl.triggers.base import PollContext, PollError, PollOutcome, trigger_types
from trigctl.triggers.queue_depth import QueueDepthTrigger


def make(tmp_path: Path, source: dict, **options) -> QueueDepthTrigger:
    options = {"queue": "jobs", "source": source, **options}
    return QueueDepthTrigger(TriggerConfig(name="t", type="queue_depth", workflow="w", options=options), tmp_path)


def poll(trigger, timeout: float = 5) -> PollOutcome:
    return trigger.poll(PollContext(due_at=0, now=0, cursor=None, state={}, timeout=timeout))


@pytest.fixture
def server():
    s = LocalServer()
    yield s
    s.close()


def test_registered_blocking_and_deduped_by_queue():
    cls = trigger_types()["queue_depth"]
    assert cls is QueueDepthTrigger and cls.blocking is True
    assert cls.default_dedupe_key == ("queue",)
    # A growing backlog is one key: one run while it is active, not one per poll.
    keys = cls.default_dedupe_key
    assert dedupe_hash("t", {"queue": "jobs", "depth": 5}, keys) == dedupe_hash("t", {"queue": "jobs", "depth": 9}, keys)


# ------------------------------------------------------------------------------------ directory


def test_directory_counts_regular_non_hidden_files_relative_to_base_dir(tmp_path):
    inbox = tmp_path / "inbox"
    (inbox / "sub").mkdir(parents=True)
    for i in range(3):
        (inbox / f"job{i}.json").write_text("{}")
    (inbox / "sub" / "nested.json").write_text("{}")  # not counted: not at the top level
    (inbox / ".gitkeep").write_text("")  # not counted: a dotfile
    (inbox / ".job3.json.tmp").write_text("")  # not counted: still being written
    t = make(tmp_path, {"directory": "inbox"}, above=3)
    assert poll(t).fires == [{"queue": "jobs", "depth": 3}]
    (inbox / "job0.json").unlink()
    out = poll(t)
    assert not out.fired and out.skip_reason == "depth 2 (fires at >= 3)"


def test_directory_missing_is_an_error(tmp_path):
    with pytest.raises(PollError, match="directory nope does not exist"):
        poll(make(tmp_path, {"directory": "nope"}, above=1))


def test_below_and_either_threshold(tmp_path):
    (tmp_path / "q").mkdir()
    t = make(tmp_path, {"directory": "q"}, below=0)
    assert poll(t).fires == [{"queue": "jobs", "depth": 0}]  # an empty queue: e.g. scale down
    both = make(tmp_path, {"directory": "q"}, above=2, below=0)
    assert poll(both).fired
    (tmp_path / "q" / "a").touch()
    out = poll(both)
    assert not out.fired and out.skip_reason == "depth 1 (fires at >= 2 or <= 0)"
    (tmp_path / "q" / "b").touch()
    assert poll(both).fires == [{"queue": "jobs", "depth": 2}]


def test_check_refuses_thresholds_that_always_fire(tmp_path):
    assert QueueDepthTrigger.check({"above": 5, "below": 10}, tmp_path)
    assert QueueDepthTrigger.check({"above": 10, "below": 5}, tmp_path) == []


# -------------------------------------------------------------------------------------- command


def test_command_source(tmp_path):
    (tmp_path / "n.txt").write_text("17\n")
    t = make(tmp_path, {"command": "cat n.txt"}, above=10)  # runs in base_dir
    assert poll(t).fires == [{"queue": "jobs", "depth": 17}]


def test_command_source_non_integer_is_an_error(tmp_path):
    with pytest.raises(PollError, match="not an integer"):
        poll(make(tmp_path, {"command": "echo 12 messages"}, above=1))
    with pytest.raises(PollError, match="not an integer"):
        poll(make(tmp_path, {"command": "true"}, above=1))


def test_command_source_failure_reports_exit_code_and_stderr(tmp_path):
    with pytest.raises(PollError) as e:
        poll(make(tmp_path, {"command": "echo 'broker unreachable' >&2; exit 3"}, above=1))
    assert "exit code 3" in str(e.value) and "broker unreachable" in str(e.value)


def test_command_source_killed_at_timeout(tmp_path):
    started = time.monotonic()
    with pytest.raises(PollError, match="timed out after 0.5s"):
        poll(make(tmp_path, {"command": "sleep 30"}, above=1), timeout=0.5)
    assert time.monotonic() - started < 4


# ----------------------------------------------------------------------------------------- http


def test_http_source_rabbitmq_style(server, tmp_path):
    server.respond(json_body={"name": "jobs", "messages": 42, "consumers": 1})
    t = make(tmp_path, {"http": {"url": server.url + "/api/queues/%2F/jobs", "json": "messages",
                                 "headers": {"Authorization": "Basic Z3Vlc3Q6Z3Vlc3Q="}}}, above=10)
    assert poll(t).fires == [{"queue": "jobs", "depth": 42}]
    method, path, headers, _ = server.requests[-1]
    assert (method, path) == ("GET", "/api/queues/%2F/jobs")
    assert headers["Authorization"] == "Basic Z3Vlc3Q6Z3Vlc3Q="
    t.close()


def test_http_source_errors(server, tmp_path):
    t = make(tmp_path, {"http": {"url": server.url, "json": "messages"}}, above=1)
    server.respond(json_body={"messages": "many"})
    with pytest.raises(PollError, match="does not select a number"):
        poll(t)
    server.respond(json_body={"messages": True})
    with pytest.raises(PollError, match="does not select a number"):
        poll(t)
    server.respond(500, json_body={"messages": 5})
    with pytest.raises(PollError, match="status 500"):
        poll(t)
    server.respond(body="oops", content_type="text/plain")
    with pytest.raises(PollError, match="not JSON"):
        poll(t)


def test_http_source_header_secret_not_in_error(tmp_path):
    from test_http_trigger import free_port

    t = make(tmp_path, {"http": {"url": f"http://127.0.0.1:{free_port()}/", "json": "messages",
                                 "headers": {"Authorization": "Bearer very-secret"}}}, above=1)
    with pytest.raises(PollError) as e:
        poll(t)
    assert "connection failed" in str(e.value) and "very-secret" not in str(e.value)


# --------------------------------------------------------------------------------------- sqlite


@pytest.fixture
def jobs_db(tmp_path):
    path = tmp_path / "jobs.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY, state TEXT)")
        conn.executemany("INSERT INTO jobs (state) VALUES (?)", [("pending",)] * 4 + [("done",)] * 2)
    conn.close()
    return path


def test_sqlite_source(tmp_path, jobs_db):
    t = make(tmp_path, {"sqlite": {"path": "jobs.db", "query": "SELECT count(*) FROM jobs WHERE state = 'pending'"}},
             above=4)
    assert poll(t).fires == [{"queue": "jobs", "depth": 4}]


def test_sqlite_source_is_read_only(tmp_path, jobs_db):
    t = make(tmp_path, {"sqlite": {"path": "jobs.db", "query": "DELETE FROM jobs"}}, above=1)
    with pytest.raises(PollError, match="readonly|read-only"):
        poll(t)
    with sqlite3.connect(jobs_db) as conn:
        assert conn.execute("SELECT count(*) FROM jobs").fetchone()[0] == 6
    conn.close()


def test_sqlite_source_errors(tmp_path, jobs_db):
    with pytest.raises(PollError, match="does not exist"):
        poll(make(tmp_path, {"sqlite": {"path": "missing.db", "query": "SELECT 1"}}, above=1))
    with pytest.raises(PollError, match="one number, got 'pending'"):
        poll(make(tmp_path, {"sqlite": {"path": "jobs.db", "query": "SELECT state FROM jobs"}}, above=1))
    with pytest.raises(PollError, match="no row"):
        poll(make(tmp_path, {"sqlite": {"path": "jobs.db", "query": "SELECT id FROM jobs WHERE 0"}}, above=1))
    with pytest.raises(PollError, match="query failed"):
        poll(make(tmp_path, {"sqlite": {"path": "jobs.db", "query": "SELECT * FROM nope"}}, above=1))
    assert not (tmp_path / "missing.db").exists()  # read-only open never creates the file


def test_sqlite_query_interrupted_at_timeout(tmp_path, jobs_db):
    endless = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c")
    started = time.monotonic()
    with pytest.raises(PollError, match="timed out"):
        poll(make(tmp_path, {"sqlite": {"path": "jobs.db", "query": endless}}, above=1), timeout=0.3)
    assert time.monotonic() - started < 3


# ------------------------------------------------------------------------------ config + CLI


def test_validate_source_must_be_exactly_one(tmp_path):
    (tmp_path / "t.yaml").write_text(textwrap.dedent("""
        version: 1
        workflows:
          w: {tasks: [{run: "true"}]}
        triggers:
          - name: q
            type: queue_depth
            workflow: w
            queue: jobs
            above: 1
            source: {directory: a, command: "echo 1"}
        """))
    with pytest.raises(ConfigError, match="exactly one of"):
        load_config(tmp_path / "t.yaml")


def test_end_to_end_directory_backlog(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for i in range(5):
        (inbox / f"{i}.job").write_text("x")
    (tmp_path / "triggers.yaml").write_text(textwrap.dedent("""
        version: 1
        workflows:
          drain:
            tasks:
              - run: 'printf "%s=%s" "$TRIGCTL_QUEUE" "$TRIGCTL_DEPTH" > depth.txt'
        triggers:
          - name: backlog
            type: queue_depth
            workflow: drain
            queue: inbox
            source: {directory: inbox}
            above: 5
        """))
    proc = run_trigctl("run", "--once", "triggers.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "depth.txt").read_text() == "inbox=5"


def test_validate_refuses_below_not_less_than_above(tmp_path):
    (tmp_path / "t.yaml").write_text(textwrap.dedent("""
        version: 1
        workflows:
          w: {tasks: [{run: "true"}]}
        triggers:
          - {name: q, type: queue_depth, workflow: w, queue: jobs, source: {directory: q}, above: 5, below: 10}
        """))
    with pytest.raises(ConfigError, match=r"triggers\[0\]\(q\)\.below: below \(10\) is not less than above \(5\)"):
        load_config(tmp_path / "t.yaml")

"""No rewrite is lost: a fire that dedupe suppresses because its key is held by an active run of a
*different* context (a `dedupe_key` subset) does not advance what the trigger remembers — a file's
size and mtime, an http `fire_on: change` digest, a cursor — so it is offered again and runs once
the older run has ended."""

from __future__ import annotations

import os
import sys

from helpers import drive, make_scheduler
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_http_trigger import LocalServer

from trigctl.store.sqlite import SQLiteStore


def _write(path, text, mtime):
    path.write_text(text)
    os.utime(path, (mtime, mtime))


def _fires(store: SQLiteStore, name: str):
    return [r for r in store.history(name, 1000, None, None) if r.kind == "fire"][::-1]


FILE_YAML = """
version: 1
workflows: {{w: {{tasks: [{{run: "true"}}]}}}}
triggers:
  - {{name: inbox, type: file, path: inbox, settle: 0s, watch: false, dedupe_key: [path], workflow: w, interval: 1s{extra}}}
"""


def test_a_file_rewritten_while_its_run_is_active_runs_again_after_it(tmp_path, write_yaml):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    f = inbox / "a.csv"
    t = 1_800_000_000.0
    _write(f, "v1", t - 100)
    sched, store = make_scheduler(write_yaml(FILE_YAML.format(extra="")), t)
    assert [r.result for r in drive(sched, t)] == ["fired"]
    (first,) = _fires(store, "inbox")
    _write(f, "version 2", t - 50)  # rewritten while run 1 is queued (active)
    assert [r.result for r in drive(sched, t + 1)] == ["duplicate"]
    assert store.load_kv("inbox")[str(f)] == [2, t - 100]  # still the content that was fired
    assert [r.result for r in drive(sched, t + 2)] == ["duplicate"]  # offered again, still held
    store.finish_run(first.run_id, "succeeded", t + 2.5)
    assert [r.result for r in drive(sched, t + 3)] == ["fired"]
    runs = [store.get_run(r.run_id) for r in _fires(store, "inbox")]
    assert [r.context["size"] for r in runs] == [2, 9]
    assert store.load_kv("inbox")[str(f)] == [9, t - 50]
    store.finish_run(runs[1].id, "succeeded", t + 3.5)
    assert [r.result for r in drive(sched, t + 4)] == ["skipped"]  # nothing new: fired once each


def test_with_batch_the_deferred_batch_is_offered_again(tmp_path, write_yaml):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    t = 1_800_000_000.0
    _write(inbox / "a.csv", "1", t - 100)
    sched, store = make_scheduler(write_yaml(FILE_YAML.format(extra=", batch: true").replace(
        "dedupe_key: [path], ", "dedupe_key: [group], ")), t)  # a key not in the context: one key
    assert [r.result for r in drive(sched, t)] == ["fired"]
    _write(inbox / "b.csv", "22", t - 90)
    assert [r.result for r in drive(sched, t + 1)] == ["duplicate"]  # one fixed key: held by run 1
    store.finish_run(_fires(store, "inbox")[0].run_id, "succeeded", t + 1.5)
    assert [r.result for r in drive(sched, t + 2)] == ["fired"]
    second = store.get_run(_fires(store, "inbox")[1].run_id)
    assert [x["name"] for x in second.context["files"]] == ["b.csv"]


def test_an_identical_context_is_a_plain_duplicate_and_is_remembered(tmp_path, write_yaml, callables):
    """The other side: a fire whose context equals the active run's is not deferred (nothing is
    lost), so a cursor moves on and the duplicate is counted once."""
    callables("""
SEEN = []
def poll(cursor=None):
    import trigctl
    SEEN.append(cursor)
    return trigctl.Fire({"item": "x"}, cursor=str(len(SEEN)))
""", "curmod")
    t = 1_800_000_000.0
    sched, store = make_scheduler(write_yaml("""
version: 1
workflows: {w: {tasks: [{run: "true"}]}}
triggers:
  - {name: c, type: python, callable: "curmod:poll", workflow: w, interval: 1s}
"""), t)

    assert [r.result for r in drive(sched, t)] == ["fired"]
    assert [r.result for r in drive(sched, t + 1)] == ["duplicate"]
    assert [r.result for r in drive(sched, t + 2)] == ["duplicate"]
    assert sys.modules["curmod"].SEEN == [None, "1", "2"]


def test_a_cursor_is_held_back_by_a_deferred_fire(tmp_path, write_yaml, callables):
    callables("""
SEEN = []
REV = [1]
def poll(cursor=None):
    import trigctl
    SEEN.append(cursor)
    return trigctl.Fire({"item": "x", "rev": REV[0]}, cursor="after-rev-%d" % REV[0])
""", "defmod")
    t = 1_800_000_000.0
    sched, store = make_scheduler(write_yaml("""
version: 1
workflows: {w: {tasks: [{run: "true"}]}}
triggers:
  - {name: c, type: python, callable: "defmod:poll", workflow: w, interval: 1s, dedupe_key: [item]}
"""), t)

    mod = sys.modules["defmod"]
    assert [r.result for r in drive(sched, t)] == ["fired"]
    mod.REV[0] = 2
    assert [r.result for r in drive(sched, t + 1)] == ["duplicate"]  # rev 2 deferred
    assert store.trigger_rows()["c"].cursor == "after-rev-1"
    store.finish_run(_fires(store, "c")[0].run_id, "succeeded", t + 1.5)
    assert [r.result for r in drive(sched, t + 2)] == ["fired"]
    assert mod.SEEN == [None, "after-rev-1", "after-rev-1"]
    assert store.trigger_rows()["c"].cursor == "after-rev-2"
    assert [store.get_run(r.run_id).context["rev"] for r in _fires(store, "c")] == [1, 2]


def test_http_fire_on_change_fires_a_deferred_change_after_the_run(tmp_path, write_yaml):
    server = LocalServer()
    try:
        server.respond(json_body={"version": 1})
        t = 1_800_000_000.0
        sched, store = make_scheduler(write_yaml(f"""
version: 1
workflows: {{w: {{tasks: [{{run: "true"}}]}}}}
triggers:
  - {{name: h, type: http, url: "{server.url}", context: {{version: version}}, fire_on: change,
      dedupe_key: [status], workflow: w, interval: 1s}}
"""), t)
        assert [r.result for r in drive(sched, t)] == ["skipped"]  # the first poll records
        server.respond(json_body={"version": 2})
        assert [r.result for r in drive(sched, t + 1)] == ["fired"]
        server.respond(json_body={"version": 3})
        assert [r.result for r in drive(sched, t + 2)] == ["duplicate"]  # v3 deferred: run of v2 active
        store.finish_run(_fires(store, "h")[0].run_id, "succeeded", t + 2.5)
        assert [r.result for r in drive(sched, t + 3)] == ["fired"]
        assert [store.get_run(r.run_id).context["version"] for r in _fires(store, "h")] == [2, 3]
    finally:
        server.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(["rewrite", "finish", "poll"]), st.integers(0, 2), st.integers(1, 30)),
                min_size=1, max_size=25))
@example([("rewrite", 0, 1), ("poll", 0, 1), ("rewrite", 0, 2), ("poll", 0, 1)])
def test_whatever_the_interleaving_the_last_content_of_every_file_runs(tmp_path_factory, steps):
    """Rewrites, run ends and polls in any order: once every run has ended and the trigger has
    polled, every file's latest content has a run with its size and mtime."""
    root = tmp_path_factory.mktemp("interleave")
    inbox = root / "inbox"
    inbox.mkdir()
    (root / "triggers.yaml").write_text(FILE_YAML.format(extra=""))
    t = 1_800_000_000.0
    sched, store = make_scheduler(root / "triggers.yaml", t)
    latest: dict[str, tuple[int, float]] = {}
    for i, (what, n, size) in enumerate(steps):
        t += 1
        name = f"f{n}.csv"
        if what == "rewrite":
            mtime = t - 500 + i
            _write(inbox / name, "x" * size, mtime)
            latest[str(inbox / name)] = (size, mtime)
        elif what == "finish":
            for run in store.active_runs():
                store.finish_run(run.id, "succeeded", t)
                break
        else:
            drive(sched, t)
    for _ in range(len(steps) + 2):  # end every run and poll until quiet
        t += 1
        for run in store.active_runs():
            store.finish_run(run.id, "succeeded", t)
        drive(sched, t)
    done = {(r.context["path"], r.context["size"], r.context["mtime"])
            for r in (store.get_run(e.run_id) for e in _fires(store, "inbox"))}
    for path, (size, mtime) in latest.items():
        assert (path, size, mtime) in done, (path, size, mtime, sorted(done))
    store.close()

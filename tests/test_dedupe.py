"""Dedupe: keys, release after every outcome, once/none semantics, duplicate rows."""

from __future__ import annotations

import pytest
from helpers import drive, make_scheduler
from hypothesis import given
from hypothesis import strategies as st

from trigctl.store.base import dedupe_hash

BASE = """
version: 1
workflows:
  wf:
    tasks:
      - run: "true"
triggers:
  - name: t
    type: python
    callable: mytriggers:poll
    workflow: wf
    interval: 1s
"""

CALLABLE = """
CONTEXTS = [[{"k": 1}]]
def poll():
    return list(CONTEXTS[0])
"""


@pytest.fixture
def sched(write_yaml, callables, clock):
    def make(extra: str = ""):
        callables(CALLABLE)
        cfg = write_yaml(BASE + extra)
        return make_scheduler(cfg, clock.now)

    return make


def results(reports):
    return [("dup" if r.suppressed else "run") for rep in reports for _, r in rep.fires]


def active_run(store):
    runs = store.active_runs()
    return runs[0].id if runs else None


@pytest.mark.parametrize("outcome", ["succeeded", "failed", "cancelled", "interrupted"])
def test_running_key_is_released_when_the_run_ends_whatever_its_outcome(sched, clock, outcome):
    s, store = sched()
    assert results(drive(s, clock.now)) == ["run"]
    assert results(drive(s, clock.advance(1))) == ["dup"]
    store.finish_run(active_run(store), outcome, clock.now)
    assert results(drive(s, clock.advance(1))) == ["run"]  # the engine we replace never released it


def test_repeated_duplicates_count_on_one_row(sched, clock):
    s, store = sched()
    drive(s, clock.now)
    for _ in range(5):
        drive(s, clock.advance(1))
    dups = store.history("t", 50, ["duplicate"], None)
    assert len(dups) == 1 and dups[0].count == 5


def test_none_starts_a_run_for_every_identical_context(sched, clock):
    s, store = sched("    dedupe: none\n")
    import mytriggers

    mytriggers.CONTEXTS[0] = [{"k": 1}, {"k": 1}]
    assert results(drive(s, clock.now)) == ["run", "run"]  # no unique-index failure
    assert results(drive(s, clock.advance(1))) == ["run", "run"]
    assert len(store.active_runs()) == 4


def test_allow_concurrent_is_none(sched, clock):
    s, store = sched("    allow_concurrent: true\n")
    drive(s, clock.now)
    assert results(drive(s, clock.advance(1))) == ["run"]


def test_once_never_twice_on_success_retries_failures_then_gives_up(sched, clock):
    s, store = sched("    dedupe: once\n    max_attempts: 2\n")
    import mytriggers

    assert results(drive(s, clock.now)) == ["run"]
    store.finish_run(active_run(store), "succeeded", clock.now)
    assert results(drive(s, clock.advance(1))) == ["dup"]
    mytriggers.CONTEXTS[0] = [{"k": 2}]
    assert results(drive(s, clock.advance(1))) == ["run"]
    store.finish_run(active_run(store), "failed", clock.now)
    assert results(drive(s, clock.advance(1))) == ["run"]  # retry after failure
    store.finish_run(active_run(store), "failed", clock.now)
    reports = drive(s, clock.advance(1))
    assert results(reports) == ["dup"]
    assert "given up after 2 failed attempts" in reports[0].fires[0][1].reason


def test_dedupe_key_subset(sched, clock):
    s, store = sched("    dedupe_key: [path]\n")
    import mytriggers

    mytriggers.CONTEXTS[0] = [{"path": "a", "size": 1}]
    drive(s, clock.now)
    mytriggers.CONTEXTS[0] = [{"path": "a", "size": 2}]
    assert results(drive(s, clock.advance(1))) == ["dup"]
    mytriggers.CONTEXTS[0] = [{"path": "b", "size": 2}]
    assert results(drive(s, clock.advance(1))) == ["run"]


def test_two_fires_of_one_key_in_one_poll_start_one_run(sched, clock):
    s, store = sched()
    import mytriggers

    mytriggers.CONTEXTS[0] = [{"k": 1}, {"k": 1}]
    assert results(drive(s, clock.now)) == ["run", "dup"]


def test_key_is_independent_of_key_order():
    assert dedupe_hash("t", {"a": 1, "b": {"x": 1, "y": 2}}, None) == dedupe_hash("t", {"b": {"y": 2, "x": 1}, "a": 1}, None)
    assert dedupe_hash("t", {}, None) == dedupe_hash("t", {}, None) != dedupe_hash("u", {}, None)
    assert dedupe_hash("t", {"a": 1}, ()) == dedupe_hash("t", {"a": 2}, ())  # a fixed key


@given(st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8), max_size=8))
def test_hash_is_stable_under_any_permutation(ctx):
    reordered = dict(reversed(list(ctx.items())))
    assert dedupe_hash("t", ctx, None) == dedupe_hash("t", reordered, None)

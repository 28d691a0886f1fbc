"""The shapes the performance work gave the hot path keep its meaning: a big config copied into fresh
memory is the same config, a flush cut short for due polls finishes at the next step, and a
callable without a cursor (called without a context) behaves as one called with it."""

from __future__ import annotations

import os
import sys

import pytest
from helpers import drive, make_scheduler

from trigctl.config import load_config
from trigctl.config.load import COMPACT_AT, parse_config
from trigctl.scheduler import STATS_FLUSH_EVERY, YIELDING_FLUSH_BATCH
from trigctl.triggers.base import SKIPPED_NONE, normalize_result

BASE = """
version: 1
workflows:
  wf:
    tasks:
      - run: "true"
  other:
    tasks:
      - argv: [echo, "${BENCH_WORD:-word}"]
defaults:
  jitter: 250ms
triggers:
"""


def many(n: int, callable_: str = "mytriggers:skip", interval: str | None = None) -> str:
    out = []
    for i in range(n):
        extra = "\n    dedupe: once\n    on_error: {after: 2, workflow: other}" if i % 7 == 0 else ""
        out.append(f"  - name: t{i}\n    type: python\n    callable: {callable_}\n    workflow: wf\n"
                   f"    interval: {interval or f'{1 + i % 5}s'}\n    description: \"trigger é {i}\"{extra}\n")
    return "".join(out)


def test_a_big_config_is_copied_into_fresh_memory_and_stays_the_same(write_yaml, callables, monkeypatch):
    callables("def skip():\n    return None\n")
    monkeypatch.setenv("BENCH_WORD", "hello")
    path = write_yaml(BASE + many(COMPACT_AT + 5))
    loaded = load_config(path)
    built = parse_config(path.read_text(), str(path), os.environ)  # the same text, not copied
    assert len(built.triggers) == COMPACT_AT + 5
    assert loaded.triggers == built.triggers  # every setting, option and default
    assert [t.index for t in loaded.triggers] == [t.index for t in built.triggers]  # not compared by ==
    assert loaded.workflows == built.workflows
    assert loaded.path == built.path and loaded.base_dir == built.base_dir
    assert loaded.redactor.text("say hello") == built.redactor.text("say hello")
    assert loaded.triggers[0] is not built.triggers[0]  # a copy was made (the memory is new)
    small = write_yaml(BASE + many(3), "small.yaml")
    assert load_config(small).triggers == parse_config(small.read_text(), str(small), os.environ).triggers


def test_a_flush_cut_short_for_due_polls_goes_on_at_the_next_step(write_yaml, callables, clock):
    callables("def skip():\n    return None\n")
    n = YIELDING_FLUSH_BATCH * 3 + 10
    path = write_yaml(BASE.replace("  jitter: 250ms\n", "  jitter: 0s\n") + many(n, interval="1s"))
    now = clock.now
    sched, store = make_scheduler(path, now)
    drive(sched, now)  # everything due at start: polled, counters written (force)
    now += 1.0
    reports = drive_without_flush(sched, now)
    assert len(reports) == n
    polled = {r.trigger for r in reports}
    calls = []

    def due_now() -> bool:
        calls.append(1)
        return len(calls) > 1  # one batch written, then polls "come due"

    sched.flush(now, yield_to=due_now)
    assert sched.flush_pending()
    rows = store.trigger_rows()
    written = sum(1 for name in polled if rows[name].last_poll_at == now)
    assert 0 < written < len(polled)
    # The next step, well within STATS_FLUSH_EVERY of the last: the flush goes on, to the end.
    sched.flush(now + STATS_FLUSH_EVERY / 10, yield_to=lambda: False)
    assert not sched.flush_pending()
    rows = store.trigger_rows()
    assert all(rows[name].last_poll_at == now and rows[name].last_result == "skipped" for name in polled)
    assert all(rows[name].polls == 2 for name in polled)
    # Finished: the next flush waits for the interval again.
    sched.flush(now + STATS_FLUSH_EVERY / 5, yield_to=lambda: False)
    assert not sched.flush_pending()


def drive_without_flush(sched, now):
    reports = []
    for poll in sched.tick(now):
        try:
            result, error = sched.execute(poll), None
        except Exception as e:  # noqa: BLE001
            result, error = None, e
        report = sched.complete(poll, result, error, now)
        if report:
            reports.append(report)
    return reports


def test_a_callable_without_a_cursor_is_called_without_a_context(write_yaml, callables, clock):
    callables("""
        CALLS = []
        def skip():
            CALLS.append("skip")
            return None
        def fire():
            CALLS.append("fire")
            return {"n": len(CALLS)}
        def with_cursor(cursor=None):
            from trigctl import Fire
            CALLS.append(("cursor", cursor))
            return Fire({"k": 1}, cursor="c1") if cursor is None else None
        def broken():
            raise ValueError("no")
    """)
    triggers = "".join(
        f"  - name: {name}\n    type: python\n    callable: mytriggers:{name}\n    workflow: wf\n    interval: 1s\n"
        "    dedupe: none\n"
        for name in ("skip", "fire", "with_cursor", "broken"))
    path = write_yaml(BASE.replace("  jitter: 250ms\n", "  jitter: 0s\n") + triggers)
    sched, store = make_scheduler(path, clock.now)
    assert sched.slots["skip"].impl.poll_bare is not None
    assert sched.slots["with_cursor"].impl.poll_bare is None  # it needs ctx.cursor
    reports = {r.trigger: r for r in drive(sched, clock.now)}
    assert reports["skip"].result == "skipped" and reports["skip"].reason == "the callable returned None"
    assert reports["fire"].result == "fired" and reports["fire"].fires[0][0] == {"n": 2}  # in file order
    assert reports["with_cursor"].result == "fired"
    assert reports["broken"].result == "error" and "ValueError: no" in reports["broken"].error
    again = {r.trigger: r for r in drive(sched, clock.now + 1)}
    # A skipped report may be reused for the same trigger and reason; never another trigger's.
    assert again["skip"].trigger == "skip" and again["skip"].result == "skipped"
    assert again["with_cursor"].result == "skipped"
    assert sys.modules["mytriggers"].CALLS[-2:] == ["fire", ("cursor", "c1")] or \
        ("cursor", "c1") in sys.modules["mytriggers"].CALLS  # the cursor reached the callable
    assert store.trigger_rows()["skip"].last_reason == "the callable returned None"
    # The shared outcome of None is what normalize_result gives, and is never changed by a poll.
    assert normalize_result(None) is SKIPPED_NONE
    assert SKIPPED_NONE.fires == [] and SKIPPED_NONE.state_updates == {} and SKIPPED_NONE.cursor is None


def test_a_file_over_the_alias_budget_without_aliases_loads(write_yaml, callables):
    # 4 keys a trigger: 9 values each, so 23,000 triggers are ~207,000 values, over MAX_NODES (the
    # alias-expansion budget of the careful parse) and within FAST_MAX_VALUES (the fast parse's).
    from trigctl.config import MAX_NODES
    from trigctl.config.yaml_loader import FAST_MAX_VALUES

    callables("def skip():\n    return None\n")
    n = 23_000
    assert MAX_NODES < 9 * n < FAST_MAX_VALUES
    body = "".join(f"  - name: t{i}\n    type: python\n    callable: mytriggers:skip\n    workflow: wf\n" for i in range(n))
    path = write_yaml(BASE + body)
    config = load_config(path, light=True)
    assert len(config.triggers) == n and config.triggers[-1].name == f"t{n - 1}"
    assert config.triggers[5].interval == 30.0 and config.triggers[5].jitter == 0.25  # defaults applied


def test_a_big_file_without_aliases_with_one_mistake_hears_of_its_mistake(write_yaml, callables):
    # Over MAX_NODES and without anchors, it is parsed again with positions to report the mistake:
    # the mistake, at its line, not "document too large".
    from trigctl.config import ConfigError

    callables("def skip():\n    return None\n")
    n = 23_000
    body = "".join(f"  - name: t{i}\n    type: python\n    callable: mytriggers:skip\n    workflow: wf\n" for i in range(n))
    path = write_yaml(BASE + body + "    evrey: 5s\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    line = path.read_text().splitlines().index("    evrey: 5s") + 1
    assert f":{line}:5:" in str(e.value) and "evrey" in str(e.value) and "too large" not in str(e.value), str(e.value)[:300]


def test_counters_of_many_triggers_are_written_less_often_than_those_of_a_few(write_yaml, callables, clock,
                                                                            monkeypatch):
    """Skipped polls' counters reach the state at most 1 s late for up to STATS_FLUSH_ROWS changed
    triggers; more wait longer (about that many rows a second), never past STATS_FLUSH_MAX."""
    import trigctl.scheduler as scheduler

    assert scheduler.flush_period(1) == scheduler.flush_period(2_000) == 1.0
    assert scheduler.flush_period(4_000) == 2.0 and scheduler.flush_period(10_000) == 5.0
    assert scheduler.flush_period(1_000_000) == scheduler.STATS_FLUSH_MAX == 5.0
    callables("def skip():\n    return None\n")
    path = write_yaml(BASE.replace("  jitter: 250ms\n", "  jitter: 0s\n") + many(30, interval="1s"))
    now = clock.now
    sched, store = make_scheduler(path, now)
    drive(sched, now)  # counters written at start (force)

    def polled_at(t: float) -> int:
        return sum(1 for row in store.trigger_rows().values() if row.last_poll_at == t)

    monkeypatch.setattr(scheduler, "STATS_FLUSH_ROWS", 10)  # 30 changed: every 3 s
    for step in (1.0, 2.0):
        drive_without_flush(sched, now + step)
        sched.flush(now + step)
        assert polled_at(now + step) == 0  # not yet
    drive_without_flush(sched, now + 3.0)
    sched.flush(now + 3.0)
    assert polled_at(now + 3.0) == 30
    assert all(row.polls == 4 for row in store.trigger_rows().values())  # no poll lost on the way
    monkeypatch.setattr(scheduler, "STATS_FLUSH_ROWS", 2_000)  # a few triggers: every second
    drive_without_flush(sched, now + 4.0)
    sched.flush(now + 4.0)
    assert polled_at(now + 4.0) == 30

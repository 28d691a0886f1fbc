"""Defects found by the code review of issue 9 (item 6), one regression test each: the next poll
time after a reload and after a restart with a shorter interval, the reason a rerun after a crash
was not made, and a second signal whose handler only sets a flag."""

from __future__ import annotations

import signal
import threading
import time

from conftest import wait_for
from helpers import drive, make_scheduler

from trigctl import events as ev
from trigctl.config import load_config
from trigctl.events import EventBus
from trigctl.runner import Runner
from trigctl.scheduler import Scheduler
from trigctl.store.sqlite import SQLiteStore

BASE = """
version: 1
workflows:
  wf:
    tasks:
      - run: "true"
  slow:
    tasks:
      - run: "sleep 60"
triggers:
"""


def trig(name: str, callable_: str, **opts) -> str:
    lines = [f"  - name: {name}", "    type: python", f"    callable: {callable_}", "    workflow: wf"]
    lines += [f"    {k}: {v}" for k, v in opts.items()]
    return "\n".join(lines) + "\n"


def stored_next_poll(store, name: str) -> float | None:
    return store.trigger_rows()[name].next_poll_at


def test_reload_writes_the_new_next_poll_time_that_list_shows(write_yaml, callables, clock):
    callables("def skip():\n    return None\n")
    path = write_yaml(BASE + trig("t", "mytriggers:skip", interval="1h"))
    start = clock.now
    sched, store = make_scheduler(path, start)
    drive(sched, start)
    assert stored_next_poll(store, "t") == start + 3600
    write_yaml(BASE + trig("t", "mytriggers:skip", interval="10s") + trig("u", "mytriggers:skip", interval="1m"))
    changes = sched.reload(load_config(path), start + 5)
    assert changes == ["changed t", "added u"]
    sched.flush(start + 5.5)  # the loop's next flush (at most a second later), not a poll of t
    assert stored_next_poll(store, "t") == start + 15
    assert stored_next_poll(store, "u") == start + 5


def test_a_restart_with_a_shorter_interval_polls_by_now_plus_the_new_interval(write_yaml, callables, clock):
    callables("def skip():\n    return None\n")
    path = write_yaml(BASE + trig("t", "mytriggers:skip", interval="1h") + trig("same", "mytriggers:skip", interval="1h"))
    start = clock.now
    sched, store = make_scheduler(path, start)
    drive(sched, start)
    store.close()
    write_yaml(BASE + trig("t", "mytriggers:skip", interval="10s") + trig("same", "mytriggers:skip", interval="1h"))
    later = start + 5
    sched, store = make_scheduler(path, later)
    assert sched.slots["t"].due_at == later + 10  # not start + 3600, the stored one
    assert sched.slots["same"].due_at == start + 3600  # an unchanged interval keeps its slot
    sched.flush(later, force=True)
    assert stored_next_poll(store, "t") == later + 10


def test_a_restart_keeps_an_error_backoff_and_a_past_due_time(write_yaml, callables, clock):
    callables("def broken():\n    raise RuntimeError('down')\n\ndef skip():\n    return None\n")
    path = write_yaml(BASE + trig("b", "mytriggers:broken", interval="10s", max_backoff="10m")
                      + trig("late", "mytriggers:skip", interval="1m"))
    start = clock.now
    sched, store = make_scheduler(path, start)
    for _ in range(3):
        clock.now = sched.slots["b"].due_at
        drive(sched, clock.now)
    backoff_due = sched.slots["b"].due_at
    assert backoff_due - clock.now >= 60  # 10s x 2^3
    store.close()
    sched2, store = make_scheduler(path, clock.now + 1)
    assert sched2.slots["b"].due_at == backoff_due
    # Down for longer than the interval: due at once (the stored time, in the past), not a burst.
    store.close()
    sched3, _ = make_scheduler(path, start + 3600)
    assert sched3.slots["late"].due_at <= start + 3600


def test_a_rerun_not_made_because_a_once_key_was_given_up_says_so(write_yaml, callables):
    callables("def skip():\n    return None\n")
    path = write_yaml(BASE + trig("o", "mytriggers:skip", interval="1h", dedupe="once", max_attempts=1))
    cfg = load_config(path)
    store = SQLiteStore(cfg.state_location())
    sched = Scheduler(cfg, store)
    sched.load(time.time())
    tc = cfg.trigger("o")
    req = sched.fire_requests(sched.slots["o"], [{"job": 1}])[0]
    run_id = store.enqueue_run("o", "wf", req.context, time.time(), dedupe="once", context_hash=req.context_hash,
                               max_attempts=tc.max_attempts).run_id
    assert [r.id for r in store.claim_queued(time.time(), 1)] == [run_id]
    store.task_started(run_id, 0, "t1", time.time(), None, None, None)  # its task began: the process "dies" now
    bus = EventBus()
    seen: list[ev.RunInterrupted] = []
    bus.subscribe(seen.append, [ev.RunInterrupted])
    Runner(cfg, store, install_signals=False, bus=bus).recover()
    # The interruption was the key's one allowed failure: the rerun is suppressed as given up.
    assert [(e.run_id, e.action) for e in seen] == [
        (run_id, "not rerun: given up after 1 failed attempts (dedupe: once)")]
    assert [r.id for r in store.active_runs()] == []


def test_the_second_signal_handler_only_sets_a_flag_and_the_loop_cancels(write_yaml, callables, monkeypatch):
    callables("from trigctl import Fire\ndef once():\n    return Fire({'k': 1})\n")
    path = write_yaml(BASE + trig("s", "mytriggers:once", interval="1h").replace("workflow: wf", "workflow: slow"))
    cfg = load_config(path)
    store = SQLiteStore(cfg.state_location())
    runner = Runner(cfg, store, install_signals=False, grace=600)
    calls: list[str] = []
    real_cancel_all = runner.workflows.cancel_all

    def cancel_all(status="cancelled"):
        calls.append(threading.current_thread().name)
        real_cancel_all(status)

    monkeypatch.setattr(runner.workflows, "cancel_all", cancel_all)
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: runner.workflows.count() == 1, message="run started")
        run_id = runner.workflows.active_runs()[0].id
        runner._on_signal(signal.SIGTERM, None)  # as the handler is called, on this thread
        runner._on_signal(signal.SIGTERM, None)
        assert calls == []  # the handler did no work
        t0 = time.monotonic()
        thread.join(20)
        assert time.monotonic() - t0 < 10  # not the 600 s grace: the second signal ended it at once
    finally:
        runner.stop()
        thread.join(20)
    assert not thread.is_alive()
    assert calls and all(name != threading.current_thread().name for name in calls)
    assert store.get_run(run_id).status == "cancelled"


def test_enable_writes_the_next_poll_time_that_list_shows(write_yaml, callables, clock):
    """Enabling a trigger whose due time passed while it was disabled: the state holds the new next
    poll time after the next flush (not the stale one until its first poll)."""
    from helpers import drive, make_scheduler

    callables("def skip():\n    return None\n", "enablemod")
    cfg = write_yaml("""
version: 1
workflows: {wf: {tasks: [{run: "true"}]}}
triggers:
  - {name: t, type: python, callable: "enablemod:skip", workflow: wf, interval: 10s}
""")
    sched, store = make_scheduler(cfg, clock.now)
    drive(sched, clock.now)
    sched.set_enabled("t", False, clock.now)
    clock.advance(100)
    sched.set_enabled("t", True, clock.now)
    sched.flush(clock.now, force=True)
    assert store.trigger_rows()["t"].next_poll_at == sched.slots["t"].due_at <= clock.now + 10

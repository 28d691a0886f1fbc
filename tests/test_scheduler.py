"""The scheduler on an injected clock: due times, backoff, in-flight polls, enable/disable."""

from __future__ import annotations

import sys
import threading
from contextlib import contextmanager

from conftest import wait_for
from helpers import drive, make_scheduler

from trigctl.config import load_config
from trigctl.runner import Runner
from trigctl.store.sqlite import SQLiteStore

BASE = """
version: 1
workflows:
  wf:
    tasks:
      - run: "true"
triggers:
"""


@contextmanager
def running_loop(cfg_path):
    """The real loop in a thread; on exit, set mytriggers.RELEASE (the hung callables return) and
    stop it as SIGTERM would. The module is imported by the config load, from the YAML's folder."""
    cfg = load_config(cfg_path)
    store = SQLiteStore(cfg.state_location())
    runner = Runner(cfg, store, install_signals=False, grace=5)
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    try:
        yield runner, store
    finally:
        sys.modules["mytriggers"].RELEASE.set()
        runner.stop()
        thread.join(20)
    assert not thread.is_alive()


def fires(store, name: str) -> int:
    return getattr(store.trigger_rows().get(name), "fires", 0)


def trig(name: str, callable_: str, **opts) -> str:
    lines = [f"  - name: {name}", "    type: python", f"    callable: {callable_}", "    workflow: wf"]
    lines += [f"    {k}: {v}" for k, v in opts.items()]
    return "\n".join(lines) + "\n"


def test_due_times_stay_on_the_grid_without_drift(write_yaml, callables, clock):
    callables("def skip():\n    return None\n")
    cfg = write_yaml(BASE + trig("t", "mytriggers:skip", interval="10s"))
    start = clock.now
    sched, store = make_scheduler(cfg, start)
    seen = []
    for _ in range(5):
        due = sched.next_due()
        seen.append(due - start)
        clock.now = due + 0.37  # every poll starts (and completes) late
        drive(sched, clock.now)
    assert seen == [0, 10, 20, 30, 40]


def test_polls_woken_by_events_do_not_move_the_interval_grid(write_yaml, callables, clock):
    """A watch event makes the trigger due now; the backstop poll stays on its grid (it used to move
    one interval later with every woken poll: three events in two seconds put it 18s away)."""
    callables("def skip():\n    return None\n")
    cfg = write_yaml(BASE + trig("t", "mytriggers:skip", interval="5s"))
    start = clock.now
    sched, _ = make_scheduler(cfg, start)
    drive(sched, start)
    for k in range(3):
        clock.now = start + 1 + k * 0.5
        sched.wake("t", clock.now)
        assert len(drive(sched, clock.now)) == 1
        assert sched.slots["t"].due_at == start + 5
    clock.now = start + 5.2
    assert len(drive(sched, clock.now)) == 1
    assert sched.slots["t"].due_at == start + 10


def test_missed_slots_are_skipped_not_burst(write_yaml, callables, clock):
    callables("def skip():\n    return None\n")
    cfg = write_yaml(BASE + trig("t", "mytriggers:skip", interval="10s"))
    start = clock.now
    sched, _ = make_scheduler(cfg, start)
    drive(sched, start)
    clock.now = start + 95  # the process was stalled for 9 intervals
    assert len(drive(sched, clock.now)) == 1
    assert sched.next_due() == start + 100


def test_errors_back_off_exponentially_capped_and_reset(write_yaml, callables, clock):
    callables("""
        FAIL = [True]
        def flaky():
            if FAIL[0]:
                raise RuntimeError("down")
            return None
    """)
    cfg = write_yaml(BASE + trig("t", "mytriggers:flaky", interval="10s", max_backoff="60s"))
    sched, store = make_scheduler(cfg, clock.now)
    gaps = []
    for _ in range(5):
        due = sched.next_due()
        clock.now = due
        drive(sched, due)
        gaps.append(sched.next_due() - due)
    assert gaps == [20, 40, 60, 60, 60]
    import mytriggers

    mytriggers.FAIL[0] = False
    clock.now = sched.next_due()
    drive(sched, clock.now)
    assert sched.next_due() - clock.now == 10
    assert store.trigger_rows()["t"].consecutive_errors == 0


def test_backoff_cap_is_never_below_the_interval(write_yaml, callables, clock):
    callables("def boom():\n    raise RuntimeError('x')\n")
    cfg = write_yaml(BASE + trig("t", "mytriggers:boom", interval="5m", max_backoff="1m"))
    sched, _ = make_scheduler(cfg, clock.now)
    drive(sched, clock.now)
    assert sched.next_due() - clock.now == 300


def test_jitter_spreads_polls_within_bound(write_yaml, callables, clock):
    callables("def skip():\n    return None\n")
    cfg = write_yaml(BASE + "".join(trig(f"t{i}", "mytriggers:skip", interval="10s", jitter="2s") for i in range(50)))
    sched, _ = make_scheduler(cfg, clock.now)
    dues = [s.due_at - clock.now for s in sched.slots.values()]
    assert all(0 <= d <= 2 for d in dues)
    assert len({round(d, 3) for d in dues}) > 10


def test_a_poll_drawn_late_in_its_slot_does_not_skip_the_next_slot(write_yaml, callables, clock):
    """jitter = interval: a poll whose delay was drawn near the end of its slot, a little late, ends
    after the next slot began. It did not outlast its interval, so that slot is still polled (not
    skipped, as it was: 1-2 % of the polls at 50,000 spread triggers were never run). A poll late by
    more than an interval from its own due time still skips the slots it covered."""
    callables("def skip():\n    return None\n")
    cfg = write_yaml(BASE + trig("t", "mytriggers:skip", interval="10s", jitter="10s"))
    sched, _ = make_scheduler(cfg, clock.now)
    slot = sched.slots["t"]
    grid = slot.grid_at
    slot.due_at = grid + 9.9  # as if its jitter had drawn 9.9 s
    sched._push(slot)
    clock.now = grid + 10.1  # 0.2 s late: ends 0.1 s into the next slot
    drive(sched, clock.now)
    assert slot.grid_at == grid + 10  # the next slot, not the one after it
    assert grid + 10 <= sched.next_due() <= grid + 20
    # Late by more than an interval from its due time: the slots it covered are skipped.
    late_grid = slot.grid_at
    slot.due_at = late_grid + 1.0
    sched._push(slot)
    clock.now = late_grid + 11.5
    drive(sched, clock.now)
    assert slot.grid_at == late_grid + 20
    assert late_grid + 20 <= sched.next_due() <= late_grid + 30


def test_skipped_polls_write_counters_not_rows(write_yaml, callables, clock):
    callables("def skip():\n    return None\n")
    cfg = write_yaml(BASE + trig("t", "mytriggers:skip", interval="1s"))
    sched, store = make_scheduler(cfg, clock.now)
    for _ in range(20):
        drive(sched, clock.now)
        clock.advance(1)
    assert store.history(None, 100, None, None) == []
    row = store.trigger_rows()["t"]
    assert row.polls == 20 and row.last_result == "skipped"


def test_one_poll_in_flight_per_trigger_and_timeout_is_an_error(write_yaml, callables, clock):
    callables("def skip():\n    return None\n")
    cfg = write_yaml(BASE + trig("t", "mytriggers:skip", interval="1s", timeout="5s"))
    sched, store = make_scheduler(cfg, clock.now)
    (poll,) = sched.tick(clock.now)
    clock.advance(3)
    assert sched.tick(clock.now) == []  # still in flight: not polled twice
    clock.advance(3)
    (report,) = sched.expire(clock.now)
    assert report.result == "error" and "timed out after 5s" in report.error
    clock.advance(10)
    assert sched.tick(clock.now) == []  # a timed-out call that never returned is not polled again
    sched.complete(poll, sched.execute(poll), None, clock.now)  # the call finally returns: result dropped
    assert len(sched.tick(clock.now)) == 1
    assert store.trigger_rows()["t"].fires == 0


def test_disabled_triggers_are_not_polled_and_enable_resumes(write_yaml, callables, clock):
    callables("def fire():\n    return True\n")
    cfg = write_yaml(BASE + trig("t", "mytriggers:fire", interval="10s"))
    sched, store = make_scheduler(cfg, clock.now)
    sched.set_enabled("t", False, clock.now)
    assert drive(sched, clock.now) == []
    clock.advance(100)
    sched.set_enabled("t", True, clock.now)
    assert [r.result for r in drive(sched, clock.now)] == ["fired"]


def test_enabled_flag_survives_restart_over_the_yaml(write_yaml, callables, clock):
    callables("def fire():\n    return True\n")
    cfg = write_yaml(BASE + trig("t", "mytriggers:fire", interval="10s", enabled="true"))
    store = SQLiteStore(load_config(cfg).state_location())
    store.set_enabled(["t"], False)
    store.close()
    sched, _ = make_scheduler(cfg, clock.now)
    assert sched.slots["t"].enabled is False


def test_on_error_runs_the_alert_workflow_once_per_streak(write_yaml, callables, clock):
    callables("def boom():\n    raise RuntimeError('db down')\n")
    text = BASE.replace("triggers:", "  alert:\n    tasks:\n      - run: 'true'\ntriggers:")
    cfg = write_yaml(text + trig("t", "mytriggers:boom", interval="1s", max_backoff="1s", on_error="{after: 2, workflow: alert}"))
    sched, store = make_scheduler(cfg, clock.now)
    for _ in range(5):
        clock.now = sched.next_due()
        drive(sched, clock.now)
    assert len(sched.alerts) == 1
    run = store.get_run(sched.alerts[0])
    assert run.workflow == "alert" and run.context["error"] == "RuntimeError: db down"
    kinds = [h.kind for h in store.history("t", 50, None, None)]
    assert kinds.count("error") == 1  # the same error, repeated, counts on one row
    assert store.history("t", 50, ["error"], None)[0].count == 5


def test_a_hung_callable_never_delays_the_others(write_yaml, callables):
    callables("""
        import threading
        RELEASE = threading.Event()
        def hang():
            RELEASE.wait(60)
            return None
        def fast():
            return True
    """)
    cfg_path = write_yaml(BASE + trig("hung", "mytriggers:hang", interval="1s", timeout="30s")
                          + trig("fast", "mytriggers:fast", interval="1s"))
    with running_loop(cfg_path) as (runner, store):
        # "fast" keeps firing (2 runs, so it was polled again after its first run) while "hung" is stuck.
        wait_for(lambda: fires(store, "fast") >= 2, timeout=20, message="fast trigger fires")
        assert runner.scheduler.slots["hung"].in_flight is not None
    assert runner.handoffs >= 1


def test_a_second_slow_call_after_a_hand_off_is_handed_off_too(write_yaml, callables):
    """The first slow call returning must not clear the watchdog's view of the second one."""
    callables("""
        import threading, time
        RELEASE = threading.Event()
        def slowish():
            time.sleep(0.09)   # past the 50 ms hand-off, then returns
            return None
        def hang():
            RELEASE.wait(60)
            return None
        def fast():
            return True
    """)
    cfg_path = write_yaml(BASE + trig("a", "mytriggers:slowish", interval="1h")
                          + trig("b", "mytriggers:hang", interval="1h", timeout="60s")
                          + trig("c", "mytriggers:fast", interval="100ms", allow_concurrent="true"))
    with running_loop(cfg_path) as (runner, store):
        wait_for(lambda: fires(store, "c") >= 5, timeout=20, message="c keeps firing while b hangs")
        assert runner.scheduler.slots["b"].in_flight is not None
    assert runner.handoffs >= 2


def test_reload_with_a_poll_in_flight_keeps_the_trigger_alive(write_yaml, callables, clock):
    callables("def skip():\n    return None\n")
    cfg = write_yaml(BASE + trig("t", "mytriggers:skip", interval="1s"))
    sched, store = make_scheduler(cfg, clock.now)
    (poll,) = sched.tick(clock.now)
    changed = write_yaml(BASE + trig("t", "mytriggers:skip", interval="2s"), name="changed.yaml")
    sched.reload(load_config(changed), clock.now)
    report = sched.complete(poll, sched.execute(poll), None, clock.advance(0.5))
    assert report is not None and report.result == "skipped"
    assert not sched.busy()
    assert len(sched.tick(clock.advance(5))) == 1  # polled again on the new interval

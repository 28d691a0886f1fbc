"""Time can jump: a wall-clock step (NTP, a VM restore) neither stalls nor bursts interval triggers,
and schedules follow the wall clock without a burst or a stall."""

from __future__ import annotations

import sys
import threading
import time

from conftest import wait_for
from helpers import drive, make_scheduler

from trigctl.config import load_config
from trigctl.runner import Runner
from trigctl.store.sqlite import SQLiteStore

HOUR = 3600.0
YAML = """
version: 1
workflows:
  wf: {tasks: [{run: "true"}]}
triggers:
  - {name: tick, type: python, callable: "clocksteps:skip", workflow: wf, interval: 10s}
  - {name: every, type: schedule, every: 10s, workflow: wf}
  - {name: cron, type: schedule, cron: "* * * * *", workflow: wf}
"""
STEPS = """
import threading
CALLS = []
def skip():
    CALLS.append(1)
    return None
"""


def _polled(reports, name):
    return [r for r in reports if r.trigger == name]


def _setup(write_yaml, callables, start):
    callables(STEPS, "clocksteps")
    sched, store = make_scheduler(write_yaml(YAML), start)
    return sched, store


def test_a_step_back_does_not_stall_interval_every_or_cron(write_yaml, callables):
    t0 = 1_800_000_000.0  # a whole minute and a multiple of 10
    sched, _ = _setup(write_yaml, callables, t0)
    first = drive(sched, t0 + 0.5)
    assert _polled(first, "tick")
    assert [r.result for r in drive(sched, t0 + 10.5) if r.trigger == "every"] == ["fired"]
    # The wall clock is set back an hour, 2 s of real time later.
    now = t0 + 12.5 - HOUR
    sched.clock_stepped(-HOUR, now)
    # Each goes on at its cadence from the new time: tick 10 s after its last poll, every at the
    # next 10 s slot, cron at the next minute.
    later = []
    for dt in range(1, 75):
        later += [(dt, r.trigger, r.result) for r in drive(sched, now + dt)]
    tick_polls = [dt for dt, name, _ in later if name == "tick"]
    # (a slot's fire is `duplicate` while the earlier slot's run is still queued: nothing runs here)
    every_fires = [dt for dt, name, res in later if name == "every" and res in ("fired", "duplicate")]
    cron_fires = [dt for dt, name, res in later if name == "cron" and res in ("fired", "duplicate")]
    assert tick_polls[:2] == [8, 18], later  # t0 + 20.5 - 1 h is now + 8 s: its next grid slot
    assert every_fires[:2] == [8, 18], later  # the slots at t0 + 20 - 1 h and t0 + 30 - 1 h
    assert len(cron_fires) == 1 and cron_fires[0] == 48, later  # t0 + 60 - 1 h


def test_a_step_forward_does_not_burst(write_yaml, callables):
    t0 = 1_800_000_000.0
    sched, _ = _setup(write_yaml, callables, t0)
    drive(sched, t0 + 0.5)
    now = t0 + 2.0 + HOUR
    sched.clock_stepped(HOUR, now)
    reports = drive(sched, now)
    # Interval triggers keep their monotonic cadence: not all due at once.
    assert not _polled(reports, "tick")
    # Schedules missed the hour: each fires its latest missed slot once, as after downtime.
    assert [r.result for r in _polled(reports, "every")] == ["fired"]
    assert [r.result for r in _polled(reports, "cron")] == ["fired"]
    assert _polled(drive(sched, now + 8.0), "tick")  # its slot, moved with the step
    assert not _polled(drive(sched, now + 8.5), "cron")


def test_the_real_loop_goes_on_after_the_wall_clock_steps_back(write_yaml, callables):
    """A real Runner on the real monotonic clock with a wall clock that is set back an hour: the
    100 ms interval trigger keeps polling, and `disable` from another shell is still seen."""
    callables(STEPS, "clocksteps")
    cfg_path = write_yaml(YAML.replace("interval: 10s", "interval: 100ms"))
    cfg = load_config(cfg_path)
    store = SQLiteStore(cfg.state_location())
    offset = [0.0]
    runner = Runner(cfg, store, install_signals=False, grace=5, clock=lambda: time.time() + offset[0],
                    monotonic=time.monotonic)
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    calls = sys.modules["clocksteps"].CALLS
    try:
        wait_for(lambda: len(calls) >= 3, message="polls before the step")
        offset[0] = -HOUR
        n = len(calls)
        wait_for(lambda: len(calls) >= n + 5, timeout=10, message="polls after the step back")
        other = SQLiteStore(cfg.state_location())
        other.set_enabled(["tick"], False)
        other.close()
        wait_for(lambda: not runner.scheduler.slots["tick"].enabled, timeout=10, message="disable seen")
        offset[0] = HOUR
        other = SQLiteStore(cfg.state_location())
        other.set_enabled(["tick"], True)
        other.close()
        n = len(calls)
        wait_for(lambda: len(calls) >= n + 3, timeout=10, message="polls after the step forward")
    finally:
        runner.stop()
        thread.join(20)
    assert not thread.is_alive()


def test_a_step_with_a_poll_in_flight_does_not_poll_it_twice(write_yaml, callables):
    t0 = 1_800_000_000.0
    sched, _ = _setup(write_yaml, callables, t0)
    polls = [p for p in sched.tick(t0 + 0.5) if p.slot.name == "tick"]
    assert polls  # in flight now
    sched.clock_stepped(-HOUR, t0 + 1 - HOUR)
    assert [p for p in sched.tick(t0 + 1 - HOUR) if p.slot.name == "tick"] == []
    report = sched.complete(polls[0], sched.execute(polls[0]), None, t0 + 1.2 - HOUR)
    assert report is not None
    assert [p for p in sched.tick(t0 + 1.3 - HOUR) if p.slot.name == "tick"] == []  # not again at once

"""The typed event stream: the bus, what the scheduler, the workflow runner and the loop publish,
and the log subscriber's lines (the documented log format)."""

from __future__ import annotations

import dataclasses
import io
import logging
import re
import threading
import time
from pathlib import Path

import pytest
from conftest import wait_for
from helpers import drive, make_scheduler

from trigctl import events as ev
from trigctl.config import load_config
from trigctl.events import EventBus
from trigctl.observe.logs import LOGGED_EVENTS, BatchingHandler, EventFormatter, LogSubscriber
from trigctl.runner import Runner
from trigctl.store.sqlite import SQLiteStore

ROOT = Path(__file__).resolve().parent.parent

BASE = """
version: 1
workflows:
  wf:
    tasks:
      - name: only
        run: "true"
  alert:
    tasks:
      - run: "true"
triggers:
"""


def trig(name: str, callable_: str, **opts) -> str:
    lines = [f"  - name: {name}", "    type: python", f"    callable: {callable_}", "    workflow: wf"]
    lines += [f"    {k}: {v}" for k, v in opts.items()]
    return "\n".join(lines) + "\n"


def all_event_types() -> list[type[ev.Event]]:
    return [c for c in vars(ev).values() if isinstance(c, type) and issubclass(c, ev.Event) and c is not ev.Event]


# ------------------------------------------------------------------------------------------- bus


def test_subscribers_get_the_types_they_asked_for_and_unsubscribe():
    bus = EventBus()
    fires, everything = [], []
    stop_fires = bus.subscribe(fires.append, [ev.FireRecorded])
    bus.subscribe(everything.append)
    assert bus.wants(ev.FireRecorded) and bus.wants(ev.PollCompleted)
    bus.publish(ev.FireRecorded("a", 1, {}))
    bus.publish(ev.LoopStopped())
    assert fires == [ev.FireRecorded("a", 1, {})]
    assert everything == [ev.FireRecorded("a", 1, {}), ev.LoopStopped()]
    stop_fires()
    stop_fires()  # twice is harmless
    bus.publish(ev.FireRecorded("a", 2, {}))
    assert len(fires) == 1 and len(everything) == 3


def test_nobody_listening_means_wants_is_false_and_publish_does_nothing():
    bus = EventBus()
    seen = []
    bus.subscribe(seen.append, [ev.RunStarted])
    assert not bus.wants(ev.PollCompleted)
    bus.publish(ev.PollCompleted("a", 0.0, 0.0, 0.0, "skipped"))
    assert seen == []


def test_subscribing_to_the_base_class_means_every_event():
    bus = EventBus()
    seen = []
    bus.subscribe(seen.append, [ev.Event])
    for cls in all_event_types():
        assert bus.wants(cls), cls


def test_a_failing_subscriber_is_logged_once_and_does_not_stop_the_others(caplog):
    bus = EventBus()
    seen = []

    def broken(event):
        raise RuntimeError("subscriber bug")

    bus.subscribe(broken)
    bus.subscribe(seen.append)
    with caplog.at_level(logging.WARNING, logger="trigctl.events"):
        for i in range(3):
            bus.publish(ev.RunCancelling(i))
    assert [e.run_id for e in seen] == [0, 1, 2]
    assert bus.failures == 3
    assert len([r for r in caplog.records if "subscriber bug" in r.getMessage()]) == 1


def test_events_are_frozen_and_slotted():
    e = ev.RunStarted(1, "a", "wf")
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.run_id = 2  # type: ignore[misc]
    assert not hasattr(e, "__dict__")


# ---------------------------------------------------------------------------- what is published


def test_the_scheduler_publishes_polls_fires_duplicates_and_error_streaks(write_yaml, callables, clock):
    callables("""
        from trigctl import Fire
        FAIL = [False]
        def flaky():
            if FAIL[0]:
                raise RuntimeError("down")
            return Fire({"k": 1})
        def skip():
            return None
    """)
    cfg = write_yaml(BASE + trig("f", "mytriggers:flaky", interval="10s", dedupe="none")
                     + trig("s", "mytriggers:skip", interval="10s"))
    sched, store = make_scheduler(cfg, clock.now)
    seen: list[ev.Event] = []
    sched.bus.subscribe(seen.append)
    start = clock.now
    drive(sched, start)
    kinds = [type(e).__name__ for e in seen]
    assert kinds.count("PollCompleted") == 2
    fired = [e for e in seen if isinstance(e, ev.FireRecorded)]
    assert [(e.trigger, e.context) for e in fired] == [("f", {"k": 1})]
    queued = [e for e in seen if isinstance(e, ev.RunQueued)]
    assert [(e.run_id, e.trigger, e.workflow, e.cause) for e in queued] == [(fired[0].run_id, "f", "wf", "fire")]
    polls = {e.trigger: e for e in seen if isinstance(e, ev.PollCompleted)}
    assert polls["f"].outcome == "fired" and polls["s"].outcome == "skipped"
    assert polls["f"].due_at == start and polls["f"].started_at == start and polls["f"].duration == 0

    import mytriggers
    mytriggers.FAIL[0] = True
    seen.clear()
    for _ in range(2):
        clock.now = sched.slots["f"].due_at
        drive(sched, clock.now)
    failed = [e for e in seen if isinstance(e, ev.PollFailed)]
    assert [(e.trigger, e.error, e.consecutive_errors) for e in failed] == [("f", "RuntimeError: down", 1),
                                                                            ("f", "RuntimeError: down", 2)]
    assert [e.trigger for e in seen if isinstance(e, ev.ErrorStreakStarted)] == ["f"]
    errors = [e for e in seen if isinstance(e, ev.PollCompleted) and e.trigger == "f"]
    assert [e.outcome for e in errors] == ["error", "error"] and errors[0].error == "RuntimeError: down"
    mytriggers.FAIL[0] = False
    seen.clear()
    clock.now = sched.slots["f"].due_at
    drive(sched, clock.now)
    assert [(e.trigger, e.consecutive_errors) for e in seen if isinstance(e, ev.ErrorStreakEnded)] == [("f", 2)]


def test_an_alert_run_is_published_as_queued_by_alert(write_yaml, callables, clock):
    callables("def broken():\n    raise RuntimeError('down')\n")
    cfg = write_yaml(BASE + trig("b", "mytriggers:broken", interval="1s") + "    on_error: {after: 1, workflow: alert}\n")
    sched, _ = make_scheduler(cfg, clock.now)
    seen: list[ev.Event] = []
    sched.bus.subscribe(seen.append, [ev.RunQueued])
    drive(sched, clock.now)
    assert [(e.trigger, e.workflow, e.cause) for e in seen] == [("b", "alert", "alert")]


def test_a_duplicate_is_published_on_every_poll_but_logged_once(write_yaml, callables, clock):
    callables("from trigctl import Fire\ndef same():\n    return Fire({'k': 1})\n")
    cfg = write_yaml(BASE + trig("d", "mytriggers:same", interval="1s"))
    sched, _ = make_scheduler(cfg, clock.now)
    dups: list[ev.Event] = []
    sched.bus.subscribe(dups.append, [ev.DuplicateSuppressed])
    lines = []
    logger = logging.getLogger("trigctl")
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.trigctl_event)  # type: ignore[method-assign]
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        LogSubscriber().attach(sched.bus)
        for _ in range(4):
            drive(sched, clock.now)
            clock.now += 1
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert len(dups) == 3
    assert lines == ["fired", "duplicate"]


def test_the_loop_publishes_a_run_start_to_finish_and_a_failing_subscriber_does_not_stop_it(write_yaml, callables):
    callables("from trigctl import Fire\ndef once():\n    return Fire({'k': 1})\n")
    cfg_path = write_yaml(BASE + trig("a", "mytriggers:once", interval="1h"))
    cfg = load_config(cfg_path)
    store = SQLiteStore(cfg.state_location())
    bus = EventBus()
    seen: list[ev.Event] = []

    def broken(event):
        raise ValueError("a subscriber bug")

    bus.subscribe(broken)
    bus.subscribe(seen.append)
    runner = Runner(cfg, store, install_signals=False, grace=5, bus=bus)
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: any(isinstance(e, ev.RunFinished) for e in seen), message="run finished")
    finally:
        runner.stop()
        thread.join(20)
    assert not thread.is_alive()
    assert runner._exit_code == 0
    names = [type(e).__name__ for e in seen]
    for name in ("LoopStarted", "PollCompleted", "FireRecorded", "RunQueued", "RunStarted", "TaskFinished",
                 "RunFinished", "LoopStopping", "LoopStopped"):
        assert name in names, (name, names)
    assert names.index("RunStarted") < names.index("RunFinished")
    finished = next(e for e in seen if isinstance(e, ev.RunFinished))
    assert (finished.trigger, finished.workflow, finished.status, finished.error) == ("a", "wf", "succeeded", None)
    assert finished.duration is not None and 0 <= finished.duration < 10
    task = next(e for e in seen if isinstance(e, ev.TaskFinished))
    assert (task.run_id, task.task, task.status, task.exit_code, task.attempt) == (finished.run_id, "only",
                                                                                    "succeeded", 0, 1)
    assert bus.failures == len(seen)


# ------------------------------------------------------------------------------------ log lines


def line_of(event: ev.Event, fmt: str = "text") -> str:
    """The line the log subscriber writes for one event, with its time stamp removed."""
    stream = io.StringIO()
    handler = BatchingHandler(stream)
    handler.setFormatter(EventFormatter(fmt))
    logger = logging.getLogger("trigctl")
    saved = logger.handlers[:], logger.level, logger.propagate
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        bus = EventBus()
        LogSubscriber().attach(bus)
        bus.publish(event)
        handler.flush()
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved
    text = stream.getvalue()
    if fmt == "text":
        return re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[+-]\d{4} ", "", text)
    return re.sub(r'"ts": "[^"]+", ', "", text)


@pytest.mark.parametrize(("event", "line"), [
    (ev.LoopStarted(3, 2, "/s/state.db", 42), "start triggers=3 enabled=2 state=/s/state.db pid=42"),
    (ev.FireRecorded("a", 7, {"path": "in/b c.txt"}), 'fired trigger=a run_id=7 context={"path": "in/b c.txt"}'),
    (ev.DuplicateSuppressed("a", 7, "run 7 with this key is still active"),
     'duplicate trigger=a blocked_by=7 reason="run 7 with this key is still active"'),
    (ev.DuplicateSuppressed("a", None, "given up after 3 failed attempts (dedupe: once)"),
     'duplicate trigger=a reason="given up after 3 failed attempts (dedupe: once)"'),
    (ev.PollFailed("b", "RuntimeError: boom\nagain", 1), r'error trigger=b error="RuntimeError: boom\nagain"'),
    (ev.RunStarted(7, "a", "wf"), "run_started run_id=7 trigger=a workflow=wf"),
    (ev.RunFinished(7, "a", "wf", "succeeded", 1.5, None), "run_finished run_id=7 status=succeeded"),
    (ev.RunFinished(7, "a", "wf", "failed", 1.5, "task 'x' failed: exit code 3"),
     "run_finished run_id=7 status=failed error=\"task 'x' failed: exit code 3\""),
    (ev.RunInterrupted("a", 7, "rerun as run 9", 9), 'interrupted trigger=a run_id=7 action="rerun as run 9"'),
    (ev.TriggerEnabled("a"), "enabled trigger=a"),
    (ev.TriggerDisabled("a"), "disabled trigger=a"),
    (ev.RunCancelling(7), "cancelling run_id=7"),
    (ev.ConfigReloaded(("changed b", "added c")), 'reloaded changes="changed b, added c"'),
    (ev.ConfigReloaded(()), 'reloaded changes="no changes"'),
    (ev.ReloadRefused("x.yaml:1:1: bad"), 'reload_refused error="x.yaml:1:1: bad"'),
    (ev.LoopStopping(1, 30.0), "stopping active_runs=1 grace=30.0"),
    (ev.LoopStopped(), "stopped"),
    (ev.ClockStepped(-3600.00049), "clock_stepped seconds=-3600.0"),
])
def test_log_lines_are_the_documented_format(event, line):
    assert line_of(event) == line + "\n"


def test_json_log_lines_keep_null_fields():
    assert line_of(ev.RunFinished(7, "a", "wf", "succeeded", 1.5, None), "json") == (
        '{"level": "info", "event": "run_finished", "run_id": 7, "status": "succeeded", "error": null, "output": null}\n')


def test_events_without_a_log_line_write_nothing():
    for cls in all_event_types():
        if cls not in LOGGED_EVENTS:
            fields = {f.name: 0 for f in dataclasses.fields(cls)}
            assert line_of(cls(**fields)) == "", cls


def test_every_event_type_is_in_the_events_doc():
    doc = (ROOT / "docs" / "events.md").read_text()
    for cls in all_event_types():
        assert f"`{cls.__name__}`" in doc, cls.__name__


def test_publishing_with_no_listener_costs_next_to_nothing():
    """A guard with nobody listening: well under a microsecond (an event built for nobody costs more)."""
    bus = EventBus()
    bus.subscribe(lambda e: None, [ev.RunStarted])
    n = 200_000
    t0 = time.perf_counter()
    for _ in range(n):
        if bus.wants(ev.PollCompleted):
            bus.publish(ev.PollCompleted("a", 0.0, 0.0, 0.0, "skipped"))
    per_call = (time.perf_counter() - t0) / n
    assert per_call < 2e-6, per_call


def test_views_get_the_loaded_triggers_the_next_poll_and_masked_reasons(write_yaml, callables, monkeypatch):
    """TriggersLoaded at start (with the runs still queued) and after a reload; PollCompleted with
    the next poll and the skip reason as stored (a secret masked); TriggerEnabled with the next poll."""
    monkeypatch.setenv("API_PASSWORD", "hunter2-secret")
    callables("from trigctl import Skip\ndef skip():\n    return Skip('login with hunter2-secret refused')\n")
    cfg_path = write_yaml(BASE + trig("a", "mytriggers:skip", interval="1h")
                          + trig("b", "mytriggers:skip", interval="1h", enabled="false")
                          + "  - name: secretive\n    type: http\n    workflow: wf\n    url: http://127.0.0.1:9/\n"
                            "    headers: {Authorization: '${API_PASSWORD}'}\n    interval: 1h\n")
    cfg = load_config(cfg_path)
    store = SQLiteStore(cfg.state_location())
    queued = store.enqueue_run("a", "wf", {"left": "from before"}, time.time()).run_id
    store.close()
    store = SQLiteStore(cfg.state_location())
    bus = EventBus()
    seen: list[ev.Event] = []
    bus.subscribe(seen.append, [ev.TriggersLoaded, ev.PollCompleted, ev.TriggerEnabled, ev.LoopStarted])
    runner = Runner(cfg, store, install_signals=False, grace=5, bus=bus)
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: any(isinstance(e, ev.PollCompleted) and e.trigger == "a" for e in seen), message="a poll")
        loaded = seen[0]
        assert isinstance(loaded, ev.TriggersLoaded) and isinstance(seen[1], ev.LoopStarted)
        assert [(t.name, t.type, t.workflow, t.enabled) for t in loaded.triggers] == [
            ("a", "python", "wf", True), ("b", "python", "wf", False), ("secretive", "http", "wf", True)]
        assert loaded.max_concurrent_runs == cfg.max_concurrent_runs
        assert loaded.active_runs == ((queued, "a", "queued"),)
        poll = next(e for e in seen if isinstance(e, ev.PollCompleted) and e.trigger == "a")
        assert poll.reason == "login with *** refused"
        assert poll.next_poll_at == pytest.approx(poll.started_at + 3600, abs=5)
        assert "hunter2" not in repr(seen)
        other_shell = SQLiteStore(cfg.state_location())
        other_shell.set_enabled(["b"], True)
        other_shell.close()
        enabled = wait_for(lambda: next((e for e in seen if isinstance(e, ev.TriggerEnabled)), None),
                           message="b enabled")
        assert enabled.trigger == "b" and enabled.next_poll_at is not None
        runner._reload_requested = True
        runner._event.set()
        wait_for(lambda: sum(isinstance(e, ev.TriggersLoaded) for e in seen) == 2, message="reloaded")
        again = [e for e in seen if isinstance(e, ev.TriggersLoaded)][1]
        assert again.active_runs is None and [t.name for t in again.triggers] == ["a", "b", "secretive"]
        assert [t.enabled for t in again.triggers] == [True, True, True]
    finally:
        runner.stop()
        thread.join(20)
    assert not thread.is_alive()


def test_nobody_listening_means_no_trigger_states_are_built(write_yaml, callables):
    callables("def skip():\n    return None\n")
    cfg = load_config(write_yaml(BASE + trig("a", "mytriggers:skip", interval="1h")))
    store = SQLiteStore(cfg.state_location())
    runner = Runner(cfg, store, install_signals=False, bus=EventBus())
    calls = []
    store_active = store.active_runs
    store.active_runs = lambda: calls.append(1) or store_active()  # type: ignore[method-assign]
    runner._publish_loaded(at_start=True)
    assert calls == []
    store.close()

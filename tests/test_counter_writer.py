"""Skipped polls' counters written on a thread of their own (trigctl.counters), and the store's
grouped counter writes: what `list` reads stays right, whatever order the threads run in.

Real SQLite files; the writer's thread is held at a gate where a test needs it busy, and released
on a condition (never after a sleep)."""

from __future__ import annotations

import sqlite3
import sys
import threading

import pytest
from conftest import wait_for

from trigctl.config import load_config
from trigctl.counters import CounterWriter
from trigctl.events import EventBus, PollCompleted
from trigctl.scheduler import Scheduler
from trigctl.store.base import PollStats
from trigctl.store.sqlite import FLUSH_ROWS, SQLiteStore

YAML = """
version: 1
workflows:
  wf:
    tasks:
      - run: "true"
triggers:
"""


def triggers(n: int, callable_: str = "mytriggers:skip") -> str:
    return "".join(f"  - name: t{i}\n    type: python\n    callable: {callable_}\n    workflow: wf\n    interval: 1s\n"
                   f"    dedupe: none\n" for i in range(n))


class GatedStore(SQLiteStore):
    """A real SQLite store whose counter writes wait at a gate; every write of a trigger's row is logged."""

    def __init__(self, path: str):
        super().__init__(path)
        self.gate = threading.Event()
        self.gate.set()
        self.log: list[str] = []
        self.flush_calls: list[list[tuple[str, int]]] = []

    def flush_stats(self, stats):
        stats = list(stats)
        self.log.append("flush started")
        self.flush_calls.append([(s.name, s.polls) for s in stats])
        self.gate.wait(30)
        super().flush_stats(stats)
        self.log.append("flush done")

    def record_fires(self, *args, **kwargs):
        self.log.append("record_fires")
        return super().record_fires(*args, **kwargs)


def scheduler(path, now: float, store_cls=SQLiteStore, bus: EventBus | None = None):
    cfg = load_config(path)
    store = store_cls(cfg.state_location())
    sched = Scheduler(cfg, store, bus=bus, writer=CounterWriter(store))
    sched.load(now)
    return sched, store


def poll_all(sched: Scheduler, now: float) -> int:
    from collections import deque

    results: deque = deque()
    for poll in sched.tick(now):
        try:
            results.append((poll, sched.execute(poll), None))
        except Exception as e:  # noqa: BLE001
            results.append((poll, None, e))
    n = len(results)
    sched.complete_all(results, now)
    return n


def test_counters_reach_the_state_through_the_writer_thread(write_yaml, callables, clock):
    callables("def skip():\n    return None\n")
    sched, store = scheduler(write_yaml(YAML + triggers(3)), clock.now)
    for _ in range(3):
        clock.advance(1.0)
        assert poll_all(sched, clock.now) == 3
        sched.flush(clock.now)
    sched.writer.wait()
    rows = SQLiteStore(store.path, readonly=True).trigger_rows()  # what `list` from another shell reads
    assert {rows[f"t{i}"].polls for i in range(3)} == {3}
    assert rows["t0"].last_poll_at == clock.now and rows["t0"].last_result == "skipped"
    assert rows["t0"].next_poll_at == clock.now + 1.0
    assert rows["t0"].last_reason == "the callable returned None"
    sched.close()
    assert not any(t.name == "trigctl-counters" for t in threading.enumerate())


def test_a_fire_waits_for_an_older_counter_write_of_its_trigger(write_yaml, callables, clock):
    callables("state = {'fire': False}\ndef maybe():\n    return {'x': 1} if state['fire'] else None\n")
    sched, store = scheduler(write_yaml(YAML + triggers(1, "mytriggers:maybe")), clock.now, GatedStore)
    clock.advance(1.0)
    poll_all(sched, clock.now)
    store.gate.clear()
    sched.flush(clock.now)  # the snapshot (skipped) is handed over; its write waits at the gate
    wait_for(lambda: "flush started" in store.log, interval=0.001, message="the writer to take the snapshot")
    sys.modules["mytriggers"].state["fire"] = True
    main = threading.current_thread()

    def release_when_waited_for() -> None:
        # Released once the loop is blocked waiting for the writer, or once it went on without
        # waiting (the defect: the fire's row written first, then overwritten by the old snapshot).
        def loop_waits() -> bool:
            frame = sys._current_frames().get(main.ident)
            while frame is not None:
                if frame.f_code.co_name == "wait" and "counters" in frame.f_code.co_filename:
                    return True
                frame = frame.f_back
            return "record_fires" in store.log

        wait_for(loop_waits, interval=0.001, message="the loop to wait for the writer (or to record without waiting)")
        store.gate.set()

    releaser = threading.Thread(target=release_when_waited_for, daemon=True)
    releaser.start()
    clock.advance(1.0)
    poll_all(sched, clock.now)  # fires: its row is written on this thread
    releaser.join(10)
    assert store.log == ["flush started", "flush done", "record_fires"]
    sched.flush(clock.now, force=True)
    row = SQLiteStore(store.path, readonly=True).trigger_rows()["t0"]
    assert row.last_result == "fired" and row.last_poll_at == clock.now
    assert row.polls == 2 and row.fires == 1
    sched.close()


def test_a_fire_during_a_flush_cut_short_keeps_its_row_and_every_poll_counted(write_yaml, callables, clock):
    callables("state = {'fire': set()}\ndef maybe(name):\n    return {'x': 1} if name in state['fire'] else None\n")
    n = 300
    text = YAML + "".join(f"  - name: t{i}\n    type: python\n    callable: mytriggers:maybe\n    args: {{name: t{i}}}\n"
                          f"    workflow: wf\n    interval: 1s\n    dedupe: none\n" for i in range(n))
    sched, store = scheduler(write_yaml(text), clock.now)
    sched.flush(clock.now, force=True)
    clock.advance(1.0)
    poll_all(sched, clock.now)
    calls = []
    sched.flush(clock.now, yield_to=lambda: bool(calls.append(1)) or len(calls) > 0)  # one batch, then "polls due"
    assert sched.flush_pending()
    taken = next(iter(sched._snapshot))  # a trigger whose snapshot is taken, not handed over yet
    sys.modules["mytriggers"].state["fire"] = {taken}
    slot = sched.slots[taken]
    slot.due_at = clock.now  # due again now (as a file event would make it)
    sched._push(slot)
    assert poll_all(sched, clock.now) == 1  # it fires: its row is written now, with both polls
    sched.flush(clock.now)  # the rest of the flush is handed over
    assert not sched.flush_pending()
    sched.writer.wait()
    rows = SQLiteStore(store.path, readonly=True).trigger_rows()
    assert rows[taken].last_result == "fired" and rows[taken].polls == 2 and rows[taken].fires == 1
    others = [name for name in rows if name != taken]
    assert {rows[name].polls for name in others} == {1}
    assert {rows[name].last_result for name in others} == {"skipped"}
    sched.close()


def test_snapshots_queued_while_the_writer_is_busy_are_written_once_per_trigger(tmp_path):
    store = GatedStore(str(tmp_path / "state.db"))
    store.sync_triggers(["a", "b"])
    writer = CounterWriter(store)
    store.gate.clear()
    writer.submit([PollStats("a", 1.0, "skipped", 2.0, 1)])
    wait_for(lambda: store.flush_calls, interval=0.001, message="the writer to take the first snapshot")
    writer.submit([PollStats("a", 2.0, "skipped", 3.0, 2), PollStats("b", 2.0, "skipped", 3.0, 1)])
    writer.submit([PollStats("a", 3.0, "skipped", 4.0, 4)])
    assert writer.busy
    store.gate.set()
    assert writer.wait(10)
    assert not writer.busy
    assert sorted(store.flush_calls[1]) == [("a", 6), ("b", 1)]  # merged: the latest values, every poll
    rows = store.trigger_rows()
    assert rows["a"].polls == 7 and rows["a"].last_poll_at == 3.0 and rows["b"].polls == 1
    writer.close()


def test_a_write_error_reaches_the_loop_at_its_next_flush(tmp_path):
    store = SQLiteStore(str(tmp_path / "state.db"))
    store.sync_triggers(["a"])
    writer = CounterWriter(store)
    store.close()  # every write fails from now on
    writer.submit([PollStats("a", 1.0, "skipped", 2.0, 1)])
    with pytest.raises(Exception) as raised:
        writer.wait(10)
    from trigctl.store.base import StateError

    assert isinstance(raised.value, StateError)
    writer.submit([])  # the error was reported once
    writer.close()


def test_counters_are_written_by_name_when_a_rowid_moved(tmp_path):
    path = str(tmp_path / "state.db")
    store = SQLiteStore(path)
    names = [f"t{i}" for i in range(FLUSH_ROWS + 20)]
    store.sync_triggers(names)
    store.flush_stats([PollStats(n, 1.0, "skipped", 2.0, 1) for n in names])  # rowids read and cached
    other = sqlite3.connect(path)  # another tool moves one row (as a VACUUM may renumber rows)
    with other:
        other.execute("DELETE FROM triggers WHERE name = 't3'")
        other.execute("INSERT INTO triggers (name, polls) VALUES ('t3', 1)")
    other.close()
    store.flush_stats([PollStats(n, 5.0, "skipped", 6.0, 1, last_reason="same") for n in reversed(names)])
    rows = store.trigger_rows()
    assert {rows[n].polls for n in names} == {2}  # each counted once: the group was rolled back, then by name
    assert {rows[n].last_poll_at for n in names} == {5.0}
    store.flush_stats([PollStats("t3", 7.0, "skipped", 8.0, 1)])  # the rowids were read again
    assert store.trigger_rows()["t3"].polls == 3


def test_counters_of_many_triggers_in_any_order_land_on_their_own_rows(tmp_path):
    import random

    store = SQLiteStore(str(tmp_path / "state.db"))
    names = [f"t{i}" for i in range(3 * FLUSH_ROWS + 7)]
    store.sync_triggers(names)
    stats = [PollStats(n, float(i), "skipped", float(i) + 1, i % 5, 0, f"reason {i % 3}") for i, n in enumerate(names)]
    random.Random(7).shuffle(stats)
    store.process = None
    store.flush_stats(stats)
    rows = store.trigger_rows()
    for i, n in enumerate(names):
        assert (rows[n].last_poll_at, rows[n].next_poll_at, rows[n].polls, rows[n].last_reason) == (
            float(i), float(i) + 1, i % 5, f"reason {i % 3}")


def test_a_reason_is_masked_once_not_at_every_poll(write_yaml, callables, clock, monkeypatch):
    callables("from trigctl import Skip\n"
              "def skip():\n    return Skip('upstream https://bot:hunter2@example.com/ said no')\n")
    bus = EventBus()
    events: list[PollCompleted] = []
    bus.subscribe(events.append, [PollCompleted])  # a PollCompleted listener (as --metrics is)
    sched, store = scheduler(write_yaml(YAML + triggers(2)), clock.now, bus=bus)
    masked = []
    real = sched.shown_reason
    monkeypatch.setattr(sched, "shown_reason", lambda reason: masked.append(reason) or real(reason))
    for _ in range(4):
        clock.advance(1.0)
        poll_all(sched, clock.now)
        sched.flush(clock.now)
    assert len(events) == 8
    assert len(masked) == 2  # once per trigger while its reason stays the same
    assert {e.reason for e in events} == {"upstream https://bot:***@example.com/ said no"}
    sched.writer.wait()
    assert store.trigger_rows()["t0"].last_reason == "upstream https://bot:***@example.com/ said no"
    sched.close()

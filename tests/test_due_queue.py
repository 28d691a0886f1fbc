"""The scheduler's queue of due times (slots in 1 ms buckets, a heap of the buckets' keys) and the
inlined completion of skips keep the meaning of a heap of due times and of `complete()`: polls start
in due order and only once due, a re-pushed slot is polled once, `next_due()` is exact, a tick left
half-way (a hand-off) leaves the rest for the next one, and `complete_all()` leaves every slot as
`complete()` does, jitter draws included."""

from __future__ import annotations

import random
from collections import deque

from helpers import make_scheduler

from trigctl.config import load_config
from trigctl.scheduler import BUCKET_WIDTH, Scheduler
from trigctl.store.sqlite import SQLiteStore

YAML = "version: 1\nworkflows: {wf: {tasks: [{run: 'true'}]}}\ntriggers:\n"


def project(tmp_path, name: str, triggers: str):
    """A YAML beside the callables' module, with a state of its own."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"state: .trigctl/{name}.db\n" + YAML + triggers)
    return path


def python_triggers(names, extra: str = "") -> str:
    return "".join(f"  - {{name: {n}, type: python, callable: 'mytriggers:skip', workflow: wf, interval: 1s{extra}}}\n"
                   for n in names)


def run(sched: Scheduler, now: float, polls) -> None:
    """Execute and complete ``polls`` one by one (as `trigctl poll` and the tests do)."""
    for poll in polls:
        sched.complete(poll, sched.execute(poll), None, now)


def test_polls_start_in_due_order_and_only_once_due_within_one_bucket(tmp_path, callables, clock):
    callables("def skip():\n    return None\n")
    sched, _ = make_scheduler(project(tmp_path, "p", python_triggers("abcd")), clock.now)
    run(sched, clock.now, sched.tick(clock.now))  # all due at load: polled, now due a second later
    t = clock.now + 10
    dues = {"a": t + 0.0007, "b": t + 0.0002, "c": t + 0.0015, "d": t + 0.0002}
    for name, due in dues.items():
        slot = sched.slots[name]
        slot.due_at = slot.grid_at = due
        sched._push(slot)  # (the entries of the second before are dead from now on)
    assert int(dues["a"] / BUCKET_WIDTH) == int(dues["b"] / BUCKET_WIDTH)  # one bucket, cut by `now`
    assert sched.next_due() == t + 0.0002
    assert sched.tick(t) == []
    first = sched.tick(t + 0.0005)
    assert [p.slot.name for p in first] == ["b", "d"]  # equal due times: in the order pushed
    assert sched.next_due() == t + 0.0007  # exact, not the bucket's start
    run(sched, t + 0.0005, first)
    second = sched.tick(t + 0.002)
    assert [p.slot.name for p in second] == ["a", "c"]
    run(sched, t + 0.002, second)
    assert sched.tick(t + 0.5) == []


def test_a_slot_pushed_again_is_polled_once_and_its_dead_entry_is_not_its_due_time(tmp_path, callables, clock):
    callables("def skip():\n    return None\n")
    sched, _ = make_scheduler(project(tmp_path, "p", python_triggers("ab")), clock.now)
    run(sched, clock.now, sched.tick(clock.now))
    a = sched.slots["a"]
    now = clock.now + 0.25
    sched.wake("a", now)  # due now: its entry of a second later is dead
    sched.wake("a", now)  # (already due: not moved)
    a.due_at = now
    sched._push(a)  # two entries in one bucket: one is live
    assert sched.next_due() == now
    assert [p.slot.name for p in sched.tick(now)] == ["a"]
    run(sched, now, [a.in_flight] if a.in_flight else [])
    # b is due at the second after load; a's next due time follows its grid (the event did not move it)
    assert sched.next_due() == min(sched.slots["b"].due_at, a.due_at)
    b = sched.slots["b"]
    later = b.due_at + 7
    b.due_at = b.grid_at = later
    sched._push(b)  # its entry at the earlier time is dead
    assert sched.next_due() == a.due_at
    run(sched, a.due_at, sched.tick(a.due_at))
    assert sched.next_due() == min(a.due_at, later)


def test_a_tick_left_half_way_leaves_the_rest_for_the_next(tmp_path, callables, clock):
    """As at a hand-off: the old owner's tick stops after one poll; the new owner's goes on."""
    callables("def skip():\n    return None\n")
    names = [f"t{i}" for i in range(5)]
    sched, _ = make_scheduler(project(tmp_path, "p", python_triggers(names)), clock.now)
    ticking = sched.iter_tick(clock.now)
    taken = next(ticking)
    del ticking  # never resumed
    rest = sched.tick(clock.now)
    assert [p.slot.name for p in [taken, *rest]] == names
    assert taken.slot.in_flight is taken and not taken.slot.waiting  # not polled twice


def test_complete_all_leaves_every_slot_as_complete_does(tmp_path, callables, clock):
    """Interval triggers on their grid (the common path), woken early, woken while in flight, late by
    more than an interval, with a changing skip reason, schedules, errors, fires: the same due times
    (jitter drawn in the same order), grids and counters either way."""
    callables("""
        N = [0]
        def skip():
            return None
        def reasons():
            from trigctl import Skip
            N[0] += 1
            return Skip("odd" if N[0] % 4 < 2 else "even")
        def flaky():
            N[0] += 1
            if N[0] % 3 == 0:
                raise ValueError("no")
            return None
        def fire():
            N[0] += 1
            return {"n": N[0]} if N[0] % 5 == 0 else None
    """)
    triggers = (python_triggers(["p1", "p2", "p3"], ", jitter: 400ms")
                + python_triggers(["plain"])
                + "".join(f"  - {{name: {n}, type: python, callable: 'mytriggers:{n}', workflow: wf, interval: 2s, "
                          "jitter: 300ms, dedupe: none}\n" for n in ("reasons", "flaky", "fire"))
                + "  - {name: every, type: schedule, every: 3s, workflow: wf}\n")
    scheds = []
    for name in ("one", "all"):
        cfg = load_config(project(tmp_path, name, triggers))
        sched = Scheduler(cfg, SQLiteStore(cfg.state_location()), rng=random.Random(7))
        sched.load(clock.now)
        scheds.append(sched)
    one, every = scheds
    now = clock.now
    woken_in_flight = 0
    for step in range(60):
        now += 0.25 if step != 30 else 3.7  # once late by more than an interval
        if step % 9 == 4:
            for sched in scheds:
                sched.wake("p2", now)  # polled before its slot on the grid
        polls = [sched.tick(now) for sched in scheds]
        assert [p.slot.name for p in polls[0]] == [p.slot.name for p in polls[1]]
        p3_in_flight = step % 7 == 3 and every.slots["p3"].in_flight is not None
        woken_in_flight += p3_in_flight
        if step % 7 == 3:
            for sched in scheds:
                sched.wake("p3", now)  # in flight: it goes again as soon as it returns (slot.waiting)
        results = [_call(one, p) for p in polls[0]]  # one call each: the same results for both
        for poll, (result, error) in zip(polls[0], results):
            one.complete(poll, result, error, now + 0.01)
        every.complete_all(deque((p, *r) for p, r in zip(polls[1], results)), now + 0.01)
        for name, a in one.slots.items():
            b = every.slots[name]
            assert (a.due_at, a.grid_at, a.stats) == (b.due_at, b.grid_at, b.stats), (step, name)
        assert one.next_due() == every.next_due()
        if p3_in_flight:
            assert every.slots["p3"].due_at == now + 0.01  # due again at once, its grid unmoved
    assert every.slots["p1"].stats.polls > 10 and every.slots["reasons"].stats.last_result == "skipped"
    assert woken_in_flight > 0


def _call(sched: Scheduler, poll):
    try:
        return sched.execute(poll), None
    except Exception as e:  # noqa: BLE001
        return None, e


def test_next_due_stays_exact_as_the_earliest_bucket_changes(tmp_path, callables, clock):
    """next_due() remembers the earliest bucket's minimum: entries added, or that minimum's entry
    dead or moved, are seen."""
    callables("def skip():\n    return None\n")
    sched, _ = make_scheduler(project(tmp_path, "p", python_triggers("abc")), clock.now)
    run(sched, clock.now, sched.tick(clock.now))
    t = clock.now + 10
    a, b, c = (sched.slots[n] for n in "abc")
    for slot, due in ((a, t + 0.0006), (b, t + 0.0004), (c, t + 0.9)):
        slot.due_at = slot.grid_at = due
        sched._push(slot)
    assert sched.next_due() == t + 0.0004
    assert sched.next_due() == t + 0.0004  # (remembered)
    c.due_at = c.grid_at = t + 0.0001
    sched._push(c)  # added to the same bucket, earlier
    assert sched.next_due() == t + 0.0001
    c.due_at = c.grid_at = t + 0.9
    sched._push(c)  # the earliest moved on
    assert sched.next_due() == t + 0.0004
    sched.leases_lost(["b"])  # its entry is dead
    assert sched.next_due() == t + 0.0006
    assert [p.slot.name for p in sched.tick(t + 0.001)] == ["a"]
    assert sched.next_due() == t + 0.9

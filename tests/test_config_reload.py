"""A reload keeps what did not change: a trigger's position in the file is not part of it."""

from __future__ import annotations

from helpers import make_scheduler

from trigctl.config import TriggerConfig, load_config

BASE = """
version: 1
workflows:
  wf:
    tasks:
      - run: "true"
triggers:
"""


def trig(name: str, kind: str = "python", interval: str = "10s") -> str:
    body = ["    type: python", "    callable: mytriggers:skip"] if kind == "python" else [
        "    type: command", "    run: sleep 30"]
    return "\n".join([f"  - name: {name}", *body, "    workflow: wf", f"    interval: {interval}"]) + "\n"


def test_position_is_not_part_of_a_triggers_identity():
    a = TriggerConfig(name="t", type="python", workflow="wf", options={"callable": "m:f"}, index=0)
    assert a == TriggerConfig(name="t", type="python", workflow="wf", options={"callable": "m:f"}, index=3)
    assert a != TriggerConfig(name="t", type="python", workflow="wf", options={"callable": "m:g"}, index=0)


def test_a_trigger_inserted_at_the_top_leaves_the_others_untouched(write_yaml, callables, clock):
    callables("def skip():\n    return None\n")
    cfg = write_yaml(BASE + trig("a") + trig("cmd", kind="command") + trig("b"))
    sched, store = make_scheduler(cfg, clock.now)
    polls = {p.slot.name: p for p in sched.tick(clock.now)}
    before = dict(sched.slots)
    impls = {name: slot.impl for name, slot in before.items()}
    closed: list[str] = []
    for name, impl in impls.items():  # a close() would stop a watcher or kill a running command
        impl.close = lambda name=name: closed.append(name)  # type: ignore[method-assign]

    inserted = write_yaml(BASE + trig("new") + trig("a") + trig("cmd", kind="command") + trig("b", interval="20s"),
                          name="inserted.yaml")
    changes = sched.reload(load_config(inserted), clock.advance(1))

    assert sorted(changes) == ["added new", "changed b"]
    for name in ("a", "cmd"):
        assert sched.slots[name] is before[name] and sched.slots[name].impl is impls[name]
        assert sched.slots[name].in_flight is polls[name]  # a poll in flight completes on its own slot
    assert closed == ["b"]  # b's interval changed: only its instance was replaced
    assert sched.slots["b"].impl is not impls["b"]
    report = sched.complete(polls["a"], sched.execute(polls["a"]), None, clock.advance(0.5))
    assert report is not None and report.result == "skipped"
    store.close()

from __future__ import annotations

import pytest
from helpers import drive, make_scheduler
from hypothesis import given
from hypothesis import strategies as st

from trigctl import Fire, Skip
from trigctl.triggers.base import normalize_result

YAML = """
version: 1
workflows:
  wf:
    tasks:
      - run: "true"
triggers:
  - name: t
    type: python
    callable: CALLABLE
    workflow: wf
    interval: 10s
    EXTRA
"""


def yaml_for(callable_: str, extra: str) -> str:
    return YAML.replace("CALLABLE", callable_).replace("EXTRA", extra)


@pytest.mark.parametrize(
    "value, fires, reason",
    [
        (None, [], "the callable returned None"),
        (False, [], "the callable returned False"),
        (True, [{}], ""),
        ({}, [{}], ""),
        ({"a": 1}, [{"a": 1}], ""),
        ((True, {"a": 1}), [{"a": 1}], ""),
        ((True, None), [{}], ""),
        ((False, {"a": 1}), [], "the callable returned (False, ...)"),
        (Skip(), [], "the callable returned Skip() without a reason"),
        ([None, False], [], "the callable returned no fires (only None, False or Skip() in its list)"),
        (Fire({"x": "y"}), [{"x": "y"}], ""),
        (Skip("not yet"), [], "not yet"),
        ([{"a": 1}, {"a": 2}], [{"a": 1}, {"a": 2}], ""),
        ([], [], "empty list"),
        ((x for x in [True, {"b": 2}]), [{}, {"b": 2}], ""),
    ],
)
def test_every_return_form(value, fires, reason):
    out = normalize_result(value)
    assert out.fires == fires
    assert out.skip_reason == reason


@pytest.mark.parametrize("junk", [42, "yes", b"x", (1, 2), (True, {}, 3), object(), [42], {"k": object()},
                                  {"k": float("nan")}, Fire(["not", "a", "dict"])])
def test_junk_is_a_type_error(junk):
    with pytest.raises(TypeError):
        normalize_result(junk)


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text() | st.floats(allow_nan=False, allow_infinity=False),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3), max_leaves=10))
def test_any_json_dict_fires_with_itself(value):
    ctx = {"v": value}
    assert normalize_result(ctx).fires == [ctx]


def test_cursor_survives_restart_and_is_stored_with_the_fire(write_yaml, callables, clock):
    callables("""
        from trigctl import Fire, Skip
        def poll(cursor=None):
            n = int(cursor or 0)
            if n % 2 == 0:
                return Fire({"n": n}, cursor=str(n + 1))
            return Skip("odd", cursor=str(n + 1))
    """)
    cfg = write_yaml(yaml_for("mytriggers:poll", ""))
    sched, store = make_scheduler(cfg, clock.now)
    assert drive(sched, clock.now)[0].result == "fired"
    assert store.trigger_rows()["t"].cursor == "1"
    assert drive(sched, clock.advance(10))[0].result == "skipped"
    assert store.trigger_rows()["t"].cursor == "2"
    store.close()
    sched2, store2 = make_scheduler(cfg, clock.advance(10))  # a restart
    reports = drive(sched2, clock.now)
    assert reports[0].fires[0][0] == {"n": 2}
    assert store2.trigger_rows()["t"].cursor == "3"


def test_async_function_and_class_with_args_and_close(write_yaml, callables, clock, tmp_path):
    callables("""
        import asyncio
        async def afire(limit=1):
            await asyncio.sleep(0)
            return {"limit": limit}

        CLOSED = []
        class Watcher:
            def __init__(self, label):
                self.label = label
                self.polls = 0
            def poll(self, cursor=None):
                self.polls += 1
                return (True, {"label": self.label, "polls": self.polls, "cursor": cursor})
            def close(self):
                CLOSED.append(self.label)
    """)
    cfg = write_yaml(yaml_for("mytriggers:afire", "args: {limit: 3}")
                     + "  - name: c\n    type: python\n    callable: mytriggers:Watcher\n    args: {label: L}\n    workflow: wf\n")
    sched, store = make_scheduler(cfg, clock.now)
    reports = {r.trigger: r for r in drive(sched, clock.now)}
    assert reports["t"].fires[0][0] == {"limit": 3}
    assert reports["c"].fires[0][0] == {"label": "L", "polls": 1, "cursor": None}
    sched.close()
    import mytriggers

    assert mytriggers.CLOSED == ["L"]


def test_raising_and_junk_callables_are_errors_not_crashes(write_yaml, callables, clock):
    callables("""
        def boom():
            raise ValueError("kaput")
        def junk():
            return 42
    """)
    cfg = write_yaml(yaml_for("mytriggers:boom", "")
                     + "  - name: j\n    type: python\n    callable: mytriggers:junk\n    workflow: wf\n")
    sched, store = make_scheduler(cfg, clock.now)
    reports = {r.trigger: r for r in drive(sched, clock.now)}
    assert reports["t"].result == "error" and "ValueError: kaput" in reports["t"].error
    assert reports["j"].result == "error" and "unsupported return value" in reports["j"].error
    rows = store.trigger_rows()
    assert rows["t"].consecutive_errors == 1 and rows["t"].last_error == "ValueError: kaput"


def test_constructor_that_raises_is_an_error_each_poll(write_yaml, callables, clock):
    callables("""
        class Bad:
            def __init__(self):
                raise RuntimeError("no connection")
            def poll(self):
                return True
    """)
    cfg = write_yaml(yaml_for("mytriggers:Bad", ""))
    sched, store = make_scheduler(cfg, clock.now)
    (report,) = drive(sched, clock.now)
    assert report.result == "error" and "no connection" in report.error

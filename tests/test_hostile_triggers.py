"""Hostile trigger code: callables that raise, hang, return junk or huge contexts, leak threads, print to
stdout, and commands that ignore SIGTERM. The loop must keep the healthy triggers on time, back the
bad ones off, and still shut down within --grace."""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import math
import sys
import time
from pathlib import Path

import pytest
from conftest import run_trigctl, wait_for
from helpers import make_scheduler
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from realproc import RunProc, integrity, query

from trigctl import Fire, Skip
from trigctl.procs import group_running
from trigctl.scheduler import Awaited, Scheduler
from trigctl.triggers.base import MAX_CONTEXT_BYTES, PollOutcome, normalize_result

# --------------------------------------------------------------------------------- junk values


class EvilIter:
    """Iterable whose iteration blows up."""

    def __iter__(self):
        raise RuntimeError("cannot iterate me")


class EvilStr:
    def __str__(self):
        raise ValueError("no str for you")

    def __repr__(self):
        return "EvilStr()"


class EvilError(Exception):
    """An exception whose message itself raises."""

    def __str__(self):
        raise RuntimeError("str() of this exception fails")


class EvilBool:
    def __bool__(self):
        raise RuntimeError("no truth value")

    def __eq__(self, other):
        raise RuntimeError("no comparison")

    __hash__ = object.__hash__


def _nested(depth: int) -> dict:
    """A context nested ``depth`` levels deep (a 2 KB JSON body can nest ~500)."""
    inner: dict = {"leaf": 1}
    for _ in range(depth):
        inner = {"a": inner}
    return inner


#: Strings no UTF-8 encoder takes (lone surrogates: a file name that is not UTF-8, "\udcff" in a JSON
#: body), and text that looks like markup or terminal control.
HOSTILE_TEXT = st.text(alphabet=st.sampled_from(["\udcff", "\ud800", "\udfff", "\udc80", "a", "[", "/", "]", "\x1b", "\u202e"]),
                       min_size=1, max_size=6)


def _hashables():
    return st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=5), st.floats(allow_nan=True),
                     st.binary(max_size=5))


LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=2**63, max_value=2**80),
    st.integers(0, 3).map(lambda k: 10 ** (4400 + k)),  # too many digits for int -> str (Python's own limit)
    st.floats(allow_nan=True, allow_infinity=True), st.just(float("nan")), st.just(-math.inf),
    st.text(max_size=20), st.text(alphabet="\x00\ud7ff\U0010ffff\n\"'$`;|", max_size=8), HOSTILE_TEXT,
    st.integers(50, 600).map(_nested),
    st.binary(max_size=20), st.complex_numbers(),
    st.builds(object), st.builds(EvilIter), st.builds(EvilStr), st.builds(EvilBool),
    st.frozensets(_hashables(), max_size=3), st.sets(_hashables(), max_size=3),
    st.just(Ellipsis), st.just(NotImplemented), st.just(int), st.just(print),
)


def _containers(children):
    keys = st.one_of(st.text(max_size=6), HOSTILE_TEXT, st.integers(), st.none(), st.booleans(), st.floats(allow_nan=True),
                     st.tuples(st.integers()))
    return st.one_of(
        st.lists(children, max_size=4),
        st.tuples(children), st.tuples(children, children), st.tuples(st.booleans(), children),
        st.tuples(children, children, children),
        st.dictionaries(keys, children, max_size=4),
        st.builds(Fire, context=children, cursor=children),
        st.builds(Fire, context=st.dictionaries(st.text(max_size=5), children, max_size=3)),
        st.builds(Skip, reason=children, cursor=children),
        st.builds(Skip, reason=st.text(max_size=10), cursor=st.one_of(st.none(), st.text(max_size=10))),
        st.builds(Fire, context=st.dictionaries(HOSTILE_TEXT, st.one_of(HOSTILE_TEXT, children), max_size=3),
                  cursor=st.one_of(st.none(), HOSTILE_TEXT)),
        st.builds(Skip, reason=HOSTILE_TEXT, cursor=HOSTILE_TEXT),
    )


JUNK = st.recursive(LEAVES, _containers, max_leaves=12)


def _valid(out: PollOutcome) -> None:
    assert isinstance(out, PollOutcome)
    for ctx in out.fires:
        assert type(ctx) is dict
        text = json.dumps(ctx, allow_nan=False)  # plain JSON: no NaN, no objects
        assert json.loads(text) == ctx
        assert len(text) <= MAX_CONTEXT_BYTES
    assert out.cursor is None or isinstance(out.cursor, str)
    assert isinstance(out.skip_reason, str)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(JUNK)
def test_normalize_result_turns_junk_into_an_outcome_or_a_clean_error(value):
    try:
        out = normalize_result(value)
    except Exception as e:  # a clean error: the scheduler records it as the poll's error
        assert isinstance(e, Exception)
        return
    _valid(out)


def test_huge_contexts_are_refused():
    with pytest.raises(TypeError, match="too large"):
        normalize_result({"blob": "x" * (MAX_CONTEXT_BYTES + 1)})
    with pytest.raises(TypeError, match="too large"):
        normalize_result([{"i": i, "blob": "x" * 200_000} for i in range(2)] + [{"blob": "y" * 1_100_000}])
    assert normalize_result({"blob": "x" * 1000}).fires == [{"blob": "x" * 1000}]


def test_endless_results_are_refused_not_collected():
    with pytest.raises(TypeError, match="more than 100000 results"):
        normalize_result({"i": i} for i in itertools.count())
    with pytest.raises(TypeError, match="more than 100000 results"):
        normalize_result([True] * 100_001)
    assert len(normalize_result([True] * 100_000).fires) == 100_000


SCHED_YAML = """
version: 1
workflows:
  w: {tasks: [{run: "true"}]}
defaults: {interval: 1s, max_backoff: 1s}
triggers:
  - {name: sync, type: python, callable: "junkmod:poll", workflow: w}
  - {name: nodedupe, type: python, callable: "junkmod:poll", workflow: w, dedupe: none}
  - {name: asyncjunk, type: python, callable: "junkmod:apoll", workflow: w}
  - {name: raiser, type: python, callable: "junkmod:raiser", workflow: w}
  - {name: cursor, type: python, callable: "junkmod:with_cursor", workflow: w}
"""

JUNKMOD = """
VALUE = None
ERROR = None

def poll():
    return VALUE

async def apoll():
    return VALUE

def raiser():
    raise ERROR

def with_cursor(cursor=None):
    return VALUE
"""

EXCEPTIONS = st.one_of(
    st.builds(RuntimeError, st.text(max_size=30)), st.builds(ValueError), st.builds(EvilError),
    st.builds(RuntimeError, HOSTILE_TEXT), st.builds(OSError, st.integers(), HOSTILE_TEXT),
    st.builds(KeyError, JUNK), st.builds(OSError, st.integers(), st.text(max_size=10)),
    st.just(SystemExit(3)), st.just(KeyboardInterrupt()), st.just(GeneratorExit()), st.just(RecursionError("deep")),
    st.just(MemoryError()), st.builds(Exception, JUNK),
)


def _drive(sched, now):
    """Like the runner: call inline, await awaitables, catch everything the call raises."""
    reports = []
    for poll in sched.tick(now):
        try:
            result, error = sched.execute(poll), None
            if inspect.isawaitable(result):
                async def wait(aw=result):
                    return await aw
                try:
                    result = Awaited(asyncio.run(wait()))
                except BaseException as e:  # noqa: BLE001 - as the runner's event-loop callback does
                    result, error = None, e
        except BaseException as e:  # noqa: BLE001
            result, error = None, e
        report = sched.complete(poll, result, error, now)  # must never raise
        assert report is not None
        reports.append(report)
    sched.flush(now, force=True)
    return reports


def test_junk_through_the_scheduler_never_escapes_and_the_store_stays_consistent(tmp_path, write_yaml, callables):
    callables(JUNKMOD, "junkmod")
    cfg = write_yaml(SCHED_YAML)
    clock = [1_800_000_000.0]
    sched, store = make_scheduler(cfg, clock[0])
    config = sched.config
    mod = sys.modules["junkmod"]
    seen = {"error": 0, "fired": 0, "skipped": 0, "duplicate": 0}

    @settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(JUNK, EXCEPTIONS)
    def check(value, exc):
        mod.VALUE, mod.ERROR = value, exc
        clock[0] += 2
        # A fresh scheduler on the same state each time (as after a restart): examples stay independent.
        sched = Scheduler(config, store)
        sched.load(clock[0])
        try:
            expected_error = False
            normalize_result(value)
        except Exception:
            expected_error = True
        reports = {r.trigger: r for r in _drive(sched, clock[0])}
        assert set(reports) == set(sched.slots)
        for name, r in reports.items():
            assert r.result in ("fired", "skipped", "duplicate", "error")
            if r.result == "error":
                assert isinstance(r.error, str) and r.error and "Traceback" not in r.error
            for ctx, res in r.fires:
                json.dumps(ctx, allow_nan=False)
                assert res.run_id is not None or res.suppressed
            if name in ("sync", "nodedupe", "asyncjunk"):
                assert (r.result == "error") == expected_error, (name, value, r)
        assert reports["raiser"].result == "error"
        rows = store.trigger_rows()
        for name, slot in sched.slots.items():
            assert rows[name].consecutive_errors == slot.stats.consecutive_errors
            assert (rows[name].last_result == "error") == (reports[name].result == "error")
        for r in reports.values():
            seen[r.result] += 1

    check()
    db = Path(store.path)
    store.close()
    assert integrity(db) == "ok"
    assert seen["error"] and seen["fired"] and seen["skipped"] and seen["duplicate"], seen
    assert query(db, "SELECT count(*) FROM runs r WHERE (SELECT count(*) FROM events e WHERE e.kind = 'fire' "
                     "AND e.run_id = r.id) != 1") == [(0,)]
    for (ctx,) in query(db, "SELECT context FROM runs"):
        json.loads(ctx, parse_constant=lambda c: pytest.fail(f"{c} stored in a context"))
    for (cursor,) in query(db, "SELECT cursor FROM triggers WHERE cursor IS NOT NULL"):
        assert isinstance(cursor, (str, bytes))  # bytes: a cursor that is not valid Unicode, kept exact


# ------------------------------------------------------------------------------- a real `run`

HOSTILE = r'''
import asyncio, itertools, sys, threading, time

HANG = threading.Event()

def _mark(name):
    with open("polls-" + name + ".log", "a") as f:
        f.write("%.6f\n" % time.time())

def healthy():
    _mark("healthy")

def raises():
    _mark("raises")
    raise RuntimeError("boom")

def hangs():
    _mark("hangs")
    HANG.wait()  # forever

async def ahangs():
    _mark("ahangs")
    await asyncio.sleep(3600)

def junk():
    _mark("junk")
    return object()

def endless():
    _mark("endless")
    return ({"i": i} for i in itertools.count())

def huge():
    _mark("huge")
    return {"blob": "x" * 2_000_000}

async def ahealthy():
    _mark("ahealthy")

async def aexit():
    _mark("aexit")
    sys.exit(3)  # asyncio re-raises SystemExit out of its event loop

def sexit():
    _mark("sexit")
    raise SystemExit(4)

def kbint():
    _mark("kbint")
    raise KeyboardInterrupt

def leaky():
    _mark("leaky")
    threading.Thread(target=time.sleep, args=(3600,), name="leaked", daemon=False).start()

def noisy():
    _mark("noisy")
    print("NOISE " * 50)
    sys.stdout.write('{"event": "fired", "trigger": "noisy", "context": {"injected": true}}\n')
    sys.stdout.flush()
    return {"n": 1}
'''

HOSTILE_YAML = """
version: 1
defaults: {interval: 100ms, timeout: 5s, max_backoff: 800ms}
workflows:
  w: {tasks: [{run: "true"}]}
triggers:
  - {name: healthy, type: python, callable: "hostile:healthy", workflow: w}
  - {name: raises, type: python, callable: "hostile:raises", workflow: w}
  - {name: hangs, type: python, callable: "hostile:hangs", workflow: w, timeout: 500ms}
  - {name: ahangs, type: python, callable: "hostile:ahangs", workflow: w, timeout: 500ms}
  - {name: junk, type: python, callable: "hostile:junk", workflow: w}
  - {name: huge, type: python, callable: "hostile:huge", workflow: w}
  - {name: endless, type: python, callable: "hostile:endless", workflow: w}
  - {name: ahealthy, type: python, callable: "hostile:ahealthy", workflow: w}
  - {name: aexit, type: python, callable: "hostile:aexit", workflow: w}
  - {name: sexit, type: python, callable: "hostile:sexit", workflow: w}
  - {name: kbint, type: python, callable: "hostile:kbint", workflow: w}
  - {name: leaky, type: python, callable: "hostile:leaky", workflow: w}
  - {name: noisy, type: python, callable: "hostile:noisy", workflow: w}
  - name: deaf
    type: command
    run: "trap '' TERM; echo $$ >> deaf.pids; sleep 30"
    workflow: w
    timeout: 25s
"""

GRACE = 1.0


def polls(project: Path, name: str) -> list[float]:
    p = project / f"polls-{name}.log"
    return [float(x) for x in p.read_text().split()] if p.exists() else []


def listing(project: Path) -> dict[str, dict]:
    out = run_trigctl("list", "--json", cwd=project)
    assert out.returncode == 0, out.stderr
    return {t["name"]: t for t in json.loads(out.stdout)}


def test_hostile_triggers_do_not_stall_the_loop_and_shutdown_still_completes(tmp_path):
    project = tmp_path
    (project / "triggers.yaml").write_text(HOSTILE_YAML)
    (project / "hostile.py").write_text(HOSTILE)
    proc = RunProc(project, "triggers.yaml", "--grace", f"{GRACE:g}s", "--log-format", "json")
    try:
        proc.wait_line('"event": "start"', timeout=20)
        # The error backoff of `raises` is the slowest thing to watch: 6 polls are 0.2+0.4+0.8+0.8+0.8 s apart.
        wait_for(lambda: len(polls(project, "raises")) >= 6, timeout=20, message="6 polls of the failing trigger")
        wait_for(lambda: (project / "deaf.pids").exists(), timeout=10, message="the deaf command running")
        healthy = {name: polls(project, name) for name in ("healthy", "ahealthy")}
        state = listing(project)
        history = json.loads(run_trigctl("history", "--json", "--limit", "1000", cwd=project).stdout)
        deaf_pgid = int((project / "deaf.pids").read_text().split()[0])
        assert group_running(deaf_pgid)
        sent = time.monotonic()
        proc.signal(15)
        code = proc.wait(timeout=GRACE + 10)
        took = time.monotonic() - sent
    finally:
        proc.cleanup()
    err = proc.stderr
    assert code == 0, err[-3000:]
    print(f"\nhostile: SIGTERM to exit took {took:.2f}s (grace {GRACE:g}s)")
    assert took < GRACE + 10
    assert '"event": "stopped"' in err and "Traceback" not in err

    # The healthy triggers kept their 100 ms grid while the others raised, hung, exited, leaked and printed.
    for name, times in healthy.items():
        span = times[-1] - times[0]
        gaps = [b - a for a, b in zip(times, times[1:])]
        assert span > 2.5, (name, span)
        assert len(times) >= 0.7 * (span / 0.1), (name, len(times), span)
        assert max(gaps) < 0.5, f"{name} waited {max(gaps):.2f}s between polls"
        assert state[name]["consecutive_errors"] == 0 and state[name]["last_result"] == "skipped", state[name]

    # The failing ones back off exponentially, capped by max_backoff (800ms): 200, 400, 800, 800 ms.
    for name in ("raises", "junk", "huge", "endless", "aexit", "sexit", "kbint"):
        assert state[name]["last_result"] == "error" and state[name]["consecutive_errors"] >= 4, state[name]
    times = polls(project, "raises")
    expected = [0.2, 0.4, 0.8, 0.8, 0.8]
    # Backoff counts from the due time, not from when a poll happened to start, so a poll that starts
    # late (a loaded machine) is followed by a shorter gap: check the grid, t_k - t_0 = sum of the
    # waits - (how late poll 0 was) + (how late poll k is), with room for either lateness.
    for k in range(1, 6):
        grid = sum(expected[:k])
        assert grid - 0.2 <= times[k] - times[0] <= grid + 0.3, (k, times[k] - times[0], times)
    errors = {h["trigger_name"]: h for h in history if h["kind"] == "error"}
    assert errors["raises"]["error"] == "RuntimeError: boom" and errors["raises"]["count"] >= 5
    assert "unsupported return value of type object" in errors["junk"]["error"]
    assert "too large" in errors["huge"]["error"]
    assert errors["endless"]["error"] == "TypeError: more than 100000 results from one poll"
    assert errors["aexit"]["error"] == "SystemExit: 3" and errors["sexit"]["error"] == "SystemExit: 4"
    assert errors["kbint"]["error"] == "KeyboardInterrupt"
    # A hung call is abandoned after its timeout, and that trigger is not polled again while it hangs.
    for name in ("hangs", "ahangs"):
        assert len(polls(project, name)) == 1, name
        assert errors[name]["error"] == "poll timed out after 0.5s"
        assert state[name]["consecutive_errors"] == 1
    # Thread leaks and stdout noise change nothing; the noise is not in history.
    assert state["leaky"]["consecutive_errors"] == 0 and len(polls(project, "leaky")) >= 10
    noisy = [h for h in history if h["trigger_name"] == "noisy"]
    assert noisy and all(h["context"] == {"n": 1} for h in noisy if h["kind"] in ("fire", "duplicate"))
    assert "NOISE" not in json.dumps(history) and "injected" not in json.dumps(history)
    assert set(proc.stdout.split()) <= {"NOISE", '{"event":', '"fired",', '"trigger":', '"noisy",', '"context":',
                                        '{"injected":', "true}}"}
    # The command that ignores SIGTERM does not outlive trigctl.
    wait_for(lambda: not group_running(deaf_pgid), timeout=10, message="the deaf command killed")

"""The live view of `trigctl run` (trigctl/observe/live.py): as a person sees it, in a real terminal
(tmux), and its model and layout driven by events with an injected clock."""

from __future__ import annotations

import io
import re
import sys
import textwrap
import time
import types
from pathlib import Path

import pytest
from realproc import RunProc
from rich.cells import cell_len
from terminal import SKIP_REASON, TMUX, Screen, colour_codes

from trigctl import events as ev
from trigctl.observe import live

needs_tmux = pytest.mark.skipif(TMUX is None, reason=SKIP_REASON)

NOW = 1_800_000_000.0


def trigctl_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "trigctl", "run", *args]


def project(tmp_path: Path, triggers: str, workflows: str = "", callables: str = "") -> Path:
    (tmp_path / "inbox").mkdir(exist_ok=True)
    if callables:
        (tmp_path / "livetriggers.py").write_text(textwrap.dedent(callables))
    text = textwrap.dedent("""\
        version: 1
        workflows:
          work:
            tasks:
              - name: step
                run: sleep 0.3
          quick:
            tasks:
              - name: step
                run: "true"
        """) + textwrap.indent(textwrap.dedent(workflows), "  ") + "triggers:\n" + textwrap.indent(
        textwrap.dedent(triggers), "  ")
    (tmp_path / "triggers.yaml").write_text(text)
    return tmp_path


DISABLED = '- {name: nightly, type: schedule, workflow: quick, cron: "0 3 * * *", enabled: false}\n'
FIRE_AND_DISABLED = "- {name: inbox, type: file, workflow: work, path: inbox, settle: 0s, interval: 1h}\n" + DISABLED
ERRORING_LAST = ("- {name: healthy, type: command, workflow: quick, run: exit 1, interval: 1h}\n" + DISABLED
                 + "- {name: service-down, type: command, workflow: quick, run: 'echo refused >&2; exit 3',"
                   " interval: 200ms, max_backoff: 2s}\n")


def view_lines(screen: str) -> list[str]:
    """The live view's lines: from its table header to the end of the screen."""
    lines = [ln.rstrip() for ln in screen.splitlines()]
    starts = [i for i, ln in enumerate(lines) if ln.startswith("TRIGGER ")]
    assert starts, "no live view on the screen:\n" + screen
    return [ln for ln in lines[starts[-1]:] if ln]


def table_rows(screen: str) -> list[str]:
    rows = []
    for ln in view_lines(screen)[1:]:
        if ln.startswith(("queue ", "stopping", "stopped", "+")) or re.match(r"^\+\d+ more", ln):
            break
        rows.append(ln)
    return rows


# --------------------------------------------------------------------------- a real terminal


@needs_tmux
def test_a_fire_and_its_run_with_log_lines_above_then_ctrl_c_exits_0(tmp_path):
    root = project(tmp_path, FIRE_AND_DISABLED)
    (root / "inbox" / "a.txt").write_text("a")
    with Screen(root, trigctl_argv("triggers.yaml"), width=80, height=24) as term:
        term.wait_text(r'^\d\d:\d\d:\d\d fired\s+inbox run 1 \{"path":')

        def finished(screen: str) -> bool:  # the event below, its log line above the view
            lines = screen.splitlines()
            headers = [i for i, ln in enumerate(lines) if ln.startswith("TRIGGER ")]
            return bool(headers and re.search(r"finished\s+inbox run 1 succeeded in \d+ms", screen)
                        and any("run_finished run_id=1 status=succeeded" in ln for ln in lines[:headers[-1]]))

        screen = term.wait_for(finished, what="the run finished with its duration, and its log line")
        rows = table_rows(screen)
        assert rows[0].split()[:2] == ["inbox", "idle"], rows
        assert re.search(r"\bfired \d+s ago|\bfired now", rows[0]), rows
        assert rows[1].split()[:2] == ["nightly", "disabled"], rows
        assert re.search(r"queue 0 · runs 0/8 · up \d+s · 2 triggers: 1 disabled", screen), screen
        # The view fits 80 columns (log lines above it wrap as the terminal wraps them).
        assert all(len(ln) <= 80 for ln in view_lines(screen)), view_lines(screen)
        term.send_keys("C-c")
        assert term.exit_code() == 0
        after = term.capture(history=True)
        assert "stopped" in after and "Traceback" not in after, after


@needs_tmux
def test_an_erroring_trigger_sorts_first_with_its_count_and_backoff(tmp_path):
    root = project(tmp_path, ERRORING_LAST)
    with Screen(root, trigctl_argv("triggers.yaml"), width=80, height=24) as term:
        def erroring_first(screen: str) -> bool:
            try:
                rows = table_rows(screen)
            except AssertionError:
                return False
            m = re.match(r"service-down\s+erroring ×(\d+)\s", rows[0]) if rows else None
            return bool(m and int(m.group(1)) >= 3 and "backoff" in rows[0])

        screen = term.wait_for(erroring_first, what="service-down first, erroring ×3 or more, backing off")
        rows = table_rows(screen)
        assert "error" in rows[0], rows
        assert [r.split()[0] for r in rows[1:]] == ["healthy", "nightly"], rows
        assert "nightly" in rows[2] and "disabled" in rows[2], rows
        assert re.search(r"3 triggers: 1 erroring, 1 disabled", screen), screen
        assert re.search(r"error\s+service-down ×\d+: command failed: exit code 3: refused", screen), screen
        term.send_keys("C-c")
        assert term.exit_code() == 0


@needs_tmux
def test_more_triggers_than_rows_fold_into_n_more(tmp_path):
    names = [f"t{i:02d}" for i in range(40)]
    triggers = "".join(f"- {{name: {n}, type: python, workflow: quick, callable: 'livetriggers:never', "
                       "interval: 1h}\n" for n in names)
    root = project(tmp_path, triggers, callables="def never():\n    return False\n")
    with Screen(root, trigctl_argv("triggers.yaml"), width=80, height=15) as term:
        m = term.wait_text(r"^\+(\d+) more$")
        screen = term.capture()
        rows = table_rows(screen)
        assert rows and len(rows) + int(m.group(1)) == 40, screen
        assert [r.split()[0] for r in rows] == names[:len(rows)]
        assert len(view_lines(screen)) < 15  # room is left above for log lines
        term.send_keys("C-c")
        assert term.exit_code() == 0


@needs_tmux
def test_no_color_gives_no_colour_escapes(tmp_path):
    root = project(tmp_path, ERRORING_LAST)

    def shown_erroring(screen: str) -> bool:
        return "erroring ×" in screen

    with Screen(root, trigctl_argv("triggers.yaml"), width=80, height=24) as term:
        term.wait_for(shown_erroring)
        coloured = term.capture(escapes=True)
        term.send_keys("C-c")
        assert term.exit_code() == 0
    assert colour_codes(coloured), "without NO_COLOR the view is in colour"
    with Screen(root, trigctl_argv("triggers.yaml"), width=80, height=24, env={"NO_COLOR": "1"}) as term:
        term.wait_for(shown_erroring)
        plain = term.capture(escapes=True, history=True)
        assert colour_codes(plain) == [], plain
        term.send_keys("C-c")
        assert term.exit_code() == 0


@needs_tmux
def test_a_resized_terminal_gets_a_view_that_fits(tmp_path):
    root = project(tmp_path, ERRORING_LAST)
    with Screen(root, trigctl_argv("triggers.yaml"), width=120, height=30) as term:
        term.wait_for(lambda s: "erroring ×" in s)
        assert max(len(ln) for ln in view_lines(term.capture())) > 80  # the wide layout uses the width
        term.resize(60, 20)

        def fits(screen: str) -> bool:
            try:
                lines = view_lines(screen)
            except AssertionError:
                return False
            return all(len(ln) <= 60 for ln in lines) and any(
                ln.startswith("queue ") for ln in lines)

        screen = term.wait_for(fits, what="a view that fits 60 columns")
        assert table_rows(screen)[0].startswith("service-down")
        term.send_keys("C-c")
        assert term.exit_code() == 0


HOSTILE = """\
import sys

def hostile():
    print("printed [bold]by[/bold] the trigger \\x1b[2J")
    return __import__("trigctl").Skip("[bold red]markup[/] \\x1b[2J\\x1b[31mred \\u202e" + "A" * 100_000)
"""


@needs_tmux
def test_hostile_reasons_and_prints_show_as_text(tmp_path):
    root = project(tmp_path, "- {name: hostile, type: python, workflow: quick, callable: 'livetriggers:hostile', "
                             "interval: 500ms}\n", callables=HOSTILE)
    with Screen(root, trigctl_argv("triggers.yaml"), width=120, height=24) as term:
        screen = term.wait_text(r"skipped .*\[bold red\]markup\[/\] \\x1b\[2J\\x1b\[31mred \\u202e")
        screen = term.wait_for(lambda s: "printed [bold]by[/bold] the trigger \\x1b[2J" in s,
                               what="the trigger's print, escaped, above the view")
        screen = term.capture()
        assert "TRIGGER " in screen  # not cleared by the \x1b[2J
        assert all(len(ln) <= 120 for ln in view_lines(screen))
        term.send_keys("C-c")
        assert term.exit_code() == 0


@needs_tmux
@pytest.mark.parametrize("opt_out", [["--no-live"], ["--log-format", "text"]])
def test_an_opt_out_on_a_terminal_gives_plain_lines(tmp_path, opt_out):
    root = project(tmp_path, FIRE_AND_DISABLED)
    (root / "inbox" / "a.txt").write_text("a")
    with Screen(root, trigctl_argv("triggers.yaml", *opt_out), width=80, height=24) as term:
        term.wait_text(r"run_finished run_id=1 status=succeeded")
        screen = term.capture()
        assert re.search(r"fired trigger=inbox run_id=1 context=", screen)
        assert "TRIGGER " not in screen and "recent events" not in screen
        term.send_keys("C-c")
        assert term.exit_code() == 0


@needs_tmux
def test_once_on_a_terminal_gives_plain_lines_and_its_exit_code(tmp_path):
    root = project(tmp_path, FIRE_AND_DISABLED)
    (root / "inbox" / "a.txt").write_text("a")
    with Screen(root, trigctl_argv("triggers.yaml", "--once"), width=80, height=24) as term:
        assert term.exit_code() == 0
        screen = term.capture(history=True)
        assert re.search(r"fired trigger=inbox run_id=1 context=", screen) and "run_finished run_id=1" in screen
        assert "TRIGGER " not in screen and "recent events" not in screen


def test_a_pipe_gets_plain_lines(tmp_path):
    root = project(tmp_path, FIRE_AND_DISABLED)
    (root / "inbox" / "a.txt").write_text("a")
    proc = RunProc(root, "triggers.yaml")
    try:
        proc.wait_line("run_finished run_id=1 status=succeeded")
        assert proc.stop() == 0
    finally:
        proc.cleanup()
    assert proc.stdout == ""
    assert re.search(r"^\S+ \S+ fired trigger=inbox run_id=1 context=", proc.stderr, re.M)
    assert "recent events" not in proc.stderr and "TRIGGER" not in proc.stderr


def test_wanted_only_on_a_terminal_and_not_with_once_or_an_opt_out(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("TERM", raising=False)
    assert live.wanted(Tty())
    assert not live.wanted(io.StringIO())
    assert not live.wanted(Tty(), once=True)
    assert not live.wanted(Tty(), opted_out=True)
    monkeypatch.setenv("TERM", "dumb")
    assert not live.wanted(Tty())


# --------------------------------------------------------------------- the model and the layout


class Clock:
    def __init__(self) -> None:
        self.now = NOW
        self.mono = 100.0

    def __call__(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.mono

    def advance(self, s: float) -> None:
        self.now += s
        self.mono += s


def state(name: str, **kw) -> ev.TriggerState:
    doc = {"type": "command", "workflow": "wf", "enabled": True, "next_poll_at": NOW + 5, "last_poll_at": None,
           "last_result": None, "last_reason": None, "consecutive_errors": 0}
    doc.update(kw)
    return ev.TriggerState(name, **doc)


def loaded_model(states, runs=(), max_runs=8) -> tuple[live.LiveModel, Clock, ev.EventBus]:
    clock = Clock()
    model = live.LiveModel(clock=clock, monotonic=clock.monotonic)
    bus = ev.EventBus()
    model.attach(bus)
    bus.publish(ev.TriggersLoaded(tuple(states), max_runs, tuple(runs)))
    bus.publish(ev.LoopStarted(len(states), len(states), "state.db", 1))
    return model, clock, bus


def text_of(model: live.LiveModel, width: int = 80, height: int = 24) -> str:
    from rich.console import Console

    out = io.StringIO()
    console = Console(file=out, width=width, height=height, color_system=None, markup=False, emoji=False,
                      highlight=False)
    rows, shown = live.budget(height, min(model.event_count(), live.MAX_EVENTS_SHOWN))
    console.print(live.render(model.snapshot(rows, shown), width))
    return out.getvalue()


def fail(bus: ev.EventBus, name: str, n: int, message: str = "boom") -> None:
    bus.publish(ev.PollFailed(name, message, n))
    bus.publish(ev.PollCompleted(name, NOW, NOW, 0.01, "error", "", message, NOW + 60))


def test_erroring_triggers_come_first_oldest_streak_first_and_recovery_restores_the_order():
    model, clock, bus = loaded_model([state(n) for n in ("a", "b", "c", "d")])
    fail(bus, "c", 1)
    fail(bus, "b", 1)
    fail(bus, "c", 2)
    snap = model.snapshot(10, 0)
    assert [r.name for r in snap.rows] == ["c", "b", "a", "d"]
    assert (snap.rows[0].errors, snap.erroring) == (2, 2)
    bus.publish(ev.PollCompleted("c", NOW, NOW, 0.01, "skipped", "nothing", None, NOW + 5))
    assert [r.name for r in model.snapshot(10, 0).rows] == ["b", "a", "c", "d"]
    out = text_of(model)
    assert re.search(r"^b\s+erroring ×1\s+error now: boom\s+backoff 1m\s", out, re.M), out
    assert re.search(r"^c\s+idle\s+skipped now: nothing\s+in 5s\s", out, re.M), out
    bus.publish(ev.TriggerDisabled("b"))
    snap = model.snapshot(10, 0)
    assert [r.name for r in snap.rows] == ["a", "b", "c", "d"] and (snap.erroring, snap.disabled) == (0, 1)
    assert re.search(r"^b\s+disabled\s", text_of(model), re.M)


def test_too_many_triggers_fold_into_more_and_a_snapshot_walks_only_the_rows_it_shows():
    states = [state(f"t{i:05d}") for i in range(10_000)]
    model, clock, bus = loaded_model(states)
    for i in (9_999, 5_000, 7):
        fail(bus, f"t{i:05d}", 1)
    calls = []
    original = live._Trigger.view

    def counted(self):
        calls.append(self.name)
        return original(self)

    live._Trigger.view = counted
    try:
        snap = model.snapshot(8, 0)
    finally:
        live._Trigger.view = original
    assert [r.name for r in snap.rows] == ["t09999", "t05000", "t00007", "t00000", "t00001", "t00002", "t00003"]
    assert (snap.more, snap.more_erroring) == (10_000 - 7, 0)
    assert len(calls) == 7
    out = text_of(model, height=15)
    assert re.search(r"^\+\d+ more$", out, re.M), out
    for i in range(3, 30):
        fail(bus, f"t{i + 100:05d}", 1)
    snap = model.snapshot(8, 0)
    assert snap.more_erroring == 30 - 7 and all(r.errors for r in snap.rows)
    out = text_of(model, height=14)
    m = re.search(r"^\+(\d+) more \((\d+) erroring\)$", out, re.M)
    shown = len(re.findall(r"erroring ×1", out))
    assert m and shown >= 3 and (int(m.group(1)), int(m.group(2))) == (10_000 - shown, 30 - shown), out


HOSTILE_TEXT = "[bold red]markup[/] \x1b[2J\x1b]0;title\x07 \r\u202e\udcff\x9b tail 名前😀" * 30 + "A" * 1_000_000


@pytest.mark.parametrize("width", [40, 60, 80, 120, 200])
def test_every_line_fits_the_width_and_hostile_text_is_text(width):
    states = [state("a" * 60, last_result="skipped", last_reason=HOSTILE_TEXT[:4000]),
              state("b", enabled=False), state("c")]
    model, clock, bus = loaded_model(states, max_runs=12345)
    fail(bus, "c", 123456, HOSTILE_TEXT[:4000])
    bus.publish(ev.FireRecorded("b", 1, {"k": HOSTILE_TEXT, "n": [1, 2]}))
    bus.publish(ev.RunFinished(1, "b", "wf", "failed", 12.5, HOSTILE_TEXT[:4000]))
    bus.publish(ev.DuplicateSuppressed("b", None, HOSTILE_TEXT[:4000]))
    bus.publish(ev.ReloadRefused(HOSTILE_TEXT[:4000]))
    out = text_of(model, width=width, height=30)
    lines = out.splitlines()
    assert all(cell_len(ln) <= width for ln in lines), [ln for ln in lines if cell_len(ln) > width]
    assert not re.search("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202e\ud800-\udfff]", out)
    assert "[bold red]markup" in out
    if width >= 120:  # newlines and CRs are spaces in a one-line cell; the rest shows escaped
        assert "[bold red]markup[/] \\x1b[2J\\x1b]0;title\\x07 \\u202e\\udcff\\x9b tail" in out, out
    assert re.search(r"^c\s+erroring ×123456", out, re.M) or width < 60


def test_runs_queue_and_duplicates():
    model, clock, bus = loaded_model([state("a"), state("b")], runs=[(1, "a", "queued"), (2, "b", "running")],
                                     max_runs=2)
    snap = model.snapshot(5, 5)
    assert (snap.queued, snap.running, snap.max_runs) == (1, 1, 2)
    assert [r.active for r in snap.rows] == [1, 1]
    bus.publish(ev.RunStarted(1, "a", "wf"))
    bus.publish(ev.RunQueued(3, "a", "wf", "fire"))
    bus.publish(ev.RunFinished(2, "b", "wf", "succeeded", 1.25, None))
    snap = model.snapshot(5, 5)
    assert (snap.queued, snap.running) == (1, 1) and [r.active for r in snap.rows] == [2, 0]
    for _ in range(5):
        bus.publish(ev.DuplicateSuppressed("a", 1, "run 1 with this key is still active"))
        clock.advance(1)
    bus.publish(ev.RunFinished(99, "gone", "wf", "cancelled", None, "cancelled at shutdown"))  # unknown: no harm
    out = text_of(model)
    assert re.search(r"finished\s+b run 2 succeeded in 1\.2s", out), out
    assert re.search(r"duplicate\s+a blocked by run 1 ×5$", out, re.M), out
    assert len(re.findall("duplicate", out)) == 1
    assert re.search(r"queue 1 · runs 1/2 · up 5s · 2 triggers$", out, re.M), out


def test_a_reload_keeps_the_session_counters_and_a_clock_step_moves_interval_due_times():
    model, clock, bus = loaded_model([state("a"), state("s", type="schedule", next_poll_at=NOW + 100)])
    bus.publish(ev.FireRecorded("a", 1, {}))
    fail(bus, "a", 1)
    bus.publish(ev.TriggersLoaded((state("a", consecutive_errors=1), state("new")), 8, None))
    snap = model.snapshot(5, 0)
    assert [(r.name, r.fires, r.error_total, r.errors) for r in snap.rows] == [("a", 1, 1, 1), ("new", 0, 0, 0)]
    model2, clock2, bus2 = loaded_model([state("a"), state("s", type="schedule", next_poll_at=NOW + 100)])
    bus2.publish(ev.ClockStepped(-3600.0))
    assert [r.next_at for r in model2.snapshot(5, 0).rows] == [NOW + 5 - 3600, NOW + 100]


def test_log_lines_wait_for_the_redraw_and_a_flood_is_cut_with_a_note():
    out, err = io.StringIO(), io.StringIO()
    view = live.LiveView(stdout=out, stderr=err, logs_above=True, width=80, height=24)
    view.log_stream.write("before the view: at once\n")
    assert err.getvalue() == "before the view: at once\n"
    view._active = True  # as the view's thread sets it once it draws
    for i in range(live.MAX_PENDING_LINES + 500):
        view.log_stream.write(f"line {i}\n")
    assert err.getvalue() == "before the view: at once\n"
    view._print_pending()
    shown = out.getvalue()
    assert "(500 log lines not shown" in shown
    assert not re.search(r"^line 499$", shown, re.M) and re.search(r"^line 500$", shown, re.M)
    assert re.search(rf"^line {live.MAX_PENDING_LINES + 499}$", shown, re.M)


def test_the_view_draws_a_final_frame_and_restores_stdout(tmp_path):
    out = io.StringIO()
    saved = sys.stdout
    view = live.LiveView(stdout=out, stderr=io.StringIO(), logs_above=True, width=80, height=24,
                         refresh_per_second=4)
    bus = ev.EventBus()
    view.attach(types.SimpleNamespace(bus=bus))  # as api.run calls its observers with the runner
    with view:
        assert sys.stdout is not saved
        bus.publish(ev.TriggersLoaded((state("a"),), 8, ()))
        bus.publish(ev.LoopStarted(1, 1, "state.db", 1))
        deadline = time.monotonic() + 20
        while view.refreshes < 1:  # the view's thread draws its first frame
            assert time.monotonic() < deadline and view.error is None
            time.sleep(0.01)
        print("a print from trigger code \x1b[31m")
        bus.publish(ev.LoopStopped())
    assert sys.stdout is saved and view.error is None
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    assert "a print from trigger code \\x1b[31m" in text
    assert "stopped · queue 0 · runs 0/8" in text


def test_states_polling_running_and_the_shutdown_footer():
    model, clock, bus = loaded_model([state("due", next_poll_at=NOW), state("busy"), state("late", next_poll_at=NOW)])
    bus.publish(ev.RunQueued(7, "busy", "wf", "fire"))
    clock.advance(0.5)
    bus.publish(ev.PollCompleted("late", NOW, NOW, 0.01, "skipped", "", None, NOW - 2.5))
    out = text_of(model)
    assert re.search(r"^due\s+polling\s+-\s+now\s", out, re.M), out
    assert re.search(r"^busy\s+running\s+-\s+in 5s\s+1\s+0\s+0$", out, re.M), out
    assert re.search(r"^late\s+polling 3s\s+skipped now\s+now\s", out, re.M), out
    bus.publish(ev.LoopStopping(1, 30.0))
    out = text_of(model)
    assert re.search(r"^stopping \(grace 30s\) · queue 1 · runs 0/8", out, re.M), out
    assert re.search(r"^due\s+idle\s+-\s+-\s", out, re.M), out  # no countdowns once polling stopped


def test_a_terminal_that_does_not_read_never_stalls_the_loop():
    """The view's thread blocks in write() (Ctrl-S, a stuck terminal); events and log lines from the
    loop's thread still return at once, and the log lines are bounded while they wait."""
    import threading

    release = threading.Event()
    writing = threading.Event()

    class StuckTerminal(io.StringIO):
        def isatty(self) -> bool:
            return True

        def write(self, text: str) -> int:
            writing.set()
            release.wait(60)
            returned.set()
            return len(text)

    returned = threading.Event()
    view = live.LiveView(stdout=StuckTerminal(), stderr=io.StringIO(), logs_above=True, width=80, height=24)
    bus = ev.EventBus()
    view.attach(types.SimpleNamespace(bus=bus))  # as api.run calls its observers with the runner
    done = threading.Event()
    waiting: list[int] = []

    def loop() -> None:
        bus.publish(ev.TriggersLoaded(tuple(state(f"t{i}") for i in range(100)), 8, ()))
        bus.publish(ev.LoopStarted(100, 100, "state.db", 1))
        assert writing.wait(20), "the view never drew"
        for i in range(10_000):
            bus.publish(ev.PollCompleted(f"t{i % 100}", NOW, NOW, 0.001, "skipped", "x", None, NOW + 5))
            if i % 2 == 0:
                view.log_stream.write(f"line {i}\n")
        waiting.append(view._pending_lines)
        done.set()

    with view:
        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        finished = done.wait(60)
        stuck = writing.is_set() and not returned.is_set()  # the loop finished while the write still hung
        release.set()
    assert finished and stuck, "the loop's thread waited for the terminal"
    assert 0 < waiting[0] <= live.MAX_PENDING_LINES
    assert view._pending_lines == 0 and view.model.version >= 10_002


def test_a_fire_row_names_its_run_and_a_duplicate_row_what_held_it_back():
    model, clock, bus = loaded_model([state("f"), state("d")])
    bus.publish(ev.FireRecorded("f", 12, {"k": 1}))
    bus.publish(ev.PollCompleted("f", NOW, NOW, 0.01, "fired", "", None, NOW + 5))
    bus.publish(ev.DuplicateSuppressed("d", 3, "run 3 with this key is still active"))
    bus.publish(ev.PollCompleted("d", NOW, NOW, 0.01, "duplicate", "", None, NOW + 5))
    out = text_of(model, width=120)
    assert re.search(r"^f\s+idle\s+fired now: run 12\s", out, re.M), out
    assert re.search(r"^d\s+idle\s+duplicate now: run 3 with this key is still active\s", out, re.M), out
    bus.publish(ev.PollCompleted("f", NOW, NOW, 0.01, "skipped", "", None, NOW + 5))
    assert re.search(r"^f\s+idle\s+skipped now\s", text_of(model, width=120), re.M)

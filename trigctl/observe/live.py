"""The live view of `trigctl run` on a terminal: a table of triggers, a footer, the last events.

:class:`LiveModel` is fed by the event bus (:mod:`trigctl.events`) on the publisher's thread: an
event updates a few fields under a lock, nothing more (no formatting, no I/O), so the loop never
waits for the terminal. :class:`LiveView` owns a thread that, ``REFRESH_PER_SECOND`` times a
second, takes a :meth:`LiveModel.snapshot` of the rows that fit the terminal, builds fresh rich
renderables from it (:func:`render`) and redraws them with ``rich.live.Live``; log lines written to
:attr:`LiveView.log_stream` are printed above the table by that same thread. A refresh costs in
proportion to the rows shown, not to the number of triggers: erroring triggers are kept in the
order their streaks began, the others in the YAML's order, and a snapshot walks only as far as
the rows it needs.

What is shown comes from triggers, tasks and peers (contexts, reasons, errors): it passes through
:func:`trigctl.render.visible` into rich ``Text``, never markup, and long values are cut short
before anything walks them. rich is imported only when a view is made (`trigctl run` on a pipe
does not load it).
"""

from __future__ import annotations

import io
import itertools
import json
import math
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple, TextIO

from trigctl import events as ev
from trigctl.durations import format_duration
from trigctl.render import visible

REFRESH_PER_SECOND = 4  # redraws a second: a bounded rate, whatever happens
RECENT_EVENTS = 50  # events kept for the bottom part (a few are shown)
MAX_EVENTS_SHOWN = 6
MAX_DETAIL = 500  # characters of a reason or error kept per trigger (the row shows one line of it)
MAX_PENDING_LINES = 2000  # log lines waiting for the next redraw; older ones are dropped (and counted)
MAX_LOG_ROOM = 6  # lines above the view kept free for log lines, on a tall terminal

# The events the model listens to. PollCompleted is one per poll: subscribed only while a view is on.
MODEL_EVENTS: tuple[type[ev.Event], ...] = (
    ev.TriggersLoaded, ev.LoopStarted, ev.PollCompleted, ev.PollFailed, ev.FireRecorded,
    ev.DuplicateSuppressed, ev.RunQueued, ev.RunStarted, ev.RunFinished, ev.TriggerEnabled,
    ev.TriggerDisabled, ev.ConfigReloaded, ev.ReloadRefused, ev.RunInterrupted, ev.RunCancelling,
    ev.ClockStepped, ev.LoopStopping, ev.LoopStopped,
)


def wanted(stdout: TextIO | None = None, *, once: bool = False, opted_out: bool = False) -> bool:
    """Whether `run` shows the live view: stdout is a terminal (not a pipe, not systemd's journal, not
    TERM=dumb), and neither ``--once`` nor an opt-out (``--no-live``, an explicit ``--log-format``)."""
    if once or opted_out:
        return False
    if os.environ.get("TERM") == "dumb":
        return False
    return _is_terminal(stdout if stdout is not None else sys.stdout)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


# ------------------------------------------------------------------------------------------ model


class _Trigger:
    """One trigger as the view knows it (mutated on the loop's thread, under the model's lock)."""

    __slots__ = ("name", "type", "enabled", "next_at", "last_result", "last_at", "detail", "errors", "active",
                 "fires", "error_total")

    def __init__(self, state: ev.TriggerState):
        self.name = state.name
        self.type = state.type
        self.enabled = state.enabled
        self.next_at = state.next_poll_at
        self.last_result = state.last_result
        self.last_at = state.last_poll_at
        self.detail = _cut(state.last_reason)
        self.errors = state.consecutive_errors
        self.active = 0
        self.fires = 0  # since this `run` started
        self.error_total = 0

    def view(self) -> Row:
        return Row(self.name, self.enabled, self.next_at, self.last_result, self.last_at, self.detail, self.errors,
                   self.active, self.fires, self.error_total)


@dataclass(frozen=True, slots=True)
class Row:
    """A copy of one trigger's fields, taken under the lock: what one table row shows."""

    name: str
    enabled: bool
    next_at: float | None
    last_result: str | None
    last_at: float | None
    detail: str | None
    errors: int
    active: int
    fires: int
    error_total: int


class Entry:
    """One line of the recent events. ``detail`` is raw (a context, a reason): it is formatted when
    shown, on the view's thread, once (a fire's megabyte context costs the loop nothing)."""

    __slots__ = ("at", "kind", "trigger", "run_id", "detail", "count", "shown")

    def __init__(self, at: float, kind: str, trigger: str, run_id: int | None = None, detail: Any = None,
                 count: int = 1):
        self.at = at
        self.kind = kind
        self.trigger = trigger
        self.run_id = run_id
        self.detail = detail
        self.count = count
        self.shown: tuple[int, str] | None = None  # (count, text) cache


@dataclass
class Snapshot:
    """What one redraw shows, copied out of the model under its lock."""

    now: float
    rows: list[Row]
    more: int  # triggers not shown
    more_erroring: int  # of them, erroring
    total: int
    erroring: int
    disabled: int
    queued: int
    running: int
    max_runs: int
    uptime: float | None
    stopping: tuple[int, float] | None  # (active runs, grace) once shutdown began
    stopped: bool
    events: list[Entry] = field(default_factory=list)


def _cut(text: str | None, limit: int = MAX_DETAIL) -> str | None:
    if not text:
        return None
    return text if len(text) <= limit else text[:limit]


class LiveModel:
    """The state the live view shows, kept from events. Call it with an event (it is a bus
    subscriber: :meth:`attach`); :meth:`snapshot` copies out what fits. Thread-safe: events arrive
    on the loop's thread, snapshots are taken on the view's."""

    def __init__(self, clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._triggers: dict[str, _Trigger] = {}  # in the YAML's order
        self._erroring: dict[str, None] = {}  # enabled triggers in an error streak, oldest streak first
        self._disabled = 0
        self._runs: dict[int, list[str]] = {}  # run id -> [trigger, "queued" | "running"]
        self._queued = 0
        self._max_runs = 0
        self._events: deque[Entry] = deque()
        self._duplicates: dict[tuple[str, int | None, str], Entry] = {}  # coalesced while in _events
        self._started_at: float | None = None  # monotonic
        self._stopping: tuple[int, float] | None = None
        self._stopped = False
        self.version = 0  # counts the events taken in: a view redraws only when it (or the clock's second) moved
        self._handlers: dict[type, Callable[[Any], None]] = {
            ev.TriggersLoaded: self._loaded, ev.LoopStarted: self._loop_started, ev.PollCompleted: self._completed,
            ev.PollFailed: self._failed, ev.FireRecorded: self._fired, ev.DuplicateSuppressed: self._duplicate,
            ev.RunQueued: self._run_queued, ev.RunStarted: self._run_started, ev.RunFinished: self._run_finished,
            ev.TriggerEnabled: self._enabled, ev.TriggerDisabled: self._disabled_event,
            ev.ConfigReloaded: self._note, ev.ReloadRefused: self._note, ev.RunInterrupted: self._note,
            ev.RunCancelling: self._note, ev.ClockStepped: self._clock_stepped, ev.LoopStopping: self._loop_stopping,
            ev.LoopStopped: self._loop_stopped,
        }

    @property
    def started(self) -> bool:
        return self._started_at is not None

    def attach(self, bus: ev.EventBus) -> Callable[[], None]:
        return bus.subscribe(self, MODEL_EVENTS)

    def __call__(self, event: ev.Event) -> None:
        handler = self._handlers.get(type(event))
        if handler is not None:
            with self._lock:
                handler(event)
                self.version += 1

    # ------------------------------------------------------------------ handlers (lock held)

    def _loaded(self, e: ev.TriggersLoaded) -> None:
        old = self._triggers
        triggers: dict[str, _Trigger] = {}
        for state in e.triggers:
            t = _Trigger(state)
            prev = old.get(state.name)
            if prev is not None:  # a reload: the session's counters go on
                t.fires, t.error_total, t.active = prev.fires, prev.error_total, prev.active
            triggers[state.name] = t
        self._triggers = triggers
        erroring = {n: None for n in self._erroring if n in triggers and triggers[n].errors and triggers[n].enabled}
        for t in triggers.values():
            if t.errors and t.enabled:
                erroring.setdefault(t.name)
        self._erroring = erroring
        self._disabled = sum(1 for t in triggers.values() if not t.enabled)
        self._max_runs = e.max_concurrent_runs
        if e.active_runs is not None:
            self._runs = {run_id: [trigger, status] for run_id, trigger, status in e.active_runs}
            self._queued = sum(1 for _, status in self._runs.values() if status == "queued")
            for t in triggers.values():
                t.active = 0
            for trigger, _ in self._runs.values():
                known = triggers.get(trigger)
                if known is not None:
                    known.active += 1

    def _loop_started(self, e: ev.LoopStarted) -> None:
        self._started_at = self._monotonic()

    def _completed(self, e: ev.PollCompleted) -> None:
        t = self._triggers.get(e.trigger)
        if t is None:
            return
        t.last_result = e.outcome
        t.last_at = e.started_at + e.duration
        if e.outcome == "error" or e.outcome == "skipped" or e.reason:
            t.detail = _cut(e.error if e.outcome == "error" else e.reason)
        # else a fire's or duplicate's detail, set by its event just before: the run, or what held it back
        if e.next_poll_at is not None:
            t.next_at = e.next_poll_at
        if e.outcome != "error":
            t.errors = 0
            self._erroring.pop(t.name, None)

    def _failed(self, e: ev.PollFailed) -> None:
        t = self._triggers.get(e.trigger)
        if t is not None:
            t.errors = e.consecutive_errors
            t.error_total += 1
            if t.enabled:
                self._erroring.setdefault(t.name)
        self._add(Entry(self._clock(), "error", e.trigger, detail=_cut(e.error), count=e.consecutive_errors))

    def _fired(self, e: ev.FireRecorded) -> None:
        t = self._triggers.get(e.trigger)
        if t is not None:
            t.fires += 1
            t.detail = f"run {e.run_id}" if e.run_id is not None else None
        self._add(Entry(self._clock(), "fired", e.trigger, e.run_id, e.context))

    def _duplicate(self, e: ev.DuplicateSuppressed) -> None:
        t = self._triggers.get(e.trigger)
        if t is not None:
            t.detail = _cut(e.reason)
        # A key still held is offered again on every poll: one line per blocking run, with a count.
        key = (e.trigger, e.blocked_by, e.reason)
        entry = self._duplicates.get(key)
        if entry is not None:
            entry.count += 1
            entry.at = self._clock()
            self._events.remove(entry)
            self._events.append(entry)
            return
        entry = Entry(self._clock(), "duplicate", e.trigger, e.blocked_by, _cut(e.reason))
        self._duplicates[key] = entry
        self._add(entry)

    def _run_queued(self, e: ev.RunQueued) -> None:
        if e.run_id in self._runs:
            return
        self._runs[e.run_id] = [e.trigger, "queued"]
        self._queued += 1
        t = self._triggers.get(e.trigger)
        if t is not None:
            t.active += 1

    def _run_started(self, e: ev.RunStarted) -> None:
        run = self._runs.get(e.run_id)
        if run is None:  # queued before this process saw it
            self._runs[e.run_id] = [e.trigger, "running"]
            t = self._triggers.get(e.trigger)
            if t is not None:
                t.active += 1
        elif run[1] == "queued":
            run[1] = "running"
            self._queued -= 1

    def _run_finished(self, e: ev.RunFinished) -> None:
        run = self._runs.pop(e.run_id, None)
        if run is not None:
            if run[1] == "queued":
                self._queued -= 1
            t = self._triggers.get(run[0])
            if t is not None and t.active > 0:
                t.active -= 1
        self._add(Entry(self._clock(), "finished", e.trigger, e.run_id, (e.status, e.duration, _cut(e.error))))

    def _enabled(self, e: ev.TriggerEnabled) -> None:
        t = self._triggers.get(e.trigger)
        if t is not None and not t.enabled:
            t.enabled = True
            self._disabled -= 1
            t.next_at = e.next_poll_at
            if t.errors:
                self._erroring.setdefault(t.name)
        self._add(Entry(self._clock(), "enabled", e.trigger))

    def _disabled_event(self, e: ev.TriggerDisabled) -> None:
        t = self._triggers.get(e.trigger)
        if t is not None and t.enabled:
            t.enabled = False
            self._disabled += 1
            self._erroring.pop(t.name, None)
        self._add(Entry(self._clock(), "disabled", e.trigger))

    def _note(self, e: ev.Event) -> None:
        now = self._clock()
        if isinstance(e, ev.ConfigReloaded):
            self._add(Entry(now, "reloaded", "", detail=", ".join(e.changes) or "no changes"))
        elif isinstance(e, ev.ReloadRefused):
            self._add(Entry(now, "refused", "", detail=_cut(e.error)))
        elif isinstance(e, ev.RunInterrupted):
            self._add(Entry(now, "interrupted", e.trigger, e.run_id, _cut(e.action)))
        elif isinstance(e, ev.RunCancelling):
            self._add(Entry(now, "cancelling", "", e.run_id))

    def _clock_stepped(self, e: ev.ClockStepped) -> None:
        # Interval due times move with a step (the scheduler's cadence is monotonic); schedules do not.
        for t in self._triggers.values():
            if t.next_at is not None and t.type != "schedule":
                t.next_at += e.seconds
        self._add(Entry(self._clock(), "clock", "", detail=f"the wall clock moved by {e.seconds:+.1f}s"))

    def _loop_stopping(self, e: ev.LoopStopping) -> None:
        self._stopping = (e.active_runs, e.grace)

    def _loop_stopped(self, e: ev.LoopStopped) -> None:
        self._stopped = True

    def _add(self, entry: Entry) -> None:
        events = self._events
        if len(events) >= RECENT_EVENTS:
            old = events.popleft()
            if old.kind == "duplicate":
                for key, value in list(self._duplicates.items()):
                    if value is old:
                        del self._duplicates[key]
                        break
        events.append(entry)

    # ------------------------------------------------------------------------------ snapshot

    def snapshot(self, rows: int, events: int) -> Snapshot:
        """Up to ``rows`` rows (erroring triggers first, oldest streak first; then the YAML's order),
        the last ``events`` events, and the footer's numbers. When the triggers do not fit, the last
        row gives way to the "+N more" line. Walks at most about 2 x ``rows`` triggers."""
        rows = max(rows, 1)
        with self._lock:
            total = len(self._triggers)
            fit = rows if total <= rows else rows - 1
            shown: list[Row] = []
            erroring = self._erroring
            for name in itertools.islice(erroring, fit):
                shown.append(self._triggers[name].view())
            shown_erroring = len(shown)
            if len(shown) < fit:  # every erroring trigger is shown: skipping them walks < fit rows
                for t in self._triggers.values():
                    if t.name in erroring:
                        continue
                    shown.append(t.view())
                    if len(shown) >= fit:
                        break
            running = len(self._runs) - self._queued
            recent = list(itertools.islice(reversed(self._events), events))[::-1] if events > 0 else []
            return Snapshot(
                now=self._clock(), rows=shown, more=total - len(shown), more_erroring=len(erroring) - shown_erroring,
                total=total, erroring=len(erroring), disabled=self._disabled, queued=self._queued, running=running,
                max_runs=self._max_runs,
                uptime=None if self._started_at is None else self._monotonic() - self._started_at,
                stopping=self._stopping, stopped=self._stopped, events=recent,
            )

    def event_count(self) -> int:
        return len(self._events)


# ------------------------------------------------------------------------------------- rendering


def budget(height: int, events: int) -> tuple[int, int]:
    """(table rows, event lines) for a terminal ``height`` lines high with ``events`` events to show:
    the view leaves a few lines above it for log lines, and the rest of it is a header, the rows
    (the last one may be "+N more"), the footer, a rule and the events."""
    log_room = min(MAX_LOG_ROOM, max(1, height // 4))
    shown = min(events, max(1, min(MAX_EVENTS_SHOWN, (height - 8) // 3)))
    rows = height - log_room - 3 - max(shown, 1)
    return max(rows, 2), shown


def _secs(seconds: float) -> str:
    """A whole number of seconds, shortly: 0s, 4s, 1m20s, 2h5m."""
    if not math.isfinite(seconds) or abs(seconds) > 1e10:
        return "?"
    s = max(0, int(seconds))
    return format_duration(s) if s >= 1 else "0s"


def _ago(now: float, at: float | None) -> str:
    if at is None:
        return ""
    delta = now - at
    return "now" if delta < 1 else _secs(delta) + " ago"


def _one_line(text: str, limit: int) -> str:
    """``text`` as one safe line of at most ``limit`` characters (an ellipsis where it was cut)."""
    text = " ".join(text[: limit * 4 + 16].split())  # newlines and tabs as spaces, before escaping
    return _fit(visible(text), limit)


def _width(text: str) -> int:
    """Terminal cells ``text`` takes (a CJK character or an emoji takes two)."""
    if text.isascii():
        return len(text)
    from rich.cells import cell_len

    return cell_len(text)


def _fit(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` terminal cells, with an ellipsis where it was cut."""
    if limit <= 0:
        return ""
    if _width(text) <= limit:
        return text
    if text.isascii():
        return text[: limit - 1] + "…"
    from rich.cells import set_cell_size

    return set_cell_size(text, limit - 1).rstrip() + "…"


def _cell(line: Any, text: str, width: int, style: str = "", right: bool = False, last: bool = False) -> None:
    """Append one cell of ``width`` cells to ``line`` (and the space after it, unless ``last``)."""
    text = _fit(text, width)
    pad = " " * (width - _width(text))
    if right:
        line.append(pad)
        line.append(text, style)
    else:
        line.append(text, style)
        if not last:
            line.append(pad)
    if not last:
        line.append(" ")


_RESULT_STYLE = {"fired": "green", "error": "red", "duplicate": "yellow", "skipped": ""}
_STATE_STYLE = {"erroring": "bold red", "polling": "cyan", "running": "green", "disabled": "dim", "idle": ""}
_KIND_STYLE = {"fired": "green", "error": "red", "duplicate": "yellow", "finished": "", "disabled": "dim",
               "enabled": "", "refused": "red", "interrupted": "yellow"}
_STATUS_STYLE = {"succeeded": "green", "failed": "red", "cancelled": "yellow", "interrupted": "yellow"}


def _state(row: Row, now: float, stopping: bool) -> tuple[str, str]:
    if not row.enabled:
        return "disabled", _STATE_STYLE["disabled"]
    if row.errors:
        return f"erroring ×{row.errors}", _STATE_STYLE["erroring"]
    if not stopping and row.next_at is not None and row.next_at <= now:
        late = now - row.next_at
        return ("polling" if late < 1 else f"polling {_secs(late)}"), _STATE_STYLE["polling"]
    if row.active:
        return "running", _STATE_STYLE["running"]
    return "idle", _STATE_STYLE["idle"]


def _next(row: Row, now: float, stopping: bool) -> tuple[str, str]:
    if not row.enabled or stopping or row.next_at is None:
        return "-", "dim"
    left = row.next_at - now
    if left <= 0:
        return "now", "cyan"
    text = _secs(math.ceil(left))
    return (f"backoff {text}", "yellow") if row.errors else (f"in {text}", "")


def _last(row: Row, now: float) -> tuple[str, str, str]:
    """(result and when, its style, the reason or error)."""
    if row.last_result is None:
        return "-", "dim", ""
    head = f"{row.last_result} {_ago(now, row.last_at)}".rstrip()
    return head, _RESULT_STYLE.get(row.last_result, ""), row.detail or ""


class _Cells(NamedTuple):
    name: str
    state: tuple[str, str]  # text, style
    last: tuple[str, str, str]  # result and when, style, reason
    next: tuple[str, str]
    counts: tuple[str, str, str]  # runs, fires, errors


_HEADERS = ("TRIGGER", "STATE", "LAST", "NEXT", "RUNS", "FIRES", "ERRS")
MIN_LAST = 12  # the LAST column keeps at least this many characters; names are cut before it is


def render(snap: Snapshot, width: int) -> Any:
    """The view for a terminal ``width`` columns wide, as rich renderables (no line is wider)."""
    from rich.console import Group
    from rich.text import Text

    width = max(width, 20)
    now, stopping = snap.now, snap.stopping is not None
    cells = [_Cells(visible(row.name), _state(row, now, stopping), _last(row, now), _next(row, now, stopping),
                    (str(row.active), str(row.fires), str(row.error_total)))
             for row in snap.rows]

    # Column widths from what is shown (bounded: the values are short, except the name and LAST).
    def need(values: Iterable[str], header: str, cap: int) -> int:
        return min(cap, max([_width(header), *(_width(v) for v in values)]))

    state_w = need((c.state[0] for c in cells), "STATE", 16)
    next_w = need((c.next[0] for c in cells), "NEXT", 13)
    counts = [need((c.counts[i] for c in cells), _HEADERS[4 + i], 7) for i in range(3)]
    name_need = need((c.name for c in cells), "TRIGGER", 64)
    fixed = state_w + next_w + sum(counts)
    columns = 7
    if width - fixed - (columns - 1) < min(name_need, 16) + 2 * MIN_LAST:  # narrow: the counters go first
        counts, columns = [], 4
        fixed = state_w + next_w
    room = width - fixed - (columns - 1)  # for the name and LAST
    name_w = max(min(name_need, max(16, room * 2 // 5), room - MIN_LAST), 4)
    last_w = max(room - name_w, 4)

    widths = [name_w, state_w, last_w, next_w, *counts]
    right = (False, False, False, False, True, True, True)
    header = Text(no_wrap=True)
    for i, (title, cw) in enumerate(zip(_HEADERS, widths)):
        _cell(header, title, cw, "bold", right[i], last=i == len(widths) - 1)
    lines: list[Any] = [header]
    # One Text per row, its cells padded by hand: a rich Table costs ~10x as much per redraw.
    for c in cells:
        line = Text(no_wrap=True)
        _cell(line, c.name, name_w)
        _cell(line, c.state[0], state_w, c.state[1])
        head, head_style, detail = c.last
        head = _fit(head, last_w)
        line.append(head, head_style)
        used = _width(head)
        if detail and used + 2 < last_w:
            tail = ": " + _one_line(detail, last_w - used - 2)
            line.append(tail)
            used += _width(tail)
        line.append(" " * (last_w - used + 1))
        _cell(line, c.next[0], next_w, c.next[1], last=not counts)
        for i, (n, cw) in enumerate(zip(c.counts, counts)):
            _cell(line, n, cw, "", True, last=i == len(counts) - 1)
        lines.append(line)
    parts: list[Any] = lines
    if snap.more:
        more = f"+{snap.more} more"
        if snap.more_erroring:
            more += f" ({snap.more_erroring} erroring)"
        parts.append(Text(_fit(more, width), style="dim", no_wrap=True))
    parts.append(_footer(snap, width))
    parts.append(Text(("── recent events " + "─" * width)[:width], style="dim", no_wrap=True))
    if not snap.events:
        parts.append(Text("(none yet)", style="dim"))
    for entry in snap.events:
        parts.append(_event_line(entry, width))
    return Group(*parts)


def _footer(snap: Snapshot, width: int) -> Any:
    from rich.text import Text

    bits = [f"queue {snap.queued}", f"runs {snap.running}/{snap.max_runs}",
            f"up {_secs(snap.uptime)}" if snap.uptime is not None else "starting"]
    summary = f"{snap.total} trigger{'s' if snap.total != 1 else ''}"
    extra = [f"{n} {what}" for n, what in ((snap.erroring, "erroring"), (snap.disabled, "disabled")) if n]
    bits.append(summary + (": " + ", ".join(extra) if extra else ""))
    if snap.stopped:
        bits.insert(0, "stopped")
    elif snap.stopping is not None:
        bits.insert(0, f"stopping (grace {_secs(snap.stopping[1])})")
    text = Text(no_wrap=True)
    line = " · ".join(bits)
    text.append(_fit(line, width), style="bold")
    return text


def _event_line(entry: Entry, width: int) -> Any:
    from rich.text import Text

    cached = entry.shown
    if cached is None or cached[0] != entry.count:
        cached = entry.shown = (entry.count, _event_text(entry))
    try:
        stamp = datetime.fromtimestamp(entry.at).strftime("%H:%M:%S")
    except (ValueError, OverflowError, OSError):
        stamp = "--:--:--"
    kind = entry.kind
    line = Text(no_wrap=True)
    line.append(stamp + " ", style="dim")
    line.append(f"{kind:<9}"[: max(width - 9, 0)], style=_KIND_STYLE.get(kind, ""))
    rest = width - len(stamp) - 1 - max(len(kind), 9) - 1
    if rest > 0:
        body = Text(" " + _fit(cached[1], rest))
        if kind == "finished" and isinstance(entry.detail, tuple):
            status = entry.detail[0]
            start = body.plain.find(f" {status}")
            if start >= 0:
                body.stylize(_STATUS_STYLE.get(status, ""), start + 1, start + 1 + len(status))
        line.append_text(body)
    return line


def _event_text(entry: Entry) -> str:
    """The event's line after its kind: one safe line (cut to the view's widest use)."""
    limit = 400
    who = visible(entry.trigger)
    run = f"run {entry.run_id}" if entry.run_id is not None else ""
    kind, detail = entry.kind, entry.detail
    if kind == "fired":
        try:
            ctx = json.dumps(detail, separators=(",", ":"), ensure_ascii=False, default=str)
        except (TypeError, ValueError, RecursionError):
            ctx = "(context)"
        text = f"{who} {run} {_one_line(ctx, limit)}"
    elif kind == "duplicate":
        blocked = f"blocked by run {entry.run_id}" if entry.run_id is not None else _one_line(detail or "", limit)
        text = f"{who} {blocked}" + (f" ×{entry.count}" if entry.count > 1 else "")
    elif kind == "error":
        text = f"{who} ×{entry.count}: {_one_line(detail or '', limit)}"
    elif kind == "finished":
        status, took, error = detail
        text = f"{who} {run} {visible(status)}" + (f" in {format_duration(took)}" if took is not None else "")
        if error and status != "succeeded":
            text += f": {_one_line(error, limit)}"
    else:
        text = " ".join(p for p in (who, run, _one_line(str(detail), limit) if detail else "") if p)
    return " ".join(text.split())


# ------------------------------------------------------------------------------------------- view


class _LogStream(io.TextIOBase):
    """What the log handler writes to while the view is on: its lines are printed above the view
    at the next redraw (a write only queues them). Before and after, they go to stderr at once."""

    def __init__(self, view: LiveView):
        self._view = view

    def write(self, text: str) -> int:
        self._view.add_log(text)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return True


class _PrintStream(io.TextIOBase):
    """sys.stdout while the view is on: what trigger code prints (a debug print) shows above the
    view, a line at a time, escaped, instead of tearing it."""

    def __init__(self, view: LiveView, real: TextIO):
        self._view = view
        self._real = real
        self._partial = ""
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        with self._lock:
            head, sep, self._partial = (self._partial + text).rpartition("\n")
            if len(self._partial) > 10_000:  # an endless line: shown in pieces
                head, sep, self._partial = head + sep + self._partial, "\n", ""
        if sep:
            self._view.add_log(visible(head, keep="\n\t") + "\n", self._real)
        return len(text)

    def flush(self) -> None:
        pass

    def end(self) -> None:
        """The last line, even without its newline (at the view's end)."""
        with self._lock:
            rest, self._partial = self._partial, ""
        if rest:
            self._view.add_log(visible(rest, keep="\t") + "\n", self._real)

    def isatty(self) -> bool:
        return False  # code that checks must not start drawing on the view's terminal

    def fileno(self) -> int:
        return self._real.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._real, "encoding", "utf-8")


class LiveView:
    """The live view on ``stdout``, from its own thread. Use as a context manager around the loop;
    :meth:`attach` subscribes it to a runner's bus (``api.run(..., observers=[view.attach])``).

    ``logs_above``: log lines go to :attr:`log_stream` and are printed above the view; by default
    when stderr is a terminal too (with stderr redirected to a file they stay there)."""

    def __init__(self, *, stdout: TextIO | None = None, stderr: TextIO | None = None, logs_above: bool | None = None,
                 clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic,
                 refresh_per_second: float = REFRESH_PER_SECOND, width: int | None = None, height: int | None = None):
        from rich.console import Console

        self._out = stdout if stdout is not None else sys.stdout
        self._err = stderr if stderr is not None else sys.stderr
        self.model = LiveModel(clock=clock, monotonic=monotonic)
        self._clock = clock
        self._drawn: tuple[Any, ...] | None = None
        # Markup, emoji codes and highlighting off: nothing shown is rich markup. NO_COLOR is honoured by rich.
        self.console = Console(file=self._out, markup=False, emoji=False, highlight=False, soft_wrap=False,
                               width=width, height=height)
        self._period = 1.0 / max(min(refresh_per_second, REFRESH_PER_SECOND), 0.1)
        logs_above = _is_terminal(self._err) if logs_above is None else logs_above
        self.log_stream: Any = _LogStream(self) if logs_above else self._err
        self._lock = threading.Lock()
        self._pending: deque[str] = deque()
        self._pending_lines = 0
        self._dropped = 0
        self._active = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._saved_stdout: TextIO | None = None
        self.refreshes = 0
        self.error: BaseException | None = None

    def attach(self, runner: Any) -> Callable[[], None]:
        """Subscribe the view's model to ``runner.bus`` (an observer of ``api.run``); the runner's own
        bus writes the log lines."""
        return self.model.attach(runner.bus)

    # ------------------------------------------------------------------------------ log lines

    def add_log(self, text: str, fallback: TextIO | None = None) -> None:
        """Queue log text for the next redraw (or write it now, to ``fallback`` or stderr, while the
        view is not drawn)."""
        if not text:
            return
        with self._lock:
            if self._active:
                self._pending.append(text)
                self._pending_lines += text.count("\n") or 1
                while self._pending_lines > MAX_PENDING_LINES and len(self._pending) > 1:
                    old = self._pending.popleft()
                    n = old.count("\n") or 1
                    self._pending_lines -= n
                    self._dropped += n
                return
        self._write_err(text, fallback)

    def _write_err(self, text: str, stream: TextIO | None = None) -> None:
        stream = self._err if stream is None else stream
        try:
            stream.write(text)
            stream.flush()
        except (OSError, ValueError):
            pass

    def _take_pending(self) -> tuple[str, int]:
        with self._lock:
            text = "".join(self._pending)
            self._pending.clear()
            self._pending_lines = 0
            dropped, self._dropped = self._dropped, 0
        return text, dropped

    def _print_pending(self) -> None:
        from rich.text import Text

        text, dropped = self._take_pending()
        if dropped:
            text = (f"({dropped} log lines not shown: more than {MAX_PENDING_LINES} between two redraws; "
                    "`trigctl history` has the fires and errors)\n") + text
        if text:
            self.console.print(Text(visible(text.rstrip("\n"), keep="\n")), soft_wrap=False)

    # --------------------------------------------------------------------------------- drawing

    def renderable(self) -> Any:
        width, height = self.console.size
        rows, shown = budget(height, min(self.model.event_count(), MAX_EVENTS_SHOWN))
        return render(self.model.snapshot(rows, shown), width)

    def __enter__(self) -> LiveView:
        self._saved_stdout = sys.stdout
        sys.stdout = _PrintStream(self, sys.stdout)  # type: ignore[assignment]
        self._thread = threading.Thread(target=self._main, name="trigctl-live", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._saved_stdout is not None and isinstance(sys.stdout, _PrintStream):
            proxy, sys.stdout = sys.stdout, self._saved_stdout  # type: ignore[assignment]
            proxy.end()

    def _main(self) -> None:
        from rich.live import Live

        live = None
        try:
            # Drawn once the loop runs: a `run` that stops at once (a locked state) shows its error alone.
            while not self.model.started:
                if self._stop.wait(0.05):
                    return
            live = Live(console=self.console, auto_refresh=False, transient=False, redirect_stdout=False,
                        redirect_stderr=False, vertical_overflow="crop")
            with self._lock:
                self._active = True
            live.start()
            while True:
                self._refresh(live)
                if self._stop.wait(self._period):
                    break
            self._refresh(live, force=True)  # the final state and the last log lines
        except Exception as e:  # noqa: BLE001 - the view must never take the loop down: lines go on
            self.error = e
            self._write_err(f"trigctl: the live view stopped ({type(e).__name__}: {visible(str(e)[:300])}); "
                            "log lines go on\n")
        finally:
            with self._lock:
                self._active = False
            if live is not None:
                try:
                    live.stop()
                except Exception:  # noqa: BLE001
                    pass
            text, dropped = self._take_pending()
            if dropped:
                self._write_err(f"({dropped} log lines not shown)\n")
            if text:
                self._write_err(text)

    def _refresh(self, live: Any, force: bool = False) -> None:
        # Nothing new (no event, no log line, the same second and terminal size): nothing to redraw.
        drawn = (self.model.version, int(self._clock()), self.console.size)
        if not force and drawn == self._drawn and not self._pending:
            return
        self._drawn = drawn
        self._print_pending()
        live.update(self.renderable(), refresh=True)
        self.refreshes += 1

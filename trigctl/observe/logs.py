"""The log output of `trigctl run`: one line per event on stderr, as text or JSON.

:class:`LogSubscriber` turns the typed events of :mod:`trigctl.events` into records of the
``trigctl`` logger (one per event, the event's name and fields in ``extra``); :class:`EventFormatter`
writes them as lines and :class:`BatchingHandler` writes the lines of one loop step in one go.
The lines are the documented log format (docs/cli.md, `trigctl run`): names and field order are
part of it. :func:`foreign_logs` routes other libraries' log records (watchdog, urllib3...) and
Python warnings to the same handler while `run` runs, rate-limited (:class:`ForeignHandler`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

from trigctl import events as ev
from trigctl.render import visible  # the one escaping of data for a terminal: tables and log lines

log = logging.getLogger("trigctl")

# Frequent events: written when the loop flushes (once per step). The others at once.
BATCHED_EVENTS = frozenset({"fired", "duplicate", "error", "run_started", "run_finished"})
MAX_LOGGED_DUPLICATES = 100_000  # (trigger, blocking run, reason) remembered, then forgotten at once


def emit(event: str, **fields: Any) -> None:
    """Log one event line (the form every event line takes)."""
    # log.info() without its search of the stack for the caller's file and line, which no line
    # shows (a few lines per run, at hundreds of runs a second, on the loop thread).
    if log.isEnabledFor(logging.INFO):
        log.handle(log.makeRecord(log.name, logging.INFO, "", 0, event, (), None,
                                  extra={"trigctl_event": event, "trigctl_fields": fields}))
    if event not in BATCHED_EVENTS:
        flush_logs()  # rare events (start, stopping, reload...) are written at once


def flush_logs() -> None:
    for handler in log.handlers:
        handler.flush()


_Fields = Callable[[Any], "dict[str, Any]"]

# Each logged event type: its fields, in the order the line shows them.
_FIELDS: dict[type, _Fields] = {
    ev.LoopStarted: lambda e: {"triggers": e.triggers, "enabled": e.enabled, "state": e.state, "pid": e.pid},
    ev.FireRecorded: lambda e: {"trigger": e.trigger, "run_id": e.run_id, "context": _shown_context(e.context)},
    ev.DuplicateSuppressed: lambda e: {"trigger": e.trigger, "blocked_by": e.blocked_by, "reason": e.reason},
    ev.PollFailed: lambda e: {"trigger": e.trigger, "error": e.error},
    ev.RunStarted: lambda e: {"run_id": e.run_id, "trigger": e.trigger, "workflow": e.workflow},
    ev.RunFinished: lambda e: {"run_id": e.run_id, "status": e.status, "error": e.error, "output": last_line(e.output)},
    ev.RunInterrupted: lambda e: {"trigger": e.trigger, "run_id": e.run_id, "action": e.action},
    ev.TriggerEnabled: lambda e: {"trigger": e.trigger},
    ev.TriggerDisabled: lambda e: {"trigger": e.trigger},
    ev.RunCancelling: lambda e: {"run_id": e.run_id},
    ev.ConfigReloaded: lambda e: {"changes": ", ".join(e.changes) or "no changes"},
    ev.ReloadRefused: lambda e: {"error": e.error},
    ev.LoopStopping: lambda e: {"active_runs": e.active_runs, "grace": e.grace},
    ev.LoopStopped: lambda e: {},
    ev.ClockStepped: lambda e: {"seconds": round(e.seconds, 3)},
}
LOGGED_EVENTS: tuple[type[ev.Event], ...] = tuple(_FIELDS)


class LogSubscriber:
    """Writes the events that have a log line (LOGGED_EVENTS) to the ``trigctl`` logger.

    A suppressed duplicate is logged once per blocking run, not on every poll that offers it
    again (history counts the repeats). Per blocking run, not per trigger: a poll that returns
    many pending keys would otherwise log every one of them on every poll."""

    def __init__(self) -> None:
        self._logged_duplicates: set[tuple[str, int | None, str]] = set()

    def attach(self, bus: ev.EventBus) -> Callable[[], None]:
        return bus.subscribe(self, LOGGED_EVENTS)

    def __call__(self, event: ev.Event) -> None:
        if type(event) is ev.DuplicateSuppressed:
            seen = (event.trigger, event.blocked_by, event.reason)
            if seen in self._logged_duplicates:
                return
            if len(self._logged_duplicates) >= MAX_LOGGED_DUPLICATES:
                self._logged_duplicates.clear()
            self._logged_duplicates.add(seen)
        fields = _FIELDS.get(type(event))
        if fields is not None:
            emit(event.name, **fields(event))


class BatchingHandler(logging.StreamHandler):
    """Collects log lines and writes them in one go when the loop flushes (once per loop step,
    and at exit): a line per event, but not a write() system call per line."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._pending: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._pending.append(self.format(record) + self.terminator)
        except Exception:  # noqa: BLE001 - logging must never take the loop down
            self.handleError(record)
        if len(self._pending) >= 1000:
            self.flush()

    def flush(self) -> None:
        self.acquire()
        try:
            if self._pending:
                text, self._pending = "".join(self._pending), []
                try:
                    self.stream.write(text)
                except (OSError, ValueError):  # a closed or broken stderr must not stop the loop
                    pass
            if self.stream and hasattr(self.stream, "flush"):
                try:
                    self.stream.flush()
                except (OSError, ValueError):
                    pass
        finally:
            self.release()


class EventFormatter(logging.Formatter):
    """One line per event on stderr: text for people, JSON for machines."""

    def __init__(self, fmt: str = "text", debug: bool = False):
        super().__init__()
        self.json = fmt == "json"
        self.debug = debug
        self._stamp: tuple[int, str] = (-1, "")  # the text stamp of the last second (it shows whole seconds)

    def format(self, record: logging.LogRecord) -> str:
        event = getattr(record, "trigctl_event", None)
        fields = getattr(record, "trigctl_fields", {}) if event else {}
        message = "" if event else _message(record, self.debug)
        if self.json:
            ts = datetime.fromtimestamp(record.created, tz=timezone.utc)
            doc = {"ts": ts.isoformat().replace("+00:00", "Z"), "level": record.levelname.lower(),
                   "event": event or "log", **fields}
            if not event:
                doc["message"] = message
                if record.exc_info and self.debug:
                    doc["traceback"] = self.formatException(record.exc_info)
            return json.dumps(doc, default=str)
        second = int(record.created)
        if self._stamp[0] != second:
            local = datetime.fromtimestamp(record.created, tz=timezone.utc).astimezone()
            self._stamp = (second, local.strftime("%Y-%m-%d %H:%M:%S%z"))
        stamp = self._stamp[1]
        if not event:
            line = visible(f"{stamp} {record.levelname.lower()} {message}")
            if record.exc_info and self.debug:
                line += "\n" + self.formatException(record.exc_info)
            return line
        parts = " ".join(f"{k}={_text(v)}" for k, v in fields.items() if v is not None and v != "")
        return f"{stamp} {event} {parts}".rstrip()


def _message(record: logging.LogRecord, debug: bool) -> str:
    """The record's message, with the exception it carries (type and text) on the same line."""
    try:
        text = record.getMessage()
    except Exception:  # noqa: BLE001 - a log call with bad arguments must not stop the loop
        text = str(record.msg)
    exc = record.exc_info[1] if record.exc_info else None
    if exc is not None:
        try:
            detail = str(exc)
        except Exception:  # noqa: BLE001
            detail = "(its message could not be read)"
        text += f": {type(exc).__name__}" + (f": {detail}" if detail else "")
        if not debug:
            text += " (run with --debug for the traceback)"
    return text


MAX_LOGGED_CONTEXT = 2000  # characters of a context's JSON in a log line (the whole context: `show`)


def _shown_context(context: Any) -> Any:
    """The context as a log line carries it: whole when small; else its JSON cut to
    MAX_LOGGED_CONTEXT characters, as a string ending in "...(N characters)". A peer's megabyte
    context must not make every fire line a megabyte (nor fill a slow reader's pipe)."""
    text = json.dumps(context, default=str)
    if len(text) <= MAX_LOGGED_CONTEXT:
        return context
    return text[:MAX_LOGGED_CONTEXT] + f"...({len(text)} characters)"


MAX_LOGGED_OUTPUT = 200  # characters of a failed task's last output line in its run_finished line


def last_line(output: str | None, limit: int = MAX_LOGGED_OUTPUT) -> str | None:
    """The last non-blank line of a task's output, cut to ``limit`` characters (the start is cut:
    the end of a line says most, as in "...: No such file or directory")."""
    if not output:
        return None
    for line in reversed(output.replace("\r\n", "\n").split("\n")):
        line = line.strip()
        if line:
            return line if len(line) <= limit else "…" + line[-(limit - 1):]
    return None


def _text(v: Any) -> str:
    if isinstance(v, (dict, list)):
        return json.dumps(v, default=str)
    s = str(v)
    # JSON-quoted (so escaped) when it has a space, nothing, or anything not printable.
    return json.dumps(s) if (" " in s or not s or '"' in s or not s.isprintable()) else s


# ------------------------------------------------------------------ other libraries' log records


class ForeignHandler(logging.Handler):
    """Hands log records of other libraries (watchdog, urllib3, the root logger, Python warnings)
    to trigctl's handler, so they come out in trigctl's format (the `log` line, text or JSON), one
    line each, with the logger's name in front of the message.

    Warnings and worse only, and a flood cannot flood the log: per logger, level and message
    template, the first record is written and repeats within ``WINDOW`` seconds are counted, not
    written; the next one written after that says how many were left out. At most ``BUDGET``
    records are written per ``WINDOW`` in all (a library that logs a different message each time);
    the next one written after a full window says how many others were left out.
    """

    WINDOW = 60.0
    BUDGET = 50
    MAX_KEYS = 10_000  # message templates remembered, then forgotten at once

    def __init__(self, target: logging.Handler, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(logging.WARNING)
        self.target = target
        self._clock = clock
        self._seen: dict[tuple[str, int, str], list[float]] = {}  # key -> [window start, repeats left out]
        self._window = -float("inf")
        self._written = 0  # records written in the current budget window
        self._over_budget = 0  # records left out because the budget was spent

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self._admit(record)
            if line is None:
                return
            copy = logging.makeLogRecord(record.__dict__)
            copy.msg, copy.args = line, None
            self.target.handle(copy)
        except Exception:  # noqa: BLE001 - logging must never take the loop down
            self.handleError(record)

    def _admit(self, record: logging.LogRecord) -> str | None:
        """The message to write for ``record``, or None when it is left out."""
        now = self._clock()
        key = (record.name, record.levelno, str(record.msg)[:500])
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self.WINDOW:
            seen[1] += 1
            return None
        if now - self._window >= self.WINDOW:
            self._window, self._written = now, 0
        if self._written >= self.BUDGET:
            self._over_budget += 1
            return None
        self._written += 1
        repeats = int(seen[1]) if seen is not None else 0
        if seen is None and len(self._seen) >= self.MAX_KEYS:
            self._seen.clear()
        self._seen[key] = [now, 0]
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001 - a log call with bad arguments
            text = str(record.msg)
        line = f"{record.name}: {text}" if record.name != "root" else text
        notes = []
        if repeats:
            notes.append(f"{repeats} more like it in the last {self.WINDOW:g}s not shown")
        if self._over_budget:
            notes.append(f"{self._over_budget} other library messages not shown (over {self.BUDGET} "
                         f"in {self.WINDOW:g}s)")
            self._over_budget = 0
        return line + (f" ({'; '.join(notes)})" if notes else "")


@contextlib.contextmanager
def foreign_logs(target: logging.Handler) -> Iterator[ForeignHandler]:
    """While the block runs, records that reach the root logger (any library's, and Python
    warnings) or no handler at all (``logging.lastResort``) go to ``target`` through a
    :class:`ForeignHandler`; afterwards the root logger, lastResort and warnings.showwarning are
    as they were. The ``trigctl`` logger does not propagate, so its records are not seen twice."""
    handler = ForeignHandler(target)
    root = logging.getLogger()
    saved_last_resort = logging.lastResort
    saved_show = warnings.showwarning
    warnings_log = logging.getLogger("py.warnings")

    def show(message: Any, category: Any, filename: str, lineno: int, file: Any = None,
             line: str | None = None) -> None:
        if file is not None:  # an explicit destination: not ours to redirect
            saved_show(message, category, filename, lineno, file, line)
            return
        text = warnings.formatwarning(message, category, filename, lineno, line)
        warnings_log.warning(" ".join(text.split()))  # the text is its template: one key per warning

    root.addHandler(handler)
    logging.lastResort = handler
    warnings.showwarning = show
    try:
        yield handler
    finally:
        if warnings.showwarning is show:
            warnings.showwarning = saved_show
        if logging.lastResort is handler:
            logging.lastResort = saved_last_resort
        root.removeHandler(handler)

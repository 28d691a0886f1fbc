"""Everything people read: tables, times with offsets, "12s ago". The only printer besides cli.py.

Everything shown comes from data that triggers, tasks, files and peers control: it is text, never
markup and never terminal control. Cells are plain `Text` on a console with markup and emoji off,
and every string passes through :func:`visible` first.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from trigctl.durations import format_duration

if TYPE_CHECKING:
    from trigctl.api import HistoryEntry, TriggerStatus
    from trigctl.store.base import RunRow

# What must not reach a terminal raw: C0 controls and DEL (ESC starts CSI/OSC sequences, CR and BS
# overwrite what was shown), C1 controls (U+009B is a CSI of its own), lone surrogates (a file name
# that is not UTF-8; they cannot even be encoded), line and paragraph separators, and the bidi
# embeddings, overrides and isolates that make text read differently from what it is.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(m: re.Match[str]) -> str:
    c = m.group()
    return _NAMED.get(c) or (f"\\x{ord(c):02x}" if ord(c) <= 0xFF else f"\\u{ord(c):04x}")


def visible(value: object, keep: str = "") -> str:
    """``value`` as text that is safe to print: every character of :data:`_UNSAFE` (except those
    in ``keep``, e.g. newlines of a task's output) becomes its Python escape (``\\x1b``,
    ``\\u202e``, ``\\udcff``), so it shows instead of acting."""
    text = value if isinstance(value, str) else str(value)
    if not keep:
        return _UNSAFE.sub(_escape, text)
    return _UNSAFE.sub(lambda m: m.group() if m.group() in keep else _escape(m), text)


def _json_escape(m: re.Match[str]) -> str:
    return f"\\u{ord(m.group()):04x}"


# Times come from the state, which another clock or tool may have written: one that no date can
# express (the year 33658, NaN) is shown as its number, or null in JSON, never an internal error.
_BAD_TIME = (ValueError, OverflowError, OSError)


_ISO_SECONDS: dict[int, str] = {}  # whole second -> "YYYY-MM-DDTHH:MM:SS": `list` of 50,000 triggers polled together


def iso(ts: float | None) -> str | None:
    """UTC, to the millisecond (truncated, as isoformat does), with a Z."""
    if ts is None:
        return None
    try:
        # The microsecond as datetime.fromtimestamp rounds it (half to even), then the cached second.
        frac, whole = math.modf(ts)
        us = round(frac * 1e6)
        seconds = int(whole)
        if us >= 1_000_000:
            seconds, us = seconds + 1, us - 1_000_000
        elif us < 0:
            seconds, us = seconds - 1, us + 1_000_000
        prefix = _ISO_SECONDS.get(seconds)
        if prefix is None:
            if len(_ISO_SECONDS) > 4096:
                _ISO_SECONDS.clear()
            prefix = _ISO_SECONDS[seconds] = datetime.fromtimestamp(seconds, tz=timezone.utc).replace(tzinfo=None).isoformat("T", "seconds")
        return f"{prefix}.{us // 1000:03d}Z"
    except _BAD_TIME:
        return None


def local(ts: float | None) -> str:
    if ts is None:
        return "-"
    try:
        return datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S%z")
    except _BAD_TIME:
        return f"@{ts}"


def duration(seconds: object) -> str:
    """format_duration, for a value read from the state: anything but a finite number shows as is."""
    if seconds is None:
        return "-"
    if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and math.isfinite(seconds):
        return format_duration(seconds) if seconds >= 0 else "-" + format_duration(-seconds)  # a clock step
    return visible(repr(seconds))


def relative(ts: float | None, now: float | None = None) -> str:
    if ts is None:
        return "-"
    now = time.time() if now is None else now
    delta = now - ts
    if not abs(delta) < 1e12:  # also NaN
        return "?"
    future = delta < 0
    text = format_duration(abs(delta)) if abs(delta) >= 1 else "now"
    if text == "now":
        return "now"
    return f"in {text}" if future else f"{text} ago"


def json_text(doc: Any, indent: int | None = None) -> str:
    """JSON of ``doc``, UTF-8 where it can be, with the characters of :data:`_UNSAFE` as ``\\uXXXX``
    escapes: the same data (a lone surrogate stays one), but nothing a terminal would act on and
    nothing that cannot be encoded. They can only occur inside JSON strings, where an escape is valid."""
    return safe_json(json.dumps(doc, indent=indent, default=str, ensure_ascii=False))


def safe_json(text: str) -> str:
    """JSON text (from json.dumps with ensure_ascii off, or from the database) with the characters
    of :data:`_UNSAFE` escaped, as :func:`json_text` writes it."""
    return text if text.isascii() and "\x7f" not in text else _UNSAFE.sub(_json_escape, text)


def list_json_parts(summaries: list[dict[str, Any]]) -> list[tuple[str, bool, str, str, str]] | None:
    """The parts of each trigger's `list --json` object that only the YAML decides, as
    :func:`json_text` writes them: (name, enabled, head, enabled JSON, mid), where the object is
    ``head + <enabled> + mid + <last_poll_at> + ...`` (trigctl.store.sqlite writes the rest). None
    if a summary lacks a key or a name cannot be stored as text."""
    from json.encoder import encode_basestring  # json.dumps's own (C) encoder of a str

    values: dict[Any, str] = {}

    def encoded(value: Any) -> str:  # types, workflows, intervals repeat: each encoded once
        key = (type(value), value)
        text = values.get(key)
        if text is None:
            text = values[key] = json_text(value)
        return text

    out = []
    try:
        for tc in summaries:
            name = tc["name"]
            if not isinstance(name, str):
                return None
            name.encode("utf-8")  # a lone surrogate: not storable as SQLite text
            head = (f'{{"name": {safe_json(encode_basestring(name))}, "type": {encoded(tc["type"])}, '
                    f'"workflow": {encoded(tc["workflow"])}, "interval": {encoded(tc["interval"])}, "enabled": ')
            out.append((name, bool(tc["enabled"]), head, encoded(tc["enabled"]),
                        f', "dedupe": {encoded(tc["dedupe"])}, "last_poll_at": '))
    except (KeyError, TypeError, UnicodeEncodeError):
        return None
    return out


def json_indent() -> int | None:
    # Indented for a person at a terminal; compact for pipes (the C encoder: 10x faster on big lists).
    return 2 if sys.stdout.isatty() else None


def print_json(doc: Any) -> None:
    sys.stdout.write(json_text(doc, json_indent()) + "\n")


def _console():
    from rich.console import Console

    # Piped output is not wrapped at 80 columns: a line per row is what grep and less want.
    # Markup, emoji codes and highlighting off: nothing printed here is rich markup.
    return Console(highlight=False, soft_wrap=False, markup=False, emoji=False,
                   width=None if sys.stdout.isatty() else 220)


def _table(columns: list[str], fold: tuple[str, ...] = ()):
    """Columns in ``fold`` (and the last) hold free text: a long value folds onto more lines in its
    column. The others (times, statuses, counts) never wrap, and are not cut short to make room."""
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    for i, c in enumerate(columns):
        free = c in fold or i == len(columns) - 1
        table.add_column(c, overflow="fold", no_wrap=not free, min_width=None if free else len(c))
    return table


def _row(table, *cells: object) -> None:
    """One row of data: each cell literal text (no markup, no emoji codes, no control characters)."""
    from rich.text import Text

    table.add_row(*(Text(visible(c)) for c in cells))


LIST_WIDTH = 100  # `list` fits this many columns, whatever the terminal (wider names fold)
MIN_REASON = 12  # the reason column is given at least this many characters, cut with an ellipsis


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "…"


def trigger_table(rows: list[TriggerStatus]) -> None:
    from rich.table import Table

    now = time.time()
    stopped = bool(rows) and rows[0].loop_alive is False  # no `run` for this state: no next poll is coming
    headers = ["NAME", "TYPE", "WORKFLOW", "EVERY", "ON", "LAST POLL", "RESULT", "NEXT POLL", "RUNS", "FIRES", "ERRS"]
    shared = any(r.shared for r in rows)  # PostgreSQL: which process holds each trigger
    if shared:
        headers.append("HOLDER")
    cells = [
        [visible(c) for c in (
            r.name, r.type, r.workflow, duration(r.interval) if r.interval is not None else (r.schedule or "-"),
            "yes" if r.enabled else "no", relative(r.last_poll_at, now), r.last_result or "-",
            relative(r.next_poll_at, now) if r.enabled and not stopped else "-", str(r.active_runs), str(r.fires),
            str(r.consecutive_errors) if r.consecutive_errors else "-",
        ) + (((r.holder or "-")[:12],) if shared else ())]
        for r in rows
    ]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]
    # The reason (free text from trigger code, one line) takes what is left of the terminal's width
    # (of LIST_WIDTH when piped): with names of a dozen characters, a row fits 100 columns.
    console = _console()
    target = console.width if sys.stdout.isatty() else LIST_WIDTH
    reason_width = max(MIN_REASON, target - sum(widths) - len(widths))
    table = Table(box=None, header_style="bold", pad_edge=False, padding=(0, 1, 0, 0))
    for h in headers:
        free = h in ("NAME", "TYPE", "WORKFLOW", "EVERY")
        table.add_column(h, overflow="fold", no_wrap=not free, min_width=None if free else len(h))
    table.add_column("REASON", overflow="ellipsis", no_wrap=True)
    from rich.text import Text

    for r, row in zip(rows, cells):
        reason = _cut(" ".join(visible(r.last_reason).split()), reason_width) if r.last_reason else "-"
        table.add_row(*(Text(c) for c in row), Text(reason))
    console.print(table)
    if stopped:
        sys.stdout.write(not_running_line(rows, now) + "\n")


def not_running_line(rows: list[TriggerStatus], now: float) -> str:
    """What `list` says under its table when no `trigctl run` is alive for the state: since when
    (the last poll recorded, a second at most before the loop stopped or died)."""
    last = max((r.last_poll_at for r in rows if r.last_poll_at is not None), default=None)
    if last is None:
        return "not running: no `trigctl run` has polled with this state yet"
    return f"not running since {local(last)} ({relative(last, now)}): polls resume when `trigctl run` starts"


def process_doc(p: Any) -> dict[str, Any]:
    """A process (trigctl.store.postgres.ProcessRow) as `processes --json` prints it."""
    return {"id": p.id, "host": p.host, "pid": p.pid, "labels": list(p.labels), "leases": p.leases,
            "running_runs": p.running_runs, "heartbeat_at": iso(p.heartbeat_at), "heartbeat_age": round(p.heartbeat_age, 3),
            "lease": p.lease_seconds, "started_at": iso(p.started_at), "status": p.status}


def process_table(rows: list[Any]) -> None:
    if not rows:
        sys.stdout.write("no live trigctl run process\n")
        return
    now = time.time()
    table = _table(["ID", "HOST", "PID", "LABELS", "LEASES", "RUNS", "HEARTBEAT", "STARTED"], fold=("HOST", "LABELS"))
    for p in rows:
        _row(table, p.id[:12], p.host, str(p.pid), ",".join(p.labels) or "-", str(p.leases), str(p.running_runs),
             f"{p.heartbeat_age:.1f}s ago", f"{local(p.started_at)} ({relative(p.started_at, now)})")
    _console().print(table)


def _short_context(ctx: Any, limit: int = 60) -> str:
    if ctx is None:
        return "-"
    text = json.dumps(ctx, separators=(",", ":"), ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


HISTORY_WIDTH = 100  # `history` fits this many columns when piped (a terminal: its own width)
HISTORY_HEADERS = ("ID", "WHEN", "TRIGGER", "KIND", "RUN", "STATUS", "DURATION", "COUNT", "CONTEXT / ERROR")
# Fixed widths for `history --follow`, which cannot measure rows it has not seen yet.
FOLLOW_WIDTHS = (6, 11, 16, 9, 5, 11, 8, 5)
MAX_TRIGGER = 20  # a longer trigger name is cut with an ellipsis (`--wide` shows it whole)
MIN_DETAIL = 20
# Statuses in colour on a terminal (rich drops styles when piped or with NO_COLOR set).
STYLES = {"succeeded": "green", "failed": "bold red", "error": "red", "running": "cyan", "queued": "cyan",
          "cancelled": "yellow", "interrupted": "yellow", "duplicate": "dim"}


def short_time(ts: float | None, now: float) -> str:
    """A history time in the local zone, as short as is unambiguous near ``now``: 14:03:27 today,
    11-29 14:03 this year, 2025-11-29 before."""
    if ts is None:
        return "-"
    try:
        when, today = datetime.fromtimestamp(ts), datetime.fromtimestamp(now)
    except _BAD_TIME:
        return f"@{ts}"
    if when.date() == today.date():
        return when.strftime("%H:%M:%S")
    return when.strftime("%m-%d %H:%M" if when.year == today.year else "%Y-%m-%d")


def _history_cells(r: HistoryEntry, now: float, wide: bool) -> list[str]:
    detail = r.error if r.kind == "error" else _short_context(r.context, limit=10**9)
    when = f"{local(r.when)} ({relative(r.when, now)})" if wide else short_time(r.when, now)
    return [visible(c) for c in (
        str(r.id), when, r.trigger_name, r.kind, str(r.run_id) if r.run_id is not None else "-", r.status or "-",
        duration(r.duration), str(r.count) if r.count > 1 else "",
    )] + [" ".join(visible(detail or "").split())]


def _history_line(cells: list[str], widths: list[int], detail_width: int):
    """One row as styled text: cells padded to ``widths``, the trigger and the detail cut with an ellipsis."""
    from rich.text import Text

    line = Text(no_wrap=True, overflow="ellipsis")
    for i, (cell, width) in enumerate(zip(cells, widths)):
        cell = _cut(cell, width) if i == 2 else cell
        style = STYLES.get(cell, "") if i in (3, 5) else ("cyan" if i == 6 and cell != "-" else "")
        line.append(cell.ljust(width), style=style)
        line.append(" ")
    line.append(_cut(cells[-1], detail_width))
    return line


class HistoryPrinter:
    """`history` as lines of fixed columns that fit the terminal (HISTORY_WIDTH when piped): the
    trigger name and the context or error are cut with an ellipsis, never wrapped. ``widths``
    None measures the rows given to :meth:`table`; `--follow` passes fixed ones."""

    def __init__(self, widths: tuple[int, ...] | None = None):
        self.console = _console()
        self.target = self.console.width if sys.stdout.isatty() else HISTORY_WIDTH
        self.widths = list(widths) if widths else None

    def _fit(self, rows: list[list[str]]) -> int:
        if self.widths is None:
            self.widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(HISTORY_HEADERS[:-1])]
            self.widths[2] = min(self.widths[2], MAX_TRIGGER)
        return max(MIN_DETAIL, self.target - sum(self.widths) - len(self.widths))

    def header(self, rows: list[list[str]] | None = None) -> None:
        detail = self._fit(rows or [])
        assert self.widths is not None
        line = _history_line(list(HISTORY_HEADERS), self.widths, detail)
        line.stylize("bold")
        self.console.print(line)

    def rows(self, entries: list[HistoryEntry], now: float) -> None:
        self.print_cells([_history_cells(r, now, wide=False) for r in entries])

    def print_cells(self, cells: list[list[str]]) -> None:
        detail = self._fit(cells)
        assert self.widths is not None
        for row in cells:
            self.console.print(_history_line(row, self.widths, detail))


def history_table(rows: list[HistoryEntry], wide: bool = False) -> None:
    if not rows:
        sys.stdout.write("no history yet\n")
        return
    now = time.time()
    if not wide:
        cells = [_history_cells(r, now, wide=False) for r in rows]
        printer = HistoryPrinter()
        printer.header(cells)
        printer.print_cells(cells)
        return
    table = _table(list(HISTORY_HEADERS), fold=("TRIGGER",))
    for r in rows:
        _row(table, *_history_cells(r, now, wide=True))
    _console().print(table)


def run_doc(run: RunRow) -> dict[str, Any]:
    """A run and its tasks as `show --json` prints it."""
    tasks = [
        {"name": t["name"], "status": t["status"], "exit_code": t["exit_code"], "started_at": iso(t["started_at"]),
         "completed_at": iso(t["completed_at"]),
         "duration": round(t["completed_at"] - t["started_at"], 6) if t["completed_at"] and t["started_at"] else None,
         "output_tail": t["output_tail"] or ""}
        for t in run.tasks
    ]
    return {"id": run.id, "trigger_name": run.trigger_name, "workflow": run.workflow, "status": run.status,
            "context": run.context, "started_at": iso(run.started_at), "completed_at": iso(run.completed_at),
            "tasks": tasks}


def run_view(run: RunRow) -> None:
    out = sys.stdout
    v = visible
    doc = run_doc(run)
    started, completed, error = run.started_at, run.completed_at, run.error
    out.write(f"run {doc['id']}  trigger {v(doc['trigger_name'])}  workflow {v(doc['workflow'])}  status {v(doc['status'])}\n")
    out.write(f"started   {local(started)} ({relative(started)})\n")
    if doc["status"] == "running" and started:
        out.write(f"running   for {duration(max(0.0, time.time() - started))}\n")
    else:
        out.write(f"completed {local(completed)}" + (f"  duration {duration(completed - started)}" if completed and started else "") + "\n")
    if error:
        out.write(f"error     {v(error)}\n")
    out.write("context   " + json_text(doc["context"]) + "\n")
    for t, row in zip(doc["tasks"], run.tasks):
        code = t["exit_code"] if t["exit_code"] is not None else "-"
        if t["status"] == "running" and doc["status"] == "running" and isinstance(row["started_at"], (int, float)):
            elapsed = duration(max(0.0, time.time() - row["started_at"]))
            out.write(f"\n== task {v(t['name'])}: running (for {elapsed}; its output so far:)\n")
        else:
            out.write(f"\n== task {v(t['name'])}: {v(t['status'])} (exit {code}, {duration(t['duration'])})\n")
        if t["output_tail"]:
            # Lines and tabs stay; a CR (a progress bar, CRLF output) or an escape sequence shows.
            out.write(v(t["output_tail"].replace("\r\n", "\n").rstrip("\n"), keep="\n\t") + "\n")


def poll_view(doc: dict[str, Any]) -> None:
    out = sys.stdout
    reason = doc.get("reason") or doc.get("error")  # why it skipped, or the error's message
    out.write(f"{visible(doc['trigger_name'])}: {doc['result']} in {doc['duration'] * 1000:.0f}ms"
              + (f": {visible(reason)}" if reason else "") + "\n")
    for f in doc["fires"]:
        state = f"suppressed ({visible(f['reason'])})" if f["suppressed"] else "would start a run"
        out.write(f"  {state}: {visible(_short_context(f['context'], 200))}  key={f['dedupe_key'][:12]}\n")

"""Everything people read: tables, times with offsets, "12s ago". The only printer besides cli.py."""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timezone
from typing import Any

from trigctl.durations import format_duration


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def local(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S%z")


def relative(ts: float | None, now: float | None = None) -> str:
    if ts is None:
        return "-"
    now = time.time() if now is None else now
    delta = now - ts
    future = delta < 0
    text = format_duration(abs(delta)) if abs(delta) >= 1 else "now"
    if text == "now":
        return "now"
    return f"in {text}" if future else f"{text} ago"


def print_json(doc: Any) -> None:
    # Indented for a person at a terminal; compact for pipes (the C encoder: 10x faster on big lists).
    indent = 2 if sys.stdout.isatty() else None
    sys.stdout.write(json.dumps(doc, indent=indent, default=str, ensure_ascii=False) + "\n")


def _console():
    from rich.console import Console

    # Piped output is not wrapped at 80 columns: a line per row is what grep and less want.
    return Console(highlight=False, soft_wrap=False, width=None if sys.stdout.isatty() else 220)


def _table(columns: list[str]):
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    for i, c in enumerate(columns):
        table.add_column(c, overflow="fold", no_wrap=i < len(columns) - 1)
    return table


def trigger_table(rows: list[dict[str, Any]]) -> None:
    now = time.time()
    table = _table(["NAME", "TYPE", "WORKFLOW", "INTERVAL", "ENABLED", "LAST POLL", "RESULT", "NEXT POLL", "ACTIVE", "FIRES", "ERRORS"])
    for r in rows:
        table.add_row(
            r["name"], r["type"], r["workflow"], format_duration(r["interval"]) if r["interval"] is not None else (r.get("_schedule") or "-"),
            "yes" if r["enabled"] else "no", relative(r["_last_poll_at"], now), r["last_result"] or "-",
            relative(r["_next_poll_at"], now) if r["enabled"] else "-", str(r["active_runs"]), str(r["fires"]),
            str(r["consecutive_errors"]) if r["consecutive_errors"] else "-",
        )
    _console().print(table)


def _short_context(ctx: Any, limit: int = 60) -> str:
    if ctx is None:
        return "-"
    text = json.dumps(ctx, separators=(",", ":"), ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def history_table(rows: list[dict[str, Any]]) -> None:
    if not rows:
        sys.stdout.write("no history yet\n")
        return
    now = time.time()
    table = _table(["ID", "WHEN", "TRIGGER", "KIND", "RUN", "STATUS", "DURATION", "COUNT", "CONTEXT / ERROR"])
    for r in rows:
        detail = r["error"] if r["kind"] == "error" else _short_context(r["context"])
        table.add_row(
            str(r["id"]), f"{local(r['_when'])} ({relative(r['_when'], now)})", r["trigger_name"], r["kind"],
            str(r["run_id"]) if r["run_id"] is not None else "-", r["status"] or "-",
            format_duration(r["duration"]) if r["duration"] is not None else "-",
            str(r["count"]) if r["count"] > 1 else "", detail or "",
        )
    _console().print(table)


def run_view(doc: dict[str, Any], error: str | None) -> None:
    out = sys.stdout
    started = doc["_started_at"]
    completed = doc["_completed_at"]
    out.write(f"run {doc['id']}  trigger {doc['trigger_name']}  workflow {doc['workflow']}  status {doc['status']}\n")
    out.write(f"started   {local(started)} ({relative(started)})\n")
    out.write(f"completed {local(completed)}" + (f"  duration {format_duration(completed - started)}" if completed and started else "") + "\n")
    if error:
        out.write(f"error     {error}\n")
    out.write("context   " + json.dumps(doc["context"], ensure_ascii=False) + "\n")
    for t in doc["tasks"]:
        code = t["exit_code"] if t["exit_code"] is not None else "-"
        dur = format_duration(t["duration"]) if t["duration"] is not None else "-"
        out.write(f"\n== task {t['name']}: {t['status']} (exit {code}, {dur})\n")
        if t["output_tail"]:
            out.write(t["output_tail"].rstrip("\n") + "\n")

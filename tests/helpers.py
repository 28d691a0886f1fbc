"""Driving the scheduler by hand on an injected clock."""

from __future__ import annotations

import asyncio
import inspect
import textwrap

from trigctl.config import load_config
from trigctl.scheduler import Awaited, Scheduler
from trigctl.store.sqlite import SQLiteStore


def make_scheduler(config_path, now: float):
    cfg = load_config(config_path)
    store = SQLiteStore(cfg.state_location())
    sched = Scheduler(cfg, store)
    sched.load(now)
    return sched, store


async def _await(awaitable):
    return await awaitable


def drive(sched: Scheduler, now: float):
    """One tick: run every due poll inline and complete it. Returns the reports."""
    reports = []
    for poll in sched.tick(now):
        try:
            result, error = sched.execute(poll), None
            if inspect.isawaitable(result):
                result = Awaited(asyncio.run(_await(result)))
        except Exception as e:  # noqa: BLE001
            result, error = None, e
        report = sched.complete(poll, result, error, now)
        if report:
            reports.append(report)
    sched.flush(now, force=True)
    return reports


def workflow_yaml(tasks: str, trigger: str) -> str:
    """A triggers.yaml with one workflow `wf` of ``tasks`` (YAML list items) and one ``trigger``
    (a flow mapping)."""
    return textwrap.dedent("""
        version: 1
        workflows:
          wf:
            tasks:
        """) + textwrap.indent(textwrap.dedent(tasks).strip("\n"), "      ") + f"\ntriggers:\n  - {trigger}\n"

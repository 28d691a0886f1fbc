"""The foreground loop: owns the clock, the threads, signals, reload, crash recovery and shutdown."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from trigctl.config import Config, ConfigError, load_config
from trigctl.dispatch import Dispatcher
from trigctl.procs import kill_recorded_group
from trigctl.scheduler import Poll, PollReport, Scheduler
from trigctl.store.base import Store
from trigctl.workflows import WorkflowRunner

log = logging.getLogger("trigctl")

DB_WATCH_EVERY = 0.25  # seconds: how often `enable`/`disable`/`cancel` from other shells are looked for
MAX_RERUN_CHAIN = 3
MIN_WAIT = 0.002  # seconds: the loop's timer granularity
RESULT_LATENCY = 0.005  # seconds a finished poll may wait for a loop wake-up that is coming anyway
RESULTS_MAX_DEFER = 0.05  # seconds a finished poll may wait to be recorded while other polls are due  # a run interrupted this many times in a row is not rerun again


class Runner:
    def __init__(self, config: Config, store: Store, *, clock: Callable[[], float] = time.time,
                 only: set[str] | None = None, once: bool = False, grace: float = 30.0,
                 install_signals: bool = True, kill_grace: float = 5.0):
        self.config = config
        self.store = store
        self.clock = clock
        self.once = once
        self.grace = grace
        self.install_signals = install_signals
        self.scheduler = Scheduler(config, store, only=only)
        self.workflows = WorkflowRunner(config, store, clock, on_finished=self._run_finished, kill_grace=kill_grace)
        self._event = threading.Event()
        self.dispatcher = Dispatcher(self.scheduler.execute, self._post, on_idle=self._lane_idle)
        self._results: deque = deque()
        self._wakes: deque = deque()
        self._finished_runs: deque = deque()
        self._signals = 0
        self._reload_requested = False
        self._token = None
        self._last_watch = 0.0
        # for --once
        self.poll_errors = 0
        self.failed_runs = 0
        self._my_runs: set[int] = set()
        self._last_duplicate: dict[str, tuple] = {}
        self._pump_needed = True  # queued runs from before a restart start at once
        self._results_since: float | None = None
        self._wake_at = 0.0  # monotonic time the loop will wake by itself; 0 while it is awake

    # ---------------------------------------------------------------------------- thread bridges

    def _post(self, poll: Poll, result: Any, error: BaseException | None) -> None:
        self._results.append((poll, result, error))
        # While the fast lane has polls waiting, don't wake the loop for each result (it would
        # compete with the polls for the GIL); the lane wakes it when it runs dry. Nor when the
        # loop wakes within RESULT_LATENCY anyway.
        if not self.dispatcher.lane.backlog() and self._wake_at - time.monotonic() > RESULT_LATENCY:
            self._event.set()

    def _lane_idle(self, last_poll: Poll) -> None:
        if self._results and self._wake_at - time.monotonic() > RESULT_LATENCY:
            self._event.set()

    def _wake_trigger(self, name: str) -> None:
        self._wakes.append(name)
        self._event.set()

    def _run_finished(self, run_id: int, status: str, error: str | None) -> None:
        self._finished_runs.append((run_id, status, error))
        self._event.set()

    def _on_signal(self, signum, frame) -> None:
        if signum == signal.SIGHUP:
            self._reload_requested = True
        else:
            self._signals += 1
            if self._signals >= 2:
                self.workflows.cancel_all("cancelled")
        self._event.set()

    # ------------------------------------------------------------------------------------ recover

    def recover(self) -> None:
        """Runs that were running when a previous process died: kill leftovers, mark, maybe rerun."""
        now = self.clock()
        for run in self.store.active_runs():
            if run.status != "running":
                continue  # queued runs stay queued: the queue survives restarts
            for task in run.tasks:
                if task.get("pgid"):
                    if kill_recorded_group(task.get("pid"), task["pgid"], task.get("proc_start")):
                        log.warning("run %d: terminated task %s left over from the previous process", run.id, task["name"])
            self.store.finish_run(run.id, "interrupted", now, "interrupted: trigctl stopped while the run was active")
            tc = self.config.trigger(run.trigger_name)
            chain = self._chain_length(run.id)
            if tc is None or tc.on_interrupt != "rerun" or run.workflow != tc.workflow:
                self.emit("interrupted", trigger=run.trigger_name, run_id=run.id, action="marked")
                continue
            if chain >= MAX_RERUN_CHAIN:
                self.emit("interrupted", trigger=run.trigger_name, run_id=run.id,
                          action=f"not rerun: interrupted {chain} times in a row")
                continue
            res = self.store.enqueue_run(run.trigger_name, run.workflow, run.context, now, rerun_of=run.id,
                                         dedupe=run.dedupe, context_hash=run.context_hash, max_attempts=tc.max_attempts)
            self.emit("interrupted", trigger=run.trigger_name, run_id=run.id,
                      action=f"rerun as run {res.run_id}" if not res.suppressed else "key already active")

    def _chain_length(self, run_id: int) -> int:
        n, current = 0, self.store.get_run(run_id)
        while current is not None and n < MAX_RERUN_CHAIN + 1:
            n += 1
            if current.rerun_of is None:
                break
            current = self.store.get_run(current.rerun_of)
            if current is None or current.status != "interrupted":
                break
        return n

    # --------------------------------------------------------------------------------------- loop

    def run(self) -> int:
        self.store.lock_for_run()
        previous = {}
        if self.install_signals:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                previous[sig] = signal.signal(sig, self._on_signal)
        try:
            return self._run()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _run(self) -> int:
        self.recover()
        now = self.clock()
        self.scheduler.load(now)
        self.scheduler.start_triggers(self._wake_trigger)
        self._token = self.store.change_token()
        enabled = sum(1 for s in self.scheduler.slots.values() if s.enabled)
        self.emit("start", triggers=len(self.scheduler.slots), enabled=enabled, state=getattr(self.store, "path", ""),
                  pid=os.getpid())
        first = True
        try:
            while not self._signals:
                now = self.clock()
                self._step(now, force=self.once and first)
                first = False
                if self.once and self._once_done():
                    break
                # A floor on timer waits batches polls that fall due within a few ms of each other
                # into one tick: thousands of spread triggers cost hundreds of wake-ups a second,
                # not thousands. Events (results, file events, signals) still wake at once.
                wait = max(self._wait_for(self.clock()), MIN_WAIT)
                self._wake_at = time.monotonic() + wait
                self._event.wait(wait)
                self._wake_at = 0.0
                self._event.clear()
        finally:
            self._shutdown()
        if self.once:
            return 1 if (self.poll_errors or self.failed_runs) else 0
        return 0

    def _step(self, now: float, force: bool = False) -> None:
        sched = self.scheduler
        if self._reload_requested:
            self._reload_requested = False
            self.reload(now)
        while self._wakes:
            sched.wake(self._wakes.popleft(), now)
        if self._results and not self._defer_results(now):
            self._results_since = None
            while self._results:
                poll, result, error = self._results.popleft()
                report = sched.complete(poll, result, error, self.clock())
                if report:
                    self._report(report)
        for report in sched.expire(now):
            self._report(report)
        while self._finished_runs:
            run_id, status, error = self._finished_runs.popleft()
            self._pump_needed = True
            self.emit("run_finished", run_id=run_id, status=status, error=error)
            if run_id in self._my_runs and status != "succeeded":
                self.failed_runs += 1
        if now - self._last_watch >= DB_WATCH_EVERY:
            self._last_watch = now
            self._watch_state(now)
        if not (self.once and not force):
            sched.tick(now, force=force, submit=self._submit)
        if sched.alerts:
            self._pump_needed = True
        if self._pump_needed:
            self._pump_needed = False
            for run in self.workflows.pump():
                self.emit("run_started", run_id=run.id, trigger=run.trigger_name, workflow=run.workflow)
        sched.flush(now)
        self._my_runs.update(sched.alerts)
        sched.alerts.clear()

    def _submit(self, polls: list[Poll]) -> None:
        self.dispatcher.submit_many(polls, _is_blocking)

    def _defer_results(self, now: float) -> bool:
        """While the fast lane still has polls waiting, leave results for a moment: handling them
        competes for the GIL with the polls themselves, and lateness is what users feel."""
        if not self.dispatcher.lane.backlog():
            return False
        if self._results_since is None:
            self._results_since = now
        return now - self._results_since < RESULTS_MAX_DEFER

    def _watch_state(self, now: float) -> None:
        token = self.store.change_token()
        if token == self._token:
            return
        self._token = token
        rows = self.store.trigger_rows()
        for name, slot in self.scheduler.slots.items():
            row = rows.get(name)
            if row is None:
                continue
            want = slot.config.enabled if row.enabled is None else row.enabled
            if want != slot.enabled:
                self.scheduler.set_enabled(name, want, now)
                self.emit("enabled" if want else "disabled", trigger=name)
        for run_id in self.store.cancel_requested():
            if self.workflows.cancel(run_id):
                self.emit("cancelling", run_id=run_id)

    def _wait_for(self, now: float) -> float:
        candidates = [DB_WATCH_EVERY]
        for t in (self.scheduler.next_due(), self.scheduler.next_deadline()):
            if t is not None:
                candidates.append(t - now)
        lane = self.dispatcher.check()
        if lane is not None:
            candidates.append(lane)
        if self._results_since is not None:
            candidates.append(self._results_since + RESULTS_MAX_DEFER - now)
        return max(0.0, min(candidates))

    def _once_done(self) -> bool:
        if self.scheduler.busy() or self._results or self._finished_runs:
            return False
        if self.workflows.count():
            return False
        started = self.workflows.pump()
        for run in started:
            self.emit("run_started", run_id=run.id, trigger=run.trigger_name, workflow=run.workflow)
        return not started

    def _report(self, report: PollReport) -> None:
        if report.result == "error":
            self.poll_errors += 1
            self.emit("error", trigger=report.trigger, error=report.error)
            return
        for context, res in report.fires:
            if not res.suppressed:
                self._pump_needed = True
            if res.suppressed:
                # One line per blocking run, not one per poll: history counts the repeats.
                if self._last_duplicate.get(report.trigger) != (res.run_id, res.reason):
                    self._last_duplicate[report.trigger] = (res.run_id, res.reason)
                    self.emit("duplicate", trigger=report.trigger, blocked_by=res.run_id, reason=res.reason)
            else:
                self._my_runs.add(res.run_id)
                self.emit("fired", trigger=report.trigger, run_id=res.run_id,
                          context=self.config.redactor.scrub(context))

    def reload(self, now: float) -> None:
        try:
            new = load_config(self.config.path)
        except ConfigError as e:
            self.emit("reload_refused", error=str(e.issues[0]) + (f" (+{len(e.issues) - 1} more)" if len(e.issues) > 1 else ""))
            return
        self._pump_needed = True
        changes = self.scheduler.reload(new, now)
        self.scheduler.start_triggers(self._wake_trigger)
        self.config = new
        self.workflows.config = new
        self.emit("reloaded", changes=", ".join(changes) or "no changes")

    def _shutdown(self) -> None:
        self.emit("stopping", active_runs=self.workflows.count(), grace=self.grace)
        self.dispatcher.close()
        deadline = time.monotonic() + self.grace
        while self.workflows.count() and time.monotonic() < deadline and self._signals < 2:
            self._event.wait(max(0.0, min(0.5, deadline - time.monotonic())))
            self._event.clear()
        if self.workflows.count():
            self.workflows.cancel_all("cancelled")
            self.workflows.join(self.workflows.kill_grace + 5)
        while self._finished_runs:
            run_id, status, error = self._finished_runs.popleft()
            self.emit("run_finished", run_id=run_id, status=status, error=error)
            if run_id in self._my_runs and status != "succeeded":
                self.failed_runs += 1
        try:
            self.scheduler.flush(self.clock(), force=True)
        finally:
            self.scheduler.close()
            self.emit("stopped")

    # ---------------------------------------------------------------------------------------- log

    def emit(self, event: str, **fields: Any) -> None:
        log.info(event, extra={"trigctl_event": event, "trigctl_fields": fields})


def _is_blocking(poll: Poll) -> bool:
    impl = poll.slot.impl
    return impl is not None and impl.blocking


class EventFormatter(logging.Formatter):
    """One line per event on stderr: text for people, JSON for machines."""

    def __init__(self, fmt: str = "text"):
        super().__init__()
        self.json = fmt == "json"

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, tz=timezone.utc)
        event = getattr(record, "trigctl_event", None)
        fields = getattr(record, "trigctl_fields", {}) if event else {}
        if self.json:
            doc = {"ts": ts.isoformat().replace("+00:00", "Z"), "level": record.levelname.lower(),
                   "event": event or "log", **fields}
            if not event:
                doc["message"] = record.getMessage()
            return json.dumps(doc, default=str)
        stamp = ts.astimezone().strftime("%Y-%m-%d %H:%M:%S%z")
        if not event:
            return f"{stamp} {record.levelname.lower()} {record.getMessage()}"
        parts = " ".join(f"{k}={_text(v)}" for k, v in fields.items() if v is not None and v != "")
        return f"{stamp} {event} {parts}".rstrip()


def _text(v: Any) -> str:
    if isinstance(v, (dict, list)):
        return json.dumps(v, default=str)
    s = str(v)
    return json.dumps(s) if (" " in s or not s) else s

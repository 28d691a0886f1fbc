"""The foreground loop: owns the clock, the threads, signals, reload, crash recovery and shutdown."""

from __future__ import annotations

import gc
import inspect
import logging
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from trigctl.config import Config, ConfigError, load_config
from trigctl.counters import CounterWriter
from trigctl.dispatch import Dispatcher
from trigctl.durations import format_duration
from trigctl.events import (
    ClockStepped,
    ConfigReloaded,
    EventBus,
    LoopStarted,
    LoopStopped,
    LoopStopping,
    ReloadRefused,
    RunCancelling,
    RunFinished,
    RunInterrupted,
    RunQueued,
    TriggerDisabled,
    TriggerEnabled,
    TriggersLoaded,
    TriggerState,
)
from trigctl.observe.logs import BatchingHandler, EventFormatter, LogSubscriber
from trigctl.observe.logs import flush_logs as _flush_logs
from trigctl.procs import kill_recorded_group
from trigctl.scheduler import Poll, PollReport, Scheduler
from trigctl.store.base import StateError, StateLocked, Store
from trigctl.triggers.base import PollOutcome
from trigctl.workflows import WorkflowRunner

log = logging.getLogger("trigctl")

__all__ = ["BatchingHandler", "EventFormatter", "Runner"]  # the log classes' old home, for callers

DB_WATCH_EVERY = 0.25  # seconds: how often `enable`/`disable`/`cancel` from other shells are looked for
MAX_RERUN_CHAIN = 3
MIN_WAIT = 0.002  # seconds: the loop's timer granularity
RESULT_LATENCY = 0.005  # seconds a finished poll may wait for a loop wake-up that is coming anyway
HANDOFF_AFTER = 0.05  # seconds a Python trigger may hold the loop before the loop moves to a new thread
HANDOFF_CHECK = 0.025  # how often the watchdog looks
SHUTDOWN_DRAIN = 1.0  # seconds shutdown spends recording polls that returned before it
CLOCK_STEP = 1.0  # seconds the wall clock may move against the monotonic one before it counts as a step
GC_THRESHOLD = 50_000  # allocations between young-generation collections (Python's default: 700)


def _release_free_memory() -> None:
    """Give the memory freed after loading a big config back to the OS (glibc keeps it otherwise)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


_monotonic = time.monotonic  # bound once: read twice per inline poll


class _HandedOff(Exception):
    """Unwinds a loop thread whose call outlived HANDOFF_AFTER: another thread owns the loop now."""  # a run interrupted this many times in a row is not rerun again


class Runner:
    def __init__(self, config: Config, store: Store, *, clock: Callable[[], float] = time.time,
                 only: set[str] | None = None, once: bool = False, grace: float = 30.0,
                 install_signals: bool = True, kill_grace: float = 5.0,
                 monotonic: Callable[[], float] | None = None, bus: EventBus | None = None,
                 labels: tuple[str, ...] = ()):
        self.config = config
        self.labels = labels  # --label: with a shared state, which labelled triggers this process may lease
        # What happens is published on the bus; without one given, a bus whose one subscriber
        # writes today's log lines.
        if bus is None:
            bus = EventBus()
            LogSubscriber().attach(bus)
        self.bus = bus
        self.store = store
        self.clock = clock
        # Wall-clock steps are told apart from the passing of time by a monotonic clock. An
        # injected wall clock without one (a test's fake clock that jumps on purpose) is not watched.
        if monotonic is None and clock is time.time:
            monotonic = time.monotonic
        self.monotonic = monotonic
        self._clock_offset: float | None = None
        self.once = once
        self.grace = grace
        self.install_signals = install_signals
        # Skipped polls' counters are written on a thread of their own (trigctl.counters).
        self.scheduler = Scheduler(config, store, only=only, bus=bus, writer=CounterWriter(store))
        # Runs record through the same store (one connection, one lock). A second connection was
        # tried: writes from two connections of one process can stall each other for the busy
        # timeout (seen as a closed-loop benchmark stopping), so it waits for a writer thread.
        self.workflows = WorkflowRunner(config, store, clock, on_finished=self._run_finished,
                                        kill_grace=kill_grace, bus=bus)
        # A poll's fires start their runs in its own transaction (not after a signal: queued runs
        # stay queued for the next start).
        store.claim_room = lambda: (0 if self._stopping() else self.workflows.claim_room(), self.clock())
        self._event = threading.Event()
        self.dispatcher = Dispatcher(self._post)
        # The loop runs on an "owner" thread and calls Python triggers inline (~1 µs a dispatch).
        # If one call runs past HANDOFF_AFTER, the watchdog (the thread that called run()) makes
        # a new owner thread that carries on with the loop; the old one posts its late result and
        # exits. So a slow or hung callable never delays the others.
        self._handoff_lock = threading.Lock()
        self._owner: threading.Thread | None = None
        self._current: Poll | None = None  # the inline call under way (its monotonic start: called_at)
        self._done = threading.Event()
        self._exit_code = 0
        self._first_tick = True
        self.handoffs = 0
        self._results: deque = deque()
        self._wakes: deque = deque()
        self._finished_runs: deque[RunFinished] = deque()
        self._signals = 0
        self._reload_requested = False
        self._last_watch = 0.0
        # for --once
        self.poll_errors = 0
        self.failed_runs = 0
        self._my_runs: set[int] = set()
        self._pump_needed = True  # queued runs from before a restart start at once
        self._wake_at = 0.0  # monotonic time the loop will wake by itself; 0 while it is awake
        # A shared state (PostgreSQL): the lease keeper (trigctl.scaleout) takes this process's share of
        # the triggers; `loop_progress` (monotonic, set at each step) tells it the loop is not wedged.
        self.leases: Any = None
        self.loop_progress = time.monotonic()

    # ---------------------------------------------------------------------------- thread bridges

    def _post(self, poll: Poll, result: Any, error: BaseException | None) -> None:
        """A result from another thread (pool, event loop, a handed-off call)."""
        self._results.append((poll, result, error))
        # No wake-up when the loop wakes within RESULT_LATENCY anyway: thousands of results a
        # second cost hundreds of wake-ups, not thousands.
        if self._wake_at - time.monotonic() > RESULT_LATENCY:
            self._event.set()

    def _wake_trigger(self, name: str) -> None:
        self._wakes.append(name)
        self._event.set()

    def _run_finished(self, event: RunFinished) -> None:
        """On the run's worker thread: the loop publishes it (after the run's RunStarted)."""
        self._finished_runs.append(event)
        self._event.set()

    def _stopping(self) -> bool:
        return self._signals > 0

    def stop(self) -> None:
        """Stop as SIGTERM would (for callers that run the loop in a thread of their own)."""
        self._signals = max(self._signals, 1)
        self._event.set()

    def _on_signal(self, signum, frame) -> None:
        # Flags only: the handler runs on the main thread between any two bytecodes, possibly while
        # that thread holds a lock that real work (starting a kill thread, logging) would take.
        # The owner thread acts: it stops polling at the first signal; at the second its shutdown
        # stops waiting for runs and cancels them (see _shutdown).
        if signum == signal.SIGHUP:
            self._reload_requested = True
        else:
            self._signals += 1
        self._event.set()

    # ------------------------------------------------------------------------------------ recover

    def recover(self) -> None:
        """Runs that were running when a previous process died: kill leftovers, mark, maybe rerun."""
        now = self.clock()
        for run in self.store.active_runs():
            # The state lock makes this one process per state; this is the second line of defence:
            # a run whose owner is alive (not this process, same start time) is never interrupted.
            if run.status == "running" and self.store.owner_alive(run) and run.owner_pid != os.getpid():
                raise StateLocked(f"run {run.id} is still being run by pid {run.owner_pid}, which is alive; "
                                  "another `trigctl run` is using this state (stop it first)")
        # Queued runs stay queued (the queue survives restarts); only dead owners' runs are taken over.
        for run in self.store.orphaned_runs():
            if not run.tasks and self.store.requeue_unstarted(run.id):
                log.info("run %d: claimed but not started by the previous process; queued again", run.id)
                continue
            for task in run.tasks:
                if task.get("pgid"):
                    if kill_recorded_group(task.get("pid"), task["pgid"], task.get("proc_start")):
                        log.warning("run %d: terminated task %s left over from the previous process", run.id, task["name"])
            self.store.finish_run(run.id, "interrupted", now, "interrupted: trigctl stopped while the run was active",
                                  take_over=True)
            tc = self.config.trigger(run.trigger_name)
            chain = self._chain_length(run.id)
            if tc is None or tc.on_interrupt != "rerun" or run.workflow != tc.workflow:
                self.bus.publish(RunInterrupted(run.trigger_name, run.id, "marked", workflow=run.workflow))
                continue
            if chain >= MAX_RERUN_CHAIN:
                self.bus.publish(RunInterrupted(run.trigger_name, run.id, f"not rerun: interrupted {chain} times in a row",
                                                    workflow=run.workflow))
                continue
            res = self.store.enqueue_run(run.trigger_name, run.workflow, run.context, now, rerun_of=run.id,
                                         dedupe=run.dedupe, context_hash=run.context_hash, max_attempts=tc.max_attempts)
            if res.suppressed:  # the key is active again, or (dedupe: once) succeeded or given up
                self.bus.publish(RunInterrupted(run.trigger_name, run.id, f"not rerun: {res.reason}", workflow=run.workflow))
            else:
                self.bus.publish(RunInterrupted(run.trigger_name, run.id, f"rerun as run {res.run_id}", res.run_id,
                                                    run.workflow))
                if res.run_id is not None and self.bus.wants(RunQueued):
                    self.bus.publish(RunQueued(res.run_id, run.trigger_name, run.workflow, "rerun"))

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
        self.store.start_process(self.labels)
        previous = {}
        if self.install_signals:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                previous[sig] = signal.signal(sig, self._on_signal)
        try:
            return self._run()
        finally:
            if self.leases is not None:
                self.leases.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _run(self) -> int:
        if self.store.shared:
            self._start_leases()
        else:
            # One process per SQLite state: it holds every trigger of its file (also with --trigger:
            # recovery and alerts write for triggers it does not poll).
            self.store.acquire_triggers((t.name for t in self.config.triggers), self.clock())
            self.recover()
        now = self.clock()
        # The change feed's baseline before the state is read: an `enable`/`disable` committed while
        # the triggers load is seen at the first look, not lost.
        self.store.changes()
        self.scheduler.load(now)
        self._save_snapshot(self.config)
        self.scheduler.start_triggers(self._wake_trigger)
        self._publish_loaded(at_start=True)
        enabled = sum(1 for s in self.scheduler.slots.values() if s.enabled)
        self.bus.publish(LoopStarted(len(self.scheduler.slots), enabled, getattr(self.store, "path", ""), os.getpid()))
        # Everything loaded so far (config, slots, modules) lives as long as the loop: keep it out of
        # the cyclic collector's full scans, which at 20,000 triggers stall the loop for 100+ ms.
        # Per-poll objects are freed by reference counting; cycles among them are rare.
        gc.collect()
        _release_free_memory()
        gc.freeze()
        gc.set_threshold(GC_THRESHOLD, 20, 100)
        with self._handoff_lock:
            self._spawn_owner()
        # This thread is the watchdog; signal handlers run here too (they only set flags).
        while not self._done.wait(HANDOFF_CHECK):
            self._check_handoff()
        return self._exit_code

    def _publish_loaded(self, at_start: bool) -> None:
        """The triggers as loaded, for views (a walk over every trigger: only for a listener)."""
        if not self.bus.wants(TriggersLoaded):
            return
        states = tuple(
            TriggerState(name, s.config.type, s.config.workflow, s.enabled, s.due_at, s.stats.last_poll_at,
                         s.stats.last_result, self.scheduler.shown_reason(s.stats.last_reason),
                         s.stats.consecutive_errors)
            for name, s in self.scheduler.slots.items()
        )
        runs = tuple((r.id, r.trigger_name, r.status) for r in self.store.active_runs()) if at_start else None
        self.bus.publish(TriggersLoaded(states, self.config.max_concurrent_runs, runs))

    def _start_leases(self) -> None:
        """A shared state: the lease keeper's first round (this process's share of the triggers, dead
        processes' runs recovered) before the triggers load; then its thread keeps it up."""
        from trigctl.scaleout import LeaseKeeper

        self.store.sync_triggers(t.name for t in self.config.triggers)
        self.leases = LeaseKeeper(self, self.store, self.labels)  # type: ignore[arg-type]
        self.leases.start()

    def _save_snapshot(self, config: Config) -> None:
        from trigctl.config import trigger_summaries
        from trigctl.snapshot import config_fingerprint

        fingerprint = config_fingerprint(config.path)
        if fingerprint is not None and not self.store.has_config_snapshot(str(config.path), fingerprint):
            self.store.save_config_snapshot(str(config.path), fingerprint, trigger_summaries(config))

    def _spawn_owner(self) -> None:  # with _handoff_lock held
        owner = threading.Thread(target=self._owner_main, name="trigctl-loop", daemon=True)
        self._owner = owner
        owner.start()

    def _check_handoff(self) -> None:
        with self._handoff_lock:
            current = self._current
            if current is None or time.monotonic() - current.called_at < HANDOFF_AFTER:
                return
            self._current = None
            self.handoffs += 1
            log.debug("trigger %s: call running for %.2fs; the loop goes on without it",
                      current.slot.name, time.monotonic() - current.called_at)
            self._spawn_owner()

    def _owner_main(self) -> None:
        me = threading.current_thread()
        try:
            while not self._signals:
                now = self.clock()
                force = self.once and self._first_tick
                self._step(now, force=force)
                # Cleared only once the forced tick completed: if it was handed off, the next owner
                # repeats it (polls already in flight are skipped), so no trigger goes unpolled.
                self._first_tick = False
                _flush_logs()
                if self.once and self._once_done():
                    break
                # A floor on timer waits batches polls that fall due within a few ms of each other
                # into one tick: thousands of spread triggers cost hundreds of wake-ups a second,
                # not thousands. Events (results, file events, signals) still wake at once.
                wait = max(self._wait_for(self.clock()), MIN_WAIT)
                self._wake_at = time.monotonic() + wait
                if not self._results:  # a result posted while _wake_at was 0 did not wake us
                    self._event.wait(wait)
                self._wake_at = 0.0
                self._event.clear()
                if self._owner is not me:
                    return
        except _HandedOff:
            return
        except StateError as e:  # the state cannot be written (a full disk...): say why, stop cleanly
            log.error("%s; stopping", e)
            self._exit_code = 1
        except BaseException as e:
            log.error("the polling loop failed (an internal error); stopping", exc_info=e)
            self._exit_code = 1
        if self._owner is not me:
            return
        try:
            self._shutdown()
        finally:
            _flush_logs()
            if self.once and self._exit_code == 0:
                self._exit_code = 1 if (self.poll_errors or self.failed_runs) else 0
            self._done.set()

    def _execute_inline(self, poll: Poll, me: threading.Thread | None = None) -> None:
        """Call a Python trigger on the loop thread; give up ownership if the watchdog took it."""
        if me is None:
            me = threading.current_thread()
        poll.called_at = _monotonic()
        self._current = poll
        try:
            result, error = self.scheduler.execute(poll), None
        except BaseException as e:  # noqa: BLE001 - a user callable may raise anything
            result, error = None, e
        lock = self._handoff_lock
        lock.acquire()
        if self._current is poll:  # not another owner's call, started after a hand-off
            self._current = None
        still_owner = self._owner is me
        lock.release()
        if error is None and type(result) is not PollOutcome and inspect.isawaitable(result):
            self.dispatcher.run_awaitable(poll, result)
        else:
            self._results.append((poll, result, error))
        if not still_owner:
            self._event.set()  # the new owner records this late result
            raise _HandedOff

    def _check_clock(self, now: float) -> None:
        if self.monotonic is None:
            return
        offset = now - self.monotonic()
        previous, self._clock_offset = self._clock_offset, offset
        if previous is None:
            return
        delta = offset - previous
        if abs(delta) >= CLOCK_STEP:
            self.scheduler.clock_stepped(delta, now)
            self._last_watch += delta
            self.bus.publish(ClockStepped(delta))

    def _step(self, now: float, force: bool = False) -> None:
        sched = self.scheduler
        self.loop_progress = time.monotonic()
        if self.leases is not None:
            self.leases.apply(now)
        self._check_clock(now)
        if self._reload_requested:
            self._reload_requested = False
            self.reload(now)
        while self._wakes:
            sched.wake(self._wakes.popleft(), now)
        if not (self.once and not force):
            # Due polls first (lateness is what users feel), their bookkeeping after.
            # Thousands due at once: a signal is looked at between polls (before the next is taken).
            me = threading.current_thread()
            for poll in sched.iter_tick(now, force=force, stop=self._stopping):
                impl = poll.slot.impl
                if impl is not None and impl.blocking:
                    self.dispatcher.submit(poll)
                else:
                    self._execute_inline(poll, me)
        completed_at = self.clock()
        # The drain looks at signals too: under load, results arrive as fast as they are recorded.
        for report in sched.complete_all(self._results, completed_at, stop=self._stopping):
            self._report(report)
        expired = sched.expire(now)
        for report in expired:
            self._report(report)
        if expired:
            self.dispatcher.rebalance()
        while self._finished_runs:
            self._pump_needed = True
            self._publish_finished(self._finished_runs.popleft())
        if now - self._last_watch >= DB_WATCH_EVERY:
            self._last_watch = now
            self._watch_state(now)
        if sched.alerts:
            self._pump_needed = True
        if self._pump_needed:
            self._pump_needed = False
            self.workflows.pump(stop=self._stopping)  # publishes RunStarted
        sched.flush(now, stop=self._stopping, yield_to=self._polls_due)
        if self.once:  # only --once's exit code needs them; a long run must not keep every id
            self._my_runs.update(sched.alerts)
        sched.alerts.clear()

    def _watch_state(self, now: float) -> None:
        changes = self.store.changes()
        if changes is None:
            return
        for name, slot in self.scheduler.slots.items():
            if name not in changes.enabled:
                continue
            stored = changes.enabled[name]
            want = slot.config.enabled if stored is None else stored
            if want != slot.enabled:
                self.scheduler.set_enabled(name, want, now)
                self.bus.publish(TriggerEnabled(name, slot.due_at) if want else TriggerDisabled(name))
        if changes.cancel_requested:
            # A run its fire claimed (SQLite) is running in the state before the pump hands it to a
            # worker: handed over now, so that a cancel request for it finds it.
            self.workflows.pump(stop=self._stopping)
        for run_id in changes.cancel_requested:
            if self.workflows.cancel(run_id):
                self.bus.publish(RunCancelling(run_id))

    def _polls_due(self) -> bool:
        """Polls have come due (a long flush lets them go first)."""
        due = self.scheduler.next_due()
        return due is not None and due <= self.clock()

    def _wait_for(self, now: float) -> float:
        candidates = [DB_WATCH_EVERY]
        if self.scheduler.flush_pending():
            return 0.0
        for t in (self.scheduler.next_due(), self.scheduler.next_deadline()):
            if t is not None:
                candidates.append(t - now)
        if self._results or self._wakes or self._finished_runs:
            candidates.append(0.0)
        return max(0.0, min(candidates))

    def _once_done(self) -> bool:
        if self.scheduler.busy() or self._results or self._finished_runs:
            return False
        if self.workflows.count():
            return False
        return not self.workflows.pump()

    def _report(self, report: PollReport) -> None:
        """The loop's own bookkeeping of a completed poll (the scheduler published its events)."""
        if report.result == "error":
            self.poll_errors += 1
            return
        for _context, res in report.fires:
            if not res.suppressed:
                self._pump_needed = True
                if self.once and res.run_id is not None:
                    self._my_runs.add(res.run_id)

    def _publish_finished(self, event: RunFinished) -> None:
        self.bus.publish(event)
        if event.run_id in self._my_runs and event.status != "succeeded":
            self.failed_runs += 1

    def reload(self, now: float) -> None:
        try:
            new = load_config(self.config.path)
        except ConfigError as e:
            self.bus.publish(ReloadRefused(str(e.issues[0]) + (f" (+{len(e.issues) - 1} more)" if len(e.issues) > 1 else "")))
            return
        self._pump_needed = True
        changes = self.scheduler.reload(new, now)
        self._save_snapshot(new)
        self.scheduler.start_triggers(self._wake_trigger)
        self.config = new
        self.workflows.config = new
        self._publish_loaded(at_start=False)
        self.bus.publish(ConfigReloaded(tuple(changes)))

    def _shutdown(self) -> None:
        self.bus.publish(LoopStopping(self.workflows.count(), self.grace))
        self.dispatcher.close()
        if self._exit_code == 0:  # not after a state error: those writes would fail again
            self._record_returned_polls(SHUTDOWN_DRAIN)
        deadline = time.monotonic() + self.grace
        if self._signals == 1 and self.workflows.count() and self.grace > 0:
            log.warning("%d running run(s) get --grace %s to finish; Ctrl-C again (or a second SIGTERM) stops them now",
                        self.workflows.count(), format_duration(self.grace))
            _flush_logs()  # at once: the user is waiting to learn what the Ctrl-C did
        while self.workflows.count() and time.monotonic() < deadline and self._signals < 2:
            self._event.wait(max(0.0, min(0.5, deadline - time.monotonic())))
            self._event.clear()
        if self.workflows.count() and self._signals >= 2:
            log.warning("second signal: stopping %d run(s) now", self.workflows.count())
            _flush_logs()
        if self.workflows.count():
            self.workflows.cancel_all("cancelled")
            if not self.workflows.join(self.workflows.kill_grace + 5):
                # A task that cannot be interrupted (an http: call waiting for its timeout): the run
                # is recorded cancelled now, as promised, rather than left `running` for a rerun.
                for run in self.workflows.active_runs():
                    if self.store.finish_run(run.id, "cancelled", self.clock(), "cancelled at shutdown"):
                        self._finished_runs.append(RunFinished(run.id, run.trigger_name, run.workflow, "cancelled",
                                                               None, "cancelled at shutdown"))
        while self._finished_runs:
            self._publish_finished(self._finished_runs.popleft())
        try:
            self.scheduler.flush(self.clock(), force=True)
        except StateError as e:
            if self._exit_code == 0:  # else the loop already stopped for it, with its one error line
                log.error("%s; counters of the last second are not saved", e)
                self._exit_code = 1
        finally:
            self.scheduler.close()
            util = sys.modules.get("trigctl.triggers._util")
            if util is not None:  # commands that ignore SIGTERM are SIGKILLed before we exit, not orphaned
                util.wait_for_stops()
            self.bus.publish(LoopStopped())

    def _record_returned_polls(self, budget: float) -> None:
        """At shutdown, record the polls that have already returned, for at most ``budget`` seconds
        (their work was done: a fire not recorded would be offered again at the next start)."""
        deadline = time.monotonic() + budget
        try:
            while self._results and time.monotonic() < deadline and self._signals < 2:
                poll, result, error = self._results.popleft()
                report = self.scheduler.complete(poll, result, error, self.clock())
                if report:
                    self._report(report)
        except StateError as e:
            log.error("%s; the last polls' results are not saved", e)
        self._results.clear()

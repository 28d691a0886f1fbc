"""Several `trigctl run` processes on one PostgreSQL state: the lease keeper.

One thread per process ("trigctl-leases"), on a connection of its own, every third of the lease:

1. **Heartbeat.** If another process has declared this one dead (its heartbeat was older than its
   lease: it stalled, or lost the database), it stops its runs' process groups and exits non-zero
   with one line: its triggers and runs already belong to others.
2. **Renew** every lease held, in one statement, but only while the loop advances: a loop that has
   not stepped for half a lease is wedged, and gives its triggers up instead of keeping them.
3. **Spread.** The fair share is ``ceil(candidates / live processes)``. Below it, free triggers are
   taken (``SKIP LOCKED``); above it plus a slack of 10 % (at least one), or above it while another
   live process is below it minus the slack, the excess is released for the others to take, and not
   taken back for ORPHAN_AFTER rounds. Free triggers that stayed free a whole round (nobody else may
   take them: labels, or another YAML) are taken beyond the share and do not count against it. A
   trigger is never taken from a live holder: no lease ping-pongs.
4. **Reap** dead processes (:meth:`PostgresStore.reap_dead`): in one transaction, a process whose
   heartbeat is past its lease is marked dead, its running runs end ``interrupted`` (and are rerun
   by ``on_interrupt``) and its leases are freed.

The keeper never touches the scheduler: it posts what changed, and the loop's owner thread applies
it at its next step (:meth:`LeaseKeeper.apply`), as it does with every other result. The loop also
stops polling by itself when the local lease deadline (the renewal's send time plus the lease,
never later than the database's expiry) passes without a renewal, and every write about a trigger
is fenced by holder and token in the database, so a stalled holder that resumes records nothing.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from trigctl.events import LeaseGained, LeaseLost, RunInterrupted, RunQueued
from trigctl.procs import kill_recorded_group
from trigctl.store.base import RunRow, StateError

if TYPE_CHECKING:
    from trigctl.runner import Runner
    from trigctl.store.postgres import PostgresStore

log = logging.getLogger("trigctl")

EXIT_DECLARED_DEAD = 3
MAX_RERUN_CHAIN = 3
SLACK = 0.10  # a process may hold this much above its fair share before it gives triggers up
ORPHAN_AFTER = 3  # rounds a trigger this process released stays for the others before it may take it back


class LeaseKeeper:
    def __init__(self, runner: Runner, store: PostgresStore, labels: tuple[str, ...] = ()):
        self.runner = runner
        self.store = store
        self.labels = frozenset(labels)
        self.period = store.lease_seconds / 3
        self.stall_limit = store.lease_seconds / 2
        self._changes: deque[tuple[str, Any]] = deque()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._free_last_round: set[str] = set()
        self._orphans: set[str] = set()  # taken beyond the share because nobody else took them
        self._released: dict[str, int] = {}  # released by this process to spread: round of release
        self._stalled = False
        self._failing = False
        self._wait = self.period
        self._started = 0.0
        self._before_load = False
        self.rounds = 0

    # ------------------------------------------------------------------------ which triggers

    def candidates(self) -> list[str]:
        """The triggers this process may lease: its own YAML's (or --trigger's), whose labels it carries."""
        runner = self.runner
        only = runner.scheduler.only
        return [tc.name for tc in runner.config.triggers
                if (only is None or tc.name in only) and set(tc.labels) <= self.labels]

    # ------------------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """The first round on the caller's thread (the loop starts with its share), then the thread."""
        self._started = time.monotonic()
        self._before_load = True  # this round's share is read by the load itself
        try:
            self._round()
        finally:
            self._before_load = False
        self._thread = threading.Thread(target=self._main, name="trigctl-leases", daemon=True)
        self._thread.start()
        if self.store.run_on_any:
            threading.Thread(target=self._listen, name="trigctl-notify", daemon=True).start()

    def _listen(self) -> None:
        """`run_on: any` runs: wake the loop as soon as another process queues one (LISTEN/NOTIFY);
        each round also makes the loop look (the backstop, if a notification is missed)."""
        delay = 0.1
        while not self._stop.is_set():
            try:
                for _ in self.store.notifications("trigctl_runs", self._stop):
                    self.runner._pump_needed = True
                    self.runner._event.set()
                delay = 0.1
            except StateError:
                self._stop.wait(delay)
                delay = min(delay * 2, self.period)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.period + 5)

    def _main(self) -> None:
        while not self._stop.wait(self._next_wait()):
            try:
                self._round()
                if self._failing:
                    self._failing = False
            except StateError as e:
                if not self._failing:  # said once; the loop stops polling by itself when its leases lapse
                    log.warning("leases: %s; retrying", e)
                    self._failing = True
            except Exception as e:  # noqa: BLE001 - the keeper must outlive a surprise; the loop's leases lapse
                log.error("leases: internal error (%s: %s); retrying", type(e).__name__, e)

    def _next_wait(self) -> float:
        return self._wait

    # ---------------------------------------------------------------------------------- round

    def _round(self) -> None:
        store = self.store
        alive, by = store.heartbeat()
        if not alive:
            self._declared_dead(by)
            return
        self.rounds += 1
        before = set(store.leases())
        progress = self.runner.loop_progress
        # (Before the loop's first step, loading thousands of triggers is not a stall.)
        stalled = progress > self._started and time.monotonic() - progress > self.stall_limit
        if stalled:
            if not self._stalled:
                log.warning("the polling loop has not advanced for %.1fs: giving up its %d trigger leases",
                            time.monotonic() - self.runner.loop_progress, len(before))
            self._stalled = True
            store.release_triggers(before)
            if before:
                self._post("lost", (sorted(before), "the loop is not advancing"))
            return
        if self._stalled:
            log.warning("the polling loop advances again: taking triggers")
            self._stalled = False
        held = set(store.renew_leases(time.time()))
        if before - held:
            self._post("lost", (sorted(before - held), "another process holds it"))
        # Held in the database but dropped here (a renewal came too late, the database was away):
        # still ours, nobody wrote meanwhile; taken up again from the stored state.
        regained = held - before
        # Dead processes first: their leases are freed and they no longer count in the share.
        reaped = store.reap_dead(self._policy)
        if reaped:
            self._post("reaped", reaped)
        config = self.runner.config
        store.run_on_any = frozenset(w.name for w in config.workflows.values() if w.run_on == "any")
        if store.run_on_any or store.claim_failed:
            self.runner._pump_needed = True  # the backstop of LISTEN/NOTIFY, or a claim the database missed
        candidates = self.candidates()
        wanted = set(candidates)
        counts = store.live_lease_counts()  # live process -> leases it holds (this one included)
        me = store.process.id if store.process else ""
        share = math.ceil(len(candidates) / max(1, len(counts)))
        slack = max(1, math.ceil(share * SLACK))
        mine = held & wanted
        self._orphans &= held
        shared = mine - self._orphans  # orphans (nobody else took them) do not count against the share
        starving = any(n < share - slack for pid, n in counts.items() if pid != me)
        gained: set[str] = set(regained)
        if len(mine) < share:
            gained |= set(store.acquire_triggers(sorted(wanted - held), time.time(), limit=share - len(mine))) - held
        elif len(shared) > share + slack or (len(shared) > share and starving):
            # Above the share plus the slack, or above the share while another process is below it
            # minus the slack: the excess goes (to whoever is below; never taken back at once).
            excess = sorted(shared)[share:]
            store.release_triggers(excess)
            self._post("lost", (excess, "released to spread the triggers"))
            for name in excess:
                self._released[name] = self.rounds
        self._released = {n: r for n, r in self._released.items() if self.rounds - r <= ORPHAN_AFTER}
        free = set(store.free_triggers(sorted(wanted - held - gained)))
        # Free for a whole round, and not just released by this process: nobody else takes them.
        orphans = (free & self._free_last_round) - set(self._released)
        if orphans:
            taken = set(store.acquire_triggers(sorted(orphans), time.time())) - held
            self._orphans |= taken
            gained |= taken
        self._free_last_round = free - orphans
        if gained and self._before_load:
            self._post("loaded", sorted(gained))  # the load reads their rows; only the events are due
        elif gained:
            names = sorted(gained)
            self._post("gained", (store.trigger_rows(names), store.load_all_kv(names)))
        # The next round at the latest when another process's lease on one of our candidates lapses:
        # a process that stopped renewing (killed, stalled) is replaced within its lease, not a round later.
        soonest = store.next_foreign_expiry(candidates)
        self._wait = self.period if soonest is None else min(self.period, max(0.05, soonest + 0.05))

    def _policy(self, run: RunRow, chain: int) -> tuple[bool, int]:
        """on_interrupt of a dead process's run: rerun it (with its trigger's max_attempts) or mark it."""
        tc = self.runner.config.trigger(run.trigger_name)
        if tc is None or tc.on_interrupt != "rerun" or run.workflow != tc.workflow or chain >= MAX_RERUN_CHAIN:
            return False, 3
        return True, tc.max_attempts

    def _post(self, kind: str, payload: Any) -> None:
        self._changes.append((kind, payload))
        self.runner._event.set()

    # ------------------------------------------------------------------ on the loop's thread

    def apply(self, now: float) -> None:
        """Called by the loop's owner at each step: apply what the keeper posted, and stop polling
        when the local lease deadline passed without a renewal."""
        sched = self.runner.scheduler
        store = self.store
        deadline = store.lease_deadline()
        if deadline is not None and time.monotonic() >= deadline:
            lost = store.drop_all_leases_locally()
            self._publish_lost(sched.leases_lost(lost), "not renewed in time")
            if lost:
                log.warning("leases: not renewed in time (%d triggers); polling stops until they are taken again", len(lost))
            deadline = None
        sched.lease_deadline = deadline
        while self._changes:
            kind, payload = self._changes.popleft()
            if kind == "lost":
                names, reason = payload
                self._publish_lost(sched.leases_lost(names), reason)
            elif kind == "gained":
                rows, kv = payload
                held = {n: r for n, r in rows.items() if store.holds(n)}
                sched.leases_gained(held, kv, now)
                self._publish_gained(held)
                self.runner._pump_needed = True  # queued runs of a dead process's triggers are ours now
            elif kind == "loaded":
                self._publish_gained([n for n in payload if store.holds(n)])
            elif kind == "reaped":
                self._publish_reaped(payload)
        if self._changes:
            self.runner._event.set()

    def _publish_gained(self, names: Iterable[str]) -> None:
        bus = self.runner.bus
        if bus.wants(LeaseGained):
            leases = self.store.leases()
            for name in names:
                if name in leases:
                    bus.publish(LeaseGained(name, leases[name].token))

    def _publish_lost(self, names: list[str], reason: str) -> None:
        bus = self.runner.bus
        if names and bus.wants(LeaseLost):
            for name in names:
                bus.publish(LeaseLost(name, reason))

    def _publish_reaped(self, reaped) -> None:
        bus = self.runner.bus
        host = socket.gethostname()
        for r in reaped:
            if r.host == host:  # leftovers of a process that died on this host
                for task in r.tasks:
                    if task.get("pgid") and kill_recorded_group(task.get("pid"), task["pgid"], task.get("proc_start")):
                        log.warning("run %d: terminated task %s left over by a dead process", r.run_id, task["name"])
            log.warning("process %s is dead (no heartbeat for over its lease): its run %d is interrupted",
                        r.process[:12], r.run_id)
            bus.publish(RunInterrupted(r.trigger, r.run_id, r.action, r.rerun_id))
            if r.rerun_id is not None and bus.wants(RunQueued):
                bus.publish(RunQueued(r.rerun_id, r.trigger, r.workflow, "rerun"))
        self.runner._pump_needed = True

    # ------------------------------------------------------------------------- declared dead

    def _declared_dead(self, by: str | None) -> None:
        """Another process found this one dead and took its triggers and runs: stop every run's
        process group and exit at once, non-zero (a service manager restarts it)."""
        runner = self.runner
        me = self.store.process.id if self.store.process else "?"
        try:
            runner.workflows.cancel_all("interrupted")
            runner.workflows.join(runner.workflows.kill_grace + 2)
        finally:
            sys.stderr.write(
                f"trigctl: this process ({me[:12]}) was declared dead by process {(by or '?')[:12]} (no heartbeat "
                f"within its {self.store.lease_seconds:g}s lease): its triggers and runs belong to others now; "
                "its runs were stopped; exiting\n")
            sys.stderr.flush()
            os._exit(EXIT_DECLARED_DEAD)

"""The scheduler: a heap of due times, polls in flight, backoff, dedupe and recording.

It holds no threads and reads no clock of its own: :meth:`Scheduler.tick` takes ``now`` and returns
the polls that are due, :meth:`Scheduler.complete` takes a poll's result. The real loop
(:mod:`trigctl.runner`) owns the clock and the threads; tests drive ticks directly.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import logging
import operator
import random
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from trigctl.config import Config, TriggerConfig
from trigctl.counters import CounterWriter
from trigctl.events import (
    DuplicateSuppressed,
    ErrorStreakEnded,
    ErrorStreakStarted,
    EventBus,
    FireRecorded,
    PollCompleted,
    PollFailed,
    RunQueued,
)
from trigctl.store.base import (
    FireRequest,
    FireResult,
    LeaseLost,
    PollStats,
    StateError,
    Store,
    TriggerRow,
    dedupe_hash,
    safe_text,
)
from trigctl.triggers.base import PollContext, PollOutcome, TriggerType, trigger_class
from trigctl.workflows import iso

log = logging.getLogger("trigctl.scheduler")

BUCKET_WIDTH = 0.001  # seconds: due times within one such bucket share one entry of the heap
_PER_SECOND = 1 / BUCKET_WIDTH
_DUE_AT = operator.attrgetter("due_at")

MAX_MESSAGE = 20_000  # characters of an error message kept before masking (4,000 are stored)
FLUSH_BATCH = 2000  # counters per transaction: under load, a signal is looked at between batches
STOP_CHECK_EVERY = 64  # polls started (or completed) between two looks at stop(): ~0.5 ms of them
YIELDING_FLUSH_BATCH = 250  # counters per transaction when due polls may cut in (a few ms each)
STATS_FLUSH_EVERY = 1.0  # seconds: skipped polls reach the state file in batches, at most this late...
STATS_FLUSH_ROWS = 2_000  # ...for up to this many changed triggers; more wait longer, so that about this
STATS_FLUSH_MAX = 5.0  # many counter rows a second are written, but never longer than this


def flush_period(changed: int) -> float:
    """Seconds between two writes of skipped polls' counters when ``changed`` triggers have new ones:
    1 s up to 2,000, then rising so that ~2,000 rows a second are written (5 s at 10,000 and more).
    Writing every row every second cost a third of the loop's CPU at 10,000 triggers."""
    return min(STATS_FLUSH_MAX, max(STATS_FLUSH_EVERY, changed / STATS_FLUSH_ROWS))
# Kept in the trigger's key/value state, so they survive a restart. The scheduler's own keys start
# with "/", which no trigger type's key does (a file trigger's keys are relative paths), and a poll
# does not see them.
OWN_KEY_PREFIX = "/trigctl/"
STREAK_SINCE_KEY = OWN_KEY_PREFIX + "error_since"  # wall-clock time of the error streak's first error
LAST_FIRE_KEY = OWN_KEY_PREFIX + "last_fire"  # wall-clock time of the trigger's last fire (cooldown)


@dataclass(slots=True, eq=False)  # thousands of these: no per-instance __dict__
class Slot:
    """One configured trigger, as the scheduler tracks it."""

    config: TriggerConfig
    name: str  # config.name (read per poll: a field, not a property)
    impl: TriggerType | None
    load_error: str | None
    enabled: bool
    due_at: float  # grid_at plus this poll's jitter
    stats: PollStats
    grid_at: float = 0.0  # the un-jittered slot on the interval grid
    cursor: str | None = None
    kv: dict[str, Any] = field(default_factory=dict)
    #: the scheduler's own persisted keys (OWN_KEY_PREFIX: streak start, last fire), kept out of `kv`
    #: so that the trigger never sees them and no poll has to copy its state to hide them
    own: dict[str, Any] = field(default_factory=dict)
    in_flight: Poll | None = None
    waiting: bool = False  # due while a poll was in flight: poll again as soon as it returns
    error_alerted: bool = False
    #: the key of the bucket that holds the slot's live entry in the queue of due times (see
    #: Scheduler._push); any other entry of it is dead. None: it has no live entry
    queued: int | None = None
    started: bool = False
    skip_report: PollReport | None = None  # the last skipped poll's report, reused (see _success)
    #: this process holds the trigger's lease (always with SQLite; with a shared state, while the
    #: lease keeper says so: trigctl.scaleout)
    held: bool = True


@dataclass(slots=True, eq=False)
class Poll:
    slot: Slot
    due_at: float
    started_at: float
    deadline: float
    timed_out: bool = False
    stale: bool = False  # started under a lease since lost: its result is dropped, not recorded
    called_at: float = 0.0  # monotonic: when an inline call of it began (the runner's hand-off watch)


@dataclass(frozen=True, slots=True)
class Awaited:
    """What an awaitable returned by a trigger's poll() resolved to, on the asyncio thread: the
    trigger's ``finish()`` turns it into the poll's outcome (on the loop, in :meth:`Scheduler.complete`)."""

    value: Any


@dataclass(slots=True)
class PollReport:
    """What one completed poll did, for logs and `run --once`."""

    trigger: str
    result: str  # fired | skipped | duplicate | error
    fires: list[tuple[dict[str, Any], FireResult]] = field(default_factory=list)
    error: str | None = None
    late: bool = False
    reason: str = ""  # why it skipped
    stored_reason: str = ""  # the reason as it is stored and published: secrets masked, cut short


_NO_FIRES: list = []  # a skipped poll's report.fires: one shared empty list (never appended to)


def _poll_context(poll: Poll) -> PollContext:
    slot = poll.slot
    return PollContext(poll.due_at, poll.started_at, slot.cursor, slot.kv, slot.config.timeout)


def execute_poll(poll: Poll) -> Any:
    """Call the trigger once. Thread-agnostic: it reads the slot, never writes scheduler state."""
    slot = poll.slot
    impl = slot.impl
    if impl is None:
        raise RuntimeError(slot.load_error or "trigger is not set up")
    bare = impl.poll_bare
    if bare is not None:
        return bare()
    return impl.poll(_poll_context(poll))


class Scheduler:
    def __init__(self, config: Config, store: Store, *, rng: random.Random | None = None,
                 only: set[str] | None = None, bus: EventBus | None = None, writer: CounterWriter | None = None):
        self.config = config
        self.store = store
        #: writes the skipped polls' counters on a thread of its own (the loop's); None: flush() writes them
        self.writer = writer
        #: a flush under way with a writer: snapshots taken so far, handed over together when complete
        self._snapshot: dict[str, PollStats] = {}
        self.bus = bus if bus is not None else EventBus()
        self.rng = rng or random.Random()
        self.only = only
        self.slots: dict[str, Slot] = {}
        # The queue of due times: slots in buckets of due times one BUCKET_WIDTH wide, a heap of the
        # buckets' keys (int(due / BUCKET_WIDTH)), each key once. A slot's entry is live while its
        # `queued` is the key of its bucket; re-pushing it or setting `queued` to None makes it dead.
        # Thousands of triggers due in one millisecond (all at once, or 50,000 spread over a second)
        # cost one heap operation per millisecond, not two per poll on a heap of every trigger.
        self._keys: list[int] = []
        self._buckets: dict[int, list[Slot]] = {}
        #: the due entries of one bucket (key `_ready_key`) taken out, in due order, to be started
        #: one by one (each is live while its slot's `queued` is still that key)
        self._ready: deque[Slot] = deque()
        self._ready_key: int | None = None
        #: next_due()'s last answer: (bucket, entries looked at, the slot with the earliest due time, it)
        self._earliest: tuple[list[Slot], int, Slot, float] | None = None
        self._last_flush = 0.0
        self.alerts: list[int] = []  # runs started by on_error and on_recover
        # Polls in flight by timeout: each deque is in start order, so also in deadline order.
        self._deadlines: dict[float, deque[Poll]] = {}
        self._dirty: dict[str, PollStats] = {}
        self._flushing = False  # a flush started and not finished (cut short for due polls)
        #: with a shared state, the monotonic time the leases lapse unless renewed: no poll starts past it
        self.lease_deadline: float | None = None

    # ------------------------------------------------------------------------------------- set-up

    def load(self, now: float) -> None:
        self.store.sync_triggers(t.name for t in self.config.triggers)
        if not self.store.shared:  # a shared state's leases come from the lease keeper (trigctl.scaleout)
            holds = self.store.holds
            missing = [t.name for t in self.config.triggers if not holds(t.name)]  # the runner took them all
            if missing:
                self.store.acquire_triggers(missing, now)
        rows = self.store.trigger_rows()
        kv = self.store.load_all_kv()
        for tc in self.config.triggers:
            if self.only is not None and tc.name not in self.only:
                continue
            slot = self._add(tc, rows.get(tc.name), now, kv.get(tc.name, {}))
            self._dirty[tc.name] = slot.stats  # `list` shows the next poll before the first one

    def _make_impl(self, tc: TriggerConfig) -> tuple[TriggerType | None, str | None]:
        cls = trigger_class(tc.type)
        if cls is None:
            return None, f"trigger type {tc.type!r} is not available"
        try:
            return cls(tc, self.config.base_dir), None
        except BaseException as e:  # noqa: BLE001 - the user's class constructor may raise anything, SystemExit too
            return None, f"cannot set up trigger: {_describe(e)}"

    def _add(self, tc: TriggerConfig, row, now: float, kv: dict[str, Any] | None = None) -> Slot:
        impl, err = self._make_impl(tc)
        enabled = tc.enabled if row is None or row.enabled is None else row.enabled
        due = self._start_due(tc, impl, row, now)
        slot = Slot(
            config=tc, name=tc.name, impl=impl, load_error=err, enabled=enabled, due_at=due, grid_at=due, stats=PollStats(tc.name),
            held=not self.store.shared or self.store.holds(tc.name),
        )
        self._load_row(slot, row, self.store.load_kv(tc.name) if kv is None else kv)
        self.slots[tc.name] = slot
        self._push(slot)
        return slot

    def _start_due(self, tc: TriggerConfig, impl: TriggerType | None, row: TriggerRow | None, now: float) -> float:
        """The first due time of a trigger taken up (at start, or a lease gained) from its stored row."""
        stored_due = row.next_poll_at if row else None
        if impl is not None and impl.has_own_schedule:
            # A past stored slot is kept (downtime is caught up); an edited schedule that comes due
            # sooner than the stored slot wins.
            own = impl.next_due(None, now)
            due = own if stored_due is None else min(stored_due, own)
        elif stored_due is None:
            due = now + self._jitter(tc)
        else:
            # After downtime the stored due time is in the past: poll once now, not a burst. An
            # interval shortened while stopped applies at start as on SIGHUP: the earlier of the
            # stored due time and now + the new interval (+ its jitter: a spread is kept), or, in an
            # error streak, now + the streak's backoff under the new settings (a backoff survives).
            errors = row.consecutive_errors if row else 0
            bound = self._backoff(tc, impl, errors) if errors else tc.interval + tc.jitter
            due = min(stored_due, now + bound)
        return due

    @staticmethod
    def _load_row(slot: Slot, row: TriggerRow | None, kv: dict[str, Any]) -> None:
        """A slot's persisted state (cursor, key/value state, counters) from the stored row."""
        slot.cursor = row.cursor if row else None
        slot.kv = kv
        slot.own = {}
        slot.error_alerted = row.error_alerted if row else False
        for key in (STREAK_SINCE_KEY, LAST_FIRE_KEY):  # the scheduler's, not the trigger's
            if key in slot.kv:
                slot.own[key] = slot.kv.pop(key)
        if row:
            slot.stats.last_poll_at, slot.stats.last_result = row.last_poll_at, row.last_result
            slot.stats.consecutive_errors = row.consecutive_errors
            slot.stats.last_reason = row.last_reason
        slot.stats.next_poll_at = slot.due_at

    # ------------------------------------------------------------------ leases (a shared state only)

    def leases_gained(self, rows: dict[str, TriggerRow], kv: dict[str, dict[str, Any]], now: float) -> list[str]:
        """Triggers whose leases this process took: their state is read again (another process
        polled them since), and they are polled from their stored due time. Returns those taken up."""
        taken = []
        if self.writer is not None and self.writer.busy:
            self.writer.wait()  # counters written under an earlier lease land before the state is read
        for name, row in rows.items():
            slot = self.slots.get(name)
            if slot is None or slot.held:
                continue
            slot.held = True
            slot.enabled = slot.config.enabled if row.enabled is None else row.enabled
            slot.stats = PollStats(name)
            slot.due_at = slot.grid_at = self._start_due(slot.config, slot.impl, row, now)
            self._load_row(slot, row, kv.get(name, {}))
            self._push(slot)
            taken.append(name)
        return taken

    def leases_lost(self, names) -> list[str]:
        """Triggers this process no longer holds: not polled, and a poll in flight is dropped when it
        returns (its trigger's state may have moved on in another process)."""
        lost = []
        for name in names:
            slot = self.slots.get(name)
            if slot is None or not slot.held:
                continue
            slot.held = False
            slot.queued = None  # its queue entries are dead
            if slot.in_flight is not None:
                slot.in_flight.stale = True
            slot.waiting = False
            self._dirty.pop(name, None)
            self._snapshot.pop(name, None)
            lost.append(name)
        return lost

    def one_off_poll(self, name: str, now: float) -> Poll:
        """A poll of trigger ``name`` due and started at ``now``, for a caller that runs it once
        and records nothing (`trigctl poll`): its slot is set up from the stored row as at start.
        The caller runs it (:meth:`execute`) and closes ``poll.slot.impl``."""
        tc = self.config.trigger(name)
        if tc is None:
            raise KeyError(name)
        slot = self._add(tc, self.store.trigger_rows().get(name), now)
        return Poll(slot, now, now, now + tc.timeout)

    def reload(self, config: Config, now: float) -> list[str]:
        """Apply a new config without touching active runs. State follows trigger names."""
        old = self.slots
        self.config = config
        self.store.sync_triggers(t.name for t in config.triggers)
        if not self.store.shared:
            self.store.acquire_triggers((t.name for t in config.triggers), now)
        rows = self.store.trigger_rows()
        changes = []
        new_slots: dict[str, Slot] = {}
        for tc in config.triggers:
            if self.only is not None and tc.name not in self.only:
                continue
            prev = old.get(tc.name)
            if prev is not None and prev.config == tc:
                new_slots[tc.name] = prev
                continue
            if prev is not None:
                prev.queued = None  # its queue entries are dead: the new slot has its own
                if prev.impl is not None:
                    _close(prev.impl)
            slot = self._add(tc, rows.get(tc.name), now)
            if prev is not None:
                slot.in_flight, slot.waiting = prev.in_flight, prev.waiting
                if prev.in_flight is not None:
                    prev.in_flight.slot = slot  # its completion and timeout apply to the live slot
                slot.stats = prev.stats
                # The next poll is the earlier of the stored one and now + the new interval.
                if slot.impl is None or not slot.impl.has_own_schedule:
                    slot.due_at = slot.grid_at = min(prev.due_at, now + tc.interval)
                slot.stats.next_poll_at = slot.due_at
                changes.append(f"changed {tc.name}")
            else:
                changes.append(f"added {tc.name}")
            self._dirty[tc.name] = slot.stats  # `list` shows the new next poll before that poll
            new_slots[tc.name] = slot
            self._push(slot)
        self.store.release_triggers(name for name in old if name not in new_slots)
        for name, slot in old.items():
            if name not in new_slots:
                slot.queued = None
                if slot.impl is not None:
                    _close(slot.impl)
                changes.append(f"removed {name}")
        self.slots = new_slots
        return changes

    def start_triggers(self, wake: Callable[[str], None]) -> None:
        for slot in self.slots.values():
            if slot.impl is not None and not slot.started:
                slot.started = True
                try:
                    slot.impl.start(functools.partial(wake, slot.name))
                except Exception as e:
                    log.warning("trigger %s: cannot start watching (%s); polling only", slot.name, e)

    def close(self) -> None:
        for slot in self.slots.values():
            if slot.impl is not None:
                _close(slot.impl)
        if self.writer is not None:
            self.writer.close(timeout=5.0)

    # ------------------------------------------------------------------------------------ the heap

    def _jitter(self, tc: TriggerConfig) -> float:
        return tc.jitter * self.rng.random() if tc.jitter > 0 else 0.0  # rng.uniform(0, jitter)

    def _push(self, slot: Slot) -> None:
        """Queue ``slot`` at its due time (any earlier entry of it is dead from now on)."""
        key = slot.queued = int(slot.due_at * _PER_SECOND)
        bucket = self._buckets.get(key)
        if bucket is None:
            self._buckets[key] = [slot]
            heapq.heappush(self._keys, key)
        else:
            bucket.append(slot)

    def _clear_queue(self) -> None:
        """No slot is queued (each is pushed again, or when its poll in flight returns)."""
        self._keys.clear()
        self._buckets.clear()
        self._ready.clear()
        self._ready_key = None
        self._earliest = None

    def _take(self, now: float, now_key: int) -> bool:
        """Move the due entries of the earliest bucket into ``_ready``, in due order (equal due times
        in the order they were pushed). False if none is due at ``now``."""
        keys = self._keys
        while keys and keys[0] <= now_key:
            key = keys[0]
            bucket = self._buckets[key]
            if key < now_key:  # the whole bucket is due
                heapq.heappop(keys)
                del self._buckets[key]
            else:  # the bucket of `now`: its entries due later stay in it
                due = [s for s in bucket if s.due_at <= now]
                if not due:
                    return False
                if len(due) < len(bucket):
                    self._buckets[key] = [s for s in bucket if s.due_at > now]
                else:
                    heapq.heappop(keys)
                    del self._buckets[key]
                bucket = due
            if len(bucket) > 1:
                bucket.sort(key=_DUE_AT)
            self._ready.extend(bucket)
            self._ready_key = key
            return True
        return False

    def next_due(self) -> float | None:
        ready, key = self._ready, self._ready_key
        while ready:
            if ready[0].queued == key:
                return ready[0].due_at  # (taken out in due order)
            ready.popleft()
        keys, buckets = self._keys, self._buckets
        while keys:
            key = keys[0]
            bucket = buckets[key]
            # The earliest bucket's live minimum, remembered: entries are only appended to a bucket,
            # so while that entry is live with the same due time only the ones added since are
            # looked at (a flush asks between its batches; a bucket may hold 50,000).
            seen = self._earliest
            start, best_slot = 0, None
            if seen is not None and seen[0] is bucket and seen[2].queued == key and seen[2].due_at == seen[3]:
                start, best_slot = seen[1], seen[2]
            best = best_slot.due_at if best_slot is not None else None
            for i in range(start, len(bucket)):
                slot = bucket[i]
                if slot.queued == key and (best is None or slot.due_at < best):
                    best, best_slot = slot.due_at, slot
            if best_slot is not None and best is not None:
                self._earliest = (bucket, len(bucket), best_slot, best)
                return best
            heapq.heappop(keys)  # only dead entries
            del buckets[key]
        self._earliest = None
        return None

    def wake(self, name: str, now: float) -> None:
        """A watch event: due now (events coalesce), without skipping an error backoff."""
        slot = self.slots.get(name)
        if slot is None or not slot.enabled:
            return
        if slot.stats.consecutive_errors:
            return  # a backing-off trigger keeps its backoff
        if slot.in_flight is not None:
            slot.waiting = True
            return
        if slot.due_at > now:
            slot.due_at = now  # the grid (slot.grid_at) is not moved by an event
            self._push(slot)

    def set_enabled(self, name: str, enabled: bool, now: float) -> None:
        slot = self.slots.get(name)
        if slot is None or slot.enabled == enabled:
            return
        slot.enabled = enabled
        if enabled:
            impl = slot.impl
            if impl is not None and impl.has_own_schedule:
                updates = impl.resumed(now, slot.kv)  # slots that passed while disabled are skipped
                if updates:
                    self.store.update_kv(slot.name, updates)
                    slot.kv.update(updates)
                slot.due_at = slot.grid_at = impl.next_due(None, now)
            else:
                slot.due_at = slot.grid_at = min(max(slot.due_at, now), now + slot.config.interval)
            slot.stats.next_poll_at = slot.due_at
            self._dirty[name] = slot.stats  # `list` shows the new next poll at the next flush, not after a poll
            self._push(slot)

    def clock_stepped(self, delta: float, now: float) -> None:
        """The wall clock jumped by ``delta`` seconds (the monotonic clock did not).

        Interval cadence follows the monotonic clock: every interval due time and poll deadline
        moves with the step, so a step back does not stall those triggers and a step forward does
        not make them all due at once. Schedules follow the wall clock: after a step forward a
        missed slot fires once (or every missed slot, with catch_up), as after downtime; after a
        step back the schedule goes on from the new time."""
        for slot in self.slots.values():
            impl = slot.impl
            if impl is not None and impl.has_own_schedule:
                if delta < 0:
                    updates = impl.clock_stepped_back(now, slot.kv)
                    if updates and slot.held:
                        try:
                            self.store.update_kv(slot.name, updates)
                        except LeaseLost:
                            self.leases_lost([slot.name])
                        slot.kv.update(updates)
                    slot.due_at = slot.grid_at = impl.next_due(None, now)
            else:
                slot.due_at += delta
                slot.grid_at += delta
            slot.stats.next_poll_at = slot.due_at
            self._dirty[slot.name] = slot.stats
        for poll in self._polls_in_flight():
            poll.deadline += delta
            poll.started_at += delta
            impl = poll.slot.impl
            if impl is None or not impl.has_own_schedule:
                poll.due_at += delta
        self._last_flush += delta
        self._clear_queue()
        for slot in self.slots.values():
            if slot.in_flight is None:  # one in flight is pushed when it returns (no extra poll)
                self._push(slot)

    def tick(self, now: float, force: bool = False) -> list[Poll]:
        """Pop every due trigger and return the polls to start. ``force``: all enabled ones, now."""
        return list(self.iter_tick(now, force))

    def iter_tick(self, now: float, force: bool = False, stop: Callable[[], bool] | None = None) -> Iterator[Poll]:
        """Like tick(), lazily: each poll is popped just before it is started, so a poll that hangs
        leaves the rest in the heap for whichever thread carries on. ``stop()`` true (a signal) ends
        it before the next poll is marked in flight (shutting down: the rest is not polled)."""
        if force:
            yield from self._start_all(now, stop)
            return
        # The hot path (10,000 polls due at once: every 0.1 µs here is 1 ms of the last one's
        # lateness): one loop, locals only. Each slot is taken from `_ready` just before it is
        # started, so a new owner thread (a hand-off) carries on with the rest.
        ready = self._ready
        popleft = ready.popleft
        now_key = int(now * _PER_SECOND)
        key = self._ready_key
        deadlines = self._deadlines
        lease_deadline = self.lease_deadline
        last_timeout: float | None = None
        queue: deque[Poll] = deque()  # replaced at the first poll (timeout differs from None)
        countdown = 1  # stop() before the first poll, then every STOP_CHECK_EVERY (a call per poll cost 2 %)
        while True:
            if not ready:
                if not self._take(now, now_key):
                    return
                key = self._ready_key
            slot = popleft()
            if slot.queued != key:  # re-pushed since, removed, or its lease lost
                continue
            slot.queued = None
            countdown -= 1
            if not countdown:
                countdown = STOP_CHECK_EVERY
                if stop is not None and stop():
                    self._push(slot)  # (not polled: still due)
                    return
            if not slot.enabled or not slot.held:
                continue
            if lease_deadline is not None and time.monotonic() >= lease_deadline:
                self._push(slot)  # still due: polled once the leases are renewed
                return  # the leases lapse: nothing more is polled until they are renewed
            if slot.in_flight is not None:
                slot.waiting = True
                continue
            timeout = slot.config.timeout
            poll = Poll(slot, slot.due_at, now, now + timeout)
            slot.in_flight = poll
            if timeout != last_timeout:
                found = deadlines.get(timeout)
                if found is None:
                    found = deadlines[timeout] = deque()
                queue, last_timeout = found, timeout
            queue.append(poll)
            yield poll

    def _start_all(self, now: float, stop: Callable[[], bool] | None) -> Iterator[Poll]:
        """Every enabled trigger, now (``--once``'s first tick)."""
        candidates = list(self.slots.values())
        self._clear_queue()
        lease_deadline = self.lease_deadline
        for slot in candidates:
            if stop is not None and stop():
                return
            if not slot.enabled or not slot.held:
                continue
            if lease_deadline is not None and time.monotonic() >= lease_deadline:
                return  # the leases lapse: nothing more is polled until they are renewed
            if slot.in_flight is not None:
                slot.waiting = True
                continue
            timeout = slot.config.timeout
            poll = Poll(slot, now, now, now + timeout)
            slot.in_flight = poll
            queue = self._deadlines.get(timeout)
            if queue is None:
                queue = self._deadlines[timeout] = deque()
            queue.append(poll)
            yield poll

    #: Run one poll, on whatever thread the runner chose (execute_poll, with no frame of its own:
    #: the hot path).
    execute = staticmethod(execute_poll)

    # --------------------------------------------------------------------------------- completion

    def expire(self, now: float) -> list[PollReport]:
        """Polls past their timeout become errors now; the call itself is left to return."""
        reports = []
        for queue in self._deadlines.values():
            while queue:  # (every completed poll passes here once: one look at it, then it is dropped)
                poll = queue[0]
                slot = poll.slot
                if slot.in_flight is not poll or poll.timed_out:  # completed, or expired already
                    queue.popleft()
                    continue
                if poll.deadline > now:
                    break
                queue.popleft()
                if not poll.stale and self.slots.get(slot.name) is slot:
                    poll.timed_out = True
                    try:
                        report = self._error(slot, poll, f"poll timed out after {slot.config.timeout:g}s", now)
                    except LeaseLost:
                        self.leases_lost([slot.name])
                        continue
                    reports.append(report)
                    if self.bus.wants(PollCompleted):
                        self._completed(poll, report, now)
        return reports

    def next_deadline(self) -> float | None:
        best = None
        for queue in self._deadlines.values():
            while queue and (queue[0].slot.in_flight is not queue[0] or queue[0].timed_out):
                queue.popleft()  # completed or already expired: drop lazily
            if queue and (best is None or queue[0].deadline < best):
                best = queue[0].deadline
        return best

    def busy(self) -> bool:
        """A poll is in flight that has not timed out."""
        return any(not p.timed_out for p in self._polls_in_flight())

    def _polls_in_flight(self) -> Iterator[Poll]:
        for slot in self.slots.values():
            if slot.in_flight is not None:
                yield slot.in_flight

    def complete_all(self, results: deque[tuple[Poll, Any, BaseException | None]], now: float,
                     stop: Callable[[], bool] | None = None) -> list[PollReport]:
        """:meth:`complete` for each ``(poll, result, error)`` taken from the left of ``results``, until
        it is empty or ``stop()``. Returns the reports other than skips (a skip needs nothing more
        from the loop). A skip that changes nothing but counters, the common case by far, is
        completed here in one loop over locals: with 10,000 polls a second, each 0.1 µs is 1 ms."""
        reports: list[PollReport] = []
        slots, pop, skipped = self.slots, results.popleft, self._skipped
        published = self.bus.wants(PollCompleted)
        countdown = 1  # stop() before the first result, then every STOP_CHECK_EVERY
        while results:
            countdown -= 1
            if not countdown:
                countdown = STOP_CHECK_EVERY
                if stop is not None and stop():
                    break
            poll, result, error = pop()
            slot = poll.slot
            if (error is None and type(result) is PollOutcome and not result.fires and not result.state_updates
                    and result.cursor is None and slot.in_flight is poll and not poll.timed_out and not poll.stale
                    and not slot.error_alerted and slot.stats.consecutive_errors == 0
                    and slots.get(slot.name) is slot):  # complete()'s short way, with no frame of its own
                slot.in_flight = None
                report = skipped(slot, poll, result.skip_reason, now)
                if published:
                    self._completed(poll, report, now)
                continue
            report_or_none = self.complete(poll, result, error, now)
            if report_or_none is not None and report_or_none.result != "skipped":
                reports.append(report_or_none)
        return reports

    def complete(self, poll: Poll, result: Any, error: BaseException | None, now: float) -> PollReport | None:
        slot = poll.slot
        if self.slots.get(slot.name) is not slot:  # removed by a reload while in flight
            return None
        if slot.in_flight is poll:
            slot.in_flight = None
        if poll.timed_out or poll.stale:
            if not poll.stale:
                log.info("trigger %s: a timed-out poll returned after %.1fs; result dropped", slot.name, now - poll.started_at)
            self._after_inflight(slot, now)
            return None
        try:
            if (error is None and type(result) is PollOutcome and not result.fires and not result.state_updates
                    and result.cursor is None and not slot.error_alerted and slot.stats.consecutive_errors == 0):
                report = self._skipped(slot, poll, result.skip_reason, now)  # most polls: the short way
                if self.bus.wants(PollCompleted):
                    self._completed(poll, report, now)
                return report
            return self._complete(slot, poll, result, error, now)
        except LeaseLost:  # the lease moved while the poll ran: nothing was recorded, another process polls it
            self.leases_lost([slot.name])
            self._after_inflight(slot, now)
            return None

    def _complete(self, slot: Slot, poll: Poll, result: Any, error: BaseException | None, now: float) -> PollReport | None:
        outcome: PollOutcome | None = None
        message = ""
        if error is None:
            try:
                if type(result) is Awaited:
                    result = slot.impl.finish(result.value) if slot.impl else result.value
                if not isinstance(result, PollOutcome):
                    raise TypeError(f"trigger returned {type(result).__name__}, not a poll outcome")
                outcome = result
            except BaseException as e:  # noqa: BLE001 - a user's value may raise anything when read
                error = e
        if error is None and outcome is not None:
            try:
                report = self._success(slot, poll, outcome, now)
            except StateError:  # LeaseLost too: nothing was written
                raise  # the state cannot be written at all (a full disk): the loop stops, says why
            except Exception as e:  # noqa: BLE001 - whatever a trigger returned, it is that trigger's error
                log.debug("trigger %s: its result could not be recorded", slot.name, exc_info=True)
                error = e
                message = f"its result could not be recorded: {_describe(e)}"
        elif error is not None:
            message = _describe(error)
        if error is not None:
            report = self._error(slot, poll, message, now)
        self._after_inflight(slot, now)
        if self.bus.wants(PollCompleted):  # one per poll: built only for a listener
            self._completed(poll, report, now)
        return report

    def _completed(self, poll: Poll, report: PollReport, now: float) -> None:
        # The reason as it is stored (masked, cut short): events carry what history shows.
        self.bus.publish(PollCompleted(report.trigger, poll.due_at, poll.started_at, now - poll.started_at,
                                       report.result, report.stored_reason, report.error, poll.slot.due_at))

    def _after_inflight(self, slot: Slot, now: float) -> None:
        if slot.waiting:
            slot.waiting = False
            if slot.stats.consecutive_errors == 0:  # due (or woken) while in flight: go again now
                slot.due_at = min(slot.due_at, now)
        self._push(slot)

    def _next_due(self, slot: Slot, poll: Poll, now: float) -> float:
        tc = slot.config
        grid = slot.grid_at
        # On its grid and not late by an interval (from its own due time: with a jitter near the
        # interval, a poll drawn late in its slot may end after the next slot began, and that slot
        # is still due), the common case: first (the hot path).
        if grid <= now < poll.due_at + tc.interval:
            impl = slot.impl
            if impl is None or not impl.has_own_schedule:
                nxt = slot.grid_at = grid + tc.interval
                jitter = tc.jitter
                # jitter * random() is rng.uniform(0, jitter), without its Python frame
                return nxt + jitter * self.rng.random() if jitter > 0 else nxt
        impl = slot.impl
        if impl is not None and impl.has_own_schedule:
            return impl.next_due(poll.due_at, now)
        if grid > now:  # polled before its slot (a watch event woke it): the grid stays where it is
            return grid + self._jitter(tc)
        # late by more than an interval: skip the missed slots, stay on the grid
        missed = int((now - grid) // tc.interval)
        nxt = slot.grid_at = grid + (missed + 1) * tc.interval
        return nxt + self._jitter(tc)

    def _success(self, slot: Slot, poll: Poll, outcome: PollOutcome, now: float) -> PollReport:
        tc = slot.config
        stats = slot.stats
        errors_before = stats.consecutive_errors
        stats.polls += 1
        stats.last_poll_at = now
        stats.consecutive_errors = 0
        slot.due_at = self._next_due(slot, poll, now)
        stats.next_poll_at = slot.due_at
        if tc.cooldown > 0:
            outcome = self.apply_cooldown(slot, outcome, now)
        since = self._recovered(slot, errors_before, now) if errors_before else None
        if not outcome.fires:
            report = self._skip_report(slot, outcome.skip_reason)
            stats.last_reason = report.stored_reason or None
            stats.last_result = "skipped"
            self._dirty[tc.name] = stats
            if outcome.state_updates or outcome.cursor is not None or slot.error_alerted:
                # State that must survive (a cursor, a file forgotten) is written now, with no fire.
                self._record(slot, [], outcome, now)
        else:
            stats.last_reason = None
            results = self._record(slot, outcome.fires, outcome, now)
            fired = any(not r.suppressed for r in results)
            if fired and tc.cooldown > 0:
                self.store.update_kv(tc.name, {LAST_FIRE_KEY: now})
                slot.own[LAST_FIRE_KEY] = now
            report = PollReport(tc.name, "fired" if fired else "duplicate", list(zip(outcome.fires, results)))
        if errors_before and self.bus.wants(ErrorStreakEnded):
            self.bus.publish(ErrorStreakEnded(tc.name, errors_before, since, errors_before >= (tc.on_error_after or 3)))
        return report

    def _skipped(self, slot: Slot, poll: Poll, reason: str, now: float) -> PollReport:
        """What _success and _after_inflight do for a skip that changes no state, of a trigger not in
        an error streak (no cooldown applies, no streak ends, nothing is recorded but the counters):
        the slot is queued at its next due time. The one place for it: complete() and the hot loop
        of complete_all() call it, so each 0.1 µs here is 1 ms at 10,000 polls a second."""
        stats = slot.stats
        stats.polls += 1
        stats.last_poll_at = now
        slot.due_at = stats.next_poll_at = due = self._next_due(slot, poll, now)
        report = slot.skip_report
        if report is None or (report.reason is not reason and report.reason != reason):
            report = self._skip_report(slot, reason)
        stats.last_reason = report.stored_reason or None
        stats.last_result = "skipped"
        self._dirty[slot.name] = stats
        if slot.waiting:  # due (or woken) while in flight: go again now
            slot.waiting = False
            slot.due_at = min(due, now)
        self._push(slot)
        return report

    def _skip_report(self, slot: Slot, reason: str) -> PollReport:
        report = slot.skip_report
        if report is None or (report.reason is not reason and report.reason != reason):
            # One report per trigger while its reason stays the same (a shared outcome's): reports
            # are read, never changed, so a skipped poll need not build one, nor mask its reason.
            # (_skipped makes the same test before it calls this: most skips need no call.)
            report = slot.skip_report = PollReport(slot.config.name, "skipped", _NO_FIRES, None, False, reason,
                                                   self.shown_reason(reason) or "")
        return report

    @staticmethod
    def apply_cooldown(slot: Slot, outcome: PollOutcome, now: float) -> PollOutcome:
        """``outcome``, or, within the trigger's cooldown after its last fire, a skip with the reason
        "cooldown" (`trigctl poll` shows the same). The held-back fires' own state (a cursor,
        fire_state) is not applied, so what they would have consumed is offered again afterwards."""
        cooldown = slot.config.cooldown
        if not outcome.fires or cooldown <= 0:
            return outcome
        last = slot.own.get(LAST_FIRE_KEY)
        if not isinstance(last, (int, float)) or not 0 <= now - last < cooldown:
            return outcome  # (a wall clock stepped back before the last fire ends the cooldown)
        return PollOutcome(skip_reason="cooldown", state_updates=outcome.state_updates)

    def _recovered(self, slot: Slot, errors: int, now: float) -> float | None:
        """A successful poll after ``errors`` errors in a row: on_recover, if the streak reached
        on_error.after (default 3); the streak's start is forgotten (and returned)."""
        tc = slot.config
        since = slot.own.get(STREAK_SINCE_KEY)
        if not isinstance(since, (int, float)):
            since = None
        after = tc.on_error_after or 3
        if tc.on_recover and errors >= after:
            ctx = {"trigger": tc.name, "consecutive_errors": errors,
                   "since": iso(since), "recovered_at": iso(now)}
            run_id = self.store.enqueue_run(tc.name, tc.on_recover, ctx, now).run_id
            if run_id is not None:
                self.alerts.append(run_id)
                if self.bus.wants(RunQueued):
                    self.bus.publish(RunQueued(run_id, tc.name, tc.on_recover, "recover"))
            log.warning("trigger %s: recovered after %d errors; started %s (run %s)", tc.name, errors, tc.on_recover,
                        run_id)
        if STREAK_SINCE_KEY in slot.own:
            self.store.update_kv(tc.name, {STREAK_SINCE_KEY: None})
            slot.own.pop(STREAK_SINCE_KEY, None)
        return since

    def fire_requests(self, slot: Slot, contexts: list[dict[str, Any]]) -> list[FireRequest]:
        tc = slot.config
        keys = tc.dedupe_key
        if keys is None and slot.impl is not None:
            keys = slot.impl.default_dedupe_key
        redact = self.config.redactor.scrub
        return [
            FireRequest(context=redact(ctx), context_hash=dedupe_hash(tc.name, ctx, keys), dedupe=tc.dedupe,
                        max_attempts=tc.max_attempts)
            for ctx in contexts
        ]

    def _record(self, slot: Slot, contexts: list[dict[str, Any]], outcome: PollOutcome, now: float) -> list[FireResult]:
        stats = slot.stats
        requests = self.fire_requests(slot, contexts)
        fire_state = outcome.fire_state
        if fire_state is not None:
            if len(fire_state) != len(requests):
                raise ValueError("fire_state must have one entry per fire")
            for req, st in zip(requests, fire_state):
                req.state = st
        if contexts:
            stats.last_result = "fired"
        self._counters_written(slot)
        results = self.store.record_fires(slot.name, slot.config.workflow, requests, stats, now, outcome.cursor,
                                          outcome.state_updates)
        if contexts and all(r.suppressed for r in results):
            stats.last_result = "duplicate"
            stats.last_reason = results[0].reason or None
            self.store.flush_stats([_result_only(stats)])
        slot.error_alerted = False
        # The store applied the same: the cursor and each fire's state, unless a fire was deferred.
        deferred = False
        updates = dict(outcome.state_updates)
        for req, res in zip(requests, results):
            if res.deferred:
                deferred = True
            elif req.state:
                updates.update(req.state)
        if outcome.cursor is not None and not deferred:
            slot.cursor = outcome.cursor
        for k, v in updates.items():
            if v is None:
                slot.kv.pop(k, None)
            else:
                slot.kv[k] = v
        self._dirty.pop(slot.name, None)
        if contexts:
            self._publish_fires(slot, requests, results)
        return results

    def _publish_fires(self, slot: Slot, requests: list[FireRequest], results: list[FireResult]) -> None:
        bus = self.bus
        fired, duplicate, queued = bus.wants(FireRecorded), bus.wants(DuplicateSuppressed), bus.wants(RunQueued)
        if not (fired or duplicate or queued):
            return
        name, workflow = slot.name, slot.config.workflow
        for req, res in zip(requests, results):
            if res.suppressed:
                if duplicate:
                    bus.publish(DuplicateSuppressed(name, res.run_id, res.reason))
                continue
            if fired:
                bus.publish(FireRecorded(name, res.run_id, req.context))  # redacted, as recorded
            if queued and res.run_id is not None:
                bus.publish(RunQueued(res.run_id, name, workflow, "fire"))

    def _error(self, slot: Slot, poll: Poll, message: str, now: float) -> PollReport:
        tc = slot.config
        stats = slot.stats
        # Readable whatever the trigger raised: lone surrogates escaped, a megabyte of text cut short.
        message = safe_text(self.config.redactor.text(safe_text(message, 20_000) or ""), 4000) or ""
        stats.polls += 1
        stats.last_poll_at = now
        stats.last_result = "error"
        stats.consecutive_errors += 1
        n = stats.consecutive_errors
        backoff = self._backoff(tc, slot.impl, n)
        slot.due_at = slot.grid_at = max(poll.due_at + backoff, now)
        stats.next_poll_at = slot.due_at
        self._counters_written(slot)
        self.store.record_error(tc.name, message, stats, now)
        self._dirty.pop(tc.name, None)
        since = slot.own.get(STREAK_SINCE_KEY)
        if n == 1 or not isinstance(since, (int, float)):
            since = now if n == 1 else None  # a streak from before this version: its start is unknown
            if since is not None:
                self.store.update_kv(tc.name, {STREAK_SINCE_KEY: since})
                slot.own[STREAK_SINCE_KEY] = since
        if tc.on_error_workflow and n >= (tc.on_error_after or 3) and not slot.error_alerted:
            slot.error_alerted = True
            self.store.set_error_alerted(tc.name, True)
            ctx = {"trigger": tc.name, "error": message, "consecutive_errors": n,
                   "since": iso(since) if since is not None else None}
            run_id = self.store.enqueue_run(tc.name, tc.on_error_workflow, ctx, now).run_id
            if run_id is not None:
                self.alerts.append(run_id)
                if self.bus.wants(RunQueued):
                    self.bus.publish(RunQueued(run_id, tc.name, tc.on_error_workflow, "alert"))
            log.warning("trigger %s: %d errors in a row; started %s (run %d)", tc.name, n, tc.on_error_workflow, run_id)
        bus = self.bus
        if n == 1 and bus.wants(ErrorStreakStarted):
            bus.publish(ErrorStreakStarted(tc.name, message))
        if bus.wants(PollFailed):
            bus.publish(PollFailed(tc.name, message, n))
        return PollReport(tc.name, "error", error=message)

    @staticmethod
    def _backoff(tc: TriggerConfig, impl: TriggerType | None, errors: int) -> float:
        """The wait after ``errors`` consecutive errors: interval x 2^n, capped at max_backoff (never
        below the interval)."""
        cap = max(tc.max_backoff, tc.interval)
        base = tc.interval if not (impl and impl.has_own_schedule) else max(tc.interval, 1.0)
        return min(base * (2 ** min(errors, 40)), cap)

    def shown_reason(self, reason: str | None) -> str | None:
        """A skip reason as it is stored: secrets masked, cut to 4,000 characters."""
        return self.config.redactor.text(reason[:4000]) if reason else reason

    def flush_pending(self) -> bool:
        """A flush was cut short to let due polls go first: the loop should carry on with it now."""
        return self._flushing and bool(self._dirty)

    def flush(self, now: float, force: bool = False, stop: Callable[[], bool] | None = None,
              yield_to: Callable[[], bool] | None = None) -> None:
        """Write the skipped polls' counters, at most every :func:`flush_period` seconds, in batches of
        FLUSH_BATCH; between batches ``stop()`` may end it early (the rest is written next time).

        ``yield_to()`` true between batches (polls have come due) ends it early too, but the flush
        stays pending (:meth:`flush_pending`) and the next call goes on with it at once.

        With a :class:`CounterWriter`, the loop only takes snapshots of the counters (batch by
        batch, as above), and hands them over together once all are taken (the store writes them
        grouped by row); the writer's thread writes them. ``force`` (shutdown) waits until they are
        written. Without one, the batches are written here."""
        writer = self.writer
        if not self._flushing:
            if not force and now - self._last_flush < flush_period(len(self._dirty)):
                return
            self._last_flush = now
            self._flushing = True
        batch = FLUSH_BATCH if yield_to is None else YIELDING_FLUSH_BATCH
        first = True
        while self._dirty:
            # One batch at least per call: a loop that is always behind still writes its counters.
            if not first and yield_to is not None and yield_to():
                return
            first = False
            if len(self._dirty) <= batch:
                dirty = list(self._dirty.values())
                self._dirty.clear()
            else:
                dirty = [self._dirty.pop(name) for name in list(itertools.islice(self._dirty, batch))]
            if writer is None:
                self.store.flush_stats(dirty)
                for st in dirty:
                    st.polls = 0
            else:
                snapshot = self._snapshot
                for st in dirty:
                    name = st.name
                    taken = snapshot.get(name)  # taken earlier in this flush (polled again since)
                    snapshot[name] = PollStats(name, st.last_poll_at, st.last_result, st.next_poll_at,
                                               st.polls + (taken.polls if taken else 0), st.consecutive_errors,
                                               st.last_reason)
                    st.polls = 0
            if stop is not None and stop():
                self._flushing = False
                return
        self._flushing = False
        if writer is not None:
            if self._snapshot:
                snapshots = list(self._snapshot.values())
                self._snapshot.clear()
                writer.submit(snapshots)
            if force:
                writer.wait()

    def _counters_written(self, slot: Slot) -> None:
        """A write of ``slot``'s counters is about to be made on the loop (a fire's, an error's): a
        snapshot of them taken earlier must not land after it. One being written is waited for; one
        not handed over yet is dropped, its poll count carried into the write."""
        writer = self.writer
        if writer is None:
            return
        taken = self._snapshot.pop(slot.name, None)
        if taken is not None:
            slot.stats.polls += taken.polls
        if writer.busy:
            writer.wait()


def _result_only(stats: PollStats) -> PollStats:
    return PollStats(stats.name, stats.last_poll_at, stats.last_result, stats.next_poll_at, 0, stats.consecutive_errors,
                     stats.last_reason)


def describe_error(error: BaseException) -> str:
    """A poll's error as it is recorded and shown: "TypeError: ...", a PollError's message alone."""
    return _describe(error)


def _describe(error: BaseException) -> str:
    name = type(error).__name__
    try:
        text = str(error)
        if not isinstance(text, str):
            raise TypeError("__str__ returned a non-string")
    except BaseException as e:  # noqa: BLE001 - a user exception whose __str__ raises must not stop the loop
        text = f"(its message could not be read: {type(e).__name__})"
    if len(text) > MAX_MESSAGE:  # a megabyte message is cut before anything walks it (masking, storing)
        text = text[:MAX_MESSAGE] + "..."
    if name in ("PollError",):
        return text
    return f"{name}: {text}" if text else name


def _close(impl: TriggerType) -> None:
    try:
        impl.close()
    except BaseException as e:  # noqa: BLE001 - a user's close() may raise SystemExit too: it is only logged
        log.warning("trigger %s: close() raised %s", impl.config.name, _describe(e))

"""Typed events and a tiny synchronous bus: the loop, the scheduler and the workflow runner publish;
logs (and later a live view, metrics, alerts) subscribe. Publishers do not know who listens.

Every event is a frozen dataclass; ``name`` is the event's name in the log (``fired``, ``error``...).
A subscriber is a callable taking one event. It runs on the publisher's thread (the loop's owner
thread for most events, a run worker for :class:`TaskFinished`), so it must be quick and must not
block; one that needs time should hand the event to a queue of its own. A subscriber that raises is
logged once and otherwise ignored: it never stops the loop or the other subscribers.

Publishing costs a dictionary lookup when nobody listens for a type; on hot paths (one event per
poll) guard the construction of the event too::

    if bus.wants(PollCompleted):
        bus.publish(PollCompleted(...))
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar

log = logging.getLogger("trigctl.events")


@dataclass(frozen=True, slots=True)
class Event:
    """The base of every event (subscribe to it to get them all)."""

    name: ClassVar[str] = "event"


# --------------------------------------------------------------------------------------- polls


@dataclass(frozen=True, slots=True)
class PollCompleted(Event):
    """A poll ended (every poll, skips included: guard it with ``bus.wants``). Times are wall-clock
    seconds; ``started_at`` is the tick that started it, ``duration`` runs to when it was recorded.
    A poll past its timeout completes with outcome ``error`` at its deadline."""

    name: ClassVar[str] = "poll_completed"
    trigger: str
    due_at: float
    started_at: float
    duration: float
    outcome: str  # fired | skipped | duplicate | error
    reason: str = ""  # why it skipped (secrets masked, at most 4,000 characters)
    error: str | None = None  # the recorded (redacted) error, for outcome error
    next_poll_at: float | None = None  # wall-clock time of the trigger's next poll (its backoff, after an error)


@dataclass(frozen=True, slots=True)
class PollFailed(Event):
    """A poll failed or timed out (also a :class:`PollCompleted` with outcome ``error``)."""

    name: ClassVar[str] = "error"
    trigger: str
    error: str
    consecutive_errors: int


@dataclass(frozen=True, slots=True)
class FireRecorded(Event):
    """A fire was recorded and queued a run. ``context`` is the recorded one (secrets redacted)."""

    name: ClassVar[str] = "fired"
    trigger: str
    run_id: int | None
    context: dict[str, Any]


@dataclass(frozen=True, slots=True)
class DuplicateSuppressed(Event):
    """A fire was suppressed by dedupe (on every poll that offers it again)."""

    name: ClassVar[str] = "duplicate"
    trigger: str
    blocked_by: int | None  # the run holding the key (None: the key was given up)
    reason: str


@dataclass(frozen=True, slots=True)
class ErrorStreakStarted(Event):
    """A trigger's first error after a success (or after start with a clean record)."""

    name: ClassVar[str] = "error_streak_started"
    trigger: str
    error: str


@dataclass(frozen=True, slots=True)
class ErrorStreakEnded(Event):
    """A successful poll after ``consecutive_errors`` errors in a row. ``since``: the wall-clock time
    of the streak's first error (None for a streak older than this field); ``reached_alert``: the
    streak reached ``on_error.after`` (default 3), so an ``on_recover`` workflow, if any, was queued."""

    name: ClassVar[str] = "error_streak_ended"
    trigger: str
    consecutive_errors: int
    since: float | None = None
    reached_alert: bool = False


# ---------------------------------------------------------------------------------------- runs


@dataclass(frozen=True, slots=True)
class RunQueued(Event):
    """A run entered the queue: ``cause`` is ``fire``, ``alert`` (on_error), ``recover``
    (on_recover) or ``rerun`` (a run a crash cut short)."""

    name: ClassVar[str] = "run_queued"
    run_id: int
    trigger: str
    workflow: str
    cause: Literal["fire", "alert", "recover", "rerun"]


@dataclass(frozen=True, slots=True)
class RunStarted(Event):
    name: ClassVar[str] = "run_started"
    run_id: int
    trigger: str
    workflow: str


@dataclass(frozen=True, slots=True)
class RunFinished(Event):
    """A run ended: ``status`` succeeded, failed or cancelled; ``duration`` in seconds (None when
    the run did not start in this process: cancelled at shutdown). ``output``: of a failed run, the
    tail of the failing task's output (stdout and stderr; untrusted text, secrets masked)."""

    name: ClassVar[str] = "run_finished"
    run_id: int
    trigger: str
    workflow: str
    status: str
    duration: float | None
    error: str | None
    output: str | None = None


@dataclass(frozen=True, slots=True)
class TaskFinished(Event):
    """One attempt of a task ended (published on the run's worker thread)."""

    name: ClassVar[str] = "task_finished"
    run_id: int
    trigger: str
    workflow: str
    task: str
    status: str  # succeeded | failed | cancelled
    exit_code: int | None
    attempt: int
    duration: float
    error: str | None


@dataclass(frozen=True, slots=True)
class RunCancelling(Event):
    """`trigctl cancel` from another shell was picked up for a run of this process."""

    name: ClassVar[str] = "cancelling"
    run_id: int


@dataclass(frozen=True, slots=True)
class RunInterrupted(Event):
    """At start: a run cut short by a crash was marked; ``action`` says whether it was rerun
    (``rerun_id``) and if not, why."""

    name: ClassVar[str] = "interrupted"
    trigger: str
    run_id: int
    action: str
    rerun_id: int | None = None
    workflow: str = ""  # the interrupted run's workflow


# ---------------------------------------------------------------------------------------- loop


@dataclass(frozen=True, slots=True)
class LoopStarted(Event):
    name: ClassVar[str] = "start"
    triggers: int
    enabled: int
    state: str
    pid: int


@dataclass(frozen=True, slots=True)
class LoopStopping(Event):
    name: ClassVar[str] = "stopping"
    active_runs: int
    grace: float


@dataclass(frozen=True, slots=True)
class LoopStopped(Event):
    name: ClassVar[str] = "stopped"


@dataclass(frozen=True, slots=True)
class TriggerState:
    """One trigger as the loop holds it (a field of :class:`TriggersLoaded`; not an event)."""

    name: str
    type: str
    workflow: str
    enabled: bool
    next_poll_at: float | None
    last_poll_at: float | None
    last_result: str | None  # fired | skipped | duplicate | error | None
    last_reason: str | None  # why the last poll skipped, or its error (secrets masked)
    consecutive_errors: int


@dataclass(frozen=True, slots=True)
class TriggersLoaded(Event):
    """The triggers this process polls, as loaded from the state: after start-up (before
    :class:`LoopStarted`) and after each reload that was applied, so a view can be rebuilt from it.
    ``active_runs``: ``(run_id, trigger, status)`` of the queued and running runs at start; None
    after a reload (runs are not touched by one). Published only when someone listens (one walk
    over every trigger)."""

    name: ClassVar[str] = "triggers_loaded"
    triggers: tuple[TriggerState, ...]
    max_concurrent_runs: int
    active_runs: tuple[tuple[int, str, str], ...] | None = None


@dataclass(frozen=True, slots=True)
class ConfigReloaded(Event):
    """SIGHUP applied a valid file; ``changes`` like ``("changed b", "added c")``."""

    name: ClassVar[str] = "reloaded"
    changes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ReloadRefused(Event):
    """SIGHUP found an invalid file; the old config stays."""

    name: ClassVar[str] = "reload_refused"
    error: str


@dataclass(frozen=True, slots=True)
class ClockStepped(Event):
    """The wall clock moved by ``seconds`` against the monotonic one (NTP, a VM restore)."""

    name: ClassVar[str] = "clock_stepped"
    seconds: float


@dataclass(frozen=True, slots=True)
class TriggerEnabled(Event):
    """`trigctl enable` from another shell was picked up."""

    name: ClassVar[str] = "enabled"
    trigger: str
    next_poll_at: float | None = None  # wall-clock time of its next poll


@dataclass(frozen=True, slots=True)
class TriggerDisabled(Event):
    name: ClassVar[str] = "disabled"
    trigger: str


# Placeholders for the PostgreSQL store's leases: nothing publishes them yet.
@dataclass(frozen=True, slots=True)
class LeaseGained(Event):
    name: ClassVar[str] = "lease_gained"
    trigger: str
    token: int


@dataclass(frozen=True, slots=True)
class LeaseLost(Event):
    name: ClassVar[str] = "lease_lost"
    trigger: str
    reason: str


# ----------------------------------------------------------------------------------------- bus

E = TypeVar("E", bound=Event)
Subscriber = Callable[[Any], None]


def _with_subclasses(cls: type) -> list[type]:
    out, todo = [], [cls]
    while todo:
        c = todo.pop()
        out.append(c)
        todo.extend(c.__subclasses__())
    return out


class EventBus:
    """Synchronous publish/subscribe by event type.

    ``publish`` calls the subscribers of the event's exact type in subscription order, on the
    caller's thread. Subscribing (from any thread) replaces the lookup table as a whole, so
    ``publish`` and ``wants`` read it without a lock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subs: list[tuple[Subscriber, frozenset[type] | None]] = []
        self._table: dict[type, tuple[Subscriber, ...]] = {}
        self._catch_all: tuple[Subscriber, ...] = ()
        self._failed: set[int] = set()  # subscribers whose failure was logged (by id)
        self.failures = 0

    def subscribe(self, callback: Subscriber, types: Iterable[type[Event]] | None = None) -> Callable[[], None]:
        """Call ``callback(event)`` for events of ``types`` (and their subclasses; None: all events).
        Returns a function that unsubscribes it."""
        wanted = None
        if types is not None:
            wanted = frozenset(c for t in types for c in _with_subclasses(t))
        entry = (callback, wanted)
        with self._lock:
            self._subs.append(entry)
            self._rebuild()

        def unsubscribe() -> None:
            with self._lock:
                if entry in self._subs:
                    self._subs.remove(entry)
                    self._rebuild()

        return unsubscribe

    def _rebuild(self) -> None:  # with the lock held
        table: dict[type, list[Subscriber]] = {}
        catch_all = []
        for callback, wanted in self._subs:
            if wanted is None:
                catch_all.append(callback)
                # Event types defined later (a plugin's) reach catch-all subscribers via publish().
                for cls in _with_subclasses(Event):
                    table.setdefault(cls, []).append(callback)
            else:
                for cls in wanted:
                    table.setdefault(cls, []).append(callback)
        self._table = {cls: tuple(subs) for cls, subs in table.items()}
        self._catch_all = tuple(catch_all)

    def wants(self, cls: type[Event]) -> bool:
        """Whether anyone listens for events of this exact type (cheap: for guarding hot paths)."""
        return cls in self._table

    def publish(self, event: Event) -> None:
        subs = self._table.get(type(event))
        if subs is None:
            if not self._catch_all:
                return
            subs = self._catch_all
        for callback in subs:
            try:
                callback(event)
            except BaseException as e:  # noqa: BLE001 - a subscriber must never stop the loop
                self._subscriber_failed(callback, event, e)

    def _subscriber_failed(self, callback: Subscriber, event: Event, error: BaseException) -> None:
        self.failures += 1
        key = id(callback)
        if key in self._failed:
            return  # logged once per subscriber; a broken one would otherwise log on every event
        self._failed.add(key)
        try:
            log.warning("event subscriber %r failed on %s (%s: %s); further failures of it are not logged",
                        callback, type(event).__name__, type(error).__name__, error)
        except Exception:  # noqa: BLE001 - an error that cannot even be described
            pass

"""The run threads' bookkeeping (a task started or ended, a run ended), written in shared transactions.

Every run thread used to write its own transitions, one transaction each, all behind the store's
one lock: at hundreds of runs a second the threads (and the loop, which records fires and claims
runs on the same store) spent their time queueing for that lock, and every transaction wrote its
own pages to the WAL. Here a thread that has something to write appends it to one list; if no
thread is writing, it becomes the writer and commits everything in the list in one transaction
(``Store.apply_run_steps``); what was appended meanwhile goes to the drain thread (one, started on
first use and kept: under load a hand-off came every few runs, and a new thread each time cost as
much as a run's writes), which writes until the list is empty, so a run thread never writes for
long for others. Threads that arrive while a
write is under way only append (and, for a step they must see done, wait for it). So with one run
at a time nothing changes (the thread writes its own step at once, no hand-off to another thread),
and under load the steps of many runs share a commit.

Steps are written in the order they were appended: a run's task rows always come before its end.
A step may carry a callback, called once its transaction has committed (or failed), by whichever
thread wrote it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from trigctl.store.base import Store

log = logging.getLogger("trigctl.workflows")

DRAIN_IDLE = 30.0  # seconds the drain thread waits for another hand-off before it exits

Done = Callable[[Any, "BaseException | None"], None]


class _Step:
    __slots__ = ("name", "args", "done", "result", "error", "event")

    def __init__(self, name: str, args: tuple, done: Done | None, wait: bool):
        self.name, self.args, self.done = name, args, done
        self.result: Any = None
        self.error: BaseException | None = None
        self.event = threading.Event() if wait else None


class RunLog:
    def __init__(self, store: Store):
        self.store = store
        self._lock = threading.Lock()
        self._pending: list[_Step] = []
        self._writing = False
        self._drainer: threading.Thread | None = None
        self._kick = threading.Event()  # set: the drain thread owns the writing and has a list to write
        self.commits = 0  # transactions written (for benchmarks and tests)
        self.steps = 0

    def call(self, name: str, *args: Any, before: list[tuple[str, tuple]] | None = None) -> Any:
        """Write one step (after ``before``, in the same batch) and return its result once committed;
        its error is raised here."""
        step = _Step(name, args, None, True)
        self._submit([_Step(n, a, None, False) for n, a in before or ()] + [step])
        assert step.event is not None
        step.event.wait()
        if step.error is not None:
            raise step.error
        return step.result

    def post(self, steps: list[tuple[str, tuple]], done: Done | None = None) -> None:
        """Write these steps without waiting; ``done(result, error)`` of the last one once written."""
        if not steps:
            return
        items = [_Step(n, a, None, False) for n, a in steps]
        items[-1].done = done
        self._submit(items)

    def _submit(self, items: list[_Step]) -> None:
        with self._lock:
            self._pending.extend(items)
            if self._writing:
                return  # the thread writing now takes these in its next batch
            self._writing = True
        self._write(drain=False)

    def _write(self, drain: bool) -> None:
        """Write what is pending. A run thread (``drain`` false) writes one batch, which holds its own
        steps, and hands what came meanwhile to a drain thread: under steady load the list seldom
        empties, and a run thread kept writing for the others would hold its own task at the gate,
        leave its output undrained and its timeout unwatched. The drain thread writes until the list
        is empty."""
        while True:
            with self._lock:
                batch, self._pending = self._pending, []
                if not batch:
                    self._writing = False
                    return
            try:
                self._commit(batch)
            except BaseException:
                with self._lock:  # (a SystemExit in a callback): the next submit writes what is pending
                    self._writing = False
                raise
            if not drain:
                with self._lock:
                    if not self._pending:
                        self._writing = False
                        return
                self._hand_off()
                return

    def _hand_off(self) -> None:
        """The writing (and what is pending) goes to the drain thread."""
        with self._lock:  # the kick under the lock: an idle drain thread that is exiting sees it
            self._kick.set()
            if self._drainer is None:
                self._drainer = threading.Thread(target=self._drain, name="trigctl-runlog", daemon=True)
                self._drainer.start()

    def _drain(self) -> None:
        try:
            while True:
                if not self._kick.wait(DRAIN_IDLE):
                    with self._lock:
                        if not self._kick.is_set():  # idle: the next hand-off starts another
                            self._drainer = None
                            return
                    continue
                self._kick.clear()  # no other hand-off comes before this write ends: this thread writes
                self._write(drain=True)
        except BaseException:  # a SystemExit in a callback: the next hand-off starts another
            with self._lock:
                self._drainer = None
            raise

    def _commit(self, batch: list[_Step]) -> None:
        try:
            results = self.store.apply_run_steps([(s.name, s.args) for s in batch])
        except BaseException as e:  # noqa: BLE001 - every waiter must hear of it, this thread goes on
            results = [e] * len(batch)
        self.commits += 1
        self.steps += len(batch)
        try:
            for step, result in zip(batch, results):
                if isinstance(result, BaseException):
                    step.error = result
                else:
                    step.result = result
                if step.event is not None:
                    step.event.set()
                if step.done is not None:
                    try:
                        step.done(step.result, step.error)
                    except Exception:  # noqa: BLE001 - another run's callback must not stop this writer
                        log.exception("a run's completion failed")
        finally:
            for step in batch:  # every waiter wakes, even if a callback raised past the loop
                if step.event is not None:
                    step.event.set()

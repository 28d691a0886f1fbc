"""Skipped polls' counters written off the loop thread.

The loop hands :class:`CounterWriter` a snapshot of the counters that changed (once a second, see
``Scheduler.flush``); a thread of its own writes them through ``Store.flush_stats``. SQLite and the
PostgreSQL driver release the GIL while they work, so the loop goes on polling meanwhile: writing
10,000 counters a second (~2-5 µs each inside SQLite, plus a WAL checkpoint now and then) no longer
stalls the triggers that come due while it happens.

Order: a counter write must never land after a newer write of the same trigger's row (a fire's,
an error's). The scheduler calls :meth:`CounterWriter.wait` before such a write while the writer
is busy, so the writer's older snapshot is in before the newer row goes in.
"""

from __future__ import annotations

import logging
import threading
from collections import deque

from trigctl.store.base import PollStats, StateError, Store

log = logging.getLogger("trigctl.counters")


class CounterWriter:
    """One thread writing counter snapshots, in the order they were handed over."""

    def __init__(self, store: Store):
        self.store = store
        self._queue: deque[list[PollStats]] = deque()
        self._cond = threading.Condition()
        self._pending = 0  # snapshots handed over and not written yet (under _cond)
        self._error: StateError | None = None
        self._closed = False
        self._thread: threading.Thread | None = None

    @property
    def busy(self) -> bool:
        """Snapshots are waiting or being written (read without the lock: a hint for the loop)."""
        return self._pending > 0

    def submit(self, stats: list[PollStats]) -> None:
        """Hand over counter snapshots (the caller keeps no reference it changes later). Raises the
        StateError a previous write met (the state cannot be written): the loop stops on it."""
        self._raise_error()
        if not stats:
            return
        with self._cond:
            if self._closed:
                raise RuntimeError("the counter writer is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._main, name="trigctl-counters", daemon=True)
                self._thread.start()
            self._queue.append(stats)
            self._pending += 1
            self._cond.notify_all()

    def wait(self, timeout: float | None = None) -> bool:
        """Until everything handed over is written (or ``timeout`` seconds). Raises the StateError a
        write met. True if nothing is pending any more."""
        with self._cond:
            done = self._cond.wait_for(lambda: self._pending == 0, timeout)
        self._raise_error()
        return done

    def close(self, timeout: float | None = None) -> bool:
        """Write what is pending (for at most ``timeout`` seconds), then stop the thread. True if
        everything was written. A write's error is not raised here (:meth:`wait` raises it)."""
        with self._cond:
            done = self._cond.wait_for(lambda: self._pending == 0, timeout)
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and done:
            thread.join(timeout)
        return done

    def _raise_error(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _main(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._closed)
                if not self._queue:
                    return  # closed, nothing left
                batches = list(self._queue)
                self._queue.clear()
            rows = batches[0] if len(batches) == 1 else _merged(batches)
            try:
                self.store.flush_stats(rows)
            except StateError as e:  # the state cannot be written: the loop learns it at its next flush
                self._error = e
            except BaseException as e:  # noqa: BLE001 - a bug must not leave the loop waiting forever
                log.error("writing counters failed (an internal error)", exc_info=e)
                self._error = StateError(f"counters could not be written: {type(e).__name__}: {e}")
            with self._cond:
                self._pending -= len(batches)
                self._cond.notify_all()


def _merged(batches: list[list[PollStats]]) -> list[PollStats]:
    """Several snapshots of the counters as one, each trigger once: its latest values, the polls of
    all (a store may write each trigger's row once per call)."""
    latest: dict[str, PollStats] = {}
    for batch in batches:
        for st in batch:
            before = latest.get(st.name)
            if before is not None:
                st.polls += before.polls  # (a snapshot is the writer's own: changing it is safe)
            latest[st.name] = st
    return list(latest.values())

"""Where polls that do not run inline on the loop execute.

Python triggers are called inline by the loop itself (see :mod:`trigctl.runner`, which hands the
loop to a new thread when a call runs long). Here:

* blocking built-ins (files, HTTP, subprocesses) run on a thread pool;
* awaitables (async callables) run on one asyncio loop thread.

Every finished poll is posted back with ``post(poll, result, error)``; only the loop's owner thread
touches scheduler state.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any

Post = Callable[[Any, Any, BaseException | None], None]


MAX_ABANDONED = 1024  # extra workers, at most, standing in for workers stuck in abandoned calls


class DaemonPool:
    """A minimal thread pool of daemon threads, started as needed.

    concurrent.futures joins its workers when the interpreter exits, so one stuck blocking poll
    (an NFS stat, a user's socket without a timeout) would hold up `trigctl run`'s exit. A poll
    past its timeout has already been recorded as an error; nothing is lost by not waiting.

    A worker stuck in a call its caller has given up on (``abandoned(*args)`` is true: a poll past
    its timeout) does not count against ``max_workers``: another worker is started in its place, so
    hung calls cannot starve the rest. Threads are bounded by ``max_workers + max_abandoned``; the
    abandoned calls themselves are bounded by the number of blocking triggers, since a trigger is
    not polled again while its call runs. A worker whose abandoned call returns, and is not needed,
    exits.
    """

    def __init__(self, max_workers: int, name: str, *, abandoned: Callable[..., bool] | None = None,
                 max_abandoned: int = MAX_ABANDONED):
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._max = max_workers
        self._max_abandoned = max_abandoned
        self._abandoned = abandoned
        self._name = name
        self._threads = 0
        self._idle = 0  # workers waiting for a call
        self._starting = 0  # workers started, not yet waiting: each will take a call too
        self._pending = 0  # submitted, not yet taken by a worker
        self._running: dict[int, tuple] = {}  # worker thread id -> the args of the call it runs
        self._started = 0
        self._lock = threading.Lock()
        self._closed = False

    def _live(self) -> int:
        """Workers not stuck in abandoned calls (with the lock held). Costs a scan only when full."""
        if self._threads < self._max or self._abandoned is None:
            return self._threads
        stuck = sum(1 for args in self._running.values() if self._abandoned(*args))
        return self._threads - min(stuck, self._max_abandoned)

    def _to_spawn(self) -> int:  # with the lock held
        # One worker per queued call: a call is never left to wait for a busy worker (a slow poll)
        # while the pool has room. Idle workers and workers still starting each take one.
        wanted = self._pending - self._idle - self._starting
        if wanted <= 0 or self._closed:
            return 0
        n = max(min(wanted, self._max - self._live()), 0)
        self._threads += n
        self._starting += n
        return n

    def _spawn(self, n: int) -> None:
        for i in range(n):
            self._started += 1
            try:
                threading.Thread(target=self._work, name=f"{self._name}-{self._started}", daemon=True).start()
            except BaseException:
                with self._lock:  # not started (no threads left): they must not count as workers
                    self._threads -= n - i
                    self._starting -= n - i
                raise

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        with self._lock:
            if self._closed:
                return
            self._pending += 1
            n = self._to_spawn()
        self._queue.put((fn, args))
        self._spawn(n)

    def rebalance(self) -> None:
        """Start workers for queued calls if some workers have become stuck in abandoned calls."""
        with self._lock:
            n = self._to_spawn()
        self._spawn(n)

    def threads(self) -> int:
        with self._lock:
            return self._threads

    def _work(self) -> None:
        me = threading.get_ident()
        with self._lock:
            self._starting -= 1
            self._idle += 1
        while True:
            item = self._queue.get()
            with self._lock:
                self._idle -= 1
                if item is not None:
                    self._pending -= 1
                    self._running[me] = item[1]
            if item is None or self._closed:  # shut down: polls still queued are dropped, not run
                return
            fn, args = item
            try:
                fn(*args)
            finally:
                with self._lock:
                    del self._running[me]
                    # A stand-in started while this worker was stuck: one too many now.
                    leave = self._threads > self._max and self._live() > self._max
                    if leave:
                        self._threads -= 1
                    else:
                        self._idle += 1
            if leave:
                return

    def shutdown(self) -> None:
        with self._lock:
            self._closed = True
            n = self._threads
        for _ in range(n):
            self._queue.put(None)


class _Escaped(Exception):
    """What an async callable (or reading its result) raised, SystemExit and KeyboardInterrupt too,
    carried out of the event loop as a plain exception (its message is not read here: it may raise)."""

    def __init__(self, error: BaseException):
        super().__init__(type(error).__name__)
        self.error = error


class Dispatcher:
    def __init__(self, post: Post, *, pool_size: int = 32):
        self._post = post
        # A poll past its timeout (the scheduler set poll.timed_out) no longer holds a worker's place.
        self._pool = DaemonPool(pool_size, "trigctl-poll", abandoned=lambda poll: poll.timed_out)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_lock = threading.Lock()

    def submit(self, poll: Any) -> None:
        """Run a blocking poll on the pool."""
        self._pool.submit(self._run_pooled, poll)

    def rebalance(self) -> None:
        """Polls have timed out: replace the workers they hold, for the polls waiting behind them."""
        self._pool.rebalance()

    def _run_pooled(self, poll: Any) -> None:
        from trigctl.scheduler import execute_poll

        if poll.timed_out:  # waited in the queue past its timeout: its result would be dropped anyway
            self._post(poll, None, None)
            return
        try:
            result, error = execute_poll(poll), None
        except BaseException as e:  # noqa: BLE001
            result, error = None, e
        self._post(poll, result, error)

    def run_awaitable(self, poll: Any, awaitable: Any) -> None:
        """Await what an async callable returned, and turn it into a poll outcome, on the event-loop
        thread: what it resolved to (a generator that sleeps or raises SystemExit, a Skip whose
        reason cannot be read) is never walked on the polling loop's thread."""
        loop = self._ensure_loop()
        impl = poll.slot.impl

        async def wrap():
            try:
                value = await awaitable
                return impl.finish(value) if impl is not None else value
            except asyncio.CancelledError:
                raise
            except BaseException as e:  # noqa: BLE001
                # asyncio re-raises SystemExit/KeyboardInterrupt out of run_forever, which would end
                # the event loop for every async trigger: carried out as this poll's error instead.
                raise _Escaped(e) from None

        fut = asyncio.run_coroutine_threadsafe(wrap(), loop)

        def done(f):
            try:
                self._post(poll, f.result(), None)
            except _Escaped as e:
                self._post(poll, None, e.error)
            except BaseException as e:  # noqa: BLE001
                self._post(poll, None, e)

        fut.add_done_callback(done)

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._loop_lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="trigctl-async", daemon=True).start()
                self._loop = loop
            return self._loop

    def close(self) -> None:
        self._pool.shutdown()
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)

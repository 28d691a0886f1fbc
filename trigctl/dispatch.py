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


class DaemonPool:
    """A minimal thread pool of daemon threads, started as needed.

    concurrent.futures joins its workers when the interpreter exits, so one stuck blocking poll
    (an NFS stat, a user's socket without a timeout) would hold up `trigctl run`'s exit. A poll
    past its timeout has already been recorded as an error; nothing is lost by not waiting.
    """

    def __init__(self, max_workers: int, name: str):
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._max = max_workers
        self._name = name
        self._threads = 0
        self._idle = 0
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        with self._lock:
            if self._closed:
                return
            spawn = self._idle == 0 and self._threads < self._max
            if spawn:
                self._threads += 1
        self._queue.put((fn, args))
        if spawn:
            threading.Thread(target=self._work, name=f"{self._name}-{self._threads}", daemon=True).start()

    def _work(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            item = self._queue.get()
            with self._lock:
                self._idle -= 1
            if item is None or self._closed:  # shut down: polls still queued are dropped, not run
                return
            fn, args = item
            fn(*args)

    def shutdown(self) -> None:
        with self._lock:
            self._closed = True
            n = self._threads
        for _ in range(n):
            self._queue.put(None)


class _Escaped(Exception):
    """A SystemExit or KeyboardInterrupt raised by an async callable, carried as a plain exception."""

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


class Dispatcher:
    def __init__(self, post: Post, *, pool_size: int = 32):
        self._post = post
        self._pool = DaemonPool(pool_size, "trigctl-poll")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_lock = threading.Lock()

    def submit(self, poll: Any) -> None:
        """Run a blocking poll on the pool."""
        self._pool.submit(self._run_pooled, poll)

    def _run_pooled(self, poll: Any) -> None:
        from trigctl.scheduler import execute_poll

        try:
            result, error = execute_poll(poll), None
        except BaseException as e:  # noqa: BLE001
            result, error = None, e
        self._post(poll, result, error)

    def run_awaitable(self, poll: Any, awaitable: Any) -> None:
        """Await what an async callable returned, on the event-loop thread."""
        loop = self._ensure_loop()

        async def wrap():
            try:
                return await awaitable
            except (KeyboardInterrupt, SystemExit) as e:
                # asyncio re-raises these out of run_forever, which would end the event loop for
                # every async trigger: carried out as this poll's error instead.
                raise _Escaped(e) from None

        fut = asyncio.run_coroutine_threadsafe(wrap(), loop)

        def done(f):
            try:
                self._post(poll, ("awaited", f.result()), None)
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

"""Where polls execute.

* Python callables run one after another on a *fast lane* thread (~1 µs per dispatch, no pool
  hand-off). If one call runs longer than ``handoff_after``, the lane is abandoned to it and a fresh
  lane thread takes the rest of the queue, so a slow or hung callable never delays the others.
* Blocking built-ins (files, HTTP, subprocesses) run on a thread pool.
* Awaitables (async callables) run on one asyncio loop thread.

Every finished poll is posted back with ``post(poll, outcome, error)``; the scheduler's loop thread
is the only one that touches scheduler state.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

Post = Callable[[Any, Any, BaseException | None], None]


class FastLane:
    def __init__(self, execute: Callable[[Any], Any], post: Post, handoff_after: float = 0.05,
                 on_idle: Callable[[], None] | None = None):
        self._execute = execute
        self._post = post
        self._on_idle = on_idle
        self.handoff_after = handoff_after
        self._queue: deque = deque()
        self._cond = threading.Condition()
        self._current: tuple[Any, float] | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self.handoffs = 0

    def submit(self, poll: Any) -> None:
        self.submit_many([poll])

    def submit_many(self, polls: list) -> None:
        with self._cond:
            self._queue.extend(polls)
            if self._thread is None:
                self._spawn()
            self._cond.notify()

    def backlog(self) -> int:
        return len(self._queue)

    def _spawn(self) -> None:
        t = threading.Thread(target=self._loop, name="trigctl-lane", daemon=True)
        self._thread = t
        t.start()

    def _loop(self) -> None:
        me = threading.current_thread()
        queue = self._queue
        while True:
            try:
                poll = queue.popleft()  # atomic: no lock on the hot path
            except IndexError:
                with self._cond:
                    while not queue and not self._closed and self._thread is me:
                        self._cond.wait()
                    if self._thread is not me or (self._closed and not queue):
                        return
                continue
            self._current = (poll, time.monotonic())
            try:
                result, error = self._execute(poll), None
            except BaseException as e:  # noqa: BLE001 - a user callable may raise anything
                result, error = None, e
            if self._thread is me:
                self._current = None
            if result is not _PENDING:
                self._post(poll, result, error)
            if self._thread is not me:
                return  # handed off while the call ran: another lane thread owns the queue now
            if not queue and self._on_idle is not None:
                self._on_idle(poll)

    def check(self) -> float | None:
        """Hand off a lane stuck in one call. Returns seconds until the next check is due, or None."""
        with self._cond:
            if self._current is None:
                return None
            _, started = self._current
            age = time.monotonic() - started
            if age < self.handoff_after:
                return self.handoff_after - age
            self._current = None
            self.handoffs += 1
            self._spawn()  # the old thread finishes its call, posts it, and exits
            return None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class Dispatcher:
    def __init__(self, execute: Callable[[Any], Any], post: Post, *, pool_size: int = 32, handoff_after: float = 0.05,
                 on_idle: Callable[[], None] | None = None):
        self._execute = execute
        self._post = post
        self.lane = FastLane(self._run_inline, post, handoff_after, on_idle)
        self._pool = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="trigctl-poll")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_lock = threading.Lock()

    def submit(self, poll: Any, blocking: bool) -> None:
        if blocking:
            self._pool.submit(self._run_pooled, poll)
        else:
            self.lane.submit(poll)

    def submit_many(self, polls: list, is_blocking: Callable[[Any], bool]) -> None:
        inline = []
        for poll in polls:
            if is_blocking(poll):
                self._pool.submit(self._run_pooled, poll)
            else:
                inline.append(poll)
        if inline:
            self.lane.submit_many(inline)

    def _run_inline(self, poll: Any) -> Any:
        result = self._execute(poll)
        if inspect.isawaitable(result):
            self._to_loop(poll, result)
            return _PENDING
        return result

    def _run_pooled(self, poll: Any) -> None:
        try:
            result, error = self._run_inline(poll), None
        except BaseException as e:  # noqa: BLE001
            result, error = None, e
        if result is not _PENDING:
            self._post(poll, result, error)

    def _to_loop(self, poll: Any, awaitable: Any) -> None:
        loop = self._ensure_loop()

        async def wrap():
            return await awaitable

        fut = asyncio.run_coroutine_threadsafe(wrap(), loop)

        def done(f):
            try:
                self._post(poll, ("awaited", f.result()), None)
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

    def check(self) -> float | None:
        return self.lane.check()

    def close(self) -> None:
        self.lane.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)


class _Pending:
    pass


_PENDING = _Pending()

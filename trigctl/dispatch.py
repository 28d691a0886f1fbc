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
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

Post = Callable[[Any, Any, BaseException | None], None]


class Dispatcher:
    def __init__(self, post: Post, *, pool_size: int = 32):
        self._post = post
        self._pool = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="trigctl-poll")
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

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)

"""One thread that drives every active run: the reaper.

A run is a generator (``RunExecution.steps``) that does its quick work inline (write files, start a
process, read its output vars, post its rows) and *yields* where it would wait:

* :class:`WaitExit`: a task's process to exit, its output read into a sink meanwhile, with a
  timeout (``subprocess.TimeoutExpired`` is thrown in) and a progress callback (see
  ``procs.wait_reading``, which this replaces for runs);
* :class:`Sleep`: a retry's delay, cut short by a cancel (the generator gets True);
* :class:`Blocking`: a call that waits on something other than a process (an HTTP task, a group
  that outlives its leader, a row that must be committed first); it runs on a thread of its own
  and its result (or exception) is sent back in.

The reaper waits on every process's pidfd and output pipe with one ``epoll``, so a run costs no
thread of its own and no hand-over from a worker thread to the loop and back: with a thread per
run, each run's start, exit and end were three wake-ups of three threads queueing for the GIL.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import select
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Generator
from typing import Any

from trigctl.procs import OutputTail, drain

log = logging.getLogger("trigctl.workflows")

IDLE_EXIT = 30.0  # seconds the reaper thread waits with nothing to do before it exits
_READ_CHUNK = 65536
_NO_PIDFD_POLL = 0.05  # seconds between looks at a process whose exit has no pidfd to wait on
_SLEEP, _DEADLINE, _POLL, _PROGRESS = range(4)  # what a timer is for


class WaitExit:
    """Wait for ``proc`` to exit, reading ``fd`` into ``sink``; sends the exit code."""

    __slots__ = ("proc", "fd", "sink", "timeout", "progress")

    def __init__(self, proc: Any, fd: int, sink: OutputTail, timeout: float | None,
                 progress: Callable[[], float | None] | None = None):
        self.proc, self.fd, self.sink, self.timeout, self.progress = proc, fd, sink, timeout, progress


class Sleep:
    """Wait ``seconds``; sends True if ``cancel`` is set first (whoever sets it calls
    Reaper.cancelled with the run's key)."""

    __slots__ = ("seconds", "cancel")

    def __init__(self, seconds: float, cancel: threading.Event):
        self.seconds, self.cancel = seconds, cancel


class Blocking:
    """Call ``fn(*args)`` on a thread of its own; sends its result or throws its exception."""

    __slots__ = ("fn", "args")

    def __init__(self, fn: Callable[..., Any], *args: Any):
        self.fn, self.args = fn, args


Steps = Generator[Any, Any, None]


class _Cancel:
    """An inbox item: the run was cancelled while in the wait numbered ``token``."""

    __slots__ = ("token",)

    def __init__(self, token: int):
        self.token = token


class _Driven:
    """A run's generator and what it waits for now."""

    __slots__ = ("gen", "token", "wait", "pidfd", "fd", "deadline", "progress_at")

    def __init__(self, gen: Steps):
        self.gen = gen
        self.token = 0  # bumped at each resume: a timer set for an earlier wait is stale
        self.wait: Any = None
        self.pidfd: int | None = None
        self.fd: int | None = None  # the output pipe while it is registered
        self.deadline: float | None = None
        self.progress_at: float | None = None


class Reaper:
    """Runs generators (see the module doc) on one thread, started on first use; it exits after
    IDLE_EXIT seconds with no run, and the next ``start`` starts another."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._inbox: deque[tuple[_Driven, Any, BaseException | None]] = deque()
        self._thread: threading.Thread | None = None
        self._loop: _Loop | None = None  # the thread's state (for tests)
        self._asleep = False  # the thread waits in epoll: a new item must write the wake fd
        self._wake_r = self._wake_w = -1
        self._sleeping: dict[Any, _Driven] = {}  # key -> a run in Sleep (for cancelled())
        self._keys: dict[_Driven, Any] = {}

    # -------------------------------------------------------------------- from any thread

    def start(self, gen: Steps, key: Any = None) -> None:
        """Drive ``gen`` from its first step; ``key`` names it for cancelled()."""
        d = _Driven(gen)
        if key is not None:
            with self._lock:
                self._keys[d] = key
        self._post(d, None, None)

    def cancelled(self, key: Any) -> None:
        """The run ``key`` was cancelled: a Sleep it is in ends now."""
        with self._lock:
            d = self._sleeping.get(key)
        if d is not None:
            self._post(d, _Cancel(d.token), None)

    def _post(self, d: _Driven, value: Any, error: BaseException | None) -> None:
        with self._lock:
            self._inbox.append((d, value, error))
            if self._thread is None:
                self._start_thread()
                return
            if self._asleep:
                self._asleep = False
                os.write(self._wake_w, b"x")


    def _start_thread(self) -> None:  # with _lock held
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        loop = _Loop(self, wake_r)
        thread = threading.Thread(target=loop.main, name="trigctl-reaper", daemon=True)
        try:
            thread.start()
        except BaseException:  # no thread to be had: what is in the inbox waits for the next post
            os.close(wake_r)
            os.close(wake_w)
            raise
        self._wake_r, self._wake_w, self._thread, self._loop = wake_r, wake_w, thread, loop

    def _stopped(self, thread: threading.Thread, when_idle: bool) -> bool:
        """``thread`` leaves its loop (``when_idle``: only if nothing was posted; False if something
        was): a post from now on starts another thread. Leaving on an error, what is posted
        already gets a new thread at once."""
        with self._lock:
            if self._thread is not thread:
                return True
            if when_idle and self._inbox:
                return False
            self._thread = None
            os.close(self._wake_w)
            self._wake_w = -1
            if self._inbox:
                self._start_thread()
            return True


class _Loop:
    """A reaper thread's own state (its epoll, descriptors, timers and runs) and its loop."""


    def __init__(self, reaper: Reaper, wake_r: int):
        self.r = reaper
        self.wake_r = wake_r
        self.ep = select.epoll()
        self.ep.register(wake_r, select.EPOLLIN)
        self.fds: dict[int, tuple[_Driven, bool]] = {}  # fd -> (run, is its pidfd)
        self.timers: list[tuple[float, int, _Driven, int, int]] = []  # (when, seq, run, token, kind)
        self.seq = itertools.count()
        self.driven: set[_Driven] = set()

    def main(self) -> None:
        idle_since: float | None = None
        r = self.r
        try:
            while True:
                try:
                    self._run_inbox()
                    now = r._clock()
                    timers = self.timers
                    while timers and timers[0][0] <= now:
                        _when, _n, d, token, kind = heapq.heappop(timers)
                        if d.token == token and d in self.driven:
                            self._timer(d, kind, now)
                except Exception:  # noqa: BLE001 - a bug in one run's handling must not stop the others
                    log.exception("the reaper failed on a run; it goes on with the others")
                    continue
                if self.driven:
                    idle_since = None
                elif idle_since is None:
                    idle_since = now
                elif now - idle_since >= IDLE_EXIT:
                    if r._stopped(threading.current_thread(), when_idle=True):
                        return
                    continue
                wait = -1.0 if self.driven else IDLE_EXIT  # -1: until an event
                if timers:
                    due = max(0.0, timers[0][0] - now)
                    wait = due if wait < 0 else min(wait, due)
                with r._lock:
                    if r._inbox:
                        continue
                    r._asleep = True
                try:
                    events = self.ep.poll(wait)
                finally:
                    with r._lock:
                        r._asleep = False
                try:
                    self._events(events)
                except Exception:  # noqa: BLE001 - as above
                    log.exception("the reaper failed on a run; it goes on with the others")
        except BaseException:
            if self.driven:
                log.exception("a reaper thread failed; %d run(s) it was driving are left unfinished", len(self.driven))
            raise
        finally:
            r._stopped(threading.current_thread(), when_idle=False)
            self.ep.close()
            os.close(self.wake_r)

    def _events(self, events: list[tuple[int, int]]) -> None:
        for fd, _mask in events:
            if fd == self.wake_r:
                try:
                    while os.read(fd, 4096):
                        pass
                except BlockingIOError:
                    pass
                continue
            entry = self.fds.get(fd)
            if entry is None:
                continue
            d, is_pidfd = entry
            if is_pidfd:
                self._exited(d)
            else:
                self._output(d, fd)

    def _run_inbox(self) -> None:
        while True:
            with self.r._lock:
                if not self.r._inbox:
                    return
                d, value, error = self.r._inbox.popleft()
            if type(value) is _Cancel:
                if d.token == value.token and isinstance(d.wait, Sleep):
                    self._resume(d, True, None)
                continue
            self.driven.add(d)
            self._resume(d, value, error)

    def _resume(self, d: _Driven, value: Any, error: BaseException | None) -> None:
        """Send ``value`` (or throw ``error``) into the run and set up what it waits for next."""
        d.token += 1
        d.wait = None
        key = self.r._keys.get(d)
        if key is not None:
            with self.r._lock:
                self.r._sleeping.pop(key, None)
        try:
            req = d.gen.throw(error) if error is not None else d.gen.send(value)
        except StopIteration:
            self._forget(d)
            return
        except BaseException:  # noqa: BLE001 - a run's bug must not stop the others' reaper
            log.exception("a run failed outside its own error handling")
            self._forget(d)
            return
        d.wait = req
        now = self.r._clock()
        if isinstance(req, WaitExit):
            try:
                self._watch(d, req, now)
            except OSError as e:  # a closed descriptor: the run hears of it, the reaper goes on
                self._unwatch(d)
                self._resume(d, None, e)
        elif isinstance(req, Sleep):
            if key is not None:
                with self.r._lock:
                    self.r._sleeping[key] = d
            if req.cancel.is_set():  # set before cancelled() could see this run sleeping
                self._resume(d, True, None)
                return
            self._push(now + req.seconds, d, _SLEEP)
        elif isinstance(req, Blocking):
            try:
                threading.Thread(target=self._call, args=(d, req), name="trigctl-task", daemon=True).start()
            except RuntimeError as e:  # no thread to be had: the run hears of it
                self._resume(d, None, e)
        else:
            d.gen.close()
            self._forget(d)
            log.error("a run waited for %r, which the reaper does not know", req)

    def _forget(self, d: _Driven) -> None:
        self.driven.discard(d)
        with self.r._lock:
            key = self.r._keys.pop(d, None)
            if key is not None:
                self.r._sleeping.pop(key, None)

    def _call(self, d: _Driven, req: Blocking) -> None:
        try:
            result = req.fn(*req.args)
        except BaseException as e:  # noqa: BLE001 - thrown into the run, which decides
            self.r._post(d, None, e)
            return
        self.r._post(d, result, None)

    def _push(self, when: float, d: _Driven, kind: int) -> None:
        timers = self.timers
        # An entry outlives the wait it was set for (a deadline of an hour for a task that took a
        # millisecond): past eight entries a live run (a run has at most three live ones), the
        # stale ones are dropped.
        if len(timers) > 64 and len(timers) > 8 * len(self.driven):
            timers[:] = [t for t in timers if t[2].token == t[3] and t[2] in self.driven]
            heapq.heapify(timers)
        heapq.heappush(timers, (when, next(self.seq), d, d.token, kind))

    def _watch(self, d: _Driven, req: WaitExit, now: float) -> None:
        d.deadline = None if req.timeout is None else now + req.timeout
        try:
            d.pidfd = os.pidfd_open(req.proc.pid)
        except (AttributeError, OSError):  # not Linux >= 5.3, or no descriptor left: look every _NO_PIDFD_POLL
            d.pidfd = None
        if d.pidfd is not None:
            self.fds[d.pidfd] = (d, True)
            self.ep.register(d.pidfd, select.EPOLLIN)
        os.set_blocking(req.fd, False)  # an event for a closed fd whose number came back must not block
        self.ep.register(req.fd, select.EPOLLIN)
        self.fds[req.fd] = (d, False)
        d.fd = req.fd
        d.progress_at = None
        if d.deadline is not None:
            self._push(d.deadline, d, _DEADLINE)
        if d.pidfd is None:
            self._push(now + _NO_PIDFD_POLL, d, _POLL)
        self._progress(d, now)

    def _progress(self, d: _Driven, now: float) -> None:
        req = d.wait
        if req.progress is None:
            return
        try:
            again = req.progress()
        except Exception:  # noqa: BLE001 - the output so far is not saved; the task goes on
            log.exception("run: saving a task's output so far failed")
            return
        if again is not None and (d.progress_at is None or again < d.progress_at or d.progress_at <= now):
            d.progress_at = again
            self._push(again, d, _PROGRESS)

    def _unwatch(self, d: _Driven) -> None:
        if d.fd is not None:
            self.fds.pop(d.fd, None)
            try:
                self.ep.unregister(d.fd)
            except OSError:  # closed by someone else meanwhile
                pass
            d.fd = None
        if d.pidfd is not None:
            self.fds.pop(d.pidfd, None)
            try:
                self.ep.unregister(d.pidfd)
            except OSError:  # its registration failed
                pass
            os.close(d.pidfd)
            d.pidfd = None

    def _output(self, d: _Driven, fd: int) -> None:
        try:
            data = os.read(fd, _READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            d.wait.sink.feed(data)
            self._progress(d, self.r._clock())
        else:  # every writer closed it: only the exit is left to wait for
            self.ep.unregister(fd)
            self.fds.pop(fd, None)
            d.fd = None

    def _exited(self, d: _Driven) -> None:
        req = d.wait
        try:
            code = req.proc.poll()
        except BaseException as e:  # noqa: BLE001 - thrown into the run
            self._unwatch(d)
            self._resume(d, None, e)
            return
        if code is None:  # an event for a closed pidfd whose number came back: not this run's exit
            return
        if d.fd is not None:  # what the process wrote before it exited (its EOF may be in this batch, after)
            drain({d.fd: req.sink})
        self._unwatch(d)
        self._resume(d, code, None)

    def _timer(self, d: _Driven, kind: int, now: float) -> None:
        req = d.wait
        if kind == _SLEEP:
            self._resume(d, False, None)
            return
        if not isinstance(req, WaitExit):
            return
        if kind == _DEADLINE:
            if req.proc.poll() is not None:  # it exited while the reaper was busy: not a timeout
                self._exited(d)
                return
            self._unwatch(d)
            self._resume(d, None, subprocess.TimeoutExpired(req.proc.args, req.timeout or 0))
        elif kind == _POLL:  # no pidfd: look again
            if req.proc.poll() is not None:
                self._exited(d)
                return
            self._push(now + _NO_PIDFD_POLL, d, _POLL)
        elif d.progress_at is not None and now >= d.progress_at:
            d.progress_at = None
            self._progress(d, now)

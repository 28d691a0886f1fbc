"""The blocking-poll pool: one worker per queued call while there is room, so a slow poll never
delays another submitted with it."""

from __future__ import annotations

import threading

import pytest
from conftest import wait_for

from trigctl.dispatch import DaemonPool


@pytest.fixture
def pool():
    p = DaemonPool(32, "test-pool")
    yield p
    p.shutdown()


def warm(pool: DaemonPool, n: int) -> None:
    """Leave ``n`` workers idle, waiting for calls (as after the loop's previous ticks)."""
    gate = threading.Event()
    done = [threading.Event() for _ in range(n)]
    for d in done:
        pool.submit(lambda d=d: (gate.wait(10), d.set()))
    gate.set()
    for d in done:
        assert d.wait(10)
    wait_for(lambda: pool._idle == n, timeout=10, message=f"{n} idle workers")


@pytest.mark.parametrize("idle", [0, 1, 2])
def test_two_blocking_polls_of_one_tick_one_slow_the_other_does_not_wait(pool, idle):
    warm(pool, idle)
    release, fast_done, slow_started = threading.Event(), threading.Event(), threading.Event()

    def slow():
        slow_started.set()
        release.wait(30)

    try:
        # One tick: the slow poll first, the fast one queued right behind it.
        pool.submit(slow)
        pool.submit(fast_done.set)
        assert fast_done.wait(10), "the fast poll waited for the slow one"
        assert slow_started.wait(10) and not release.is_set()
        assert pool.threads() == max(idle, 2)
    finally:
        release.set()


def test_an_idle_worker_takes_one_call_of_a_burst_and_new_workers_the_rest(pool):
    warm(pool, 1)
    release = threading.Event()
    started = threading.Semaphore(0)

    def call():
        started.release()
        release.wait(30)

    try:
        for _ in range(5):
            pool.submit(call)
        for _ in range(5):
            assert started.acquire(timeout=10), "a call of the burst waits behind a busy worker"
        # Workers still starting count as takers: a burst of 5 starts 4 (one was idle), not more.
        assert pool.threads() == 5
    finally:
        release.set()


def test_a_burst_with_no_idle_worker_starts_one_worker_per_call(pool):
    release = threading.Event()
    started = threading.Semaphore(0)

    def call():
        started.release()
        release.wait(30)

    try:
        for _ in range(8):
            pool.submit(call)
        assert pool.threads() == 8
        for _ in range(8):
            assert started.acquire(timeout=10)
    finally:
        release.set()


def test_a_worker_that_cannot_start_is_not_counted(pool, monkeypatch):
    real_start = threading.Thread.start
    calls = {"n": 0}

    def failing_start(self):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("can't start new thread")
        return real_start(self)

    monkeypatch.setattr(threading.Thread, "start", failing_start)
    done = threading.Event()
    with pytest.raises(RuntimeError):
        pool.submit(lambda: None)
    assert pool.threads() == 0
    # The call of the failed start is still queued: the next submission's worker takes it, and a
    # second worker is started for the second call.
    pool.submit(done.set)
    assert done.wait(10)
    assert pool.threads() == 2

"""The cost of publishing an event: nobody listening (the guard only), a listener for another type,
one listener, and the log subscriber; vs an empty loop. Per call, median of --rounds.

    python bench/bench_events.py [--n 1000000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _common import median, quiet_cli_logging  # noqa: E402

from trigctl.events import EventBus, FireRecorded, PollCompleted, RunStarted  # noqa: E402
from trigctl.observe.logs import LogSubscriber  # noqa: E402


def per_call(fn, n: int, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn(n)
        times.append((time.perf_counter() - t0) / n)
    return median(times)


def guarded(bus: EventBus):
    def run(n: int) -> None:
        wants, publish = bus.wants, bus.publish
        for _ in range(n):
            if wants(PollCompleted):
                publish(PollCompleted("t1", 1.0, 1.0, 0.0, "skipped"))
    return run


def unguarded(bus: EventBus):
    def run(n: int) -> None:
        publish = bus.publish
        for _ in range(n):
            publish(PollCompleted("t1", 1.0, 1.0, 0.0, "skipped"))
    return run


def empty(n: int) -> None:
    for _ in range(n):
        pass


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    n, rounds = args.n, args.rounds
    base = per_call(empty, n, rounds)
    nobody = EventBus()
    other = EventBus()
    other.subscribe(lambda e: None, [RunStarted])
    one = EventBus()
    seen = []
    one.subscribe(lambda e: seen.append(e) if len(seen) < 0 else None, [PollCompleted])
    rows = [
        ("empty loop (baseline)", base),
        ("guarded, no subscriber at all", per_call(guarded(nobody), n, rounds)),
        ("guarded, a subscriber of another type", per_call(guarded(other), n, rounds)),
        ("unguarded publish, nobody listening (event built)", per_call(unguarded(other), n, rounds)),
        ("guarded, one subscriber (a no-op)", per_call(guarded(one), n, rounds)),
    ]
    quiet_cli_logging()
    logging.getLogger("trigctl").setLevel(logging.INFO)
    logs = EventBus()
    LogSubscriber().attach(logs)

    def fired(k: int) -> None:
        publish = logs.publish
        ctx = {"path": "inbox/a.txt"}
        for i in range(k):
            publish(FireRecorded("t1", i, ctx))

    rows.append(("FireRecorded to the log subscriber (a formatted line to /dev/null)",
                 per_call(fired, max(n // 20, 1000), rounds)))
    print("| what | ns per call | minus baseline |\n|---|---|---|")
    for what, t in rows:
        print(f"| {what} | {t * 1e9:.0f} | {(t - base) * 1e9:.0f} |")
    print(f"\n(n={n}, median of {rounds}; load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()

"""Scale: N python-callable triggers at interval 1 s, all due at once or spread; trigctl vs APScheduler 3.

    python bench/bench_scale.py --n 1000 10000 20000 --seconds 10 [--peer] [--profile]
    python bench/bench_scale.py --child trigctl,50000,spread --seconds 6 [--profile]

Each (system, N, phase) runs in its own subprocess so RSS is its own. Lateness is due time ->
callable entered. The floor is one heap of due times calling the same function inline (what any
scheduler in Python could reach on this machine); p99 / floor is the ratio to it in the same run.
Start-up is the YAML (loaded as `trigctl run` does) to the first poll. Prints a markdown table.
"Missed" counts due polls never executed: each trigger is on a 1 s grid (its jitter is drawn inside
its slot), so each has exactly ``seconds - 2`` grid slots in the window's first ``seconds - 2`` s, all
due (jitter < 1 s) and executed (lateness < 1 s) before the window ends; missed = that number minus
the distinct (trigger, slot) pairs executed. "executed/due" alone counts executions in the window,
which also moves with the backlog at its two ends.
``--profile``: each trigctl child samples its threads during the measured window (bench/_common.py's
Sampler, every 2 ms; it takes the GIL to sample, so the figures of that run are a little worse) and
prints the profile on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _common import Sampler, pct, python_triggers_project, rss_mb  # noqa: E402


def run_trigctl(n: int, seconds: float, spread: bool, profile: bool = False) -> dict:
    from trigctl.config import load_config
    from trigctl.runner import Runner
    from trigctl.scheduler import Scheduler
    from trigctl.store.sqlite import SQLiteStore

    yaml_path = python_triggers_project(n, spread)
    tmp = yaml_path.parent
    os.environ.setdefault("TRIGCTL_CACHE_DIR", str(tmp / "cache"))  # a first start; bench_startup.py has later ones
    # Start-up, as `trigctl run` does it: the full load (schema, callables imported), the state
    # opened, every trigger's row written, the loop started; until the first poll is called.
    t_start = time.monotonic()
    cfg = load_config(tmp / "triggers.yaml")
    store = SQLiteStore(str(tmp / "state.db"))
    lateness: list[float] = []
    record = lateness.append
    # (trigger, the grid slot this poll is for), 16 bytes a poll (a tuple would add 50 MB at 50,000)
    slots = Slots()
    original = Scheduler.execute
    first: list[float] = []

    def timed_execute(poll):
        if not first:
            first.append(time.monotonic())
        record(time.time() - poll.due_at)
        slots.record(id(poll.slot), poll.slot.grid_at)
        return original(poll)

    Scheduler.execute = staticmethod(timed_execute)  # as it is: execute_poll, a staticmethod
    if os.environ.get("BENCH_NOGC"):
        import gc
        gc.disable()
    runner = Runner(cfg, store, install_signals=False, grace=1)
    t = threading.Thread(target=runner.run, daemon=True)
    t.start()
    # Warm-up: start-up (config, one state row per trigger) is not polling; measure once the loop
    # runs, after two more seconds.
    deadline = time.monotonic() + 600
    while runner._owner is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(2.0)
    lateness.clear()
    slots.clear()
    sampler = Sampler().start() if profile else None
    t0 = time.time()
    cpu0, wall0 = time.process_time(), time.monotonic()
    time.sleep(seconds)
    cpu1, wall1 = time.process_time(), time.monotonic()
    sample = list(lateness)
    if sampler is not None:
        sampler.stop()
        print(sampler.report(), file=sys.stderr)
    rss = rss_mb()
    missed = slots.missed(n, t0, seconds)  # after the RSS: its set is the bench's, not trigctl's
    runner.stop()
    t.join(30)
    due = n * seconds
    return {"system": "trigctl", "n": n, "phase": "spread" if spread else "at once", "executed": len(sample), "due": due,
            "missed": missed,
            "p50_ms": pct(sample, 50) * 1000, "p99_ms": pct(sample, 99) * 1000, "max_ms": max(sample) * 1000 if sample else 0,
            "cpu": (cpu1 - cpu0) / (wall1 - wall0), "rss_mb": rss, "startup_s": first[0] - t_start if first else None}


def run_floor(n: int, seconds: float, spread: bool) -> dict:
    """The floor on this machine: one heap of due times, the same callable (imported the same way)
    called inline, lateness recorded the same way. What a scheduler could reach with no state,
    no bookkeeping, no threads."""
    import heapq
    import random

    tmp = Path(tempfile.mkdtemp(prefix="trigctl-bench-floor-"))
    (tmp / "bench_callables.py").write_text("def noop():\n    return None\n")
    sys.path.insert(0, str(tmp))
    from bench_callables import noop  # type: ignore[import-not-found]

    fns = [noop] * n
    t0 = time.time() + 1.0
    heap = [(t0 + (random.uniform(0, 1) if spread else 0.0), i) for i in range(n)]
    heapq.heapify(heap)
    lateness: list[float] = []
    record = lateness.append
    slots = Slots()
    stop = threading.Event()

    def loop():
        pop, push = heapq.heappop, heapq.heappush
        while not stop.is_set():
            now = time.time()
            while heap[0][0] <= now:
                due, i = pop(heap)
                record(time.time() - due)
                slots.record(i, due)
                fns[i]()
                push(heap, (due + 1.0, i))
            stop.wait(max(heap[0][0] - time.time(), 0.002))

    th = threading.Thread(target=loop, daemon=True)
    th.start()
    out = _measured("floor (inline heap)", n, spread, seconds, lateness, t0 + 2.0, slots)
    stop.set()
    th.join(5)
    return out


class Slots:
    """The (trigger, grid slot) of each poll executed, in two flat arrays."""

    def __init__(self) -> None:
        self.who, self.grid = array("q"), array("d")

    def record(self, who: int, grid: float) -> None:
        self.who.append(who)
        self.grid.append(grid)

    def clear(self) -> None:
        del self.who[:], self.grid[:]

    def missed(self, n: int, t0: float, seconds: float) -> int | None:
        """Due polls never executed (see the module's docstring): ``n * (seconds - 2)`` grid slots
        in ``[t0, t0 + seconds - 2)`` minus the distinct (trigger, slot) pairs executed among them."""
        whole = int(seconds) - 2
        if whole < 1:
            return None
        end = t0 + whole
        who, grid = self.who[:], self.grid[:]
        return n * whole - len({(w, g) for w, g in zip(who, grid) if t0 <= g < end})


def _measured(system: str, n: int, spread: bool, seconds: float, lateness: list[float], start: float,
              slots: Slots | None = None) -> dict:
    """From wall-clock ``start`` on, ``seconds`` of lateness samples, CPU and RSS, as a result row."""
    time.sleep(max(0, start - time.time()))
    lateness.clear()
    if slots is not None:
        slots.clear()
    t0 = time.time()
    cpu0, wall0 = time.process_time(), time.monotonic()
    time.sleep(seconds)
    cpu1, wall1 = time.process_time(), time.monotonic()
    sample = list(lateness)
    rss = rss_mb()
    return {"system": system, "n": n, "phase": "spread" if spread else "at once", "executed": len(sample),
            "missed": slots.missed(n, t0, seconds) if slots is not None else None,
            "due": n * seconds, "p50_ms": pct(sample, 50) * 1000, "p99_ms": pct(sample, 99) * 1000,
            "max_ms": max(sample) * 1000 if sample else 0, "cpu": (cpu1 - cpu0) / (wall1 - wall0), "rss_mb": rss}


def run_apscheduler(n: int, seconds: float, spread: bool) -> dict:
    from datetime import datetime

    from apscheduler.schedulers.background import BackgroundScheduler

    lateness: list[float] = []
    t0 = time.time() + 2.0
    sched = BackgroundScheduler(job_defaults={"misfire_grace_time": None, "coalesce": False, "max_instances": 1})

    def make(offset):
        state = {"next": t0 + offset}

        def job():
            now = time.time()
            lateness.append(now - state["next"])
            state["next"] += 1.0
        return job

    import random

    for i in range(n):
        offset = random.uniform(0, 1) if spread else 0.0
        sched.add_job(make(offset), "interval", seconds=1, next_run_time=datetime.fromtimestamp(t0 + offset),
                      id=f"j{i}")
    sched.start()
    out = _measured("apscheduler", n, spread, seconds, lateness, t0 + 1.0)
    sched.shutdown(wait=False)
    return out


def _startup(r: dict) -> str:
    return "-" if r.get("startup_s") is None else f"{r['startup_s']:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, nargs="+", default=[1000, 10000, 20000])
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--peer", action="store_true", help="also run APScheduler 3 (pip install 'apscheduler<4')")
    ap.add_argument("--profile", action="store_true", help="trigctl children: a sampling profile of the measured window, on stderr")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        system, n, phase = args.child.split(",")
        if system == "trigctl":
            print(json.dumps(run_trigctl(int(n), args.seconds, phase == "spread", args.profile)))
            return
        fn = {"floor": run_floor, "apscheduler": run_apscheduler}[system]
        print(json.dumps(fn(int(n), args.seconds, phase == "spread")))
        return
    rows = []
    floor: dict | None = None
    systems = ["floor", "trigctl"] + (["apscheduler"] if args.peer else [])
    for n in args.n:
        for phase in ("at once", "spread"):
            for system in systems:
                out = subprocess.run([sys.executable, __file__, "--seconds", str(args.seconds), "--child",
                                      f"{system},{n},{'spread' if phase == 'spread' else 'once'}"]
                                     + (["--profile"] if args.profile else []),
                                     capture_output=True, text=True)
                if out.returncode != 0 or (args.profile and out.stderr):
                    print(out.stderr, file=sys.stderr)
                if out.returncode != 0:
                    continue
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
                r = rows[-1]
                if system == "floor":
                    floor = r
                ratio = r["p99_ms"] / floor["p99_ms"] if floor and floor["p99_ms"] > 0 else float("nan")
                print(f"| {r['system']} | {r['n']} | {r['phase']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {ratio:.2f} | "
                      f"{r['max_ms']:.1f} | {r['executed']}/{r['due']:.0f} ({100 * r['executed'] / r['due']:.2f}%) | "
                      f"{'-' if r.get('missed') is None else r['missed']} | "
                      f"{r['cpu']:.2f} | {r['rss_mb']:.0f} | {_startup(r)} |", flush=True)


if __name__ == "__main__":
    print("| system | N | phase | p50 ms | p99 ms | p99 / floor | max ms | polls executed/due | missed | CPU s/s | RSS MB | YAML → first poll s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    main()

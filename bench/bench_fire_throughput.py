"""Fire throughput: a trigger that fires continuously into a one-task workflow; runs started per
second, fire -> task-process-started latency, and whether history is complete; side by side with a
plain `subprocess.Popen(cmd).wait()` loop at the same concurrency, in the same run.

    python bench/bench_fire_throughput.py                      # the README table (~6 min)
    python bench/bench_fire_throughput.py --rates max 300 --variants argv-true --seconds 20 --profile

The source is one `python` trigger (interval 5ms, dedupe: none) that returns a list of new contexts
each poll: with a number as rate, an even `rate` fires a second (open loop: latency is meaningful);
with `max`, enough to keep 3 x max_concurrent_runs runs fired but unfinished (closed loop: runs/s is
the capacity). The Runner runs in-process (as bench_scale.py does) with `trigctl run`'s log handler
writing to /dev/null, so formatting events is paid for.

Workflow variants (one task each):
  argv-true   argv: [true]           task start = tasks.started_at (trigctl's clock just before Popen)
  run-true    run: 'true'            same, through /bin/sh -c
  argv-date   argv: [date, +%s.%N]   task start = the time the process itself printed (its output
                                     tail): the honest "process started"; date costs about what true does
Fire time is the run's triggered_at (the poll that fired it has returned and is being recorded).

Baseline, in the same run and at the same concurrency C: `subprocess.Popen(cmd).wait()` on C
threads, fed the same way (an even rate from a 5 ms ticker, or closed loop for `max`); its latency
is submit -> Popen called (or -> date's stamp). Ratio = trigctl runs/s / baseline spawns/s.
Each measurement runs in its own subprocess. Over the same window: the context switches of each
process's threads (/proc/self/task/*/status) a run or spawn, and trigctl's write transactions
(SQLiteStore._tx calls) a run.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CpuWindow, Sampler, pct, quiet_cli_logging  # noqa: E402

WARMUP = 2.0  # seconds of each window not measured
TICK = 0.005

VARIANTS = {
    "argv-true": ("argv: ['true']", ["true"]),
    "run-true": ("run: 'true'", ["/bin/sh", "-c", "true"]),
    "argv-date": ("argv: [date, '+%s.%N']", ["date", "+%s.%N"]),
}

SOURCE = '''
import time
FIRED = 0
DONE = 0
STOP = False
class Source:
    def __init__(self, rate=0, backlog=0):
        self.rate, self.backlog, self.t0, self.n = rate, backlog, None, 0
    def poll(self):
        global FIRED
        if STOP:
            return None
        if self.backlog:
            k = self.backlog - (FIRED - DONE)
        else:
            now = time.monotonic()
            if self.t0 is None:
                self.t0 = now
            k = int((now - self.t0) * self.rate) - self.n
        if k <= 0:
            return None
        out = [{"n": FIRED + i} for i in range(k)]
        FIRED += k
        self.n += k
        return out
'''


def run_trigctl(variant: str, rate: str, seconds: float, conc: int, profile: bool) -> dict:
    from trigctl.config import load_config
    from trigctl.runner import Runner
    from trigctl.store.sqlite import SQLiteStore

    tmp = Path(tempfile.mkdtemp(prefix="trigctl-fire-"))
    (tmp / "bench_source.py").write_text(SOURCE)
    closed = rate == "max"
    args = f"{{backlog: {3 * conc}}}" if closed else f"{{rate: {float(rate)}}}"
    (tmp / "triggers.yaml").write_text(
        f"""version: 1
max_concurrent_runs: {conc}
workflows:
  wf:
    tasks:
      - {VARIANTS[variant][0]}
triggers:
  - name: src
    type: python
    callable: bench_source:Source
    args: {args}
    interval: 5ms
    dedupe: none
    workflow: wf
""")
    cfg = load_config(tmp / "triggers.yaml")
    store = SQLiteStore(str(tmp / "state.db"))
    quiet_cli_logging()
    runner = Runner(cfg, store, install_signals=False, grace=5)
    import bench_source  # imported by the trigger (the YAML's directory is on sys.path)

    # A run counts as done once its end is recorded and announced (WorkflowRunner._finished: after
    # finish_run on main, after the batch holding it was committed here).
    original_finished = runner.workflows._finished

    def finished(ex, status, error):
        bench_source.DONE += 1
        original_finished(ex, status, error)

    runner.workflows._finished = finished
    transactions = [0]  # the store's write transactions (SQLiteStore._tx), counted from here
    tx = store._tx

    def counted_tx(*args, **kwargs):
        transactions[0] += 1
        return tx(*args, **kwargs)

    store._tx = counted_tx  # type: ignore[method-assign]
    t = threading.Thread(target=runner.run, daemon=True)
    t.start()
    while runner._owner is None:
        time.sleep(0.01)
    t0 = time.time()
    sampler = Sampler().start() if profile else None
    time.sleep(WARMUP)
    tx0 = transactions[0]
    with CpuWindow() as cpu:
        time.sleep(seconds - WARMUP)
    window_tx = transactions[0] - tx0
    t1 = time.time()
    bench_source.STOP = True
    if sampler:
        sampler.stop()
    deadline = time.monotonic() + 120
    while bench_source.DONE < bench_source.FIRED and time.monotonic() < deadline:
        time.sleep(0.05)
    drained = time.time() - t1
    runner.stop()
    t.join(60)
    store.close()

    db = sqlite3.connect(str(tmp / "state.db"))
    rows = db.execute(
        "SELECT r.id, r.status, r.triggered_at, r.started_at, t.started_at, t.output_tail, t.status "
        "FROM runs r LEFT JOIN tasks t ON t.run_id = r.id AND t.idx = 0").fetchall()
    fire_events = db.execute("SELECT count(*), count(DISTINCT run_id) FROM events WHERE kind = 'fire'").fetchone()
    orphan_events = db.execute(
        "SELECT count(*) FROM events e WHERE kind = 'fire' AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.id = e.run_id)").fetchone()[0]
    db.close()
    starts, lat, claim = [], [], []
    for _rid, _status, trig, claimed, tstart, tail, _tstatus in rows:
        if variant == "argv-date":
            try:
                tstart = float((tail or "").strip().splitlines()[-1])
            except (ValueError, IndexError):
                tstart = None
        if tstart is None:
            continue
        if t0 + WARMUP <= tstart < t1:
            starts.append(tstart)
        if t0 + WARMUP <= trig < t1:
            lat.append(tstart - trig)
            claim.append(claimed - trig)
    statuses: dict[str, int] = {}
    for r in rows:
        statuses[r[1]] = statuses.get(r[1], 0) + 1
    complete = (fire_events[0] == bench_source.FIRED == len(rows) == fire_events[1] and orphan_events == 0
                and statuses.get("succeeded", 0) == len(rows) and all(r[6] == "succeeded" for r in rows))
    out = {"who": "trigctl", "variant": variant, "rate": rate, "conc": conc,
           "per_s": len(starts) / (t1 - t0 - WARMUP), "p50_ms": pct(lat, 50) * 1000, "p99_ms": pct(lat, 99) * 1000,
           "claim_p50_ms": pct(claim, 50) * 1000, "claim_p99_ms": pct(claim, 99) * 1000,
           "fired": bench_source.FIRED, "runs": len(rows), "fire_events": fire_events[0], "statuses": statuses,
           "complete": complete, "drain_s": drained, "cpu": cpu.self_cpu, "child_cpu": cpu.child_cpu,
           "switches_per_s": cpu.switches, "tx_per_s": window_tx / cpu.wall,
           "user": cpu.user, "system": cpu.system}
    if sampler:
        out["profile"] = sampler.report()
    return out


def run_baseline(variant: str, rate: str, seconds: float, conc: int) -> dict:
    cmd = VARIANTS[variant][1]
    stamp = variant == "argv-date"
    lat: list[float] = []
    starts: list[float] = []
    lock = threading.Lock()
    stop = threading.Event()

    def spawn(submitted: float) -> None:
        called = time.time()
        if stamp:
            p = subprocess.Popen(cmd, stdout=subprocess.PIPE)
            out = p.communicate()[0]
            started = float(out.strip())
        else:
            subprocess.Popen(cmd).wait()
            started = called
        with lock:
            starts.append(started)
            lat.append(started - submitted)

    t0 = time.time()
    if rate == "max":
        def worker():
            while not stop.is_set():
                spawn(time.time())
        threads = [threading.Thread(target=worker, daemon=True) for _ in range(conc)]
        for th in threads:
            th.start()
        time.sleep(WARMUP)
        with CpuWindow() as cpu:
            time.sleep(seconds - WARMUP)
        t1 = time.time()
        stop.set()
        for th in threads:
            th.join()
    else:
        r = float(rate)
        pool = ThreadPoolExecutor(conc)
        n = 0
        m0 = time.monotonic()
        cpu = CpuWindow()
        entered = False
        while True:
            now = time.monotonic()
            if now - m0 >= seconds:
                break
            if not entered and now - m0 >= WARMUP:
                cpu.__enter__()
                entered = True
            k = int((now - m0) * r) - n
            submitted = time.time()
            for _ in range(k):
                pool.submit(spawn, submitted)
            n += max(k, 0)
            time.sleep(TICK)
        cpu.__exit__()
        t1 = time.time()
        pool.shutdown(wait=True)
    window = [s for s in starts if t0 + WARMUP <= s < t1]
    # latency of the same window as trigctl: submitted (~ started - latency) within it
    wl = [lat_s for s, lat_s in zip(starts, lat) if t0 + WARMUP <= s - lat_s < t1]
    return {"who": "baseline", "variant": variant, "rate": rate, "conc": conc, "per_s": len(window) / (t1 - t0 - WARMUP),
            "p50_ms": pct(wl, 50) * 1000, "p99_ms": pct(wl, 99) * 1000, "cpu": cpu.self_cpu, "child_cpu": cpu.child_cpu,
            "switches_per_s": cpu.switches}


def child(argv: list[str]) -> dict:
    who, variant, rate, seconds, conc, profile = argv
    if who == "trigctl":
        return run_trigctl(variant, rate, float(seconds), int(conc), profile == "1")
    return run_baseline(variant, rate, float(seconds), int(conc))


def spawn_child(*args) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *map(str, args)], capture_output=True, text=True)
    if out.returncode != 0:
        print(out.stderr, file=sys.stderr)
        raise SystemExit(f"child {args} failed")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", nargs="+", default=["argv-true", "run-true", "argv-date"], choices=list(VARIANTS))
    ap.add_argument("--rates", nargs="+", default=["max", "300"], help="'max' (closed loop) or runs per second")
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--concurrency", type=int, default=8, help="max_concurrent_runs, and the baseline's threads")
    ap.add_argument("--profile", action="store_true", help="sample every thread of trigctl; print where time goes")
    ap.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child)))
        return
    print("| workflow | offered | trigctl runs/s | baseline spawns/s | ratio | trigctl fire→start p50 / p99 ms | "
          "baseline p50 / p99 ms | history complete | trigctl CPU s/s (self + children) | baseline CPU s/s | "
          "context switches a run: trigctl / baseline | trigctl write transactions a run |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    profiles = []
    for rate in args.rates:
        for variant in args.variants:
            tr = spawn_child("trigctl", variant, rate, args.seconds, args.concurrency, int(args.profile))
            bl = spawn_child("baseline", variant, rate, args.seconds, args.concurrency, 0)
            offered = "max (closed loop)" if rate == "max" else f"{float(rate):g}/s"
            hist = (f"yes ({tr['runs']} fires = runs, all succeeded)" if tr["complete"]
                    else f"NO: fired {tr['fired']}, events {tr['fire_events']}, runs {tr['runs']}, {tr['statuses']}")
            print(f"| {VARIANTS[variant][0]} | {offered} | {tr['per_s']:.0f} | {bl['per_s']:.0f} | "
                  f"{tr['per_s'] / bl['per_s']:.2f} | {tr['p50_ms']:.1f} / {tr['p99_ms']:.1f} | "
                  f"{bl['p50_ms']:.1f} / {bl['p99_ms']:.1f} | {hist} | {tr['cpu']:.2f} + {tr['child_cpu']:.2f} | "
                  f"{bl['cpu']:.2f} + {bl['child_cpu']:.2f} | "
                  f"{tr['switches_per_s'] / tr['per_s']:.1f} / {bl['switches_per_s'] / bl['per_s']:.1f} | "
                  f"{tr['tx_per_s'] / tr['per_s']:.1f} |", flush=True)
            if "profile" in tr:
                per_run = 1000 / max(tr["per_s"], 1e-9)
                profiles.append((variant, rate, f"trigctl process CPU per run: {tr['cpu'] * per_run:.2f} ms "
                                 f"(user {tr['user'] * per_run:.2f}, system {tr['system'] * per_run:.2f}); reaped children "
                                 f"{tr['child_cpu'] * per_run:.2f} ms\n" + tr["profile"]))
    for variant, rate, prof in profiles:
        print(f"\n## profile: {variant} at {rate}\n```\n{prof}\n```")


if __name__ == "__main__":
    main()

"""Metrics: the loop's CPU with and without `--metrics`, N python triggers due every 1 s.

    python bench/bench_metrics.py --n 10000 --seconds 10 --rounds 2
    python bench/bench_metrics.py --micro --n 10000 --rounds 40

Variants, each in its own subprocess (a real Runner, logging as `trigctl run` does, into /dev/null):
``off`` (no metrics), ``on`` (the metrics subscriber attached, the HTTP server listening, no scrape),
``on + scrape`` (the same, scraped every --scrape-every seconds by a client in another process:
the scrape builds its text on the server's thread, inside this process). Rounds alternate the
variants, so drift of a shared machine hits them alike. Prints a markdown table; the ratio is to
``off`` in the same round.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _common import pct, python_triggers_project, quiet_cli_logging, record_lateness, rss_mb  # noqa: E402

VARIANTS = ("off", "on", "on + scrape")


def thread_cpu(native_id: int) -> float:
    """CPU seconds (user + system) of one thread of this process, from /proc; NaN once it has ended
    (a hand-off: a call held the loop past 50 ms, so another thread owns it now)."""
    try:
        with open(f"/proc/self/task/{native_id}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return float("nan")
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def scraper(url: str, every: float, seconds: float) -> None:
    """In a process of its own (as Prometheus is): GET url every `every` s; prints timings as JSON."""
    import urllib.request

    times, sizes = [], []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.monotonic()
        with urllib.request.urlopen(url, timeout=30) as r:
            body = r.read()
        times.append(time.monotonic() - t0)
        sizes.append(len(body))
        time.sleep(max(0.0, every - (time.monotonic() - t0)))
    print(json.dumps({"times": times, "sizes": sizes}))


def run_variant(n: int, seconds: float, spread: bool, variant: str, scrape_every: float) -> dict:
    from trigctl.config import load_config
    from trigctl.runner import Runner
    from trigctl.store.sqlite import SQLiteStore

    quiet_cli_logging()
    path = python_triggers_project(n, spread, prefix="trigctl-bench-metrics-")
    cfg = load_config(path, light=True)
    state = str(path.parent / "state.db")
    store = SQLiteStore(state)
    lateness = record_lateness()
    runner = Runner(cfg, store, install_signals=False, grace=1)
    server = None
    if variant != "off":
        from trigctl.observe.metrics import MetricsServer

        server = MetricsServer.serve("127.0.0.1:0", cfg, None, state)
        server.attach(runner)
    t = threading.Thread(target=runner.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 180
    while runner._owner is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(2.0)  # warm-up: the first round of polls after loading
    loop_thread = runner._owner
    assert loop_thread is not None and loop_thread.native_id is not None
    client = None
    if variant == "on + scrape":
        assert server is not None
        client = subprocess.Popen([sys.executable, __file__, "--scrape", server.url, "--scrape-every", str(scrape_every),
                                   "--seconds", str(seconds)], stdout=subprocess.PIPE, text=True)
    lateness.clear()
    cpu0, loop0, wall0 = time.process_time(), thread_cpu(loop_thread.native_id), time.monotonic()
    time.sleep(seconds)
    cpu1, loop1, wall1 = time.process_time(), thread_cpu(loop_thread.native_id), time.monotonic()
    sample = list(lateness)
    scrapes = {"times": [], "sizes": []}
    if client is not None:
        out, _ = client.communicate(timeout=120)
        scrapes = json.loads(out)
    rss = rss_mb()
    handoffs = runner.handoffs
    if runner._owner is not loop_thread:
        loop1 = float("nan")  # the loop moved to another thread during the window: no one thread's figure
    runner.stop()
    t.join(30)
    if server is not None:
        server.close()
    wall = wall1 - wall0
    return {"variant": variant, "n": n, "phase": "spread" if spread else "at once", "polls": len(sample),
            "p50_ms": pct(sample, 50) * 1000, "p99_ms": pct(sample, 99) * 1000,
            "cpu": (cpu1 - cpu0) / wall, "loop_cpu": (loop1 - loop0) / wall, "rss_mb": rss, "handoffs": handoffs,
            "scrape_ms": [round(x * 1000, 1) for x in scrapes["times"]], "scrape_kb": [s // 1024 for s in scrapes["sizes"]]}


def micro(n: int, rounds: int) -> None:
    """Load-proof figures: the fastest of ``rounds`` ticks (a tick: n skipped polls started and
    recorded inline, as the loop does) for each bus, interleaved; and one scrape's rendering."""
    from prometheus_client import generate_latest

    from trigctl.config import load_config
    from trigctl.events import PollCompleted
    from trigctl.observe.metrics import Metrics
    from trigctl.runner import Runner
    from trigctl.store.sqlite import SQLiteStore

    quiet_cli_logging()
    path = python_triggers_project(n, spread=False, prefix="trigctl-bench-metrics-micro-")
    cfg = load_config(path, light=True)
    runners = {}
    for variant in ("off", "a no-op PollCompleted subscriber", "on"):
        store = SQLiteStore(str(path.parent / f"state-{len(runners)}.db"))
        runner = Runner(cfg, store, install_signals=False)
        if variant == "on":
            metrics = Metrics(cfg)
            metrics.attach(runner)
        elif variant != "off":
            runner.bus.subscribe(lambda event: None, [PollCompleted])
        runner.scheduler.load(1_000_000.0)
        runners[variant] = runner
    # As Runner.run does once loaded: long-lived objects out of the collector's scans, a higher
    # young-generation threshold (per-poll objects would otherwise trigger full collections).
    import gc

    from trigctl.runner import GC_THRESHOLD

    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 100)
    best = dict.fromkeys(runners, float("inf"))
    now = 1_000_000.0
    for _ in range(rounds):
        now += 1.0
        for variant, runner in runners.items():
            sched = runner.scheduler
            t0 = time.perf_counter()
            for poll in sched.tick(now):
                sched.complete(poll, sched.execute(poll), None, now)
            best[variant] = min(best[variant], (time.perf_counter() - t0) / n)
            sched.flush(now, force=True)
    for runner in runners.values():
        runner.scheduler.close()
        runner.store.close()
    print(f"Per poll, {n:,} python triggers, fastest of {rounds} ticks (tick + call + record, inline):\n")
    print("| bus | µs per poll | added µs per poll | CPU s/s added at 10,000 polls/s |")
    print("|---|---|---|---|")
    for variant, t in best.items():
        added = t - best["off"]
        print(f"| {variant} | {t * 1e6:.2f} | {added * 1e6:+.2f} | {added * 10_000:+.3f} |")
    timings: dict[str, float] = {"Metrics.exposition (what /metrics serves)": float("inf"),
                                 "prometheus_client generate_latest (same samples)": float("inf")}
    for _ in range(5):
        t0 = time.perf_counter()
        fast = metrics.exposition()
        timings["Metrics.exposition (what /metrics serves)"] = min(
            timings["Metrics.exposition (what /metrics serves)"], time.perf_counter() - t0)
        t0 = time.perf_counter()
        reference = generate_latest(metrics.registry)
        timings["prometheus_client generate_latest (same samples)"] = min(
            timings["prometheus_client generate_latest (same samples)"], time.perf_counter() - t0)
    print(f"\nOne scrape's text, {n:,} triggers ({fast.count(chr(10)):,} lines, {len(fast) // 1024:,} KB), fastest of 5:\n")
    print("| renderer | ms | ratio |")
    print("|---|---|---|")
    base = timings["Metrics.exposition (what /metrics serves)"]
    for name, t in timings.items():
        print(f"| {name} | {t * 1000:.0f} | {t / base:.1f} |")
    assert len(reference) > 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--phases", nargs="+", default=["spread", "at once"])
    ap.add_argument("--scrape-every", type=float, default=5.0)
    ap.add_argument("--child", nargs=2, metavar=("VARIANT", "PHASE"))
    ap.add_argument("--scrape", metavar="URL")
    ap.add_argument("--micro", action="store_true", help="the load-proof figures only (fastest of --rounds ticks)")
    a = ap.parse_args()
    if a.micro:
        micro(a.n, a.rounds)
        print("\n (load at the end)", os.popen("uptime").read().strip())
        return
    if a.scrape:
        scraper(a.scrape, a.scrape_every, a.seconds)
        return
    if a.child:
        variant, phase = a.child
        print(json.dumps(run_variant(a.n, a.seconds, phase == "spread", variant, a.scrape_every)))
        return
    rows = []
    for rnd in range(a.rounds):
        for phase in a.phases:
            order = VARIANTS if rnd % 2 == 0 else tuple(reversed(VARIANTS))
            for variant in order:
                out = subprocess.run([sys.executable, __file__, "--child", variant, phase, "--n", str(a.n),
                                      "--seconds", str(a.seconds), "--scrape-every", str(a.scrape_every)],
                                     capture_output=True, text=True, timeout=600)
                if out.returncode != 0:
                    sys.exit(out.stderr)
                row = json.loads(out.stdout.strip().splitlines()[-1])
                row["round"] = rnd + 1
                rows.append(row)
                print(f"# {json.dumps(row)}", file=sys.stderr)
    print(f"N = {a.n} python triggers every 1 s, {a.seconds:g} s measured per variant, scrape every {a.scrape_every:g} s\n")
    print("| round | phase | variant | loop thread CPU s/s | ratio | process CPU s/s | ratio | process CPU µs per poll "
          "| ratio | lateness p50 / p99 ms | polls executed / due | scrape ms (each) | scrape KB | RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        base = next(r for r in rows if r["round"] == row["round"] and r["phase"] == row["phase"] and r["variant"] == "off")
        scrape = ", ".join(f"{x:.0f}" for x in row["scrape_ms"]) or "-"
        size = str(row["scrape_kb"][0]) if row["scrape_kb"] else "-"
        per_poll, base_per_poll = (r["cpu"] * a.seconds / max(r["polls"], 1) * 1e6 for r in (row, base))
        print(f"| {row['round']} | {row['phase']} | {row['variant']} | {row['loop_cpu']:.3f} | "
              f"{row['loop_cpu'] / base['loop_cpu']:.2f} | {row['cpu']:.3f} | {row['cpu'] / base['cpu']:.2f} | "
              f"{per_poll:.1f} | {per_poll / base_per_poll:.2f} | "
              f"{row['p50_ms']:.1f} / {row['p99_ms']:.1f} | {row['polls']} / {row['n'] * a.seconds:.0f} | {scrape} | {size} | "
              f"{row['rss_mb']:.0f} |")
    print()
    print(" (load at the end)", os.popen("uptime").read().strip())


if __name__ == "__main__":
    main()

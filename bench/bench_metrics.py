"""Metrics: the loop's CPU with and without `--metrics`, N python triggers due every 1 s.

    python bench/bench_metrics.py --n 10000 --seconds 10 --rounds 2

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
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _common import pct, quiet_cli_logging, rss_mb  # noqa: E402

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
    from trigctl.scheduler import Scheduler
    from trigctl.store.sqlite import SQLiteStore

    quiet_cli_logging()
    tmp = Path(tempfile.mkdtemp(prefix="trigctl-bench-metrics-"))
    (tmp / "bench_callables.py").write_text("def noop():\n    return None\n")
    lines = ["version: 1", "workflows:", "  wf:", "    tasks:", "      - run: 'true'", "triggers:"]
    for i in range(n):
        lines += [f"  - name: t{i}", "    type: python", "    callable: bench_callables:noop", "    workflow: wf",
                  "    interval: 1s"] + (["    jitter: 1s"] if spread else [])
    (tmp / "triggers.yaml").write_text("\n".join(lines) + "\n")
    cfg = load_config(tmp / "triggers.yaml", light=True)
    state = str(tmp / "state.db")
    store = SQLiteStore(state)
    lateness: list[float] = []
    record = lateness.append
    original = Scheduler.execute

    def timed_execute(self, poll):
        record(time.time() - poll.due_at)
        return original(self, poll)

    Scheduler.execute = timed_execute  # type: ignore[method-assign]
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--phases", nargs="+", default=["spread", "at once"])
    ap.add_argument("--scrape-every", type=float, default=5.0)
    ap.add_argument("--child", nargs=2, metavar=("VARIANT", "PHASE"))
    ap.add_argument("--scrape", metavar="URL")
    a = ap.parse_args()
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
    print("| round | phase | variant | loop thread CPU s/s | ratio | process CPU s/s | ratio | lateness p50 / p99 ms "
          "| polls executed / due | scrape ms (each) | scrape KB | RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        base = next(r for r in rows if r["round"] == row["round"] and r["phase"] == row["phase"] and r["variant"] == "off")
        scrape = ", ".join(f"{x:.0f}" for x in row["scrape_ms"]) or "-"
        size = str(row["scrape_kb"][0]) if row["scrape_kb"] else "-"
        print(f"| {row['round']} | {row['phase']} | {row['variant']} | {row['loop_cpu']:.3f} | "
              f"{row['loop_cpu'] / base['loop_cpu']:.2f} | {row['cpu']:.3f} | {row['cpu'] / base['cpu']:.2f} | "
              f"{row['p50_ms']:.1f} / {row['p99_ms']:.1f} | {row['polls']} / {row['n'] * a.seconds:.0f} | {scrape} | {size} | "
              f"{row['rss_mb']:.0f} |")
    print()
    print(" (load at the end)", os.popen("uptime").read().strip())


if __name__ == "__main__":
    main()

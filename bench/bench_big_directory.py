"""A `file` trigger on a big directory: the cost of one poll, first and steady state, and RSS, at
10k, 30k and 100k files; side by side with a bare `os.scandir` + `stat` of the same directory.

    python bench/bench_big_directory.py                       # 10k 30k 100k (~1 min; files cached)
    python bench/bench_big_directory.py --sizes 10000 100000 --cache /tmp/trigctl-bench-bigdir

The directories are created once under --cache (1 byte per file, mtime an hour ago so that they are
settled at first sight) and reused by later runs. Each size runs in its own subprocess, so RSS is its
own. Per size:
  baseline        `os.scandir` + `entry.stat()` of every entry (median of 6, interleaved with the steady polls)
  first poll      FileTrigger.poll() with an empty state: every file fires (one context per file)
  record          what the loop then does with that poll: Store.record_fires() of every fire and the
                  per-file state (path -> [size, mtime]) in one SQLite transaction
  steady poll     poll() again, the state as loaded back from the store: nothing fires (median of 5)
  RSS             the process after the first poll (trigger + its remembered files), and the growth
                  over the interpreter with trigctl imported
The garbage collector is set as `trigctl run` sets it (frozen after start-up, threshold 50,000).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import rss_mb  # noqa: E402

DEFAULT_CACHE = "/tmp/trigctl-bench-bigdir"


def ensure_dir(cache: Path, n: int) -> Path:
    d = cache / f"n{n}"
    marker = d / ".complete"
    if marker.exists():
        return d
    d.mkdir(parents=True, exist_ok=True)
    old = time.time() - 3600
    for i in range(n):
        p = d / f"f{i:07d}.dat"
        with open(p, "wb") as f:
            f.write(b"x")
        os.utime(p, (old, old))
    marker.write_text(str(n))
    return d


def baseline(d: Path) -> float:
    t = time.perf_counter()
    found = {}
    with os.scandir(d) as it:
        for e in it:
            st = e.stat()
            found[e.path] = (st.st_size, st.st_mtime)
    return time.perf_counter() - t


def child(d: Path, n: int) -> dict:
    from trigctl.config import load_config
    from trigctl.store.base import PollStats
    from trigctl.store.sqlite import SQLiteStore
    from trigctl.triggers.base import PollContext
    from trigctl.triggers.file import FileTrigger

    tmp = Path(tempfile.mkdtemp(prefix="trigctl-bigdir-"))
    (tmp / "triggers.yaml").write_text(f"""version: 1
workflows:
  wf: {{tasks: [{{argv: ['true']}}]}}
triggers:
  - name: big
    type: file
    path: {d}
    pattern: '*.dat'
    workflow: wf
""")
    cfg = load_config(tmp / "triggers.yaml")
    tc = cfg.triggers[0]
    import gc

    from trigctl.runner import GC_THRESHOLD

    gc.collect()  # the loop's collector settings (see Runner._run)
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 100)
    rss0 = rss_mb()
    trig = FileTrigger(tc, cfg.base_dir)
    base = [baseline(d)]  # also warms the dentry/inode caches for the first poll
    now = time.time()
    t = time.perf_counter()
    out = trig.poll(PollContext(now, now, None, {}, 30.0))
    first = time.perf_counter() - t
    fires = len(out.fires)
    store = SQLiteStore(str(tmp / "state.db"))
    store.sync_triggers(["big"])
    from trigctl.scheduler import Scheduler

    sched = Scheduler(cfg, store)
    slot = sched._add(tc, None, now, {})
    t = time.perf_counter()
    requests = sched.fire_requests(slot, out.fires)
    store.record_fires("big", "wf", requests, PollStats("big"), now, None, out.state_updates)
    record = time.perf_counter() - t
    del requests
    state = store.load_all_kv()["big"]
    out = None
    rss_first = rss_mb()
    steady = []
    for _ in range(5):  # interleaved with the baseline, so that both see the same machine
        base.append(baseline(d))
        now = time.time()
        t = time.perf_counter()
        o = trig.poll(PollContext(now, now, None, state, 30.0))
        steady.append(time.perf_counter() - t)
        assert not o.fires and not o.state_updates, (len(o.fires), len(o.state_updates))
    db_size = os.path.getsize(tmp / "state.db") + os.path.getsize(str(tmp / "state.db") + "-wal")
    return {"n": n, "fires": fires, "baseline": statistics.median(base), "first": first, "record": record,
            "steady": statistics.median(steady), "rss": rss_first, "rss_growth": rss_first - rss0, "db_mb": db_size / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000, 100_000])
    ap.add_argument("--cache", default=DEFAULT_CACHE)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(Path(args.child[0]), int(args.child[1]))))
        return
    rows = []
    for n in args.sizes:
        d = ensure_dir(Path(args.cache), n)
        r = subprocess.run([sys.executable, __file__, "--child", str(d), str(n)], capture_output=True, text=True)
        if r.returncode:
            print(r.stderr, file=sys.stderr)
            raise SystemExit(1)
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
    print("| files | baseline scandir+stat ms (µs/file) | first poll ms (µs/file) | ratio | record fires + state ms (µs/file) | "
          "steady poll ms (µs/file) | ratio | RSS after first poll MB (growth) | state file MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        n = r["n"]

        def f(s, n=n):
            return f"{s * 1000:.0f} ({s / n * 1e6:.2f})"

        print(f"| {n:,} | {f(r['baseline'])} | {f(r['first'])} | {r['first'] / r['baseline']:.1f}× | {f(r['record'])} | "
              f"{f(r['steady'])} | {r['steady'] / r['baseline']:.1f}× | {r['rss']:.0f} (+{r['rss_growth']:.0f}) | "
              f"{r['db_mb']:.1f} |")
    if len(rows) > 1:
        a, b = rows[0], rows[-1]
        k = b["n"] / a["n"]
        print(f"\n{k:.0f}× the files: steady poll {b['steady'] / a['steady']:.1f}×, first poll {b['first'] / a['first']:.1f}×, "
              f"record {b['record'] / a['record']:.1f}×, baseline {b['baseline'] / a['baseline']:.1f}× (linear = {k:.0f}×)")


if __name__ == "__main__":
    main()

"""File reaction: a file is closed -> the first task of the run it fires has started.

    python bench/bench_file_reaction.py                  # the README table (~2.5 min)
    python bench/bench_file_reaction.py --files 200 --gap 0.1
    python bench/bench_file_reaction.py --big 10000 --big-only   # 10,000 files at once, with run throughput

For each mode, `trigctl run` (the real CLI, a subprocess) watches an empty directory with one `file`
trigger whose workflow is one task `argv: [date, '+%s.%N']`: the task's process prints the time it
started (read back from the run's output tail), so "task started" is the process itself, not
trigctl's bookkeeping. The bench writes 1 KB files (open, write, close; the close time is taken right
after close()): first `--files` files one at a time, `--gap` seconds apart, then `--files` files in a
burst as fast as it can. Per file: close -> fire (the run's triggered_at) and close -> task started.

Modes, in the same run:
  watch, settle 0s        the target: inotify wakes the trigger at once
  watch, settle 1s        the default settle: the close-after-write event ends the wait early
  poll 1s, settle 0s      the baseline: watch: false, interval 1s (the polling backstop alone)
  raw watchdog            the floor: close -> a watchdog on_closed handler in the bench process

A burst of N files starts N runs; with max_concurrent_runs: 8 their task starts queue behind run
throughput (see bench_fire_throughput.py), so the burst's close -> fire shows the trigger's reaction and
close -> task start adds the run queue.

`--big N` adds a third phase to the watching mode with settle 0s: N files written at once (10,000 by
default with --big-only). It reports whether every file was processed (a succeeded run for each),
close -> task started, and files per second (first close -> last run completed); with it, the
closed-loop run throughput of the same workflow (bench_fire_throughput.py, `argv: [date, +%s.%N]`,
max) is measured in the same invocation, for the ratio files/s / runs/s.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import pct  # noqa: E402

PAYLOAD = b"x" * 1024


def write_file(path: Path) -> float:
    with open(path, "wb") as f:
        f.write(PAYLOAD)
    return time.time()


def start_trigctl(tmp: Path, watch: bool, settle: str, interval: str, conc: int) -> subprocess.Popen:
    (tmp / "inbox").mkdir(parents=True, exist_ok=True)
    (tmp / "triggers.yaml").write_text(f"""version: 1
state: state.db
max_concurrent_runs: {conc}
workflows:
  wf:
    tasks:
      - argv: [date, '+%s.%N']
triggers:
  - name: inbox
    type: file
    path: inbox
    pattern: '*.dat'
    watch: {str(watch).lower()}
    settle: {settle}
    interval: {interval}
    workflow: wf
""")
    log = open(tmp / "run.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "trigctl", "run", str(tmp / "triggers.yaml")], stdout=log,
                            stderr=subprocess.STDOUT, cwd=tmp)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if b" start " in (tmp / "run.log").read_bytes():
            break
        time.sleep(0.05)
    time.sleep(0.5)
    return proc


def reactions(db: Path, closed: dict[str, float]) -> tuple[list[float], list[float], int, int]:
    """Per file: close -> first fire of its final content, close -> that run's task start."""
    c = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    rows = c.execute("SELECT r.triggered_at, json_extract(r.context, '$.path'), json_extract(r.context, '$.size'), "
                     "t.output_tail, r.status FROM runs r LEFT JOIN tasks t ON t.run_id = r.id AND t.idx = 0").fetchall()
    c.close()
    first: dict[str, tuple[float, float | None]] = {}
    extra = 0
    for trig, path, size, tail, _status in rows:
        if path not in closed:
            continue
        if size != len(PAYLOAD):
            extra += 1  # fired while still empty (a `created` event before the write, with settle 0)
            continue
        try:
            start = float((tail or "").split()[-1])
        except (ValueError, IndexError):
            start = None
        if path not in first or trig < first[path][0]:
            first[path] = (trig, start)
    fire = [first[p][0] - t for p, t in closed.items() if p in first]
    task = [first[p][1] - t for p, t in closed.items() if p in first and first[p][1] is not None]
    return fire, task, len(closed) - len(first), extra


def wait_done(db: Path, closed: dict[str, float], timeout: float = 60) -> None:
    timeout = max(timeout, len(closed) / 50)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            c = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
            n = c.execute("SELECT count(DISTINCT json_extract(context, '$.path')) FROM runs WHERE status = 'succeeded' "
                          "AND json_extract(context, '$.size') = ?", (len(PAYLOAD),)).fetchone()[0]
            active = c.execute("SELECT count(*) FROM runs WHERE status IN ('queued', 'running')").fetchone()[0]
            c.close()
            if n >= len(closed) and not active:
                return
        except sqlite3.OperationalError:
            pass
        time.sleep(0.2)


def completed_span(db: Path, closed: dict[str, float]) -> float:
    """First close -> the last of these files' runs completed, seconds."""
    c = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    paths = set(closed)
    last = max((t for path, t in c.execute("SELECT json_extract(context, '$.path'), completed_at FROM runs "
                                             "WHERE status = 'succeeded'") if path in paths), default=0.0)
    c.close()
    return last - min(closed.values())


def run_mode(name: str, watch: bool, settle: str, interval: str, files: int, gap: float, conc: int,
             phases: tuple[str, ...] = ("one at a time", "burst"), big: int = 0) -> list[dict]:
    tmp = Path(tempfile.mkdtemp(prefix="trigctl-react-"))
    proc = start_trigctl(tmp, watch, settle, interval, conc)
    out = []
    try:
        db = tmp / "state.db"
        everything: dict[str, float] = {}
        for phase in phases:
            closed: dict[str, float] = {}
            for i in range(big if phase == "big burst" else files):
                p = tmp / "inbox" / f"{phase[0]}{i:05d}.dat"
                closed[str(p)] = write_file(p)
                if phase == "one at a time":
                    time.sleep(gap)
            wait_done(db, {**everything, **closed})
            everything.update(closed)
            fire, task, missing, extra = reactions(db, closed)
            out.append({"mode": name, "phase": phase, "fire": fire, "task": task, "missing": missing, "extra": extra,
                        "n": len(closed), "per_s": len(closed) / max(completed_span(db, closed), 1e-9)})
    finally:
        proc.terminate()
        proc.wait(30)
    return out


def run_raw(files: int, gap: float) -> list[dict]:
    from watchdog.events import FileSystemEventHandler
    from watchdog.observers import Observer

    tmp = Path(tempfile.mkdtemp(prefix="trigctl-react-raw-"))
    seen: dict[str, float] = {}
    lock = threading.Lock()

    class H(FileSystemEventHandler):
        def on_closed(self, event):
            now = time.time()
            with lock:
                seen.setdefault(os.fsdecode(event.src_path), now)

    obs = Observer()
    obs.schedule(H(), str(tmp), recursive=False)
    obs.start()
    time.sleep(0.3)
    out = []
    try:
        for phase in ("one at a time", "burst"):
            closed = {}
            for i in range(files):
                p = tmp / f"{phase[0]}{i:05d}.dat"
                closed[str(p)] = write_file(p)
                if phase == "one at a time":
                    time.sleep(gap)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and any(p not in seen for p in closed):
                time.sleep(0.01)
            lat = [seen[p] - t for p, t in closed.items() if p in seen]
            out.append({"mode": "raw watchdog (floor)", "phase": phase, "fire": lat, "task": [],
                        "missing": len(closed) - len(lat), "extra": 0})
    finally:
        obs.stop()
        obs.join()
    return out


def ms(values, p) -> str:
    return f"{pct(values, p) * 1000:.1f}" if values else "-"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--gap", type=float, default=0.1, help="seconds between files in the one-at-a-time phase")
    ap.add_argument("--concurrency", type=int, default=8, help="max_concurrent_runs")
    ap.add_argument("--big", type=int, default=0, help="files in the big burst (watch, settle 0s); 0: none")
    ap.add_argument("--big-only", action="store_true", help="only the big burst (default 10,000 files) and run throughput")
    args = ap.parse_args()
    if args.big_only:
        big_burst(args.big or 10_000, args.concurrency)
        return
    results = []
    results += run_mode("watch, settle 0s", True, "0s", "30s", args.files, args.gap, args.concurrency,
                        ("one at a time", "burst", "big burst") if args.big else ("one at a time", "burst"), args.big)
    results += run_mode("watch, settle 1s (default)", True, "1s", "30s", args.files, args.gap, args.concurrency)
    results += run_mode("poll 1s, settle 0s (baseline)", False, "0s", "1s", args.files, args.gap, args.concurrency)
    results += run_raw(args.files, args.gap)
    floor = {r["phase"]: r for r in results if r["mode"].startswith("raw")}
    base = {r["phase"]: r for r in results if r["mode"].startswith("poll")}
    print("| mode | phase | close→fire p50 / p99 ms | close→task started p50 / p99 / max ms | vs poll baseline (p50 task) | "
          "vs raw watchdog (p50 fire) | files missed | extra fires (empty file) | waited ≥ 0.5 s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        if r["phase"] == "big burst":
            continue
        b, f = base[r["phase"]], floor[r["phase"]]
        vs_base = f"{pct(r['task'], 50) / pct(b['task'], 50):.3f}×" if r["task"] else "-"
        vs_floor = f"{pct(r['fire'], 50) / pct(f['fire'], 50):.0f}×" if r["fire"] else "-"
        mx = f"{max(r['task']) * 1000:.1f}" if r["task"] else "-"
        print(f"| {r['mode']} | {r['phase']} ({args.files} files) | {ms(r['fire'], 50)} / {ms(r['fire'], 99)} | "
              f"{ms(r['task'], 50)} / {ms(r['task'], 99)} / {mx} | {vs_base} | {vs_floor} | {r['missing']} | {r['extra']} | "
              f"{sum(1 for x in (r['task'] or r['fire']) if x >= 0.5)} |",
              flush=True)
    for r in results:
        if r["phase"] == "big burst":
            print_big(r, None)


def print_big(r: dict, runs_per_s: float | None) -> None:
    vs = f"{r['per_s'] / runs_per_s:.2f}" if runs_per_s else "-"
    print(f"\n| big burst | files | all processed | close→task started p50 / p99 ms | files/s | run throughput runs/s "
          f"(bench_fire_throughput argv-date, max) | files/s / runs/s |\n|---|---|---|---|---|---|---|\n"
          f"| {r['mode']} | {r['n']} | {'yes' if not r['missing'] else 'NO: ' + str(r['missing']) + ' missed'} | "
          f"{ms(r['task'], 50)} / {ms(r['task'], 99)} | {r['per_s']:.0f} | "
          f"{f'{runs_per_s:.0f}' if runs_per_s else '-'} | {vs} |", flush=True)


def big_burst(n: int, conc: int) -> None:
    (r,) = run_mode("watch, settle 0s", True, "0s", "30s", 0, 0, conc, ("big burst",), n)
    out = subprocess.run([sys.executable, str(Path(__file__).with_name("bench_fire_throughput.py")), "--child",
                          "trigctl", "argv-date", "max", "8", str(conc), "0"], capture_output=True, text=True, check=True)
    import json

    runs = json.loads(out.stdout.strip().splitlines()[-1])["per_s"]
    print_big(r, runs)


if __name__ == "__main__":
    main()

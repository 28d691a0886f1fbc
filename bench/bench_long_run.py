"""Long run: `trigctl run` with 1,000 python triggers (interval 1s, jitter 1s) and a steady trickle of
fires into a one-task workflow (`argv: ['true']`); RSS and the state file's size over time.

    python bench/bench_long_run.py --seconds 3600            # default: one hour
    python bench/bench_long_run.py --seconds 600 --sample-every 30

Targets: RSS flat (end within +-10% of the first sample, taken after a warm-up) and the state growing
only with fires (bytes per fire steady; no growth from the ~1,000 skipped polls a second). The state
is measured as the main database file and its WAL apart: the WAL is reused after each checkpoint
(it reaches ~4 MB, SQLite's 1,000-page auto-checkpoint, and stays there).

`trigctl run` is the real CLI, in a subprocess (its log lines go to a file), stopped with SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import rss_mb  # noqa: E402

SOURCE = '''
import time
_rate = None
_t0 = None
_n = 0
def trickle(rate, i):
    """Shared by every trigger: fire when the global budget (rate fires/s) allows."""
    global _t0, _n
    now = time.monotonic()
    if _t0 is None:
        _t0 = now
    if int((now - _t0) * rate) > _n:
        _n += 1
        return {"n": _n, "trigger": i}
    return None
'''


def proc_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def hwm_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def size(p: Path) -> int:
    try:
        return p.stat().st_size
    except OSError:
        return 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3600)
    ap.add_argument("--n", type=int, default=1000, help="triggers")
    ap.add_argument("--fires-per-s", type=float, default=2.0)
    ap.add_argument("--sample-every", type=float, default=60)
    ap.add_argument("--warmup", type=float, default=30, help="seconds before the first (reference) sample")
    ap.add_argument("--dir", help="work directory (default: a new temp dir)")
    args = ap.parse_args()

    tmp = Path(args.dir or tempfile.mkdtemp(prefix="trigctl-long-"))
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "bench_trickle.py").write_text(SOURCE)
    lines = ["version: 1", "state: state.db", "workflows:", "  wf:", "    tasks:", "      - argv: ['true']", "triggers:"]
    for i in range(args.n):
        lines += [f"  - name: t{i}", "    type: python", "    callable: bench_trickle:trickle",
                  f"    args: {{rate: {args.fires_per_s}, i: {i}}}", "    workflow: wf", "    interval: 1s", "    jitter: 1s"]
    (tmp / "triggers.yaml").write_text("\n".join(lines) + "\n")
    db, wal = tmp / "state.db", tmp / "state.db-wal"
    log = open(tmp / "run.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "trigctl", "run", str(tmp / "triggers.yaml")], stdout=log,
                            stderr=subprocess.STDOUT, cwd=tmp)
    t0 = time.monotonic()
    print(f"# trigctl run pid {proc.pid}, {args.n} triggers, {args.fires_per_s:g} fires/s, {args.seconds:g} s, dir {tmp}",
          flush=True)
    print("| t s | RSS MB | CPU s/s (since last) | state.db KB | WAL KB | fires | runs not succeeded | events rows |", flush=True)
    print("|---|---|---|---|---|---|---|---|", flush=True)
    samples = []
    next_at = args.warmup
    last_cpu, last_t = 0.0, 0.0
    try:
        while True:
            now = time.monotonic() - t0
            if now >= next_at:
                if proc.poll() is not None:
                    raise SystemExit(f"trigctl run exited with {proc.returncode}; see {tmp / 'run.log'}")
                cpu = proc_cpu_s(proc.pid)
                rss = rss_mb(proc.pid)
                with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as c:
                    fires = c.execute("SELECT count(*) FROM events WHERE kind = 'fire'").fetchone()[0]
                    events = c.execute("SELECT count(*) FROM events").fetchone()[0]
                    bad = c.execute("SELECT count(*) FROM runs WHERE status NOT IN ('succeeded', 'queued', 'running')").fetchone()[0]
                c.close()
                s = {"t": now, "rss": rss, "cpu": (cpu - last_cpu) / (now - last_t), "db": size(db), "wal": size(wal),
                     "fires": fires, "events": events, "bad": bad}
                last_cpu, last_t = cpu, now
                samples.append(s)
                print(f"| {now:.0f} | {rss:.1f} | {s['cpu']:.3f} | {s['db'] / 1024:.0f} | {s['wal'] / 1024:.0f} | {fires} | "
                      f"{bad} | {events} |", flush=True)
                if now >= args.seconds:
                    break
                next_at = min(next_at + args.sample_every, args.seconds)
            time.sleep(max(0.05, min(1.0, next_at - (time.monotonic() - t0))))
        peak = hwm_mb(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    first, last = samples[0], samples[-1]
    dfires = last["fires"] - first["fires"]
    ddb = last["db"] - first["db"]
    print()
    print("| measured | value |")
    print("|---|---|")
    print(f"| duration | {last['t']:.0f} s ({args.n} triggers, {args.fires_per_s:g} fires/s offered) |")
    print(f"| RSS first (t={first['t']:.0f} s) → last | {first['rss']:.1f} → {last['rss']:.1f} MB "
          f"({100 * (last['rss'] / first['rss'] - 1):+.1f} %; target ±10 %); peak (VmHWM) {peak:.1f} MB |")
    print(f"| state.db first → last | {first['db'] / 1024:.0f} → {last['db'] / 1024:.0f} KB "
          f"(+{ddb / 1024:.0f} KB for {dfires} fires = {ddb / max(dfires, 1):.0f} bytes/fire) |")
    print(f"| WAL first → last | {first['wal'] / 1024:.0f} → {last['wal'] / 1024:.0f} KB (reused after checkpoints) |")
    print(f"| history rows (events) | {first['events']} → {last['events']} (fires {first['fires']} → {last['fires']}; "
          f"rows per fire {(last['events'] - first['events']) / max(dfires, 1):.2f}) |")
    print(f"| runs not succeeded | {last['bad']} |")
    print(f"| CPU of trigctl run | {sum(s['cpu'] for s in samples[1:]) / max(1, len(samples) - 1):.3f} s/s on average |")


if __name__ == "__main__":
    main()

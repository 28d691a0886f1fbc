"""Scale-out: N = 1, 2, 3 `trigctl run` processes on one PostgreSQL (a throwaway server, tests/pg.py).

    python bench/bench_scaleout.py --n 1 2 3 --triggers 10000 --seconds 20 --kills 20

Three measurements, each printed as a markdown table:

1. **Polling.** 10,000 python triggers at 1 s shared by N processes: polls executed per second
   (all processes together, against the 10,000 due), p50/p99 lateness (due time -> callable entered,
   every poll of every process) and CPU per process. Each process is a child that runs the real
   Runner on a PostgresStore and counts its polls (as bench_scale.py does in-process).
2. **Fire throughput.** 200 triggers that fire every poll (a counter in the cursor, dedupe none) into
   a one-task `true` workflow: runs succeeded per second, and **duplicates**: every trigger's fires must
   be exactly seq 1..K (a repeat would be one poll recorded twice).
3. **Failover.** Two processes with the default lease (10 s); SIGKILL the one holding a chosen
   trigger, time until the survivor polls it (due time of its next poll -> the callable entered on the
   survivor; the trigger polls every 0.2 s), then start a replacement; ``--kills`` times; p50/p99/max.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

from _common import pct  # noqa: E402

SEQ = """
import time, os
import trigctl

def noop():
    return None

def seq(cursor=None):
    n = int(cursor or 0) + 1
    return trigctl.Fire({"seq": n}, cursor=str(n))

def probe():
    with open(os.environ["PROBE_LOG"], "a") as f:
        f.write(f"{time.time()}\\n")
    return None
"""


# ----------------------------------------------------------------------------- the child process

def child(args) -> None:
    """One `trigctl run` process with a poll counter and a lateness recorder (writes JSON at the end)."""
    import resource
    import threading

    from trigctl.config import load_config
    from trigctl.runner import Runner
    from trigctl.scheduler import Scheduler
    from trigctl.store.postgres import PostgresStore

    cfg = load_config(Path(args.yaml), light=True)
    if args.url.startswith("postgresql://"):
        store: Any = PostgresStore(args.url, lease_seconds=args.lease)
    else:  # the baseline: one process on SQLite
        from trigctl.store.sqlite import SQLiteStore

        store = SQLiteStore(args.url)
    lateness: list[float] = []
    window = [float("inf"), float("inf")]
    original = Scheduler.execute

    def timed_execute(poll):
        now = time.time()
        if window[0] <= now < window[1]:
            lateness.append(now - poll.due_at)
        return original(poll)

    Scheduler.execute = staticmethod(timed_execute)
    runner = Runner(cfg, store, install_signals=False, grace=2)
    t = threading.Thread(target=runner.run, daemon=True)
    t.start()
    window[0] = args.start_at
    window[1] = args.start_at + args.seconds
    cpu0 = None
    while time.time() < window[1]:
        if cpu0 is None and time.time() >= window[0]:
            r = resource.getrusage(resource.RUSAGE_SELF)
            cpu0 = r.ru_utime + r.ru_stime
        time.sleep(0.05)
    r = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r.ru_utime + r.ru_stime - (cpu0 or 0)) / args.seconds
    runner.stop()
    t.join(60)
    store.close()
    Path(args.out).write_text(json.dumps({"polls": len(lateness), "lateness": sorted(lateness), "cpu": cpu}))


# ------------------------------------------------------------------------------------ the driver

def write_yaml(tmp: Path, triggers: list[str], max_runs: int = 8) -> Path:
    (tmp / "bench_seq.py").write_text(SEQ)
    p = tmp / "triggers.yaml"
    p.write_text(f"version: 1\nmax_concurrent_runs: {max_runs}\nworkflows:\n  w: {{tasks: [{{argv: [\"true\"]}}]}}\n"
                 "triggers:\n" + "\n".join(triggers) + "\n")
    return p


def polling(cluster, n: int, triggers: int, seconds: float, lease: float, sqlite: bool = False) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="trigctl-bench-so-"))
    url = str(tmp / "state.db") if sqlite else cluster.new_database()
    yaml = write_yaml(tmp, [f"  - {{name: t{i}, type: python, callable: 'bench_seq:noop', workflow: w, interval: 1s}}"
                            for i in range(triggers)])
    start_at = time.time() + 15 + 3 * n  # start-up (10,000 state rows, the first share) is not measured
    procs = []
    for i in range(n):
        out = tmp / f"out{i}.json"
        procs.append((subprocess.Popen([sys.executable, __file__, "--child", "--yaml", str(yaml), "--url", url,
                                        "--out", str(out), "--start-at", str(start_at), "--seconds", str(seconds),
                                        "--lease", str(lease)], cwd=tmp, stderr=open(tmp / f"err{i}.log", "w")), out))
    results = []
    for p, out in procs:
        p.wait(timeout=start_at - time.time() + seconds + 120)
        results.append(json.loads(out.read_text()))
    lateness = sorted(x for r in results for x in r["lateness"])
    polls = sum(r["polls"] for r in results)
    return {"n": n, "polls_per_s": polls / seconds, "due_per_s": triggers, "p50": pct(lateness, 50) * 1000,
            "p99": pct(lateness, 99) * 1000, "max": (lateness[-1] if lateness else 0) * 1000,
            "cpu": [round(r["cpu"], 2) for r in results], "per_process": [r["polls"] for r in results]}


def throughput(cluster, n: int, firing: int, seconds: float, lease: float, sqlite: bool = False) -> dict:
    import sqlite3

    import psycopg

    tmp = Path(tempfile.mkdtemp(prefix="trigctl-bench-so-"))
    url = str(tmp / "state.db") if sqlite else cluster.new_database()

    def connect():
        return sqlite3.connect(url, timeout=30) if sqlite else psycopg.connect(url, autocommit=True)
    yaml = write_yaml(tmp, [f"  - {{name: f{i}, type: python, callable: 'bench_seq:seq', workflow: w, interval: 100ms, "
                            "dedupe: none}" for i in range(firing)], max_runs=16)
    procs = [subprocess.Popen([sys.executable, "-m", "trigctl", "run", str(yaml), "--state", url]
                              + ([] if sqlite else ["--lease", f"{lease}s"]), cwd=tmp, stderr=subprocess.DEVNULL)
             for _ in range(n)]

    def succeeded() -> int:
        c = connect()
        try:
            return c.execute("SELECT count(*) FROM runs WHERE status = 'succeeded'").fetchone()[0]
        except (sqlite3.Error, psycopg.Error):
            return 0
        finally:
            c.close()

    time.sleep(10)  # warm-up: the processes start and share the triggers
    s0, t0 = succeeded(), time.monotonic()
    time.sleep(seconds)
    s1, t1 = succeeded(), time.monotonic()
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        p.wait(timeout=120)
    c = connect()
    if sqlite:
        rows = [(name, [int(x) for x in seqs.split(",")]) for name, seqs in c.execute(
            "SELECT trigger_name, group_concat(json_extract(context, '$.seq')) FROM runs WHERE rerun_of IS NULL "
            "GROUP BY trigger_name").fetchall()]
    else:
        rows = c.execute("SELECT trigger_name, array_agg((context::json->>'seq')::int) FROM runs WHERE rerun_of IS NULL "
                         "GROUP BY trigger_name").fetchall()
    total = c.execute("SELECT count(*) FROM runs").fetchone()[0]
    c.close()
    duplicates = sum(len(seqs) - len(set(seqs)) for _, seqs in rows)
    gaps = sum(max(seqs) - len(set(seqs)) for _, seqs in rows)
    return {"n": n, "runs_per_s": (s1 - s0) / (t1 - t0), "fires": total, "duplicates": duplicates, "gaps": gaps}


def failover(cluster, kills: int, lease: float) -> dict:
    import psycopg

    url = cluster.new_database()
    tmp = Path(tempfile.mkdtemp(prefix="trigctl-bench-so-"))
    probe_log = tmp / "probe.log"
    lines = ["  - {name: probe, type: python, callable: 'bench_seq:probe', workflow: w, interval: 200ms}"]
    lines += [f"  - {{name: t{i}, type: python, callable: 'bench_seq:noop', workflow: w, interval: 1s}}" for i in range(100)]
    yaml = write_yaml(tmp, lines)
    env = {**os.environ, "PROBE_LOG": str(probe_log)}

    def start():
        return subprocess.Popen([sys.executable, "-m", "trigctl", "run", str(yaml), "--state", url, "--lease", f"{lease}s"],
                                cwd=tmp, stderr=subprocess.DEVNULL, env=env)

    def holder_pid() -> int | None:
        with psycopg.connect(url, autocommit=True) as c:
            if c.execute("SELECT to_regclass('processes')").fetchone()[0] is None:
                return None  # not migrated yet
            row = c.execute("SELECT p.pid FROM triggers t JOIN processes p ON p.id = t.holder WHERE t.name = 'probe' "
                            "AND p.leases_until > now() AND p.status = 'alive'").fetchone()
        return row[0] if row else None

    def balanced() -> bool:
        with psycopg.connect(url, autocommit=True) as c:
            if c.execute("SELECT to_regclass('triggers')").fetchone()[0] is None:
                return False
            counts = [r[0] for r in c.execute("SELECT count(*) FROM triggers t JOIN processes p ON p.id = t.holder "
                                              "WHERE p.status = 'alive' AND p.leases_until > now() "
                                              "GROUP BY t.holder").fetchall()]
        return len(counts) == 2 and sum(counts) == 101

    procs = {p.pid: p for p in (start(), start())}
    times = []
    for _ in range(kills):
        deadline = time.monotonic() + 120
        while not (balanced() and holder_pid() in procs):
            if time.monotonic() > deadline:
                raise SystemExit("failover bench: the two processes never shared the triggers")
            time.sleep(0.1)
        victim = procs.pop(holder_pid())
        probe_log.write_text("")
        killed = time.time()
        victim.kill()
        victim.wait()
        while True:
            text = probe_log.read_text().split()
            after = [float(x) for x in text if float(x) > killed]
            if after:
                times.append(after[0] - killed)
                break
            if time.time() - killed > 120:
                raise SystemExit("failover bench: the probe was never polled again")
            time.sleep(0.02)
        p = start()
        procs[p.pid] = p
    for p in procs.values():
        p.send_signal(signal.SIGTERM)
    for p in procs.values():
        p.wait(timeout=60)
    times.sort()
    return {"kills": kills, "lease": lease, "p50": pct(times, 50), "p99": pct(times, 99), "max": times[-1],
            "min": times[0]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--yaml")
    ap.add_argument("--url")
    ap.add_argument("--out")
    ap.add_argument("--start-at", type=float)
    ap.add_argument("--n", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--triggers", type=int, default=10_000)
    ap.add_argument("--firing", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--lease", type=float, default=10.0)
    ap.add_argument("--skip", nargs="*", default=[], choices=["polling", "throughput", "failover"])
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    from pg import Cluster, unavailable_reason

    reason = unavailable_reason()
    if reason:
        raise SystemExit(f"bench_scaleout: {reason}")
    cluster = Cluster().start()
    try:
        if "polling" not in args.skip:
            print(f"\n### Polling: {args.triggers} python triggers at 1 s, {args.seconds:g} s measured\n")
            print("| processes | polls/s executed (due) | p50 ms | p99 ms | max ms | polls per process | CPU s/s per process |")
            print("|---|---|---|---|---|---|---|")
            for n in ["sqlite", *args.n]:
                r = polling(cluster, 1 if n == "sqlite" else int(n), args.triggers, args.seconds, args.lease, n == "sqlite")
                print(f"| {'1 (SQLite)' if n == 'sqlite' else n} | {r['polls_per_s']:.0f} ({r['due_per_s']}) | {r['p50']:.1f} | {r['p99']:.1f} | "
                      f"{r['max']:.1f} | {'/'.join(map(str, r['per_process']))} | {'/'.join(map(str, r['cpu']))} |",
                      flush=True)
        if "throughput" not in args.skip:
            print(f"\n### Fire throughput: {args.firing} triggers firing every 100 ms into `true`, {args.seconds:g} s\n")
            print("| processes | runs succeeded/s | fires recorded | duplicates | gaps |")
            print("|---|---|---|---|---|")
            for n in ["sqlite", *args.n]:
                r = throughput(cluster, 1 if n == "sqlite" else int(n), args.firing, args.seconds, args.lease, n == "sqlite")
                print(f"| {'1 (SQLite)' if n == 'sqlite' else n} | {r['runs_per_s']:.0f} | {r['fires']} | {r['duplicates']} | {r['gaps']} |", flush=True)
        if "failover" not in args.skip and args.kills:
            r = failover(cluster, args.kills, args.lease)
            print(f"\n### Failover: SIGKILL the holder of a trigger polled every 200 ms, {r['kills']} kills, "
                  f"lease {r['lease']:g} s\n")
            print("| kills | min s | p50 s | p99 s | max s |")
            print("|---|---|---|---|---|")
            print(f"| {r['kills']} | {r['min']:.2f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['max']:.2f} |", flush=True)
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()

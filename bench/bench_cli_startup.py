"""CLI start-up: wall time of short commands, as a ratio to `python -c "import click"` measured in
the same run.

    python bench/bench_cli_startup.py                  # the README table (~1 min; +~1 min the first time)
    python bench/bench_cli_startup.py --runs 10 --importtime

Set-up (cached under --cache, reused): a YAML file of 1,000 python triggers, and a state created by
trigctl (`trigctl prune`, a writing command, creates and migrates it) filled directly with sqlite3 in
batches: 1,000,000 history rows (events: 90% fires, 5% duplicates, 5% errors, over 30 days) and a run
per fire (~900,000), and a triggers row per trigger. A cached state from an older schema is migrated
by the same command.

Every command runs --runs times, round-robin, through the installed console script (not the pyenv
shim, whose bash start-up would add ~100 ms to every figure), and the median wall time is reported.
This machine's interpreter imports `certifi` at start-up from a sandbox .pth file: both sides pay it.
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402,F401  (puts the repo on sys.path)

DEFAULT_CACHE = "/tmp/trigctl-bench-cli"
N_TRIGGERS = 1000


def trigctl_cmd() -> list[str]:
    script = Path(sys.executable).parent / "trigctl"
    return [str(script)] if script.exists() else [sys.executable, "-m", "trigctl"]


def make_yaml(cache: Path) -> Path:
    y = cache / "triggers.yaml"
    if y.exists():
        return y
    lines = ["version: 1", "state: state.db", "workflows:", "  wf:", "    tasks:", "      - argv: ['true']", "triggers:"]
    for i in range(N_TRIGGERS):
        lines += [f"  - name: t{i}", "    type: python", "    callable: bench_callables:noop", "    workflow: wf",
                  "    interval: 30s"]
    y.write_text("\n".join(lines) + "\n")
    (cache / "bench_callables.py").write_text("def noop():\n    return None\n")
    return y


def make_state(cache: Path, yaml_path: Path, rows: int) -> Path:
    from trigctl.store.sqlite import MIGRATIONS

    db = cache / "state.db"
    marker = cache / f"state-{rows}.complete"
    if not marker.exists():
        for suffix in ("", "-wal", "-shm", ".lock"):
            Path(str(db) + suffix).unlink(missing_ok=True)
        # A new empty state (`prune` no longer creates one: reading commands never create a state).
        from trigctl.store.sqlite import SQLiteStore

        SQLiteStore(str(db)).close()
        t = time.time()
        rng = random.Random(1)
        c = sqlite3.connect(db, isolation_level=None)
        c.execute("PRAGMA synchronous = OFF")
        now = time.time()
        c.executemany("UPDATE triggers SET last_poll_at = ?, last_result = 'skipped', next_poll_at = ?, polls = 1000, "
                      "fires = 900 WHERE name = ?", [(now, now + 30, f"t{i}") for i in range(N_TRIGGERS)])
        c.executemany("INSERT OR IGNORE INTO triggers (name, polls) VALUES (?, 1)", [(f"t{i}",) for i in range(N_TRIGGERS)])
        batch = 20_000
        start = now - 30 * 86400
        step = 30 * 86400 / rows
        run_id = 0
        for b in range(0, rows, batch):
            runs, events = [], []
            for i in range(b, min(rows, b + batch)):
                ts = start + i * step
                trig = f"t{rng.randrange(N_TRIGGERS)}"
                ctx = f'{{"n": {i}}}'
                h = f"{i:064x}"
                x = rng.random()
                if x < 0.90:
                    run_id += 1
                    status = "failed" if rng.random() < 0.02 else "succeeded"
                    runs.append((run_id, trig, "wf", status, ctx, h, "running", ts, ts, ts + 0.01, ts + 0.5,
                                 "task 'x' failed: exit code 1" if status == "failed" else None))
                    events.append((trig, "fire", ctx, h, run_id, None, 1, ts, ts))
                elif x < 0.95:
                    events.append((trig, "duplicate", ctx, h, run_id, "run is still active", 3, ts, ts + 2))
                else:
                    events.append((trig, "error", None, None, None, "ConnectionError: refused", 2, ts, ts + 30))
            c.execute("BEGIN")
            c.executemany("INSERT INTO runs (id, trigger_name, workflow, status, context, context_hash, dedupe, triggered_at, "
                          "queued_at, started_at, completed_at, error) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", runs)
            c.executemany("INSERT INTO events (trigger_name, kind, context, context_hash, run_id, error, count, created_at, "
                          "updated_at) VALUES (?,?,?,?,?,?,?,?,?)", events)
            c.execute("COMMIT")
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        c.close()
        marker.write_text(f"{rows} rows in {time.time() - t:.0f}s\n")
    c = sqlite3.connect(db)
    version = c.execute("PRAGMA user_version").fetchone()[0]
    c.close()
    if version < len(MIGRATIONS):  # a cached state from before a migration: a writing command upgrades it
        t = time.time()
        subprocess.run(trigctl_cmd() + ["prune", "--older-than", "36500d", "-c", str(yaml_path)], check=True,
                       capture_output=True)
        print(f"(migrated the cached state from schema {version} in {time.time() - t:.1f}s)", file=sys.stderr)
    # What `trigctl run` saves at start, so that `list` reads the YAML's summary from the state
    # instead of parsing the file (list is typically run while `run` runs).
    from trigctl.config import load_config, trigger_summaries
    from trigctl.snapshot import config_fingerprint
    from trigctl.store.sqlite import SQLiteStore

    store = SQLiteStore(str(db))
    cfg = load_config(yaml_path, light=True)
    store.save_config_snapshot(str(cfg.path), config_fingerprint(cfg.path), trigger_summaries(cfg))
    store.close()
    return db


#: Children run with bytecode caching on, as an installed trigctl has (pip compiles a wheel's modules);
#: this machine sets PYTHONDONTWRITEBYTECODE=1, which would compile trigctl's sources on every start.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def timed(argv: list[str], cwd: Path) -> float:
    t = time.perf_counter()
    r = subprocess.run(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    elapsed = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"{argv} failed: {r.stderr.decode()}")
    return elapsed


def importtime(argv: list[str], cwd: Path, top: int = 12) -> str:
    cmd = [sys.executable, "-X", "importtime", "-m", "trigctl", *argv[len(trigctl_cmd()):]]
    r = subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
    rows = []
    for line in r.stderr.splitlines():
        if line.startswith("import time:") and "|" in line and "self" not in line:
            parts = line.split("|")
            self_us = int(parts[0].split(":")[1])
            cum_us = int(parts[1])
            rows.append((cum_us, self_us, parts[2].rstrip()))
    total = sum(r[1] for r in rows)
    rows.sort(reverse=True)
    out = [f"  total self {total / 1000:.0f} ms; top cumulative:"]
    out += [f"  {cum / 1000:7.1f} ms cumulative {s / 1000:6.1f} self  {name}" for cum, s, name in rows[:top]]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--cache", default=DEFAULT_CACHE)
    ap.add_argument("--importtime", action="store_true", help="also show each command's heaviest imports")
    args = ap.parse_args()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    y = make_yaml(cache)
    make_state(cache, y, args.rows)
    ENV["PYTHONPYCACHEPREFIX"] = str(cache / "pycache")
    tc = trigctl_cmd()
    py = sys.executable
    cases = [
        ("python -c pass", [py, "-c", "pass"], None),
        ('python -c "import click" (reference)', [py, "-c", "import click"], None),
        ("trigctl --help", tc + ["--help"], 1.5),
        ("trigctl list --json (1,000 triggers)", tc + ["list", "--json", "-c", str(y)], 2.0),
        # No state yet, so no saved summary: the YAML is parsed (and, since issue 13, fully checked).
        ("trigctl list --json (1,000 triggers, no state yet)", tc + ["list", "--json", "-c", str(y), "--state",
                                                                     str(cache / "none" / "state.db")], None),
        ("trigctl validate (1,000 triggers)", tc + ["validate", str(y)], None),
        (f"trigctl history --json --limit 50 ({args.rows:,} rows)", tc + ["history", "-c", str(y), "--json", "--limit", "50"], 2.0),
        ("trigctl history t7 --json --limit 50", tc + ["history", "-c", str(y), "t7", "--json", "--limit", "50"], 2.0),
        ("trigctl history --status failed --json --limit 50", tc + ["history", "-c", str(y), "--status", "failed", "--json",
                                                                   "--limit", "50"], 2.0),
        ("trigctl history --since 1h --json --limit 50", tc + ["history", "-c", str(y), "--since", "1h", "--json", "--limit", "50"], 2.0),
        ("trigctl history --json --limit 50 (--state only, no YAML)", tc + ["history", "--state", str(cache / "state.db"), "--json",
                                                                            "--limit", "50"], 2.0),
    ]
    times: dict[str, list[float]] = {name: [] for name, _, _ in cases}
    for _name, argv, _ in cases:  # warm the page cache
        timed(argv, cache)
    for _ in range(args.runs):
        for name, argv, _ in cases:
            times[name].append(timed(argv, cache))
    ref = statistics.median(times[cases[1][0]])
    print(f"| command | median ms (of {args.runs}) | ratio to `import click` | target | met |")
    print("|---|---|---|---|---|")
    for name, _, target in cases:
        m = statistics.median(times[name])
        ratio = m / ref
        print(f"| {name} | {m * 1000:.0f} | {ratio:.2f}× | {f'≤ {target}×' if target else '-'} | "
              f"{('yes' if ratio <= target else 'NO') if target else '-'} |")
    if args.importtime:
        for name, argv, _target in cases[2:5]:
            print(f"\n{name}:\n{importtime(argv, cache)}")


if __name__ == "__main__":
    main()

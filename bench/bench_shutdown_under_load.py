"""SIGTERM under load: how long after the signal `trigctl run` logs `stopping` and exits, with N
`command` triggers all due every second, against the same with one trigger (the baseline, same run).

    python bench/bench_shutdown_under_load.py --n 1 20000 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import ROOT, median


def write_config(directory: Path, n: int) -> Path:
    lines = ["version: 1", "workflows:", "  w: {tasks: [{argv: [\"true\"]}]}", "triggers:"]
    lines += [f"  - {{name: c{i}, type: command, argv: [\"true\"], interval: 1s, workflow: w}}" for i in range(n)]
    path = directory / "triggers.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def one(directory: Path, load_seconds: float) -> tuple[float, float]:
    """Start, let it poll for ``load_seconds`` after `start`, SIGTERM; (to `stopping`, to exit) in s."""
    state = directory / "state.db"
    for suffix in ("", "-wal", "-shm", ".lock"):
        Path(str(state) + suffix).unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "trigctl", "run", "--grace", "5s", "--state", str(state),
                             str(directory / "triggers.yaml")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, cwd=directory, env={**os.environ, "PYTHONPATH": str(ROOT)})
    started, stopping = threading.Event(), threading.Event()
    stamps: dict[str, float] = {}

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            if " start " in line and not started.is_set():
                started.set()
            if " stopping " in line and not stopping.is_set():
                stamps["stopping"] = time.monotonic()
                stopping.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if not started.wait(300):
        proc.kill()
        raise SystemExit("trigctl did not start")
    time.sleep(load_seconds)  # a benchmark: let the load build up (not a test)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(300)
    exited = time.monotonic()
    reader.join(10)
    return stamps.get("stopping", exited) - sent, exited - sent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, nargs="+", default=[1, 20000])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--load", type=float, default=3.0, help="seconds of polling before the signal")
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.n:
            d = Path(tmp) / f"n{n}"
            d.mkdir()
            write_config(d, n)
            rounds = [one(d, args.load) for _ in range(args.rounds)]
            results[n] = (median([r[0] for r in rounds]), median([r[1] for r in rounds]), rounds)
    base = results[args.n[0]]
    print("| N command triggers | SIGTERM → `stopping` s (median) | SIGTERM → exit s (median) | ratio to N="
          f"{args.n[0]} (exit) | rounds (stopping, exit) |")
    print("|---|---|---|---|---|")
    for n, (stop_s, exit_s, rounds) in results.items():
        shown = ", ".join(f"({a:.2f}, {b:.2f})" for a, b in rounds)
        print(f"| {n} | {stop_s:.2f} | {exit_s:.2f} | {exit_s / base[1]:.1f} | {shown} |")
    print(f"\nload average: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

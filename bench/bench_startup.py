"""Start-up at scale: N python triggers at 1 s, YAML to first poll, first start and later starts;
and `trigctl list --json` on that state against `python -c "import click"`.

    python bench/bench_startup.py --n 10000 50000 [--ref /tmp/main-ref] [--starts 2] [--list-runs 5] [--list-only]

For each N: a fresh directory with the YAML (as bench_scale.py writes it) and a callable module.
Each start is its own subprocess (`--child`): `load_config` as `trigctl run` calls it, the SQLite
state opened, the Runner started, until the first poll is entered; then it stops. The first start
has an empty config cache (its own TRIGCTL_CACHE_DIR) and no state; later starts find both. With
--ref, the same runs alternate with another checkout (main), its own cache directory and state.
`list --json` runs through each checkout's console script, round-robin with `import click`, with
bytecode caching on (after one unreported round); the median is reported. --list-only: the starts
only make the state, and are not reported. Prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def rss_mb() -> float:
    # Not bench/_common's: importing it puts this checkout first on sys.path, and the --ref child
    # would run this checkout's trigctl.
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def child(directory: Path) -> None:
    import trigctl

    assert Path(trigctl.__file__).resolve().is_relative_to(Path(os.environ["PYTHONPATH"]).resolve()), trigctl.__file__
    from trigctl.config import load_config
    from trigctl.runner import Runner
    from trigctl.scheduler import Scheduler
    from trigctl.store.sqlite import SQLiteStore

    t_start = time.monotonic()
    cfg = load_config(directory / "triggers.yaml")
    t_loaded = time.monotonic()
    store = SQLiteStore(str(directory / "state.db"))
    first: list[float] = []
    original = Scheduler.execute  # a staticmethod: the plain function

    def timed_execute(poll):
        if not first:
            first.append(time.monotonic())
        return original(poll)

    Scheduler.execute = staticmethod(timed_execute)  # type: ignore[method-assign,assignment]
    runner = Runner(cfg, store, install_signals=False, grace=1)
    t = threading.Thread(target=runner.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 900
    while not first and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(1.0)  # the loop running: RSS with the config, the slots and the state loaded
    rss = rss_mb()
    runner.stop()
    t.join(60)
    print(json.dumps({"config_s": t_loaded - t_start, "startup_s": first[0] - t_start if first else None, "rss_mb": rss}))


def write_yaml(directory: Path, n: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "bench_callables.py").write_text("def noop():\n    return None\n")
    lines = ["version: 1", "state: state.db", "workflows:", "  wf:", "    tasks:", "      - run: 'true'", "triggers:"]
    for i in range(n):
        lines += [f"  - name: t{i}", "    type: python", "    callable: bench_callables:noop", "    workflow: wf",
                  "    interval: 1s"]
    (directory / "triggers.yaml").write_text("\n".join(lines) + "\n")


def start(root: Path, directory: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(root), "TRIGCTL_CACHE_DIR": str(directory / "cache")}
    python = root / ".venv" / "bin" / "python"
    out = subprocess.run([str(python if python.exists() else sys.executable), __file__, "--child", str(directory)],
                         env=env, capture_output=True, text=True, check=True, cwd=directory)
    return json.loads(out.stdout.strip().splitlines()[-1])


def list_runs(roots: dict[str, Path], dirs: dict[str, Path], runs: int) -> dict[str, float]:
    # Bytecode caching on, as an installed trigctl has it (bench_cli_startup.py does the same): this
    # machine sets PYTHONDONTWRITEBYTECODE=1, which would compile trigctl's sources at every start.
    base_env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    envs = {name: {**base_env, "TRIGCTL_CACHE_DIR": str(dirs[name] / "cache"), "PYTHONPYCACHEPREFIX": str(dirs[name] / "pycache")}
            for name in roots}
    times: dict[str, list[float]] = {"import click": [], **{name: [] for name in roots}}
    outputs: dict[str, bytes] = {}
    for k in range(runs + 1):  # the first round warms the bytecode and page caches
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import click"], check=True, env=base_env)
        elapsed = time.perf_counter() - t0
        if k:
            times["import click"].append(elapsed)
        for name, root in roots.items():
            script = root / ".venv" / "bin" / "trigctl"
            t0 = time.perf_counter()
            out = subprocess.run([str(script), "list", "--json"], cwd=dirs[name], env=envs[name], capture_output=True, check=True)
            if k:
                times[name].append(time.perf_counter() - t0)
            assert out.stdout.startswith(b"["), out.stdout[:200]
            outputs[name] = out.stdout
    if "ref" in roots:
        # This checkout's `list --json` on a copy of the other's state, the snapshot saved as `run`
        # saves it (the other may not read this checkout's schema): the same bytes as the other's.
        copy = dirs["ref"].with_name(dirs["ref"].name + "-copy")
        shutil.copytree(dirs["ref"], copy, ignore=shutil.ignore_patterns("cache", "pycache"))
        python = ROOT / ".venv" / "bin" / "python"
        save = ("import sys; from trigctl.config import load_config, trigger_summaries; from trigctl.snapshot import "
                "config_fingerprint; from trigctl.store.sqlite import SQLiteStore; cfg = load_config(sys.argv[1]); "
                "s = SQLiteStore(sys.argv[2]); s.save_config_snapshot(str(cfg.path), config_fingerprint(cfg.path), "
                "trigger_summaries(cfg)); s.close()")
        env = {**envs["trigctl"], "PYTHONPATH": str(ROOT)}
        subprocess.run([str(python), "-c", save, str(copy / "triggers.yaml"), str(copy / "state.db")], env=env, check=True)
        script = ROOT / ".venv" / "bin" / "trigctl"
        out = subprocess.run([str(script), "list", "--json"], cwd=copy, env=envs["trigctl"], capture_output=True, check=True)
        shutil.rmtree(copy, ignore_errors=True)
        print(f"list --json: this checkout's output on a copy of ref's state is byte for byte ref's: "
              f"{out.stdout == outputs['ref']}", flush=True)
    return {name: statistics.median(v) for name, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, nargs="+", default=[10000, 50000])
    ap.add_argument("--ref", help="another checkout to compare with (e.g. main), with its own .venv")
    ap.add_argument("--starts", type=int, default=2, help="starts per N and checkout: the first, then later ones")
    ap.add_argument("--list-runs", type=int, default=5)
    ap.add_argument("--list-only", action="store_true", help="one start per checkout (unreported), to make the state; then the list runs")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(Path(args.child))
        return
    roots = {"trigctl": ROOT, **({"ref": Path(args.ref).resolve()} if args.ref else {})}
    print(f"load average at start: {os.getloadavg()[0]:.2f}", flush=True)
    print("| N | checkout | start | config load (s) | YAML to first poll (s) | RSS MB (1 s later) | load avg |")
    print("|---|---|---|---|---|---|---|", flush=True)
    base = Path(tempfile.mkdtemp(prefix="trigctl-bench-startup-"))
    listing = []
    try:
        for n in args.n:
            dirs = {name: base / f"{name}-{n}" for name in roots}
            for d in dirs.values():
                write_yaml(d, n)
            for k in range(1 if args.list_only else args.starts):
                for name, root in roots.items():  # alternating, back to back
                    r = start(root, dirs[name])
                    if args.list_only:
                        continue
                    label = "first" if k == 0 else f"later {k}"
                    print(f"| {n:,} | {name} | {label} | {r['config_s']:.2f} | {r['startup_s']:.2f} | "
                          f"{r['rss_mb']:.0f} | {os.getloadavg()[0]:.2f} |", flush=True)
            if args.list_runs:
                listing.append((n, list_runs(roots, dirs, args.list_runs), os.getloadavg()[0]))
            for d in dirs.values():
                shutil.rmtree(d, ignore_errors=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if listing:
        print("\n| N | command | import click (s) | trigctl (s) | ratio | load avg |")
        print("|---|---|---|---|---|---|")
        for n, medians, load in listing:
            for name in roots:
                print(f"| {n:,} | {name}: list --json | {medians['import click']:.3f} | {medians[name]:.3f} | "
                      f"{medians[name] / medians['import click']:.2f}× | {load:.2f} |")


if __name__ == "__main__":
    main()

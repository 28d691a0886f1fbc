"""What checking the YAML in every command costs (issue 13): `list --json` and `history --json`
of this checkout against another checkout (the code before), interleaved round by round so that
both sides see the same machine load. Ratios after/before.

    git worktree add /tmp/before <commit-before>
    python bench/bench_yaml_check.py --before /tmp/before --runs 15

Uses bench_cli_startup.py's cached YAML (1,000 python triggers) and state (1,000,000 history rows,
with the summary `run` saves). Cases: `list` whose file is known to be valid (the saved summary
matches: nothing is parsed), `list` with no state yet (nothing saved: the file is parsed; before,
lightly; now fully checked, as `validate` does), and `history` (which now also checks the file it
reads through the saved summary).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_cli_startup as startup  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", required=True, help="a checkout of the code to compare with")
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--cache", default=startup.DEFAULT_CACHE)
    args = ap.parse_args()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    y = startup.make_yaml(cache)
    startup.make_state(cache, y, 1_000_000)
    env = {**startup.ENV, "PYTHONPYCACHEPREFIX": str(cache / "pycache")}
    cases = {
        "list --json, file known valid": ["list", "--json", "-c", str(y)],
        "list --json, no state yet (file parsed)": ["list", "--json", "-c", str(y), "--state", str(cache / "none" / "state.db")],
        "history --json --limit 50": ["history", "-c", str(y), "--json", "--limit", "50"],
    }
    sides = {"before": str(Path(args.before).resolve()), "after": str(ROOT)}
    times: dict[tuple[str, str], list[float]] = {(c, s): [] for c in cases for s in sides}
    for _ in range(args.runs + 1):  # the first round warms the page cache and is dropped
        for case, argv in cases.items():
            for side, path in sides.items():
                t = time.perf_counter()
                done = subprocess.run(startup.trigctl_cmd() + argv, cwd=cache, env={**env, "PYTHONPATH": path},
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                if done.returncode != 0:
                    raise SystemExit(f"{side} {argv} failed: {done.stderr.decode()}")
                times[(case, side)].append(time.perf_counter() - t)
    print(f"| command | before ms | after ms | after/before (median of {args.runs}, interleaved) |")
    print("|---|---|---|---|")
    for case in cases:
        b = statistics.median(times[(case, "before")][1:])
        a = statistics.median(times[(case, "after")][1:])
        print(f"| {case} | {b * 1000:.0f} | {a * 1000:.0f} | {a / b:.2f}× |")


if __name__ == "__main__":
    main()

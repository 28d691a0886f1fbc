"""Does the first poll of a huge directory hold up the other triggers? A real Runner (in this
process, with `trigctl run`'s logging into /dev/null) polls K probe triggers (python, every 100 ms)
and a `file` trigger on a directory of N files (1 byte each, settled) that fires every file at its
first poll.

    python bench/bench_big_first_poll.py                    # N = 200,000 (files cached in /tmp)
    python bench/bench_big_first_poll.py --files 50000 --probes 20 --idle 5 --profile

Phases, one run:
  idle      the file trigger disabled: the probes alone (the baseline)
  first     `enable` from another connection (as `trigctl enable`): the first poll of N files,
            until every file has fired (or --limit seconds) and the probes are polled again
Lateness of a probe poll = the moment it starts - its due time (what trigctl_poll_lateness_seconds
measures). Runs are not executed (the runner is paused): the figure is about polling, not about
200,000 `true` processes. `--profile` samples every thread (bench/_common.Sampler) in the first phase.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Sampler, pct, quiet_cli_logging, rss_mb  # noqa: E402
from bench_big_directory import DEFAULT_CACHE, ensure_dir  # noqa: E402

PROBE = "def probe():\n    return None\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=200_000)
    ap.add_argument("--probes", type=int, default=20)
    ap.add_argument("--idle", type=float, default=5.0)
    ap.add_argument("--limit", type=float, default=120.0)
    ap.add_argument("--cache", default=DEFAULT_CACHE)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--fires-per-poll", type=int, help="override trigctl.triggers.file.FIRES_PER_POLL (a variant)")
    args = ap.parse_args()

    d = ensure_dir(Path(args.cache), args.files)
    tmp = Path(tempfile.mkdtemp(prefix="trigctl-firstpoll-"))
    (tmp / "probes.py").write_text(PROBE)
    probes = "\n".join(
        f"  - {{name: p{i}, type: python, callable: 'probes:probe', workflow: wf, interval: 100ms}}"
        for i in range(args.probes))
    (tmp / "triggers.yaml").write_text(f"""version: 1
workflows:
  wf: {{tasks: [{{argv: ['true']}}]}}
triggers:
  - name: big
    type: file
    path: {d}
    pattern: '*.dat'
    workflow: wf
    interval: 30s
    watch: false
    enabled: false
{probes}
""")
    import trigctl.triggers.file as file_trigger
    from trigctl.config import load_config
    from trigctl.runner import Runner
    from trigctl.scheduler import Scheduler
    from trigctl.store.sqlite import SQLiteStore

    if args.fires_per_poll:
        file_trigger.FIRES_PER_POLL = args.fires_per_poll
    quiet_cli_logging()
    cfg = load_config(tmp / "triggers.yaml")
    store = SQLiteStore(cfg.state_location())
    runner = Runner(cfg, store, install_signals=False)
    runner.workflows.paused = True

    phase = ["idle"]
    late: dict[str, list[float]] = {"idle": [], "first": []}
    orig = Scheduler.iter_tick

    def iter_tick(self, now, force=False):
        for poll in orig(self, now, force):
            if poll.slot.name != "big":
                late[phase[0]].append(now - poll.due_at)
            yield poll

    Scheduler.iter_tick = iter_tick  # type: ignore[method-assign]
    t = threading.Thread(target=runner.run, daemon=True)
    t.start()
    time.sleep(args.idle)

    other = SQLiteStore(cfg.state_location())
    sampler = Sampler().start() if args.profile else None
    t0 = time.monotonic()
    phase[0] = "first"
    other.set_enabled(["big"], True)
    fired = 0
    while time.monotonic() - t0 < args.limit:
        time.sleep(0.25)
        fired = other._query("SELECT fires FROM triggers WHERE name = 'big'")[0]["fires"]
        if fired >= args.files:
            break
    drained = time.monotonic() - t0
    # The loop may still be busy with what the last poll started (its log lines): the phase ends
    # once every probe has been polled 5 more times (0.5 s of normal polling).
    seen = len(late["first"])
    end = time.monotonic() + args.limit
    while len(late["first"]) < seen + 5 * args.probes and time.monotonic() < end:
        time.sleep(0.05)
    phase[0] = "after"
    if sampler:
        sampler.stop()
    rss = rss_mb()
    runner.stop()
    t.join(30)

    idle, first = late["idle"], late["first"]
    print(f"N = {args.files:,} files, {args.probes} probe triggers every 100 ms, FIRES_PER_POLL = "
          f"{getattr(file_trigger, 'FIRES_PER_POLL', 'none')}; load {os.getloadavg()[0]:.2f}\n")
    print("| phase | probe polls | p50 ms | p99 ms | max ms | p99 ratio to idle |")
    print("|---|---|---|---|---|---|")
    base = pct(idle, 99)
    for name, xs in (("idle (file trigger disabled)", idle), ("first poll of the directory", first)):
        print(f"| {name} | {len(xs)} | {pct(xs, 50) * 1000:.1f} | {pct(xs, 99) * 1000:.1f} | {max(xs) * 1000:.1f} | "
              f"{pct(xs, 99) / base:.1f}× |")
    print(f"\nfired {fired:,} of {args.files:,} in {drained:.1f}s; RSS {rss:.0f} MB")
    if sampler:
        print(sampler.report())


if __name__ == "__main__":
    main()

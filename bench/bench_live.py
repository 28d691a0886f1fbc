"""The live view's costs: one redraw (snapshot + rich renderables + rendering to a terminal-sized
console) with N triggers, vs N = 25 (which fills every row of a 120x40 terminal, as the larger N do:
the same rows are drawn, the rest fold into "+N more"); and what the view's model costs the loop
per poll, vs the same publish with nobody listening. Median of --rounds.

    python bench/bench_live.py [--n 25 1000 10000 100000] [--refreshes 50] [--rounds 9]
    python bench/bench_live.py --process 10000 [--seconds 20]   # a real `trigctl run` in tmux, view on vs off

``--process N``: N python triggers (every 10 s, spread by a 10 s jitter: 1,000 polls a second) in a
real `trigctl run` on a 120x40 tmux terminal, with the live view and with ``--no-live``, alternating;
the process's CPU seconds per second after a warm-up, from /proc.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _common import median  # noqa: E402

from trigctl import events as ev  # noqa: E402
from trigctl.observe import live  # noqa: E402

NOW = time.time()
WIDTH, HEIGHT = 120, 40


def loaded(n: int) -> tuple[live.LiveModel, ev.EventBus]:
    """A model of ``n`` triggers, 1 % of them erroring, with a full list of recent events."""
    model = live.LiveModel()
    bus = ev.EventBus()
    model.attach(bus)
    states = tuple(ev.TriggerState(f"trigger-{i:06d}", "python", "wf", i % 50 != 7, NOW + i % 60, NOW - 3, "skipped",
                                   "depth 3 (fires at >= 5)", 0) for i in range(n))
    bus.publish(ev.TriggersLoaded(states, 8, ()))
    bus.publish(ev.LoopStarted(n, n, "state.db", os.getpid()))
    for i in range(0, n, 100):
        bus.publish(ev.PollFailed(states[i].name, "ConnectionError: refused", 3))
    for i in range(live.RECENT_EVENTS):
        bus.publish(ev.FireRecorded(states[i % n].name, i, {"path": f"inbox/{i}.txt"}))
    return model, bus


def per_refresh(model: live.LiveModel, refreshes: int) -> tuple[float, float]:
    """(seconds per redraw, of which the snapshot) rendering to a terminal console of WIDTH x HEIGHT."""
    from rich.console import Console

    console = Console(file=io.StringIO(), width=WIDTH, height=HEIGHT, force_terminal=True, color_system="256",
                      markup=False, emoji=False, highlight=False)
    rows, shown = live.budget(HEIGHT, live.MAX_EVENTS_SHOWN)
    snap_time = 0.0
    t0 = time.perf_counter()
    for _ in range(refreshes):
        s0 = time.perf_counter()
        snap = model.snapshot(rows, shown)
        snap_time += time.perf_counter() - s0
        console.print(live.render(snap, WIDTH))
    return (time.perf_counter() - t0) / refreshes, snap_time / refreshes


def per_event(bus: ev.EventBus, name: str, k: int, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for i in range(k):
            if bus.wants(ev.PollCompleted):
                bus.publish(ev.PollCompleted(name, NOW, NOW, 0.001, "skipped", "no new files", None, NOW + i))
        times.append((time.perf_counter() - t0) / k)
    return median(times)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_cpu(n: int, seconds: float, warmup: float, live_on: bool, workdir: Path) -> float:
    """CPU s/s of a real `trigctl run` of ``n`` triggers in a 120x40 tmux pane."""
    tmux = shutil.which("tmux")
    assert tmux, "tmux is needed for --process"
    shutil.rmtree(workdir / ".trigctl", ignore_errors=True)
    sock = os.path.join(tempfile.mkdtemp(prefix="bl", dir="/tmp"), "s")
    argv = [sys.executable, "-m", "trigctl", "run", "triggers.yaml"] + ([] if live_on else ["--no-live"])
    subprocess.run([tmux, "-S", sock, "-f", "/dev/null", "new-session", "-d", "-x", "120", "-y", "40", "-c",
                    str(workdir), *argv], check=True)
    try:
        pid = int(subprocess.run([tmux, "-S", sock, "display", "-p", "#{pane_pid}"], capture_output=True, text=True,
                                 check=True).stdout)
        time.sleep(warmup)  # a benchmark's warm-up: start-up and the first polls are not measured
        c0, t0 = cpu_seconds(pid), time.monotonic()
        time.sleep(seconds)
        return (cpu_seconds(pid) - c0) / (time.monotonic() - t0)
    finally:
        # SIGTERM first and wait: the SIGHUP of kill-server alone is a reload for trigctl, not a stop.
        try:
            os.kill(pid, signal.SIGTERM)
            while os.path.exists(f"/proc/{pid}") and open(f"/proc/{pid}/stat").read().split()[2] != "Z":
                time.sleep(0.05)
        except (ProcessLookupError, UnboundLocalError, FileNotFoundError):
            pass
        subprocess.run([tmux, "-S", sock, "kill-server"], capture_output=True)


def real_process(n: int, seconds: float, rounds: int) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="trigctl-bench-live-"))
    (workdir / "benchtriggers.py").write_text("def skip():\n    return None\n")
    lines = ["version: 1", "workflows:", "  wf:", "    tasks:", "      - run: 'true'", "triggers:"]
    lines += [f"  - {{name: t{i:05d}, type: python, workflow: wf, callable: 'benchtriggers:skip', interval: 10s, "
              "jitter: 10s}" for i in range(n)]
    (workdir / "triggers.yaml").write_text("\n".join(lines) + "\n")
    on, off = [], []
    for _ in range(rounds):
        off.append(process_cpu(n, seconds, 15, False, workdir))
        on.append(process_cpu(n, seconds, 15, True, workdir))
    print(f"| `trigctl run`, {n:,} triggers, 1,000 polls/s | CPU s/s | vs --no-live |\n|---|---|---|")
    print(f"| --no-live (log lines only) | {median(off):.3f} | 1.00 |")
    print(f"| live view | {median(on):.3f} | {median(on) / median(off):.2f} |")
    print(f"\n(each {seconds:g} s after a 15 s warm-up, median of {rounds} alternating rounds: off {', '.join(f'{x:.3f}' for x in off)}; "
          f"on {', '.join(f'{x:.3f}' for x in on)}; load average {os.getloadavg()[0]:.1f})")
    shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, nargs="+", default=[25, 1000, 10_000, 100_000])
    ap.add_argument("--refreshes", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--process", type=int, default=0, metavar="N", help="a real run of N triggers, view on vs off")
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args()
    if args.process:
        real_process(args.process, args.seconds, max(1, min(args.rounds, 3)))
        return
    print(f"| triggers | ms per redraw ({WIDTH}x{HEIGHT}) | of which the snapshot, ms | redraw vs {args.n[0]} triggers |")
    print("|---|---|---|---|")
    models = {n: loaded(n)[0] for n in args.n}
    # Rounds interleave the sizes, so that the machine's load falls on all of them alike.
    whole: dict[int, list[float]] = {n: [] for n in args.n}
    snaps: dict[int, list[float]] = {n: [] for n in args.n}
    for _ in range(args.rounds):
        for n, model in models.items():
            w, sn = per_refresh(model, args.refreshes)
            whole[n].append(w)
            snaps[n].append(sn)
    base = median(whole[args.n[0]])
    for n in args.n:
        w = median(whole[n])
        print(f"| {n:,} | {w * 1e3:.2f} | {median(snaps[n]) * 1e3:.3f} | {w / base:.2f} |")
    model, bus = loaded(10_000)
    nobody = ev.EventBus()
    noop = ev.EventBus()
    noop.subscribe(lambda e: None, [ev.PollCompleted])
    empty = per_event(nobody, "trigger-000001", args.events, args.rounds)
    built = per_event(noop, "trigger-000001", args.events, args.rounds)
    with_model = per_event(bus, "trigger-000001", args.events, args.rounds)
    print("\n| a poll's PollCompleted | ns per poll | vs nobody listening |\n|---|---|---|")
    print(f"| nobody listening (no view: the guard only) | {empty * 1e9:.0f} | 1.0 |")
    print(f"| a no-op subscriber (the event built and delivered) | {built * 1e9:.0f} | {built / empty:.1f} |")
    print(f"| the view's model (10,000 triggers) | {with_model * 1e9:.0f} | {with_model / empty:.1f} |")
    print(f"\n(refreshes={args.refreshes}, median of {args.rounds}; load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()

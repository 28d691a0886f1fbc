"""Helpers shared by the benchmarks (not a test module; pytest's testpaths exclude bench/)."""

from __future__ import annotations

import collections
import os
import sys
import threading
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def rss_mb(pid: int | str = "self") -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def pct(values, p):
    """The p-th percentile (nearest rank) of values; nan when empty."""
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def median(values):
    return pct(values, 50)


def quiet_cli_logging():
    """What `trigctl run` does to logging (one formatted line per event on stderr), into /dev/null,
    so the cost of formatting events is in the figures."""
    import logging

    from trigctl.runner import BatchingHandler, EventFormatter

    handler = BatchingHandler(open(os.devnull, "w"))  # noqa: SIM115 - as `trigctl run` sets it up
    handler.setFormatter(EventFormatter("text"))
    root = logging.getLogger("trigctl")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False


class Sampler:
    """A wall-clock sampling profiler of every thread (sys._current_frames every `every` s).

    Reports, per kind of thread, the innermost frames (what the thread was doing) and the trigctl
    functions on the stack (inclusive). Samples of threads parked in a wait are counted too: they
    show where time goes, not where CPU goes."""

    def __init__(self, every: float = 0.002):
        self.every = every
        self.leaf: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.incl: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.samples: collections.Counter = collections.Counter()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._main, daemon=True, name="sampler")

    def start(self):
        self._t.start()
        return self

    def stop(self):
        self._stop.set()
        self._t.join()

    @staticmethod
    def _kind(name: str) -> str:
        if name.startswith("run-"):
            return "run threads"
        if name.startswith("trigctl-loop"):
            return "loop thread"
        return name

    def _main(self):
        me = threading.get_ident()
        while not self._stop.wait(self.every):
            names = {t.ident: t.name for t in threading.enumerate()}
            for ident, frame in sys._current_frames().items():
                if ident == me:
                    continue
                kind = self._kind(names.get(ident, "?"))
                if kind in ("MainThread",):
                    continue
                stack = traceback.extract_stack(frame)
                self.samples[kind] += 1
                leaf = stack[-1]
                self.leaf[kind][f"{_short(leaf.filename)}:{leaf.name}:{leaf.lineno}"] += 1
                seen = set()
                for fr in stack:
                    if "trigctl" in fr.filename or "subprocess" in fr.filename or "tempfile" in fr.filename:
                        key = f"{_short(fr.filename)}:{fr.name}"
                        if key not in seen:
                            seen.add(key)
                            self.incl[kind][key] += 1

    def report(self, top: int = 15) -> str:
        out = []
        for kind, n in self.samples.most_common():
            if n < 20:
                continue
            out.append(f"### {kind}: {n} samples")
            out.append("innermost frame:")
            for k, v in self.leaf[kind].most_common(top):
                out.append(f"  {100 * v / n:5.1f}%  {k}")
            out.append("on the stack (inclusive):")
            for k, v in self.incl[kind].most_common(top):
                out.append(f"  {100 * v / n:5.1f}%  {k}")
        return "\n".join(out)


def _short(path: str) -> str:
    parts = Path(path).parts
    for anchor in ("trigctl", "bench"):
        if anchor in parts:
            i = len(parts) - 1 - parts[::-1].index(anchor)
            return "/".join(parts[i:])
    return Path(path).name


def context_switches() -> int:
    """Voluntary and involuntary context switches of this process's live threads, summed."""
    total = 0
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/status") as f:
                total += sum(int(line.split()[1]) for line in f if "ctxt_switches" in line)
        except OSError:  # the thread ended meanwhile
            pass
    return total


class CpuWindow:
    """Process CPU (this process and reaped children) over a window, and the context switches of
    its threads (a thread that ends within the window takes its switches with it)."""

    def __enter__(self):
        self.t0 = os.times()
        self.s0 = context_switches()
        self.w0 = time.monotonic()
        return self

    def __exit__(self, *a):
        t1 = os.times()
        self.wall = time.monotonic() - self.w0
        self.switches = (context_switches() - self.s0) / self.wall
        self.self_cpu = (t1.user - self.t0.user + t1.system - self.t0.system) / self.wall
        self.user = (t1.user - self.t0.user) / self.wall
        self.system = (t1.system - self.t0.system) / self.wall
        self.child_cpu = (t1.children_user - self.t0.children_user + t1.children_system - self.t0.children_system) / self.wall


def python_triggers_project(n: int, spread: bool, prefix: str = "trigctl-bench-") -> Path:
    """A temporary directory with a triggers.yaml of ``n`` python triggers (a no-op callable) every
    1 s (spread by a 1 s jitter, or all due at once); returns the YAML's path."""
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    (tmp / "bench_callables.py").write_text("def noop():\n    return None\n")
    lines = ["version: 1", "workflows:", "  wf:", "    tasks:", "      - run: 'true'", "triggers:"]
    for i in range(n):
        lines += [f"  - name: t{i}", "    type: python", "    callable: bench_callables:noop", "    workflow: wf",
                  "    interval: 1s"] + (["    jitter: 1s"] if spread else [])
    (tmp / "triggers.yaml").write_text("\n".join(lines) + "\n")
    return tmp / "triggers.yaml"


def record_lateness() -> list[float]:
    """Patch Scheduler.execute to append each poll's lateness (due time -> callable entered) to the
    returned list."""
    from trigctl.scheduler import Scheduler

    lateness: list[float] = []
    record = lateness.append
    original = Scheduler.execute

    def timed_execute(poll):
        record(time.time() - poll.due_at)
        return original(poll)

    Scheduler.execute = staticmethod(timed_execute)  # type: ignore[method-assign,assignment]
    return lateness

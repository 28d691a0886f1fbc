"""Signals are honoured under load: with thousands of `command` triggers due at once (polls
returning, fires recorded, runs starting), SIGTERM starts the shutdown within a second or so, and
the process exits cleanly within the grace period."""

from __future__ import annotations

import signal
import time

import pytest
from realproc import RunProc, integrity

pytestmark = pytest.mark.slow

N = 5000


def test_sigterm_is_seen_at_once_with_thousands_of_command_triggers_due(tmp_path):
    lines = ["version: 1", "workflows:", "  w: {tasks: [{argv: [\"true\"]}]}", "triggers:"]
    lines += [f"  - {{name: c{i}, type: command, argv: [\"true\"], interval: 1s, workflow: w}}" for i in range(N)]
    (tmp_path / "triggers.yaml").write_text("\n".join(lines) + "\n")
    proc = RunProc(tmp_path, "--grace", "5s", "triggers.yaml")
    try:
        start = proc.wait_line(" start ", timeout=120)
        # Under load: the polls' fires are being recorded and runs started.
        proc.wait_line(" fired ", timeout=60, start=start)
        while proc.count(" fired ") < 500:
            proc.wait_line(" fired ", timeout=60, start=len(proc.lines) - 1)
        sent = time.monotonic()
        proc.signal(signal.SIGTERM)
        proc.wait_line(" stopping ", timeout=30)
        seen = time.monotonic() - sent
        code = proc.wait(60)
        exited = time.monotonic() - sent
    finally:
        proc.cleanup()
    assert code == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    # Bounds, not sleeps: on main before this fix the same took ~4 s (17 s at 20,000 triggers).
    assert seen < 2.0, f"SIGTERM seen after {seen:.2f}s"
    assert exited < 5 + 5, f"exited {exited:.2f}s after SIGTERM"
    assert integrity(tmp_path / ".trigctl" / "state.db") == "ok"

"""The root triggers.yaml, the README's demo, for real: a file dropped into inbox/ fires and is moved to
processed/, the slow `report` never overlaps itself (a duplicate), and the health check against
examples/demo_service.py pages once when the service goes down and clears the page when it is back.
Only the periods are shortened; everything else is the demo as shipped."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from realproc import RunProc, query

ROOT = Path(__file__).resolve().parent.parent


def _demo_copy(tmp_path: Path) -> Path:
    text = (ROOT / "triggers.yaml").read_text()
    for old, new in (("every: 10s", "every: 1s"), ("sleep 12", "sleep 1.5"),
                     ("interval: 2s", "interval: 200ms"), ("max_backoff: 4s", "max_backoff: 200ms")):
        assert old in text, old
        text = text.replace(old, new)
    (tmp_path / "triggers.yaml").write_text(text)
    (tmp_path / "inbox").mkdir()
    shutil.copy(ROOT / "examples" / "demo_service.py", tmp_path / "demo_service.py")
    return tmp_path


def test_demo_shows_a_fire_a_duplicate_an_alert_and_a_recovery(tmp_path):
    demo = _demo_copy(tmp_path)
    service = subprocess.Popen([sys.executable, "demo_service.py", "--port", "0", "--up", "2", "--down", "3"],
                               cwd=demo, stdout=subprocess.PIPE, text=True)
    try:
        first = service.stdout.readline() if service.stdout else ""
        port = re.search(r"127\.0\.0\.1:(\d+)/health", first)
        assert port, first
        proc = RunProc(demo, "triggers.yaml", "--grace", "5s", "--log-format", "json",
                       env={"DEMO_URL": f"http://127.0.0.1:{port.group(1)}"})
        try:
            proc.wait_line('"event": "start"')
            (demo / "inbox" / "a.txt").write_text("hello\n")
            db = demo / ".trigctl" / "state.db"

            def seen(_log: str) -> bool:
                workflows = {w for (w,) in query(db, "SELECT workflow FROM runs WHERE status = 'succeeded'")}
                duplicates = query(db, "SELECT count(*) FROM events WHERE trigger_name = 'report' AND kind = 'duplicate'")
                return {"process_file", "page", "all-clear"} <= workflows and duplicates[0][0] > 0

            assert proc.wait_until(seen, timeout=60), proc.stderr
            assert (demo / "processed" / "a.txt").read_text() == "hello\n"
            assert not (demo / "inbox" / "a.txt").exists()
            # one page per outage, and its all-clear after it
            runs = query(db, "SELECT id, workflow FROM runs WHERE workflow IN ('page', 'all-clear') ORDER BY id")
            assert runs[0][1] == "page" and "all-clear" in [w for _, w in runs], runs
            assert all(a[1] != b[1] for a, b in zip(runs, runs[1:])), runs  # page and all-clear alternate
            # the report never overlapped itself
            spans = query(db, "SELECT started_at, completed_at FROM runs WHERE workflow = 'report' AND completed_at IS NOT NULL ORDER BY started_at")
            assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), spans
        finally:
            assert proc.stop() == 0, proc.stderr
    finally:
        service.terminate()
        service.wait(10)

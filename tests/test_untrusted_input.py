"""No untrusted value stops the loop. A real `trigctl run` watches an inbox holding file names that
are not UTF-8, polls an HTTP server whose JSON holds lone surrogates and a body nested hundreds of
levels deep, a command whose JSON output holds surrogates, and callables that return or raise them.
The worst outcome is an error recorded for that trigger; a heartbeat trigger keeps its cadence; the
process survives a restart; non-UTF-8 names reach tasks byte-exact."""

from __future__ import annotations

import json
import os

import pytest
from conftest import run_trigctl, wait_for
from realproc import RunProc, integrity, query
from test_http_trigger import LocalServer

pytestmark = pytest.mark.slow

NAMES = [b"caf\xe9.txt", b"\xff\xfe.txt", b"ok-\xc3\xa9.txt", b"half-\xe2\x82.txt", b"[oops] \x1b[2J.txt"]

MOD = r'''
import os, trigctl
BEATS = os.path.join(os.path.dirname(__file__), "beats")

def beat():
    with open(BEATS, "a") as f:
        f.write("b\n")
    return None

def surrogates(cursor=None):
    return trigctl.Fire({"v": "\udcff\ud800", "k\udcfe": "[/oops]"}, cursor="c\udcff\ud800")

def deep():
    d = {"leaf": 1}
    for _ in range(400):
        d = {"a": d}
    return d

def raiser():
    raise RuntimeError("bad \udcff\ud800 message " + "\x1b[2J" * 3)

def skipper():
    return trigctl.Skip("reason \ud800")

def esc():
    raise RuntimeError("\x1b]8;;http://evil\x07click\x1b]8;;\x07\x1b[2J\r")
'''

YAML = """
version: 1
workflows:
  copy:
    tasks:
      - run: 'printf %s "$TRIGCTL_PATH" > "out/env-$TRIGCTL_RUN_ID"'
      - argv: [{python}, -c, "import os, sys; open('out/argv-' + os.environ['TRIGCTL_RUN_ID'], 'wb').write(os.fsencode(sys.argv[1]))", "{{{{path}}}}"]
  w: {{tasks: [{{run: "true"}}]}}
defaults: {{interval: 300ms, max_backoff: 1s}}
triggers:
  - {{name: inbox, type: file, path: inbox, settle: 0s, workflow: copy}}
  - {{name: beat, type: python, callable: "untrusted:beat", workflow: w, interval: 100ms}}
  - {{name: surrogates, type: python, callable: "untrusted:surrogates", workflow: w}}
  - {{name: deep, type: python, callable: "untrusted:deep", workflow: w}}
  - {{name: raiser, type: python, callable: "untrusted:raiser", workflow: w}}
  - {{name: skipper, type: python, callable: "untrusted:skipper", workflow: w}}
  - {{name: esc, type: python, callable: "untrusted:esc", workflow: w}}
  - {{name: cmd, type: command, argv: [printf, '{{"x": "\\\\udcff", "y": "\\\\ud800"}}'], workflow: w}}
  - {{name: http-surrogates, type: http, url: "{url}/s", context: {{x: x, all: "@"}}, workflow: w}}
  - {{name: http-deep, type: http, url: "{url}/d", context: {{all: "@"}}, workflow: w}}
"""


def _beats(root) -> int:
    p = root / "beats"
    return len(p.read_text().splitlines()) if p.exists() else 0


def test_hostile_values_from_every_source_stop_nothing(tmp_path):
    import sys

    deep = "[" * 500 + "]" * 500  # ~1 KB, 500 levels
    body_s = b'{"x": "\\udcff\\ud800", "y": ["\\udfff"], "\\udcff": 1}'
    surrogate_server, deep_server = LocalServer(), LocalServer()
    surrogate_server.respond(body=body_s)
    deep_server.respond(body='{"d": ' + deep.replace("[]", '[{"a": 1}]') + "}")
    try:
        url_s = surrogate_server.url.rstrip("/")
        yaml = YAML.format(python=json.dumps(sys.executable), url=url_s)
        yaml = yaml.replace(f'"{url_s}/d"', f'"{deep_server.url.rstrip("/")}/d"')
        (tmp_path / "triggers.yaml").write_text(yaml)
        (tmp_path / "untrusted.py").write_text(MOD)
        (tmp_path / "out").mkdir()
        inbox = tmp_path / "inbox"
        inbox.mkdir()
        for name in NAMES:
            with open(os.path.join(os.fsencode(inbox), name), "wb") as f:
                f.write(b"x")
        proc = RunProc(tmp_path, "--grace", "5s", "triggers.yaml")
        try:
            proc.wait_line(" start ", timeout=60)
            db = tmp_path / ".trigctl" / "state.db"
            wait_for(lambda: len(list((tmp_path / "out").iterdir())) >= 2 * len(NAMES), timeout=30,
                     message="every file processed")

            def erred(name):
                return query(db, "SELECT consecutive_errors FROM triggers WHERE name = ?", (name,))[0][0] >= 2

            wait_for(lambda: erred("deep") and erred("raiser") and erred("esc"), timeout=30,
                     message="errors recorded twice")
            n = _beats(tmp_path)
            wait_for(lambda: _beats(tmp_path) >= n + 10, timeout=20, message="the heartbeat goes on")
            assert proc.proc.poll() is None, proc.stderr[-3000:]
        finally:
            code = proc.stop(60)
        assert code == 0, proc.stderr[-3000:]
        assert "polling loop failed" not in proc.stderr and "Traceback" not in proc.stderr
        # Control characters from error messages and file names are escaped in the log, never raw.
        assert "\x1b" not in proc.stderr and "\x07" not in proc.stderr and "\r" not in proc.stderr
        # Non-UTF-8 names reached both tasks byte-exact (environment and argv).
        got = {}
        for p in (tmp_path / "out").iterdir():
            got.setdefault(p.name.split("-")[0], set()).add(p.read_bytes())
        want = {os.path.join(os.fsencode(inbox), n) for n in NAMES}
        assert got["env"] == want and got["argv"] == want
        rows = dict(query(db, "SELECT name, last_error FROM triggers"))
        assert "nested deeper than 64 levels" in rows["deep"]
        assert "RuntimeError: bad \\udcff\\ud800 message" in rows["raiser"]
        assert rows["http-deep"] is None or "nested" in rows["http-deep"] or "JSON" in rows["http-deep"]
        assert integrity(db) == "ok"
        statuses = {s for (s,) in query(db, "SELECT status FROM runs")}
        assert statuses <= {"succeeded", "queued", "running", "cancelled"}, statuses
        # Everything recorded reads back: history (JSON), and a second start does not fall over.
        hist = run_trigctl("history", "--json", "--limit", "500", cwd=tmp_path)
        assert hist.returncode == 0, hist.stderr
        json.loads(hist.stdout)
        again = run_trigctl("run", "--once", "--trigger", "inbox", "--trigger", "surrogates", "triggers.yaml",
                            cwd=tmp_path, timeout=60)
        assert "polling loop failed" not in again.stderr and "Traceback" not in again.stderr, again.stderr
    finally:
        surrogate_server.close()
        deep_server.close()

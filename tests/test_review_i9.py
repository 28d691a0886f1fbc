"""Regressions found by the independent review of issue 8 (hostile input, hostile peers).

Each test drives a real `trigctl run` process, as an operator would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from realproc import RunProc

pytestmark = pytest.mark.slow

TRIGCTL = [sys.executable, "-m", "trigctl"]


def _write(project: Path, yaml_text: str, module: str = "", beat: bool = False) -> Path:
    """Write t.yaml (and evil.py); with ``beat``, a 200 ms heartbeat trigger beside the others."""
    (project / "t.yaml").write_text(textwrap.dedent(yaml_text) + (BEAT if beat else ""))
    if module or beat:
        (project / "evil.py").write_text(textwrap.dedent(module) + (BEAT_FN if beat else ""))
    return project / "t.yaml"


def _run(project: Path, *args: str, until, timeout: float = 30.0) -> tuple[int | None, str, float]:
    """`trigctl run ARGS` until ``until(stderr)`` holds (or the process exits, or ``timeout``), then
    SIGTERM; (exit code, stderr, seconds to exit after SIGTERM). The assertions decide; nothing sleeps."""
    proc = RunProc(project, *args)
    try:
        proc.wait_until(until, timeout)
        t0 = time.monotonic()
        code = proc.stop(40) if proc.proc.poll() is None else proc.wait(40)
        return code, proc.stderr, time.monotonic() - t0
    finally:
        proc.cleanup()


BEAT = """\
  - {name: beat, type: python, callable: "evil:beat", interval: 200ms, workflow: w, dedupe: none}
"""
BEAT_FN = """
import itertools
_n = itertools.count()
def beat():
    return {"n": next(_n)}
"""


def _beats(err: str) -> list[float]:
    import datetime

    out = []
    for line in err.splitlines():
        if "fired trigger=beat" in line:
            out.append(datetime.datetime.strptime(line[:24], "%Y-%m-%d %H:%M:%S%z").timestamp())
    return out


def test_async_callable_returning_a_generator_that_raises_systemexit_does_not_stop_the_loop(tmp_path):
    """The value an async callable returns is normalised by finish() on the loop thread, where only
    Exception is caught: a generator raising SystemExit (or KeyboardInterrupt) ends `run`."""
    _write(tmp_path, """
        version: 1
        workflows: {w: {tasks: [{run: 'true'}]}}
        triggers:
          - {name: ax, type: python, callable: "evil:async_exit", interval: 1s, workflow: w}
        """, """
        def _gen():
            yield {"a": 1}
            raise SystemExit(3)
        async def async_exit():
            return _gen()
        """, beat=True)
    code, err, _ = _run(tmp_path, "t.yaml", until=lambda e: "error trigger=ax" in e and len(_beats(e)) >= 10)
    assert "the polling loop failed" not in err, err
    assert code == 0, err
    assert "error trigger=ax" in err, err
    assert len(_beats(err)) >= 10, err


def test_async_callable_returning_a_slow_generator_does_not_freeze_other_triggers(tmp_path):
    """A generator returned by an async callable is consumed on the loop thread: one whose items take
    seconds freezes every trigger (and SIGTERM) for that long."""
    _write(tmp_path, """
        version: 1
        workflows: {w: {tasks: [{run: 'true'}]}}
        triggers:
          - {name: slow, type: python, callable: "evil:async_slow", interval: 1s, timeout: 1s, workflow: w}
        """, """
        import time
        def _gen():
            time.sleep(4)
            yield {"b": 1}
        async def async_slow():
            return _gen()
        """, beat=True)
    code, err, stop_s = _run(tmp_path, "t.yaml", until=lambda e: len(_beats(e)) >= 20, timeout=40)
    beats = _beats(err)
    assert len(beats) >= 20, f"{len(beats)} beat fires in 9 s at 200 ms\n{err}"
    assert max(b - a for a, b in zip(beats, beats[1:])) < 2.5, err
    assert stop_s < 3, f"SIGTERM took {stop_s:.1f}s"


@pytest.mark.parametrize("exc", ["SystemExit(5)", "KeyboardInterrupt()", "GeneratorExit()"])
def test_a_class_constructor_raising_a_base_exception_is_that_triggers_error(tmp_path, exc):
    """docs/yaml-reference.md: 'If the constructor raises, every poll of that trigger is an error
    (cannot set up trigger: ...)'. _make_impl catches only Exception: SystemExit ends `run` silently
    with its code, GeneratorExit/KeyboardInterrupt with a traceback."""
    _write(tmp_path, """
        version: 1
        workflows: {w: {tasks: [{run: 'true'}]}}
        triggers:
          - {name: bad, type: python, callable: "evil:Bad", interval: 1s, workflow: w}
        """, f"""
        class Bad:
            def __init__(self):
                raise {exc}
            def poll(self):
                return None
        """, beat=True)
    code, err, _ = _run(tmp_path, "t.yaml", until=lambda e: "cannot set up trigger" in e and len(_beats(e)) >= 5)
    assert "Traceback" not in err, err
    assert code == 0, err
    assert "cannot set up trigger" in err, err
    assert len(_beats(err)) >= 5, err


def test_close_raising_systemexit_on_reload_does_not_stop_the_loop(tmp_path):
    """A reload that removes a class trigger calls its close(); _close catches only Exception."""
    cfg = _write(tmp_path, """
        version: 1
        workflows: {w: {tasks: [{run: 'true'}]}}
        triggers:
          - {name: closer, type: python, callable: "evil:Closer", interval: 1s, workflow: w}
        """, """
        class Closer:
            def poll(self):
                return None
            def close(self):
                raise SystemExit(7)
        """, beat=True)
    proc = RunProc(tmp_path, "t.yaml")
    try:
        proc.wait_until(lambda e: len(_beats(e)) >= 3, 30)
        cfg.write_text("\n".join(ln for ln in cfg.read_text().splitlines() if "closer" not in ln) + "\n")
        proc.signal(signal.SIGHUP)
        proc.wait_line(" reloaded ", timeout=30)
        n = len(_beats(proc.stderr))
        proc.wait_until(lambda e: len(_beats(e)) >= n + 3, 30)  # the loop goes on after the close()
        alive = proc.proc.poll() is None
        err = proc.stderr
    finally:
        proc.cleanup()
    assert alive and "the polling loop failed" not in err, err


def test_a_hard_link_to_the_state_in_another_directory_is_refused(tmp_path):
    """The state lock is `realpath(state) + '.lock'` plus a holder row in the database. A hard link
    to state.db alone, in another directory, has its own lock file and its own (empty) -wal/-shm,
    so the holder row written into the first process's WAL is not seen: a second `run` starts on
    the same database file, fires the same work again, and the two processes' WALs overwrite each
    other's pages in one file."""
    proj = tmp_path / "p"
    other = tmp_path / "elsewhere"
    proj.mkdir()
    other.mkdir()
    _write(proj, """
        version: 1
        workflows: {w: {tasks: [{run: 'sleep 20'}]}}
        triggers:
          - {name: a, type: command, run: 'echo {}', interval: 1h, workflow: w}
        """)
    first = RunProc(proj, "t.yaml")
    try:
        first.wait_line(" run_started ", timeout=30)  # it holds the lock and a running run
        state = proj / ".trigctl" / "state.db"
        os.link(state, other / "hard.db")
        second = subprocess.run([*TRIGCTL, "run", "t.yaml", "--state", str(other / "hard.db")], cwd=proj,
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 2, "a second `trigctl run` through a hard link started"
        assert "another `trigctl run`" in second.stderr
    finally:
        first.stop(40)
        first.cleanup()


@pytest.mark.parametrize("source", ["/dev/zero", "/dev/urandom", "sparse"])
def test_validate_of_an_endless_or_huge_file_is_refused_in_bounded_memory(tmp_path, source):
    """load_config reads the whole file (`p.read_bytes()`) before checking MAX_FILE_BYTES: `validate
    /dev/urandom` grew past 4 GB RSS in 20 s; under a 1 GiB address-space limit it ends with
    `internal error: MemoryError`. docs/guarantees.md: files over 10 MB are refused before they
    are built, in bounded time and memory."""
    import resource

    if source == "sparse":
        path = tmp_path / "big.yaml"
        with open(path, "wb") as f:
            f.truncate(3 << 30)  # 3 GiB of holes: costs no disk
        source = str(path)

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    proc = subprocess.run([*TRIGCTL, "validate", source], capture_output=True, text=True, timeout=60,
                          preexec_fn=limit)
    assert proc.returncode == 2, proc.stderr
    assert "internal error" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert "too large" in proc.stderr, proc.stderr


def test_an_async_skip_whose_reason_cannot_be_read_does_not_stop_the_loop(tmp_path):
    """Same root cause as above: Skip(reason=obj) from an async callable, whose str() raises
    SystemExit, is turned into text on the loop thread."""
    _write(tmp_path, """
        version: 1
        workflows: {w: {tasks: [{run: 'true'}]}}
        triggers:
          - {name: x, type: python, callable: "evil:aevil_reason", interval: 1s, workflow: w}
        """, """
        import trigctl
        class EvilStr:
            def __str__(self):
                raise SystemExit(11)
        async def aevil_reason():
            return trigctl.Skip(reason=EvilStr())
        """, beat=True)
    code, err, _ = _run(tmp_path, "t.yaml", until=lambda e: len(_beats(e)) >= 10)
    assert "the polling loop failed" not in err and code == 0, err
    assert len(_beats(err)) >= 10, err


def test_a_huge_exception_message_does_not_hold_up_other_triggers(tmp_path):
    """A 50 MB exception message is turned into text and masked on the loop thread before it is cut
    to 4,000 characters: the 200 ms heartbeat beside it stalls ~2 s at each error."""
    _write(tmp_path, """
        version: 1
        workflows: {w: {tasks: [{run: 'true'}]}}
        triggers:
          - {name: x, type: python, callable: "evil:huge", interval: 1s, max_backoff: 1s, workflow: w}
        """, """
        def huge():
            raise RuntimeError("x" * 50_000_000)
        """, beat=True)
    code, err, _ = _run(tmp_path, "t.yaml", until=lambda e: e.count("error trigger=x") >= 3 and len(_beats(e)) >= 10)
    beats = _beats(err)
    assert "error trigger=x" in err, err
    # timestamps have whole seconds: a 200 ms cadence never leaves a 2 s hole
    assert beats and max(b - a for a, b in zip(beats, beats[1:])) < 2, beats


def test_json_logs_stay_json_when_a_recursive_watch_overflows(tmp_path):
    """A recursive `file` trigger over ~10,000 directories: each scan opens every directory, whose
    IN_OPEN/IN_CLOSE_NOWRITE events overflow the inotify queue (16384 events by default), and
    watchdog's own logger then prints `Inotify queue overflowed; reconciling recursive watches below
    b'/...'` as plain text, without trigctl's format: `--log-format json` output is no longer one
    JSON object per line."""
    import json

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for d in range(10000):
        sub = inbox / f"d{d}"
        sub.mkdir()
        if d % 10 == 0:
            (sub / "f.txt").write_text("x")
    _write(tmp_path, """
        version: 1
        workflows: {w: {tasks: [{run: 'true'}]}}
        triggers:
          - {name: f, type: file, path: inbox, recursive: true, pattern: "**/*.txt", settle: 0s, interval: 1s,
             workflow: w}
        """)
    code, err, _ = _run(tmp_path, "t.yaml", "--log-format", "json", until=lambda e: e.count('"event": "fired"') >= 1000,
                        timeout=90)
    bad = []
    for line in err.splitlines():
        try:
            json.loads(line)
        except ValueError:
            bad.append(line)
    assert not bad, bad[:3]
    assert code == 0


def test_a_long_run_of_letters_in_a_context_does_not_freeze_the_loop(tmp_path):
    """secrets._URL_PASSWORD (`[a-zA-Z][a-zA-Z0-9+.-]*://...`) is applied to every string of every
    context (Redactor.scrub) and error, on the loop thread. On a string of letters without `://` it
    backtracks quadratically: 40,000 letters take 3 s, 100,000 more than 40 s, and a peer can send
    900,000 (under the 1 MB context limit). A command trigger (or an HTTP body) printing one such
    value freezes every trigger; the 200 ms heartbeat here fired once in 40 s."""
    _write(tmp_path, """
        version: 1
        workflows: {w: {tasks: [{run: 'true'}]}}
        triggers:
          - {name: big, type: command, interval: 1h, workflow: w,
             run: 'printf "{\\"a\\": \\""; head -c 100000 /dev/zero | tr "\\0" a; printf "\\"}"'}
          - {name: hb, type: command, run: 'echo "{\\"t\\": \\"$(date +%s%N)\\"}"', interval: 200ms,
             workflow: w, dedupe: none}
        """)
    code, err, stop_s = _run(tmp_path, "t.yaml",
                             until=lambda e: "fired trigger=big" in e and e.count("fired trigger=hb") >= 20)
    hb = [ln for ln in err.splitlines() if "fired trigger=hb" in ln]
    assert "fired trigger=big" in err, err[-2000:]
    assert len(hb) >= 20, f"{len(hb)} heartbeat fires in 8 s at 200 ms"
    assert stop_s < 3, f"SIGTERM took {stop_s:.1f}s"


@pytest.mark.parametrize("body", [
    "raise SystemExit(11)",
    "raise KeyboardInterrupt()",
    "raise GeneratorExit()",
    "return trigctl.Skip(reason=EvilStr())",
])
@pytest.mark.parametrize("kind", ["def", "async def", "class"])
def test_poll_of_a_trigger_raising_a_base_exception_says_so_in_one_line(tmp_path, body, kind):
    """`trigctl poll NAME` ends silently with the trigger's SystemExit code (11, 5, ...), or prints a
    GeneratorExit/KeyboardInterrupt traceback, instead of reporting the poll's error."""
    if kind == "class":
        src = f"class X:\n    def __init__(self):\n        pass\n    def poll(self):\n        {body}\n"
    else:
        src = f"{kind} x():\n    {body}\n"
    (tmp_path / "evil.py").write_text(
        "import trigctl\nclass EvilStr:\n    def __str__(self):\n        raise SystemExit(11)\n" + src)
    callable_ = "evil:X" if kind == "class" else "evil:x"
    _write(tmp_path, f"""
        version: 1
        workflows: {{w: {{tasks: [{{run: 'true'}}]}}}}
        triggers:
          - {{name: x, type: python, callable: "{callable_}", workflow: w}}
        """)
    proc = subprocess.run([*TRIGCTL, "poll", "-c", "t.yaml", "x"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=30)
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, out
    assert proc.returncode in (1, 2), (proc.returncode, out)
    assert out.strip() and len(out.strip().splitlines()) <= 2, out


@pytest.mark.parametrize("exc", ["KeyboardInterrupt()", "GeneratorExit()"])
@pytest.mark.parametrize("command", [["validate", "t.yaml"], ["run", "--once", "t.yaml"]])
def test_a_module_raising_a_base_exception_at_import_is_a_validation_error(tmp_path, exc, command):
    """`raise SystemExit(4)` at import is reported (`the module called sys.exit(4)`), but
    KeyboardInterrupt ends validate silently with 130 and GeneratorExit prints a 60-line traceback."""
    (tmp_path / "m.py").write_text(f"raise {exc}\n")
    _write(tmp_path, """
        version: 1
        workflows: {w: {tasks: [{run: 'true'}]}}
        triggers:
          - {name: x, type: python, callable: "m:f", workflow: w}
        """)
    proc = subprocess.run([*TRIGCTL, *command], cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and 'cannot import "m:f"' in proc.stderr, proc.stderr


def test_secret_headers_are_not_sent_to_another_host_on_a_redirect(tmp_path):
    """requests drops only `Authorization` when a redirect leaves the host: every other header of
    `headers:` (X-Api-Key, a `${VAR}` secret by definition) follows a polled server's (or an open
    redirect's) `302 Location: http://elsewhere/`, handing the secret to a third party."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    seen: list[dict] = []

    class Redirect(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.2:{other.server_port}/steal")
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_POST = do_GET

    class Record(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            seen.append(dict(self.headers))
            body = b'{"ok": true}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_GET

    first = HTTPServer(("127.0.0.1", 0), Redirect)
    other = HTTPServer(("127.0.0.2", 0), Record)
    for srv in (first, other):
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        _write(tmp_path, f"""
            version: 1
            workflows:
              w: {{tasks: [{{http: {{url: "http://127.0.0.1:{first.server_port}/task",
                                   headers: {{X-Api-Key: "${{SVC_API_KEY}}"}}}}}}]}}
            triggers:
              - name: x
                type: http
                url: "http://127.0.0.1:{first.server_port}/trig"
                headers: {{X-Api-Key: "${{SVC_API_KEY}}"}}
                workflow: w
            """)
        proc = subprocess.run([*TRIGCTL, "run", "--once", "t.yaml"], cwd=tmp_path, capture_output=True, text=True,
                              timeout=60, env={**os.environ, "SVC_API_KEY": "s3cret-api-key-value"})
    finally:
        first.shutdown()
        other.shutdown()
    leaked = [h for h in seen if "s3cret-api-key-value" in repr(h)]
    assert not leaked, f"{len(leaked)} requests to another host carried the secret header; {proc.stderr}"

"""One deadline per HTTP exchange, hung polls that cost no capacity, and cancel of any run.

Hostile servers (tests/hostile_http.py) are real sockets on 127.0.0.1 that trickle a byte every
0.1 s, so no per-read timeout ever fires; before the deadline fix such a request ran for hours.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import sys
import textwrap
import threading
import time
from pathlib import Path

import hostile_http as h
import pytest
from conftest import run_trigctl, wait_for
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from realproc import RunProc, query

from trigctl.config import TriggerConfig, load_config
from trigctl.net import http as nethttp
from trigctl.net.http import Exchange, HttpError, RequestAborted, RequestTimeout, http_request, new_session
from trigctl.triggers.base import PollContext, PollError

SLACK = 1.5  # seconds an exchange may end after its timeout (a loaded 2-core machine)

HOSTILE = {
    "silent": h.silent,
    "trickle_status": h.trickle_status,
    "trickle_headers": h.trickle_headers,
    "trickle_body": h.trickle_body,
    "trickle_body_until_close": h.trickle_body_until_close,
    "chunked_forever": h.chunked_forever,
    "redirect_chain_to_trickle": h.redirect_chain_to_trickle,
}


@pytest.fixture
def hostile():
    servers: list[h.HostileServer] = []

    def make(behaviour=h.ok, tick: float = 0.1, raw=None) -> h.HostileServer:
        s = h.HostileServer(behaviour, tick, raw)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


def timed_request(url: str, timeout: float, session=None, **kw):
    session = session or new_session()
    t0 = time.monotonic()
    try:
        return http_request(session, "GET", url, timeout=timeout, **kw), time.monotonic() - t0
    except HttpError as e:
        return e, time.monotonic() - t0


# ------------------------------------------------------------------------------ the exchange


@pytest.mark.parametrize("variant", sorted(HOSTILE))
def test_each_hostile_server_ends_at_the_deadline(hostile, variant):
    server = hostile(HOSTILE[variant])
    err, took = timed_request(server.url + "/path?token=s3cret", 1.0)
    assert isinstance(err, RequestTimeout), err
    assert 0.9 <= took <= 1.0 + SLACK, took
    assert str(err) == f"GET {server.url}/path?...: timed out after 1s"  # secret-free, as before
    assert nethttp._watchdog.pending() == 0


def test_a_tls_handshake_that_never_completes_ends_at_the_deadline(hostile):
    server = hostile(h.silent)  # reads the ClientHello as a request head that never ends; never answers
    err, took = timed_request(f"https://127.0.0.1:{server.port}/", 1.0)
    assert isinstance(err, RequestTimeout), err
    assert 0.9 <= took <= 1.0 + SLACK


def test_a_trickled_tls_handshake_ends_at_the_deadline(hostile):
    server = hostile(raw=h.tls_trickler)
    err, took = timed_request(f"https://127.0.0.1:{server.port}/", 1.0)
    assert isinstance(err, RequestTimeout), err
    assert 0.9 <= took <= 1.0 + SLACK


def test_redirects_count_against_the_same_deadline(hostile):
    """Ten hops of 0.4 s each: every hop is quick enough alone, together they are 4 s."""
    def slow_hops(server, conn, path):
        hop = int(path.rsplit("/", 1)[1] or 0)
        if server.stopped.wait(0.4):
            return False
        conn.sendall(h.response("302 Found", b"", f"Location: /{hop + 1}\r\n") if hop < 10 else h.response())
        return True

    server = hostile(slow_hops)
    err, took = timed_request(server.url + "/0", 1.0)
    assert isinstance(err, RequestTimeout), err
    assert took <= 1.0 + SLACK
    assert len(server.requests) <= 4


def test_a_redirect_to_another_slow_server_ends_at_the_deadline(hostile):
    slow = hostile(h.trickle_body)

    def to_slow(server, conn, path):
        conn.sendall(h.response("307 Temporary Redirect", b"", f"Location: {slow.url}/there\r\n"))
        return True

    first = hostile(to_slow)
    err, took = timed_request(first.url + "/here", 1.0)
    assert isinstance(err, RequestTimeout) and str(err) == f"GET {first.url}/here: timed out after 1s"
    assert took <= 1.0 + SLACK
    assert slow.requests == ["/there"]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@example(cut=180, tick=0.02, timeout=0.5, then="chunks", chunked=False)
@given(cut=st.integers(0, 200), tick=st.sampled_from([0.02, 0.1, 0.3]), timeout=st.sampled_from([0.3, 0.5]),
       then=st.sampled_from(["stall", "trickle", "chunks"]), chunked=st.booleans())
def test_any_cut_response_ends_at_the_deadline(hostile, cut, tick, timeout, then, chunked):
    """A valid response cut anywhere (status line, headers, body), then stalled or trickled, never
    outlives the timeout, and never passes for a good response."""
    if chunked:
        full = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
                b"X-Pad: " + b"p" * 40 + b"\r\n\r\n" + b"40\r\n" + b"x" * 64 + b"\r\n")
    else:
        full = h.response(body=b"x" * 200, extra="X-Pad: " + "p" * 40 + "\r\n")
    prefix = full[:cut]
    rest = full[cut:] * 100

    def behaviour(server, conn, path):
        conn.sendall(prefix)
        if then == "stall":
            server.stopped.wait()
        elif then == "trickle":
            server.trickle(conn, rest)
        else:
            server.trickle(conn, b"", forever=b"1\r\nx\r\n")
        return False

    server = hostile(behaviour, tick)
    err, took = timed_request(server.url, timeout)
    assert took <= timeout + SLACK, took
    if not chunked and then == "chunks" and cut >= full.index(b"\r\n\r\n") + 4 and not isinstance(err, HttpError):
        # The trickled bytes fill the declared Content-Length in time: a complete response, rightly
        # accepted (found by hypothesis: cut=180, tick=0.02, timeout=0.5).
        assert err.status == 200 and len(err.body) == 200
        return
    assert isinstance(err, HttpError), err  # a timeout, or a response the client refused
    if not isinstance(err, RequestTimeout):
        assert "timed out" not in str(err)


def test_keep_alive_connections_are_still_reused(hostile):
    server = hostile(h.ok)
    session = new_session()
    for _ in range(5):
        resp = http_request(session, "GET", server.url, timeout=5)
        assert resp.status == 200 and resp.json() == {"depth": 5}
    assert server.connections == 1


def test_a_cut_connection_does_not_go_back_to_the_pool_usable(hostile):
    server = hostile(h.trickle_body)
    session = new_session()
    err, _ = timed_request(server.url, 0.5, session)
    assert isinstance(err, RequestTimeout)
    server.behaviour = h.ok
    resp = http_request(session, "GET", server.url, timeout=5)  # same pool, same host and port
    assert resp.status == 200 and resp.json() == {"depth": 5}
    assert server.connections == 2  # a fresh connection, not the cut one


def test_abort_ends_an_exchange_at_once(hostile):
    server = hostile(h.trickle_body)
    ex = Exchange()
    threading.Thread(target=lambda: (server.got_request.wait(10), ex.abort()), daemon=True).start()
    err, took = timed_request(server.url + "/?k=v", 60, exchange=ex)
    assert isinstance(err, RequestAborted) and str(err) == f"GET {server.url}/?...: cancelled"
    assert took < 2.0


def test_an_exchange_aborted_before_it_starts_sends_nothing(hostile):
    server = hostile(h.ok)
    ex = Exchange()
    ex.abort()
    err, took = timed_request(server.url, 60, exchange=ex)
    assert isinstance(err, RequestAborted) and took < 1.0
    assert server.requests == []


@pytest.fixture
def full_backlog():
    """A port whose listen backlog is full: a connect to it hangs (the SYN is dropped)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    held = [socket.create_connection(("127.0.0.1", port))]
    yield f"http://127.0.0.1:{port}"
    for sock in [*held, listener]:
        sock.close()


def test_a_connect_that_never_completes_ends_at_the_deadline(full_backlog):
    err, took = timed_request(full_backlog, 1.0)
    assert isinstance(err, RequestTimeout), err
    assert took <= 1.0 + SLACK


def test_abort_ends_a_connect_that_hangs(full_backlog):
    ex = Exchange()
    threading.Timer(0.3, ex.abort).start()
    err, took = timed_request(full_backlog, 60, exchange=ex)
    assert isinstance(err, RequestAborted), err
    assert took < 2.0


@pytest.fixture
def slow_dns(monkeypatch):
    """Names ending in .slow.test resolve only when released (getaddrinfo cannot be interrupted)."""
    release = threading.Event()
    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if str(host).endswith(".slow.test"):
            release.wait(60)
            host = "127.0.0.1"
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield release
    release.set()


def test_a_name_that_never_resolves_ends_at_the_deadline(slow_dns, hostile):
    server = hostile(h.ok)
    err, took = timed_request(f"http://api.slow.test:{server.port}/", 1.0)
    assert isinstance(err, RequestTimeout), err
    assert 0.9 <= took <= 1.0 + SLACK
    ex = Exchange()
    threading.Timer(0.3, ex.abort).start()
    err, took = timed_request(f"http://api.slow.test:{server.port}/", 60, exchange=ex)
    assert isinstance(err, RequestAborted) and took < 2.0
    assert server.requests == []
    slow_dns.set()  # a name that resolves in time still works
    assert http_request(new_session(), "GET", f"http://api.slow.test:{server.port}/", timeout=5).status == 200


def test_a_socket_attached_after_the_deadline_is_shut_down_at_once():
    a, b = socket.socketpair()
    with a, b:
        ex = Exchange()
        ex.start(0.0)
        wait_for(lambda: ex.ended == "timeout", timeout=5, message="the watchdog expires the exchange")
        ex.attach(a)  # e.g. a connection that completed after the deadline
        b.settimeout(5)
        a.settimeout(5)
        assert a.recv(10) == b""  # shut down: reads end at once
        assert ex.finish() == "timeout"


def test_finished_exchanges_do_not_pile_up_in_the_watchdog(hostile):
    server = hostile(h.ok)
    session = new_session()
    for _ in range(600):
        http_request(session, "GET", server.url, timeout=30)
    assert nethttp._watchdog.pending() == 0
    assert len(nethttp._watchdog._heap) < 2 * nethttp._Watchdog.COMPACT_AT


def test_the_body_cap_still_holds_on_an_endless_stream(hostile):
    server = hostile(h.chunked_forever, tick=0.001)
    err, took = timed_request(server.url, 10, max_body=2000)
    assert isinstance(err, HttpError) and "response body larger than 2000 bytes" in str(err)
    assert took < 10


def test_the_http_helpers_have_their_own_error_type():
    """net.http serves triggers and tasks alike: its errors are not the triggers' PollError, and it
    imports nothing from the trigger package (the trigger boundary translates)."""
    import inspect

    assert issubclass(RequestTimeout, HttpError) and issubclass(RequestAborted, HttpError)
    assert not issubclass(HttpError, PollError)
    assert "trigctl.triggers" not in inspect.getsource(nethttp)


# ------------------------------------------------------------------------- trigger types


def poll_ctx(timeout: float) -> PollContext:
    return PollContext(due_at=0, now=0, cursor=None, state={}, timeout=timeout)


def test_http_trigger_poll_ends_at_its_timeout(hostile, tmp_path):
    from trigctl.triggers.http import HttpTrigger

    server = hostile(h.trickle_headers)
    t = HttpTrigger(TriggerConfig(name="t", type="http", workflow="w", options={"url": server.url}), tmp_path)
    t0 = time.monotonic()
    with pytest.raises(PollError, match=r"^GET http://\S+: timed out after 1s$") as e:  # HttpError -> PollError
        t.poll(poll_ctx(1.0))
    assert time.monotonic() - t0 <= 1.0 + SLACK
    assert not isinstance(e.value, HttpError)


def test_queue_depth_http_source_ends_at_its_timeout(hostile, tmp_path):
    from trigctl.triggers.queue_depth import QueueDepthTrigger

    server = hostile(h.trickle_body)
    opts = {"queue": "q", "above": 1, "source": {"http": {"url": server.url, "json": "depth"}}}
    t = QueueDepthTrigger(TriggerConfig(name="t", type="queue_depth", workflow="w", options=opts), tmp_path)
    t0 = time.monotonic()
    with pytest.raises(PollError, match=r"^GET http://\S+: timed out after 1s$") as e:  # HttpError -> PollError
        t.poll(poll_ctx(1.0))
    assert time.monotonic() - t0 <= 1.0 + SLACK
    assert not isinstance(e.value, HttpError)


# ------------------------------------------------------------------- a real `trigctl run`

TICKS = "    argv: [sh, -c, 'date +%s.%N >> ticks.txt; exit 1']\n"


def tick_times(path: Path) -> list[float]:
    if not path.exists():
        return []
    return [float(x) for x in path.read_text().split()]


def max_gap(times: list[float]) -> float:
    return max((b - a for a, b in zip(times, times[1:])), default=0.0)


def error_count(db: Path, name: str) -> int:
    # Repeats of one error message in a streak count on one row.
    if not db.exists():  # sqlite3.connect would create it
        return 0
    try:
        return query(db, "SELECT coalesce(sum(count), 0) FROM events WHERE trigger_name = ? AND kind = 'error'",
                     (name,))[0][0]
    except sqlite3.OperationalError:  # not created yet
        return 0


def test_run_hostile_http_triggers_time_out_are_polled_again_and_others_keep_cadence(hostile, tmp_path):
    """Every hostile variant as an `http` trigger, and a trickling `queue_depth` http source: each poll
    ends at its 1 s timeout with an error, the trigger is polled again (errors keep coming), and a
    `command` trigger beside them keeps its 200 ms cadence."""
    lines = ["version: 1", "workflows:", "  w:", "    tasks:", "      - run: 'true'", "triggers:"]
    names = []
    for variant, behaviour in sorted(HOSTILE.items()):
        server = hostile(behaviour)
        name = variant.replace("_", "-")
        names.append(name)
        lines += [f"  - name: {name}", "    type: http", "    workflow: w", f"    url: {server.url}/x",
                  "    interval: 300ms", "    timeout: 1s", "    max_backoff: 300ms"]
    depth = hostile(h.trickle_body)
    names.append("depth")
    lines += ["  - name: depth", "    type: queue_depth", "    workflow: w", "    queue: q", "    above: 1",
              "    source:", "      http:", f"        url: {depth.url}", "        json: depth",
              "    interval: 300ms", "    timeout: 1s", "    max_backoff: 300ms"]
    lines += ["  - name: ticker", "    type: command", "    workflow: w", "    interval: 200ms"]
    (tmp_path / "triggers.yaml").write_text("\n".join(lines) + "\n" + TICKS)
    db = tmp_path / ".trigctl" / "state.db"
    proc = RunProc(tmp_path, "triggers.yaml", "--log-format", "json")
    try:
        proc.wait_line('"event": "start"')
        started = time.monotonic()
        # Polled again after each timeout: three errors each (1 s timeout + 0.3 s backoff apiece).
        wait_for(lambda: all(error_count(db, n) >= 3 for n in names), timeout=20,
                 message="three timed-out polls of every hostile trigger")
        took = time.monotonic() - started
        ticks = tick_times(tmp_path / "ticks.txt")
    finally:
        assert proc.stop() == 0
    assert took < 3 * (1.0 + 0.3) + 6, took
    errors = query(db, "SELECT trigger_name, error FROM events WHERE kind = 'error'")
    assert {n for n, _ in errors} == set(names)
    assert all("timed out after 1s" in e for _, e in errors), errors
    assert len(ticks) >= 10
    assert max_gap(ticks) < 1.0, max_gap(ticks)  # 200 ms cadence, never frozen behind the hung ones


def test_run_http_task_against_a_trickling_server_fails_at_its_timeout(hostile, tmp_path):
    server = hostile(h.trickle_body)
    (tmp_path / "triggers.yaml").write_text(textwrap.dedent(f"""
        version: 1
        workflows:
          w:
            tasks:
              - name: notify
                http: {{url: "{server.url}/hook?token=abc"}}
                timeout: 1s
        triggers:
          - name: src
            type: command
            workflow: w
            argv: [echo, '{{"id": 1}}']
        """).lstrip())
    t0 = time.monotonic()
    out = run_trigctl("run", "--once", "triggers.yaml", cwd=tmp_path, timeout=30)
    took = time.monotonic() - t0
    assert out.returncode == 1, out.stderr
    shown = json.loads(run_trigctl("show", "1", "--json", cwd=tmp_path).stdout)
    assert shown["status"] == "failed"
    assert shown["tasks"][0]["status"] == "failed" and "task timed out after 1s" in shown["tasks"][0]["output_tail"]
    assert took < 1.0 + 6, took  # the process start and --once's bookkeeping, plus the 1 s task


# ---------------------------------------------------- hung polls cost no one else capacity


class _Hang:
    release = threading.Event()
    calls: dict[str, int] = {}
    lock = threading.Lock()


@pytest.fixture
def hanging_type(monkeypatch):
    """`queue_depth` triggers whose queue starts with "hang" block on an Event, uninterruptibly
    (a stand-in for any blocking call that ignores its timeout); the rest behave as usual."""
    import trigctl.triggers.base as base
    from trigctl.triggers.queue_depth import QueueDepthTrigger

    class HangingQueueDepth(QueueDepthTrigger):
        def poll(self, ctx):
            if not self.queue.startswith("hang"):
                return super().poll(ctx)
            with _Hang.lock:
                _Hang.calls[self.queue] = _Hang.calls.get(self.queue, 0) + 1
                first = _Hang.calls[self.queue] == 1
            if first or self.queue.startswith("hang-always"):
                _Hang.release.wait()
            raise PollError("released")

    _Hang.release = threading.Event()
    _Hang.calls = {}
    monkeypatch.setitem(base._REGISTRY, "queue_depth", HangingQueueDepth)
    yield _Hang
    _Hang.release.set()


def running(cfg_path: Path):
    from trigctl.runner import Runner
    from trigctl.store.sqlite import SQLiteStore

    cfg = load_config(cfg_path)
    store = SQLiteStore(cfg.state_location())
    runner = Runner(cfg, store, install_signals=False, grace=5)
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    return runner, store, thread


def hang_trigger(name: str, timeout: str = "300ms") -> str:
    return (f"  - name: {name}\n    type: queue_depth\n    workflow: w\n    queue: {name}\n    above: 1\n"
            f"    source: {{directory: .}}\n    interval: 200ms\n    timeout: {timeout}\n")


def test_forty_hung_blocking_polls_do_not_freeze_file_and_command_triggers(hanging_type, tmp_path):
    n_hung = 40
    (tmp_path / "inbox").mkdir()
    text = "version: 1\nworkflows:\n  w:\n    tasks:\n      - run: 'true'\ntriggers:\n"
    text += "".join(hang_trigger(f"hang-always-{i}") for i in range(n_hung))
    text += "  - name: ticker\n    type: command\n    workflow: w\n    interval: 200ms\n" + TICKS
    text += ("  - name: inbox\n    type: file\n    workflow: w\n    path: inbox\n    pattern: '*.txt'\n"
             "    settle: 100ms\n    interval: 200ms\n")
    (tmp_path / "triggers.yaml").write_text(text)
    threads_before = threading.active_count()
    runner, store, thread = running(tmp_path / "triggers.yaml")
    try:
        wait_for(lambda: len(hanging_type.calls) == n_hung, timeout=15, message="every hung trigger called")
        wait_for(lambda: sum(1 for r in store.trigger_rows().values() if r.consecutive_errors) >= n_hung,
                 timeout=15, message="every hung poll recorded as a timeout error")
        # Now all 40 calls are stuck past their timeout: 40 more than the pool's 32 workers.
        t0 = time.time()
        wait_for(lambda: len([t for t in tick_times(tmp_path / "ticks.txt") if t > t0]) >= 10, timeout=10,
                 message="the command trigger keeps polling")
        recent = [t for t in tick_times(tmp_path / "ticks.txt") if t > t0]
        assert max_gap(recent) < 1.0, max_gap(recent)
        (tmp_path / "inbox" / "a.txt").write_text("x")
        wait_for(lambda: getattr(store.trigger_rows().get("inbox"), "fires", 0) >= 1, timeout=10,
                 message="the file trigger fires")
        pool = runner.dispatcher._pool
        assert pool.threads() <= 32 + n_hung
        assert threading.active_count() - threads_before <= 32 + n_hung + 10
    finally:
        hanging_type.release.set()
        runner.stop()
        thread.join(20)
    assert not thread.is_alive()


def test_a_timed_out_poll_is_polled_again_once_its_call_returns(hanging_type, tmp_path):
    text = "version: 1\nworkflows:\n  w:\n    tasks:\n      - run: 'true'\ntriggers:\n" + hang_trigger("hang-once")
    (tmp_path / "triggers.yaml").write_text(text)
    runner, store, thread = running(tmp_path / "triggers.yaml")
    try:
        wait_for(lambda: getattr(store.trigger_rows().get("hang-once"), "consecutive_errors", 0) >= 1, timeout=10,
                 message="the hung poll times out")
        assert hanging_type.calls == {"hang-once": 1}  # not polled again while its call runs
        hanging_type.release.set()
        wait_for(lambda: hanging_type.calls.get("hang-once", 0) >= 3, timeout=10,
                 message="polled again once the call returned")
    finally:
        hanging_type.release.set()
        runner.stop()
        thread.join(20)
    rows = query(tmp_path / ".trigctl" / "state.db", "SELECT error FROM events WHERE kind = 'error' ORDER BY id")
    assert rows[0][0] == "poll timed out after 0.3s" and any(r[0] == "released" for r in rows)


# --------------------------------------------------------------------------------- cancel


def run_status(db: Path, run_id: int) -> str | None:
    if not db.exists():  # sqlite3.connect would create it
        return None
    try:
        rows = query(db, "SELECT status FROM runs WHERE id = ?", (run_id,))
    except sqlite3.OperationalError:  # not created yet
        return None
    return rows[0][0] if rows else None


def cancel_project(tmp_path: Path, tasks: str, max_concurrent: int = 8, context: str = '{"id": 1}') -> Path:
    """A `command` trigger fires once per ctx.json written (it removes the file; no file: exit 1, a skip)."""
    task_lines = textwrap.indent(textwrap.dedent(tasks).strip("\n"), " " * 6)
    (tmp_path / "triggers.yaml").write_text(
        f"version: 1\nmax_concurrent_runs: {max_concurrent}\nworkflows:\n  w:\n    tasks:\n{task_lines}\n"
        "triggers:\n  - name: src\n    type: command\n    workflow: w\n    interval: 200ms\n"
        "    argv: [sh, -c, 'cat ctx.json 2>/dev/null && rm ctx.json']\n")
    (tmp_path / "ctx.json").write_text(context)
    load_config(tmp_path / "triggers.yaml")
    return tmp_path / ".trigctl" / "state.db"


def cancel_and_wait(tmp_path: Path, db: Path, run_id: int, within: float) -> float:
    t0 = time.monotonic()
    out = run_trigctl("cancel", str(run_id), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    wait_for(lambda: run_status(db, run_id) == "cancelled", timeout=within, message=f"run {run_id} cancelled")
    return time.monotonic() - t0


def test_cancel_ends_a_run_stuck_in_an_http_task(hostile, tmp_path):
    server = hostile(h.trickle_body)
    db = cancel_project(tmp_path, f"""
        - name: notify
          http: {{url: "{server.url}/hook"}}
          timeout: 10m
        """)
    proc = RunProc(tmp_path, "triggers.yaml", "--grace", "1")
    try:
        assert server.got_request.wait(15), proc.stderr
        wait_for(lambda: run_status(db, 1) == "running", timeout=10, message="run 1 running")
        took = cancel_and_wait(tmp_path, db, 1, within=5)
    finally:
        proc.stop()
    assert took < 5
    task = query(db, "SELECT status FROM tasks WHERE run_id = 1")[0][0]
    assert task == "cancelled"


def test_cancel_ends_a_run_waiting_in_a_retry_delay(tmp_path):
    db = cancel_project(tmp_path, """
        - name: flaky
          run: 'echo attempt >> attempts.txt; exit 3'
          retries: 3
          retry_delay: 10m
        """)
    proc = RunProc(tmp_path, "triggers.yaml", "--grace", "1")
    try:
        wait_for(lambda: (tmp_path / "attempts.txt").exists()
                 and query(db, "SELECT status FROM tasks WHERE run_id = 1") == [("failed",)], timeout=15,
                 message="the first attempt failed; the run waits to retry")
        assert run_status(db, 1) == "running"
        took = cancel_and_wait(tmp_path, db, 1, within=5)
    finally:
        proc.stop()
    assert took < 5
    assert (tmp_path / "attempts.txt").read_text().count("attempt") == 1


def test_cancel_ends_a_queued_run_while_trigctl_runs(tmp_path):
    # max_concurrent_runs: 1: run 1 sleeps, run 2 waits in the queue.
    db = cancel_project(tmp_path, """
        - name: slow
          run: 'sleep 600'
        """, max_concurrent=1)
    proc = RunProc(tmp_path, "triggers.yaml", "--grace", "1")
    try:
        wait_for(lambda: run_status(db, 1) == "running", timeout=15, message="run 1 running")
        (tmp_path / "ctx.json").write_text('{"id": 2}')
        wait_for(lambda: run_status(db, 2) == "queued", timeout=15, message="run 2 queued")
        took = cancel_and_wait(tmp_path, db, 2, within=5)
        assert run_status(db, 1) == "running"  # the other run is left alone
        cancel_and_wait(tmp_path, db, 1, within=10)
    finally:
        proc.stop()
    assert took < 5


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))

"""`http` triggers against a real HTTP server on 127.0.0.1 whose responses the test sets.

``LocalServer`` is also used by the queue_depth and workflow-task tests.
"""

from __future__ import annotations

import json
import socket
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import run_trigctl

from trigctl.config import TriggerConfig, load_config
from trigctl.triggers.base import PollContext, PollError, PollOutcome, trigger_types
from trigctl.triggers.http import HttpTrigger, context_digest


class LocalServer:
    """A real HTTP server on 127.0.0.1 (port 0). ``respond()`` sets what every request gets next;
    ``requests`` records (method, path, headers, body) of each request received."""

    def __init__(self) -> None:
        self.status = 200
        self.body = b""
        self.content_type = "application/json"
        self.hold = 0.0  # seconds to hold each response (released early by close())
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self._release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                data = self.rfile.read(length) if length else b""
                server.requests.append((self.command, self.path, dict(self.headers.items()), data))
                # One snapshot: the test may set the next response as soon as this one's headers arrive.
                status, body, content_type = server.status, server.body, server.content_type
                if server.hold:
                    server._release.wait(server.hold)
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _handle

            def log_message(self, format, *args):  # noqa: A002 - keep test output clean
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def respond(self, status: int = 200, body: bytes | str | None = None, *, json_body=None,
                content_type: str = "application/json") -> None:
        if json_body is not None:
            body = json.dumps(json_body)
        self.status = status
        self.body = body.encode() if isinstance(body, str) else (body or b"")
        self.content_type = content_type

    def close(self) -> None:
        self._release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = LocalServer()
    yield s
    s.close()


def free_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make(tmp_path: Path, **options) -> HttpTrigger:
    return HttpTrigger(TriggerConfig(name="t", type="http", workflow="w", options=options), tmp_path)


def poll(trigger, state: dict | None = None, timeout: float = 5) -> PollOutcome:
    return trigger.poll(PollContext(due_at=0, now=0, cursor=None, state=state if state is not None else {},
                                    timeout=timeout))


# ------------------------------------------------------------------------------------- basics


def test_registered_and_blocking():
    cls = trigger_types()["http"]
    assert cls is HttpTrigger
    assert cls.blocking is True
    assert cls.default_dedupe_key is None


def test_no_expect_fires_on_any_2xx(server, tmp_path):
    t = make(tmp_path, url=server.url + "/health")
    server.respond(204)
    out = poll(t)
    assert out.fires == [{"status": 204}]
    server.respond(503, "down", content_type="text/plain")
    out = poll(t)
    assert not out.fired
    assert out.skip_reason == "status 503, expected 2xx"
    assert server.requests[0][:2] == ("GET", "/health")
    t.close()


def test_expect_status_int_and_list(server, tmp_path):
    server.respond(503)
    t = make(tmp_path, url=server.url, expect={"status": 200})
    assert poll(t).skip_reason == "status 503, expected 200"
    t = make(tmp_path, url=server.url, expect={"status": [500, 503]})
    assert poll(t).fires == [{"status": 503}]  # an explicit status may be a failure status
    server.respond(200)
    assert poll(t).skip_reason == "status 200, expected one of 500, 503"


def test_expect_json_truthy_fires(server, tmp_path):
    t = make(tmp_path, url=server.url, expect={"json": "status == 'ready'"})
    server.respond(json_body={"status": "ready"})
    assert poll(t).fired
    server.respond(json_body={"status": "starting"})
    out = poll(t)
    assert not out.fired and "expect.json is false" in out.skip_reason
    server.respond(body="<html>ready</html>", content_type="text/html")
    out = poll(t)
    assert not out.fired and "not JSON" in out.skip_reason


def test_expect_json_empty_list_is_falsy(server, tmp_path):
    t = make(tmp_path, url=server.url, expect={"json": "items[?state=='failed']"})
    server.respond(json_body={"items": [{"state": "ok"}]})
    assert not poll(t).fired
    server.respond(json_body={"items": [{"state": "ok"}, {"state": "failed"}]})
    assert poll(t).fired


def test_expect_contains(server, tmp_path):
    t = make(tmp_path, url=server.url, expect={"contains": "OK"})
    server.respond(body="all OK here", content_type="text/plain")
    assert poll(t).fires == [{"status": 200}]
    server.respond(body="degraded", content_type="text/plain")
    assert poll(t).skip_reason == "the body does not contain 'OK'"


def test_all_clauses_must_hold(server, tmp_path):
    t = make(tmp_path, url=server.url, expect={"status": 200, "json": "ok", "contains": "fine"})
    server.respond(json_body={"ok": True, "note": "fine"})
    assert poll(t).fired
    server.respond(json_body={"ok": False, "note": "fine"})
    assert not poll(t).fired
    server.respond(json_body={"ok": True, "note": "bad"})
    assert not poll(t).fired
    server.respond(500, json_body={"ok": True, "note": "fine"})
    assert not poll(t).fired


def test_expect_without_status_still_needs_2xx(server, tmp_path):
    t = make(tmp_path, url=server.url, expect={"contains": "error"})
    server.respond(500, body="internal error", content_type="text/plain")
    assert poll(t).skip_reason == "status 500, expected 2xx"


# ------------------------------------------------------------------------------------ context


def test_context_jmespath_and_non_json_body(server, tmp_path):
    t = make(tmp_path, url=server.url, context={"version": "build.version", "nodes": "length(nodes)",
                                               "missing": "nope"})
    server.respond(json_body={"build": {"version": "1.2.3"}, "nodes": [1, 2, 3]})
    assert poll(t).fires == [{"status": 200, "version": "1.2.3", "nodes": 3, "missing": None}]
    server.respond(body="not json", content_type="text/plain")
    assert poll(t).fires == [{"status": 200, "version": None, "nodes": None, "missing": None}]


def test_shell_syntax_in_body_stays_data(server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    t = make(tmp_path, url=server.url, context={"msg": "msg"})
    server.respond(json_body={"msg": "$(touch pwned)"})
    assert poll(t).fires == [{"status": 200, "msg": "$(touch pwned)"}]
    assert not (tmp_path / "pwned").exists()


def test_fire_on_change(server, tmp_path):
    t = make(tmp_path, url=server.url, context={"version": "version"}, fire_on="change")
    state: dict = {}

    def step():
        out = poll(t, state)
        for k, v in out.applied_state().items():  # what the scheduler persists between polls
            if v is None:
                state.pop(k, None)
            else:
                state[k] = v
        return out

    server.respond(json_body={"version": "1"})
    first = step()
    assert not first.fired and "first poll" in first.skip_reason
    assert state == {"last": context_digest({"status": 200, "version": "1"})}  # a digest: no response value stored
    same = step()
    assert not same.fired and same.skip_reason == "no change" and not same.state_updates
    server.respond(json_body={"version": "2"})
    changed = step()
    assert changed.fires == [{"status": 200, "version": "2"}]
    assert state["last"] == context_digest({"status": 200, "version": "2"})
    # A response that does not meet `expect` (no expect: not 2xx) neither fires nor moves `last`.
    server.respond(503, json_body={"version": "3"})
    assert not step().fired
    server.respond(json_body={"version": "2"})
    assert not step().fired


# ------------------------------------------------------------------------------------ request


def test_post_with_json_body_and_headers(server, tmp_path):
    t = make(tmp_path, url=server.url + "/q", method="post", headers={"X-Api-Key": "k1"}, json={"a": [1, 2]})
    poll(t)
    method, path, headers, body = server.requests[-1]
    assert (method, path) == ("POST", "/q")
    assert headers["X-Api-Key"] == "k1"
    assert json.loads(body) == {"a": [1, 2]}
    assert headers["User-Agent"].startswith("trigctl/")


def test_string_body(server, tmp_path):
    t = make(tmp_path, url=server.url, method="PUT", body="raw text", headers={"Content-Type": "text/plain"})
    poll(t)
    assert server.requests[-1][0] == "PUT" and server.requests[-1][3] == b"raw text"


def test_session_reused_and_closed(server, tmp_path):
    t = make(tmp_path, url=server.url)
    poll(t)
    session = t._session
    poll(t)
    assert t._session is session
    t.close()
    assert t._session is None
    t.close()  # twice is harmless


# ------------------------------------------------------------------------------------- errors


def test_connection_refused_is_an_error_without_secrets(tmp_path):
    port = free_port()
    t = make(tmp_path, url=f"http://admin:hunter2@127.0.0.1:{port}/x?token=abc123",
             headers={"Authorization": "Bearer s3cr3t-value"})
    with pytest.raises(PollError) as e:
        poll(t)
    msg = str(e.value)
    assert "connection failed" in msg and "refused" in msg.lower()
    assert f"127.0.0.1:{port}/x" in msg
    for secret in ("hunter2", "s3cr3t-value", "abc123"):
        assert secret not in msg


def test_invalid_header_value_never_in_message(server, tmp_path):
    # requests' own InvalidHeader message quotes the value; ours must not.
    t = make(tmp_path, url=server.url, headers={"X-Token": "s3cr3t-header\nInjected: 1"})
    with pytest.raises(PollError) as e:
        poll(t)
    assert "s3cr3t-header" not in str(e.value)
    assert "invalid header" in str(e.value)


def test_timeout_is_an_error(server, tmp_path):
    server.hold = 5
    t = make(tmp_path, url=server.url)
    started = time.monotonic()
    with pytest.raises(PollError, match="timed out after 0.5s"):
        poll(t, timeout=0.5)
    assert time.monotonic() - started < 3


def test_jmespath_that_fails_on_the_body_is_an_error(server, tmp_path):
    server.respond(json_body={"status": "ok"})
    with pytest.raises(PollError, match=r"expect.json 'length\(checks\)' failed on the response"):
        poll(make(tmp_path, url=server.url, expect={"json": "length(checks)"}))
    with pytest.raises(PollError, match="context.n"):
        poll(make(tmp_path, url=server.url, context={"n": "length(checks)"}))


def test_response_body_is_capped(server):
    from trigctl.triggers._util import http_request, new_session

    server.respond(body=b"x" * 5000, content_type="text/plain")
    session = new_session()
    try:
        with pytest.raises(PollError, match="larger than 1000 bytes"):
            http_request(session, "GET", server.url, timeout=5, max_body=1000)
        assert http_request(session, "GET", server.url, timeout=5).body == b"x" * 5000
    finally:
        session.close()


def test_error_recorded_by_scheduler_is_redacted(tmp_path):
    """Through load_config: the URL password never reaches the stored error."""
    port = free_port()
    (tmp_path / "t.yaml").write_text(textwrap.dedent(f"""
        version: 1
        workflows:
          w: {{tasks: [{{run: "true"}}]}}
        triggers:
          - name: h
            type: http
            workflow: w
            url: "http://u:pw-${{HTTP_PW}}@127.0.0.1:{port}/"
            headers: {{Authorization: "Bearer ${{HTTP_TOKEN}}"}}
        """))
    cfg = load_config(tmp_path / "t.yaml", env={"HTTP_PW": "zzz", "HTTP_TOKEN": "tok-999"})
    t = HttpTrigger(cfg.triggers[0], cfg.base_dir)
    with pytest.raises(PollError) as e:
        poll(t)
    msg = cfg.redactor.text(str(e.value))
    assert "pw-zzz" not in msg and "tok-999" not in msg


def test_validate_rejects_bad_options(tmp_path):
    from trigctl.config import ConfigError

    (tmp_path / "t.yaml").write_text(textwrap.dedent("""
        version: 1
        workflows:
          w: {tasks: [{run: "true"}]}
        triggers:
          - name: h
            type: http
            workflow: w
            url: "http://127.0.0.1:1/"
            expect: {json: "[[["}
            fire_on: sometimes
        """))
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "t.yaml")
    text = str(e.value)
    assert "JMESPath" in text and "fire_on" in text


# ---------------------------------------------------------------------------------- end to end


def test_end_to_end_context_reaches_workflow_as_data(server, tmp_path):
    server.respond(json_body={"state": "ready", "msg": "$(touch pwned)"})
    (tmp_path / "triggers.yaml").write_text(textwrap.dedent(f"""
        version: 1
        workflows:
          notify:
            tasks:
              - run: 'printf "%s|%s" "$TRIGCTL_STATUS" "$TRIGCTL_MSG" > out.txt'
        triggers:
          - name: health
            type: http
            workflow: notify
            url: "{server.url}/status"
            timeout: 5s
            expect: {{status: 200, json: "state == 'ready'"}}
            context: {{msg: msg}}
        """))
    proc = run_trigctl("run", "--once", "triggers.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out.txt").read_text() == "200|$(touch pwned)"
    assert not (tmp_path / "pwned").exists()


def test_end_to_end_connection_error_exits_1(tmp_path):
    (tmp_path / "triggers.yaml").write_text(textwrap.dedent(f"""
        version: 1
        workflows:
          w: {{tasks: [{{run: "touch ran"}}]}}
        triggers:
          - name: health
            type: http
            workflow: w
            url: "http://127.0.0.1:{free_port()}/"
            headers: {{X-Secret: "literal-secret-value"}}
        """))
    proc = run_trigctl("run", "--once", "triggers.yaml", cwd=tmp_path)
    assert proc.returncode == 1
    assert "connection failed" in proc.stderr
    assert "literal-secret-value" not in proc.stderr
    assert not (tmp_path / "ran").exists()

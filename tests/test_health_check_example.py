"""examples/health_check.yaml, for real: `trigctl run` against a real HTTP server on 127.0.0.1. While
the service is healthy nothing runs; when it goes down the on-call is paged once; when it is back the
page is resolved once. Only the intervals are shortened."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from realproc import RunProc

ROOT = Path(__file__).resolve().parent.parent


class Service:
    """/health answers what ``health`` says; /version a fixed version; /alerts records each POST."""

    def __init__(self) -> None:
        self.health: tuple[int, dict] = (200, {"status": "ok"})
        self.alerts: list[dict] = []
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _send(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                if self.path == "/health":
                    self._send(*service.health)
                else:
                    self._send(200, {"version": "1.0"})

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                service.alerts.append(json.loads(self.rfile.read(length) or b"{}"))
                self._send(200, {})

            def log_message(self, format, *args):  # noqa: A002
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def wait_until(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_health_check_example_pages_when_down_and_resolves_when_back(tmp_path):
    text = (ROOT / "examples" / "health_check.yaml").read_text()
    for old, new in (("interval: 15s", "interval: 200ms"), ("max_backoff: 30s", "max_backoff: 200ms")):
        assert old in text
        text = text.replace(old, new)
    (tmp_path / "health_check.yaml").write_text(text)
    service = Service()
    proc = RunProc(tmp_path, "health_check.yaml", "--grace", "5s",
                   env={"HEALTH_URL": service.url, "ALERT_WEBHOOK": f"{service.url}/alerts"})
    try:
        time.sleep(1.5)  # healthy: several polls, nothing runs
        assert service.alerts == [], proc.stderr
        down_at = time.time()
        service.health = (503, {"status": "degraded"})
        wait_until(lambda: len(service.alerts) >= 1, 20, "the page")
        time.sleep(1.0)  # still down: no second page
        assert len(service.alerts) == 1
        page = service.alerts[0]
        assert page["trigger"] == "service-health" and page["consecutive_errors"] == 3
        assert "status 503, expected 200" in page["error"]
        assert page["since"].endswith("Z")
        service.health = (200, {"status": "ok"})
        wait_until(lambda: len(service.alerts) >= 2, 20, "the resolve")
        time.sleep(1.0)  # healthy again: nothing more
        assert len(service.alerts) == 2
        resolved = service.alerts[1]
        assert set(resolved) == {"trigger", "consecutive_errors", "since", "recovered_at"}
        assert resolved["since"] == page["since"] and resolved["consecutive_errors"] >= 3
        assert resolved["recovered_at"] > resolved["since"]
        assert abs(_ts(page["since"]) - down_at) < 5
    finally:
        code = proc.stop()
        service.close()
    assert code == 0, proc.stderr


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()

"""The headers of a request (a config's `headers:`) stay on their origin across redirects.

Two real servers, on 127.0.0.1 and 127.0.0.2: the first redirects, the second records what it got.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from trigctl.net.http import http_request, new_session

SECRET = "s3cret-value"


class _Servers:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, dict[str, str]]] = []  # (server, path, headers)
        self.a = self._serve("127.0.0.1", "a")
        self.b = self._serve("127.0.0.2", "b")

    def url(self, server: str, path: str) -> str:
        srv = self.a if server == "a" else self.b
        return f"http://{srv.server_address[0]}:{srv.server_port}{path}"

    def _serve(self, host: str, name: str) -> HTTPServer:
        servers = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                servers.seen.append((name, self.path, dict(self.headers)))
                # /to/<server>/<rest>: redirect there; anything else: 200
                parts = self.path.split("/", 3)
                if len(parts) >= 3 and parts[1] == "to":
                    self.send_response(302)
                    self.send_header("Location", servers.url(parts[2], "/" + (parts[3] if len(parts) > 3 else "")))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

        srv = HTTPServer((host, 0), Handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        return srv

    def close(self) -> None:
        for srv in (self.a, self.b):
            srv.shutdown()
            srv.server_close()


@pytest.fixture
def servers():
    s = _Servers()
    yield s
    s.close()


HEADERS = {"X-Api-Key": SECRET, "Authorization": f"Bearer {SECRET}", "Cookie": f"sid={SECRET}"}


def test_headers_are_dropped_on_a_redirect_to_another_host(servers):
    resp = http_request(new_session(), "GET", servers.url("a", "/to/b/end"), timeout=10, headers=HEADERS)
    assert resp.status == 200
    (first, second) = servers.seen
    assert first[0] == "a" and first[2]["X-Api-Key"] == SECRET
    assert second[0] == "b" and SECRET not in repr(second[2])
    assert second[2]["User-Agent"].startswith("trigctl/")  # the session's own header goes on


def test_headers_stay_dropped_when_the_chain_comes_back(servers):
    http_request(new_session(), "GET", servers.url("a", "/to/b/to/a/end"), timeout=10, headers=HEADERS)
    assert [s[0] for s in servers.seen] == ["a", "b", "a"]
    assert SECRET in repr(servers.seen[0][2])
    assert all(SECRET not in repr(h) for _, _, h in servers.seen[1:])


def test_headers_follow_a_redirect_on_the_same_host(servers):
    http_request(new_session(), "GET", servers.url("a", "/to/a/end"), timeout=10, headers=HEADERS)
    assert [(s[0], s[1]) for s in servers.seen] == [("a", "/to/a/end"), ("a", "/end")]
    assert servers.seen[1][2]["X-Api-Key"] == SECRET
    assert servers.seen[1][2]["Authorization"] == f"Bearer {SECRET}"


def test_a_user_agent_of_headers_is_replaced_by_the_sessions_on_another_host(servers):
    http_request(new_session(), "GET", servers.url("a", "/to/b/end"), timeout=10,
                 headers={"User-Agent": f"agent-{SECRET}"})
    assert servers.seen[0][2]["User-Agent"] == f"agent-{SECRET}"
    assert servers.seen[1][2]["User-Agent"].startswith("trigctl/")


def test_one_session_keeps_each_threads_headers_apart(servers):
    """The session is shared by a trigger's polls; the names of a request's headers are per thread."""
    session = new_session()
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(5):
                http_request(session, "GET", servers.url("a", f"/to/b/t{i}"), timeout=10, headers={f"X-K{i}": SECRET})
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(SECRET not in repr(h) for name, _, h in servers.seen if name == "b")
    assert sum(1 for name, _, _ in servers.seen if name == "b") == 20

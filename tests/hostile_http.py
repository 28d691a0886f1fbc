"""A hostile HTTP server on 127.0.0.1 for deadline tests: it trickles, stalls or never ends.

Each connection reads one request head (and its Content-Length body) and hands it to the
server's current ``behaviour(conn, path)``; a keep-alive behaviour may answer several requests on
one connection. ``connections`` counts accepted connections; ``requests`` lists the paths asked.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

Behaviour = Callable[["HostileServer", socket.socket, str], bool]  # True: keep the connection for another request


class HostileServer:
    def __init__(self, behaviour: Behaviour | None = None, tick: float = 0.1,
                 raw: Callable[[HostileServer, socket.socket], None] | None = None) -> None:
        self.behaviour: Behaviour = behaviour or ok
        self.raw = raw  # instead of reading HTTP requests: the connection as it comes
        self.tick = tick  # seconds between trickled bytes
        self.connections = 0
        self.requests: list[str] = []
        self.got_request = threading.Event()
        self.stopped = threading.Event()
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                self._socks.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        try:
            if self.raw is not None:
                self.got_request.set()
                self.raw(self, conn)
                return
            while not self.stopped.is_set():
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value.strip())
                while len(buf) < length:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                buf = buf[length:]
                path = lines[0].split(" ")[1] if len(lines[0].split(" ")) > 1 else "/"
                with self._lock:
                    self.requests.append(path)
                self.got_request.set()
                if not self.behaviour(self, conn, path):
                    return
        except OSError:
            return
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def trickle(self, conn: socket.socket, data: bytes, forever: bytes | None = None) -> None:
        """Send ``data`` one byte per tick, then ``forever`` once per tick, until the client goes."""
        for i in range(len(data)):
            if self.stopped.wait(self.tick):
                return
            conn.sendall(data[i:i + 1])
        while forever is not None and not self.stopped.wait(self.tick):
            conn.sendall(forever)
        self.stopped.wait()  # then hold the connection open

    def close(self) -> None:
        self.stopped.set()
        try:
            self.listener.close()
        except OSError:
            pass
        with self._lock:
            socks = list(self._socks)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def response(status: str = "200 OK", body: bytes = b'{"depth": 5}', extra: str = "") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"{extra}\r\n").encode() + body


# ------------------------------------------------------------------------------------- behaviours


def ok(server: HostileServer, conn: socket.socket, path: str) -> bool:
    conn.sendall(response())
    return True  # keep-alive


def silent(server: HostileServer, conn: socket.socket, path: str) -> bool:
    """Accepts, reads the request, never answers."""
    server.stopped.wait()
    return False


def trickle_status(server: HostileServer, conn: socket.socket, path: str) -> bool:
    server.trickle(conn, b"HTTP/1.1 200 OK\r\n" * 1000)
    return False


def trickle_headers(server: HostileServer, conn: socket.socket, path: str) -> bool:
    conn.sendall(b"HTTP/1.1 200 OK\r\n")
    server.trickle(conn, b"X-Slow: " + b"a" * 100_000 + b"\r\n")
    return False


def trickle_body(server: HostileServer, conn: socket.socket, path: str) -> bool:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n")
    server.trickle(conn, b'{"depth": 5, "pad": "' + b"a" * 999_000)
    return False


def trickle_body_until_close(server: HostileServer, conn: socket.socket, path: str) -> bool:
    """No length: the body ends when the connection closes (so a cut must not read as the end)."""
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n")
    server.trickle(conn, b"", forever=b" ")
    return False


def chunked_forever(server: HostileServer, conn: socket.socket, path: str) -> bool:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    server.trickle(conn, b"", forever=b"1\r\n \r\n")
    return False


def tls_trickler(server: HostileServer, conn: socket.socket) -> None:
    """A TLS handshake record header announcing 16 KiB, then its bytes one per tick."""
    conn.recv(65536)  # the ClientHello
    conn.sendall(b"\x16\x03\x03\x40\x00")
    server.trickle(conn, b"\x02" * 16384)


def redirect_chain_to_trickle(server: HostileServer, conn: socket.socket, path: str) -> bool:
    """/ -> /hop1 -> /hop2 -> /hop3, each after a pause, then a trickled body."""
    hop = int(path.rsplit("hop", 1)[1]) if "hop" in path else 0
    if hop < 3:
        if server.stopped.wait(server.tick * 2):
            return False
        conn.sendall(response("302 Found", b"", f"Location: /hop{hop + 1}\r\n"))
        return True
    return trickle_body(server, conn, path)


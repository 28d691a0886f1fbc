"""HTTP for triggers and `http:` tasks: one deadline per exchange, a body cap, secret-free errors.

``timeout`` bounds the whole exchange: connecting, sending, the status line and headers, every
redirect hop and the body. A socket timeout alone holds per read, so a server that sends a byte
every half second could keep a request alive for hours. Here each request is an :class:`Exchange`
with one deadline; a single daemon thread (:class:`_Watchdog`) shuts down the exchange's sockets
(``shutdown(SHUT_RDWR)``) when the deadline passes or :meth:`Exchange.abort` is called (`trigctl
cancel`), so a blocked read or handshake returns at once and the request raises
:class:`RequestTimeout` (or :class:`RequestAborted`).

The sockets are found through the session's adapter (:func:`new_session`): its urllib3 connection
classes register each socket with the calling thread's current exchange, when it is connected and
when a kept-alive connection is reused. The exchange holds a duplicate of each socket's descriptor
until it ends, so a shutdown can never hit an unrelated socket that reused a closed descriptor
number. A connection that was shut down reads as dropped, and urllib3 replaces it before reuse.

DNS: ``getaddrinfo`` cannot be interrupted, so a host name is resolved on a short-lived helper
thread that the exchange stops waiting for at its deadline (or abort); the thread itself lives
until the system resolver gives up (/etc/resolv.conf ``timeout`` x ``attempts``), one per
connection attempt that hung. Not bounded: SOCKS proxies, which use urllib3's own connection
classes and get only the per-read timeout; a session not made by :func:`new_session`.

Redirects: the headers a request is given (a config's ``headers:``) are dropped when a redirect
changes scheme, host or port, not only ``Authorization`` as requests does (:func:`_session_class`).

``requests`` and ``urllib3`` are imported lazily, so ``trigctl --help`` does not pay for them.
"""

from __future__ import annotations

import heapq
import itertools
import json
import math
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trigctl.secrets import Redactor

MAX_BODY = 10 * 1024 * 1024  # bytes of an HTTP response body
CHUNK = 65536
NOT_JSON: Any = object()  # HttpResponse.json() (and parse_json) when the body is not JSON


class HttpError(Exception):
    """No complete response: "METHOD URL: reason", with no header value, URL password or query
    string in it. Trigger types turn it into a PollError, tasks into a failed task."""


class RequestTimeout(HttpError):
    """The request did not complete within its timeout."""


class RequestAborted(HttpError):
    """The request was aborted (:meth:`Exchange.abort`) before it completed."""


# ------------------------------------------------------------------------------------ exchanges


class Exchange:
    """One request with its redirects, bounded by one deadline, and abortable from any thread.

    ``start()`` arms the deadline; ``finish()`` ends it (the requesting thread calls both).
    ``abort()`` may come from any thread at any time, also before ``start()``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._socks: dict[int, socket.socket] = {}  # socket inode -> our duplicate of its descriptor
        self._waiters: set[threading.Event] = set()  # name resolutions waiting; set at the end
        self.deadline = math.inf
        self.ended: str | None = None  # "timeout" | "aborted": the sockets were shut down
        self.finished = False

    def start(self, timeout: float) -> None:
        self.deadline = time.monotonic() + timeout
        _watchdog.add(self)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def abort(self) -> None:
        self._end("aborted")

    def expire(self) -> None:
        self._end("timeout")

    def _end(self, why: str) -> None:
        with self._lock:
            if self.finished or self.ended:
                return
            self.ended = why
            for sock in self._socks.values():
                _shutdown(sock)
            for event in self._waiters:
                event.set()

    def attach(self, sock: socket.socket) -> None:
        """Register a socket of this exchange (new or reused); one attached after the end is shut down now."""
        try:
            fd = sock.fileno()
            if fd < 0:
                return
            key = os.fstat(fd).st_ino
        except OSError:
            return
        with self._lock:
            if self.finished:
                return
            dup = self._socks.get(key)
            if dup is None:
                try:
                    dup = self._socks[key] = socket.socket(fileno=os.dup(fd))
                except OSError:
                    return
            if self.ended:
                _shutdown(dup)

    def add_waiter(self, event: threading.Event) -> bool:
        """``event`` is set when the exchange ends; False if it has ended already."""
        with self._lock:
            if self.finished or self.ended:
                return False
            self._waiters.add(event)
            return True

    def remove_waiter(self, event: threading.Event) -> None:
        with self._lock:
            self._waiters.discard(event)

    def finish(self) -> str | None:
        """End the exchange; returns why its sockets were shut down (None if they were not)."""
        with self._lock:
            self.finished = True
            socks, self._socks = self._socks, {}
            ended = self.ended
        for dup in socks.values():
            dup.close()
        _watchdog.discard(self)
        return ended


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # not connected (any more)
        pass


class _Watchdog:
    """One daemon thread for every exchange in the process: a heap of deadlines."""

    COMPACT_AT = 256  # finished exchanges left in the heap before it is rebuilt without them

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Exchange]] = []
        self._seq = itertools.count()
        self._finished = 0
        self._thread: threading.Thread | None = None

    def add(self, ex: Exchange) -> None:
        with self._cond:
            heapq.heappush(self._heap, (ex.deadline, next(self._seq), ex))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._main, name="trigctl-http-deadlines", daemon=True)
                self._thread.start()
            elif self._heap[0][2] is ex:
                self._cond.notify()

    def discard(self, ex: Exchange) -> None:
        # Lazily: finished exchanges leave the heap at their deadline, or all at once when they are
        # most of it (a busy process finishes thousands of requests a second long before their deadline).
        with self._cond:
            self._finished += 1
            if self._finished >= self.COMPACT_AT and self._finished * 2 >= len(self._heap):
                self._heap = [e for e in self._heap if not e[2].finished]
                heapq.heapify(self._heap)
                self._finished = 0

    def _main(self) -> None:
        while True:
            due: list[Exchange] = []
            with self._cond:
                now = time.monotonic()
                heap = self._heap
                while heap and (heap[0][0] <= now or heap[0][2].finished):
                    ex = heapq.heappop(heap)[2]
                    if ex.finished:
                        self._finished = max(0, self._finished - 1)
                    else:
                        due.append(ex)
                if not due:
                    self._cond.wait(heap[0][0] - now if heap else None)
                    continue
            for ex in due:
                ex.expire()

    def pending(self) -> int:
        """Exchanges armed and not finished (for tests)."""
        with self._cond:
            return sum(1 for e in self._heap if not e[2].finished)


_watchdog = _Watchdog()
_local = threading.local()


def current_exchange() -> Exchange | None:
    return getattr(_local, "exchange", None)


# ------------------------------------------------------------------------------- connecting


def open_socket(ex: Exchange, address: tuple[Any, Any], timeout: Any, source_address: Any,
                socket_options: Any) -> socket.socket:
    """urllib3's create_connection, bounded by the exchange: the name is resolved on a helper thread
    (getaddrinfo cannot be interrupted), and each socket is attached before its connect, so the
    deadline or an abort ends a connect that hangs (a shut-down connecting socket fails at once)."""
    from urllib3.exceptions import LocationParseError
    from urllib3.util.connection import allowed_gai_family

    host, port = address
    if host.startswith("["):
        host = host.strip("[]")
    try:
        host.encode("idna")
    except UnicodeError:
        raise LocationParseError(f"'{host}', label empty or too long") from None
    err: OSError | None = None
    for af, socktype, proto, _, sa in resolve(ex, host, port, allowed_gai_family()):
        sock = None
        try:
            left = ex.remaining()
            if ex.ended or left <= 0:
                raise TimeoutError("the exchange ended before connecting")
            sock = socket.socket(af, socktype, proto)
            for opt in socket_options or ():
                sock.setsockopt(*opt)
            sock.settimeout(min(timeout, left) if isinstance(timeout, (int, float)) else left)
            if source_address:
                sock.bind(source_address)
            ex.attach(sock)
            if ex.ended:  # ended between the check above and the attach
                raise TimeoutError("the exchange ended before connecting")
            sock.connect(sa)
            return sock
        except OSError as e:
            err = e
            if sock is not None:
                sock.close()
    if err is not None:
        raise err
    raise OSError("getaddrinfo returns an empty list")


def resolve(ex: Exchange, host: str, port: int, family: int) -> list[tuple]:
    """getaddrinfo, given up on when the exchange ends (its thread is left to finish on its own:
    the system resolver's timeouts bound it). An IP address needs no thread."""
    for fam in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(fam, host)
        except (OSError, ValueError):
            continue
        return socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
    done = threading.Event()
    box: list[Any] = []

    def work() -> None:
        try:
            box.append(socket.getaddrinfo(host, port, family, socket.SOCK_STREAM))
        except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
            box.append(e)
        done.set()

    if not ex.add_waiter(done):
        raise TimeoutError("the exchange ended before name resolution")
    try:
        threading.Thread(target=work, name="trigctl-resolve", daemon=True).start()
        done.wait(max(0.0, ex.remaining()))
    finally:
        ex.remove_waiter(done)
    if not box:
        raise TimeoutError("name resolution did not finish within the exchange's deadline")
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]


# ------------------------------------------------------------------------------- the adapter


_ADAPTER: Any = None


def _adapter_class() -> Any:
    """A requests HTTPAdapter whose urllib3 connections register their sockets with the exchange."""
    global _ADAPTER
    if _ADAPTER is not None:
        return _ADAPTER
    from requests.adapters import HTTPAdapter
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
    from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError

    def with_deadline(base: Any) -> Any:
        class DeadlineConnection(base):
            def _new_conn(self) -> socket.socket:
                ex = current_exchange()
                if ex is None:
                    return super()._new_conn()
                # urllib3's own _new_conn, with a connect the exchange can end (see open_socket).
                try:
                    sock = open_socket(ex, (getattr(self, "_dns_host", self.host), self.port), self.timeout,
                                       self.source_address, self.socket_options)
                except socket.gaierror as e:
                    raise NameResolutionError(self.host, self, e) from e
                except TimeoutError as e:  # socket.timeout
                    raise ConnectTimeoutError(self, f"Connection to {self.host} timed out.") from e
                except OSError as e:
                    raise NewConnectionError(self, f"Failed to establish a new connection: {e}") from e
                sys.audit("http.client.connect", self, self.host, self.port)
                return sock

            def request(self, *args: Any, **kwargs: Any) -> Any:
                ex = current_exchange()
                if ex is not None and self.sock is not None:  # a kept-alive connection, reused
                    ex.attach(self.sock)
                return super().request(*args, **kwargs)

        DeadlineConnection.__name__ = DeadlineConnection.__qualname__ = "Deadline" + base.__name__
        return DeadlineConnection

    DeadlineHTTPConnection = with_deadline(HTTPConnection)
    DeadlineHTTPSConnection = with_deadline(HTTPSConnection)

    class DeadlineHTTPPool(HTTPConnectionPool):
        ConnectionCls = DeadlineHTTPConnection

    class DeadlineHTTPSPool(HTTPSConnectionPool):
        ConnectionCls = DeadlineHTTPSConnection

    pools = {"http": DeadlineHTTPPool, "https": DeadlineHTTPSPool}

    class DeadlineAdapter(HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = pools

        def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
            manager = super().proxy_manager_for(proxy, **kwargs)
            if not proxy.lower().startswith("socks"):
                manager.pool_classes_by_scheme = pools
            return manager

    _ADAPTER = DeadlineAdapter
    return _ADAPTER


_SESSION: Any = None


def _session_class() -> Any:
    """A requests Session that keeps the caller's headers on its own origin.

    requests drops only ``Authorization`` when a redirect leaves the host. Every header passed to
    :meth:`request` (a config's ``headers:``: API keys, tokens, cookies) is the caller's, and is
    dropped as well when a redirect changes scheme, host or port (requests' ``should_strip_auth``:
    the one change it allows is http -> https on the default ports of the same host). Once dropped,
    they stay dropped for the rest of the chain, also if it comes back. Session-level headers
    (User-Agent) are sent to every hop.
    """
    global _SESSION
    if _SESSION is not None:
        return _SESSION
    import requests

    class OriginSession(requests.Session):
        def __init__(self) -> None:
            super().__init__()
            self._callers = threading.local()  # this thread's request: the names of its own headers

        def request(self, method: Any, url: Any, *args: Any, **kwargs: Any) -> Any:
            headers = kwargs.get("headers") if len(args) < 3 else args[2]
            previous = getattr(self._callers, "names", None)
            self._callers.names = [str(k) for k in (headers or {})]
            try:
                return super().request(method, url, *args, **kwargs)
            finally:
                self._callers.names = previous

        def rebuild_auth(self, prepared_request: Any, response: Any) -> None:
            super().rebuild_auth(prepared_request, response)
            if not self.should_strip_auth(response.request.url, prepared_request.url):
                return
            for name in getattr(self._callers, "names", None) or ():
                prepared_request.headers.pop(name, None)
                if name in self.headers and self.headers[name] is not None:
                    prepared_request.headers[name] = self.headers[name]

    _SESSION = OriginSession
    return _SESSION


def new_session() -> Any:
    """A requests Session whose requests :func:`http_request` can bound and abort, and whose
    ``headers`` are not sent on a redirect to another origin (:func:`_session_class`)."""
    from trigctl import __version__

    session = _session_class()()
    session.headers["User-Agent"] = f"trigctl/{__version__}"
    adapter = _adapter_class()()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


# --------------------------------------------------------------------------------- responses


@dataclass
class HttpResponse:
    status: int
    body: bytes
    encoding: str | None
    content_type: str = ""

    @property
    def text(self) -> str:
        try:
            return self.body.decode(self.encoding or "utf-8", errors="replace")
        except LookupError:  # an unknown charset in Content-Type
            return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The parsed body, or NOT_JSON."""
        return parse_json(self.body)


def parse_json(data: bytes | str) -> Any:
    """The parsed JSON value, or NOT_JSON for anything else (NaN/Infinity too: no context may hold them)."""
    if not data.strip():
        return NOT_JSON
    try:
        return json.loads(data, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return NOT_JSON


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def safe_url(url: str) -> str:
    """The URL for messages: password masked, query string and fragment left out."""
    from urllib.parse import urlsplit, urlunsplit

    masked = Redactor().text(str(url))
    try:
        parts = urlsplit(masked)
    except ValueError:
        return "<invalid URL>"
    shown = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    return shown + ("?..." if parts.query else "")


_ERRNO = re.compile(r"\[Errno -?\d+\] ([A-Za-z][A-Za-z ,'-]*[A-Za-z])")


def _reason(exc: BaseException) -> str:
    """A short, secret-free description of a failed request.

    The exception's own text is never used whole: requests puts header values (InvalidHeader) and
    full URLs with their query strings into its messages.
    """
    import requests

    text = str(exc)
    if isinstance(exc, requests.exceptions.SSLError):
        return "TLS error" + (": certificate verify failed" if "certificate verify failed" in text else "")
    if isinstance(exc, requests.exceptions.InvalidHeader):
        return "invalid header (a header name or value is not allowed)"
    if isinstance(exc, (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                        requests.exceptions.InvalidSchema)):
        return "invalid URL"
    if isinstance(exc, requests.TooManyRedirects):
        return "too many redirects"
    if isinstance(exc, requests.ConnectionError):
        m = _ERRNO.search(text)
        if m:
            return f"connection failed: {m.group(1)}"
        if "Name or service not known" in text or "nodename nor servname" in text:
            return "connection failed: unknown host"
        if "RemoteDisconnected" in text or "Connection aborted" in text:
            return "connection failed: the server closed the connection"
        return "connection failed"
    if isinstance(exc, UnicodeError):
        return "invalid request: a header or URL holds characters HTTP cannot send"
    return f"request failed ({type(exc).__name__})"


_UNSET: Any = object()


def http_request(session: Any, method: str, url: str, *, timeout: float, headers: Mapping[str, str] | None = None,
                 verify: bool = True, data: bytes | None = None, json_body: Any = _UNSET,
                 max_body: int = MAX_BODY, exchange: Exchange | None = None) -> HttpResponse:
    """One request; the whole exchange (connect, send, headers, redirects, body) ends within ``timeout``.

    Any failure to get a complete response raises HttpError("METHOD URL: reason") (RequestTimeout
    for a timeout, RequestAborted when ``exchange`` was aborted), with the URL as :func:`safe_url`
    shows it and no header value in it. With a session not made by :func:`new_session`, the
    deadline is checked only between reads.
    """
    method = method.upper()
    where = f"{method} {safe_url(url)}"
    ex = exchange if exchange is not None else Exchange()
    ex.start(timeout)
    previous = current_exchange()
    _local.exchange = ex
    try:
        resp = _exchange(session, method, url, where, ex, timeout=timeout, headers=headers, verify=verify,
                         data=data, json_body=json_body, max_body=max_body)
    except HttpError:
        if ex.finish():
            raise _ended(ex, where, timeout) from None
        raise
    except Exception:
        if ex.finish():  # whatever a shut-down socket made the stack raise
            raise _ended(ex, where, timeout) from None
        raise
    finally:
        _local.exchange = previous
    # A shutdown reads as end-of-file, which ends a body delimited by the connection's close
    # "normally": a response is only good if the exchange was not cut.
    if ex.finish():
        raise _ended(ex, where, timeout)
    return resp


def _ended(ex: Exchange, where: str, timeout: float) -> HttpError:
    if ex.ended == "aborted":
        return RequestAborted(f"{where}: cancelled")
    return RequestTimeout(f"{where}: timed out after {timeout:g}s")


def _exchange(session: Any, method: str, url: str, where: str, ex: Exchange, *, timeout: float,
              headers: Mapping[str, str] | None, verify: bool, data: bytes | None, json_body: Any,
              max_body: int) -> HttpResponse:
    import requests

    if not verify:  # chosen in the config: no InsecureRequestWarning on stderr at every poll
        import urllib3

        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
    if ex.ended:
        raise _ended(ex, where, timeout)
    # The socket timeout stays as a second line of defence (a session without the adapter).
    kwargs: dict[str, Any] = {"headers": dict(headers or {}), "timeout": timeout, "verify": verify, "stream": True}
    if data is not None:
        kwargs["data"] = data
    if json_body is not _UNSET:
        kwargs["json"] = json_body
    try:
        with session.request(method, url, **kwargs) as resp:
            chunks: list[bytes] = []
            size = 0
            for chunk in resp.iter_content(CHUNK):
                size += len(chunk)
                if size > max_body:
                    raise HttpError(f"{where}: response body larger than {max_body} bytes")
                if ex.ended or time.monotonic() > ex.deadline:
                    raise _ended(ex, where, timeout)
                chunks.append(chunk)
            return HttpResponse(resp.status_code, b"".join(chunks), resp.encoding,
                                resp.headers.get("Content-Type", ""))
    except HttpError:
        raise
    except requests.Timeout:
        raise RequestTimeout(f"{where}: timed out after {timeout:g}s") from None
    except requests.ConnectionError as e:
        if "timed out" in str(e):  # a read timeout while streaming the body arrives as ConnectionError
            raise RequestTimeout(f"{where}: timed out after {timeout:g}s") from None
        raise HttpError(f"{where}: {_reason(e)}") from None
    except (requests.RequestException, ValueError) as e:  # UnicodeError is a ValueError
        raise HttpError(f"{where}: {_reason(e)}") from None

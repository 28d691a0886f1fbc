"""A pretend service for the demo's health check: http://127.0.0.1:8765/health answers
``{"status": "ok"}`` (200) while it is up and ``{"status": "down"}`` (503) while it is down.

    python3 examples/demo_service.py            # up 30s, down 20s, up 30s, ... (an outage to watch)
    python3 examples/demo_service.py --steady   # always up
    python3 examples/demo_service.py --up 60 --down 10 --port 8765

Stop it with Ctrl-C: the health check then gets "connection refused", which is "down" too.
Only the standard library, so it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Health:
    """Up for ``up`` seconds, then down for ``down`` seconds, from ``start`` on (``down`` 0: always up)."""

    def __init__(self, up: float, down: float, start: float):
        self.up, self.down, self.start = up, down, start

    def healthy(self, now: float) -> bool:
        if self.down <= 0:
            return True
        return (now - self.start) % (self.up + self.down) < self.up


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A pretend service for trigctl's demo health check.")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--up", type=float, default=30.0, help="seconds up per cycle (default 30)")
    parser.add_argument("--down", type=float, default=20.0, help="seconds down per cycle (default 20)")
    parser.add_argument("--steady", action="store_true", help="never go down")
    args = parser.parse_args(argv)
    health = Health(args.up, 0.0 if args.steady else args.down, time.monotonic())
    state = {"last": None}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the http.server name)
            if self.path.split("?")[0] != "/health":
                self.send_error(404)
                return
            ok = health.healthy(time.monotonic())
            if ok != state["last"]:
                state["last"] = ok
                print(time.strftime("%H:%M:%S"), "up: answering 200" if ok else "DOWN: answering 503", flush=True)
            body = json.dumps({"status": "ok" if ok else "down"}).encode()
            self.send_response(200 if ok else 503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # quiet: one line per change only
            pass

    try:
        server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    except OSError as e:
        print(f"demo_service: cannot listen on 127.0.0.1:{args.port}: {e.strerror}", file=sys.stderr)
        return 2
    cycle = "always up" if args.steady else f"up {args.up:g}s, down {args.down:g}s, repeating"
    port = server.server_address[1]  # --port 0: a free one
    print(f"demo service on http://127.0.0.1:{port}/health ({cycle}); Ctrl-C stops it", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

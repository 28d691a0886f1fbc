"""A real terminal for tests: a command in a detached tmux session of its own server, and its
screen read back as a person sees it (``capture-pane``). Waits are conditions on the screen with
deadlines, never fixed sleeps."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

TMUX = shutil.which("tmux")
SKIP_REASON = "tmux is not installed (apt-get install -y tmux): the terminal tests need a real pseudo-terminal"

# Variables of the test process that would change what the child draws or where it reads its config.
_UNSET = ("NO_COLOR", "FORCE_COLOR", "COLUMNS", "LINES", "TRIGCTL_CONFIG", "TRIGCTL_STATE", "TMUX")


class Screen:
    """``argv`` run in ``cwd`` on a ``width`` x ``height`` terminal (no status line). The exit code
    is written to a file by the wrapping shell; the pane stays after the exit so it can be read."""

    def __init__(self, cwd: Path, argv: Iterable[str], *, width: int = 80, height: int = 24,
                 env: dict[str, str] | None = None):
        assert TMUX, SKIP_REASON
        self.cwd = Path(cwd)
        self._dir = tempfile.mkdtemp(prefix="tt", dir="/tmp")  # a unix socket path must be short
        self.socket = os.path.join(self._dir, "s")
        self.exit_file = os.path.join(self._dir, "exit.code")
        conf = os.path.join(self._dir, "tmux.conf")
        with open(conf, "w") as f:
            f.write("set -g status off\nset -g remain-on-exit on\nset -g history-limit 5000\n"
                    "set -g default-terminal screen-256color\n")
        assignments = " ".join(shlex.quote(f"{k}={v}") for k, v in (env or {}).items())
        unset = " ".join(f"-u {k}" for k in _UNSET)
        # `trap : INT`: Ctrl-C reaches trigctl (the trap is reset for it) and the shell lives on to
        # write the exit code.
        command = (f"trap : INT; env {unset} {assignments} {' '.join(shlex.quote(a) for a in argv)}; "
                   f"echo $? > {shlex.quote(self.exit_file)}")
        self._tmux("-f", conf, "new-session", "-d", "-s", "t", "-x", str(width), "-y", str(height),
                   "-c", str(self.cwd), "sh", "-c", command)

    def _tmux(self, *args: str) -> str:
        out = subprocess.run([TMUX, "-S", self.socket, *args], capture_output=True, text=True, timeout=30)
        if out.returncode != 0:
            raise AssertionError(f"tmux {' '.join(args[:2])} failed: {out.stderr.strip()}")
        return out.stdout

    def capture(self, escapes: bool = False, history: bool = False) -> str:
        """The screen as text (wrapped lines joined, so a line wider than the terminal shows as
        one long line); ``escapes``: with tmux's SGR sequences for colours and attributes."""
        args = ["capture-pane", "-p", "-J", "-t", "t"]
        if escapes:
            args.append("-e")
        if history:
            args += ["-S", "-"]
        return self._tmux(*args)

    def lines(self) -> list[str]:
        return [ln.rstrip() for ln in self.capture().splitlines()]

    def wait_for(self, predicate: Callable[[str], object], timeout: float = 20.0, what: str = "") -> str:
        """The first screen for which ``predicate(screen)`` is true; fails at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.capture()
            if predicate(screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}; screen:\n{screen}")
            time.sleep(0.1)  # the screen is polled: a condition with a deadline

    def wait_text(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        found: list[re.Match[str]] = []

        def check(screen: str) -> bool:
            m = re.search(pattern, screen, re.M)
            if m:
                found.append(m)
            return m is not None

        self.wait_for(check, timeout, what=repr(pattern))
        return found[0]

    def send_keys(self, *keys: str) -> None:
        self._tmux("send-keys", "-t", "t", *keys)

    def resize(self, width: int, height: int) -> None:
        self._tmux("resize-window", "-t", "t", "-x", str(width), "-y", str(height))

    def exit_code(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while True:
            try:
                text = Path(self.exit_file).read_text().strip()
                if text:
                    return int(text)
            except FileNotFoundError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"the command did not exit within {timeout}s; screen:\n{self.capture()}")
            time.sleep(0.05)

    def pane_pid(self) -> int | None:
        """The pane's process (the wrapping shell, leader of the group trigctl runs in), while alive."""
        try:
            out = self._tmux("display-message", "-p", "-t", "t", "#{pane_dead} #{pane_pid}").split()
        except AssertionError:
            return None
        return int(out[1]) if out and out[0] == "0" else None

    def close(self) -> None:
        """Stop what still runs (SIGTERM to the pane's process group, SIGKILL after a deadline), then
        the tmux server. Killing the server alone sends SIGHUP, which trigctl takes as "reload"."""
        pid = self.pane_pid()
        if pid is not None:
            _stop_group(pid)
        subprocess.run([TMUX, "-S", self.socket, "kill-server"], capture_output=True, timeout=30)
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Screen:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _stop_group(pgid: int, timeout: float = 30.0) -> None:
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


_SGR = re.compile(r"\x1b\[([0-9;:]*)m")


def colour_codes(text: str) -> list[str]:
    """The SGR parameters in ``text`` that set a colour (foreground or background, any palette);
    bold, dim, reverse and resets are not colours."""
    found = []
    for m in _SGR.finditer(text):
        params = [p for p in re.split("[;:]", m.group(1)) if p]
        i = 0
        while i < len(params):
            p = int(params[i])
            if 30 <= p <= 37 or 40 <= p <= 47 or 90 <= p <= 97 or 100 <= p <= 107 or p in (38, 48):
                found.append(m.group(0))
                break
            i += 1
    return found

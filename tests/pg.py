"""A throwaway PostgreSQL cluster for the tests: initdb in a temporary directory, listening on
127.0.0.1 only, trust authentication, stopped and removed at the end of the session.

PostgreSQL refuses to run as root: when the tests run as root (CI does), the server runs as the
``postgres`` user that Debian's package creates (``runuser -u postgres``), in a directory it owns.
Without PostgreSQL's binaries (``initdb``, ``pg_ctl``) the tests that need it skip, saying why.

Each test gets a database of its own (:meth:`Cluster.new_database`), so tests never see each
other's triggers, runs or processes.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

SERVER_USER = "postgres"  # used only when the tests run as root


def find_bindir() -> str | None:
    """The directory of initdb and pg_ctl: Debian's /usr/lib/postgresql/N/bin (the newest), or PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    if found:
        return os.path.dirname(found[-1])
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return os.path.dirname(os.path.realpath(on_path))
    return None


def unavailable_reason() -> str | None:
    """Why no cluster can be started here (None: it can)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'trigctl[postgres]')"
    if find_bindir() is None:
        return "no PostgreSQL server binaries (initdb, pg_ctl): apt-get install postgresql"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            return f"running as root and there is no {SERVER_USER!r} user to run PostgreSQL as"
        if shutil.which("runuser") is None:
            return "running as root and runuser is missing (util-linux)"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    def __init__(self) -> None:
        self.bindir = find_bindir()
        assert self.bindir is not None
        self.root = Path(tempfile.mkdtemp(prefix="trigctl-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.user = "trigctl"
        self._as_root = os.geteuid() == 0
        if self._as_root:
            pw = pwd.getpwnam(SERVER_USER)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        os.chmod(self.root, 0o700)
        self._names = itertools.count(1)
        self._started = False

    def _cmd(self, *args: str) -> list[str]:
        if self._as_root:
            return ["runuser", "-u", SERVER_USER, "--", *args]
        return list(args)

    def _run(self, *args: str, timeout: float = 120) -> None:
        out = subprocess.run(self._cmd(*args), capture_output=True, text=True, timeout=timeout, cwd=self.root)
        if out.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(args)} failed ({out.returncode}): {out.stderr.strip()}\n{tail}")

    def start(self) -> Cluster:
        b = self.bindir
        self._run(f"{b}/initdb", "-D", str(self.data), "-U", self.user, "--auth=trust", "-E", "UTF8",
                  "--locale=C", "--no-sync")
        options = " ".join([
            "-c listen_addresses=127.0.0.1", f"-p {self.port}", f"-k {self.root}",
            # A test cluster: durability is not what is tested, speed is welcome.
            "-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off",
            "-c max_connections=300", "-c shared_buffers=64MB",
        ])
        self._run(f"{b}/pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-o", options,
                  "-w", "-t", "60", "start")
        self._started = True
        return self

    def stop(self) -> None:
        if self._started:
            try:
                self._run(f"{self.bindir}/pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout=60)
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
            self._started = False
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{dbname}"

    def connect(self, dbname: str = "postgres"):
        import psycopg

        return psycopg.connect(self.url(dbname), autocommit=True)

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        name = f"t{os.getpid()}_{next(self._names)}"
        with self.connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def sql(self, url: str, statement: str, params: tuple = ()) -> list[tuple]:
        """Run one statement on the database at ``url`` directly (not through trigctl)."""
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            cur = conn.execute(statement, params)
            return cur.fetchall() if cur.description else []

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
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

from realproc import RunProc

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


# ------------------------------------------------------------ `trigctl run` processes on one state

LEASE = "2s"  # short, so failovers take seconds; the default (10s) is for production

SEQ = """
import trigctl

def seq(cursor=None):
    n = int(cursor or 0) + 1
    return trigctl.Fire({"seq": n}, cursor=str(n))
"""


def project(tmp_path: Path, n: int = 12, interval: str = "100ms", task: str = '{argv: ["true"]}',
            extra: str = "", triggers: str = "") -> Path:
    """A triggers.yaml of ``n`` counting triggers t00... into workflow ``w`` (plus ``extra`` workflows
    and ``triggers``, YAML lines)."""
    lines = triggers + "\n".join(
        f'  - {{name: t{i:02d}, type: python, callable: "seqs:seq", workflow: w, interval: {interval}, dedupe: none}}'
        for i in range(n))
    (tmp_path / "seqs.py").write_text(SEQ)
    yaml = tmp_path / "triggers.yaml"
    yaml.write_text(f"version: 1\nmax_concurrent_runs: 50\nworkflows:\n  w: {{tasks: [{task}]}}\n{extra}triggers:\n"
                    + lines + "\n")
    return yaml


class Fleet:
    """`trigctl run` processes on one state; stopped (or killed) at the end of the test."""

    def __init__(self, tmp_path: Path, url: str, cluster):
        self.tmp_path, self.url, self.cluster = tmp_path, url, cluster
        self.procs: list[RunProc] = []

    def start(self, *args: str) -> RunProc:
        i = len(self.procs)
        p = RunProc(self.tmp_path, "triggers.yaml", "--state", self.url, "--lease", LEASE, *args,
                    log=self.tmp_path / f"run{i}.log")
        self.procs.append(p)
        p.wait_line("start triggers=", timeout=30)
        return p

    def sql(self, statement: str, params: tuple = ()) -> list[tuple]:
        return self.cluster.sql(self.url, statement, params)

    def process_id(self, proc: RunProc) -> str:
        rows = self.sql("SELECT id FROM processes WHERE pid = %s AND status = 'alive'", (proc.pid,))
        assert rows, f"no alive process row for pid {proc.pid}"
        return rows[0][0]

    def held(self) -> dict[str, int]:
        """Process id -> leases held now."""
        return dict(self.sql("SELECT t.holder, count(*) FROM triggers t JOIN processes p ON p.id = t.holder "
                             "WHERE p.status = 'alive' AND p.leases_until > now() GROUP BY t.holder"))

    def runs(self) -> int:
        return self.sql("SELECT count(*) FROM runs")[0][0]

    def wait(self, predicate, timeout: float, what: str):
        """conftest.wait_for, with every process's last log lines when it times out."""
        from conftest import wait_for

        try:
            return wait_for(predicate, timeout, 0.05, what)
        except AssertionError as e:
            logs = "\n".join(f"--- run{i}\n" + p.stderr[-1500:] for i, p in enumerate(self.procs))
            raise AssertionError(f"{e}\n{logs}") from None

    def assert_exactly_once(self) -> int:
        """Every trigger's fires are seq 1..N, each once, and each run ran its task once. (A rerun of
        a run interrupted by a dead process repeats its seq, as on_interrupt: rerun says.)"""
        bad_reruns = self.sql("SELECT r.id FROM runs r JOIN runs o ON o.id = r.rerun_of WHERE o.status <> 'interrupted' "
                              "OR o.context <> r.context")
        assert bad_reruns == [], bad_reruns
        rows = self.sql("SELECT trigger_name, array_agg((context::json->>'seq')::int ORDER BY (context::json->>'seq')::int) "
                        "FROM runs WHERE rerun_of IS NULL GROUP BY trigger_name")
        total = 0
        for name, seqs in rows:
            if seqs != list(range(1, len(seqs) + 1)):
                detail = self.sql("SELECT id, context, fired_by, queued_at, status FROM runs WHERE trigger_name = %s "
                                  "ORDER BY id", (name,))
                procs = self.sql("SELECT id, pid, status, ended_by FROM processes")
                raise AssertionError(f"{name}: seqs {seqs} are not 1..{len(seqs)} exactly once:\n{detail}\n{procs}")
            total += len(seqs)
        tasks = self.sql("SELECT run_id, count(*) FROM tasks GROUP BY run_id HAVING count(*) > 1")
        assert tasks == [], f"runs whose task ran more than once: {tasks}"
        return total

    def cleanup(self) -> None:
        for p in self.procs:
            if p.proc.poll() is None:
                p.signal(signal.SIGCONT)
                p.signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(30)
            except AssertionError:
                p.kill()

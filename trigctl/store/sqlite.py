"""The SQLite state: one connection per process, WAL, busy timeout, explicit transactions.

Dedupe is held by the database itself: a run that holds its key has ``active_key`` set, and a
partial unique index on (trigger_name, active_key) refuses a second holder. Finishing a run clears
``active_key`` in the same UPDATE that sets its final status, so a key can never outlive its run.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from operator import itemgetter
from pathlib import Path
from typing import Any

from trigctl.procs import proc_start_time, process_alive
from trigctl.store.base import (
    PRUNABLE_EVENT,
    Changes,
    FireRequest,
    FireResult,
    HistoryEntry,
    Lease,
    LeaseLost,
    PollStats,
    ProcessInfo,
    RunRow,
    StateError,
    StateLocked,
    Store,
    TriggerRow,
    dedupe_hash,
    exact_text,
    from_exact_text,
    history_row,
    run_row,
    safe_text,
    sql_dedupe_status,
)

_ROWID = itemgetter(6)
MAX_ERROR_CHARS = 4000  # an error message kept in history (a trigger may raise a megabyte of text)

BUSY_TIMEOUT_MS = 15_000
FLUSH_ROWS = 500  # counters per transaction (~1 ms of the state's lock)
PRUNE_BATCH = 5_000  # rows per prune transaction

MIGRATIONS: list[str] = [
    # 1: the first schema
    """
    CREATE TABLE triggers (
        name TEXT PRIMARY KEY,
        enabled INTEGER,               -- NULL: the YAML's value; 0/1: `trigctl enable/disable`
        cursor TEXT,
        next_poll_at REAL,
        last_poll_at REAL,
        last_result TEXT,
        fires INTEGER NOT NULL DEFAULT 0,
        polls INTEGER NOT NULL DEFAULT 0,
        consecutive_errors INTEGER NOT NULL DEFAULT 0,
        error_alerted INTEGER NOT NULL DEFAULT 0,
        last_error TEXT
    );
    CREATE TABLE trigger_kv (
        trigger_name TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (trigger_name, key)
    ) WITHOUT ROWID;
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        trigger_name TEXT NOT NULL,
        workflow TEXT NOT NULL,
        status TEXT NOT NULL,
        context TEXT NOT NULL,
        context_hash TEXT,
        dedupe TEXT NOT NULL,
        active_key TEXT,               -- = context_hash while queued/running under dedupe running|once
        attempt INTEGER NOT NULL DEFAULT 1,
        max_attempts INTEGER NOT NULL DEFAULT 3,
        rerun_of INTEGER,
        triggered_at REAL NOT NULL,
        queued_at REAL NOT NULL,
        started_at REAL,
        completed_at REAL,
        error TEXT,
        owner_pid INTEGER,
        cancel_requested INTEGER NOT NULL DEFAULT 0
    );
    CREATE UNIQUE INDEX runs_active_key ON runs (trigger_name, active_key) WHERE active_key IS NOT NULL;
    CREATE INDEX runs_status ON runs (status) WHERE status IN ('queued', 'running');
    CREATE INDEX runs_trigger_key ON runs (trigger_name, context_hash);
    CREATE TABLE tasks (
        run_id INTEGER NOT NULL,
        idx INTEGER NOT NULL,
        name TEXT NOT NULL,
        status TEXT NOT NULL,
        exit_code INTEGER,
        attempts INTEGER NOT NULL DEFAULT 1,
        started_at REAL,
        completed_at REAL,
        output_tail TEXT,
        pid INTEGER,
        pgid INTEGER,
        proc_start TEXT,
        PRIMARY KEY (run_id, idx)
    ) WITHOUT ROWID;
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        trigger_name TEXT NOT NULL,
        kind TEXT NOT NULL,            -- fire | duplicate | error
        context TEXT,
        context_hash TEXT,
        run_id INTEGER,
        error TEXT,
        count INTEGER NOT NULL DEFAULT 1,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX events_trigger_time ON events (trigger_name, created_at);
    CREATE INDEX events_time ON events (created_at);
    CREATE INDEX events_dup ON events (trigger_name, context_hash, run_id) WHERE kind = 'duplicate';
    CREATE TABLE dedupe_once (
        trigger_name TEXT NOT NULL,
        key TEXT NOT NULL,
        succeeded_run INTEGER,
        failures INTEGER NOT NULL DEFAULT 0,
        given_up INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (trigger_name, key)
    ) WITHOUT ROWID;
    """,
    # 2: `history NAME` (newest first, one trigger) walks this index instead of sorting the trigger's rows
    """
    CREATE INDEX events_trigger_id ON events (trigger_name, id);
    """,
    # 3: what `list` shows of the YAML, saved by `run`, so `list` need not parse a big file again
    """
    CREATE TABLE config_snapshot (
        config_path TEXT PRIMARY KEY,
        fingerprint TEXT NOT NULL,
        triggers TEXT NOT NULL
    );
    """,
    # 4: the process that runs this state, recorded in the database itself, so that a second `run`
    # reaching the same file by another path (a symlink, a hard link, a bind mount) is refused too;
    # and each run's owner with its start time, so a live owner's run is never taken for a crash's.
    """
    CREATE TABLE run_holder (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        pid INTEGER NOT NULL,
        proc_start TEXT,
        since REAL NOT NULL,
        process_id TEXT,
        host TEXT,
        labels TEXT
    );
    ALTER TABLE runs ADD COLUMN owner_start TEXT;
    ALTER TABLE runs ADD COLUMN owner_process TEXT;
    """,
    # 5: why the last poll skipped (the trigger's reason) or erred (its message), for `list`
    """
    ALTER TABLE triggers ADD COLUMN last_reason TEXT;
    """,
    # 6: the snapshot as a table too, each trigger's part of `list --json` that only the YAML decides
    # encoded once, so that `list --json` is written by one query (SQLiteStore.list_json_text).
    # list_rows: how many rows it has (-1: the summary cannot be written so; NULL: saved before 6).
    """
    ALTER TABLE config_snapshot ADD COLUMN list_rows INTEGER;
    CREATE TABLE config_snapshot_rows (
        config_path TEXT NOT NULL,
        pos INTEGER NOT NULL,          -- the YAML's order
        name TEXT NOT NULL,
        trigger_rowid INTEGER,         -- triggers.rowid of `name` when saved: a hint, checked against the name
        enabled INTEGER NOT NULL,      -- the YAML's enabled
        head TEXT NOT NULL,            -- '{"name": ..., "type": ..., "workflow": ..., "interval": ..., "enabled": '
        enabled_json TEXT NOT NULL,    -- the YAML's enabled as JSON
        mid TEXT NOT NULL,             -- ', "dedupe": ..., "last_poll_at": '
        PRIMARY KEY (config_path, pos)
    ) WITHOUT ROWID;
    """,
]


def _reason(text: str | None) -> str | None:
    """A skip reason as stored: text from trigger code, cut like an error message; empty is none."""
    return safe_text(text, MAX_ERROR_CHARS) if text else None


_FLUSH_BY_ROWID = ("UPDATE triggers SET last_poll_at = ?, last_result = ?, last_reason = ?, next_poll_at = ?, "
                   "polls = polls + ?, consecutive_errors = ? WHERE rowid = ? AND name = ?")
_FLUSH_BY_NAME = ("UPDATE triggers SET last_poll_at = ?, last_result = ?, last_reason = ?, next_poll_at = ?, "
                  "polls = polls + ?, consecutive_errors = ? WHERE name = ?")


_ACTIVE_RUNS = "SELECT trigger_name, count(*) AS n FROM runs WHERE status IN ('queued','running') GROUP BY trigger_name"


def _iso_sql(x: str) -> str:
    """render.iso of ``x`` in SQL, for 0 <= x < 253402300799 (checked by _LIST_SLOW): strftime
    rounds to the millisecond, so it is given the millisecond that iso keeps. iso rounds the
    microsecond half to even and cuts it to the millisecond; half up gives the same millisecond
    (a tie between two microseconds that straddle a millisecond is at an odd one, rounded up by
    both), and adding 0.5 to the microseconds in floating point is exact but where a power of two
    lies within 0.5, never a millisecond."""
    ms = f"(CAST({x} AS INTEGER) * 1000 + CAST((({x} - CAST({x} AS INTEGER)) * 1e6 + 0.5) AS INTEGER) / 1000)"
    return f"""CASE WHEN {x} IS NULL THEN 'null' ELSE '"' || strftime('%Y-%m-%dT%H:%M:%fZ', {ms} / 1000.0, 'unixepoch') || '"' END"""


def _time_slow(x: str) -> str:
    # NULL is not slow; text and blobs compare greater than any number.
    return f"NOT ({x} >= 0 AND {x} < 253402300799)"


_LIST_ENABLED = "CASE WHEN t.enabled IS NULL THEN s.enabled ELSE t.enabled END"
# Text is written by json_quote, as json.dumps does (ensure_ascii off) for valid UTF-8; the caller's
# render.safe_json then escapes what json_text escapes beyond it, and text that is not UTF-8 is read
# as the other queries read it (SQLiteStore._query).
_LIST_SLOW = " OR ".join([
    "(s.trigger_rowid IS NOT NULL AND t.name IS NOT s.name)",
    "typeof(t.enabled) NOT IN ('null', 'integer')",
    _time_slow("t.last_poll_at"), _time_slow("t.next_poll_at"),
    "typeof(t.last_result) NOT IN ('null', 'text')", "typeof(t.last_reason) NOT IN ('null', 'text')",
    "typeof(coalesce(t.fires, 0)) != 'integer'", "typeof(coalesce(t.consecutive_errors, 0)) != 'integer'",
])
#: group_concat over an ordered subquery: SQLite does not flatten a subquery with ORDER BY into an
#: aggregate (the query flattener's rule 16), so the pieces come in YAML order (the tests compare
#: the bytes at 300 and 50,000 triggers). `group_concat(x, sep ORDER BY y)` says so formally but
#: needs 3.44; fetching the rows and joining them in Python costs +25 % of this query at 50,000.
_LIST_JSON = f"""
SELECT group_concat(piece, ', ') FROM (
    SELECT CASE WHEN {_LIST_SLOW} THEN char(0) || s.pos ELSE printf(
        '%s%s%s%s, "last_result": %s, "next_poll_at": %s, "active_runs": %d, "fires": %d, "consecutive_errors": %d, "last_reason": %s%s',
        s.head, CASE WHEN t.enabled IS NULL THEN s.enabled_json WHEN t.enabled THEN 'true' ELSE 'false' END, s.mid,
        {_iso_sql("t.last_poll_at")}, coalesce(json_quote(t.last_result), 'null'),
        CASE WHEN {_LIST_ENABLED} THEN {_iso_sql("t.next_poll_at")} ELSE 'null' END,
        coalesce(a.n, 0), coalesce(t.fires, 0), coalesce(t.consecutive_errors, 0), coalesce(json_quote(t.last_reason), 'null'), ?2)
    END AS piece
    FROM config_snapshot_rows s
    LEFT JOIN triggers t ON t.rowid = coalesce(s.trigger_rowid, (SELECT rowid FROM triggers WHERE name = s.name))
    LEFT JOIN ({_ACTIVE_RUNS}) a ON a.trigger_name = s.name
    WHERE s.config_path = ?1
    ORDER BY s.pos
)"""


FLUSH_CHUNK = 64  # counters per UPDATE statement (512 parameters)
#: UPDATE ... FROM (VALUES ...): SQLite 3.33+. One statement for FLUSH_CHUNK rows releases the GIL
#: once for all of them, where executemany releases and takes it back at every row: a writer thread
#: doing that while the loop is busy gets the GIL back only every switch interval (5 ms), and each
#: forced switch makes the loop wait for a thread the OS may not be running.
_UPDATE_FROM = sqlite3.sqlite_version_info >= (3, 33)
_FLUSH_STATEMENTS: dict[int, str] = {}


def _flush_statement(n: int) -> str:
    sql = _FLUSH_STATEMENTS.get(n)
    if sql is None:
        sql = _FLUSH_STATEMENTS[n] = (
            "UPDATE triggers SET last_poll_at = v.column1, last_result = v.column2, last_reason = v.column3, "
            "next_poll_at = v.column4, polls = polls + v.column5, consecutive_errors = v.column6 FROM (VALUES "
            + ",".join(["(?,?,?,?,?,?,?,?)"] * n) + ") AS v WHERE triggers.rowid = v.column7 AND triggers.name = v.column8")
    return sql


def _update_rows(c: sqlite3.Connection, rows: list[tuple]) -> int:
    """Counter rows (``_FLUSH_BY_ROWID``'s parameters, one trigger once) written; how many matched."""
    if not _UPDATE_FROM:
        return c.executemany(_FLUSH_BY_ROWID, rows).rowcount
    changed = 0
    for i in range(0, len(rows), FLUSH_CHUNK):
        part = rows[i:i + FLUSH_CHUNK]
        changed += c.execute(_flush_statement(len(part)), [x for row in part for x in row]).rowcount
    return changed


class _StaleRowids(Exception):
    """A counter update by rowid missed its row: the group is written again by name."""


def _by_rowid_range(rows: list[tuple], size: int) -> list[list[tuple]]:
    """``rows`` (rowid at index 6) in groups of about ``size``, each of one range of rowids, each
    sorted: neighbouring rows share pages. Bucketed, not sorted whole: O(n) Python, which lets
    other threads run, where one sort of 50,000 rows would hold the GIL for ~15 ms."""
    if len(rows) <= size:
        rows.sort(key=_ROWID)
        return [rows]
    low = min(r[6] for r in rows)
    span = max(r[6] for r in rows) - low + 1
    n = -(-len(rows) // size)
    groups: list[list[tuple]] = [[] for _ in range(n)]
    for r in rows:
        groups[(r[6] - low) * n // span].append(r)
    for g in groups:
        g.sort(key=_ROWID)
    return [g for g in groups if g]


def _fs_problem(path: str) -> str | None:
    """Why the state's directory cannot be written, when the file system says so."""
    try:
        st = os.statvfs(os.path.dirname(os.path.abspath(path)))
    except OSError:
        return None
    if st.f_flag & os.ST_RDONLY:
        return "read-only"
    if st.f_bavail == 0 and st.f_blocks > 0:  # /proc and alike have no blocks at all: not "full"
        return "full"
    return None


def _err(e: BaseException, path: str) -> StateError:
    text = str(e)
    # SQLite reports a read-only or full file system in many ways ("unable to open database file",
    # "disk I/O error" while creating its -wal/-shm files...): ask the file system.
    problem = _fs_problem(path) if isinstance(e, sqlite3.OperationalError) else None
    if problem == "read-only":
        return StateError(f"cannot write state {path}: its directory is on a read-only file system")
    if isinstance(e, sqlite3.OperationalError) and "readonly" in text:
        return StateError(f"state {path} is read-only: {text}")
    if problem == "full" or "disk" in text and "full" in text or getattr(e, "errno", None) == errno.ENOSPC:
        return StateError(f"cannot write state {path}: the disk is full")
    if isinstance(e, sqlite3.DatabaseError) and "not a database" in text:
        return StateError(f"{path} is not a trigctl state file (not a SQLite database)")
    if isinstance(e, sqlite3.OperationalError) and ("no such table" in text or "no such column" in text):
        return StateError(f"{path} is not a trigctl state file, or a damaged one ({text})")
    return StateError(f"state {path}: {text}")


def _statements(script: str) -> list[str]:
    """A migration script as single statements (comments may hold semicolons)."""
    out, buf = [], ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    if buf.strip() and not all(ln.strip().startswith("--") or not ln.strip() for ln in buf.splitlines()):
        out.append(buf.strip())
    return out


# A history entry prune may delete (once old enough): not the fire of a run that is still active.


class SQLiteStore(Store):
    def __init__(self, path: str, *, readonly: bool = False):
        self.path = path
        self._lock = threading.RLock()
        self._lockfile: int | None = None
        self._start: str | None = None
        self.process: ProcessInfo | None = None
        self._held: set[str] = set()  # the triggers this process holds (all it acquired: one process per state)
        self._data_version: int | None = None
        self._rowids: dict[str, int] | None = None  # trigger name -> rowid of its row (counter writes)
        self._claimed: list[RunRow] = []  # claimed by fires (claim_room), not yet taken by the runner
        # The queue seen empty: a claim that found fewer queued runs than it asked for remembers
        # that moment (this connection's count of writes that may queue a run: a fire's insert, a
        # requeue; and SQLite's data_version, which moves when another connection commits). Until
        # either moves, claim_queued answers without a transaction: the pump asks after every fire
        # and every run's end, and with room to spare (fires claim their own runs) that was two
        # empty write transactions a run.
        self._queue_gen = 0
        self._queue_empty_at: tuple[int, int] | None = None  # unknown at start: runs may be queued
        self.readonly = readonly
        try:
            if readonly and (path == ":memory:" or not Path(path).exists()):
                # Nothing recorded yet: an empty, in-memory state answers the readers.
                self._conn = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
                self._migrate()
                return
            if path != ":memory:":
                self._create_file(Path(path))
            self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
            self._conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._conn.execute("PRAGMA foreign_keys = ON")
            self._refuse_foreign()  # before WAL mode, which would rewrite the file's header
            self._use_wal()
            self._conn.execute("PRAGMA synchronous = NORMAL")
            self._migrate()
        except sqlite3.Error as e:
            if not (readonly and self._open_immutable(path)):
                raise _err(e, path) from None

    def _use_wal(self) -> None:
        """Switch the file to WAL mode. The switch takes the file exclusively and SQLite does not wait
        for it (no busy handler): when several processes open an old file at once, all but one are
        told "database is locked" at once, so retry within the usual busy timeout."""
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                if self._conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    self._conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.005)

    def _open_immutable(self, path: str) -> bool:
        """A reader on a read-only file system (a snapshot, a backup mount), where SQLite cannot create
        the WAL's -shm file: read the file as immutable, unless a -wal holds commits not yet in it."""
        wal = Path(path + "-wal")
        if _fs_problem(path) != "read-only" or (wal.exists() and wal.stat().st_size > 0):
            return False
        try:
            self._conn = sqlite3.connect(f"{Path(path).absolute().as_uri()}?mode=ro&immutable=1", uri=True,
                                         check_same_thread=False, isolation_level=None)
            self._migrate()
        except sqlite3.Error:
            return False
        return True

    @staticmethod
    def _create_file(p: Path) -> None:
        if not p.parent.exists():
            try:
                # Every directory created for the state is owner-only, not just the last one.
                missing = [d for d in [p.parent, *p.parent.parents] if not d.exists()]
                for d in reversed(missing):
                    d.mkdir(mode=0o700, exist_ok=True)
            except OSError as e:
                raise StateError(f"cannot create state directory {p.parent}: {e.strerror}") from None
        if not p.exists():
            try:
                fd = os.open(p, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
                os.close(fd)
            except FileExistsError:
                pass
            except OSError as e:
                raise StateError(f"cannot create state file {p}: {e.strerror}") from None

    # ------------------------------------------------------------------------------------ plumbing

    @contextmanager
    def _tx(self, immediate: bool = True):
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
                try:
                    yield self._conn
                except BaseException:
                    if self._conn.in_transaction:  # SQLite may have rolled back itself (a full disk)
                        self._conn.execute("ROLLBACK")
                    raise
                else:
                    self._conn.execute("COMMIT")
            except sqlite3.Error as e:
                raise _err(e, self.path) from None

    def _query(self, sql: str, params: Iterable[Any] = (), *, tuples: bool = False) -> list[Any]:
        """The rows as dicts (``tuples``: as the tuples SQLite returns, for a big read)."""
        with self._lock:
            try:
                try:
                    return self._rows(sql, params, tuples)
                except sqlite3.OperationalError as e:
                    if "decode to UTF-8" not in str(e):
                        raise
                    # Text that is not UTF-8 (written by another tool, or damaged): read it with the
                    # bad bytes as lone surrogates, which the CLI shows escaped, rather than failing
                    # every read of that row. Only such a query pays for the Python decoder.
                    self._conn.text_factory = lambda b: b.decode("utf-8", "surrogateescape")
                    try:
                        return self._rows(sql, params, tuples)
                    finally:
                        self._conn.text_factory = str
            except sqlite3.Error as e:
                raise _err(e, self.path) from None

    def _rows(self, sql: str, params: Iterable[Any], tuples: bool = False) -> list[Any]:
        cur = self._conn.execute(sql, tuple(params))
        if tuples:
            return cur.fetchall()
        cols = [d[0] for d in cur.description] if cur.description else []
        return [dict(zip(cols, row)) for row in cur.fetchall()]

    def _migrate(self) -> None:
        conn = self._conn
        with self._lock:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise StateError(
                    f"state {self.path} has schema version {version}, newer than this trigctl knows ({len(MIGRATIONS)}); upgrade trigctl"
                )
            if version == len(MIGRATIONS):
                return
            if version == 0:
                self._refuse_foreign()
            if self.readonly and version == 0:
                # An empty file (a run that never got going): answer from an empty in-memory state.
                conn.close()
                self._conn = conn = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
                version = 0
            try:
                # One transaction: a crash mid-migration leaves the old version intact. The version is
                # read again inside it, so two processes opening an old file at once migrate it once
                # (the second finds it done). Readers migrate too (the steps only add tables, columns
                # and indexes), so `list` works at once after an upgrade of trigctl.
                conn.execute("BEGIN IMMEDIATE")
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                for statement in _statements("".join(MIGRATIONS[version:])):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")
                conn.execute("COMMIT")
            except BaseException as e:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if self.readonly and isinstance(e, sqlite3.Error):
                    raise StateError(f"state {self.path} needs a schema upgrade that cannot be written here "
                                     f"({e}): run `trigctl run` once where it can write") from None
                raise

    def _refuse_foreign(self) -> None:
        """Version 0 with tables is another program's database, not to be added to: trigctl's first
        migration sets the version in the same transaction that creates its tables."""
        if self._conn.execute("PRAGMA user_version").fetchone()[0] != 0:
            return
        tables = [r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                                   "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name")]
        if tables:
            self._conn.close()
            shown = ", ".join(tables[:5]) + (", ..." if len(tables) > 5 else "")
            raise StateError(f"{self.path} is a SQLite database of another program (tables: {shown}), "
                             "not a trigctl state; give another --state")

    def close(self) -> None:
        with self._lock:
            if self._lockfile is not None:
                try:  # before the connection closes: a stale holder would be checked by PID alone where /proc is not readable
                    self._conn.execute("DELETE FROM run_holder WHERE pid = ?", (os.getpid(),))
                except sqlite3.Error:
                    pass  # a full disk: the next start sees a holder that is no longer alive
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
            if self._lockfile is not None:
                os.close(self._lockfile)
                self._lockfile = None

    def lock_for_run(self) -> None:
        """Make this process the one `trigctl run` of this state, or raise StateLocked.

        Two locks: an flock on ``<real path of the file>.lock`` (opened without following a
        symlink: a planted link cannot make trigctl truncate another file), and the holder row in
        the database itself, checked against the recorded process's start time, which catches a
        second path to the same file that the lock file cannot (a hard link, a bind mount)."""
        import fcntl

        if self.path == ":memory:":
            return
        lock_path = os.path.realpath(self.path) + ".lock"
        try:
            fd = os.open(lock_path, os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise StateError(f"state lock {lock_path} is a symbolic link, which trigctl does not follow; "
                                 "remove it") from None
            raise StateError(f"cannot open the state lock {lock_path}: {e.strerror}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise StateError(f"state lock {lock_path} is not a regular file; remove it")
        try:
            links = os.stat(self.path).st_nlink
        except OSError:
            links = 1
        if links > 1:
            # Another name for the same file (a hard link elsewhere) has its own lock file and its
            # own -wal: a second `run` through it would neither see this lock nor this WAL.
            os.close(fd)
            raise StateLocked(
                f"the state {self.path} has {links} hard links: another `trigctl run` could use it through "
                "another name unseen, and SQLite cannot share a database through hard links; remove the other links"
            )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise self._locked(other) from None
        try:
            with self._tx() as c:
                row = c.execute("SELECT pid, proc_start FROM run_holder WHERE id = 1").fetchone()
                if row is not None and row[0] != os.getpid() and process_alive(row[0], row[1]):
                    raise self._locked(str(row[0]))
                c.execute("INSERT OR REPLACE INTO run_holder (id, pid, proc_start, since) VALUES (1, ?, ?, ?)",
                          (os.getpid(), self._my_start, time.time()))
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lockfile = fd

    def start_process(self, labels: Iterable[str] = ()) -> ProcessInfo:
        import socket
        import uuid

        self.lock_for_run()
        info = ProcessInfo(id=uuid.uuid4().hex, pid=os.getpid(), host=socket.gethostname(), started_at=time.time(),
                           labels=tuple(labels))
        with self._tx() as c:
            c.execute("UPDATE run_holder SET process_id = ?, host = ?, labels = ? WHERE id = 1",
                      (info.id, info.host, json.dumps(list(info.labels))))
        self.process = info
        return info

    def acquire_triggers(self, names: Iterable[str], now: float) -> dict[str, Lease]:
        # The file lock and the holder row make this the only process: every trigger is ours, with
        # one constant token (nobody else can ever have held it since).
        self._held.update(names)
        return {n: Lease(n, 1, None) for n in self._held}

    def renew_leases(self, now: float) -> dict[str, Lease]:
        return {n: Lease(n, 1, None) for n in self._held}

    def release_triggers(self, names: Iterable[str]) -> None:
        self._held.difference_update(names)

    def holds(self, trigger: str) -> bool:
        return self.process is None or trigger in self._held

    def _fence(self, trigger: str) -> None:
        if self.process is not None and trigger not in self._held:
            raise LeaseLost(f"trigger {trigger}: this process does not hold its lease; nothing recorded")

    def _owner_clause(self, take_over: bool = False) -> tuple[str, tuple]:
        """SQL (and its parameter) that limits a write to runs this process may change."""
        if self.process is None or take_over:
            return "", ()
        return " AND (owner_process IS NULL OR owner_process = ?)", (self.process.id,)

    def _locked(self, other: str) -> StateLocked:
        return StateLocked(
            f"another `trigctl run` (pid {other}) is already using the state {self.path}; "
            "stop it first, or give this one its own --state"
        )

    @property
    def _my_start(self) -> str | None:
        if self._start is None:
            self._start = proc_start_time(os.getpid())
        return self._start

    def change_token(self) -> int:
        with self._lock:
            return self._conn.execute("PRAGMA data_version").fetchone()[0]

    def changes(self) -> Changes | None:
        # SQLite's data_version moves when another connection commits: only then is anything read.
        version = self.change_token()
        if version == self._data_version:
            return None
        self._data_version = version
        enabled = {r["name"]: (None if r["enabled"] is None else bool(r["enabled"]))
                   for r in self._query("SELECT name, enabled FROM triggers")}
        return Changes(enabled=enabled, cancel_requested=frozenset(self.cancel_requested()))

    # ------------------------------------------------------------------------------------ triggers

    def sync_triggers(self, names: Iterable[str]) -> None:
        names = list(names)
        with self._tx() as c:
            # A restart finds its rows there: only the missing ones are written (50,000 already
            # there: 0.25 s of INSERT OR IGNORE -> 0.05 s of reading the names).
            have = {name for (name,) in c.execute("SELECT name FROM triggers")}
            missing = [(n,) for n in names if n not in have]
            if missing:
                c.executemany("INSERT OR IGNORE INTO triggers (name) VALUES (?)", missing)

    def loop_alive(self) -> bool | None:
        try:
            rows = self._query("SELECT pid, proc_start FROM run_holder WHERE id = 1")
        except sqlite3.OperationalError:  # a state written before the holder row existed
            return False
        return bool(rows) and process_alive(rows[0]["pid"], rows[0]["proc_start"])

    def trigger_rows(self) -> dict[str, TriggerRow]:
        # Tuples, not dicts: 50,000 rows are read at start-up.
        rows = self._query("SELECT name, enabled, cursor, next_poll_at, last_poll_at, last_result, fires, polls, "
                           "consecutive_errors, error_alerted, last_error, last_reason FROM triggers", tuples=True)
        active = {r["trigger_name"]: r["n"] for r in self._query(_ACTIVE_RUNS)}
        return {
            name: TriggerRow(name, None if enabled is None else bool(enabled), from_exact_text(cursor), next_poll_at,
                             last_poll_at, last_result, fires, polls, consecutive_errors, bool(error_alerted),
                             last_error, active.get(name, 0), last_reason)
            for (name, enabled, cursor, next_poll_at, last_poll_at, last_result, fires, polls, consecutive_errors,
                 error_alerted, last_error, last_reason) in rows
        }

    def list_rows(self) -> dict[str, tuple[Any, ...]]:
        # One query, the tuples as SQLite returns them: no record per trigger (50,000 in `list --json`).
        rows = self._query("SELECT t.name, t.enabled, t.last_poll_at, t.last_result, t.next_poll_at, coalesce(a.n, 0), "
                           "t.fires, t.consecutive_errors, t.last_reason, NULL FROM triggers t LEFT JOIN "
                           f"({_ACTIVE_RUNS}) a ON a.trigger_name = t.name", tuples=True)
        return {r[0]: r[1:] for r in rows}

    def set_enabled(self, names: Iterable[str], enabled: bool) -> None:
        with self._tx() as c:
            for n in names:
                c.execute("INSERT INTO triggers (name, enabled) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET enabled = excluded.enabled",
                          (n, int(enabled)))

    def flush_stats(self, stats: Iterable[PollStats]) -> None:
        # Counters of triggers no longer held are dropped: another process owns them now. The rows
        # are written by rowid, grouped by rowid range, FLUSH_ROWS to a transaction: each transaction
        # then touches a few pages of the table, not all of them (in poll order, 500 counters of
        # 10,000 triggers dirtied almost every page: ~4,000 WAL frames a second and long
        # checkpoints), and the state's lock is let go between transactions, so a fire recorded
        # meanwhile waits for one of them at most.
        rowids = self._rowids
        if rowids is None:
            rowids = self._load_rowids()
        held, started = self._held, self.process is not None
        shown_in: str | None = None
        shown_out: str | None = None
        rows = []
        missing = []
        for s in stats:
            name = s.name
            if started and name not in held:
                continue
            reason = s.last_reason
            if reason is not shown_in:  # most counters share one reason object: made safe once
                shown_in, shown_out = reason, _reason(reason)
            rowid = rowids.get(name)
            row = (s.last_poll_at, s.last_result, shown_out, s.next_poll_at, s.polls, s.consecutive_errors, rowid, name)
            if rowid is None:
                missing.append(row)
            else:
                rows.append(row)
        if missing:  # rows added since the rowids were read (sync_triggers, `enable` of a new name)
            rowids = self._load_rowids()
            for row in missing:
                if row[7] in rowids:
                    rows.append(row[:6] + (rowids[row[7]], row[7]))
        if not rows:
            return
        for group in _by_rowid_range(rows, FLUSH_ROWS):
            try:
                with self._tx() as c:
                    if _update_rows(c, group) != len(group):
                        raise _StaleRowids  # rolled back: nothing of this group was written
            except _StaleRowids:
                # A rowid moved (a VACUUM by another tool): by name, and the rowids read again.
                self._rowids = None
                with self._tx() as c:
                    c.executemany(_FLUSH_BY_NAME, [row[:6] + (row[7],) for row in group])
            time.sleep(0)  # the GIL, for a loop that waits for it, between transactions

    def _load_rowids(self) -> dict[str, int]:
        self._rowids = {r["name"]: r["rowid"] for r in self._query("SELECT rowid, name FROM triggers")}
        return self._rowids

    def load_kv(self, trigger: str) -> dict[str, Any]:
        return {from_exact_text(r["key"]): json.loads(r["value"])
                for r in self._query("SELECT key, value FROM trigger_kv WHERE trigger_name = ?", (trigger,))}

    def save_config_snapshot(self, config_path: str, fingerprint: str, triggers: list[dict[str, Any]]) -> None:
        from trigctl.render import list_json_parts

        parts = list_json_parts(triggers)
        with self._tx() as c:
            c.execute("INSERT OR REPLACE INTO config_snapshot (config_path, fingerprint, triggers, list_rows) VALUES (?, ?, ?, ?)",
                      (config_path, fingerprint, json.dumps(triggers), -1 if parts is None else len(parts)))
            c.execute("DELETE FROM config_snapshot_rows WHERE config_path = ?", (config_path,))
            if parts:
                rowids = dict(c.execute("SELECT name, rowid FROM triggers").fetchall())
                c.executemany("INSERT INTO config_snapshot_rows (config_path, pos, name, trigger_rowid, enabled, head, "
                              "enabled_json, mid) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                              [(config_path, pos, name, rowids.get(name), enabled, head, enabled_json, mid)
                               for pos, (name, enabled, head, enabled_json, mid) in enumerate(parts)])

    def config_snapshot(self, config_path: str, fingerprint: str) -> list[dict[str, Any]] | None:
        rows = self._query("SELECT triggers FROM config_snapshot WHERE config_path = ? AND fingerprint = ?",
                           (config_path, fingerprint))
        return json.loads(rows[0]["triggers"]) if rows else None

    def has_config_snapshot(self, config_path: str, fingerprint: str) -> bool:
        # One saved before schema 6 lacks its rows: `run` saves it again.
        return bool(self._query("SELECT 1 FROM config_snapshot WHERE config_path = ? AND fingerprint = ? "
                                "AND list_rows IS NOT NULL", (config_path, fingerprint)))

    def list_json_text(self, config_path: str, fingerprint: str, tail: str) -> str | None:
        # One query writes it: the YAML's parts as saved, the state's values (_LIST_JSON). A value
        # off that path (a time before 1970 or after 9999, an odd type, a row whose rowid moved)
        # makes its trigger's object "\0<pos>", written by the caller.
        rows = self._query("SELECT list_rows FROM config_snapshot WHERE config_path = ? AND fingerprint = ?",
                           (config_path, fingerprint), tuples=True)
        if not rows or rows[0][0] is None or rows[0][0] < 0:
            return None
        if rows[0][0] == 0:
            return "[]"
        (text,), = self._query(_LIST_JSON, (config_path, tail), tuples=True)
        return f"[{text}]"

    def load_all_kv(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for r in self._query("SELECT trigger_name, key, value FROM trigger_kv"):
            out.setdefault(r["trigger_name"], {})[from_exact_text(r["key"])] = json.loads(r["value"])
        return out

    def update_kv(self, trigger: str, updates: dict[str, Any]) -> None:
        self._fence(trigger)
        with self._tx() as c:
            self._apply_kv(c, trigger, updates)

    def _apply_kv(self, c: sqlite3.Connection, trigger: str, updates: dict[str, Any]) -> None:
        for k, v in updates.items():
            if v is None:
                c.execute("DELETE FROM trigger_kv WHERE trigger_name = ? AND key = ?", (trigger, exact_text(k)))
            else:
                c.execute("INSERT OR REPLACE INTO trigger_kv (trigger_name, key, value) VALUES (?, ?, ?)",
                          (trigger, exact_text(k), json.dumps(v)))

    # --------------------------------------------------------------------------------------- polls

    def record_fires(self, trigger, workflow, fires, stats, now, cursor, state_updates) -> list[FireResult]:
        self._fence(trigger)
        results: list[FireResult] = []
        with self._tx() as c:
            updates = dict(state_updates)
            for f in fires:
                res = self._fire_one(c, trigger, workflow, f, now)
                results.append(res)
                if res.deferred:
                    cursor = None  # offered again next poll: the cursor must not move past it
                elif f.state:
                    updates.update(f.state)
            started = sum(1 for r in results if not r.suppressed)
            c.execute(
                "UPDATE triggers SET fires = fires + ?, last_poll_at = ?, last_result = ?, last_reason = ?, next_poll_at = ?, "
                "polls = polls + ?, consecutive_errors = 0, error_alerted = 0"
                + (", cursor = ?" if cursor is not None else "")
                + " WHERE name = ?",
                (started, stats.last_poll_at, stats.last_result, _reason(stats.last_reason), stats.next_poll_at, stats.polls)
                + ((exact_text(cursor),) if cursor is not None else ())
                + (trigger,),
            )
            if updates:
                self._apply_kv(c, trigger, updates)
            # The new runs start in this transaction where there is room (the oldest queued first:
            # the claim is claim_queued's), which saves the loop a transaction per run it starts.
            room, started_at = self.claim_room() if self.claim_room is not None and started else (0, now)
            room -= len(self._claimed)
            claimed = self._claim(c, started_at, room) if room > 0 else []
            empty_at = self._queue_moment() if len(claimed) < room else None
        if empty_at is not None:
            self._queue_empty_at = empty_at  # (committed)
        if claimed:
            with self._lock:
                self._claimed.extend(claimed)
        stats.polls = 0
        return results

    def take_claimed(self) -> list[RunRow]:
        with self._lock:
            runs, self._claimed = self._claimed, []
        return runs

    def requeue_unstarted(self, run_id: int) -> bool:
        # A task's row is written before its process passes the start gate (an http: task's before
        # its request): a run without one ran nothing.
        with self._tx() as c:
            self._queue_gen += 1
            cur = c.execute("UPDATE runs SET status = 'queued', started_at = NULL, owner_pid = NULL, owner_start = NULL, "
                            "owner_process = NULL WHERE id = ? AND status = 'running' AND cancel_requested = 0 "
                            "AND NOT EXISTS (SELECT 1 FROM tasks WHERE run_id = ?)", (run_id, run_id))
            return cur.rowcount == 1

    def _fire_one(self, c: sqlite3.Connection, trigger: str, workflow: str, f: FireRequest, now: float) -> FireResult:
        """Record one fire. Dedupe is the insert's own: the partial unique index on active keys
        refuses a second holder (ON CONFLICT DO NOTHING), and a `once` key that succeeded or was
        given up is excluded by the insert's WHERE; only when nothing was inserted is the reason
        looked up, to record the duplicate."""
        ctx_json = json.dumps(f.context, sort_keys=True)
        key = f.context_hash
        attempt = 1
        if f.dedupe == "once":
            st = c.execute("SELECT failures FROM dedupe_once WHERE trigger_name = ? AND key = ?", (trigger, key)).fetchone()
            attempt = (st[0] if st else 0) + 1
        cur = c.execute(
            "INSERT INTO runs (trigger_name, workflow, status, context, context_hash, dedupe, active_key, attempt, max_attempts, "
            "rerun_of, triggered_at, queued_at) SELECT ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ? "
            "WHERE ? != 'once' OR NOT EXISTS (SELECT 1 FROM dedupe_once WHERE trigger_name = ? AND key = ? "
            "AND (succeeded_run IS NOT NULL OR given_up)) "
            "ON CONFLICT (trigger_name, active_key) WHERE active_key IS NOT NULL DO NOTHING",
            (trigger, workflow, ctx_json, key, f.dedupe, key if f.dedupe != "none" else None, attempt, f.max_attempts,
             f.rerun_of, now, now, f.dedupe, trigger, key),
        )
        if cur.rowcount == 0:
            return self._suppressed(c, trigger, f, ctx_json, now)
        self._queue_gen += 1
        run_id = cur.lastrowid
        c.execute(
            "INSERT INTO events (trigger_name, kind, context, context_hash, run_id, created_at, updated_at) "
            "VALUES (?, 'fire', ?, ?, ?, ?, ?)",
            (trigger, ctx_json, key, run_id, now, now),
        )
        return FireResult(run_id=run_id, suppressed=False)

    def _suppressed(self, c: sqlite3.Connection, trigger: str, f: FireRequest, ctx_json: str, now: float) -> FireResult:
        key = f.context_hash
        row = c.execute("SELECT id, context FROM runs WHERE trigger_name = ? AND active_key = ?", (trigger, key)).fetchone()
        if row:
            res = self._duplicate(c, trigger, f, row[0], now, f"run {row[0]} with this key is still active")
            res.deferred = row[1] != ctx_json
            return res
        st = c.execute("SELECT succeeded_run, failures FROM dedupe_once WHERE trigger_name = ? AND key = ?",
                       (trigger, key)).fetchone()
        if st and st[0] is not None:
            return self._duplicate(c, trigger, f, st[0], now, f"already succeeded in run {st[0]} (dedupe: once)")
        return self._duplicate(c, trigger, f, None, now, f"given up after {st[1] if st else '?'} failed attempts (dedupe: once)")

    def dedupe_status(self, trigger: str, key: str, dedupe: str) -> tuple[bool, str]:
        """Would a fire with this key be suppressed now? (read-only, for `trigctl poll`)"""
        return sql_dedupe_status(self._query, "?", trigger, key, dedupe)

    def enqueue_run(self, trigger: str, workflow: str, context: dict[str, Any], now: float, *, rerun_of: int | None = None,
                    dedupe: str = "none", context_hash: str | None = None, max_attempts: int = 3) -> FireResult:
        self._fence(trigger)
        request = FireRequest(context, context_hash or dedupe_hash(trigger, context, None), dedupe, max_attempts, rerun_of)
        with self._tx() as c:
            return self._fire_one(c, trigger, workflow, request, now)

    def _duplicate(self, c, trigger: str, f: FireRequest, blocking: int | None, now: float, reason: str) -> FireResult:
        updated = c.execute(
            "UPDATE events SET count = count + 1, updated_at = ? WHERE id = (SELECT id FROM events WHERE kind = 'duplicate' "
            "AND trigger_name = ? AND context_hash = ? AND run_id IS ? ORDER BY id DESC LIMIT 1)",
            (now, trigger, f.context_hash, blocking),
        ).rowcount
        if not updated:
            c.execute(
                "INSERT INTO events (trigger_name, kind, context, context_hash, run_id, error, created_at, updated_at) "
                "VALUES (?, 'duplicate', ?, ?, ?, ?, ?, ?)",
                (trigger, json.dumps(f.context, sort_keys=True), f.context_hash, blocking, safe_text(reason), now, now),
            )
        return FireResult(run_id=blocking, suppressed=True, reason=reason)

    def record_error(self, trigger: str, message: str, stats: PollStats, now: float) -> int:
        self._fence(trigger)
        message = safe_text(message, MAX_ERROR_CHARS) or ""
        with self._tx() as c:
            row = c.execute("SELECT consecutive_errors, last_error FROM triggers WHERE name = ?", (trigger,)).fetchone()
            streak = stats.consecutive_errors
            # The streak is the scheduler's in-memory count: the stored one lags by up to a flush.
            if streak > 1 and row and row[1] == message:
                # The same error again in one streak: count it on the streak's row, not a new one.
                c.execute(
                    "UPDATE events SET count = count + 1, updated_at = ? WHERE id = (SELECT max(id) FROM events "
                    "WHERE trigger_name = ? AND kind = 'error')",
                    (now, trigger),
                )
            else:
                c.execute(
                    "INSERT INTO events (trigger_name, kind, error, created_at, updated_at) VALUES (?, 'error', ?, ?, ?)",
                    (trigger, message, now, now),
                )
            c.execute(
                "UPDATE triggers SET last_poll_at = ?, last_result = 'error', next_poll_at = ?, polls = polls + ?, "
                "consecutive_errors = ?, last_error = ?, last_reason = ? WHERE name = ?",
                (stats.last_poll_at, stats.next_poll_at, stats.polls, streak, message, message, trigger),
            )
        stats.polls = 0
        stats.last_reason = message  # a later flush of these counters keeps the error's message
        return streak

    def set_error_alerted(self, trigger: str, alerted: bool) -> None:
        self._fence(trigger)
        with self._tx() as c:
            c.execute("UPDATE triggers SET error_alerted = ? WHERE name = ?", (int(alerted), trigger))

    # ---------------------------------------------------------------------------------------- runs

    _run = staticmethod(run_row)

    def claim_next_queued(self, now: float) -> RunRow | None:
        runs = self.claim_queued(now, 1)
        return runs[0] if runs else None

    def claim_queued(self, now: float, limit: int) -> list[RunRow]:
        """The oldest ``limit`` queued runs, marked running and owned by this process, in one transaction."""
        if self._queue_empty_at == (self._queue_gen, self.change_token()):
            return []
        with self._tx() as c:
            runs = self._claim(c, now, limit)
            empty_at = self._queue_moment() if len(runs) < limit else None
        if empty_at is not None:
            self._queue_empty_at = empty_at
        return runs

    def _queue_moment(self) -> tuple[int, int]:
        """Taken inside the write transaction that found the queue empty (no other writer meanwhile)."""
        return self._queue_gen, self.change_token()

    def _claim(self, c: sqlite3.Connection, now: float, limit: int) -> list[RunRow]:
        # `status IN (...)` lets SQLite use the partial index on active runs (no table scan)
        cur = c.execute("SELECT * FROM runs WHERE status IN ('queued', 'running') AND status = 'queued' ORDER BY id LIMIT ?", (limit,))
        cols = [d[0] for d in cur.description]
        rows = [dict(zip(cols, row)) for row in cur.fetchall()]
        if not rows:
            return []
        pid, start = os.getpid(), self._my_start
        owner = self.process.id if self.process is not None else None
        c.executemany("UPDATE runs SET status = 'running', started_at = ?, owner_pid = ?, owner_start = ?, owner_process = ? "
                      "WHERE id = ?", [(now, pid, start, owner, r["id"]) for r in rows])
        for r in rows:
            r.update(status="running", started_at=now, owner_pid=pid, owner_start=start, owner_process=owner)
        return [self._run(r) for r in rows]

    def task_started(self, run_id, idx, name, now, pid, pgid, proc_start) -> None:
        with self._tx() as c:
            self._task_started(c, run_id, idx, name, now, pid, pgid, proc_start)

    def task_output(self, run_id: int, idx: int, output_tail: str) -> None:
        with self._tx() as c:
            self._task_output(c, run_id, idx, output_tail)

    def task_finished(self, run_id, idx, status, exit_code, now, output_tail, attempts) -> None:
        with self._tx() as c:
            self._task_finished(c, run_id, idx, status, exit_code, now, output_tail, attempts)

    def finish_run(self, run_id: int, status: str, now: float, error: str | None = None,
                   only_if: str | None = None, take_over: bool = False) -> bool:
        """End an active run (releasing its key). With ``only_if``, only from that status (a queued
        run that the loop has just started is not cancelled behind its back). True if it ended it."""
        with self._tx() as c:
            return self._finish_run(c, run_id, status, now, error, only_if, take_over)

    def apply_run_steps(self, steps: list[tuple[str, tuple]]) -> list[Any]:
        """All in one transaction (the run threads' steps of a moment share one commit); if it
        fails, one by one, so that each step gets its own outcome."""
        if len(steps) > 1:
            try:
                with self._tx() as c:
                    return [self._STEPS[name](self, c, *args) for name, args in steps]
            except Exception:  # noqa: BLE001 - rolled back: each step again on its own, for its own error
                pass
        return super().apply_run_steps(steps)

    def _task_started(self, c, run_id, idx, name, now, pid, pgid, proc_start) -> None:
        owned, params = self._owner_clause()
        c.execute(
            "INSERT INTO tasks (run_id, idx, name, status, started_at, pid, pgid, proc_start) "
            f"SELECT ?, ?, ?, 'running', ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM runs WHERE id = ?{owned}) "
            "ON CONFLICT(run_id, idx) DO UPDATE SET status = 'running', pid = excluded.pid, pgid = excluded.pgid, "
            "proc_start = excluded.proc_start",
            (run_id, idx, name, now, pid, pgid, proc_start, run_id, *params),
        )

    def _task_output(self, c, run_id: int, idx: int, output_tail: str) -> None:
        owned, params = self._owner_clause()
        c.execute(f"UPDATE tasks SET output_tail = ? WHERE run_id = ? AND idx = ? AND status = 'running' "
                  f"AND EXISTS (SELECT 1 FROM runs WHERE id = ?{owned})",
                  (safe_text(output_tail), run_id, idx, run_id, *params))

    def _task_finished(self, c, run_id, idx, status, exit_code, now, output_tail, attempts) -> None:
        owned, params = self._owner_clause()
        c.execute(
            "UPDATE tasks SET status = ?, exit_code = ?, completed_at = ?, output_tail = ?, attempts = ?, pid = NULL, pgid = NULL "
            f"WHERE run_id = ? AND idx = ? AND EXISTS (SELECT 1 FROM runs WHERE id = ?{owned})",
            (status, exit_code, now, safe_text(output_tail), attempts, run_id, idx, run_id, *params),
        )

    def _finish_run(self, c, run_id: int, status: str, now: float, error: str | None = None,
                    only_if: str | None = None, take_over: bool = False) -> bool:
        owned, params = self._owner_clause(take_over)
        row = c.execute(f"SELECT trigger_name, context_hash, dedupe, status, max_attempts FROM runs WHERE id = ?{owned}",
                        (run_id, *params)).fetchone()
        if row is None or row[3] not in ("queued", "running") or (only_if is not None and row[3] != only_if):
            return False
        trigger, key, dedupe, _, limit = row
        # Releasing the key is part of the same statement that ends the run: it cannot leak.
        c.execute(
            "UPDATE runs SET status = ?, completed_at = ?, error = coalesce(?, error), active_key = NULL, cancel_requested = 0 "
            "WHERE id = ?",
            (status, now, safe_text(error, MAX_ERROR_CHARS), run_id),
        )
        c.execute("UPDATE tasks SET status = 'cancelled', completed_at = ?, pid = NULL, pgid = NULL "
                  "WHERE run_id = ? AND status = 'running'", (now, run_id))
        if dedupe == "once":
            if status == "succeeded":
                c.execute(
                    "INSERT INTO dedupe_once (trigger_name, key, succeeded_run) VALUES (?, ?, ?) "
                    "ON CONFLICT(trigger_name, key) DO UPDATE SET succeeded_run = excluded.succeeded_run",
                    (trigger, key, run_id),
                )
            else:
                c.execute(
                    "INSERT INTO dedupe_once (trigger_name, key, failures) VALUES (?, ?, 1) "
                    "ON CONFLICT(trigger_name, key) DO UPDATE SET failures = failures + 1",
                    (trigger, key),
                )
                c.execute(
                    "UPDATE dedupe_once SET given_up = 1 WHERE trigger_name = ? AND key = ? AND failures >= ?",
                    (trigger, key, limit),
                )
        return True

    _STEPS: dict[str, Callable[..., Any]] = {"task_started": _task_started, "task_output": _task_output,
                                              "task_finished": _task_finished, "finish_run": _finish_run}

    def request_cancel(self, run_id: int, now: float) -> str | None:
        with self._tx() as c:
            row = c.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                return None
            if row[0] == "running":
                c.execute("UPDATE runs SET cancel_requested = 1 WHERE id = ?", (run_id,))
            return row[0]

    def cancel_requested(self) -> set[int]:
        return {r["id"] for r in self._query("SELECT id FROM runs WHERE status IN ('queued', 'running') AND status = 'running' AND cancel_requested = 1")}

    def owner_alive(self, run: RunRow) -> bool:
        if self.process is not None and run.owner_process == self.process.id:
            return True
        if not run.owner_pid:
            return False
        if run.owner_start is None and run.owner_process is None:
            # Started by a trigctl before owners were recorded with their start time: the PID alone
            # may belong to anyone now (a reboot). This process holds the state: it is not alive.
            return False
        if run.owner_pid == os.getpid():
            # Us, but not this process's loop (a store opened by a test, or a run from a previous
            # store object in one process): alive only if it is this store's run.
            return run.owner_process is not None and self.process is not None and run.owner_process == self.process.id
        return process_alive(run.owner_pid, run.owner_start)

    def orphaned_runs(self) -> list[RunRow]:
        return [r for r in self.active_runs() if r.status == "running" and not self.owner_alive(r)]

    def active_runs(self) -> list[RunRow]:
        runs = [self._run(r) for r in self._query("SELECT * FROM runs WHERE status IN ('queued','running') ORDER BY id")]
        for run in runs:
            run.tasks = self._query("SELECT * FROM tasks WHERE run_id = ? ORDER BY idx", (run.id,))
        return runs

    def queued_runs(self) -> int:
        # The partial index runs_status answers it without reading a row.
        return int(self._query("SELECT count(*) AS n FROM runs WHERE status = 'queued'")[0]["n"])

    # ------------------------------------------------------------------------------------- reading

    def history(self, trigger, limit, statuses, since) -> list[HistoryEntry]:
        where, params = ["1 = 1"], []
        if trigger:
            where.append("e.trigger_name = ?")
            params.append(trigger)
        if since is not None:
            where.append("e.updated_at >= ?")
            params.append(since)
        if statuses:
            kinds = [s for s in statuses if s in ("duplicate", "error")]
            run_statuses = [s for s in statuses if s not in ("duplicate", "error")]
            clause = []
            if run_statuses:
                clause.append(f"(e.kind = 'fire' AND r.status IN ({','.join('?' * len(run_statuses))}))")
                params.extend(run_statuses)
            if kinds:
                clause.append(f"e.kind IN ({','.join('?' * len(kinds))})")
                params.extend(kinds)
            where.append("(" + " OR ".join(clause) + ")")
        params.append(limit)
        rows = self._query(
            "SELECT e.*, r.status AS run_status, r.started_at AS run_started, r.completed_at AS run_completed, r.error AS run_error "
            "FROM events e LEFT JOIN runs r ON e.kind = 'fire' AND r.id = e.run_id "
            f"WHERE {' AND '.join(where)} ORDER BY e.id DESC LIMIT ?",
            params,
        )
        return [history_row(r) for r in rows]

    def get_run(self, run_id: int) -> RunRow | None:
        rows = self._query("SELECT * FROM runs WHERE id = ?", (run_id,))
        if not rows:
            return None
        run = self._run(rows[0])
        run.tasks = self._query("SELECT * FROM tasks WHERE run_id = ? ORDER BY idx", (run_id,))
        return run

    def count_prunable(self, before: float) -> int:
        rows = self._query(f"SELECT COUNT(*) AS n FROM events WHERE updated_at < ? AND {PRUNABLE_EVENT}", (before,))
        return int(rows[0]["n"])

    def prune(self, before: float) -> int:
        """Delete old history in batches, one short transaction each, so a running loop never waits
        long for the write lock (a single DELETE of millions of rows held it for seconds)."""
        statements = (
            (f"DELETE FROM events WHERE id IN (SELECT id FROM events WHERE updated_at < ? AND {PRUNABLE_EVENT} LIMIT ?)", True),
            ("DELETE FROM tasks WHERE run_id IN (SELECT id FROM runs WHERE completed_at < ? "
             "AND status NOT IN ('queued','running') AND id IN (SELECT run_id FROM tasks) LIMIT ?)", False),
            ("DELETE FROM runs WHERE id IN (SELECT id FROM runs WHERE completed_at < ? "
             "AND status NOT IN ('queued','running') LIMIT ?)", False),
        )
        events = 0
        for sql, counted in statements:
            while True:
                with self._tx() as c:
                    n = c.execute(sql, (before, PRUNE_BATCH)).rowcount
                if counted:
                    events += n
                if n == 0:
                    break
        return events

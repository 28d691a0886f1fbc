"""The PostgreSQL state: several `trigctl run` processes, on several hosts, share one database.

The same contract as the SQLite store (:class:`trigctl.store.base.Store`), plus what sharing needs:

- **Processes.** :meth:`start_process` inserts a row with a fresh id; :meth:`heartbeat` keeps it
  alive. A process whose heartbeat is older than its lease period is dead: a survivor marks it so
  (:meth:`reap_dead`) and, in the same transaction, ends its running runs as ``interrupted``.
- **Leases with fencing tokens, on the database's clock.** A trigger row carries its ``holder``
  and a ``token`` that grows each time the trigger changes hands; the holder's process row carries
  ``leases_until``, computed with the database's ``now()`` (host clocks never decide who holds
  what). A lease is valid while its holder is alive and ``leases_until`` is ahead: renewing all of
  a process's leases is one row, whatever the number of triggers. Every write about a trigger
  locks its row and checks holder, token and expiry in the write's own transaction; a stalled
  former holder writes nothing (:class:`LeaseLost`). Leases are taken with ``FOR UPDATE SKIP
  LOCKED``, so processes never wait for each other's rows.
- **Dedupe** is the partial unique index on active keys, inside the insert that records a fire
  (``ON CONFLICT DO NOTHING``: a duplicate row, never an exception), as with SQLite.
- **Connections.** One for the loop and the runs, one for leases and heartbeats (a slow write of
  the loop never delays a renewal). A lost connection is reopened and the transaction retried with
  backoff, logged once; a fenced write is retried only while its lease is still valid locally.

Times of runs and history are the caller's (the loop's wall clock), as with SQLite; lease and
heartbeat times are the database's.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from trigctl.procs import proc_start_time
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
    Store,
    TriggerRow,
    dedupe_hash,
    history_row,
    run_row,
    safe_text,
    sql_dedupe_status,
)

try:
    import psycopg
except ImportError:  # pragma: no cover - the extra is not installed: open_store says so
    psycopg = None  # type: ignore[assignment]

log = logging.getLogger("trigctl.store")

MAX_ERROR_CHARS = 4000
PRUNE_BATCH = 5_000
DEFAULT_LEASE = 10.0  # seconds: a dead process's triggers move within this (plus one renewal)
RETRY_FOR = 15.0  # seconds an unfenced write keeps retrying a lost connection (as SQLite's busy timeout)
RUN_END_RETRY = 600.0  # seconds a run's worker keeps trying to record the run's end
CONNECT_TIMEOUT = 5  # seconds
SCHEMA_LOCK = 0x7472_6967  # advisory lock key of the migrations ("trig")

MIGRATIONS: list[str] = [
    # 1: the first schema (SQLite's five migrations, plus processes, leases and run placement)
    """
    CREATE TABLE triggers (
        name TEXT PRIMARY KEY,
        enabled BOOLEAN,
        cursor BYTEA,
        next_poll_at DOUBLE PRECISION,
        last_poll_at DOUBLE PRECISION,
        last_result TEXT,
        fires BIGINT NOT NULL DEFAULT 0,
        polls BIGINT NOT NULL DEFAULT 0,
        consecutive_errors INTEGER NOT NULL DEFAULT 0,
        error_alerted BOOLEAN NOT NULL DEFAULT false,
        last_error TEXT,
        last_reason TEXT,
        holder TEXT,                               -- the process holding its lease (valid: see processes)
        token BIGINT NOT NULL DEFAULT 0            -- grows each time the trigger changes hands
    ) WITH (fillfactor = 70);                      -- room for HOT updates: counters are rewritten every second
    CREATE INDEX triggers_holder ON triggers (holder) WHERE holder IS NOT NULL;
    CREATE TABLE trigger_kv (
        trigger_name TEXT NOT NULL,
        key BYTEA NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (trigger_name, key)
    );
    CREATE TABLE processes (
        id TEXT PRIMARY KEY,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        proc_start TEXT,
        labels TEXT NOT NULL DEFAULT '[]',
        started_at DOUBLE PRECISION NOT NULL,
        lease_seconds DOUBLE PRECISION NOT NULL,
        heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        leases_until TIMESTAMPTZ,                  -- its leases are valid until then (renewed while its loop advances)
        status TEXT NOT NULL DEFAULT 'alive',      -- alive | stopped | dead
        ended_at TIMESTAMPTZ,
        ended_by TEXT                              -- the process that declared it dead
    );
    CREATE INDEX processes_alive ON processes (heartbeat_at) WHERE status = 'alive';
    CREATE TABLE runs (
        id BIGSERIAL PRIMARY KEY,
        trigger_name TEXT NOT NULL,
        workflow TEXT NOT NULL,
        status TEXT NOT NULL,
        context TEXT NOT NULL,
        context_hash TEXT,
        dedupe TEXT NOT NULL,
        active_key TEXT,
        attempt INTEGER NOT NULL DEFAULT 1,
        max_attempts INTEGER NOT NULL DEFAULT 3,
        rerun_of BIGINT,
        triggered_at DOUBLE PRECISION NOT NULL,
        queued_at DOUBLE PRECISION NOT NULL,
        started_at DOUBLE PRECISION,
        completed_at DOUBLE PRECISION,
        error TEXT,
        owner_pid INTEGER,
        owner_start TEXT,
        owner_process TEXT,
        cancel_requested BOOLEAN NOT NULL DEFAULT false,
        fired_by TEXT,                             -- the process that queued it (runs there by default)
        run_on TEXT NOT NULL DEFAULT 'poller'      -- poller | any
    );
    CREATE UNIQUE INDEX runs_active_key ON runs (trigger_name, active_key) WHERE active_key IS NOT NULL;
    CREATE INDEX runs_active ON runs (status) WHERE status IN ('queued', 'running');
    CREATE INDEX runs_trigger_key ON runs (trigger_name, context_hash);
    CREATE INDEX runs_completed ON runs (completed_at);
    CREATE TABLE tasks (
        run_id BIGINT NOT NULL,
        idx INTEGER NOT NULL,
        name TEXT NOT NULL,
        status TEXT NOT NULL,
        exit_code INTEGER,
        attempts INTEGER NOT NULL DEFAULT 1,
        started_at DOUBLE PRECISION,
        completed_at DOUBLE PRECISION,
        output_tail TEXT,
        pid INTEGER,
        pgid INTEGER,
        proc_start TEXT,
        PRIMARY KEY (run_id, idx)
    );
    CREATE TABLE events (
        id BIGSERIAL PRIMARY KEY,
        trigger_name TEXT NOT NULL,
        kind TEXT NOT NULL,
        context TEXT,
        context_hash TEXT,
        run_id BIGINT,
        error TEXT,
        count INTEGER NOT NULL DEFAULT 1,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX events_trigger_id ON events (trigger_name, id);
    CREATE INDEX events_time ON events (updated_at);
    CREATE INDEX events_dup ON events (trigger_name, context_hash, run_id) WHERE kind = 'duplicate';
    CREATE TABLE dedupe_once (
        trigger_name TEXT NOT NULL,
        key TEXT NOT NULL,
        succeeded_run BIGINT,
        failures INTEGER NOT NULL DEFAULT 0,
        given_up BOOLEAN NOT NULL DEFAULT false,
        PRIMARY KEY (trigger_name, key)
    );
    CREATE TABLE config_snapshot (
        config_path TEXT PRIMARY KEY,
        fingerprint TEXT NOT NULL,
        triggers TEXT NOT NULL
    );
    CREATE TABLE change_feed (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        seq BIGINT NOT NULL              -- moves with every enable/disable and cancel request
    );
    INSERT INTO change_feed VALUES (1, 0);
    """,
]



class Unreachable(StateError):
    """The database could not be reached (within the retries): nothing was written."""


def _valid(holder: str) -> str:
    """SQL: the lease held by process ``holder`` (an SQL expression) is valid now."""
    return (f"EXISTS (SELECT 1 FROM processes p WHERE p.id = {holder} AND p.status = 'alive' "
            "AND p.leases_until > now())")


def shown_url(url: str) -> str:
    """The URL with its password masked (it goes into logs and error messages)."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)


def _b(text: str | None) -> bytes | None:
    """A string stored byte-exact (cursors, state keys: any Python string, lone surrogates too)."""
    return None if text is None else text.encode("utf-8", "surrogatepass")


def _s(value: Any) -> Any:
    if isinstance(value, (bytes, memoryview)):
        return bytes(value).decode("utf-8", "surrogatepass")
    return value


def _t(text: str | None) -> str | None:
    """Text for a TEXT column: PostgreSQL refuses NULs and lone surrogates (names from a YAML file)."""
    return safe_text(text)


@dataclass(frozen=True)
class ProcessRow:
    """A process as `trigctl processes` shows it."""

    id: str
    host: str
    pid: int
    labels: tuple[str, ...]
    started_at: float
    heartbeat_at: float  # database time
    heartbeat_age: float  # seconds before the database's now()
    lease_seconds: float
    status: str  # alive | stopped | dead
    leases: int
    running_runs: int
    ended_by: str | None = None


@dataclass(frozen=True)
class Reaped:
    """A run of a dead process that a survivor ended as interrupted (and maybe reran)."""

    run_id: int
    trigger: str
    workflow: str
    process: str
    action: str  # "marked", "rerun as run N", "not rerun: ..."
    rerun_id: int | None = None
    tasks: tuple[dict[str, Any], ...] = ()
    host: str = ""


class _Conn:
    """One connection with its lock, reopened when lost."""

    def __init__(self, store: PostgresStore, role: str, settings: dict[str, str]):
        self.store = store
        self.role = role
        self.settings = settings
        self.lock = threading.RLock()
        self.conn: Any = None
        self.broken_since: float | None = None

    def get(self) -> Any:
        if self.conn is None or self.conn.closed or self.conn.broken:
            self.conn = self.store._connect(self.settings)
        return self.conn

    def drop(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:  # noqa: BLE001 - a broken connection may fail to close
                pass
        self.conn = None


class PostgresStore(Store):
    shared = True  # several processes share this state: leases are taken by trigctl.scaleout

    def __init__(self, url: str, *, readonly: bool = False, lease_seconds: float = DEFAULT_LEASE):
        if psycopg is None:
            raise StateError("PostgreSQL state needs psycopg: install trigctl[postgres]")
        self.url = url
        self.path = shown_url(url)
        self.readonly = readonly
        self.lease_seconds = float(lease_seconds)
        self.process: ProcessInfo | None = None
        self._held: dict[str, tuple[int, float]] = {}  # trigger -> (token, local monotonic deadline)
        self._held_lock = threading.Lock()
        self._deadline = 0.0  # local monotonic time the leases lapse (last renewal sent + the lease)
        self._change_seq: int | None = None
        self._start: str | None = None
        self._logged_loss = False
        self._closed = False
        self.run_on_any: frozenset[str] = frozenset()
        self.claim_failed = False  # workflows of this process's YAML with run_on: any
        # A transaction of trigctl never waits for its client: one left open longer than half a lease
        # is a stopped process (SIGSTOP, a frozen VM) holding row locks; the server ends it, so that
        # the others can declare it dead and take its triggers.
        idle = f"{max(1000, int(self.lease_seconds * 500))}ms"
        self._main = _Conn(self, "main", {"idle_in_transaction_session_timeout": idle})
        # Runs record their tasks and ends on a connection of their own: a burst of fires recorded by
        # the loop does not hold them up (PostgreSQL, unlike SQLite, has no single writer lock).
        self._runs = _Conn(self, "runs", {"idle_in_transaction_session_timeout": idle})
        # Renewals must never wait long: a statement that cannot finish within a third of the
        # lease is abandoned (and retried at the next renewal) rather than let the lease lapse.
        lease_ms = str(max(500, int(self.lease_seconds * 1000 / 3)))
        self._lease = _Conn(self, "lease", {"idle_in_transaction_session_timeout": idle,
                                            "statement_timeout": lease_ms, "lock_timeout": lease_ms})
        self._with(self._main, self._migrate, retry_for=0)

    # ------------------------------------------------------------------------------------ plumbing

    def _connect(self, settings: dict[str, str]) -> Any:
        try:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT,
                                   application_name="trigctl")
            for k, v in settings.items():
                conn.execute(f"SET {k} = '{v}'")
            return conn
        except psycopg.Error as e:
            raise Unreachable(f"cannot connect to the PostgreSQL state {self.path}: {self._first_line(e)}") from None

    @staticmethod
    def _first_line(e: BaseException) -> str:
        text = str(e).strip().splitlines()
        return text[0] if text else type(e).__name__

    def _with(self, which: _Conn, fn: Callable[[Any], Any], *, tx: bool = True, retry_for: float = RETRY_FOR,
              until: float | None = None) -> Any:
        """``fn(cursor)`` in one transaction (or none, ``tx=False``) on ``which`` connection. A lost
        connection is reopened and ``fn`` run again with backoff, for ``retry_for`` seconds (or until
        the monotonic ``until``); the first loss is logged once, and so is the recovery."""
        deadline = until if until is not None else time.monotonic() + retry_for
        delay = 0.05
        while True:
            with which.lock:
                try:
                    conn = which.get()
                    if tx:
                        with conn.transaction(), conn.cursor() as cur:
                            result = fn(cur)
                    else:
                        with conn.cursor() as cur:
                            result = fn(cur)
                    if which.broken_since is not None:
                        log.warning("state: the connection to PostgreSQL is back (%s, after %.1fs)", which.role,
                                    time.monotonic() - which.broken_since)
                        which.broken_since = None
                    return result
                except LeaseLost:
                    raise
                except StateError as e:  # cannot connect at all
                    error: BaseException = e
                    which.drop()
                except psycopg.Error as e:  # a lost connection (see _is_connection_loss) is retried
                    if not self._is_connection_loss(which, e):
                        raise StateError(f"state {self.path}: {self._first_line(e)}") from None
                    error = e
                    which.drop()
            now = time.monotonic()
            if now + delay > deadline or self._closed:
                if isinstance(error, StateError):
                    raise error
                raise Unreachable(f"state {self.path}: no connection to PostgreSQL ({self._first_line(error)})")
            if which.broken_since is None:
                which.broken_since = now
                log.warning("state: lost the connection to PostgreSQL (%s: %s); retrying with backoff", which.role,
                            self._first_line(error))
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    @staticmethod
    def _is_connection_loss(which: _Conn, e: BaseException) -> bool:
        conn = which.conn
        if conn is None or conn.closed or conn.broken:
            return True
        sqlstate = getattr(e, "sqlstate", None) or ""
        # 57P01 admin shutdown (pg_terminate_backend), 08xxx connection exceptions; 25P03 and 57P05:
        # the server ended the session for idling in a transaction (a process stopped inside one:
        # SIGSTOP, a frozen VM) or at all
        return sqlstate.startswith("08") or sqlstate in ("57P01", "57P02", "57P03", "25P03", "57P05")

    def _tx(self, fn: Callable[[Any], Any], *, fence: str | None = None) -> Any:
        """A write on the main connection; with ``fence``, only while this process holds that
        trigger (checked locally first, then in the transaction itself)."""
        if fence is None or self.process is None:
            return self._with(self._main, fn)
        held = self._held.get(fence)
        if held is None or time.monotonic() >= held[1]:
            raise LeaseLost(f"trigger {fence}: this process does not hold its lease; nothing recorded")
        token = held[0]

        def fenced(c):
            self._check_lease(c, fence, token)
            return fn(c)

        try:
            return self._with(self._main, fenced, until=held[1])
        except Unreachable as e:
            # The database stayed away until the lease lapsed: the trigger is not ours to write any
            # more (the loop stops polling it; the lease keeper takes it again when the database is back).
            raise LeaseLost(f"trigger {fence}: its lease lapsed while the database was unreachable ({e}); "
                            "nothing recorded") from None

    def _check_lease(self, c, trigger: str, token: int) -> None:
        me = self.process.id if self.process else None
        c.execute("SELECT 1 FROM triggers WHERE name = %s AND holder = %s AND token = %s AND " + _valid("%s") +
                  " FOR UPDATE", (trigger, me, token, me))
        if c.fetchone() is None:
            with self._held_lock:
                self._held.pop(trigger, None)
            raise LeaseLost(f"trigger {trigger}: its lease was lost (another process holds it now); nothing recorded")

    def _query(self, sql: str, params: Iterable[Any] = (), which: _Conn | None = None) -> list[dict[str, Any]]:
        def q(c):
            c.execute(sql, tuple(params))
            if c.description is None:
                return []
            cols = [d.name for d in c.description]
            return [dict(zip(cols, row)) for row in c.fetchall()]

        return self._with(which or self._main, q, tx=False)

    def _migrate(self, c) -> None:
        c.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        c.execute("SELECT to_regclass('trigctl_schema') IS NOT NULL, to_regclass('runs') IS NOT NULL, "
                  "to_regclass('triggers') IS NOT NULL")
        has_version, has_runs, has_triggers = c.fetchone()
        version = 0
        if has_version:
            c.execute("SELECT version FROM trigctl_schema")
            row = c.fetchone()
            version = row[0] if row else 0
        elif has_runs or has_triggers:
            raise StateError(f"{self.path} holds tables of another program (runs, triggers) and no trigctl schema; "
                             "give trigctl a database (or a search_path schema) of its own")
        if version > len(MIGRATIONS):
            raise StateError(f"state {self.path} has schema version {version}, newer than this trigctl knows "
                             f"({len(MIGRATIONS)}); upgrade trigctl")
        if version == len(MIGRATIONS):
            return
        if not has_version:
            c.execute("CREATE TABLE trigctl_schema (version INTEGER NOT NULL)")
            c.execute("INSERT INTO trigctl_schema VALUES (0)")
        for script in MIGRATIONS[version:]:
            c.execute(script)
        c.execute("UPDATE trigctl_schema SET version = %s", (len(MIGRATIONS),))

    @property
    def _me(self) -> str | None:
        return self.process.id if self.process is not None else None

    @property
    def _my_start(self) -> str | None:
        if self._start is None:
            self._start = proc_start_time(os.getpid())
        return self._start

    # ----------------------------------------------------------------------------------- lifecycle

    def close(self) -> None:
        if self._closed:
            return
        if self.process is not None:
            me = self.process.id
            try:
                def stop(c):
                    c.execute("UPDATE triggers SET holder = NULL WHERE holder = %s", (me,))
                    # Its queued runs go to whoever holds their trigger next (as a dead process's do).
                    c.execute("UPDATE runs SET fired_by = NULL WHERE status = 'queued' AND fired_by = %s", (me,))
                    c.execute("UPDATE processes SET status = 'stopped', ended_at = now() WHERE id = %s AND status = 'alive'",
                              (me,))
                self._with(self._lease, stop, retry_for=2.0)
            except StateError:
                pass  # its heartbeat stops: the others find it dead after one lease
        self._closed = True
        with self._held_lock:
            self._held.clear()
        for conn in (self._main, self._runs, self._lease):
            with conn.lock:
                conn.drop()

    def start_process(self, labels: Iterable[str] = ()) -> ProcessInfo:
        info = ProcessInfo(id=uuid.uuid4().hex, pid=os.getpid(), host=socket.gethostname(), started_at=time.time(),
                           labels=tuple(labels))

        def insert(c):
            c.execute("INSERT INTO processes (id, host, pid, proc_start, labels, started_at, lease_seconds, leases_until) "
                      "VALUES (%s, %s, %s, %s, %s, %s, %s, now() + make_interval(secs => %s))",
                      (info.id, _t(info.host), info.pid, self._my_start, json.dumps(list(info.labels)), info.started_at,
                       self.lease_seconds, self.lease_seconds))
        sent = time.monotonic()
        self._with(self._lease, insert)
        self._deadline = sent + self.lease_seconds
        self.process = info
        return info

    def heartbeat(self) -> tuple[bool, str | None]:
        """Keep this process alive. (False, who) if another process has declared it dead."""
        me = self._me

        def beat(c):
            c.execute("UPDATE processes SET heartbeat_at = now() WHERE id = %s AND status = 'alive' RETURNING 1", (me,))
            if c.fetchone():
                return True, None
            c.execute("SELECT status, ended_by FROM processes WHERE id = %s", (me,))
            row = c.fetchone()
            return False, (row[1] if row else None)

        return self._with(self._lease, beat)

    def live_processes(self) -> int:
        """How many processes are alive (heartbeat within their lease), this one included."""
        rows = self._query("SELECT count(*) AS n FROM processes WHERE status = 'alive' "
                           "AND heartbeat_at > now() - make_interval(secs => lease_seconds)", which=self._lease)
        return int(rows[0]["n"])

    def live_lease_counts(self) -> dict[str, int]:
        """Each live process (heartbeat within its lease), this one included: how many triggers it holds."""
        rows = self._query("SELECT p.id, (SELECT count(*) FROM triggers t WHERE t.holder = p.id) AS n FROM processes p "
                           "WHERE p.status = 'alive' AND p.heartbeat_at > now() - make_interval(secs => p.lease_seconds)",
                           which=self._lease)
        return {r["id"]: int(r["n"]) for r in rows}

    def loop_alive(self) -> bool | None:
        """Any `trigctl run` process with a heartbeat within its lease (for `list`)."""
        return any(p.heartbeat_age < p.lease_seconds for p in self.processes())

    def processes(self, include_ended: bool = False) -> list[ProcessRow]:
        rows = self._query(
            "SELECT p.*, extract(epoch FROM p.heartbeat_at) AS hb, extract(epoch FROM now() - p.heartbeat_at) AS age, "
            "(SELECT count(*) FROM triggers t WHERE t.holder = p.id AND p.leases_until > now()) AS leases, "
            "(SELECT count(*) FROM runs r WHERE r.owner_process = p.id AND r.status = 'running') AS running "
            "FROM processes p " + ("" if include_ended else "WHERE p.status = 'alive' ") + "ORDER BY p.started_at")
        return [ProcessRow(id=r["id"], host=r["host"], pid=r["pid"], labels=tuple(json.loads(r["labels"])),
                           started_at=r["started_at"], heartbeat_at=float(r["hb"]), heartbeat_age=float(r["age"]),
                           lease_seconds=r["lease_seconds"], status=r["status"], leases=int(r["leases"]),
                           running_runs=int(r["running"]), ended_by=r["ended_by"]) for r in rows]

    # -------------------------------------------------------------------------------------- leases

    def acquire_triggers(self, names: Iterable[str], now: float, limit: int | None = None) -> dict[str, Lease]:
        """Take up to ``limit`` of ``names`` that no live process holds (free, expired, or held by a
        process that stopped or is dead); return every lease held now."""
        wanted = [n for n in names if n not in self._held]
        if self.process is None or not wanted or limit == 0:
            return self.leases()
        me, lease = self.process.id, self.lease_seconds

        def take(c):
            c.execute(
                "WITH c AS (SELECT name FROM triggers t WHERE name = ANY(%s) AND (holder IS NULL OR "
                "(holder <> %s AND NOT " + _valid("t.holder") + ")) AND " + _valid("%s") +
                " ORDER BY name LIMIT %s FOR UPDATE SKIP LOCKED) "
                "UPDATE triggers t SET holder = %s, token = t.token + 1 FROM c WHERE t.name = c.name RETURNING t.name, t.token",
                (wanted, me, me, limit, me))
            return c.fetchall()

        rows = self._with(self._lease, take, retry_for=lease / 3)
        deadline = self._deadline  # valid as long as this process's leases_until, renewed as a whole
        with self._held_lock:
            for name, token in rows:
                self._held[name] = (token, deadline)
        return self.leases()

    def leases(self) -> dict[str, Lease]:
        with self._held_lock:
            return {n: Lease(n, tok, None) for n, (tok, _) in self._held.items()}

    def renew_leases(self, now: float) -> dict[str, Lease]:
        """Extend every lease this process holds (one statement); a lease another process took is
        gone from what is returned. The local deadline is the time the request was sent plus the
        lease, which is never later than the database's expiry."""
        if self.process is None:
            return {}
        me, lease = self.process.id, self.lease_seconds
        started = time.monotonic()

        def renew(c):
            c.execute("UPDATE processes SET leases_until = now() + make_interval(secs => %s) WHERE id = %s "
                      "AND status = 'alive' RETURNING 1", (lease, me))
            if c.fetchone() is None:
                return []  # declared dead: nothing is ours
            c.execute("SELECT name, token FROM triggers WHERE holder = %s", (me,))
            return c.fetchall()

        rows = self._with(self._lease, renew, retry_for=lease / 3)
        deadline = started + lease
        self._deadline = deadline
        with self._held_lock:
            current = {name: token for name, token in rows}
            self._held = {n: (tok, deadline) for n, tok in current.items()}
        return self.leases()

    def release_triggers(self, names: Iterable[str]) -> None:
        names = list(names)
        with self._held_lock:
            for n in names:
                self._held.pop(n, None)
        if self.process is None or not names:
            return
        me = self.process.id

        def release(c):
            c.execute("UPDATE triggers SET holder = NULL WHERE holder = %s AND name = ANY(%s)", (me, names))
        try:
            self._with(self._lease, release, retry_for=self.lease_seconds / 3)
        except StateError:
            pass  # the leases expire by themselves

    def drop_all_leases_locally(self) -> list[str]:
        """Forget every lease without a round trip (the local deadline passed: stop writing now)."""
        with self._held_lock:
            names = list(self._held)
            self._held.clear()
        return names

    def holds(self, trigger: str) -> bool:
        if self.process is None:
            return True
        held = self._held.get(trigger)
        return held is not None and time.monotonic() < held[1]

    def lease_deadline(self) -> float | None:
        """The monotonic time the leases held lapse unless renewed (None: none held)."""
        with self._held_lock:
            return min((d for _, d in self._held.values()), default=None)

    def free_triggers(self, names: Iterable[str]) -> list[str]:
        """Those of ``names`` that no process holds (never held, released, or expired)."""
        names = list(names)
        if not names:
            return []
        return [r["name"] for r in self._query(
            "SELECT name FROM triggers t WHERE name = ANY(%s) AND (holder IS NULL OR NOT " + _valid("t.holder") + ")",
            (names,), which=self._lease)]

    def notifications(self, channel: str, stop: threading.Event):
        """Yield each NOTIFY on ``channel`` (on a connection of its own) until ``stop`` is set; a
        lost connection raises StateError (the caller reconnects)."""
        try:
            conn = self._connect({})
        except StateError:
            raise
        try:
            conn.execute(f"LISTEN {channel}")
            while not stop.is_set():
                for _ in conn.notifies(timeout=1.0, stop_after=1):
                    yield True
        except psycopg.Error as e:
            raise StateError(f"state {self.path}: {self._first_line(e)}") from None
        finally:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - a broken connection may fail to close
                pass

    def next_foreign_expiry(self, names: Iterable[str]) -> float | None:
        """Seconds until the soonest lease of another process on one of ``names`` lapses (None: none held)."""
        names = list(names)
        if not names:
            return None
        rows = self._query("SELECT extract(epoch FROM min(p.leases_until) - now()) AS s FROM processes p WHERE "
                           "p.status = 'alive' AND p.id IS DISTINCT FROM %s AND p.leases_until > now() AND EXISTS "
                           "(SELECT 1 FROM triggers t WHERE t.holder = p.id AND t.name = ANY(%s))",
                           (self._me, names), which=self._lease)
        value = rows[0]["s"] if rows else None
        return None if value is None else float(value)

    def holders(self) -> dict[str, str]:
        """Trigger -> the process holding its lease now (for `list`)."""
        return {r["name"]: r["holder"] for r in self._query(
            "SELECT name, holder FROM triggers t WHERE holder IS NOT NULL AND " + _valid("t.holder"))}

    # ---------------------------------------------------------------------------- dead processes

    def reap_dead(self, policy: Callable[[RunRow, int], tuple[bool, int]] | None = None) -> list[Reaped]:
        """Declare dead every process whose heartbeat is older than its lease and, in the same
        transaction, end its running runs (and any left by a stopped process) as interrupted, free
        its leases and hand its queued runs to whoever holds their trigger next. ``policy(run,
        chain)`` says whether to rerun a run (and its max_attempts); ``chain`` is how many times in
        a row it was interrupted. Only dead processes' runs are touched."""
        me = self._me

        def reap(c) -> list[Reaped]:
            c.execute("UPDATE processes SET status = 'dead', ended_at = now(), ended_by = %s WHERE status = 'alive' "
                      "AND id IS DISTINCT FROM %s AND heartbeat_at < now() - make_interval(secs => lease_seconds) "
                      "RETURNING id", (me, me))
            dead = [r[0] for r in c.fetchall()]
            if dead:
                # Rows a stopped process still has locked are skipped: its leases are invalid anyway
                # (it is dead), and they are freed once the server ends its open transaction.
                c.execute("UPDATE triggers SET holder = NULL WHERE name IN (SELECT name FROM triggers WHERE "
                          "holder = ANY(%s) FOR UPDATE SKIP LOCKED)", (dead,))
                c.execute("UPDATE runs SET fired_by = NULL WHERE id IN (SELECT id FROM runs WHERE status = 'queued' "
                          "AND fired_by = ANY(%s) FOR UPDATE SKIP LOCKED)", (dead,))
            c.execute(
                "SELECT r.*, p.host AS owner_host FROM runs r LEFT JOIN processes p ON p.id = r.owner_process "
                "WHERE r.status = 'running' AND (p.id IS NULL OR p.status <> 'alive') ORDER BY r.id "
                "FOR UPDATE OF r SKIP LOCKED")
            cols = [d.name for d in c.description]
            orphans = [dict(zip(cols, row)) for row in c.fetchall()]
            out: list[Reaped] = []
            now = time.time()
            for r in orphans:
                run = self._run(r)
                c.execute("SELECT * FROM tasks WHERE run_id = %s ORDER BY idx", (run.id,))
                tcols = [d.name for d in c.description]
                tasks = tuple(dict(zip(tcols, t)) for t in c.fetchall())
                self._finish(c, run.id, "interrupted", now, "interrupted: its trigctl process died while the run was active")
                chain = self._chain(c, run)
                rerun, max_attempts = policy(run, chain) if policy is not None else (False, 3)
                action, rerun_id = "marked", None
                if rerun:
                    req = FireRequest(run.context, run.context_hash or dedupe_hash(run.trigger_name, run.context, None),
                                      run.dedupe, max_attempts, run.id)
                    res = self._fire_one(c, run.trigger_name, run.workflow, req, now, fired_by=None)
                    if res.suppressed:
                        action = f"not rerun: {res.reason}"
                    else:
                        action, rerun_id = f"rerun as run {res.run_id}", res.run_id
                elif policy is not None and chain >= 3:
                    action = f"not rerun: interrupted {chain} times in a row"
                out.append(Reaped(run.id, run.trigger_name, run.workflow, run.owner_process or "", action, rerun_id,
                                  tasks, r.get("owner_host") or ""))
            return out

        return self._with(self._lease, reap, retry_for=self.lease_seconds / 3)

    def _chain(self, c, run: RunRow) -> int:
        n, current = 1, run.rerun_of
        while current is not None and n < 10:
            c.execute("SELECT rerun_of, status FROM runs WHERE id = %s", (current,))
            row = c.fetchone()
            if row is None or row[1] != "interrupted":
                break
            n += 1
            current = row[0]
        return n

    # ------------------------------------------------------------------------------------ triggers

    def change_token(self) -> int:
        return int(self._query("SELECT seq FROM change_feed WHERE id = 1")[0]["seq"])

    def changes(self) -> Changes | None:
        try:
            seq = int(self._with(self._main, lambda c: c.execute("SELECT seq FROM change_feed WHERE id = 1").fetchone()[0],
                                 tx=False, retry_for=0.5))
        except StateError:
            return None  # the database is away (said once in the log): looked at again in a quarter second
        if seq == self._change_seq:
            return None
        self._change_seq = seq
        enabled = {r["name"]: r["enabled"] for r in self._query("SELECT name, enabled FROM triggers")}
        cancel = {r["id"] for r in self._query(
            "SELECT id FROM runs WHERE status IN ('queued', 'running') AND status = 'running' AND cancel_requested")}
        return Changes(enabled=enabled, cancel_requested=frozenset(cancel))

    def sync_triggers(self, names: Iterable[str]) -> None:
        names = list(names)
        if not names:
            return

        def sync(c):
            c.execute("INSERT INTO triggers (name) SELECT unnest(%s::text[]) ON CONFLICT (name) DO NOTHING", (names,))
        self._tx(sync)

    def trigger_rows(self, names: Iterable[str] | None = None) -> dict[str, TriggerRow]:
        where, params = "", ()  # type: tuple[str, tuple[Any, ...]]
        if names is not None:
            where, params = " WHERE name = ANY(%s)", (list(names),)
        rows = self._query("SELECT t.*, " + _valid("t.holder") + " AS leased FROM triggers t" + where, params)
        active = {r["trigger_name"]: r["n"] for r in self._query(
            "SELECT trigger_name, count(*) AS n FROM runs WHERE status IN ('queued','running') GROUP BY trigger_name")}
        return {
            r["name"]: TriggerRow(
                name=r["name"], enabled=r["enabled"], cursor=_s(r["cursor"]), next_poll_at=r["next_poll_at"],
                last_poll_at=r["last_poll_at"], last_result=r["last_result"], fires=r["fires"], polls=r["polls"],
                consecutive_errors=r["consecutive_errors"], error_alerted=r["error_alerted"], last_error=r["last_error"],
                last_reason=r["last_reason"], active_runs=active.get(r["name"], 0),
                holder=r["holder"] if r["leased"] else None,
            )
            for r in rows
        }

    def set_enabled(self, names: Iterable[str], enabled: bool) -> None:
        names = list(names)

        def flip(c):
            c.execute("INSERT INTO triggers (name, enabled) SELECT unnest(%s::text[]), %s "
                      "ON CONFLICT (name) DO UPDATE SET enabled = excluded.enabled", (names, enabled))
            c.execute("UPDATE change_feed SET seq = seq + 1 WHERE id = 1")
        self._tx(flip)

    def flush_stats(self, stats: Iterable[PollStats]) -> None:
        try:
            self._flush_stats(stats)
        except StateError as e:
            if self.process is None:
                raise
            # The database is away (the loss is logged once): these counters are dropped; the next
            # poll of each trigger writes them again. Nothing else is lost (fires are fenced writes).
            log.debug("counters not written: %s", e)

    def _flush_stats(self, stats: Iterable[PollStats]) -> None:
        held = self._held
        rows = [s for s in stats if self.holds(s.name)]
        if not rows:
            return
        me = self._me
        params = ([s.name for s in rows], [s.last_poll_at for s in rows], [s.last_result for s in rows],
                  [_reason(s.last_reason) for s in rows], [s.next_poll_at for s in rows], [s.polls for s in rows],
                  [s.consecutive_errors for s in rows], [held.get(s.name, (0, 0.0))[0] if me else 0 for s in rows])

        def flush(c):
            c.execute(
                "UPDATE triggers t SET last_poll_at = v.lp, last_result = v.lr, last_reason = v.reason, next_poll_at = v.np, "
                "polls = t.polls + v.polls, consecutive_errors = v.ce "
                "FROM unnest(%s::text[], %s::float8[], %s::text[], %s::text[], %s::float8[], %s::bigint[], %s::int[], "
                "%s::bigint[]) AS v(name, lp, lr, reason, np, polls, ce, token) "
                "WHERE t.name = v.name AND (%s::text IS NULL OR (t.holder = %s AND t.token = v.token AND "
                + _valid("%s") + "))",
                (*params, me, me, me))
        deadline = self.lease_deadline() if me else None
        self._with(self._main, flush, until=deadline)

    def load_kv(self, trigger: str) -> dict[str, Any]:
        return {_s(r["key"]): json.loads(r["value"])
                for r in self._query("SELECT key, value FROM trigger_kv WHERE trigger_name = %s", (trigger,))}

    def load_all_kv(self, names: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
        where, params = "", ()  # type: tuple[str, tuple[Any, ...]]
        if names is not None:
            where, params = " WHERE trigger_name = ANY(%s)", (list(names),)
        out: dict[str, dict[str, Any]] = {}
        for r in self._query("SELECT trigger_name, key, value FROM trigger_kv" + where, params):
            out.setdefault(r["trigger_name"], {})[_s(r["key"])] = json.loads(r["value"])
        return out

    def update_kv(self, trigger: str, updates: dict[str, Any]) -> None:
        self._tx(lambda c: self._apply_kv(c, trigger, updates), fence=trigger)

    def _apply_kv(self, c, trigger: str, updates: dict[str, Any]) -> None:
        for k, v in updates.items():
            if v is None:
                c.execute("DELETE FROM trigger_kv WHERE trigger_name = %s AND key = %s", (trigger, _b(k)))
            else:
                c.execute("INSERT INTO trigger_kv (trigger_name, key, value) VALUES (%s, %s, %s) "
                          "ON CONFLICT (trigger_name, key) DO UPDATE SET value = excluded.value",
                          (trigger, _b(k), json.dumps(v)))

    def save_config_snapshot(self, config_path: str, fingerprint: str, triggers: list[dict[str, Any]]) -> None:
        def save(c):
            c.execute("INSERT INTO config_snapshot (config_path, fingerprint, triggers) VALUES (%s, %s, %s) "
                      "ON CONFLICT (config_path) DO UPDATE SET fingerprint = excluded.fingerprint, triggers = excluded.triggers",
                      (_t(config_path), fingerprint, json.dumps(triggers)))
        self._tx(save)

    def config_snapshot(self, config_path: str, fingerprint: str) -> list[dict[str, Any]] | None:
        rows = self._query("SELECT triggers FROM config_snapshot WHERE config_path = %s AND fingerprint = %s",
                           (_t(config_path), fingerprint))
        return json.loads(rows[0]["triggers"]) if rows else None

    def has_config_snapshot(self, config_path: str, fingerprint: str) -> bool:
        return bool(self._query("SELECT 1 FROM config_snapshot WHERE config_path = %s AND fingerprint = %s",
                                (_t(config_path), fingerprint)))

    # --------------------------------------------------------------------------------------- polls

    def record_fires(self, trigger, workflow, fires, stats, now, cursor, state_updates) -> list[FireResult]:
        def record(c: Any) -> list[FireResult]:
            results: list[FireResult] = []
            updates = dict(state_updates)
            stored_cursor = cursor
            for f in fires:
                res = self._fire_one(c, trigger, workflow, f, now)
                results.append(res)
                if res.deferred:
                    stored_cursor = None
                elif f.state:
                    updates.update(f.state)
            started = sum(1 for r in results if not r.suppressed)
            c.execute(
                "UPDATE triggers SET fires = fires + %s, last_poll_at = %s, last_result = %s, last_reason = %s, "
                "next_poll_at = %s, polls = polls + %s, consecutive_errors = 0, error_alerted = false"
                + (", cursor = %s" if stored_cursor is not None else "") + " WHERE name = %s",
                (started, stats.last_poll_at, stats.last_result, _reason(stats.last_reason), stats.next_poll_at, stats.polls)
                + ((_b(stored_cursor),) if stored_cursor is not None else ()) + (trigger,))
            if updates:
                self._apply_kv(c, trigger, updates)
            return results

        results = self._tx(record, fence=trigger)
        stats.polls = 0
        return results

    def _fire_one(self, c, trigger: str, workflow: str, f: FireRequest, now: float, *,
                  fired_by: Any = ...) -> FireResult:
        """Record one fire; dedupe is the insert's own (the partial unique index, ON CONFLICT DO
        NOTHING). A `once` key is serialized by an advisory lock with the run that ends it, so a
        fire cannot slip between a success being recorded and its key being released."""
        ctx_json = json.dumps(f.context, sort_keys=True)
        key = f.context_hash
        attempt = 1
        if f.dedupe == "once":
            c.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"{trigger}|{key}",))
            c.execute("SELECT failures FROM dedupe_once WHERE trigger_name = %s AND key = %s", (trigger, key))
            st = c.fetchone()
            attempt = (st[0] if st else 0) + 1
        owner = self._me if fired_by is ... else fired_by
        run_on = "any" if workflow in self.run_on_any else "poller"
        c.execute(
            "INSERT INTO runs (trigger_name, workflow, status, context, context_hash, dedupe, active_key, attempt, "
            "max_attempts, rerun_of, triggered_at, queued_at, fired_by, run_on) "
            "SELECT %s, %s, 'queued', %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s "
            "WHERE %s <> 'once' OR NOT EXISTS (SELECT 1 FROM dedupe_once WHERE trigger_name = %s AND key = %s "
            "AND (succeeded_run IS NOT NULL OR given_up)) "
            "ON CONFLICT (trigger_name, active_key) WHERE active_key IS NOT NULL DO NOTHING RETURNING id",
            (trigger, workflow, ctx_json, key, f.dedupe, key if f.dedupe != "none" else None, attempt, f.max_attempts,
             f.rerun_of, now, now, owner, run_on, f.dedupe, trigger, key))
        row = c.fetchone()
        if row is None:
            return self._suppressed(c, trigger, f, ctx_json, now)
        run_id = row[0]
        c.execute("INSERT INTO events (trigger_name, kind, context, context_hash, run_id, created_at, updated_at) "
                  "VALUES (%s, 'fire', %s, %s, %s, %s, %s)", (trigger, ctx_json, key, run_id, now, now))
        if run_on == "any":
            c.execute("SELECT pg_notify('trigctl_runs', %s)", (str(run_id),))
        return FireResult(run_id=run_id, suppressed=False)

    def _suppressed(self, c, trigger: str, f: FireRequest, ctx_json: str, now: float) -> FireResult:
        key = f.context_hash
        c.execute("SELECT id, context FROM runs WHERE trigger_name = %s AND active_key = %s", (trigger, key))
        row = c.fetchone()
        if row:
            res = self._duplicate(c, trigger, f, row[0], now, f"run {row[0]} with this key is still active")
            res.deferred = row[1] != ctx_json
            return res
        c.execute("SELECT succeeded_run, failures FROM dedupe_once WHERE trigger_name = %s AND key = %s", (trigger, key))
        st = c.fetchone()
        if st and st[0] is not None:
            return self._duplicate(c, trigger, f, st[0], now, f"already succeeded in run {st[0]} (dedupe: once)")
        if st is None and f.dedupe != "once":
            # The key's run ended between the insert and this look: offered again at the next poll.
            return self._duplicate(c, trigger, f, None, now, "a run with this key was active")
        return self._duplicate(c, trigger, f, None, now, f"given up after {st[1] if st else '?'} failed attempts (dedupe: once)")

    def _duplicate(self, c, trigger: str, f: FireRequest, blocking: int | None, now: float, reason: str) -> FireResult:
        c.execute(
            "UPDATE events SET count = count + 1, updated_at = %s WHERE id = (SELECT id FROM events WHERE kind = 'duplicate' "
            "AND trigger_name = %s AND context_hash = %s AND run_id IS NOT DISTINCT FROM %s ORDER BY id DESC LIMIT 1)",
            (now, trigger, f.context_hash, blocking))
        if c.rowcount == 0:
            c.execute("INSERT INTO events (trigger_name, kind, context, context_hash, run_id, error, created_at, updated_at) "
                      "VALUES (%s, 'duplicate', %s, %s, %s, %s, %s, %s)",
                      (trigger, json.dumps(f.context, sort_keys=True), f.context_hash, blocking, safe_text(reason), now, now))
        return FireResult(run_id=blocking, suppressed=True, reason=reason)

    def dedupe_status(self, trigger: str, key: str, dedupe: str) -> tuple[bool, str]:
        """Would a fire with this key be suppressed now? (read-only, for `trigctl poll`)"""
        return sql_dedupe_status(self._query, "%s", trigger, key, dedupe)

    def enqueue_run(self, trigger: str, workflow: str, context: dict[str, Any], now: float, *, rerun_of: int | None = None,
                    dedupe: str = "none", context_hash: str | None = None, max_attempts: int = 3) -> FireResult:
        request = FireRequest(context, context_hash or dedupe_hash(trigger, context, None), dedupe, max_attempts, rerun_of)
        return self._tx(lambda c: self._fire_one(c, trigger, workflow, request, now), fence=trigger)

    def record_error(self, trigger: str, message: str, stats: PollStats, now: float) -> int:
        message = safe_text(message, MAX_ERROR_CHARS) or ""
        streak = stats.consecutive_errors

        def record(c):
            c.execute("SELECT last_error FROM triggers WHERE name = %s", (trigger,))
            row = c.fetchone()
            if streak > 1 and row and row[0] == message:
                c.execute("UPDATE events SET count = count + 1, updated_at = %s WHERE id = (SELECT max(id) FROM events "
                          "WHERE trigger_name = %s AND kind = 'error')", (now, trigger))
            else:
                c.execute("INSERT INTO events (trigger_name, kind, error, created_at, updated_at) "
                          "VALUES (%s, 'error', %s, %s, %s)", (trigger, message, now, now))
            c.execute("UPDATE triggers SET last_poll_at = %s, last_result = 'error', next_poll_at = %s, polls = polls + %s, "
                      "consecutive_errors = %s, last_error = %s, last_reason = %s WHERE name = %s",
                      (stats.last_poll_at, stats.next_poll_at, stats.polls, streak, message, message, trigger))

        self._tx(record, fence=trigger)
        stats.polls = 0
        stats.last_reason = message
        return streak

    def set_error_alerted(self, trigger: str, alerted: bool) -> None:
        self._tx(lambda c: c.execute("UPDATE triggers SET error_alerted = %s WHERE name = %s", (alerted, trigger)),
                 fence=trigger)

    # ---------------------------------------------------------------------------------------- runs

    _run = staticmethod(run_row)

    def claim_next_queued(self, now: float) -> RunRow | None:
        runs = self.claim_queued(now, 1)
        return runs[0] if runs else None

    def claim_queued(self, now: float, limit: int) -> list[RunRow]:
        """The oldest ``limit`` queued runs that this process may run, marked running and owned by
        it, in one statement (``SKIP LOCKED``: two processes never wait for, or take, the same run).
        A run runs on the process that fired it; one whose process died goes to whoever holds its
        trigger now; a run of a `run_on: any` workflow (that this process's YAML has) to anyone."""
        me = self._me
        pid, start = os.getpid(), self._my_start
        params: tuple[Any, ...] = ()
        if me is None:
            where = "TRUE"
        else:
            with self._held_lock:
                held = list(self._held)
            where = "(fired_by = %s OR (fired_by IS NULL AND trigger_name = ANY(%s)) OR (run_on = 'any' AND workflow = ANY(%s)))"
            params = (me, held, list(self.run_on_any))

        def claim(c):
            c.execute(
                "WITH c AS (SELECT id FROM runs WHERE status IN ('queued', 'running') AND status = 'queued' AND " + where +
                " ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED) "
                "UPDATE runs r SET status = 'running', started_at = %s, owner_pid = %s, owner_start = %s, owner_process = %s "
                "FROM c WHERE r.id = c.id RETURNING r.*", (*params, limit, now, pid, start, me))
            cols = [d.name for d in c.description]
            return [dict(zip(cols, row)) for row in c.fetchall()]

        if me is None:
            rows = self._tx(claim)
        else:
            try:
                rows = self._with(self._main, claim, retry_for=1.0)
                self.claim_failed = False
            except StateError:
                self.claim_failed = True  # the database is away: the lease keeper makes the loop look again
                return []
        return [self._run(r) for r in sorted(rows, key=lambda r: r["id"])]

    def _owner_clause(self, take_over: bool = False) -> tuple[str, tuple]:
        if self.process is None or take_over:
            return "", ()
        return " AND (owner_process IS NULL OR owner_process = %s)", (self.process.id,)

    def _run_record(self, fn: Callable[[Any], Any]) -> None:
        """A run's own record (a task started or ended): the run goes on if the database is away."""
        try:
            self._with(self._runs, fn)
        except Unreachable as e:
            log.debug("a task's record was not written: %s", e)

    def task_started(self, run_id, idx, name, now, pid, pgid, proc_start) -> None:
        owned, params = self._owner_clause()
        self._run_record(lambda c: c.execute(
            "INSERT INTO tasks (run_id, idx, name, status, started_at, pid, pgid, proc_start) "
            f"SELECT %s, %s, %s, 'running', %s, %s, %s, %s WHERE EXISTS (SELECT 1 FROM runs WHERE id = %s{owned}) "
            "ON CONFLICT (run_id, idx) DO UPDATE SET status = 'running', pid = excluded.pid, pgid = excluded.pgid, "
            "proc_start = excluded.proc_start",
            (run_id, idx, _t(name), now, pid, pgid, proc_start, run_id, *params)))

    def task_finished(self, run_id, idx, status, exit_code, now, output_tail, attempts) -> None:
        owned, params = self._owner_clause()
        self._run_record(lambda c: c.execute(
            "UPDATE tasks SET status = %s, exit_code = %s, completed_at = %s, output_tail = %s, attempts = %s, pid = NULL, "
            f"pgid = NULL WHERE run_id = %s AND idx = %s AND EXISTS (SELECT 1 FROM runs WHERE id = %s{owned})",
            (status, exit_code, now, safe_text(output_tail), attempts, run_id, idx, run_id, *params)))

    def finish_run(self, run_id: int, status: str, now: float, error: str | None = None,
                   only_if: str | None = None, take_over: bool = False) -> bool:
        owned, params = self._owner_clause(take_over)

        def finish(c) -> bool:
            c.execute(f"SELECT status FROM runs WHERE id = %s{owned} FOR UPDATE", (run_id, *params))
            row = c.fetchone()
            if row is None or row[0] not in ("queued", "running") or (only_if is not None and row[0] != only_if):
                return False
            self._finish(c, run_id, status, now, error)
            return True

        if threading.current_thread().name.startswith("run-"):
            # A run's worker (its own thread) keeps trying for minutes: a run's end must not be lost
            # to a database restart (it would stay `running` while this process lives).
            return bool(self._with(self._runs, finish, retry_for=RUN_END_RETRY))
        return bool(self._tx(finish))

    def _finish(self, c, run_id: int, status: str, now: float, error: str | None) -> None:
        """End an active run (locked by the caller), releasing its key in the same statement."""
        c.execute("UPDATE runs SET status = %s, completed_at = %s, error = coalesce(%s, error), active_key = NULL, "
                  "cancel_requested = false WHERE id = %s RETURNING trigger_name, context_hash, dedupe, max_attempts",
                  (status, now, safe_text(error, MAX_ERROR_CHARS), run_id))
        trigger, key, dedupe, limit = c.fetchone()
        c.execute("UPDATE tasks SET status = 'cancelled', completed_at = %s, pid = NULL, pgid = NULL "
                  "WHERE run_id = %s AND status = 'running'", (now, run_id))
        if dedupe != "once":
            return
        c.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"{trigger}|{key}",))
        if status == "succeeded":
            c.execute("INSERT INTO dedupe_once (trigger_name, key, succeeded_run) VALUES (%s, %s, %s) "
                      "ON CONFLICT (trigger_name, key) DO UPDATE SET succeeded_run = excluded.succeeded_run",
                      (trigger, key, run_id))
        else:
            c.execute("INSERT INTO dedupe_once (trigger_name, key, failures) VALUES (%s, %s, 1) "
                      "ON CONFLICT (trigger_name, key) DO UPDATE SET failures = dedupe_once.failures + 1", (trigger, key))
            c.execute("UPDATE dedupe_once SET given_up = true WHERE trigger_name = %s AND key = %s AND failures >= %s",
                      (trigger, key, limit))

    def request_cancel(self, run_id: int, now: float) -> str | None:
        def req(c):
            c.execute("SELECT status FROM runs WHERE id = %s FOR UPDATE", (run_id,))
            row = c.fetchone()
            if row is None:
                return None
            if row[0] == "running":
                c.execute("UPDATE runs SET cancel_requested = true WHERE id = %s", (run_id,))
                c.execute("UPDATE change_feed SET seq = seq + 1 WHERE id = 1")
            return row[0]
        return self._tx(req)

    def owner_alive(self, run: RunRow) -> bool:
        if self.process is not None and run.owner_process == self.process.id:
            return True
        if not run.owner_process:
            return False
        rows = self._query("SELECT 1 FROM processes WHERE id = %s AND status = 'alive' "
                           "AND heartbeat_at > now() - make_interval(secs => lease_seconds)", (run.owner_process,))
        return bool(rows)

    def orphaned_runs(self) -> list[RunRow]:
        rows = self._query(
            "SELECT r.* FROM runs r LEFT JOIN processes p ON p.id = r.owner_process WHERE r.status = 'running' "
            "AND (p.id IS NULL OR p.status <> 'alive' OR p.heartbeat_at <= now() - make_interval(secs => p.lease_seconds)) "
            "AND r.owner_process IS DISTINCT FROM %s ORDER BY r.id", (self._me,))
        runs = [self._run(r) for r in rows]
        for run in runs:
            run.tasks = self._query("SELECT * FROM tasks WHERE run_id = %s ORDER BY idx", (run.id,))
        return runs

    def active_runs(self) -> list[RunRow]:
        runs = [self._run(r) for r in self._query("SELECT * FROM runs WHERE status IN ('queued','running') ORDER BY id")]
        for run in runs:
            run.tasks = self._query("SELECT * FROM tasks WHERE run_id = %s ORDER BY idx", (run.id,))
        return runs

    # ------------------------------------------------------------------------------------- reading

    def history(self, trigger, limit, statuses, since) -> list[HistoryEntry]:
        where: list[str] = ["TRUE"]
        params: list[Any] = []
        if trigger:
            where.append("e.trigger_name = %s")
            params.append(trigger)
        if since is not None:
            where.append("e.updated_at >= %s")
            params.append(since)
        if statuses:
            kinds = [s for s in statuses if s in ("duplicate", "error")]
            run_statuses = [s for s in statuses if s not in ("duplicate", "error")]
            clause = []
            if run_statuses:
                clause.append("(e.kind = 'fire' AND r.status = ANY(%s))")
                params.append(run_statuses)
            if kinds:
                clause.append("e.kind = ANY(%s)")
                params.append(kinds)
            where.append("(" + " OR ".join(clause) + ")")
        params.append(limit)
        rows = self._query(
            "SELECT e.*, r.status AS run_status, r.started_at AS run_started, r.completed_at AS run_completed, "
            "r.error AS run_error FROM events e LEFT JOIN runs r ON e.kind = 'fire' AND r.id = e.run_id "
            f"WHERE {' AND '.join(where)} ORDER BY e.id DESC LIMIT %s", params)
        return [history_row(r) for r in rows]

    def get_run(self, run_id: int) -> RunRow | None:
        rows = self._query("SELECT * FROM runs WHERE id = %s", (run_id,))
        if not rows:
            return None
        run = self._run(rows[0])
        run.tasks = self._query("SELECT * FROM tasks WHERE run_id = %s ORDER BY idx", (run_id,))
        return run

    def count_prunable(self, before: float) -> int:
        rows = self._query(f"SELECT count(*) AS n FROM events WHERE updated_at < %s AND {PRUNABLE_EVENT}", (before,))
        return int(rows[0]["n"])

    def prune(self, before: float) -> int:
        statements = (
            (f"DELETE FROM events WHERE id IN (SELECT id FROM events WHERE updated_at < %s AND {PRUNABLE_EVENT} LIMIT %s)", True),
            ("DELETE FROM tasks WHERE run_id IN (SELECT id FROM runs WHERE completed_at < %s "
             "AND status NOT IN ('queued','running') AND id IN (SELECT run_id FROM tasks) LIMIT %s)", False),
            ("DELETE FROM runs WHERE id IN (SELECT id FROM runs WHERE completed_at < %s "
             "AND status NOT IN ('queued','running') LIMIT %s)", False),
        )
        def forget(c):  # processes that ended before the cut-off and own no active run
            c.execute("DELETE FROM processes p WHERE p.status <> 'alive' AND p.ended_at < to_timestamp(%s) AND NOT EXISTS "
                      "(SELECT 1 FROM runs r WHERE r.owner_process = p.id AND r.status IN ('queued', 'running'))", (before,))
        self._tx(forget)
        events = 0
        for sql, counted in statements:
            while True:
                def delete(c, sql=sql):
                    c.execute(sql, (before, PRUNE_BATCH))
                    return c.rowcount
                n = self._tx(delete)
                if counted:
                    events += n
                if n == 0:
                    break
        return events


def _reason(text: str | None) -> str | None:
    return safe_text(text, MAX_ERROR_CHARS) if text else None

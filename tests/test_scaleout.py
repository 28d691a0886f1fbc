"""Several real `trigctl run` processes on one real PostgreSQL server (tests/pg.py): triggers are
shared with leases, each fire yields exactly one run, a killed process's triggers move, a stalled
one records nothing after losing its leases, a killed connection is survived, a new process takes
its share.

Every trigger here counts with its cursor (`seq` below): each poll fires ``{"seq": cursor + 1}`` and
stores the new cursor in the same transaction, with ``dedupe: none``. Two processes polling one
trigger from the same cursor would record the same seq twice, and a write that slipped past a lost
lease would leave a repeat or a gap: so "each trigger's runs are exactly seq 1..N" is the proof that
no poll was recorded twice and none was lost.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from realproc import RunProc

pytestmark = pytest.mark.slow

LEASE = "2s"  # short, so failovers take seconds; the default (10s) is for production

SEQ = """
import trigctl

def seq(cursor=None):
    n = int(cursor or 0) + 1
    return trigctl.Fire({"seq": n}, cursor=str(n))
"""


def project(tmp_path: Path, n: int = 12, interval: str = "100ms", task: str = '{argv: ["true"]}',
            extra: str = "") -> Path:
    lines = "\n".join(
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
        return dict(self.sql("SELECT holder, count(*) FROM triggers WHERE holder IS NOT NULL AND lease_expires > now() "
                             "GROUP BY holder"))

    def runs(self) -> int:
        return self.sql("SELECT count(*) FROM runs")[0][0]

    def wait(self, predicate, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- run{i}\n" + p.stderr[-1500:] for i, p in enumerate(self.procs))
                raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{logs}")
            time.sleep(0.05)

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


@pytest.fixture
def fleet(tmp_path, pg_url, pg_cluster):
    f = Fleet(tmp_path, pg_url, pg_cluster)
    yield f
    f.cleanup()


@pytest.mark.parametrize("n", [2, 3])
def test_processes_share_the_triggers_and_each_fire_is_one_run(tmp_path, fleet, n):
    project(tmp_path, n=12)
    procs = [fleet.start() for _ in range(n)]
    ids = [fleet.process_id(p) for p in procs]
    # Every process takes its share (12 / n each, within the slack), and runs keep coming.
    fleet.wait(lambda: set(fleet.held()) == set(ids) and sum(fleet.held().values()) == 12, 30, "every process holding leases")
    start = fleet.runs()
    fleet.wait(lambda: fleet.runs() >= start + 150, 60, "150 more runs")
    held = fleet.held()
    share = -(-12 // n)
    assert all(share - 2 <= held[i] <= share + 1 for i in ids), held
    fired_by = dict(fleet.sql("SELECT fired_by, count(*) FROM runs GROUP BY fired_by"))
    assert set(fired_by) == set(ids), fired_by  # each process fired (and ran) some
    for p in procs:
        assert p.stop() == 0, p.stderr[-2000:]
    total = fleet.assert_exactly_once()
    assert total >= 150
    # Queued at the last stop: they wait for the next start, as on SQLite; nothing else but successes.
    assert fleet.sql("SELECT count(*) FROM runs WHERE status NOT IN ('succeeded', 'queued')") == [(0,)]
    assert fleet.sql("SELECT count(*) FROM runs WHERE status = 'succeeded' AND owner_process IS DISTINCT FROM fired_by "
                     "AND fired_by IS NOT NULL") == [(0,)]  # a run ran where it was fired


def test_a_killed_process_triggers_move_and_its_runs_are_interrupted(tmp_path, fleet):
    project(tmp_path, n=8, interval="200ms",
            extra="  slow: {tasks: [{run: 'sleep 60'}]}\n")
    (tmp_path / "triggers.yaml").write_text((tmp_path / "triggers.yaml").read_text().replace(
        "triggers:\n", "triggers:\n  - {name: long, type: python, callable: \"seqs:seq\", workflow: slow, interval: 1h, "
        "dedupe: none}\n", 1))
    a, b = fleet.start("--grace", "1s"), fleet.start("--grace", "1s")
    ida, idb = fleet.process_id(a), fleet.process_id(b)
    fleet.wait(lambda: set(fleet.held()) == {ida, idb}, 30, "both holding leases")
    fleet.wait(lambda: fleet.sql("SELECT owner_process FROM runs WHERE trigger_name = 'long' AND status = 'running'"),
               30, "the long run running")
    (owner,) = fleet.sql("SELECT owner_process FROM runs WHERE trigger_name = 'long'")[0]
    victim, survivor = (a, b) if owner == ida else (b, a)
    victim_id = owner
    lost = [r[0] for r in fleet.sql("SELECT name FROM triggers WHERE holder = %s", (victim_id,))]
    killed_at = fleet.sql("SELECT extract(epoch FROM now())")[0][0]
    victim.kill()
    # Its triggers are polled again by the survivor, and its run is interrupted (and rerun by it).
    fleet.wait(lambda: fleet.sql("SELECT count(*) FROM triggers WHERE name = ANY(%s) AND last_poll_at > %s",
                                 (lost, float(killed_at)))[0][0] == len(lost) - ("long" in lost), 30,
               "the victim's triggers polled again")
    moved_after = time.time() - float(killed_at)
    print(f"failover: the killed process's triggers were polled again {moved_after:.1f}s after SIGKILL (lease {LEASE})")
    fleet.wait(lambda: fleet.sql("SELECT status FROM processes WHERE id = %s", (victim_id,)) == [("dead",)], 30,
               "the victim declared dead")
    rows = fleet.sql("SELECT id, status, rerun_of, owner_process FROM runs WHERE trigger_name = 'long' ORDER BY id")
    assert rows[0][1] == "interrupted"
    fleet.wait(lambda: fleet.sql("SELECT status, owner_process FROM runs WHERE rerun_of = %s", (rows[0][0],)) ==
               [("running", fleet.process_id(survivor))], 30, "the rerun running on the survivor")
    survivor.wait_line("interrupted", timeout=10)
    assert survivor.stop() == 0
    fleet.sql("DELETE FROM runs WHERE trigger_name = 'long'")  # its rerun repeats seq 1, as it should
    fleet.assert_exactly_once()


def test_a_stalled_process_records_nothing_after_losing_its_leases(tmp_path, fleet):
    project(tmp_path, n=8, interval="100ms")
    a, b = fleet.start(), fleet.start()
    ida, idb = fleet.process_id(a), fleet.process_id(b)
    fleet.wait(lambda: set(fleet.held()) == {ida, idb}, 30, "both holding leases")
    a.signal(signal.SIGSTOP)
    stopped_at = time.time()
    # b declares a dead after a's heartbeat is a lease old, and takes all triggers.
    fleet.wait(lambda: fleet.sql("SELECT status FROM processes WHERE id = %s", (ida,)) == [("dead",)], 30, "a declared dead")
    fleet.wait(lambda: fleet.held() == {idb: 8}, 30, "b holding every trigger")
    runs_before = fleet.runs()
    a.signal(signal.SIGCONT)
    code = a.wait(30)
    assert code == 3, a.stderr[-2000:]
    assert "was declared dead by process" in a.stderr
    fleet.wait(lambda: fleet.runs() > runs_before + 20, 30, "b firing on")
    assert b.stop() == 0
    # Nothing recorded by a once b had taken its triggers: every seq once, none of a's after the stop.
    late = fleet.sql("SELECT count(*) FROM runs WHERE fired_by = %s AND queued_at > %s", (ida, stopped_at + 0.5))
    assert late == [(0,)], late
    fleet.assert_exactly_once()


def test_a_killed_database_connection_is_survived(tmp_path, fleet):
    project(tmp_path, n=4, interval="100ms")
    a = fleet.start()
    fleet.wait(lambda: fleet.runs() >= 20, 30, "runs")
    for _ in range(2):
        fleet.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'trigctl'")
        before = fleet.runs()
        fleet.wait(lambda before=before: fleet.runs() >= before + 20, 30, "runs after the connections were killed")
    a.wait_line("lost the connection to PostgreSQL", timeout=5)
    assert a.proc.poll() is None
    assert a.stop() == 0, a.stderr[-2000:]
    fleet.assert_exactly_once()


def test_a_restarted_process_takes_its_share(tmp_path, fleet):
    project(tmp_path, n=12, interval="200ms")
    a = fleet.start()
    ida = fleet.process_id(a)
    fleet.wait(lambda: fleet.held() == {ida: 12}, 30, "a holding all")
    b = fleet.start()
    idb = fleet.process_id(b)
    joined = time.monotonic()
    fleet.wait(lambda: fleet.held().get(idb, 0) >= 5, 30, "b taking its share")
    print(f"rebalance: the new process held its share {time.monotonic() - joined:.1f}s after it started (lease {LEASE})")
    assert b.stop() == 0
    fleet.wait(lambda: fleet.held() == {ida: 12}, 30, "a taking b's triggers back after b stopped")
    c = fleet.start()
    idc = fleet.process_id(c)
    fleet.wait(lambda: fleet.held().get(idc, 0) >= 5 and fleet.held().get(ida, 0) >= 5, 30, "a restarted process's share")
    assert a.stop() == 0 and c.stop() == 0
    fleet.assert_exactly_once()

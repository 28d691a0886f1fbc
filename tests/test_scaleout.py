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

import pytest
from pg import LEASE, project

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("n", [2, 3])
def test_processes_share_the_triggers_and_each_fire_is_one_run(tmp_path, fleet, n):
    project(tmp_path, n=12)
    # A longer lease than the other tests': the steady-state check below is about the spread, not
    # about renewals that a loaded machine delays past a 2 s lease (a failover, rightly).
    procs = [fleet.start("--lease", "5s") for _ in range(n)]
    ids = [fleet.process_id(p) for p in procs]
    # Every process takes its share (12 / n each, within the slack), and runs keep coming.
    fleet.wait(lambda: set(fleet.held()) == set(ids) and sum(fleet.held().values()) == 12, 30, "every process holding leases")
    start = fleet.runs()
    fleet.wait(lambda: fleet.runs() >= start + 150, 60, "150 more runs")
    # Converged (each process within one of its share), then steady: no lease changes hands (the
    # tokens stay) over several lease rounds.
    share = -(-12 // n)
    fleet.wait(lambda: all(abs(fleet.held().get(i, 0) - share) <= 1 for i in ids), 30, "an even spread")
    tokens = fleet.sql("SELECT name, token FROM triggers ORDER BY name")
    rounds = fleet.sql("SELECT count(*) FROM runs")[0][0]
    fleet.wait(lambda: fleet.runs() >= rounds + 1000, 60, "1000 more runs (several lease rounds)")
    after = fleet.sql("SELECT name, token FROM triggers ORDER BY name")
    warnings = [ln for p in procs for ln in p.stderr.splitlines() if "warning" in ln]
    assert after == tokens, f"leases changed hands in steady state: {set(after) - set(tokens)}\n{warnings}"
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
    project(tmp_path, n=8, interval="200ms", extra="  slow: {tasks: [{run: 'sleep 60'}]}\n",
            triggers='  - {name: long, type: python, callable: "seqs:seq", workflow: slow, interval: 1h, dedupe: none}\n')
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


def test_the_database_away_for_longer_than_the_lease_is_survived(tmp_path, fleet):
    """No new connection is allowed and the existing ones are killed, for twice the lease: the loop
    stops recording (its leases lapse), says so once, does not exit, and goes on when the database
    is back; nothing is recorded twice."""
    project(tmp_path, n=4, interval="100ms")
    a = fleet.start()
    fleet.wait(lambda: fleet.runs() >= 20, 30, "runs")
    db = fleet.url.rsplit("/", 1)[1]
    fleet.cluster.sql(fleet.cluster.url(), f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS false')
    try:
        fleet.cluster.sql(fleet.cluster.url(), "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE application_name = 'trigctl' AND datname = %s", (db,))
        a.wait_line("lost the connection to PostgreSQL", timeout=10)
        # Away for twice the lease (waited on the process's own log: its leases lapse, it says so).
        a.wait_line("not renewed in time", timeout=30)
    finally:
        fleet.cluster.sql(fleet.cluster.url(), f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS true')
    before = fleet.runs()
    fleet.wait(lambda: fleet.runs() >= before + 20, 60, "runs after the database came back")
    assert a.proc.poll() is None
    assert a.count("lost the connection to PostgreSQL") <= 3  # once per connection (main, lease, a reader)
    assert a.stop() == 0, a.stderr[-2000:]
    fleet.assert_exactly_once()


def test_a_wedged_loop_gives_its_triggers_up(tmp_path, pg_url, pg_cluster):
    """The renewer renews only while the loop advances: a loop stuck inside a step (made to block
    here at the start of its step, in-process) has its leases released within half a lease, and
    takes triggers again once it moves."""
    import threading

    from trigctl.config import load_config
    from trigctl.runner import Runner
    from trigctl.store.postgres import PostgresStore

    yaml = project(tmp_path, n=4, interval="100ms")
    store = PostgresStore(pg_url, lease_seconds=2)
    runner = Runner(load_config(yaml), store, install_signals=False, grace=1)
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()

    def held() -> int:
        return pg_cluster.sql(pg_url, "SELECT count(*) FROM triggers WHERE holder IS NOT NULL")[0][0]

    from conftest import wait_for

    try:
        wait_for(lambda: runner.leases is not None and held() == 4, 30, message="the triggers held")
        gate = threading.Event()
        original = runner.leases.apply

        def stuck(now):
            gate.wait(60)  # the owner thread is stuck here, as in a wedged step
            original(now)

        runner.leases.apply = stuck
        wedged_at = time.monotonic()
        wait_for(lambda: held() == 0, 30, message="the leases released")
        print(f"wedged loop: leases released {time.monotonic() - wedged_at:.1f}s after the loop stopped (lease 2s)")
        runs = pg_cluster.sql(pg_url, "SELECT count(*) FROM runs")[0][0]
        runner.leases.apply = original
        gate.set()
        wait_for(lambda: held() == 4, 30, message="the triggers taken again")
        wait_for(lambda: pg_cluster.sql(pg_url, "SELECT count(*) FROM runs")[0][0] > runs + 10, 30, message="firing again")
    finally:
        runner.stop()
        thread.join(30)
        store.close()

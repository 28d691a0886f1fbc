"""Scale-out features with real processes on a real PostgreSQL (tests/pg.py): labels pin triggers,
`run_on: any` runs move to idle processes, `processes` and `list` show who holds what, `enable`/
`disable` and `cancel` reach whichever process holds the trigger or the run; and the one-line
errors of a missing psycopg or an unreachable server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from conftest import trigctl_cmd
from pg import project

pytestmark = pytest.mark.slow


def cli(fleet, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(trigctl_cmd(*args, "--state", fleet.url), cwd=fleet.tmp_path, capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})})


def test_labels_pin_a_trigger_to_the_processes_that_carry_them(tmp_path, fleet):
    project(tmp_path, n=4, interval="100ms",
            triggers='  - {name: local, type: python, callable: "seqs:seq", workflow: w, interval: 100ms, '
                     'dedupe: none, labels: [here]}\n')
    a = fleet.start("--label", "here")
    b = fleet.start()
    ida, idb = fleet.process_id(a), fleet.process_id(b)
    fleet.wait(lambda: set(fleet.held()) == {ida, idb}, 30, "both holding leases")
    fleet.wait(lambda: fleet.sql("SELECT count(*) FROM runs WHERE trigger_name = 'local'")[0][0] >= 10, 30, "local firing")
    assert a.stop() == 0
    # With the only process that carries `here` gone, nobody polls `local`: b never takes it.
    fleet.wait(lambda: fleet.held() == {idb: 4}, 30, "b holding the unlabelled triggers")
    before = fleet.runs()
    fleet.wait(lambda: fleet.runs() >= before + 30, 30, "b firing on")
    assert b.stop() == 0
    # fired only by a; its runs queued when it stopped wait for a process with the label (none came)
    assert fleet.sql("SELECT DISTINCT coalesce(fired_by, status) FROM runs WHERE trigger_name = 'local' "
                     "ORDER BY 1") in ([(ida,)], sorted([(ida,), ("queued",)]))
    assert fleet.sql("SELECT DISTINCT owner_process FROM runs WHERE trigger_name = 'local' AND status = 'succeeded'") == [(ida,)]
    fleet.assert_exactly_once()


def test_run_on_any_lets_an_idle_process_run_the_queue(tmp_path, fleet):
    project(tmp_path, n=0, extra="  anyw: {run_on: any, tasks: [{run: 'sleep 0.3'}]}\n",
            triggers='  - {name: burst, type: python, callable: "seqs:seq", workflow: anyw, interval: 50ms, '
                     'dedupe: none, labels: [src]}\n')
    yaml = tmp_path / "triggers.yaml"
    yaml.write_text(yaml.read_text().replace("max_concurrent_runs: 50", "max_concurrent_runs: 2"))
    a = fleet.start("--label", "src")  # fires burst; two runs at a time
    b = fleet.start()  # holds nothing, has room: runs what a cannot
    idb = fleet.process_id(b)
    fleet.wait(lambda: fleet.sql("SELECT count(*) FROM runs WHERE owner_process = %s AND status = 'succeeded'",
                                 (idb,))[0][0] >= 5, 30, "b running burst's runs")
    assert fleet.sql("SELECT DISTINCT fired_by FROM runs") == [(fleet.process_id(a),)]
    assert a.stop() == 0, a.stderr[-2000:]
    assert b.stop() == 0, b.stderr[-2000:]
    assert fleet.sql("SELECT count(*) FROM runs WHERE status NOT IN ('succeeded', 'queued')") == [(0,)]


def test_processes_and_list_show_who_holds_what(tmp_path, fleet):
    project(tmp_path, n=6, interval="200ms")
    a, b = fleet.start("--label", "x"), fleet.start()
    ida, idb = fleet.process_id(a), fleet.process_id(b)
    fleet.wait(lambda: set(fleet.held()) == {ida, idb} and sum(fleet.held().values()) == 6, 30, "both holding leases")
    out = cli(fleet, "processes", "--json")
    assert out.returncode == 0, out.stderr
    procs = {p["id"]: p for p in json.loads(out.stdout)}
    assert set(procs) == {ida, idb}
    assert procs[ida]["labels"] == ["x"] and procs[idb]["labels"] == []
    assert procs[ida]["pid"] == a.pid and procs[ida]["leases"] + procs[idb]["leases"] == 6
    assert all(p["heartbeat_age"] < 5 and p["lease"] == 2 and p["status"] == "alive" for p in procs.values())
    text = cli(fleet, "processes")
    assert text.returncode == 0 and ida[:12] in text.stdout and idb[:12] in text.stdout, text.stdout
    listing = cli(fleet, "list", "--json")
    assert listing.returncode == 0, listing.stderr
    holders = {t["name"]: t["holder"] for t in json.loads(listing.stdout)}
    assert len(holders) == 6 and set(holders.values()) <= {ida, idb}, holders
    assert "HOLDER" in cli(fleet, "list").stdout
    assert a.stop() == 0, a.stderr[-2000:]
    assert b.stop() == 0, b.stderr[-2000:]
    assert json.loads(cli(fleet, "processes", "--json").stdout) == []


def test_enable_and_disable_reach_the_holder(tmp_path, fleet):
    project(tmp_path, n=4, interval="100ms")
    a, b = fleet.start(), fleet.start()
    fleet.wait(lambda: sum(fleet.held().values()) == 4, 30, "the triggers held")
    holder = fleet.sql("SELECT holder FROM triggers WHERE name = 't00'")[0][0]
    proc = a if holder == fleet.process_id(a) else b
    done = cli(fleet, "disable", "t00")
    assert done.returncode == 0, done.stderr
    disabled_at = time.monotonic()
    proc.wait_line("disabled trigger=t00", timeout=10)
    print(f"disable: honoured by the holder {time.monotonic() - disabled_at:.2f}s after the command returned")
    count = fleet.sql("SELECT count(*) FROM runs WHERE trigger_name = 't00'")[0][0]
    others = fleet.runs()
    fleet.wait(lambda: fleet.runs() >= others + 30, 30, "the other triggers firing on")
    assert fleet.sql("SELECT count(*) FROM runs WHERE trigger_name = 't00'")[0][0] <= count + 1  # one poll in flight at most
    assert cli(fleet, "enable", "t00").returncode == 0
    after = fleet.sql("SELECT count(*) FROM runs WHERE trigger_name = 't00'")[0][0]
    fleet.wait(lambda: fleet.sql("SELECT count(*) FROM runs WHERE trigger_name = 't00'")[0][0] >= after + 5, 30,
               "t00 firing again")
    assert a.stop() == 0, a.stderr[-2000:]
    assert b.stop() == 0, b.stderr[-2000:]
    fleet.assert_exactly_once()


def test_cancel_reaches_the_process_that_runs_it(tmp_path, fleet):
    project(tmp_path, n=0, extra="  slow: {tasks: [{run: 'sleep 60'}]}\n",
            triggers='  - {name: long, type: python, callable: "seqs:seq", workflow: slow, interval: 1h, dedupe: none}\n')
    a, b = fleet.start(), fleet.start()
    fleet.wait(lambda: fleet.sql("SELECT id, owner_process FROM runs WHERE status = 'running'"), 30, "the run running")
    run_id, owner = fleet.sql("SELECT id, owner_process FROM runs WHERE status = 'running'")[0]
    out = cli(fleet, "cancel", str(run_id))
    assert out.returncode == 0, out.stderr
    assert "cancel requested" in out.stdout
    fleet.wait(lambda: fleet.sql("SELECT status FROM runs WHERE id = %s", (run_id,)) == [("cancelled",)], 15,
               "the run cancelled by its owner")
    runner = a if owner == fleet.process_id(a) else b
    runner.wait_line("cancelling", timeout=5)
    pid = fleet.sql("SELECT pid FROM tasks WHERE run_id = %s", (run_id,))
    assert pid == [(None,)]  # its task process is gone (the row forgets the pid when the task ends)
    assert a.stop() == 0, a.stderr[-2000:]
    assert b.stop() == 0, b.stderr[-2000:]


def test_without_psycopg_a_postgresql_state_is_one_line(tmp_path):
    stub = tmp_path / "stub" / "psycopg"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ImportError('no psycopg here')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "stub")}
    project(tmp_path, n=1)
    for args in (["list"], ["history"], ["processes"], ["run", "--once"], ["disable", "t00"]):
        out = subprocess.run([sys.executable, "-m", "trigctl", *args, "--state", "postgresql://u@127.0.0.1/x"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=60, env=env)
        assert out.returncode == 2, out.stderr
        assert out.stderr.strip().splitlines() == ["trigctl: a postgresql:// state needs psycopg: install trigctl[postgres]"]


def test_an_unreachable_server_is_one_line_without_the_password(tmp_path, pg_cluster):
    url = f"postgresql://trigctl:s3cr3t@127.0.0.1:{pg_cluster.port + 1 if pg_cluster.port < 65535 else 1}/nope"
    out = subprocess.run(trigctl_cmd("history", "--state", url), cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot connect to the PostgreSQL state" in lines[0], out.stderr
    assert "s3cr3t" not in out.stderr and "***" in lines[0]


def test_processes_needs_a_postgresql_state(tmp_path):
    out = subprocess.run(trigctl_cmd("processes", "--state", str(tmp_path / "state.db")), cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "trigctl: `trigctl processes` needs a PostgreSQL state (a SQLite state has one `trigctl run` at a time)"]


def test_once_and_prune_on_postgresql(tmp_path, pg_url, pg_cluster):
    project(tmp_path, n=3)
    out = subprocess.run(trigctl_cmd("run", "--once", "--state", pg_url), cwd=tmp_path, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert pg_cluster.sql(pg_url, "SELECT count(*), min(status), max(status) FROM runs") == [(3, "succeeded", "succeeded")]
    assert pg_cluster.sql(pg_url, "SELECT status FROM processes") == [("stopped",)]
    history = json.loads(subprocess.run(trigctl_cmd("history", "--json", "--state", pg_url), cwd=tmp_path,
                                        capture_output=True, text=True, timeout=60).stdout)
    assert sorted(h["trigger_name"] for h in history) == ["t00", "t01", "t02"]
    # prune's cut-off is the time the command starts: everything recorded before it goes
    out = subprocess.run(trigctl_cmd("prune", "--older-than", "0s", "--state", pg_url), cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "pruned 3 history entries" in out.stdout, out.stdout + out.stderr
    assert pg_cluster.sql(pg_url, "SELECT count(*) FROM runs") == [(0,)]
    assert pg_cluster.sql(pg_url, "SELECT count(*) FROM processes") == [(0,)]

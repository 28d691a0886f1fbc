"""The store contract (trigctl/store/base.py), written once and run against every backend through
the parametrized ``store_factory`` fixture (huey's StorageTests, APScheduler's data-store tests).
Both stores pass it; PostgreSQL runs against a throwaway server (tests/pg.py)."""

from __future__ import annotations

import threading
import time

import pytest

from trigctl.store.base import (
    Changes,
    FireRequest,
    HistoryEntry,
    LeaseLost,
    PollStats,
    StateLocked,
    Store,
    dedupe_hash,
)

NOW = 1_800_000_000.0


def _sqlite(tmp_path):
    from trigctl.store.sqlite import SQLiteStore

    path = str(tmp_path / "state.db")
    return lambda: SQLiteStore(path)


def _postgresql(request):
    from trigctl.store.postgres import PostgresStore

    url = request.getfixturevalue("pg_url")  # skips, saying why, without PostgreSQL
    return lambda: PostgresStore(url)


BACKENDS = {"sqlite": lambda request: _sqlite(request.getfixturevalue("tmp_path")), "postgresql": _postgresql}


@pytest.fixture(params=["sqlite", "postgresql"])
def store_factory(request):
    opened: list[Store] = []
    make = BACKENDS[request.param](request)

    def factory() -> Store:
        s = make()
        opened.append(s)
        return s

    yield factory
    for s in opened:
        s.close()


@pytest.fixture
def store(store_factory):
    s = store_factory()
    s.sync_triggers(["t", "u"])
    return s


def fire(store: Store, ctx: dict, *, dedupe: str = "running", keys=None, trigger: str = "t", state=None,
         cursor: str | None = None, now: float = NOW):
    req = FireRequest(context=ctx, context_hash=dedupe_hash(trigger, ctx, keys), dedupe=dedupe, max_attempts=2,
                      state=state)
    return store.record_fires(trigger, "w", [req], PollStats(trigger), now, cursor, {})[0]


# ---------------------------------------------------------------------------------- processes


def test_a_process_gets_a_fresh_identity_each_start(store_factory):
    a = store_factory()
    first = a.start_process(["x"])
    assert a.process == first and first.labels == ("x",) and first.pid > 0 and first.id
    a.close()
    b = store_factory()
    second = b.start_process()
    assert second.id != first.id


def test_one_loop_process_per_sqlite_state_several_on_postgresql(store_factory):
    a = store_factory()
    a.start_process()
    b = store_factory()
    if not b.shared:
        with pytest.raises(StateLocked):
            b.start_process()
        return
    assert b.start_process().id != a.process.id  # two loop processes share the state


# ------------------------------------------------------------------------------ leases, fencing


def test_leases_fence_every_write_about_a_trigger(store):
    store.start_process()
    leases = store.acquire_triggers(["t", "u"], NOW)
    assert set(leases) == {"t", "u"} and all(lease.token >= 1 for lease in leases.values())
    assert store.renew_leases(NOW + 1).keys() == {"t", "u"}
    assert fire(store, {"a": 1}).suppressed is False
    store.release_triggers(["t"])
    assert not store.holds("t") and store.holds("u")
    stats = PollStats("t", last_poll_at=NOW, last_result="error", consecutive_errors=1)
    for write in (lambda: fire(store, {"a": 2}),
                  lambda: store.record_error("t", "boom", stats, NOW),
                  lambda: store.update_kv("t", {"k": 1}),
                  lambda: store.set_error_alerted("t", True),
                  lambda: store.enqueue_run("t", "w", {}, NOW)):
        with pytest.raises(LeaseLost):
            write()
    store.flush_stats([stats])  # counters of a trigger not held are dropped, not written
    row = store.trigger_rows()["t"]
    assert row.last_error is None and row.consecutive_errors == 0 and row.fires == 1
    assert store.load_kv("t") == {}
    assert [h.context for h in store.history("t", 10, None, None)] == [{"a": 1}]


def test_outside_a_process_writes_are_not_fenced(store):
    """Commands and tests that open the state without starting a loop process write freely."""
    assert store.holds("t")
    assert fire(store, {"a": 1}).suppressed is False


# ----------------------------------------------------------------------------------- dedupe


def test_running_key_is_held_until_the_run_ends_whatever_the_outcome(store):
    for status in ("succeeded", "failed", "cancelled", "interrupted"):
        first = fire(store, {"s": status})
        dup = fire(store, {"s": status})
        assert not first.suppressed and dup.suppressed and dup.run_id == first.run_id and not dup.deferred
        assert first.run_id is not None
        assert store.finish_run(first.run_id, status, NOW + 1)
        assert not fire(store, {"s": status}).suppressed


def test_a_suppressed_fire_of_another_context_is_deferred(store):
    first = fire(store, {"path": "a", "size": 1}, keys=("path",), state={"a": [1]})
    later = fire(store, {"path": "a", "size": 2}, keys=("path",), state={"a": [2]}, cursor="c2")
    assert later.suppressed and later.deferred and later.run_id == first.run_id
    assert store.load_kv("t") == {"a": [1]}  # the deferred fire's state is not applied
    assert store.trigger_rows()["t"].cursor is None  # nor its cursor


def test_none_starts_a_run_for_every_fire(store):
    runs = {fire(store, {"k": 1}, dedupe="none").run_id for _ in range(3)}
    assert len(runs) == 3


def test_once_never_twice_on_success_and_gives_up_after_max_attempts(store):
    ok = fire(store, {"k": "ok"}, dedupe="once")
    assert ok.run_id is not None
    store.finish_run(ok.run_id, "succeeded", NOW)
    again = fire(store, {"k": "ok"}, dedupe="once")
    assert again.suppressed and "already succeeded" in again.reason
    for _ in range(2):  # max_attempts=2
        bad = fire(store, {"k": "bad"}, dedupe="once")
        assert not bad.suppressed and bad.run_id is not None
        store.finish_run(bad.run_id, "failed", NOW)
    gave_up = fire(store, {"k": "bad"}, dedupe="once")
    assert gave_up.suppressed and "given up" in gave_up.reason


def test_dedupe_holds_between_writers_racing_on_one_key(store_factory):
    """Two connections fire one key at once, many times: never two active runs of the key."""
    stores = [store_factory() for _ in range(2)]
    stores[0].sync_triggers(["t"])
    started: list[int] = []
    lock = threading.Lock()

    def writer(s: Store) -> None:
        for _ in range(100):
            res = fire(s, {"same": True})
            if not res.suppressed and res.run_id is not None:
                with lock:
                    started.append(res.run_id)

    threads = [threading.Thread(target=writer, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(started) == 1, started
    assert len([r for r in stores[0].active_runs() if r.trigger_name == "t"]) == 1


# ------------------------------------------------------------------------------------------ runs


def test_runs_are_claimed_by_their_owner_and_taken_over_only_when_it_is_dead(store_factory):
    a = store_factory()
    a.sync_triggers(["t"])
    a.start_process()
    a.acquire_triggers(["t"], NOW)
    run_id = fire(a, {"r": 1}).run_id
    (claimed,) = a.claim_queued(NOW, 10)
    assert claimed.id == run_id and claimed.status == "running" and claimed.owner_process == a.process.id
    assert a.owner_alive(claimed) and a.orphaned_runs() == []
    a.close()  # the owner is gone (as after a crash, its process record is not alive)
    b = store_factory()
    b.start_process()
    (orphan,) = b.orphaned_runs()
    assert orphan.id == run_id and not b.owner_alive(orphan)
    assert not b.finish_run(run_id, "interrupted", NOW)  # not b's run
    assert b.finish_run(run_id, "interrupted", NOW, take_over=True)
    assert b.get_run(run_id).status == "interrupted" and b.orphaned_runs() == []


def test_a_queued_run_is_cancelled_only_while_queued(store):
    run_id = fire(store, {"q": 1}).run_id
    assert store.finish_run(run_id, "cancelled", NOW, only_if="queued")
    second = fire(store, {"q": 1}).run_id
    store.claim_queued(NOW, 10)
    assert not store.finish_run(second, "cancelled", NOW, only_if="queued")


# ---------------------------------------------------------------------------------- change feed


def test_changes_report_what_other_processes_changed(store_factory):
    loop = store_factory()
    loop.sync_triggers(["t", "u"])
    first = loop.changes()
    assert isinstance(first, Changes) and first.enabled == {"t": None, "u": None}
    assert loop.changes() is None  # nothing since
    other = store_factory()
    other.set_enabled(["t"], False)
    seen = loop.changes()
    assert seen is not None and seen.enabled["t"] is False
    run_id = fire(loop, {"c": 1}).run_id
    loop.claim_queued(NOW, 10)
    loop.changes()
    other.request_cancel(run_id, NOW)
    seen = loop.changes()
    assert seen is not None and run_id in seen.cancel_requested


# ------------------------------------------------------------------------------------- history


def test_history_is_typed_newest_first(store):
    run_id = fire(store, {"h": 1}).run_id
    fire(store, {"h": 1})
    fire(store, {"h": 1})
    store.record_error("t", "boom", PollStats("t", consecutive_errors=1), NOW + 5)
    entries = store.history("t", 10, None, None)
    assert all(isinstance(e, HistoryEntry) for e in entries)
    assert [e.kind for e in entries] == ["error", "duplicate", "fire"]
    assert entries[1].count == 2 and entries[1].run_id == run_id
    assert entries[2].context == {"h": 1} and entries[2].run_status == "queued"
    assert [e.kind for e in store.history("t", 10, ["error"], None)] == ["error"]


def test_the_last_reason_is_written_with_the_counters_errors_and_fires(store):
    """`list` shows why the last poll skipped or erred: flush_stats writes a skip's reason,
    record_error the error's message (and remembers it in the counters it was given), a poll that
    recorded fires clears it; history's error row keeps the message."""
    assert store.trigger_rows()["t"].last_reason is None
    store.flush_stats([PollStats("t", last_poll_at=NOW, last_result="skipped", polls=3, last_reason="depth 3 (fires at >= 5)")])
    row = store.trigger_rows()["t"]
    assert (row.last_result, row.last_reason, row.polls) == ("skipped", "depth 3 (fires at >= 5)", 3)
    assert store.history("t", 10, None, None) == []  # skips write counters, not history
    stats = PollStats("t", last_poll_at=NOW + 1, last_result="error", consecutive_errors=1, last_reason="old")
    store.record_error("t", "connection refused", stats, NOW + 1)
    assert stats.last_reason == "connection refused"
    row = store.trigger_rows()["t"]
    assert (row.last_result, row.last_reason) == ("error", "connection refused")
    assert [e.error for e in store.history("t", 10, ["error"], None)] == ["connection refused"]
    store.flush_stats([PollStats("t", last_poll_at=NOW + 2, last_result="skipped", last_reason="x" * 10_000 + "\x00")])
    cut = store.trigger_rows()["t"].last_reason
    assert cut is not None and len(cut) <= 4000 and "\x00" not in cut  # cut like an error message
    fire(store, {"a": 1}, now=NOW + 3)
    assert store.trigger_rows()["t"].last_reason is None
    assert store.trigger_rows()["u"].last_reason is None  # another trigger's row is untouched


def test_prune_counts_what_it_would_delete_then_deletes_it_keeping_active_runs(store):
    done = fire(store, {"k": "done"}, dedupe="none")
    active = fire(store, {"k": "active"}, dedupe="none")
    assert done.run_id is not None and active.run_id is not None
    store.finish_run(done.run_id, "succeeded", NOW + 1)
    later = NOW + 10**6
    assert store.count_prunable(later) == 1  # the active run's fire stays
    assert store.count_prunable(later) == 1  # counting deleted nothing
    assert store.prune(later) == 1
    assert store.count_prunable(later) == 0
    assert store.get_run(active.run_id) is not None and store.get_run(done.run_id) is None


# ------------------------------------------------------------------------------ config snapshot


def test_config_snapshot_saved_and_known_without_reading_it(store):
    assert store.config_snapshot("/x/triggers.yaml", "f1") is None
    assert store.has_config_snapshot("/x/triggers.yaml", "f1") is False
    store.save_config_snapshot("/x/triggers.yaml", "f1", [{"name": "t", "type": "python"}])
    assert store.has_config_snapshot("/x/triggers.yaml", "f1") is True
    assert store.config_snapshot("/x/triggers.yaml", "f1") == [{"name": "t", "type": "python"}]
    assert store.has_config_snapshot("/x/triggers.yaml", "f2") is False  # other bytes
    assert store.has_config_snapshot("/y/triggers.yaml", "f1") is False  # another file
    store.save_config_snapshot("/x/triggers.yaml", "f2", [])
    assert store.has_config_snapshot("/x/triggers.yaml", "f2") is True


# ------------------------------------------------------------------------- a run's own writes


def test_run_steps_are_applied_in_order_with_their_results(store):
    """Store.apply_run_steps (trigctl.runlog batches the run threads' writes through it): each step
    as its own method would do it, results in order; the run's end releases its key."""
    store.start_process()
    store.acquire_triggers(["t"], NOW)
    run_id = fire(store, {"k": 1}).run_id
    (run,) = store.claim_queued(NOW, 10)
    results = store.apply_run_steps([
        ("task_started", (run_id, 0, "a", NOW, 4242, 4242, "77")),
        ("task_output", (run_id, 0, "so far")),
        ("task_finished", (run_id, 0, "succeeded", 0, NOW + 1, "all\n", 1)),
        ("task_started", (run_id, 1, "b", NOW + 1, None, None, None)),
        ("task_finished", (run_id, 1, "failed", 3, NOW + 2, "boom\n", 2)),
        ("finish_run", (run_id, "failed", NOW + 2, "task 'b' failed")),
        ("finish_run", (run_id, "succeeded", NOW + 3, None)),  # already ended: not again
    ])
    assert results == [None, None, None, None, None, True, False]
    got = store.get_run(run_id)
    assert got.status == "failed" and got.error == "task 'b' failed"
    assert [(t["name"], t["status"], t["exit_code"], t["output_tail"], t["attempts"], t["pgid"]) for t in got.tasks] == [
        ("a", "succeeded", 0, "all\n", 1, None), ("b", "failed", 3, "boom\n", 2, None)]
    assert not fire(store, {"k": 1}).suppressed  # the key was released with the end


def test_a_failing_run_step_fails_alone(store):
    """One step that cannot be written gets its own error; the steps around it are written."""
    store.start_process()
    store.acquire_triggers(["t"], NOW)
    run_id = fire(store, {"k": 2}).run_id
    store.claim_queued(NOW, 10)
    results = store.apply_run_steps([
        ("task_started", (run_id, 0, "a", NOW, None, None, None)),
        ("task_finished", (object(), 0, "succeeded", 0, NOW + 1, "", 1)),  # not storable
        ("finish_run", (run_id, "succeeded", NOW + 1, None)),
    ])
    assert results[0] is None and isinstance(results[1], Exception) and results[2] is True
    got = store.get_run(run_id)
    assert got.status == "succeeded" and [t["name"] for t in got.tasks] == ["a"]
    with pytest.raises(ValueError, match="not a run step"):
        store.apply_run_steps([("prune", (NOW,))])


def test_a_transaction_the_server_ended_as_idle_is_a_lost_connection(request):
    """A process stopped (SIGSTOP, a frozen VM) inside a transaction has it ended by the server's
    idle_in_transaction_session_timeout (trigctl sets it): on resuming, that is a lost connection,
    reopened, not a state error that stops the loop (seen in tests/test_scaleout.py, exit 1 instead
    of 3 when the stop landed inside a transaction)."""
    from trigctl.store.postgres import PostgresStore

    url = request.getfixturevalue("pg_url")  # skips, saying why, without PostgreSQL
    import psycopg

    s = PostgresStore(url)
    try:
        s.sync_triggers(["t"])
        with s._main.lock:
            conn = s._main.get()
            pid = conn.info.backend_pid
            conn.execute("SET idle_in_transaction_session_timeout = '100ms'")
            conn.execute("BEGIN")  # a transaction left idle, as by a process stopped inside it
        with psycopg.connect(url, autocommit=True) as watcher:
            deadline = time.monotonic() + 30
            while watcher.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone() != (0,):
                assert time.monotonic() < deadline, "the server never ended the idle transaction"
                time.sleep(0.02)
        s.set_enabled(["t"], False)  # reconnects and writes
        assert s.trigger_rows()["t"].enabled is False
    finally:
        s.close()

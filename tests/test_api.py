"""trigctl.api, the library under the CLI: typed results and domain errors, no click, no printing."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from conftest import open_state

from trigctl import api
from trigctl.config import ConfigError

YAML = """
version: 1
workflows:
  ok:
    tasks:
      - run: 'echo "hello $TRIGCTL_WHO"'
triggers:
  - name: greet
    type: python
    callable: mytriggers:greet
    workflow: ok
    interval: 1m
    dedupe: once
  - name: broken
    type: python
    callable: mytriggers:boom
    workflow: ok
    interval: 1m
"""


@pytest.fixture
def project(write_yaml, callables, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TRIGCTL_CONFIG", raising=False)
    monkeypatch.delenv("TRIGCTL_STATE", raising=False)
    callables("def greet():\n    return {'who': 'world'}\n\ndef boom():\n    raise ValueError('boom')\n")
    return write_yaml(YAML)


def run_once(project, *only: str) -> int:
    return api.run(api.plan_run(str(project), only=only), once=True, grace=5)


def test_importing_the_api_loads_no_heavy_module():
    heavy = ["click", "yaml", "jsonschema", "rich", "sqlite3", "requests", "watchdog",
             "trigctl.config", "trigctl.store", "trigctl.scheduler", "trigctl.runner", "trigctl.procs"]
    code = f"import sys, trigctl.api; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_validate_counts_or_raises_config_error(project, write_yaml):
    assert api.validate(str(project)) == api.Validated(str(project), 2, 1)
    bad = write_yaml("version: 1\ntriggers: 3\n", name="bad.yaml")
    with pytest.raises(ConfigError) as e:
        api.validate(config_path=str(bad))
    assert e.value.issues


@pytest.mark.parametrize("args", [{"file": ""}, {"config_path": ""}, {"state": ""}])
def test_an_empty_path_is_a_usage_error(project, args):
    with pytest.raises(api.UsageError, match="empty path"):
        api.validate(**args)


def test_poll_once_previews_and_records_nothing(project):
    preview = api.poll_once("greet")
    assert (preview.trigger_name, preview.result, preview.error) == ("greet", "fired", None)
    [fire] = preview.fires
    assert fire.context == {"who": "world"} and not fire.suppressed and len(fire.dedupe_key) == 64
    assert api.history() == []
    assert api.poll_once("broken").result == "error" and api.poll_once("broken").error == "ValueError: boom"
    with pytest.raises(api.NotFound, match="unknown trigger 'nope'"):
        api.poll_once("nope")


def test_list_history_and_show_are_typed_records(project):
    assert run_once(project) == 1  # broken's poll errors
    by_name = {t.name: t for t in api.list_triggers()}
    greet = by_name["greet"]
    assert isinstance(greet, api.TriggerStatus)
    assert (greet.fires, greet.last_result, greet.enabled, greet.active_runs) == (1, "fired", True, 0)
    assert greet.next_poll_at is not None and greet.next_poll_at > greet.last_poll_at
    assert by_name["broken"].consecutive_errors == 1

    entries = api.history()
    assert [type(e) for e in entries] == [api.HistoryEntry] * 2
    fire = next(e for e in entries if e.kind == "fire")
    assert (fire.trigger_name, fire.status, fire.context) == ("greet", "succeeded", {"who": "world"})
    assert fire.duration is not None and fire.duration >= 0
    assert [e.kind for e in api.history("broken")] == ["error"]
    assert [e.kind for e in api.history(statuses=["succeeded"])] == ["fire"]
    assert api.history(since=time.time() + 60) == []

    run = api.show_run(fire.run_id)
    assert (run.status, run.trigger_name, [t["status"] for t in run.tasks]) == ("succeeded", "greet", ["succeeded"])
    for missing in (999, 0, -1, 2**70):
        with pytest.raises(api.NotFound, match=f"no run {missing}"):
            api.show_run(missing)
    with pytest.raises(api.NotFound):
        api.history("nope")


def test_history_entry_shows_a_stored_record():
    from dataclasses import replace

    from trigctl.store.base import HistoryEntry as Stored

    stored = Stored(id=7, trigger_name="t", kind="duplicate", context={"a": 1}, context_hash="k", run_id=3,
                    run_status="succeeded", run_started_at=10.0, run_completed_at=12.5, error=None, count=4,
                    created_at=5.0, updated_at=9.0)
    dup = api.history_entry(stored)
    # A duplicate shows its latest repeat, not its run's times or status.
    assert (dup.when, dup.status, dup.started_at, dup.completed_at, dup.duration) == (9.0, None, 5.0, None, None)
    fire = api.history_entry(replace(stored, kind="fire"))
    assert (fire.when, fire.status, fire.started_at, fire.duration, fire.count) == (5.0, "succeeded", 10.0, 2.5, 4)
    assert fire.as_dict()["started_at"] == "1970-01-01T00:00:10.000Z"


def test_cancel_a_queued_run_an_ended_run_and_no_run(project):
    store = open_state(project)
    run_id = store.enqueue_run("greet", "ok", {"a": 1}, time.time()).run_id
    store.close()
    assert api.cancel_run(run_id) == api.CancelResult(run_id, "queued")
    assert api.show_run(run_id).status == "cancelled"
    with pytest.raises(api.Conflict, match=r"already ended \(cancelled\)"):
        api.cancel_run(run_id)
    with pytest.raises(api.NotFound):
        api.cancel_run(12345)


def test_cancel_a_running_run_with_and_without_a_live_loop(project):
    store = open_state(project)
    store.enqueue_run("greet", "ok", {"a": 1}, time.time())
    store.enqueue_run("greet", "ok", {"a": 2}, time.time())
    first = store.claim_next_queued(time.time())
    second = store.claim_next_queued(time.time())
    assert first.status == second.status == "running"
    store.lock_for_run()  # a live `trigctl run`: it is asked to stop the run
    try:
        assert api.cancel_run(first.id).how == "requested"
        assert first.id in store.cancel_requested()
    finally:
        store.close()
    # No loop alive: the call ends the run itself.
    assert api.cancel_run(second.id).how == "killed"
    assert api.show_run(second.id).status == "cancelled"


def test_set_enabled_prune_and_init(project, tmp_path):
    assert api.set_enabled(["greet"], False) == ["greet"]
    assert not {t.name: t for t in api.list_triggers()}["greet"].enabled
    with pytest.raises(api.NotFound, match=r"unknown trigger 'nope' \(known: broken, greet\)"):
        api.set_enabled(["nope"], True)
    assert api.prune(30 * 86400).entries == 0
    written = api.init(str(tmp_path / "new" / "triggers.yaml"))
    assert written.is_file() and (tmp_path / "new" / "inbox").is_dir()
    with pytest.raises(api.UsageError, match="already exists"):
        api.init(str(written))

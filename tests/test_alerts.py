"""Alerts that work: on_recover, on_error's `since`, fire_on: change for queue_depth and command,
cooldown. A real store, the scheduler driven on an injected clock."""

from __future__ import annotations

from datetime import datetime

import pytest
from helpers import drive, make_scheduler

from trigctl import events as ev
from trigctl.config import ConfigError, load_config

T0 = 1_700_000_000.0

BASE = """
version: 1
workflows:
  wf:
    tasks:
      - run: "true"
  alert:
    tasks:
      - run: "true"
  notify:
    tasks:
      - run: "true"
triggers:
"""


def parse_iso(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def queue_trigger(path, *, extra: str = "") -> str:
    """A queue_depth trigger on a directory: a missing directory is an error, 2 files fire."""
    return f"""
  - name: q
    type: queue_depth
    workflow: wf
    queue: jobs
    source: {{directory: "{path}"}}
    above: 2
    interval: 10s
    max_backoff: 10s
    dedupe: none
{extra}"""


def step(sched, now):
    now = max(now, sched.next_due())
    return now, drive(sched, now)


def alert_runs(store, sched, workflow):
    return [store.get_run(i) for i in sched.alerts if store.get_run(i).workflow == workflow]


# ------------------------------------------------------------------------------------- on_recover


def test_on_recover_runs_once_when_an_alerted_streak_ends(write_yaml, tmp_path):
    jobs = tmp_path / "jobs"
    cfg = write_yaml(BASE + queue_trigger(jobs, extra="    on_error: {after: 3, workflow: alert}\n"
                                          "    on_recover: notify\n"))
    sched, store = make_scheduler(cfg, T0)
    now = T0
    for _ in range(4):  # the directory is missing: 4 errors, one alert at the third
        now, reports = step(sched, now)
        assert reports[0].result == "error"
    [alert] = alert_runs(store, sched, "alert")
    assert alert.context["consecutive_errors"] == 3
    assert parse_iso(alert.context["since"]) == T0  # the streak began at the first error
    jobs.mkdir()
    now, reports = step(sched, now)
    assert reports[0].result == "skipped"
    [recover] = alert_runs(store, sched, "notify")
    assert recover.trigger_name == "q"
    assert recover.context == {"trigger": "q", "consecutive_errors": 4, "since": alert.context["since"],
                               "recovered_at": recover.context["recovered_at"]}
    assert parse_iso(recover.context["recovered_at"]) == now
    for _ in range(3):  # more successes: no second recovery run
        now, _ = step(sched, now)
    assert len(alert_runs(store, sched, "notify")) == 1


def test_a_short_streak_does_not_recover(write_yaml, tmp_path):
    jobs = tmp_path / "jobs"
    cfg = write_yaml(BASE + queue_trigger(jobs, extra="    on_error: {after: 3, workflow: alert}\n"
                                          "    on_recover: notify\n"))
    sched, store = make_scheduler(cfg, T0)
    now = T0
    for _ in range(2):
        now, _ = step(sched, now)
    jobs.mkdir()
    now, _ = step(sched, now)
    assert sched.alerts == []  # neither alerted nor recovered


def test_on_recover_without_on_error_uses_the_default_of_3(write_yaml, tmp_path):
    jobs = tmp_path / "jobs"
    cfg = write_yaml(BASE + queue_trigger(jobs, extra="    on_recover: notify\n"))
    sched, store = make_scheduler(cfg, T0)
    now = T0
    for _ in range(3):
        now, _ = step(sched, now)
    jobs.mkdir()
    now, _ = step(sched, now)
    assert [r.context["consecutive_errors"] for r in alert_runs(store, sched, "notify")] == [3]


def test_the_streak_start_survives_a_restart(write_yaml, tmp_path):
    jobs = tmp_path / "jobs"
    cfg = write_yaml(BASE + queue_trigger(jobs, extra="    on_error: {after: 2, workflow: alert}\n"
                                          "    on_recover: notify\n"))
    sched, store = make_scheduler(cfg, T0)
    now = T0
    for _ in range(3):
        now, _ = step(sched, now)
    sched.close()
    store.close()
    # A new process: the streak (its length and start) comes from the state file.
    sched, store = make_scheduler(cfg, now + 100)
    jobs.mkdir()
    now, reports = step(sched, now + 100)
    assert reports[0].result == "skipped"
    [recover] = alert_runs(store, sched, "notify")
    assert recover.context["consecutive_errors"] == 3
    assert parse_iso(recover.context["since"]) == T0
    # The streak's start is forgotten: a new streak has a new start.
    assert not any(k.startswith("/trigctl/error_since") for k in store.load_kv("q"))


def test_error_streak_ended_event_carries_since_and_whether_it_alerted(write_yaml, tmp_path):
    jobs = tmp_path / "jobs"
    cfg = write_yaml(BASE + queue_trigger(jobs, extra="    on_recover: notify\n"))
    sched, store = make_scheduler(cfg, T0)
    seen: list = []
    sched.bus.subscribe(seen.append)
    now = T0
    for _ in range(3):
        now, _ = step(sched, now)
    jobs.mkdir()
    now, _ = step(sched, now)
    [ended] = [e for e in seen if isinstance(e, ev.ErrorStreakEnded)]
    assert (ended.trigger, ended.consecutive_errors, ended.since, ended.reached_alert) == ("q", 3, T0, True)
    queued = [e for e in seen if isinstance(e, ev.RunQueued)]
    assert [(e.workflow, e.cause) for e in queued] == [("notify", "recover")]


def test_scheduler_state_keys_are_hidden_from_the_file_trigger(write_yaml, tmp_path):
    """The file trigger forgets kv keys that are not files: the streak's start must survive its polls."""
    inbox = tmp_path / "inbox"
    cfg = write_yaml(BASE + f"""
  - name: f
    type: file
    workflow: wf
    path: "{inbox}"
    interval: 10s
    max_backoff: 10s
    settle: 0s
    watch: false
    cooldown: 1h
    on_recover: notify
""")
    sched, store = make_scheduler(cfg, T0)
    now = T0
    for _ in range(3):
        now, _ = step(sched, now)  # no directory: errors
    inbox.mkdir()
    (inbox / "a.txt").write_text("a")
    now, reports = step(sched, now)
    assert reports[0].result == "fired"
    assert len(alert_runs(store, sched, "notify")) == 1
    (inbox / "b.txt").write_text("b")
    now, reports = step(sched, now)
    assert (reports[0].result, reports[0].reason) == ("skipped", "cooldown")
    assert "/trigctl/last_fire" in store.load_kv("f")


# ------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize("where", ["trigger", "defaults"])
def test_on_recover_must_name_a_workflow(write_yaml, tmp_path, where):
    text = BASE + queue_trigger(tmp_path, extra="    on_recover: notfy\n" if where == "trigger" else "")
    if where == "defaults":
        text = text.replace("triggers:", "defaults:\n  on_recover: notfy\ntriggers:")
    with pytest.raises(ConfigError) as e:
        load_config(write_yaml(text))
    assert "unknown workflow 'notfy'" in str(e.value)


def test_cooldown_must_be_a_duration(write_yaml, tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write_yaml(BASE + queue_trigger(tmp_path, extra="    cooldown: soon\n")))
    assert "cooldown" in str(e.value)


def test_cooldown_and_on_recover_are_parsed_and_defaulted(write_yaml, tmp_path):
    text = BASE.replace("triggers:", "defaults:\n  cooldown: 5m\n  on_recover: notify\ntriggers:")
    cfg = load_config(write_yaml(text + queue_trigger(tmp_path)))
    [tc] = cfg.triggers
    assert (tc.cooldown, tc.on_recover) == (300.0, "notify")


@pytest.mark.parametrize(("interval", "extra", "expected"), [
    ("15s", "    on_recover: notify\n", 60.0),  # a health check: 4 intervals
    ("1s", "    on_recover: notify\n", 30.0),  # at least 30s
    ("5m", "    on_recover: notify\n", 600.0),  # never above the general default
    ("15s", "    on_recover: notify\n    max_backoff: 2m\n", 120.0),  # its own wins
    ("15s", "", 600.0),  # no on_recover: the general default
])
def test_a_health_check_backs_off_less_by_default(write_yaml, tmp_path, interval, extra, expected):
    trigger = queue_trigger(tmp_path, extra=extra).replace("    max_backoff: 10s\n", "").replace("interval: 10s", f"interval: {interval}")
    [tc] = load_config(write_yaml(BASE + trigger)).triggers
    assert tc.max_backoff == expected


def test_a_max_backoff_under_defaults_counts_as_given(write_yaml, tmp_path):
    text = BASE.replace("triggers:", "defaults:\n  max_backoff: 20m\ntriggers:")
    trigger = queue_trigger(tmp_path, extra="    on_recover: notify\n").replace("    max_backoff: 10s\n", "")
    [tc] = load_config(write_yaml(text + trigger)).triggers
    assert tc.max_backoff == 1200.0


# ------------------------------------------------------------------------------- fire_on: change


def test_queue_depth_fire_on_change_fires_once_per_crossing(write_yaml, tmp_path):
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    for i in range(3):
        (jobs / f"{i}").write_text("x")
    cfg = write_yaml(BASE + queue_trigger(jobs, extra="    fire_on: change\n"))
    sched, store = make_scheduler(cfg, T0)
    now = T0
    now, reports = step(sched, now)
    assert reports[0].result == "fired"  # a first poll already in the condition counts
    results = []
    for _ in range(3):
        now, reports = step(sched, now)
        results.append((reports[0].result, reports[0].reason))
    assert {r for r, _ in results} == {"skipped"}
    assert "once per transition" in results[0][1]
    for p in list(jobs.iterdir()):
        p.unlink()
    now, reports = step(sched, now)
    assert (reports[0].result, reports[0].reason) == ("skipped", "depth 0 (fires at >= 2)")
    sched.close()
    store.close()
    # Back above, after a restart: the state says "below", so this is a new crossing.
    for i in range(2):
        (jobs / f"{i}").write_text("x")
    sched, store = make_scheduler(cfg, now + 1)
    now, reports = step(sched, now + 1)
    assert reports[0].result == "fired" and reports[0].fires[0][0] == {"queue": "jobs", "depth": 2}
    now, reports = step(sched, now)
    assert reports[0].result == "skipped"
    assert len([h for h in store.history("q", 50, None, None) if h.kind == "fire"]) == 2


def test_queue_depth_fire_on_change_keeps_its_state_through_errors(write_yaml, tmp_path):
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    for i in range(2):
        (jobs / f"{i}").write_text("x")
    cfg = write_yaml(BASE + queue_trigger(jobs, extra="    fire_on: change\n"))
    sched, store = make_scheduler(cfg, T0)
    now, reports = step(sched, T0)
    assert reports[0].result == "fired"
    moved = tmp_path / "moved"
    jobs.rename(moved)
    now, reports = step(sched, now)
    assert reports[0].result == "error"
    moved.rename(jobs)
    now, reports = step(sched, now)
    assert reports[0].result == "skipped"  # an error is not a transition out of the condition


def command_trigger(script, extra: str = "") -> str:
    return f"""
  - name: c
    type: command
    workflow: wf
    run: 'exit $(cat "{script}")'
    interval: 10s
    max_backoff: 10s
    dedupe: none
    fire_on: change
{extra}"""


def test_command_fire_on_change_fires_once_per_transition_to_exit_0(write_yaml, tmp_path):
    code = tmp_path / "code"
    code.write_text("0")
    cfg = write_yaml(BASE + command_trigger(code))
    sched, store = make_scheduler(cfg, T0)
    seq = []
    now = T0
    for value in ["0", "0", "1", "1", "0", "0", "2", "0", "1", "0"]:
        code.write_text(value)
        now, reports = step(sched, now)
        seq.append(reports[0].result)
    assert seq == ["fired", "skipped", "skipped", "skipped", "fired", "skipped", "error", "skipped", "skipped",
                   "fired"]


# -------------------------------------------------------------------------------------- cooldown


def test_cooldown_holds_back_fires_and_counts_them_as_skips(write_yaml, tmp_path):
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    for i in range(3):
        (jobs / f"{i}").write_text("x")
    cfg = write_yaml(BASE + queue_trigger(jobs, extra="    cooldown: 35s\n"))
    sched, store = make_scheduler(cfg, T0)
    now = T0
    results = []
    for _ in range(9):  # polls at T0, +10 ... +80: fires at 0, 40, 80
        now, reports = step(sched, now)
        results.append((now - T0, reports[0].result, reports[0].reason))
    fired = [t for t, r, _ in results if r == "fired"]
    assert fired == [0, 40, 80]
    assert {reason for _, r, reason in results if r == "skipped"} == {"cooldown"}
    row = store.trigger_rows()["q"]
    assert row.last_result == "fired"
    sched.close()
    store.close()
    # The last fire's time survives a restart: 10s later the trigger is still cooling down.
    sched, store = make_scheduler(cfg, now + 10)
    now, reports = step(sched, now + 10)
    assert (reports[0].result, reports[0].reason) == ("skipped", "cooldown")
    now, reports = step(sched, now + 30)
    assert reports[0].result == "fired"


def test_cooldown_with_fire_on_change_offers_the_crossing_again(write_yaml, tmp_path):
    """A held-back crossing is not lost: it fires when the cooldown is over, if still in the condition."""
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    cfg = write_yaml(BASE + queue_trigger(jobs, extra="    fire_on: change\n    cooldown: 25s\n"))
    sched, store = make_scheduler(cfg, T0)
    for i in range(2):
        (jobs / f"{i}").write_text("x")
    now, reports = step(sched, T0)
    assert reports[0].result == "fired"
    (jobs / "0").unlink()
    now, reports = step(sched, now)  # below: out of the condition
    (jobs / "0").write_text("x")
    now, reports = step(sched, now)  # +20: a new crossing, held back
    assert reports[0].reason == "cooldown"
    now, reports = step(sched, now)  # +30: cooldown over, still above: fires
    assert reports[0].result == "fired"
    now, reports = step(sched, now)
    assert reports[0].result == "skipped" and reports[0].reason != "cooldown"


def test_poll_previews_the_cooldown_as_a_skip(write_yaml, tmp_path):
    """`trigctl poll` applies the same cooldown (from the stored last fire) and records nothing."""
    import time

    from trigctl import api
    from trigctl.scheduler import LAST_FIRE_KEY

    jobs = tmp_path / "jobs"
    jobs.mkdir()
    for i in range(3):
        (jobs / f"{i}").write_text("x")
    cfg = write_yaml(BASE + queue_trigger(jobs, extra="    cooldown: 1h\n"))
    assert api.poll_once("q", config_path=str(cfg)).result == "fired"
    sched, store = make_scheduler(cfg, time.time())
    store.update_kv("q", {LAST_FIRE_KEY: time.time() - 60})
    store.close()
    preview = api.poll_once("q", config_path=str(cfg))
    assert (preview.result, preview.fires) == ("skipped", [])

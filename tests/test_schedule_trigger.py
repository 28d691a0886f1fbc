"""The `schedule` trigger: slots, catch-up, restarts and DST, on explicit clocks."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter
from helpers import drive, make_scheduler
from hypothesis import given, settings
from hypothesis import strategies as st

from trigctl.config import TriggerConfig
from trigctl.triggers.base import PollContext, PollOutcome, trigger_types
from trigctl.triggers.schedule import MAX_CATCH_UP, STATE_KEY, Cron, host_zone, iso_utc

ROOT = Path(__file__).resolve().parent.parent
UTC = timezone.utc


def make(**options):
    tc = TriggerConfig(name="s", type="schedule", workflow="w", options=options)
    return trigger_types()["schedule"](tc, Path("."))


def ts(*args) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()


def ctx(due_at: float, now: float | None = None, state: dict | None = None) -> PollContext:
    return PollContext(due_at=due_at, now=due_at if now is None else now, cursor=None,
                       state=state if state is not None else {}, timeout=10)


def fired(out: PollOutcome) -> list[str]:
    return [f["scheduled_for"] for f in out.fires]


def slots(trig, start: float, n: int) -> list[str]:
    """The next n due times after start, following next_due as the scheduler does."""
    out, due = [], trig.next_due(None, start)
    for _ in range(n):
        out.append(iso_utc(due))
        due = trig.next_due(due, due)
    return out


# ------------------------------------------------------------------------------------ every


def test_every_slots_are_multiples_of_the_period_since_the_epoch():
    trig = make(every="15m")
    assert trig.next_due(None, ts(2024, 5, 1, 10, 7, 30)) == ts(2024, 5, 1, 10, 15)
    assert slots(trig, ts(2024, 5, 1, 10, 7), 3) == ["2024-05-01T10:15:00Z", "2024-05-01T10:30:00Z", "2024-05-01T10:45:00Z"]
    # Strictly after: a start exactly on a slot waits for the next one.
    assert trig.next_due(None, ts(2024, 5, 1, 10, 15)) == ts(2024, 5, 1, 10, 30)
    # A restart computes the same grid: no drift from when the process started.
    assert make(every="15m").next_due(None, ts(2024, 5, 1, 10, 16, 1)) == ts(2024, 5, 1, 10, 30)


def test_every_sub_second_and_odd_periods():
    trig = make(every="500ms")
    assert trig.next_due(None, 100.2) == 100.5
    assert trig.next_due(100.5, 100.5) == 101.0
    assert iso_utc(100.5) == "1970-01-01T00:01:40.500Z"
    assert make(every="7m").next_due(None, 0.0) == 420.0


def test_poll_fires_the_due_slot_and_records_it():
    trig = make(every="1h")
    due = ts(2024, 5, 1, 11)
    out = trig.poll(ctx(due, due + 0.003))
    assert out.fires == [{"scheduled_for": "2024-05-01T11:00:00Z"}]
    assert out.state_updates == {STATE_KEY: due}


def test_a_restart_does_not_fire_a_slot_twice():
    due = ts(2024, 5, 1, 11)
    state = {STATE_KEY: due}
    out = make(every="1h").poll(ctx(due, due + 1, state))  # the same slot again after a crash
    assert out.fires == [] and "no slot due" in out.skip_reason
    assert out.state_updates == {}


def test_after_downtime_only_the_latest_missed_slot_fires():
    trig = make(every="1h")
    state = {STATE_KEY: ts(2024, 5, 1, 8)}
    out = trig.poll(ctx(ts(2024, 5, 1, 9), ts(2024, 5, 1, 14, 20), state))
    assert fired(out) == ["2024-05-01T14:00:00Z"]
    assert out.state_updates == {STATE_KEY: ts(2024, 5, 1, 14)}


def test_after_downtime_next_due_is_one_poll_not_a_burst():
    trig = make(cron="0 * * * *", timezone="UTC")
    now = ts(2024, 5, 1, 14, 20)
    # The stored due time was 9:00: one poll now covers every missed slot...
    due = trig.next_due(ts(2024, 5, 1, 8), now)
    assert due == ts(2024, 5, 1, 14)
    trig.poll(ctx(due, now, {STATE_KEY: ts(2024, 5, 1, 8)}))
    # ...and after it the next due time is in the future.
    assert trig.next_due(due, now + 0.01) == ts(2024, 5, 1, 15)


def test_catch_up_fires_every_missed_slot_in_order():
    trig = make(every="1h", catch_up=True)
    assert trig.default_dedupe_key == ("scheduled_for",)  # each missed slot gets its own run
    assert make(every="1h").default_dedupe_key == ()
    state = {STATE_KEY: ts(2024, 5, 1, 8)}
    out = trig.poll(ctx(ts(2024, 5, 1, 9), ts(2024, 5, 1, 12, 5), state))
    assert fired(out) == ["2024-05-01T09:00:00Z", "2024-05-01T10:00:00Z", "2024-05-01T11:00:00Z", "2024-05-01T12:00:00Z"]
    assert out.state_updates == {STATE_KEY: ts(2024, 5, 1, 12)}


def test_catch_up_is_capped_with_a_warning(caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger("trigctl"), "propagate", True)  # `run` in another test may turn it off
    trig = make(every="1s", catch_up=True)
    with caplog.at_level(logging.WARNING, logger="trigctl.triggers.schedule"):
        out = trig.poll(ctx(1001.0, 5000.0, {STATE_KEY: 1000.0}))
    assert len(out.fires) == MAX_CATCH_UP
    assert out.fires[-1] == {"scheduled_for": iso_utc(5000.0)}
    assert out.fires[0] == {"scheduled_for": iso_utc(5000.0 - MAX_CATCH_UP + 1)}
    assert "missed" in caplog.text


def test_forced_poll_on_a_fresh_state_records_and_a_later_one_fires():
    """`run --once` polls at `now`, not at a slot: the first one only remembers where it is."""
    trig = make(cron="0 2 * * *", timezone="UTC")
    now = ts(2024, 5, 1, 14)
    out = trig.poll(ctx(now))
    assert out.fires == [] and out.state_updates == {STATE_KEY: ts(2024, 5, 1, 2)}
    state = dict(out.state_updates)
    assert trig.poll(ctx(now + 3600, state=state)).fires == []
    later = ts(2024, 5, 2, 9)
    assert fired(trig.poll(ctx(later, state=state))) == ["2024-05-02T02:00:00Z"]


def test_through_the_real_scheduler_and_store_across_a_restart(write_yaml, clock):
    cfg = write_yaml("""
        version: 1
        workflows:
          w:
            tasks:
              - run: "true"
        triggers:
          - name: hourly
            type: schedule
            cron: "0 * * * *"
            timezone: UTC
            workflow: w
    """)
    clock.now = ts(2024, 5, 1, 9, 30)
    sched, store = make_scheduler(cfg, clock.now)
    assert sched.next_due() == ts(2024, 5, 1, 10)
    assert drive(sched, ts(2024, 5, 1, 9, 59)) == []
    reports = drive(sched, ts(2024, 5, 1, 10) + 0.2)
    assert [r.result for r in reports] == ["fired"]
    assert reports[0].fires[0][0] == {"scheduled_for": "2024-05-01T10:00:00Z"}
    assert sched.next_due() == ts(2024, 5, 1, 11)
    store.close()
    # Down from 10:00 to 14:20: a new process fires the 14:00 slot once, then waits for 15:00.
    sched, store = make_scheduler(cfg, ts(2024, 5, 1, 14, 20))
    assert sched.next_due() == ts(2024, 5, 1, 11)
    reports = drive(sched, ts(2024, 5, 1, 14, 20))
    assert [f[0]["scheduled_for"] for r in reports for f in r.fires] == ["2024-05-01T14:00:00Z"]
    assert sched.next_due() == ts(2024, 5, 1, 15)
    assert drive(sched, ts(2024, 5, 1, 14, 21)) == []
    store.close()


# ------------------------------------------------------------------------------------- cron


def test_cron_in_a_timezone():
    trig = make(cron="30 2 * * *", timezone="America/New_York")
    # 02:30 EDT is 06:30 UTC.
    assert slots(trig, ts(2024, 6, 1), 2) == ["2024-06-01T06:30:00Z", "2024-06-02T06:30:00Z"]


def test_dst_gap_runs_once_at_the_next_valid_instant():
    # Europe/Berlin, 2024-03-31: 02:00 CET jumps to 03:00 CEST (01:00 UTC); 02:30 does not exist.
    trig = make(cron="30 2 * * *", timezone="Europe/Berlin")
    assert slots(trig, ts(2024, 3, 29, 12), 4) == [
        "2024-03-30T01:30:00Z", "2024-03-31T01:00:00Z", "2024-04-01T00:30:00Z", "2024-04-02T00:30:00Z"]
    # Every quarter hour: the four slots inside the gap and 03:00 itself collapse to one run.
    trig = make(cron="*/15 * * * *", timezone="Europe/Berlin")
    assert slots(trig, ts(2024, 3, 31, 0, 40), 4) == [
        "2024-03-31T00:45:00Z", "2024-03-31T01:00:00Z", "2024-03-31T01:15:00Z", "2024-03-31T01:30:00Z"]
    # America/New_York, 2024-03-10: 02:00 EST jumps to 03:00 EDT (07:00 UTC).
    trig = make(cron="30 2 * * *", timezone="America/New_York")
    assert slots(trig, ts(2024, 3, 9, 12), 2) == ["2024-03-10T07:00:00Z", "2024-03-11T06:30:00Z"]


def test_dst_gap_slot_fires_once_in_a_poll():
    trig = make(cron="*/15 * * * *", timezone="Europe/Berlin")
    state = {STATE_KEY: ts(2024, 3, 31, 0, 45)}
    gap_end = ts(2024, 3, 31, 1)
    assert fired(trig.poll(ctx(gap_end, gap_end, state))) == ["2024-03-31T01:00:00Z"]


def test_repeated_hour_runs_a_fixed_time_job_once():
    # Europe/Berlin, 2024-10-27: 03:00 CEST goes back to 02:00 CET; 02:30 happens twice.
    trig = make(cron="30 2 * * *", timezone="Europe/Berlin")
    assert slots(trig, ts(2024, 10, 26, 12), 3) == [
        "2024-10-27T00:30:00Z", "2024-10-28T01:30:00Z", "2024-10-29T01:30:00Z"]
    # America/New_York, 2024-11-03: 01:30 happens at 05:30 and 06:30 UTC; it runs at the first.
    trig = make(cron="30 1 * * *", timezone="America/New_York")
    assert slots(trig, ts(2024, 11, 2, 12), 2) == ["2024-11-03T05:30:00Z", "2024-11-04T06:30:00Z"]
    # catch_up across the repeated hour fires it once too.
    trig = make(cron="30 2 * * *", timezone="Europe/Berlin", catch_up=True)
    out = trig.poll(ctx(ts(2024, 10, 27, 0, 30), ts(2024, 10, 27, 3), {STATE_KEY: ts(2024, 10, 26, 0, 30)}))
    assert fired(out) == ["2024-10-27T00:30:00Z"]


def test_repeated_hour_keeps_the_rhythm_of_a_wildcard_job():
    trig = make(cron="0 * * * *", timezone="Europe/Berlin")
    assert slots(trig, ts(2024, 10, 26, 23, 30), 4) == [
        "2024-10-27T00:00:00Z", "2024-10-27T01:00:00Z", "2024-10-27T02:00:00Z", "2024-10-27T03:00:00Z"]


def test_timezone_defaults_to_the_host_zone(monkeypatch):
    monkeypatch.setenv("TZ", "America/New_York")
    assert getattr(host_zone(), "key", None) == "America/New_York"
    assert make(cron="0 12 * * *").next_due(None, ts(2024, 6, 1)) == ts(2024, 6, 1, 16)


def test_check():
    check = trigger_types()["schedule"].check
    assert check({"cron": "*/5 * * * *"}, ROOT) == []
    assert check({"every": "1h"}, ROOT) == []
    assert check({"every": 0}, ROOT) == [(("every",), "`every` must be greater than 0")]
    assert check({"cron": "0 0 31 2 *"}, ROOT) == [(("cron",), 'cron "0 0 31 2 *" never comes due')]
    assert check({"cron": "0 0 * * *", "timezone": "Mars/Olympus"}, ROOT)[0][0] == ("timezone",)


def test_a_cron_that_never_comes_due_cannot_be_set_up():
    with pytest.raises(ValueError, match="never comes due"):
        make(cron="0 0 30 2 *", timezone="UTC")


# ---------------------------------------------------------------- cron against a brute force


def reference_slots(expr: str, tz: ZoneInfo, start: float, end: float) -> list[float]:
    """Minute by minute: an instant is a slot if its wall time matches (its first occurrence only,
    unless a wildcard job), or it ends a DST gap that contains a matching wall time."""
    wild = expr.split()[0].startswith("*") or expr.split()[1].startswith("*")
    (minutes, hours, *rest), _ = croniter.expand(expr)
    assert rest == [["*"]] * 3  # the expressions below restrict minutes and hours only
    minutes = set(range(60)) if minutes == ["*"] else set(minutes)
    hours = set(range(24)) if hours == ["*"] else set(hours)

    def match(w: datetime) -> bool:
        return w.minute in minutes and w.hour in hours

    out = []
    t = (int(start) // 60 + 1) * 60
    while t <= end:
        here = datetime.fromtimestamp(t, tz)
        wall = here.replace(tzinfo=None)
        hit = match(wall) and (here.fold == 0 or wild)
        jump = (here.utcoffset() - datetime.fromtimestamp(t - 60, tz).utcoffset()).total_seconds()
        if jump > 0:  # the clock just jumped forward: the skipped wall times run now
            w = wall - timedelta(seconds=jump)
            while w < wall and not hit:
                hit = match(w)
                w += timedelta(minutes=1)
        if hit:
            out.append(float(t))
        t += 60
    return out


TRANSITIONS = [  # (zone, an instant just before a transition)
    ("Europe/Berlin", ts(2024, 3, 31, 0, 30)),
    ("Europe/Berlin", ts(2024, 10, 27, 0, 0)),
    ("America/New_York", ts(2024, 3, 10, 6, 30)),
    ("America/New_York", ts(2024, 11, 3, 5, 0)),
    ("Australia/Lord_Howe", ts(2024, 4, 6, 14, 30)),  # a 30-minute DST shift
    ("UTC", ts(2024, 2, 28, 23, 0)),
]
EXPRS = ["*/15 * * * *", "30 2 * * *", "0 * * * *", "*/20 1-3 * * *", "45 1,2 * * *", "0,30 * * * *", "10 3 * * *"]


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(TRANSITIONS), st.sampled_from(EXPRS), st.integers(-4 * 3600, 4 * 3600))
def test_cron_slots_match_a_minute_by_minute_reference(transition, expr, shift):
    name, around = transition
    tz = ZoneInfo(name)
    start = around + shift
    end = start + 6 * 3600
    cron = Cron(expr, tz)
    got = []
    for x in cron.ascending(start):
        if x > end:
            break
        got.append(x)
    assert got == reference_slots(expr, tz, start, end)
    # Descending from the end gives the same slots, reversed.
    back = []
    for x in cron.descending(end):
        if x <= start:
            break
        back.append(x)
    assert back == got[::-1]


@pytest.mark.parametrize("name", ["nightly.yaml"])
def test_example_validates(name):
    from conftest import run_trigctl

    r = run_trigctl("validate", str(ROOT / "examples" / name), cwd=ROOT)
    assert r.returncode == 0, r.stderr + r.stdout

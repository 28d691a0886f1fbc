"""Issue 13, "first contact": what a new user trips over in the first hour, and its siblings."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path

import pytest

from trigctl.config import TriggerConfig
from trigctl.triggers.base import trigger_types
from trigctl.triggers.schedule import iso_utc

UTC = timezone.utc
ROOT = Path(__file__).resolve().parent.parent


def ts(*args) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()


def schedule(**options):
    tc = TriggerConfig(name="s", type="schedule", workflow="w", options=options)
    return trigger_types()["schedule"](tc, Path("."))


TYPO = """\
version: 1
workflows:
  w:
    tasks:
      - argv: ['true']
triggers:
  - name: tick
    type: schedule
    workflow: w
    evrey: 5m
"""
TYPO_ERROR = "triggers.yaml:10:5: triggers[0](tick).evrey: unknown key 'evrey' (did you mean 'every'?)\n"
GOOD = TYPO.replace("evrey", "every")


SCHEDULE_YAML = """\
version: 1
workflows:
  w:
    tasks:
      - argv: ['true']
triggers:
  - name: nightly
    type: schedule
    workflow: w
    cron: "{cron}"
    timezone: UTC
"""


# ------------------------------------------------------------------------------ 5. cron nicknames


@pytest.mark.parametrize(("nickname", "after", "expected"), [
    ("@hourly", ts(2024, 6, 1, 10, 5), "2024-06-01T11:00:00Z"),
    ("@daily", ts(2024, 6, 1, 10, 5), "2024-06-02T00:00:00Z"),
    ("@midnight", ts(2024, 6, 1, 10, 5), "2024-06-02T00:00:00Z"),
    ("@weekly", ts(2024, 6, 1, 10, 5), "2024-06-02T00:00:00Z"),  # 2024-06-01 is a Saturday
    ("@monthly", ts(2024, 6, 1, 10, 5), "2024-07-01T00:00:00Z"),
    ("@yearly", ts(2024, 6, 1, 10, 5), "2025-01-01T00:00:00Z"),
    ("@annually", ts(2024, 6, 1, 10, 5), "2025-01-01T00:00:00Z"),
    ("@Daily", ts(2024, 6, 1, 10, 5), "2024-06-02T00:00:00Z"),
])
def test_cron_nicknames_come_due_when_cron_says(nickname, after, expected):
    trig = schedule(cron=nickname, timezone="UTC")
    assert iso_utc(trig.next_due(None, after)) == expected


def test_cron_nickname_validates_and_lists_as_written(cli, tmp_path):
    (tmp_path / "triggers.yaml").write_text(SCHEDULE_YAML.format(cron="@daily"))
    result = cli("validate")
    assert result.exit_code == 0, result.output
    listed = json.loads(cli("list", "--json").stdout)
    assert listed[0]["name"] == "nightly"


def test_unknown_cron_nickname_names_the_known_ones(cli, tmp_path):
    (tmp_path / "triggers.yaml").write_text(SCHEDULE_YAML.format(cron="@reboot"))
    result = cli("validate")
    assert result.exit_code == 2
    assert '"@reboot" is not a cron nickname (known: @yearly, @annually, @monthly, @weekly, @daily' in result.stderr
    assert result.stderr.count("\n") == 1


# ------------------------------------------------------------------------- 6. YAML hints


@pytest.mark.parametrize(("text", "expected"), [
    ("version: 1\ntriggers:\n  - name: inbox\n      type: file\n",
     "triggers.yaml:4:11: invalid YAML: mapping values are not allowed in this context (this line is indented deeper"
     " than `name:` above it, so YAML reads it as part of that value: indent it as far as that key)"),
    ("version: 1\nworkflows:\n  w:\n    tasks:\n      - run: echo a: b\n",
     'triggers.yaml:5:20: invalid YAML: mapping values are not allowed in this context (usually an unquoted value'
     ' that contains ": ": quote the value, e.g. run: "echo a: b")'),
    ("version: 1\ntriggers:\n  - name: inbox\n    type: file\n   path: x\n",
     "triggers.yaml:5:4: invalid YAML: while parsing a block collection: did not find expected '-' indicator (the"
     " indentation of this line matches no mapping above it: indent it as far as its sibling keys)"),
    ("version: 1\ntriggers:\n  - name: a\n    cron: @daily\n",
     'triggers.yaml:4:11: invalid YAML: while scanning for the next token: found character that cannot start any'
     ' token (YAML reserves @ and ` at the start of a value: quote it, e.g. cron: "@daily")'),
])
def test_yaml_syntax_errors_name_the_usual_cause(cli, tmp_path, text, expected):
    (tmp_path / "triggers.yaml").write_text(text)
    result = cli("validate")
    assert result.exit_code == 2
    assert result.stderr == expected + "\n"


# ------------------------------------------------ 6. the cause, not its consequence; all at once

ALL_AT_ONCE = TYPO + """\
  - name: feb
    type: schedule
    workflow: w
    cron: "0 0 31 2 *"
  - name: lost
    type: schedule
    workflow: nowhere
    every: 1h
  - name: bad
    type: file
    workflow: w
    path: .
    interval: 5 sec
"""


def test_every_error_of_a_file_at_once_and_the_cause_of_a_typo(cli, tmp_path):
    (tmp_path / "triggers.yaml").write_text(ALL_AT_ONCE)
    result = cli("validate")
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "triggers.yaml:10:5: triggers[0](tick).evrey: unknown key 'evrey' (did you mean 'every'?)",
        'triggers.yaml:14:11: triggers[1](feb).cron: cron "0 0 31 2 *" never comes due',
        "triggers.yaml:17:15: triggers[2](lost).workflow: unknown workflow 'nowhere'",
        'triggers.yaml:23:15: triggers[3](bad).interval: "5 sec" is not a duration (use e.g. 500ms, 5s, 2m, 1h, 1d)',
    ]


def test_a_missing_key_without_a_typo_is_still_reported(cli, tmp_path):
    text = ALL_AT_ONCE.replace("    evrey: 5m\n", "    colour: red\n")
    (tmp_path / "triggers.yaml").write_text(text)
    lines = cli("validate").stderr.splitlines()
    assert "triggers.yaml:7:5: triggers[0](tick): needs one of: cron, every" in lines
    assert "triggers.yaml:10:5: triggers[0](tick).colour: unknown key 'colour'" in lines


# ------------------------------------------------- 1. every command refuses a file validate refuses



@pytest.mark.parametrize("args", [
    ["list"], ["list", "--json"], ["enable", "tick"], ["disable", "tick"], ["history"], ["history", "tick"],
    ["show", "1"], ["cancel", "1"], ["prune", "--older-than", "30d"], ["prune", "--older-than", "30d", "--dry-run"],
    ["poll", "tick"], ["run", "--once"], ["validate"],
])
def test_every_command_that_reads_the_yaml_refuses_a_bad_one(cli, tmp_path, args):
    (tmp_path / "triggers.yaml").write_text(TYPO)
    result = cli(*args)
    assert (result.exit_code, result.stderr, result.stdout) == (2, TYPO_ERROR, "")
    assert not (tmp_path / ".trigctl").exists()  # nothing created for a bad file


@pytest.mark.parametrize("args", [["list"], ["enable", "tick"], ["history"], ["show", "1"], ["prune", "--older-than", "1d"]])
def test_a_file_that_was_valid_and_became_bad_is_refused_too(cli, tmp_path, args):
    yaml = tmp_path / "triggers.yaml"
    yaml.write_text(GOOD)
    assert cli("enable", "tick").exit_code == 0  # creates the state, remembers the good file
    assert cli("list").exit_code == 0
    yaml.write_text(TYPO)
    result = cli(*args)
    assert (result.exit_code, result.stderr) == (2, TYPO_ERROR)


def test_known_good_bytes_are_not_parsed_again(cli, tmp_path, callables):
    """A snapshot of checked bytes stands for the check: shown by a callable module deleted after the
    check, which only a fresh check finds. New bytes are checked again."""
    callables("def poll():\n    return None\n", name="first_contact_mod")
    yaml = tmp_path / "triggers.yaml"
    yaml.write_text(GOOD + "  - name: py\n    type: python\n    callable: first_contact_mod:poll\n    workflow: w\n")
    assert cli("disable", "py").exit_code == 0  # a writer: fully checks and remembers these bytes
    (tmp_path / "first_contact_mod.py").unlink()
    import sys

    sys.modules.pop("first_contact_mod", None)
    listed = json.loads(cli("list", "--json").stdout)
    assert [(t["name"], t["enabled"]) for t in listed] == [("tick", True), ("py", False)]
    assert cli("validate").exit_code == 2  # validate always checks fully
    yaml.write_text(yaml.read_text() + "# edited\n")
    result = cli("list")
    assert result.exit_code == 2 and "first_contact_mod" in result.stderr


def test_list_remembers_what_it_checked_in_an_existing_state(cli, tmp_path):
    from trigctl.snapshot import config_fingerprint
    from trigctl.store.sqlite import SQLiteStore

    yaml = tmp_path / "triggers.yaml"
    yaml.write_text(GOOD)
    assert cli("enable", "tick").exit_code == 0
    yaml.write_text(GOOD + "# a comment changes the bytes\n")
    assert cli("list").exit_code == 0
    store = SQLiteStore(str(tmp_path / ".trigctl/state.db"), readonly=True)
    try:
        assert store.config_snapshot(str(yaml.resolve()), config_fingerprint(yaml)) is not None
    finally:
        store.close()


def test_state_only_commands_do_not_read_a_bad_yaml_in_the_directory(cli, tmp_path):
    (tmp_path / "triggers.yaml").write_text(GOOD)
    assert cli("enable", "tick").exit_code == 0
    (tmp_path / "triggers.yaml").write_text(TYPO)
    state = str(tmp_path / ".trigctl/state.db")
    assert cli("history", "--state", state).exit_code == 0
    assert cli("show", "1", "--state", state).stderr == "trigctl: no run 1\n"
    # Named, it is read, and refused; so is a YAML that `enable` reads for the trigger names.
    assert cli("history", "--state", state, "-c", "triggers.yaml").exit_code == 2
    assert cli("disable", "tick", "--state", state).stderr == TYPO_ERROR
    (tmp_path / "triggers.yaml").unlink()
    assert cli("disable", "tick", "--state", state).exit_code == 0


# -------------------------------------------------------------------------------- 3. prune


def _old_errors(state_path: Path, ages_days: list[float]) -> None:
    import time

    from trigctl.store.base import PollStats
    from trigctl.store.sqlite import SQLiteStore

    store = SQLiteStore(str(state_path))
    try:
        for i, age in enumerate(ages_days):
            store.record_error("tick", f"boom {i}", PollStats("tick"), time.time() - age * 86400)
    finally:
        store.close()


@pytest.mark.parametrize("value", ["30", " 30 ", "1.5"])
def test_prune_refuses_a_number_without_a_unit(cli, tmp_path, value):
    (tmp_path / "triggers.yaml").write_text(GOOD)
    result = cli("prune", "--older-than", value)
    n = value.strip()
    assert (result.exit_code, result.stderr) == (
        2, f"trigctl: --older-than: '{n}' has no unit: write {n}d for days, {n}h for hours or {n}s for seconds\n")
    assert not (tmp_path / ".trigctl").exists()


def test_prune_dry_run_counts_and_deletes_nothing_then_prune_says_what_went(cli, tmp_path):
    (tmp_path / "triggers.yaml").write_text(GOOD)
    assert cli("enable", "tick").exit_code == 0
    _old_errors(tmp_path / ".trigctl/state.db", [40, 35, 31, 2, 0])
    result = cli("prune", "--older-than", "30d", "--dry-run")
    assert result.exit_code == 0
    assert result.stdout.startswith("would prune 3 history entries older than 30d (before ")
    assert result.stdout.endswith("); nothing deleted\n")
    assert len(json.loads(cli("history", "--json").stdout)) == 5
    result = cli("prune", "--older-than", "30d")
    assert result.stdout.startswith("pruned 3 history entries older than 30d (before ")
    assert len(json.loads(cli("history", "--json").stdout)) == 2
    assert cli("prune", "--older-than", "1d", "--dry-run").stdout.startswith("would prune 1 history entry older than 1d")


def test_prune_dry_run_without_a_state_creates_none(cli, tmp_path):
    (tmp_path / "triggers.yaml").write_text(GOOD)
    result = cli("prune", "--older-than", "30d", "--dry-run")
    assert result.exit_code == 0 and result.stdout.startswith("would prune 0 history entries")
    assert not (tmp_path / ".trigctl").exists()


# --------------------------------------------------------------------- 2. no internal errors


def _with_closed_stdout(args: list[str], cwd: Path) -> tuple[int, str]:
    """`trigctl ARGS | head -1` without the race: the reader of stdout has gone before it starts."""
    import os
    import subprocess
    import sys

    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run([sys.executable, "-m", "trigctl", *args], cwd=cwd, stdout=write, stderr=subprocess.PIPE,
                              text=True, timeout=60, env={**os.environ, "TRIGCTL_CONFIG": "", "TRIGCTL_STATE": ""})
    finally:
        os.close(write)
    return done.returncode, done.stderr


@pytest.fixture
def project_with_history(tmp_path):
    import time

    from trigctl.store.base import PollStats
    from trigctl.store.sqlite import SQLiteStore

    (tmp_path / "triggers.yaml").write_text(GOOD)
    store = SQLiteStore(str(tmp_path / ".trigctl/state.db"))
    try:
        for i in range(3):
            store.enqueue_run("tick", "w", {"n": i}, time.time())
            store.record_error("tick", f"boom {i}", PollStats("tick"), time.time())
    finally:
        store.close()
    return tmp_path


@pytest.mark.parametrize("args", [
    ["--help"], ["--version"], ["init", "other.yaml"], ["validate"], ["validate", "--json"], ["list"], ["list", "--json"],
    ["enable", "tick"], ["disable", "tick"], ["history"], ["history", "--json"], ["history", "tick"], ["show", "1"],
    ["show", "1", "--json"], ["poll", "tick"], ["poll", "tick", "--json"], ["cancel", "2"],
    ["prune", "--older-than", "1d"], ["prune", "--older-than", "1d", "--dry-run"], ["run", "--once"],
    *[[c, "--help"] for c in ("init", "validate", "run", "poll", "list", "enable", "disable", "history", "show",
                              "cancel", "prune")],
])
def test_every_command_into_a_closed_pipe_ends_quietly(project_with_history, args):
    code, stderr = _with_closed_stdout(args, project_with_history)
    if args == ["run", "--once"]:  # its log lines go to stderr, which is open
        assert code == 0 and "stopped" in stderr and not any(w in stderr for w in ("internal error", "Traceback", "Exception"))
    else:
        assert stderr == "" and code in (0, 1), stderr


def test_a_broken_pipe_that_is_not_the_output_is_still_an_internal_error(cli, tmp_path, monkeypatch):
    (tmp_path / "triggers.yaml").write_text(GOOD)
    from trigctl import api

    def broken(*args, **kwargs):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(api, "list_triggers", broken)  # a pipe to something else broke, not stdout
    result = cli("list")
    assert (result.exit_code, result.stderr) == (
        1, "trigctl: internal error: BrokenPipeError (run with --debug for the traceback)\n")


@pytest.mark.parametrize("args", [
    ["init", "sub/dir/t.yaml"], ["init", "-c", "sub/dir/t.yaml"],
])
def test_init_creates_missing_directories(cli, tmp_path, args):
    result = cli(*args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "sub/dir/t.yaml").is_file() and (tmp_path / "sub/dir/inbox").is_dir()
    assert cli("validate", "sub/dir/t.yaml").exit_code == 0


def test_init_under_a_file_names_it(cli, tmp_path):
    (tmp_path / "notes").write_text("")
    result = cli("init", "notes/t.yaml")
    assert (result.exit_code, result.stderr) == (2, "trigctl: cannot write notes/t.yaml: notes is not a directory\n")


@pytest.mark.parametrize("args", [["enable", "tick"], ["disable", "tick"], ["run", "--once"]])
def test_a_state_in_a_missing_directory_is_created(cli, tmp_path, args):
    (tmp_path / "triggers.yaml").write_text(GOOD)
    result = cli(*args, "--state", "missing/dir/x.db")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "missing/dir/x.db").is_file()


@pytest.mark.parametrize("args", [["list"], ["history"], ["show", "1"], ["cancel", "1"], ["prune", "--older-than", "1d"],
                                  ["prune", "--older-than", "1d", "--dry-run"]])
def test_commands_with_nothing_to_change_in_a_missing_state_create_nothing(cli, tmp_path, args):
    (tmp_path / "triggers.yaml").write_text(GOOD)
    result = cli(*args, "--state", "missing/dir/x.db")
    assert result.exit_code in (0, 2) and "internal error" not in result.output
    assert not (tmp_path / "missing").exists()


@pytest.mark.parametrize("args", [["enable", "tick"], ["run", "--once"]])
def test_a_state_under_a_file_is_one_line(cli, tmp_path, args):
    (tmp_path / "triggers.yaml").write_text(GOOD)
    result = cli(*args, "--state", "triggers.yaml/x.db")
    assert (result.exit_code, result.stderr) == (2, "trigctl: cannot create state file triggers.yaml/x.db: Not a directory\n")


# ------------------------------------------------------------- 7. options where people put them

COMMANDS = ["init", "validate", "run", "poll", "list", "enable", "disable", "history", "show", "cancel", "prune"]


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_every_help_reads_well_at_80_columns(cli, monkeypatch, command):
    monkeypatch.setenv("COLUMNS", "80")
    result = cli(*([command] if command else []), "--help")
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    assert not any(line.rstrip().endswith("...") for line in lines if not line.startswith("Usage:"))


def test_the_command_list_shows_whole_descriptions(cli, monkeypatch):
    from trigctl.cli import main

    monkeypatch.setenv("COLUMNS", "80")
    text = " ".join(cli("--help").output.split())
    for name, cmd in main.commands.items():
        first = " ".join((cmd.help or "").split("\n\n")[0].split())
        assert f"{name} {first}" in text


@pytest.mark.parametrize("command", COMMANDS)
def test_debug_after_any_command(cli, command):
    result = cli(command, "--debug", "--help")
    assert result.exit_code == 0 and "--debug" in result.output


def test_debug_after_the_command_shows_the_traceback(cli, tmp_path, monkeypatch):
    (tmp_path / "triggers.yaml").write_text(GOOD)
    from trigctl import api

    def broken(*args, **kwargs):
        raise RuntimeError("bug")

    monkeypatch.setattr(api, "list_triggers", broken)
    assert cli("list").stderr == "trigctl: internal error: RuntimeError: bug (run with --debug for the traceback)\n"
    for args in (["list", "--debug"], ["--debug", "list"]):
        with pytest.raises(RuntimeError, match="bug"):
            cli(*args)


def test_config_and_state_before_or_after_the_command(cli, tmp_path, monkeypatch):
    (tmp_path / "a.yaml").write_text(GOOD)
    (tmp_path / "b.yaml").write_text(GOOD.replace("name: tick", "name: tock"))
    names = lambda *args: [t["name"] for t in json.loads(cli(*args, "--json").stdout)]  # noqa: E731
    assert names("-c", "a.yaml", "list") == ["tick"]
    assert names("list", "-c", "a.yaml") == ["tick"]
    assert names("-c", "a.yaml", "list", "-c", "b.yaml") == ["tock"]  # after the command wins
    monkeypatch.setenv("TRIGCTL_CONFIG", "b.yaml")
    assert names("-c", "a.yaml", "list") == ["tick"]  # the command line wins over the environment
    assert names("list") == ["tock"]
    assert cli("--state", "s.db", "enable", "tock").exit_code == 0
    assert (tmp_path / "s.db").is_file()
    assert cli("disable", "tock", "--state", "s2.db").exit_code == 0
    assert (tmp_path / "s2.db").is_file()


def test_init_takes_c_like_every_command(cli, tmp_path):
    assert cli("init", "-c", "mine.yaml").exit_code == 0
    assert (tmp_path / "mine.yaml").is_file()
    assert cli("-c", "theirs.yaml", "init").exit_code == 0
    assert (tmp_path / "theirs.yaml").is_file()


# --------------------------------------------------------------- 4. disabled means skipped

HOURLY = """
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
        catch_up: {catch_up}
"""


@pytest.mark.parametrize("catch_up", ["false", "true"])
def test_slots_that_pass_while_disabled_are_skipped(write_yaml, catch_up):
    from helpers import drive, make_scheduler

    cfg = write_yaml(HOURLY.format(catch_up=catch_up))
    sched, store = make_scheduler(cfg, ts(2024, 5, 1, 9, 30))
    fired = lambda reports: [f[0]["scheduled_for"] for r in reports for f in r.fires]  # noqa: E731
    assert fired(drive(sched, ts(2024, 5, 1, 10))) == ["2024-05-01T10:00:00Z"]
    sched.set_enabled("hourly", False, ts(2024, 5, 1, 10, 30))
    assert drive(sched, ts(2024, 5, 1, 11)) == [] and drive(sched, ts(2024, 5, 1, 12)) == []
    sched.set_enabled("hourly", True, ts(2024, 5, 1, 13, 20))
    assert sched.next_due() == ts(2024, 5, 1, 14)  # not 11:00 (now), not 13:00
    assert drive(sched, ts(2024, 5, 1, 13, 20)) == []
    assert drive(sched, ts(2024, 5, 1, 13, 20, 2)) == []  # nor a second later
    assert fired(drive(sched, ts(2024, 5, 1, 14))) == ["2024-05-01T14:00:00Z"]
    store.close()


def test_skipped_slots_stay_skipped_across_a_restart(write_yaml):
    from helpers import drive, make_scheduler

    cfg = write_yaml(HOURLY.format(catch_up="true"))
    sched, store = make_scheduler(cfg, ts(2024, 5, 1, 9, 30))
    drive(sched, ts(2024, 5, 1, 10))
    sched.set_enabled("hourly", False, ts(2024, 5, 1, 10, 30))
    sched.set_enabled("hourly", True, ts(2024, 5, 1, 13, 20))
    sched.flush(ts(2024, 5, 1, 13, 20), force=True)
    store.close()
    # Stopped at 13:25, started at 13:40: no slot passed while it was enabled and stopped.
    sched, store = make_scheduler(cfg, ts(2024, 5, 1, 13, 40))
    assert drive(sched, ts(2024, 5, 1, 13, 40)) == []
    reports = drive(sched, ts(2024, 5, 1, 14))
    assert [f[0]["scheduled_for"] for r in reports for f in r.fires] == ["2024-05-01T14:00:00Z"]
    store.close()


def test_an_every_schedule_enabled_again_skips_the_passed_slots_too(write_yaml):
    from helpers import make_scheduler

    cfg = write_yaml("""
        version: 1
        workflows: {w: {tasks: [{run: "true"}]}}
        triggers:
          - {name: every, type: schedule, every: 1h, workflow: w}
    """)
    sched, store = make_scheduler(cfg, ts(2024, 5, 1, 9, 30))
    sched.set_enabled("every", False, ts(2024, 5, 1, 9, 31))
    sched.set_enabled("every", True, ts(2024, 5, 1, 12, 10))
    assert sched.next_due() == ts(2024, 5, 1, 13)  # `every:` slots too
    store.close()


# ------------------------------------------------------------------ 6. what Ctrl-C does


# A trigger that fires once (its command succeeds only the first time) into the workflow `slow`.
FIRES_ONCE = """\
triggers:
  - name: go
    type: command
    run: 'test ! -e fired && touch fired'
    interval: 1h
    workflow: slow
"""
SLOW = """\
version: 1
workflows:
  slow:
    tasks:
      - name: wait
        run: 'echo started; sleep 60'
""" + FIRES_ONCE


def test_first_ctrl_c_says_what_happens_and_the_second_stops_the_runs(tmp_path):
    import signal

    from realproc import RunProc

    (tmp_path / "triggers.yaml").write_text(SLOW)
    proc = RunProc(tmp_path, "triggers.yaml", "--grace", "5m")
    try:
        proc.wait_line("run_started")
        proc.signal(signal.SIGINT)
        i = proc.wait_line("get --grace")
        assert proc.lines[i].endswith(
            "warning 1 running run(s) get --grace 5m to finish; Ctrl-C again (or a second SIGTERM) stops them now")
        proc.signal(signal.SIGINT)
        j = proc.wait_line("second signal", start=i)
        assert proc.lines[j].endswith("warning second signal: stopping 1 run(s) now")
        proc.wait_line("status=cancelled", start=j)
        assert proc.wait(30) == 0
    finally:
        proc.cleanup()


def test_no_grace_message_when_nothing_runs(tmp_path):
    import signal

    from realproc import RunProc

    (tmp_path / "triggers.yaml").write_text(SLOW.replace("test ! -e fired && touch fired", "exit 1"))
    proc = RunProc(tmp_path, "triggers.yaml")
    try:
        proc.wait_line("start triggers=1")
        proc.signal(signal.SIGINT)
        assert proc.wait(30) == 0
        assert "--grace" not in proc.stderr
    finally:
        proc.cleanup()


# ---------------------------------------------- 6. a failed run's log line says why it failed

FAILING = r"""
version: 1
workflows:
  job:
    tasks:
      - name: convert
        run: |
          echo "reading input"
          printf 'token s3cr3t-value rejected: \033[31mdisk on fire\033[0m\n' >&2
          exit 3
  other:
    tasks:
      - argv: ['true']
triggers:
  - name: go
    type: command
    run: 'true'
    workflow: job
  - name: api
    type: http
    url: http://127.0.0.1:9/
    headers: {Authorization: "Bearer ${FIRST_CONTACT_TOKEN}"}
    enabled: false
    workflow: other
"""


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_failed_runs_log_line_carries_the_tail_of_its_output(tmp_path, log_format):
    import subprocess
    import sys

    (tmp_path / "triggers.yaml").write_text(FAILING)
    import os

    env = {**os.environ, "FIRST_CONTACT_TOKEN": "s3cr3t-value"}  # a header value: a secret, masked
    done = subprocess.run([sys.executable, "-m", "trigctl", "run", "--once", "--log-format", log_format], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 1
    finished = [line for line in done.stderr.splitlines() if "run_finished" in line]
    assert len(finished) == 1
    if log_format == "json":
        doc = json.loads(finished[0])
        assert doc["error"] == "task 'convert' failed: exit code 3"
        assert doc["output"] == "token *** rejected: \x1b[31mdisk on fire\x1b[0m"  # JSON escapes it
    else:
        assert finished[0].endswith(
            'run_finished run_id=1 status=failed error="task \'convert\' failed: exit code 3"'
            ' output="token *** rejected: \\u001b[31mdisk on fire\\u001b[0m"')
    assert "s3cr3t" not in done.stderr and "\x1b" not in done.stderr.replace("\\u001b", "")


def test_last_line_is_one_line_and_cut_from_the_start():
    from trigctl.observe.logs import last_line

    assert last_line("a\nb\n\n  \n") == "b"
    assert last_line("x\r\nfinal words\r\n") == "final words"
    assert last_line("") is None and last_line(" \n ") is None
    cut = last_line("start " + "y" * 300 + " the end", limit=50)
    assert len(cut) == 50 and cut.startswith("…") and cut.endswith(" the end")


# ------------------------------------------------- 6. show of a running task: elapsed, output so far

CHATTY = """\
version: 1
workflows:
  slow:
    tasks:
      - name: first
        run: 'echo quick'
      - name: wait
        run: 'echo "step 1 done"; echo "step 2 done" >&2; while [ ! -e release ]; do sleep 0.05; done; echo finished'
""" + FIRES_ONCE


def test_show_of_a_running_task_has_its_elapsed_time_and_output_so_far(tmp_path):
    import os
    import subprocess
    import sys

    from conftest import wait_for
    from realproc import RunProc

    (tmp_path / "triggers.yaml").write_text(CHATTY)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIGCTL_")}

    def show(*args):
        return subprocess.run([sys.executable, "-m", "trigctl", "show", "1", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60)

    proc = RunProc(tmp_path, "triggers.yaml", "--grace", "5s")
    try:
        proc.wait_line("run_started")
        doc = wait_for(lambda: (d := json.loads(show("--json").stdout))["tasks"][-1:] and "step 2 done" in
                       d["tasks"][-1]["output_tail"] and d, timeout=30, message="the output so far in the state")
        assert [(t["name"], t["status"]) for t in doc["tasks"]] == [("first", "succeeded"), ("wait", "running")]
        assert doc["tasks"][1]["output_tail"] == "step 1 done\nstep 2 done\n"
        text = show().stdout
        assert re.search(r"^running   for \d", text, re.M), text
        assert re.search(r"^== task wait: running \(for \d+(\.\d)?(ms|s); its output so far:\)\nstep 1 done\nstep 2 done$",
                         text, re.M), text
        assert "== task first: succeeded (exit 0, " in text
        (tmp_path / "release").touch()
        wait_for(lambda: json.loads(show("--json").stdout)["status"] == "succeeded", timeout=30, message="the run's end")
        done = json.loads(show("--json").stdout)
        assert done["tasks"][1]["output_tail"] == "step 1 done\nstep 2 done\nfinished\n"
        assert "== task wait: succeeded (exit 0, " in show().stdout
    finally:
        proc.cleanup()
